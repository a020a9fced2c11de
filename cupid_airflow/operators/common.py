"""What every cupid operator does the same way: load its config, failing the task without retries when it is broken."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cupid_airflow.core.config import CupidConfig


def load_config_or_fail(path: str) -> CupidConfig:
    """Load a config and mask its secrets in this task's logs; a broken config fails the task at once (a
    retry would fail the same way)."""
    from airflow.sdk.exceptions import AirflowFailException

    from cupid_airflow.connections import register_secrets
    from cupid_airflow.core.config import CupidConfigError, load_config

    try:
        config = load_config(path)
    except CupidConfigError as err:
        raise AirflowFailException(f"cupid config error, not retried: {err}") from err
    except OSError as err:
        raise AirflowFailException(f"cupid config {path} cannot be read, not retried: {err}") from err
    register_secrets(config)
    return config
