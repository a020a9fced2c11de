"""The cursor promise, by fault injection: a cursor never moves past a mismatch the store has not committed.

The store's recording is made to fail (a trigger refuses a row) and the compare's process to die
(SIGKILL while a trigger holds a recording transaction open) at each step of a run: the first
recording transaction, a middle one, the last one. The cursors are the real ones, Airflow
Variables, written by real DAG runs. After each fault, every mismatch below the stored insert
cursor must be in the store, and a clean run afterwards must record every mismatch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.store import DeliveryStore
from cupid_airflow.cursors import cursor_variable_key
from tests.support.outbox import dags_of, new_stem, params_of, task_states, write_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import AirflowVariables, MariaDB

    from cupid_airflow.core.sql import ConnectionParams

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROWS = 12_000  # every one missing at the destination: recorded in 3 transactions (5,000 detections each)
FLUSH = 5_000


def tables(mariadb: MariaDB, database: str) -> None:
    conn = mariadb.connect(database)
    try:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE user (id BIGINT NOT NULL PRIMARY KEY, number VARCHAR(32) NOT NULL UNIQUE,"
            " name VARCHAR(64) NULL, avatar VARCHAR(255) NULL)"
        )
        cur.execute(
            "INSERT INTO user SELECT seq, CONCAT('n-', LPAD(seq, 6, '0')), CONCAT('name ', seq), NULL "
            f"FROM seq_1_to_{ROWS}"
        )
        cur.execute(
            "CREATE TABLE user_copy (number VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64), avatar VARCHAR(255))"
        )
    finally:
        conn.close()
    DeliveryStore(params_of(mariadb, database)).ensure_schema()


def execute(params: ConnectionParams, sql: str) -> list[tuple[Any, ...]]:
    import MySQLdb

    conn = MySQLdb.connect(
        host=params.host, port=params.port, user=params.user, password=params.password, database=params.database
    )
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return list(cur.fetchall())
    finally:
        conn.close()


def recorded_ids(params: ConnectionParams) -> set[int]:
    return {int(r[0]) for r in execute(params, "SELECT source_id FROM cupid_delivery")}


def assert_cursor_below_every_unrecorded_mismatch(
    variables: AirflowVariables, params: ConnectionParams, config: str
) -> int | None:
    """Every mismatch below the stored insert cursor is recorded; returns the cursor (None: never saved)."""
    stored = variables.get(cursor_variable_key(config, "copy0"))
    if stored is None:
        return None
    insert_id = json.loads(stored).get("insertId")
    if insert_id is None:
        return None
    missing_below = set(range(1, min(int(insert_id), ROWS + 1))) - recorded_ids(params)
    assert not missing_below, f"the cursor is at {insert_id} but ids {sorted(missing_below)[:5]}... are not recorded"
    return int(insert_id)


@pytest.mark.parametrize("refused_row", [1, FLUSH + 1, 2 * FLUSH + 1], ids=["first", "middle", "last"])
def test_a_recording_that_fails_leaves_the_cursor_where_it_was(
    refused_row: int,
    run_dag: Callable[..., Any],
    airflow_variables: AirflowVariables,
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    tables(mariadb, fresh_database)
    params = params_of(mariadb, fresh_database)
    execute(
        params,
        "CREATE TRIGGER refuse BEFORE INSERT ON cupid_delivery FOR EACH ROW "
        f"IF NEW.source_id = {refused_row} THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'store down'; END IF",
    )
    stem = new_stem("cursor")
    sync, _ = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), "http://127.0.0.1:9/"))
    compare = sync.partial_subset(task_ids=["compare"], include_upstream=False)

    failed = run_dag(compare)
    assert task_states(failed) == {"compare": "failed"}
    assert recorded_ids(params) == set(range(1, refused_row)), "whole transactions before the refused row"
    assert assert_cursor_below_every_unrecorded_mismatch(airflow_variables, params, stem) is None

    execute(params, "DROP TRIGGER refuse")
    assert task_states(run_dag(compare)) == {"compare": "success"}
    assert recorded_ids(params) == set(range(1, ROWS + 1))
    assert assert_cursor_below_every_unrecorded_mismatch(airflow_variables, params, stem) == ROWS + 1


@pytest.mark.parametrize("held_row", [1, FLUSH + 1, 2 * FLUSH + 1], ids=["first", "middle", "last"])
def test_a_compare_killed_while_recording_never_leaves_a_cursor_past_an_unrecorded_mismatch(
    held_row: int,
    run_dag: Callable[..., Any],
    airflow_variables: AirflowVariables,
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    tables(mariadb, fresh_database)
    params = params_of(mariadb, fresh_database)
    execute(
        params,
        "CREATE TRIGGER hold BEFORE INSERT ON cupid_delivery FOR EACH ROW "
        f"IF NEW.source_id = {held_row} THEN DO SLEEP(60); END IF",
    )
    stem = new_stem("killed")
    dags = tmp_path / "dags"
    (dags / "cupid").mkdir(parents=True)
    for name in ("cupid_dags.py", "cupid_config_errors.py"):
        shutil.copy(REPO / "dags" / name, dags / name)
    write_config(dags / "cupid", stem, mariadb.go_dsn(fresh_database), "http://127.0.0.1:9/", retries=0)
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    for name in ("CUPID_CONFIG_FOLDER", "AIRFLOW__CUPID__CONFIG_FOLDER"):
        env.pop(name, None)
    child = subprocess.Popen(
        [str(Path(sys.executable).with_name("airflow")), "dags", "test", f"cupid_{stem}_sync"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        held = None
        deadline = time.monotonic() + 120
        while held is None and time.monotonic() < deadline and child.poll() is None:
            rows = execute(
                params,
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND STATE = 'User sleep'",
            )
            held = rows[0][0] if rows else None
            time.sleep(0.1)
        assert held is not None, "the compare never reached the held recording"
        os.killpg(child.pid, signal.SIGKILL)  # the compare dies inside its recording transaction
        child.wait(10)
        execute(params, f"KILL {int(held)}")  # the server would find the dead client only after the sleep
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)

    assert recorded_ids(params) == set(range(1, held_row)), "whole transactions before the killed one"
    assert assert_cursor_below_every_unrecorded_mismatch(airflow_variables, params, stem) is None

    execute(params, "DROP TRIGGER hold")
    sync, _ = dags_of(dags / "cupid" / f"{stem}.json")
    compare = sync.partial_subset(task_ids=["compare"], include_upstream=False)
    assert task_states(run_dag(compare)) == {"compare": "success"}
    assert recorded_ids(params) == set(range(1, ROWS + 1))
    assert assert_cursor_below_every_unrecorded_mismatch(airflow_variables, params, stem) == ROWS + 1
