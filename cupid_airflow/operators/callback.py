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


def is_last_try(try_number: int, max_tries: int | None) -> bool:
    """Whether no Airflow retry follows this try: ``max_tries`` (not ``retries``) counts the tries
    left, and Airflow raises it when a task is cleared, so a cleared task gets its retries again."""
    return try_number > (max_tries or 0)


class CallbackDeliveryError(RuntimeError):
    """Some callbacks failed; they stay in the delivery store for the next try or the failure pool."""


class CallbackOperator(BaseOperator):
    """POST every live mismatch of a cupid config to its destination's callback.

    Each item is judged again on the rows as they are when it is sent, and the body is built
    from the current source row (see ``core.dispatch``). In the sync DAG (``failure_pool=False``)
    it sends pending items; Airflow retries give the short retry, and after the last try what
    still fails is parked in the failure pool and the task fails. A destination whose circuit is
    open (it failed through every try, or kept failing) has its new items parked at once, without
    retries, until a probe gets through. In the failure-pool DAG (``failure_pool=True``) it
    retries parked items, oldest first, and probes open circuits.

    :param config_path: path of the cupid config file (JSON or YAML).
    :param failure_pool: drain the failure pool instead of sending pending items.
    :param max_seconds: no callback starts after this long; what is left waits for the next run.
    :param lease_second: how long a claim on an item holds while it is worked on (renewed as
        work goes); a killed task's items wait this long before another dispatcher takes them.
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#fdf2e8"

    def __init__(
        self,
        *,
        config_path: str,
        failure_pool: bool = False,
        max_seconds: float = 600.0,
        lease_second: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.failure_pool = failure_pool
        self.max_seconds = max_seconds
        self.lease_second = lease_second

    def execute(self, context: Context) -> dict[str, Any]:
        from cupid_airflow.connections import resolve_connection
        from cupid_airflow.core.destinations import DestinationRegistry
        from cupid_airflow.core.dispatch import DispatchError, DispatchSettings, dispatch, still_failing
        from cupid_airflow.core.store import PARKED, PENDING, DeliveryStore
        from cupid_airflow.operators.common import load_config_or_fail

        config = load_config_or_fail(self.config_path)
        state = resolve_connection(config.state_connection)
        store = DeliveryStore(state)
        registry = DestinationRegistry(state)
        ti = context["ti"]
        last_try = is_last_try(ti.try_number, ti.max_tries)
        database_error = None
        try:
            store.ensure_schema()
            identities = registry.identities(config.name, config.destination_keys)
            routes = self._routes(config, identities)
            if self.failure_pool:
                self._expire(config, store, context)
            settings = DispatchSettings(
                statuses=(PARKED,) if self.failure_pool else (PENDING,),
                max_seconds=self.max_seconds,
                lease_second=self.lease_second,
                probe=self.failure_pool,
                # a retry of this task instance takes over the claims its failed try left behind
                claimant=f"{ti.dag_id}/{ti.task_id}/{ti.run_id}/{getattr(ti, 'map_index', -1)}",
            )
            try:
                outcomes = dispatch(state, config.name, routes, settings)
            except DispatchError as err:
                outcomes, database_error = err.outcomes, str(err)
            failed = sorted(i for o in outcomes.values() for i in o.failed)
            if not self.failure_pool:
                failed = still_failing(outcomes)  # an open circuit's items are parked, not retried
            summary: dict[str, Any] = {
                "config": config.name,
                "mode": "failure_pool" if self.failure_pool else "sync",
                "tryNumber": ti.try_number,
                "lastTry": last_try,
                "destinations": {name: o.as_dict() for name, o in outcomes.items()},
            }
            if not self.failure_pool:
                summary["parked"] = self._park(config, store, registry, routes, outcomes, last_try, context)
            summary["store"] = store.counts(config.name, identities)
        finally:
            store.close()
            registry.close()
        from cupid_airflow.metrics import delivery_metrics, publish

        publish(delivery_metrics(summary))
        self.log.info("cupid delivery summary: %s", json.dumps(summary, sort_keys=True))
        if failed or database_error:
            ti.xcom_push(key="return_value", value=summary)
            errors = [e for o in outcomes.values() for e in o.errors][-3:]
            raise CallbackDeliveryError(
                (f"{len(failed)} callback(s) failed and stay recorded" if failed else "delivery stopped")
                + ("" if self.failure_pool or not last_try or not failed else ", now parked in the failure pool")
                + (f"; database: {database_error}" if database_error else "")
                + (f"; last errors: {'; '.join(errors)}" if errors else "")
            )
        return summary

    def _park(
        self,
        config: CupidConfig,
        store: Any,
        registry: Any,
        routes: list[Route],
        outcomes: dict[str, Any],
        last_try: bool,
        context: Context,
    ) -> int:
        """Park what the sync DAG will not retry: open circuits' backlogs, and failures after the last try."""
        from cupid_airflow.core.dispatch import after_try

        cooldowns = {r.destination: r.target.breaker_cooldown_second for r in routes}
        parked = after_try(store, registry, config.name, outcomes, last_try=last_try, cooldown_second=cooldowns)
        if parked.by_circuit:
            self.log.warning("parked %d item(s) of destinations whose circuit is open", parked.by_circuit)
        if parked.after_last_try:
            self.log.error("parked %d item(s) in the failure pool after the last try", parked.after_last_try)
        if parked.opened:
            errors = {n: (outcomes[n].errors or ["failing"])[-1] for n in parked.opened}
            self._alert(
                config,
                "parked",
                f"{parked.total} callback(s) parked in the failure pool: the receiver of "
                + ", ".join(f"{n} ({e})" for n, e in errors.items())
                + f" keeps failing; its new items are parked until {config.failure_pool_dag_id} gets through",
                {"parked": parked.total, "destinations": sorted(parked.opened)},
                context,
            )
        elif parked.after_last_try:
            self._alert(
                config,
                "parked",
                f"{parked.after_last_try} callback(s) still failing after {context['ti'].try_number} "
                f"tries were parked in the failure pool ({config.failure_pool_dag_id} retries them)",
                {"parked": parked.after_last_try},
                context,
            )
        return parked.total

    def _routes(self, config: CupidConfig, identities: list[str]) -> list[Route]:
        from cupid_airflow.connections import resolve_connection
        from cupid_airflow.core.compare import DestinationSpec
        from cupid_airflow.core.dispatch import Route
        from cupid_airflow.core.judge import JudgeSpec

        source = resolve_connection(config.src)
        detect_deletes = config.reconcile.enabled and config.reconcile.detect_deletes
        routes = []
        for name, des in zip(identities, config.des, strict=True):
            spec = DestinationSpec(name=name, table=des.table, by_column=des.by_column, columns=dict(des.columns))
            judge = JudgeSpec(
                config=config.name,
                destination=name,
                source=source,
                table=config.src.table,
                id_column=config.src.id_column,
                by_column=config.src.by_column,
                target=resolve_connection(des),
                spec=spec,
                detect_deletes=detect_deletes,
            )
            routes.append(Route(name, self._target(config, des), judge))
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
