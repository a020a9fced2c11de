"""MySqlReconcileOperator: verify whole tables by key-range checksums and record what incremental scans missed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class MySqlReconcileOperator(BaseOperator):
    """Verify the whole source table of a cupid config against each destination.

    Ranges of the key whose checksums differ are compared row by row; every
    mismatch (type 1 missing, 2 different, and 3 deleted at source when
    ``reconcile.detectDeletes`` is on) goes into the delivery store, from
    which the sync DAG's ``deliver`` task sends it. Progress is checkpointed
    in Variables ``cupid_<config>_<destination>_reconcile``: a paused or
    killed run resumes where it stopped.

    :param config_path: path of the cupid config file (JSON or YAML).
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#eef8e8"

    def __init__(self, *, config_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context: Context) -> dict[str, Any]:
        from cupid_airflow.connections import build_sync_plan, resolve_connection
        from cupid_airflow.core.config import load_config
        from cupid_airflow.core.reconcile import ReconcileRun, ReconcileSettings
        from cupid_airflow.core.store import DeliveryStore
        from cupid_airflow.cursors import VariableCursorStore

        config = load_config(self.config_path)
        plan = build_sync_plan(config)
        section = config.reconcile
        settings = ReconcileSettings(
            detect_deletes=section.detect_deletes,
            chunk_size=section.chunk_size,
            min_chunk_size=section.min_chunk_size,
            max_chunk_size=section.max_chunk_size,
            target_chunk_second=section.target_chunk_second,
            max_seconds_per_run=section.max_seconds_per_run,
            max_chunks_per_run=section.max_chunks_per_run,
            max_threads_running=section.max_threads_running,
            max_replica_lag_second=section.max_replica_lag_second,
        )
        store = DeliveryStore(resolve_connection(config.state_connection))
        try:
            summary = ReconcileRun(
                config=config.name,
                source=plan.source,
                table=plan.table,
                id_column=plan.id_column,
                by_column=plan.by_column,
                destinations=plan.destinations,
                settings=settings,
                store=store,
                checkpoints=VariableCursorStore(config.name, kind="reconcile"),
            ).run()
        finally:
            store.close()
        self.log.info("cupid reconcile summary: %s", json.dumps(summary, sort_keys=True))
        broken = {n: d["error"] for n, d in summary["destinations"].items() if d["error"]}
        if broken:
            context["ti"].xcom_push(key="return_value", value=summary)
            raise RuntimeError("reconcile failed for " + "; ".join(f"{n}: {e}" for n, e in broken.items()))
        return summary
