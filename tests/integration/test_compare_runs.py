"""The compare's runs over time, against real MariaDB tables through :class:`SyncRun` and the delivery store.

A broken destination delays only itself; cursors survive downtime; late commits are found; bounded
runs together find everything; a SIGKILL mid-run loses and duplicates nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun
from tests.support.compare_tables import (
    CONFIG,
    SIMPLE_SPEC,
    all_items,
    copy_table,
    found,
    keyset,
    make_plan,
    simple_tables,
)
from tests.support.database import execute, params_for, query

if TYPE_CHECKING:
    from conftest import MariaDB

    from cupid_airflow.core.sql import ConnectionParams
    from cupid_airflow.core.store import DeliveryStore

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- a broken destination delays only itself ----------------------------------------------------
def test_unreachable_destination_waits_and_catches_up_while_the_healthy_one_advances(
    mariadb: MariaDB, fresh_database: str, other_database: str, store: DeliveryStore
) -> None:
    source = params_for(mariadb, fresh_database)
    simple_tables(mariadb, fresh_database, 300, missing={10, 20}, different={30})
    copy_table(mariadb, fresh_database, other_database, missing={40}, different={50, 60})
    spec_b = DestinationSpec("broken", "dst", "code", {"code": "code", "name": "name"})
    cursors = MemoryCursorStore()

    def plan(broken: ConnectionParams) -> SyncPlan:
        return make_plan(source, {"good": (source, SIMPLE_SPEC), "broken": (broken, spec_b)}, batch_size=50)

    # run 1: nothing listens on port 1
    summary = SyncRun(plan(params_for(mariadb, other_database, port=1)), cursors, store).run()
    assert found(store) == keyset({10, 20}, "good", 1) | keyset({30}, "good", 2)
    assert cursors.load("good")["insertId"] == 301  # type: ignore[index]
    assert cursors.load("broken") is None
    assert summary["destinations"]["good"]["error"] is None
    assert "127.0.0.1:1" in summary["destinations"]["broken"]["error"]

    # run 2: the server answers but the database does not exist; new rows arrived meanwhile
    execute(
        mariadb,
        fresh_database,
        "INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', seq), 'new' FROM seq_301_to_320",
    )
    execute(
        mariadb,
        other_database,
        f"INSERT INTO dst (code, name) SELECT code, name FROM `{fresh_database}`.src WHERE id BETWEEN 301 AND 319",
    )  # k320 missing in "broken" only
    execute(mariadb, fresh_database, "INSERT INTO dst (code, name) SELECT code, name FROM src WHERE id > 300")
    missing_db = f"cupid_t_nowhere_{secrets.token_hex(4)}"
    summary = SyncRun(plan(params_for(mariadb, missing_db)), cursors, store).run()
    assert missing_db in summary["destinations"]["broken"]["error"]
    assert cursors.load("broken") is None
    assert cursors.load("good")["insertId"] == 321  # type: ignore[index]
    assert found(store, "broken") == set()

    # run 3: reachable again: it catches up from the start, the healthy one records nothing new
    summary = SyncRun(plan(params_for(mariadb, other_database)), cursors, store).run()
    assert summary["destinations"]["broken"]["error"] is None
    assert found(store, "broken") == keyset({40, 320}, "broken", 1) | keyset({50, 60}, "broken", 2)
    assert found(store, "good") == keyset({10, 20}, "good", 1) | keyset({30}, "good", 2)
    assert cursors.load("broken")["insertId"] == 321  # type: ignore[index]
    assert summary["caughtUp"] is True
    assert len(all_items(store)) == 7


def test_a_run_is_not_caught_up_while_a_destination_is_unreachable(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """``caughtUp`` must not claim that a destination nobody could compare with is up to date.

    The update scan already answers False in that case; the insert scan must agree.
    """
    source = params_for(mariadb, fresh_database)
    simple_tables(mariadb, fresh_database, 10, missing={3}, different=set())
    broken = params_for(mariadb, fresh_database, port=1)
    plan = make_plan(source, {"good": (source, SIMPLE_SPEC), "broken": (broken, SIMPLE_SPEC)})
    summary = SyncRun(plan, MemoryCursorStore(), store).run()
    assert summary["destinations"]["broken"]["error"] is not None
    assert summary["destinations"]["broken"]["lagRows"] == 10
    assert summary["caughtUp"] is False


# -- cursors survive downtime -------------------------------------------------------------------
def test_updates_and_inserts_made_during_downtime_longer_than_the_update_window_are_found(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    execute(
        mariadb,
        fresh_database,
        "CREATE TABLE src (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
        "name VARCHAR(64) NULL, updated_at DATETIME(6) NOT NULL DEFAULT '2020-01-01 00:00:00' "
        "ON UPDATE CURRENT_TIMESTAMP(6), KEY (updated_at))",
        "INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', seq), CONCAT('name ', seq) FROM seq_1_to_20",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        "INSERT INTO dst SELECT code, name FROM src",
    )
    params = params_for(mariadb, fresh_database)
    plan = make_plan(
        params,
        {"des0": (params, SIMPLE_SPEC)},
        update=True,
        update_column="updated_at",
        update_scan_second=1,
        late_commit_second=0,  # only the update scan can see rows below the insert cursor
    )
    cursors = MemoryCursorStore()
    first = SyncRun(plan, cursors, store).run()
    assert first["recorded"] == 0
    assert cursors.load("des0")["updateTimeUtc"] == first["sourceUtc"]  # type: ignore[index]

    execute(
        mariadb,
        fresh_database,
        "INSERT INTO src (id, code, name) VALUES (21, 'k21', 'new'), (22, 'k22', 'new')",
        "UPDATE src SET name = 'changed while cupid was down' WHERE id IN (5, 7)",
    )
    time.sleep(2.5)  # longer than updateScanSecond: the old tools' [now - 1 s, now] window misses it
    second = SyncRun(plan, cursors, store).run()

    assert found(store) == keyset({21, 22}, "des0", 1) | keyset({5, 7}, "des0", 2)
    assert second["rowsScanned"] == {"insert": 2, "update": 2}
    cursor = cursors.load("des0")
    assert cursor is not None
    assert cursor["insertId"] == 23
    assert cursor["updateTimeUtc"] == second["sourceUtc"]


# -- late commits below the insert cursor -------------------------------------------------------
def late_commit_scenario(
    mariadb: MariaDB, database: str, store: DeliveryStore, *, late_commit_second: int, pause: float = 0.0
) -> tuple[int, dict[str, Any]]:
    """Row N in an open transaction, N+1 committed; a run passes both; N commits; (pause); run again.

    Returns N and the second run's summary.
    """
    execute(
        mariadb,
        database,
        "CREATE TABLE src (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
        "name VARCHAR(64) NULL) ENGINE=InnoDB",
        "INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', seq), 'old' FROM seq_1_to_10",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        "INSERT INTO dst SELECT code, name FROM src",
    )
    params = params_for(mariadb, database)
    plan = make_plan(params, {"des0": (params, SIMPLE_SPEC)}, late_commit_second=late_commit_second)
    cursors = MemoryCursorStore()
    cursors.save("des0", {"insertId": 11})  # rows 1..10 were compared long ago

    slow = mariadb.connect(database, autocommit=False)
    try:
        slow_cursor = slow.cursor()
        slow_cursor.execute("BEGIN")
        slow_cursor.execute("INSERT INTO src (code, name) VALUES ('late', 'slow transaction')")
        late_id = int(slow_cursor.lastrowid)
        execute(mariadb, database, "INSERT INTO src (code, name) VALUES ('quick', 'autocommit')")
        assert query(mariadb, database, "SELECT MAX(id) FROM src")[0][0] == late_id + 1

        first = SyncRun(plan, cursors, store).run()
        assert cursors.load("des0")["insertId"] == late_id + 2  # type: ignore[index]
        assert found(store) == {("des0", b"quick", 1)}
        assert first["rowsScanned"]["insert"] == 1  # the uncommitted row was invisible
        slow.commit()
    finally:
        slow.close()
    if pause:
        time.sleep(pause)
    return late_id, SyncRun(plan, cursors, store).run()


def test_row_committed_late_below_the_insert_cursor_is_found(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    late_id, second = late_commit_scenario(mariadb, fresh_database, store, late_commit_second=10)
    assert found(store) == {("des0", b"quick", 1), ("des0", b"late", 1)}
    item = next(i for i in all_items(store) if i.row_key == b"late")
    assert item.source_id == late_id
    assert second["recorded"] == 1


def test_without_a_late_commit_band_a_late_row_is_not_found(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """The limit of the guarantee: lateCommitSecond=0 means rows are never rescanned below the cursor."""
    _, second = late_commit_scenario(mariadb, fresh_database, store, late_commit_second=0)
    assert found(store) == {("des0", b"quick", 1)}
    assert second["rowsScanned"]["insert"] == 0
    assert second["recorded"] == 0


def test_row_committed_late_is_found_even_when_the_next_run_comes_after_the_band(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """A row that committed within lateCommitSecond of being passed must not depend on run spacing.

    The slow transaction commits at once (well within lateCommitSecond=2), but the next run only
    starts 3 s later (a delayed run, downtime, or simply insertIntervalMillisecond > lateCommitSecond).
    No run looked at the band in between, so dropping it now loses the row forever.
    """
    late_commit_scenario(mariadb, fresh_database, store, late_commit_second=2, pause=3.0)
    assert found(store) == {("des0", b"quick", 1), ("des0", b"late", 1)}, (
        "the late row was lost: the band of the run that passed it expired before any later run scanned it"
    )


# -- SIGKILL in the middle of a run -------------------------------------------------------------
CRASH_CHILD = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from cupid_airflow.core.compare import DestinationSpec
    from cupid_airflow.core.sql import ConnectionParams
    from cupid_airflow.core.store import DeliveryStore
    from cupid_airflow.core.sync import SyncPlan, SyncRun


    class JsonFileCursorStore:
        def __init__(self, path):
            self.path = path

        def _all(self):
            try:
                with open(self.path) as f:
                    return json.load(f)
            except FileNotFoundError:
                return {}

        def load(self, destination):
            return self._all().get(destination)

        def save(self, destination, cursor):
            data = self._all()
            data[destination] = cursor
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path))
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


    args = json.loads(sys.argv[1])
    params = ConnectionParams(**args["params"])
    plan = SyncPlan(
        config=args["config"], source=params, table="src", id_column="id", by_column="code",
        destinations={
            "des0": (params, DestinationSpec("des0", "dst", "code", {"code": "code", "name": "name"})),
        },
        batch_size=args["batch_size"], max_rows_per_run=args["max_rows_per_run"],
    )
    store = DeliveryStore(params)
    cursors = JsonFileCursorStore(args["cursor_file"])
    runs = 0
    while True:
        summary = SyncRun(plan, cursors, store).run()
        runs += 1
        if summary["caughtUp"]:
            break
    print(json.dumps({"runs": runs}))
    """
)


def test_sigkill_mid_run_loses_nothing_and_duplicates_nothing(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, tmp_path: Path
) -> None:
    rows = 200_000
    missing = {i for i in range(1, rows + 1) if i % 100 == 0}
    different = {i for i in range(1, rows + 1) if i % 100 == 50}
    execute(
        mariadb,
        fresh_database,
        "CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, name VARCHAR(64) NULL)",
        f"INSERT INTO src SELECT seq, CONCAT('k', seq), CONCAT('name ', seq) FROM seq_1_to_{rows}",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        "INSERT INTO dst SELECT code, IF(id % 100 = 50, 'stale', name) FROM src WHERE id % 100 <> 0",
    )
    store.ensure_schema()
    cursor_file = tmp_path / "cursors.json"
    p = params_for(mariadb, fresh_database)
    args = json.dumps(
        {
            "params": {
                "host": p.host,
                "port": p.port,
                "user": p.user,
                "password": p.password,
                "database": p.database,
            },
            "config": CONFIG,
            "batch_size": 500,
            "max_rows_per_run": 20_000,
            "cursor_file": str(cursor_file),
        }
    )
    command = [sys.executable, "-c", CRASH_CHILD, args]

    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if query(mariadb, fresh_database, "SELECT COUNT(*) FROM cupid_delivery")[0][0] >= 800:
                break
            time.sleep(0.02)
        assert child.poll() is None, "the sync finished before it could be killed: make the table bigger"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL

    recorded_ids = {int(k[1][1:]) for k in found(store)}
    assert cursor_file.exists(), "no run completed before the kill: lower the kill threshold"
    cursor = json.loads(cursor_file.read_text())["des0"]
    passed = int(cursor["insertId"])
    assert passed <= rows, "the cursor claims the whole table although the run was killed"
    planted = missing | different
    assert recorded_ids <= planted
    unrecorded_below_cursor = {i for i in planted if i < passed} - recorded_ids
    assert not unrecorded_below_cursor, (
        f"cursor at {passed} passed unrecorded rows {sorted(unrecorded_below_cursor)[:5]}"
    )
    assert len(recorded_ids) < len(planted)

    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]

    per_row = Counter(
        (r[0], r[1]) for r in query(mariadb, fresh_database, "SELECT destination, row_key FROM cupid_delivery")
    )
    assert set(per_row.values()) == {1}, [k for k, n in per_row.items() if n > 1][:5]
    assert found(store) == keyset(missing, "des0", 1) | keyset(different, "des0", 2)
    assert json.loads(cursor_file.read_text())["des0"]["insertId"] == rows + 1


# -- bounded runs ------------------------------------------------------------------------------
def test_bounded_runs_scan_at_most_their_budget_and_together_find_everything(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    rows, budget, batch = 5000, 1000, 250
    missing = set(range(37, rows + 1, 370))
    different = set(range(200, rows + 1, 450))
    simple_tables(mariadb, fresh_database, rows, missing=missing, different=different)
    params = params_for(mariadb, fresh_database)
    plan = make_plan(
        params,
        {"des0": (params, SIMPLE_SPEC)},
        batch_size=batch,
        max_rows_per_run=budget,
    )
    cursors = MemoryCursorStore()
    summaries = []
    for _ in range(3 * rows // budget):
        summary = SyncRun(plan, cursors, store).run()
        summaries.append(summary)
        if summary["caughtUp"]:
            break
    assert summaries[-1]["caughtUp"] is True, "never caught up"
    assert [s["caughtUp"] for s in summaries[:-1]] == [False] * (len(summaries) - 1)
    assert len(summaries) >= rows // budget
    for summary in summaries:
        cursor = summary["destinations"]["des0"]
        assert summary["rowsScanned"]["insert"] <= budget  # dense ids: no gap below the cursor to read again
        before = cursor["cursorBefore"]["insertId"] or 1  # None: a new cursor, from the lowest id (1 here)
        assert cursor["cursorAfter"]["insertId"] - before <= budget
    assert sum(1 for s in summaries if s["rowsScanned"]["insert"] > 0) >= rows // budget
    assert cursors.load("des0")["insertId"] == rows + 1  # type: ignore[index]
    assert found(store) == keyset(missing, "des0", 1) | keyset(different, "des0", 2)
