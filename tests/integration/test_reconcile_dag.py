"""The generated ``cupid_<name>_reconcile`` DAG: it records what it finds, and the sync DAG's ``deliver`` sends it."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.config import load_config
from cupid_airflow.core.store import DeliveryStore
from cupid_airflow.cursors import cursor_variable_key
from cupid_airflow.dag_factory import build_dags
from tests.support.database import execute, params_for
from tests.support.reconcile import checkpoints, found, simple_tables

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import AirflowVariables, MariaDB

    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


# -- 6. the reconcile DAG, then delivery -------------------------------------------------------------
def test_reconcile_dag_records_and_delivers_its_findings(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
) -> None:
    simple_tables(mariadb, fresh_database, 400)
    execute(
        mariadb,
        fresh_database,
        "DELETE FROM dst WHERE code = 'k00050'",
        "UPDATE dst SET name = 'stale' WHERE code = 'k00051'",
        "INSERT INTO dst VALUES ('k66666', 'gone at the source')",
    )
    name = f"recdag{secrets.token_hex(4)}"
    dsn = mariadb.go_dsn(fresh_database)
    data = {
        "retries": 0,
        "src": {"dsn": dsn, "table": "src", "byColumn": "code"},
        "des": [
            {
                "dsn": dsn,
                "table": "dst",
                "byColumn": "code",
                "columns": {"code": "code", "name": "name"},
                "callbackNotification": {"url": f"{receiver.origin}/cb", "timeoutSecond": 5},
            }
        ],
        "reconcile": {
            "enabled": True,
            "detectDeletes": True,
            "chunkSize": 100,
            "minChunkSize": 100,
            "maxChunkSize": 100,
            "maxChunksPerRun": 3,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    config = load_config(path)
    dags = build_dags(config)

    reconcile_dag = dags[config.reconcile_dag_id]
    first = run_dag(reconcile_dag)
    assert first.get_task_instance("reconcile").state == "success"
    paused = xcom_value(first, "reconcile")["destinations"]["des0"]
    assert paused["complete"] is False  # 400 rows in chunks of 100, 3 chunk queries per run
    mirrored = json.loads(airflow_variables.get(cursor_variable_key(name, "des0", "reconcile")) or "{}")
    assert mirrored["complete"] is False and mirrored["phase"] in ("checksum", "compare")
    assert checkpoints(mariadb, fresh_database, name) == 1

    # triggered with {"restart": true}, a run drops the checkpoint and starts a new verify
    restarted = run_dag(reconcile_dag, run_conf={"restart": True})
    assert restarted.get_task_instance("reconcile").state == "success"
    again = xcom_value(restarted, "reconcile")["destinations"]["des0"]
    assert again["resumed"] is False and again["complete"] is False
    assert again["verifyStartedAt"] > paused["verifyStartedAt"]

    runs = [again]
    while not runs[-1]["complete"]:
        dag_run = run_dag(reconcile_dag)
        assert dag_run.get_task_instance("reconcile").state == "success"
        runs.append(xcom_value(dag_run, "reconcile")["destinations"]["des0"])
        assert len(runs) < 20
    assert sum(r["rowsChecked"]["source"] for r in runs) == 400
    store = DeliveryStore(params_for(mariadb, fresh_database))
    try:
        assert Counter(t for _, _, t in found(store, name)) == {1: 1, 2: 1, 3: 1}
    finally:
        store.close()
    mirrored = json.loads(airflow_variables.get(cursor_variable_key(name, "des0", "reconcile")) or "{}")
    assert mirrored["complete"] is True
    assert checkpoints(mariadb, fresh_database, name) == 0

    # the reconcile DAG's own deliver task sent what it found; the sync DAG has nothing left to send
    airflow_variables.set(cursor_variable_key(name, "des0"), json.dumps({"insertId": 401}))
    sync = run_dag(dags[config.sync_dag_id])
    assert sync.get_task_instance("deliver").state == "skipped"
    assert xcom_value(sync, "compare")["recorded"] == 0
    bodies = {body["key"]: body for body in receiver.documents("/cb")}
    assert set(bodies) == {"k00050", "k00051", "k66666"}
    assert bodies["k00050"]["type"] == 1 and bodies["k00050"]["srcColumn"]["id"] == "50"
    assert bodies["k00051"]["differences"] == {"name": {"source": "name 51", "destination": "stale"}}
    assert bodies["k66666"]["type"] == 3
    assert bodies["k66666"]["desColumn"] == {"code": "k66666", "name": "gone at the source"}


# -- item 7: a config that only reconciles -----------------------------------------------------------
def test_a_reconcile_only_config_has_no_sync_dag_and_its_reconcile_dag_delivers_what_it_finds(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
) -> None:
    simple_tables(mariadb, fresh_database, 300)
    execute(
        mariadb,
        fresh_database,
        "DELETE FROM dst WHERE code = 'k00010'",
        "UPDATE dst SET name = 'stale' WHERE code = 'k00011'",
    )
    name = f"reconly{secrets.token_hex(4)}"
    dsn = mariadb.go_dsn(fresh_database)
    data: dict[str, Any] = {
        "retries": 0,
        "src": {"dsn": dsn, "table": "src", "byColumn": "code", "insert": False, "update": False},
        "des": [
            {
                "dsn": dsn,
                "table": "dst",
                "byColumn": "code",
                "columns": {"code": "code", "name": "name"},
                "callbackNotification": {"url": f"{receiver.origin}/cb", "timeoutSecond": 5},
            }
        ],
    }
    path = tmp_path / f"{name}.json"
    # watching nothing and verifying nothing is still a mistake
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="nothing would ever be compared"):
        load_config(path)

    data["reconcile"] = {"enabled": True, "schedule": "0 3 * * *"}
    path.write_text(json.dumps(data), encoding="utf-8")
    config = load_config(path)
    dags = build_dags(config)
    assert sorted(dags) == [config.failure_pool_dag_id, config.reconcile_dag_id]  # no sync DAG
    reconcile_dag = dags[config.reconcile_dag_id]
    assert sorted(reconcile_dag.task_ids) == ["deliver", "done", "reconcile"]
    assert "`deliver` task" in (reconcile_dag.doc_md or "")

    dag_run = run_dag(reconcile_dag)
    assert dag_run.get_task_instance("reconcile").state == "success"
    assert dag_run.get_task_instance("deliver").state == "success"
    assert xcom_value(dag_run, "reconcile")["destinations"]["des0"]["complete"] is True
    bodies = {body["key"]: body for body in receiver.documents("/cb")}
    assert set(bodies) == {"k00010", "k00011"}
    assert bodies["k00010"]["type"] == 1 and bodies["k00011"]["type"] == 2
