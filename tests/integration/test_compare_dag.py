"""Integration tests of the compare through real runs of the sync DAG (``dag.test()``).

Each test writes a cupid config JSON into a temporary folder, loads it, builds its DAGs with
:func:`cupid_airflow.dag_factory.build_dags` and runs ``cupid_<name>_sync`` with the ``run_dag``
fixture. Cursors live in Airflow Variables, mismatches in ``cupid_delivery`` of the source
database; the ``deliver`` task POSTs them to a small receiver on 127.0.0.1 that answers 204.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.config import CupidConfig, load_config
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import STATUSES, DeliveryStore
from cupid_airflow.cursors import cursor_variable_key
from cupid_airflow.dag_factory import build_dags
from tests.support.database import execute

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import AirflowVariables, MariaDB

    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


# -- helpers ---------------------------------------------------------------------------------------
def source_tables(mariadb: MariaDB, database: str, rows: int, *, update_column: bool = False) -> None:
    """``src(id, code, name[, updated_at])`` with ``rows`` rows and its exact copy ``dst(code, name)``."""
    updated_at = (
        ", updated_at DATETIME(6) NOT NULL DEFAULT '2020-01-01 00:00:00' ON UPDATE CURRENT_TIMESTAMP(6), "
        "KEY (updated_at)"
        if update_column
        else ""
    )
    execute(
        mariadb,
        database,
        "CREATE TABLE src (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
        f"name VARCHAR(64) NULL{updated_at})",
        f"INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', seq), CONCAT('name ', seq) FROM seq_1_to_{rows}",
    )


def copy_table(
    mariadb: MariaDB, source_database: str, database: str, *, missing: set[int], different: set[int]
) -> None:
    execute(
        mariadb,
        database,
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        f"INSERT INTO dst (code, name) SELECT code, name FROM `{source_database}`.src",
        *([f"DELETE FROM dst WHERE code IN ({keys_sql(missing)})"] if missing else []),
        *([f"UPDATE dst SET name = 'stale' WHERE code IN ({keys_sql(different)})"] if different else []),
    )


def keys_sql(ids: set[int]) -> str:
    return ", ".join(f"'k{i}'" for i in sorted(ids))


def destination(name: str, dsn: str, receiver: Receiver) -> dict[str, Any]:
    return {
        "name": name,
        "dsn": dsn,
        "table": "dst",
        "byColumn": "code",
        "columns": {"code": "code", "name": "name"},
        "callbackNotification": {"url": f"{receiver.origin}/cb/{name}", "timeoutSecond": 5},
    }


def write_config(
    folder: Path, name: str, source_dsn: str, destinations: list[dict[str, Any]], **src: Any
) -> CupidConfig:
    data = {
        "retries": 0,
        "src": {"dsn": source_dsn, "table": "src", "byColumn": "code", **src},
        "des": destinations,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return load_config(path)


def unique_name() -> str:
    return f"cmpdag{secrets.token_hex(4)}"


def go_dsn(mariadb: MariaDB, database: str, port: int | None = None) -> str:
    address = f"{mariadb.host}:{port or mariadb.port}"
    return f"{mariadb.user}:{mariadb.password}@tcp({address})/{database}?charset=utf8mb4"


def recorded(mariadb: MariaDB, database: str, config: str) -> set[tuple[str, str, int]]:
    """(destination, key, type) of every item recorded for ``config``, whatever its status."""
    store = DeliveryStore(ConnectionParams(mariadb.host, mariadb.port, mariadb.user, mariadb.password, database))
    try:
        return {
            (i.destination, i.row_key.decode(), i.type) for i in store.items(config, statuses=STATUSES, limit=1_000_000)
        }
    finally:
        store.close()


def keyset(ids: set[int], destination_name: str, mismatch_type: int) -> set[tuple[str, str, int]]:
    return {(destination_name, f"k{i}", mismatch_type) for i in ids}


def cursor_of(airflow_variables: AirflowVariables, config: str, destination_name: str) -> dict[str, Any] | None:
    value = airflow_variables.get(cursor_variable_key(config, destination_name))
    return None if value is None else json.loads(value)


# -- 2. an unreachable destination, through the DAG ------------------------------------------------
def test_dag_compare_fails_naming_the_unreachable_destination_while_the_healthy_one_advances(
    mariadb: MariaDB,
    fresh_database: str,
    other_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
    capfd: pytest.CaptureFixture[str],
) -> None:
    source_tables(mariadb, fresh_database, 200)
    copy_table(mariadb, fresh_database, fresh_database, missing={7, 70}, different={150})
    copy_table(mariadb, fresh_database, other_database, missing={8}, different={80, 180})
    name = unique_name()
    source_dsn = go_dsn(mariadb, fresh_database)

    def configure(broken_dsn: str) -> CupidConfig:
        return write_config(
            tmp_path,
            name,
            source_dsn,
            [destination("good", source_dsn, receiver), destination("flaky", broken_dsn, receiver)],
            batchSize=50,
        )

    config = configure(go_dsn(mariadb, other_database, port=1))
    dag = build_dags(config)[config.sync_dag_id]
    capfd.readouterr()
    first = run_dag(dag)

    assert first.get_task_instance("compare").state == "failed"
    output = "".join(capfd.readouterr())
    assert re.search(r"destination\(s\) unavailable.*\bflaky: .*127\.0\.0\.1:1\b", output), (
        "the compare task's failure must name the unavailable destination"
    )
    summary = xcom_value(first, "compare")
    assert summary["destinations"]["flaky"]["error"]
    assert summary["destinations"]["good"]["error"] is None
    assert cursor_of(airflow_variables, name, "good")["insertId"] == 201  # type: ignore[index]
    assert cursor_of(airflow_variables, name, "flaky") is None
    assert recorded(mariadb, fresh_database, name) == keyset({7, 70}, "good", 1) | keyset({150}, "good", 2)
    # the deliver task still ran (trigger rule all_done) and POSTed the healthy destination's items
    assert first.get_task_instance("deliver").state == "success"
    assert {(b["key"], b["type"]) for b in receiver.documents("/cb/good")} == {("k7", 1), ("k70", 1), ("k150", 2)}

    configure(go_dsn(mariadb, other_database))  # the destination is back
    second = run_dag(dag)

    assert second.get_task_instance("compare").state == "success"
    assert cursor_of(airflow_variables, name, "flaky")["insertId"] == 201  # type: ignore[index]
    assert cursor_of(airflow_variables, name, "good")["insertId"] == 201  # type: ignore[index]
    assert recorded(mariadb, fresh_database, name) == (
        keyset({7, 70}, "good", 1) | keyset({150}, "good", 2) | keyset({8}, "flaky", 1) | keyset({80, 180}, "flaky", 2)
    )
    assert {(b["key"], b["type"]) for b in receiver.documents("/cb/flaky")} == {("k8", 1), ("k80", 2), ("k180", 2)}
    assert xcom_value(second, "compare")["caughtUp"] is True


# -- 3. cursors survive downtime, through the DAG --------------------------------------------------
def test_dag_cursors_in_variables_survive_downtime_longer_than_the_update_window(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
) -> None:
    source_tables(mariadb, fresh_database, 30, update_column=True)
    copy_table(mariadb, fresh_database, fresh_database, missing=set(), different=set())
    name = unique_name()
    source_dsn = go_dsn(mariadb, fresh_database)
    config = write_config(
        tmp_path,
        name,
        source_dsn,
        [destination("des0", source_dsn, receiver)],
        update=True,
        updateColumn="updated_at",
        updateScanSecond=1,
        lateCommitSecond=0,
    )
    dag = build_dags(config)[config.sync_dag_id]

    first = run_dag(dag)
    assert first.get_task_instance("compare").state == "success"
    first_summary = xcom_value(first, "compare")
    cursor = cursor_of(airflow_variables, name, "des0")
    assert cursor is not None
    assert cursor["insertId"] == 31
    assert cursor["updateTimeUtc"] == first_summary["sourceUtc"]
    assert recorded(mariadb, fresh_database, name) == set()

    execute(
        mariadb,
        fresh_database,
        "INSERT INTO src (id, code, name) VALUES (31, 'k31', 'new'), (32, 'k32', 'new'), (33, 'k33', 'new')",
        "UPDATE src SET name = 'changed while cupid was down' WHERE id IN (4, 12)",
    )
    time.sleep(2.5)  # longer than updateScanSecond
    second = run_dag(dag)

    assert second.get_task_instance("compare").state == "success"
    summary = xcom_value(second, "compare")
    assert summary["rowsScanned"] == {"insert": 3, "update": 2}
    assert recorded(mariadb, fresh_database, name) == keyset({31, 32, 33}, "des0", 1) | keyset({4, 12}, "des0", 2)
    cursor = cursor_of(airflow_variables, name, "des0")
    assert cursor is not None
    assert cursor["insertId"] == 34
    assert cursor["updateTimeUtc"] == summary["sourceUtc"]
    # what was POSTed: the whole source row, values as strings
    bodies = {body["key"]: body for body in receiver.documents("/cb/des0")}
    assert set(bodies) == {"k31", "k32", "k33", "k4", "k12"}
    assert bodies["k12"]["type"] == 2
    assert bodies["k12"]["srcColumn"]["id"] == "12"
    assert bodies["k12"]["srcColumn"]["name"] == "changed while cupid was down"
    assert bodies["k12"]["differences"] == {
        "name": {"source": "changed while cupid was down", "destination": "name 12"}
    }
    assert bodies["k31"]["type"] == 1
    assert bodies["k31"]["srcColumn"]["updated_at"] == "2020-01-01 00:00:00.000000"


# -- 7. start_id rescans, through the DAG ----------------------------------------------------------
def test_dag_start_id_param_rescans_from_that_id(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
    receiver: Receiver,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
) -> None:
    source_tables(mariadb, fresh_database, 100)
    copy_table(mariadb, fresh_database, fresh_database, missing={3, 60}, different={40, 99})
    expected = keyset({3, 60}, "des0", 1) | keyset({40, 99}, "des0", 2)
    name = unique_name()
    source_dsn = go_dsn(mariadb, fresh_database)
    config = write_config(
        tmp_path,
        name,
        source_dsn,
        [destination("des0", source_dsn, receiver)],
        batchSize=30,
        lateCommitSecond=0,
    )
    dag = build_dags(config)[config.sync_dag_id]

    first = run_dag(dag)
    assert first.get_task_instance("compare").state == "success"
    assert recorded(mariadb, fresh_database, name) == expected
    assert cursor_of(airflow_variables, name, "des0")["insertId"] == 101  # type: ignore[index]
    execute(mariadb, fresh_database, "DELETE FROM cupid_delivery")

    plain = run_dag(dag)  # without start_id nothing below the cursor is looked at again
    assert xcom_value(plain, "compare")["rowsScanned"]["insert"] == 0
    assert recorded(mariadb, fresh_database, name) == set()

    rescan = run_dag(dag, run_conf={"start_id": 1})

    assert rescan.get_task_instance("compare").state == "success"
    summary = xcom_value(rescan, "compare")
    assert summary["rowsScanned"]["insert"] == 100
    assert summary["recorded"] == 4
    assert summary["destinations"]["des0"]["cursorBefore"]["insertId"] == 101
    assert summary["destinations"]["des0"]["cursorAfter"]["insertId"] == 101
    assert recorded(mariadb, fresh_database, name) == expected
    cursor = cursor_of(airflow_variables, name, "des0")
    assert cursor is not None
    assert cursor["insertId"] == 101
    assert cursor["gaps"] is None  # the rescan from id 1 found no id missing
