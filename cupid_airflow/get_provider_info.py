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
        "notifications": [
            "cupid_airflow.notifications.webhook.WebhookNotifier",
            "cupid_airflow.notifications.webhook.JsonWebhookNotifier",
            "cupid_airflow.notifications.webhook.SlackWebhookNotifier",
            "cupid_airflow.notifications.webhook.WeComWebhookNotifier",
            "cupid_airflow.notifications.webhook.DingTalkWebhookNotifier",
            "cupid_airflow.notifications.webhook.FeishuWebhookNotifier",
        ],
        "cli": ["cupid_airflow.cli.definition.get_cupid_cli_commands"],
        "config": {
            "cupid": {
                "description": "Options of cupid-airflow.",
                "options": {
                    "config_folder": {
                        "description": (
                            "The folder of cupid config files (one sync DAG per file). The environment "
                            "variable CUPID_CONFIG_FOLDER wins over it; when neither is set, the folder "
                            "``cupid`` beside the DAG files is used."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/dags/cupid",
                        "default": None,
                    }
                },
            }
        },
        "plugins": [{"name": "cupid", "plugin-class": "cupid_airflow.plugins.pool_page.CupidPlugin"}],
    }
