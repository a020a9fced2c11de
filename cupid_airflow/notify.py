"""Send cupid alerts (items parked, items dead, a task failed) to webhooks and Airflow notifiers."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.alerts import send_webhook, webhook_body
from cupid_airflow.core.config import load_config

if TYPE_CHECKING:
    from cupid_airflow.core.config import CupidConfig

log = logging.getLogger(__name__)

PARKED = "parked"
DEAD = "dead"
TASK_FAILED = "task_failed"


def send_alert(
    config: CupidConfig, event: str, text: str, details: dict[str, Any], context: dict[str, Any] | None = None
) -> list[str]:
    """Alert every configured webhook and notifier; return the errors (an alert never raises)."""
    notify = config.notify
    wanted = {PARKED: notify.on_parked, DEAD: notify.on_dead, TASK_FAILED: notify.on_task_failure}.get(event, True)
    if not wanted:
        return []
    text = f"[cupid {config.name}] {text}"
    errors: list[str] = []
    for webhook in notify.webhooks:
        error = send_webhook(webhook.url, webhook_body(webhook.format, event, text, details), webhook.timeout_second)
        if error:
            errors.append(f"webhook {webhook.url.split('?')[0]}: {error}")
    for spec in notify.notifiers:
        try:
            module_name, _, class_name = spec.class_path.rpartition(".")
            notifier_class = getattr(importlib.import_module(module_name), class_name)
            notifier = notifier_class(**spec.kwargs)
            notifier({**(context or {}), "cupid_alert": {"event": event, "text": text, "details": details}})
        except Exception as err:  # an alert must never fail or block delivery
            errors.append(f"notifier {spec.class_path}: {type(err).__name__}: {err}")
    for error in errors:
        log.warning("alert %s not sent: %s", event, error)
    return errors


class TaskFailureAlert:
    """``on_failure_callback`` of cupid tasks: alerts that a sync or failure-pool task failed."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path

    def __call__(self, context: Any) -> None:
        try:
            config = load_config(self.config_path)
            ti = context.get("ti") or context.get("task_instance")
            exception = context.get("exception")
            where = f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}"
            send_alert(
                config,
                TASK_FAILED,
                f"task {where} failed: {exception}",
                {
                    "dag_id": getattr(ti, "dag_id", None),
                    "task_id": getattr(ti, "task_id", None),
                    "run_id": getattr(ti, "run_id", None),
                    "error": str(exception)[:1000],
                },
                dict(context),
            )
        except Exception as err:  # never let an alert hide the task's own failure
            log.warning("task failure alert not sent: %s", err)
