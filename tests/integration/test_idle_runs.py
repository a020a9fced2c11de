"""Idle sync runs start no delivery process: ``compare`` branches past ``deliver`` when nothing is pending.

Real runs of ``cupid_<name>_sync`` (``dag.test()``) over a fresh MariaDB database and a loopback
receiver; each test checks the states of ``compare``, ``deliver`` and ``done`` and of the run.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.config import CupidConfig, load_config
from cupid_airflow.dag_factory import build_dags

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import MariaDB

    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


def delivered(receiver: Receiver) -> list[str | None]:
    """Keys of the callbacks the receiver answered 2xx, in the order they came."""
    return [h.key for h in list(receiver.hits) if h.status is not None and 200 <= h.status < 300]


def tables(mariadb: MariaDB, database: str, *, rows: int, missing: set[int]) -> None:
    """``src(id, code, name)`` and its copy ``dst(code, name)`` without the ``missing`` ids."""
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute(
            "CREATE TABLE src (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
            "name VARCHAR(64) NULL)"
        )
        cursor.execute(f"INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', seq), 'n' FROM seq_1_to_{rows}")
        cursor.execute("CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)")
        cursor.execute("INSERT INTO dst SELECT code, name FROM src")
        if missing:
            cursor.execute(f"DELETE FROM dst WHERE code IN ({', '.join(repr(f'k{i}') for i in missing)})")
    finally:
        conn.close()


def write_config(
    folder: Path,
    mariadb: MariaDB,
    database: str,
    receiver: Receiver,
    *,
    destination_port: int | None = None,
    reconcile: bool = False,
) -> CupidConfig:
    dsn = mariadb.go_dsn(database)
    destination_dsn = dsn if destination_port is None else dsn.replace(f":{mariadb.port})", f":{destination_port})")
    path = folder / f"idle{secrets.token_hex(4)}.json"
    path.write_text(
        json.dumps(
            {
                "retries": 0,
                "src": {"dsn": dsn, "table": "src", "byColumn": "code"},
                "des": [
                    {
                        "name": "copy",
                        "dsn": destination_dsn,
                        "table": "dst",
                        "byColumn": "code",
                        "columns": {"code": "code", "name": "name"},
                        "callbackNotification": {"url": receiver.url, "timeoutSecond": 5},
                    }
                ],
                "reconcile": {"enabled": reconcile, "schedule": "@daily"},
            }
        ),
        encoding="utf-8",
    )
    return load_config(path)


def states(run: Any) -> dict[str, str | None]:
    return {task_id: run.get_task_instance(task_id).state for task_id in ("compare", "deliver", "done")}


def test_an_idle_run_skips_deliver_without_a_try_and_ends_green(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
) -> None:
    tables(mariadb, fresh_database, rows=50, missing=set())
    config = write_config(tmp_path, mariadb, fresh_database, receiver)
    dag = build_dags(config)[config.sync_dag_id]

    run = run_dag(dag)

    assert states(run) == {"compare": "success", "deliver": "skipped", "done": "success"}
    assert run.state == "success"
    assert run.get_task_instance("deliver").try_number == 0, "a skipped deliver never gets a task process"
    summary = xcom_value(run, "compare")
    assert summary["pending"] == 0
    assert summary["destinations"]["copy"]["cursorAfter"]["insertId"] == 51
    assert delivered(receiver) == []


def test_a_run_with_work_delivers_and_the_next_idle_run_skips_deliver(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
) -> None:
    tables(mariadb, fresh_database, rows=50, missing={7, 31})
    config = write_config(tmp_path, mariadb, fresh_database, receiver)
    dag = build_dags(config)[config.sync_dag_id]

    first = run_dag(dag)

    assert states(first) == {"compare": "success", "deliver": "success", "done": "success"}
    assert first.state == "success"
    assert xcom_value(first, "compare")["pending"] == 2
    assert sorted(delivered(receiver)) == ["k31", "k7"]

    second = run_dag(dag)

    assert states(second) == {"compare": "success", "deliver": "skipped", "done": "success"}
    assert second.state == "success"
    assert sorted(delivered(receiver)) == ["k31", "k7"]


def test_items_another_dag_recorded_are_delivered_by_a_run_whose_compare_found_nothing_new(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
) -> None:
    tables(mariadb, fresh_database, rows=20, missing=set())
    config = write_config(tmp_path, mariadb, fresh_database, receiver, reconcile=True)
    dags = build_dags(config)
    sync = dags[config.sync_dag_id]
    assert states(run_dag(sync)) == {"compare": "success", "deliver": "skipped", "done": "success"}
    # a row the incremental scans have passed goes missing: only the reconcile can see it
    conn = mariadb.connect(fresh_database)
    try:
        conn.cursor().execute("DELETE FROM dst WHERE code = 'k3'")
    finally:
        conn.close()
    # only the reconcile task (its DAG's own deliver would send k3 at once)
    reconcile = dags[config.reconcile_dag_id].partial_subset(task_ids=["reconcile"], include_upstream=False)
    assert run_dag(reconcile).state == "success"
    assert delivered(receiver) == []

    run = run_dag(sync)  # the compare records nothing new; the reconcile's item is pending

    assert states(run) == {"compare": "success", "deliver": "success", "done": "success"}
    assert run.state == "success"
    assert delivered(receiver) == ["k3"]


def test_a_failed_deliver_fails_the_run(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
) -> None:
    tables(mariadb, fresh_database, rows=20, missing={3})
    config = write_config(tmp_path, mariadb, fresh_database, receiver)
    receiver.respond = lambda hit, nth: 503

    run = run_dag(build_dags(config)[config.sync_dag_id])

    assert states(run) == {"compare": "success", "deliver": "failed", "done": "upstream_failed"}
    assert run.state == "failed"


def test_a_failed_compare_still_runs_deliver_and_fails_the_run(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
) -> None:
    tables(mariadb, fresh_database, rows=20, missing={3})
    config = write_config(tmp_path, mariadb, fresh_database, receiver, destination_port=1)
    dag = build_dags(config)[config.sync_dag_id]

    run = run_dag(dag)

    assert states(run) == {"compare": "failed", "deliver": "success", "done": "upstream_failed"}
    assert run.state == "failed"
