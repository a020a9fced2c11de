"""MySqlReconcileOperator: verify whole tables by hash-bucket checksums and record what incremental scans missed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from cupid_airflow.core.config import Reconcile
    from cupid_airflow.core.reconcile import ReconcileSettings


class MySqlReconcileOperator(BaseOperator):
    """Verify the whole source table of a cupid config against each destination.

    Both tables are read in their own primary-key order; per hash bucket of
    the key, row counts and XORs of row hashes are compared, then one ordered
    read per table fetches the rows of the differing buckets. Every mismatch
    (type 1 missing, 2 different, and 3 deleted at source when
    ``reconcile.detectDeletes`` is on) goes into the delivery store, from
    which the sync DAG's ``deliver`` task sends it (a reconcile-only config's
    reconcile DAG has a ``deliver`` task of its own).

    A run stops after ``reconcile.maxSecondsPerRun`` (or ``maxChunksPerRun``
    chunk queries) and checkpoints in table ``cupid_reconcile_checkpoint`` of
    the state database; the next run resumes there, unless the verify began
    more than ``maxCheckpointAgeSecond`` ago. A small progress summary
    is mirrored into the Variable ``cupid_<config>_<destination>_reconcile``
    for the UI. Trigger with ``{"restart": true}`` to drop the checkpoints and
    start over.

    :param config_path: path of the cupid config file (JSON or YAML).
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#eef8e8"

    def __init__(self, *, config_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context: Context) -> dict[str, Any]:
        from cupid_airflow.connections import build_sync_plan, destination_identities, resolve_connection
        from cupid_airflow.core.reconcile import CheckpointStore, ReconcileRun
        from cupid_airflow.core.store import DeliveryStore
        from cupid_airflow.cursors import VariableCursorStore
        from cupid_airflow.operators.common import load_config_or_fail

        config = load_config_or_fail(self.config_path)
        plan = build_sync_plan(config, destination_identities(config))
        state = resolve_connection(config.state_connection)
        store = DeliveryStore(state)
        try:
            summary = ReconcileRun(
                config=config.name,
                source=plan.source,
                table=plan.table,
                id_column=plan.id_column,
                by_column=plan.by_column,
                destinations=plan.destinations,
                settings=reconcile_settings(config.reconcile),
                store=store,
                checkpoints=CheckpointStore(state),
                progress=VariableCursorStore(config.name, kind="reconcile"),
                restart=_restart_requested(context),
                key_columns=config.reconcile.key_columns,
            ).run()
        finally:
            store.close()
        self.log.info("cupid reconcile summary: %s", json.dumps(summary, sort_keys=True))
        broken = {n: d["error"] for n, d in summary["destinations"].items() if d["error"]}
        if broken:
            context["ti"].xcom_push(key="return_value", value=summary)
            raise RuntimeError("reconcile failed for " + "; ".join(f"{n}: {e}" for n, e in broken.items()))
        return summary


def reconcile_settings(section: Reconcile) -> ReconcileSettings:
    """The core's settings from a config's ``reconcile`` section."""
    from cupid_airflow.core.reconcile import ReconcileSettings

    return ReconcileSettings(
        detect_deletes=section.detect_deletes,
        chunk_size=min(max(section.chunk_size, section.min_chunk_size), section.max_chunk_size),
        min_chunk_size=section.min_chunk_size,
        max_chunk_size=section.max_chunk_size,
        target_chunk_second=section.target_chunk_second,
        max_seconds_per_run=section.max_seconds_per_run,
        max_chunks_per_run=section.max_chunks_per_run,
        max_threads_running=section.max_threads_running,
        max_replica_lag_second=section.max_replica_lag_second,
        wait_second=section.load_wait_second,
        bucket_rows=section.bucket_rows,
        max_compare_rows=section.max_compare_rows,
        checkpoint_second=section.checkpoint_second,
        max_checkpoint_age_second=section.max_checkpoint_age_second,
    )


def _restart_requested(context: Context) -> bool:
    """True when the run was triggered with ``{"restart": true}``."""
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    return bool(conf.get("restart")) if isinstance(conf, dict) else False
