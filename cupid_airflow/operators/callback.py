"""CallbackOperator: deliver recorded mismatches to each destination's callback; park or drain the failure pool."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from cupid_airflow.core.config import CupidConfig, Destination
    from cupid_airflow.core.dispatch import Route


class CallbackDeliveryError(RuntimeError):
    """Some callbacks failed; they stay in the delivery store for the next try or the failure pool."""


class CallbackOperator(BaseOperator):
    """POST every undelivered mismatch of a cupid config to its destination's callback.

    In the sync DAG (``failure_pool=False``) it sends pending items; Airflow
    retries give the short retry, and after the last try what still fails is
    parked in the failure pool and the task fails. In the failure-pool DAG
    (``failure_pool=True``) it retries parked items, oldest first, until they
    are delivered.

    :param config_path: path of the cupid config file (JSON or YAML).
    :param failure_pool: drain the failure pool instead of sending pending items.
    :param max_seconds: stop after this long; what is left waits for the next run.
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#fdf2e8"

    def __init__(
        self, *, config_path: str, failure_pool: bool = False, max_seconds: float = 600.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.failure_pool = failure_pool
        self.max_seconds = max_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        from cupid_airflow.connections import resolve_connection
        from cupid_airflow.core.config import load_config
        from cupid_airflow.core.dispatch import dispatch, park_failures
        from cupid_airflow.core.store import PARKED, PENDING, DeliveryStore

        config = load_config(self.config_path)
        store = DeliveryStore(resolve_connection(config.state_connection))
        try:
            store.ensure_schema()
            statuses = (PARKED,) if self.failure_pool else (PENDING,)
            if self.failure_pool:
                self._expire(config, store, context)
            outcomes = dispatch(store, config.name, self._routes(config), statuses, max_seconds=self.max_seconds)
            failed = sorted(i for o in outcomes.values() for i in o.failed)
            summary: dict[str, Any] = {
                "config": config.name,
                "mode": "failure_pool" if self.failure_pool else "sync",
                "tryNumber": context["ti"].try_number,
                "destinations": {name: o.as_dict() for name, o in outcomes.items()},
            }
            retries = self.retries or 0
            last_try = context["ti"].try_number > retries
            if failed and not self.failure_pool and last_try:
                parked = park_failures(store, config.name, outcomes)
                summary["parked"] = parked
                self.log.error("parked %d item(s) in the failure pool after the last try", parked)
                self._alert(
                    config,
                    "parked",
                    f"{parked} callback(s) still failing after {retries + 1} "
                    f"tries were parked in the failure pool ({config.failure_pool_dag_id} retries them)",
                    summary,
                    context,
                )
            summary["store"] = store.counts(config.name)
        finally:
            store.close()
        from cupid_airflow.metrics import delivery_metrics, publish

        publish(delivery_metrics(summary))
        self.log.info("cupid delivery summary: %s", json.dumps(summary, sort_keys=True))
        if failed:
            context["ti"].xcom_push(key="return_value", value=summary)
            errors = [e for o in outcomes.values() for e in o.errors][-3:]
            raise CallbackDeliveryError(
                f"{len(failed)} callback(s) failed and stay recorded"
                + ("" if self.failure_pool or not last_try else ", now parked in the failure pool")
                + (f"; last errors: {'; '.join(errors)}" if errors else "")
            )
        return summary

    def _routes(self, config: CupidConfig) -> list[Route]:
        from cupid_airflow.connections import resolve_connection
        from cupid_airflow.core.compare import DestinationSpec
        from cupid_airflow.core.dispatch import Route

        routes = []
        for name, des in zip(config.destination_names, config.des, strict=False):
            recheck = None
            if des.callback_notification.recheck:
                spec = DestinationSpec(name=name, table=des.table, by_column=des.by_column, columns=dict(des.columns))
                recheck = (resolve_connection(des), spec)
            routes.append(Route(name, self._target(config, des), recheck))
        return routes

    def _target(self, config: CupidConfig, des: Destination) -> Any:
        from cupid_airflow.connections import callback_target

        return callback_target(config, des)

    def _expire(self, config: CupidConfig, store: Any, context: Context) -> None:
        """Move parked items past the configured age or attempt count to the dead state."""
        pool = config.failure_pool
        killed = store.expire(config.name, max_attempts=pool.max_attempts, max_age_second=pool.max_age_second)
        if killed:
            self.log.error("%d parked item(s) reached the failure pool's limits and are now dead", killed)
            self._alert(
                config,
                "dead",
                f"{killed} parked callback(s) reached the failure pool's limits and are "
                f"now dead; requeue them with `airflow cupid pool requeue {config.name}`",
                {"dead": killed},
                context,
            )

    def _alert(self, config: CupidConfig, event: str, text: str, details: dict[str, Any], context: Context) -> None:
        from cupid_airflow.notify import send_alert

        send_alert(config, event, text, details, dict(context))
