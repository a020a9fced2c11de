"""MySqlCompareOperator: scan the source, compare with every destination, record every mismatch."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class MySqlCompareOperator(BaseOperator):
    """Compare new and recently updated source rows with each destination of a cupid config.

    Every mismatch (type 1 missing, type 2 different) is recorded in the
    durable delivery store before any cursor moves; cursors live in Airflow
    Variables (``cupid_<config>_<destination>_cursor``); the run's summary is
    returned (XCom ``return_value``).

    :param config_path: path of the cupid config file (JSON or YAML).
    :param start_id: rescan new rows from this id, replacing the stored insert cursor;
        by default the DAG param ``start_id`` (``--conf '{"start_id": 1}'``).
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#e8f4fd"

    def __init__(self, *, config_path: str, start_id: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.start_id = start_id

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
        return summary
