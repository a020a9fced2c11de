"""Late commits below the insert cursor, tracked as id gaps: real MariaDB tables, real slow transactions.

The guarantee under test (docs/config.md): a row whose transaction commits within
``lateCommitSecond`` of its id gap being first seen is compared, whatever the run length, the
number of runs, the id spacing, destination failures and sibling lag; gaps live in the cursors.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.gaps import GapTracker
from cupid_airflow.core.sync import MemoryCursorStore, SyncRun
from tests.support.database import execute, params_for, query
from tests.support.scans import Connector, fail_after, found, keyset, make_plan, open_insert, pause_first

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import AirflowVariables, MariaDB

    from cupid_airflow.core.store import DeliveryStore

pytestmark = pytest.mark.integration

LATE = "INSERT INTO src (code, name) VALUES ('late', 'slow transaction')"
QUICK = "INSERT INTO src (code, name) VALUES ('quick', 'autocommit')"


def tables(mariadb: MariaDB, database: str, rows: int = 10) -> None:
    """``src(id AUTO_INCREMENT, code, name)`` with ``rows`` rows and its exact copy ``dst``."""
    execute(
        mariadb,
        database,
        "CREATE TABLE src (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
        "name VARCHAR(64) NULL) ENGINE=InnoDB",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
    )
    if rows:
        execute(
            mariadb,
            database,
            f"INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', seq), 'old' FROM seq_1_to_{rows}",
            "INSERT INTO dst SELECT code, name FROM src",
        )


def test_late_row_is_found_although_the_destination_failed_in_the_run_after_it_committed(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10, late commit 1: a run whose destination fails must not count as having re-checked the gap."""
    tables(mariadb, fresh_database)
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=1, lookup_connections=1)
    cursors = MemoryCursorStore()
    cursors.save("des0", {"insertId": 11})
    with open_insert(mariadb, fresh_database, LATE) as commit:
        execute(mariadb, fresh_database, QUICK)
        SyncRun(plan, cursors, store).run()  # passes the open row
        commit()
    time.sleep(1.2)  # lateCommitSecond passes: only a run that really re-checks may let the gap go
    failing = Connector(before=fail_after("FROM `dst`", allowed=1))  # the probe works, every lookup fails
    failed = SyncRun(plan, cursors, store, connector=failing).run()
    assert failed["destinations"]["des0"]["error"]
    assert found(store) == keyset([b"quick"])

    SyncRun(plan, cursors, store).run()

    assert found(store) == keyset([b"quick", b"late"]), "the late row was lost after a failed run"


def test_late_row_is_found_when_a_long_run_read_the_higher_id_long_after_it_started(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10, late commit 2: a gap is timed from when the higher id was read, not from the run's start."""
    tables(mariadb, fresh_database)
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=3, lookup_connections=1)
    cursors = MemoryCursorStore()
    cursors.save("des0", {"insertId": 11})
    slow = Connector(before=pause_first("ORDER BY `id`", 4.0))  # 4 s pass before the first batch is read
    with open_insert(mariadb, fresh_database, LATE) as commit:
        execute(mariadb, fresh_database, QUICK)
        SyncRun(plan, cursors, store, connector=slow).run()
        SyncRun(plan, cursors, store).run()  # a quick run before the slow transaction commits
        commit()  # within a second of the higher id being read, well within lateCommitSecond
    SyncRun(plan, cursors, store).run()

    assert found(store) == keyset([b"quick", b"late"]), "the late row was lost after a long run"


def test_late_row_is_found_after_more_runs_than_any_history_would_keep(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10, late commit 3: 60 runs within lateCommitSecond, then the commit."""
    tables(mariadb, fresh_database)
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=120, lookup_connections=1)
    cursors = MemoryCursorStore()
    cursors.save("des0", {"insertId": 11})
    with open_insert(mariadb, fresh_database, LATE) as commit:
        execute(mariadb, fresh_database, QUICK)
        for _ in range(60):
            SyncRun(plan, cursors, store).run()
        commit()
    SyncRun(plan, cursors, store).run()

    assert found(store) == keyset([b"quick", b"late"]), "the late row was lost after many runs"


def test_late_row_is_found_with_sparse_ids(mariadb: MariaDB, fresh_database: str, store: DeliveryStore) -> None:
    """Issue 10, late commit 4: ids 100,000 apart (snowflake-style, auto_increment_increment)."""
    tables(mariadb, fresh_database, rows=0)
    execute(mariadb, fresh_database, "INSERT INTO src (id, code, name) VALUES (1000000, 'a', 'x'), (1100000, 'b', 'x')")
    execute(mariadb, fresh_database, "INSERT INTO dst SELECT code, name FROM src")
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=30, lookup_connections=1)
    cursors = MemoryCursorStore()
    SyncRun(plan, cursors, store).run()
    with open_insert(
        mariadb, fresh_database, "INSERT INTO src (id, code, name) VALUES (1200000, 'late', 's')"
    ) as commit:
        execute(mariadb, fresh_database, "INSERT INTO src (id, code, name) VALUES (1300000, 'quick', 'q')")
        SyncRun(plan, cursors, store).run()
        commit()
    SyncRun(plan, cursors, store).run()

    assert found(store) == keyset([b"quick", b"late"]), "the late row was lost between sparse ids"


def test_late_row_is_found_although_a_lagging_sibling_used_up_the_runs_budget(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10, late commit 1 (sibling lag): the caught-up destination's gaps are re-checked every run."""
    tables(mariadb, fresh_database, rows=2000)
    params = params_for(mariadb, fresh_database)
    ahead = DestinationSpec("ahead", "dst", "code", {"code": "code", "name": "name"})
    behind = DestinationSpec("behind", "dst", "code", {"code": "code", "name": "name"})
    plan = make_plan(
        params,
        {"ahead": (params, ahead), "behind": (params, behind)},
        late_commit_second=1,
        batch_size=100,
        max_rows_per_run=500,
        lookup_connections=1,
    )
    cursors = MemoryCursorStore()
    cursors.save("ahead", {"insertId": 2001})
    cursors.save("behind", {"insertId": 2001})
    with open_insert(mariadb, fresh_database, LATE) as commit:
        execute(mariadb, fresh_database, QUICK)
        SyncRun(plan, cursors, store).run()  # both pass the open row
        commit()
    behind_cursor = cursors.load("behind") or {}
    cursors.save("behind", {**behind_cursor, "insertId": 1})  # someone rescans 'behind' from the start
    for _ in range(12):  # 'behind' needs at least 5 runs to catch up; 'ahead' must keep re-checking meanwhile
        time.sleep(0.5)
        if SyncRun(plan, cursors, store).run()["caughtUp"]:
            break

    assert (cursors.load("behind") or {})["insertId"] == 2003
    assert found(store, "ahead") == keyset([b"quick", b"late"], "ahead"), "the caught-up destination lost the row"


def test_rolled_back_ids_are_forgotten_after_late_commit_second(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    tables(mariadb, fresh_database)
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=1, lookup_connections=1)
    cursors = MemoryCursorStore()
    cursors.save("des0", {"insertId": 11})
    with open_insert(mariadb, fresh_database, LATE):
        execute(mariadb, fresh_database, QUICK)
        first = SyncRun(plan, cursors, store).run()
    # rolled back: id 11 is a permanent gap
    assert first["destinations"]["des0"]["lateCommits"]["gaps"] == 1
    second = SyncRun(plan, cursors, store).run()
    assert second["destinations"]["des0"]["lateCommits"] == {"gaps": 1, "found": 0, "expired": 0, "overCap": 0}
    time.sleep(1.1)
    third = SyncRun(plan, cursors, store).run()

    assert third["destinations"]["des0"]["lateCommits"] == {"gaps": 0, "found": 0, "expired": 1, "overCap": 0}
    assert (cursors.load("des0") or {}).get("gaps") in (None, {})
    assert found(store) == keyset([b"quick"])


def test_gaps_over_the_cap_are_dropped_lowest_first_counted_and_warned(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, caplog: pytest.LogCaptureFixture
) -> None:
    tables(mariadb, fresh_database, rows=0)
    execute(
        mariadb,
        fresh_database,
        "INSERT INTO src (id, code, name) SELECT seq * 2, CONCAT('k', seq * 2), 'x' FROM seq_1_to_1000",
        "INSERT INTO dst SELECT code, name FROM src",
    )
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=60, late_commit_max_gaps=100, batch_size=300)
    cursors = MemoryCursorStore()
    with caplog.at_level(logging.WARNING, logger="cupid_airflow"):
        summary = SyncRun(plan, cursors, store, start_id=1).run()

    late = summary["destinations"]["des0"]["lateCommits"]
    assert late["gaps"] == 100
    assert late["overCap"] == 900  # ids 1, 3, ..., 1999: 1000 gaps, the lowest 900 dropped
    assert any("lateCommitMaxGaps" in r.getMessage() and "des0" in r.getMessage() for r in caplog.records)

    # the highest gaps are the ones kept: a late row there is still found
    execute(mariadb, fresh_database, "INSERT INTO src (id, code, name) VALUES (1999, 'late', 'x')")
    again = SyncRun(plan, cursors, store).run()
    assert again["destinations"]["des0"]["lateCommits"]["found"] == 1
    assert found(store) == keyset([b"late"])


def test_gaps_are_queried_through_the_id_index_whatever_the_spacing(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Re-checking gaps costs index lookups, not rows: 1,000 rows with 999 gaps between huge ids."""
    tables(mariadb, fresh_database, rows=0)
    execute(
        mariadb,
        fresh_database,
        "INSERT INTO src (id, code, name) SELECT seq * 1000000007, CONCAT('k', seq), 'x' FROM seq_1_to_1000",
        "INSERT INTO dst SELECT code, name FROM src",
    )
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=60)
    cursors = MemoryCursorStore()
    SyncRun(plan, cursors, store, start_id=1).run()
    spy = Connector()
    second = SyncRun(plan, cursors, store, connector=spy).run()

    assert second["destinations"]["des0"]["lateCommits"]["gaps"] == 1000
    assert second["rowsScanned"]["insert"] == 0
    gap_queries = [sql for sql, _ in spy.statements if "FROM `src`" in sql and "BETWEEN" in sql]
    assert gap_queries, "the gaps were not re-checked"
    conn = mariadb.connect(fresh_database)
    try:
        cursor = conn.cursor()
        for sql in gap_queries:
            cursor.execute("EXPLAIN " + sql)
            names = [d[0] for d in cursor.description]
            for row in cursor.fetchall():
                plan_row = dict(zip(names, row, strict=True))
                assert plan_row["type"] == "range" and plan_row["key"] == "PRIMARY", plan_row
    finally:
        conn.close()


def test_a_cursor_moved_down_by_hand_keeps_only_the_gaps_below_it(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    tables(mariadb, fresh_database, rows=0)
    execute(
        mariadb,
        fresh_database,
        "INSERT INTO src (id, code, name) SELECT seq * 2, CONCAT('k', seq * 2), 'x' FROM seq_1_to_10",
        "INSERT INTO dst SELECT code, name FROM src",
    )
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=60)
    cursors = MemoryCursorStore()
    SyncRun(plan, cursors, store, start_id=1).run()
    cursor = cursors.load("des0") or {}
    assert cursor["insertId"] == 21 and cursor["gaps"]["ranges"] == "1,2,2,2,2,2,2,2,2,2"  # ids 1, 3, ..., 19
    cursors.save("des0", {**cursor, "insertId": 8})  # an operator rescans from id 8

    summary = SyncRun(plan, cursors, store).run()

    assert summary["destinations"]["des0"]["error"] is None
    assert summary["rowsScanned"]["insert"] == 7
    gaps = GapTracker.from_json((cursors.load("des0") or {})["gaps"])
    assert gaps.ranges() == [(i, i) for i in range(1, 20, 2)]  # 9..19 found again, seen now
    assert found(store) == set()


# -- through the DAG: gaps persist in the cursor Variable ----------------------------------------
def test_dag_gaps_survive_between_task_runs_in_the_cursor_variable(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Any,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
) -> None:
    from cupid_airflow.core.config import load_config
    from cupid_airflow.cursors import cursor_variable_key
    from cupid_airflow.dag_factory import build_dags

    tables(mariadb, fresh_database)
    name = f"gapdag{fresh_database[-8:]}"
    dsn = mariadb.go_dsn(fresh_database)
    path = tmp_path / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "retries": 0,
                "src": {"dsn": dsn, "table": "src", "byColumn": "code", "lateCommitSecond": 60},
                "des": [
                    {
                        "name": "des0",
                        "dsn": dsn,
                        "table": "dst",
                        "byColumn": "code",
                        "columns": {"code": "code", "name": "name"},
                        "callbackNotification": {"url": "http://127.0.0.1:9/cb"},
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    config = load_config(path)
    dag = build_dags(config)[config.sync_dag_id]
    key = cursor_variable_key(name, "des0")
    airflow_variables.set(key, json.dumps({"insertId": 11}))
    with open_insert(mariadb, fresh_database, LATE) as commit:
        execute(mariadb, fresh_database, QUICK)
        run_dag(dag)
        late_id = commit()
    stored = json.loads(airflow_variables.get(key) or "{}")
    assert stored["insertId"] == late_id + 2
    assert stored["gaps"]["ranges"] == str(late_id), stored["gaps"]

    second = run_dag(dag)

    summary = xcom_value(second, "compare")
    assert summary["destinations"]["des0"]["lateCommits"]["found"] == 1
    rows = query(mariadb, fresh_database, "SELECT row_key FROM cupid_delivery WHERE config = %s", (name,))
    assert {r[0] for r in rows} == {b"quick", b"late"}
