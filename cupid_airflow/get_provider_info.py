"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from cupid_airflow import __version__

DESCRIPTION = (
    "Keeps MySQL copies honest: compares source rows with CDC destinations and calls back "
    "the owning application for every missing or different row."
)


def get_provider_info() -> dict[str, Any]:
    """Return the provider-info dict; ``package-name`` must equal the distribution's canonical name."""
    return {
        "package-name": "cupid-airflow",
        "name": "cupid",
        "description": DESCRIPTION,
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "cupid",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "cupid",
                "python-modules": [
                    "cupid_airflow.operators.compare",
                    "cupid_airflow.operators.callback",
                    "cupid_airflow.operators.reconcile",
                ],
            }
        ],
        "plugins": [{"name": "cupid", "plugin-class": "cupid_airflow.plugins.pool_page.CupidPlugin"}],
    }
