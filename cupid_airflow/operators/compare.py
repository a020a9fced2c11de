"""MySqlCompareOperator: scan the source, compare with every destination, record every mismatch."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BranchMixIn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class MySqlCompareOperator(BaseOperator, BranchMixIn):
    """Compare new and recently updated source rows with each destination of a cupid config.

    Every mismatch (type 1 missing, type 2 different) is recorded in the
    durable delivery store before any cursor moves; cursors live in Airflow
    Variables (``cupid_<config>_<destination>_cursor``); the run's summary is
    returned (XCom ``return_value``).

    With ``deliver_task_id`` the operator also branches: when the store holds
    no pending item of the config after the compare, that downstream task is
    skipped, so an idle run starts no delivery process; every other downstream
    task is followed. A failed compare branches nowhere (the downstream trigger
    rules decide).

    :param config_path: path of the cupid config file (JSON or YAML).
    :param start_id: rescan new rows from this id, replacing the stored insert cursor;
        by default the DAG param ``start_id`` (``--conf '{"start_id": 1}'``).
    :param deliver_task_id: the downstream task that delivers pending items; skipped when none are pending.
    """

    # Not templated: a templated field costs every run (every few seconds per config) an execution-API
    # call and metadata-DB writes of its rendered value; the DAG factory passes a plain path.
    template_fields: Sequence[str] = ()
    ui_color = "#e8f4fd"
    inherits_from_skipmixin = True

    def __init__(
        self, *, config_path: str, start_id: int | None = None, deliver_task_id: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.start_id = start_id
        self.deliver_task_id = deliver_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from cupid_airflow.connections import build_sync_plan, destination_identities, resolve_connection
        from cupid_airflow.core.store import DeliveryStore
        from cupid_airflow.core.sync import SyncRun
        from cupid_airflow.cursors import VariableCursorStore
        from cupid_airflow.operators.common import load_config_or_fail

        config = load_config_or_fail(self.config_path)
        start_id = self.start_id
        if start_id is None:
            # the trigger's conf, not params: a param default must never rescan by itself
            dag_run = context.get("dag_run")
            start_id = (getattr(dag_run, "conf", None) or {}).get("start_id")
        if start_id is not None:
            start_id = int(start_id)  # any integer: ids may be zero or negative
            self.log.info("start_id=%d given: every destination rescans new rows from id %d", start_id, start_id)
        store = DeliveryStore(resolve_connection(config.state_connection))
        try:
            plan = build_sync_plan(config, destination_identities(config))
            summary = SyncRun(plan, VariableCursorStore(config.name), store, start_id=start_id).run()
            pending = store.pending(config.name) if self.deliver_task_id else None
        finally:
            store.close()
        for name, destination in summary["destinations"].items():
            self.log.info(
                "destination %s: %d missing, %d different; insert cursor %s -> %s; lag %s rows%s",
                name,
                destination["mismatches"]["missing"],
                destination["mismatches"]["different"],
                destination["cursorBefore"]["insertId"],
                destination["cursorAfter"]["insertId"],
                destination["lagRows"],
                f"; ERROR {destination['error']}" if destination["error"] else "",
            )
        from cupid_airflow.metrics import publish, sync_metrics

        publish(sync_metrics(summary))
        self.log.info("cupid summary: %s", json.dumps(summary, sort_keys=True))
        broken = {n: d["error"] for n, d in summary["destinations"].items() if d["error"]}
        if broken:
            context["ti"].xcom_push(key="return_value", value=summary)
            raise RuntimeError(
                "destination(s) unavailable, their cursors wait (the others advanced): "
                + "; ".join(f"{n}: {e}" for n, e in broken.items())
            )
        if pending is not None:
            summary["pending"] = pending
            self._branch(context, summary, pending)
        return summary

    def _branch(self, context: Context, summary: dict[str, Any], pending: int) -> None:
        """Follow every downstream task, ``deliver_task_id`` only when items are pending."""
        if pending:
            self.log.info("%d item(s) pending: %s runs", pending, self.deliver_task_id)
        else:
            self.log.info("nothing pending: %s is skipped", self.deliver_task_id)
        follow = sorted(t for t in self.downstream_task_ids if pending or t != self.deliver_task_id)
        if not pending:  # skipping ends execute() with an exception, before Airflow would push the return value
            context["ti"].xcom_push(key="return_value", value=summary)
        self.do_branch(context, follow)
