"""Send cupid alerts (items parked, items dead, a task failed) to webhooks and Airflow notifiers."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from cupid_airflow.core.alerts import WebhookError
from cupid_airflow.core.config import load_config
from cupid_airflow.core.redact import redact

if TYPE_CHECKING:
    from collections.abc import Callable

    from cupid_airflow.core.config import CupidConfig, NotifierSpec, Webhook
    from cupid_airflow.notifications.webhook import WebhookNotifier

log = logging.getLogger(__name__)

PARKED = "parked"
DEAD = "dead"
TASK_FAILED = "task_failed"
# a webhook bounds its own request; this covers starting the thread and building the body
WEBHOOK_MARGIN_SECOND = 0.5


def send_alert(
    config: CupidConfig, event: str, text: str, details: dict[str, Any], context: dict[str, Any] | None = None
) -> list[str]:
    """Alert every configured webhook and notifier at once; return the errors. An alert never raises and
    never takes much longer than the largest ``timeoutSecond`` of them once their connections (and
    Variables) are looked up."""
    notify = config.notify
    wanted = {PARKED: notify.on_parked, DEAD: notify.on_dead, TASK_FAILED: notify.on_task_failure}.get(event, True)
    if not wanted:
        return []
    from cupid_airflow.connections import register_secrets

    register_secrets(config)
    text = f"[cupid {config.name}] {text}"
    alert_context = {**(context or {}), "cupid_alert": {"event": event, "text": text, "details": details}}
    calls: list[tuple[str, float, Callable[[], None]]] = []
    errors: list[str] = []
    for webhook in notify.webhooks:
        try:
            calls.append(_webhook_call(webhook, event, text, details))
        except Exception as err:  # a missing connection or Variable: this webhook only
            errors.append(f"{webhook.describe()}: {type(err).__name__}: {err}")
    for spec in notify.notifiers:
        calls.append((f"notifier {spec.class_path}", spec.timeout_second, _notifier_call(spec, alert_context)))
    secrets = config.secrets()
    errors = [redact(error, secrets) for error in [*errors, *run_bounded(calls)]]
    for error in errors:
        log.warning("alert %s not sent: %s", event, error)
    return errors


def webhook_notifier(webhook: Webhook, event: str, text: str, details: dict[str, Any]) -> WebhookNotifier:
    """The notifier of one configured webhook."""
    from cupid_airflow.notifications.webhook import NOTIFIERS

    kwargs: dict[str, Any] = {}
    if webhook.sign_secret_variable:
        from airflow.sdk import Variable

        kwargs["sign_secret"] = Variable.get(webhook.sign_secret_variable)
    return NOTIFIERS[webhook.format](
        text=text,
        url=webhook.url,
        conn_id=webhook.conn_id,
        endpoint=webhook.endpoint,
        timeout=webhook.timeout_second,
        details=details,
        event=event,
        format=webhook.format,
        **kwargs,
    )


def _webhook_call(
    webhook: Webhook, event: str, text: str, details: dict[str, Any]
) -> tuple[str, float, Callable[[], None]]:
    """Look the webhook's connection up here, in the task's thread; only the POST goes to another thread.
    The text is cupid's own: it is not rendered as a template (no ``__call__``)."""
    notifier = webhook_notifier(webhook, event, text, details)
    url, headers = notifier.target()
    return webhook.describe(), webhook.timeout_second + WEBHOOK_MARGIN_SECOND, lambda: notifier.post(url, headers)


def _notifier_call(spec: NotifierSpec, context: dict[str, Any]) -> Callable[[], None]:
    def call() -> None:
        module_name, _, class_name = spec.class_path.rpartition(".")
        notifier_class = getattr(importlib.import_module(module_name), class_name)
        notifier_class(**spec.kwargs)(context)

    return call


def run_bounded(calls: list[tuple[str, float, Callable[[], None]]]) -> list[str]:
    """Run every call in its own daemon thread, all at once; return ``label: error`` for each that raised
    or did not finish within its own timeout (it is abandoned, never waited for)."""
    outcomes: dict[int, str | None] = {}

    def run(index: int, call: Callable[[], None]) -> None:
        try:
            call()
            outcomes[index] = None
        except Exception as err:  # an alert must never fail or block delivery
            outcomes[index] = str(err) if isinstance(err, WebhookError) else f"{type(err).__name__}: {err}"

    started = time.monotonic()
    threads = []
    for index, (_, _, call) in enumerate(calls):
        thread = threading.Thread(target=run, args=(index, call), daemon=True, name=f"cupid-alert-{index}")
        thread.start()
        threads.append(thread)
    errors = []
    for index, ((label, timeout, _), thread) in enumerate(zip(calls, threads, strict=True)):
        thread.join(max(0.0, started + timeout - time.monotonic()))
        if index not in outcomes:
            errors.append(f"{label}: no answer within {timeout:g} s")
        elif outcomes[index] is not None:
            errors.append(f"{label}: {outcomes[index]}")
    return errors


class TaskFailureAlert(BaseNotifier):
    """``on_failure_callback`` of cupid tasks: alerts that a sync or failure-pool task failed."""

    def __init__(self, config_path: str) -> None:
        super().__init__()
        self.config_path = config_path

    def notify(self, context: Any) -> None:
        try:
            config = load_config(self.config_path)
            ti = context.get("ti") or context.get("task_instance")
            exception = redact(str(context.get("exception")), config.secrets())
            where = f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}"
            send_alert(
                config,
                TASK_FAILED,
                f"task {where} failed: {exception}",
                {
                    "dag_id": getattr(ti, "dag_id", None),
                    "task_id": getattr(ti, "task_id", None),
                    "run_id": getattr(ti, "run_id", None),
                    "error": exception[:1000],
                },
                dict(context),
            )
        except Exception as err:  # never let an alert hide the task's own failure
            log.warning("task failure alert not sent: %s", err)
