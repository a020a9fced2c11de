"""Reconcile runs that pause, wait, or are killed: each resumes where the last stopped and finds the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.store import DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore
from tests.support.database import execute, params_for
from tests.support.reconcile import (
    CONFIG,
    SIMPLE_SPEC,
    checkpoint_state,
    checkpoints,
    code,
    found,
    reconcile,
    simple_tables,
)

if TYPE_CHECKING:
    from conftest import MariaDB

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- 3. pause and resume -----------------------------------------------------------------------------
def test_paused_runs_resume_from_the_checkpoint_without_checking_a_chunk_twice_and_find_the_same(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    rows = 1000
    simple_tables(mariadb, fresh_database, rows)
    execute(
        mariadb,
        fresh_database,
        "DELETE FROM dst WHERE code IN ('k00007', 'k00500', 'k00999')",
        "UPDATE dst SET name = 'stale' WHERE code IN ('k00100', 'k00101', 'k00800')",
        "INSERT INTO dst VALUES ('k55555', 'extra')",
    )
    fixed = {"min_chunk_size": 50, "max_chunk_size": 50, "chunk_size": 50, "detect_deletes": True}
    destinations = {"des0": (fresh_database, SIMPLE_SPEC)}
    once = reconcile(mariadb, fresh_database, destinations, store, config="once", **fixed)["destinations"]["des0"]
    assert once["complete"] is True
    expected = found(store, "once")
    assert len(expected) == 7

    runs = []
    progress = MemoryCursorStore()
    while True:
        summary = reconcile(
            mariadb,
            fresh_database,
            destinations,
            store,
            config="paused",
            max_chunks_per_run=3,
            progress=progress,
            **fixed,
        )["destinations"]["des0"]
        runs.append(summary)
        assert summary["error"] is None
        if summary["complete"]:
            break
        assert checkpoints(mariadb, fresh_database, "paused") == 1
        assert progress.load("des0")["complete"] is False  # type: ignore[index]
        assert len(runs) < 100
    assert len(runs) > 5
    assert all(r["chunks"]["source"] <= 3 and r["chunks"]["destination"] <= 3 for r in runs)
    assert all(r["resumed"] for r in runs[1:])
    assert {r["verifyStartedAt"] for r in runs} == {runs[0]["verifyStartedAt"]}
    # every row was checksummed exactly once, and no chunk query was repeated
    assert sum(r["rowsChecked"]["source"] for r in runs) == rows
    assert sum(r["rowsChecked"]["destination"] for r in runs) == rows - 3 + 1
    assert sum(r["chunks"]["source"] for r in runs) == once["chunks"]["source"]
    assert sum(r["chunks"]["destination"] for r in runs) == once["chunks"]["destination"]
    assert sum(r["rowsCompared"]["source"] for r in runs) == once["rowsCompared"]["source"]
    assert {(d, k, t) for d, k, t in found(store, "paused")} == expected
    assert sum(r["recorded"] for r in runs) == 7
    assert checkpoints(mariadb, fresh_database, "paused") == 0

    # a time budget that is always exhausted still moves one chunk query per side and run
    timed = []
    while not timed or not timed[-1]["complete"]:
        timed.append(
            reconcile(mariadb, fresh_database, destinations, store, config="timed", max_seconds_per_run=1e-6, **fixed)[
                "destinations"
            ]["des0"]
        )
        assert len(timed) < 100
    assert all(r["chunks"]["source"] <= 1 for r in timed)
    assert sum(r["rowsChecked"]["source"] for r in timed) == rows
    assert found(store, "timed") == expected


def test_many_differences_are_read_once_per_bucket_range_and_paused_runs_find_the_same(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    rows = 3000
    simple_tables(mariadb, fresh_database, rows)
    number = "CAST(SUBSTRING(code, 2) AS UNSIGNED)"
    execute(
        mariadb,
        fresh_database,
        f"UPDATE dst SET name = 'stale' WHERE {number} % 10 = 0",
        f"DELETE FROM dst WHERE {number} % 25 = 3",
    )
    expected = {("des0", code(i), 1) for i in range(1, rows + 1) if i % 25 == 3} | {
        ("des0", code(i), 2) for i in range(1, rows + 1) if i % 10 == 0
    }
    destinations = {"des0": (fresh_database, SIMPLE_SPEC)}
    small = {"chunk_size": 200, "min_chunk_size": 200, "max_chunk_size": 200, "fetch_batch": 50}
    once = reconcile(mariadb, fresh_database, destinations, store, config="once", **small)["destinations"]["des0"]
    assert once["complete"] is True and once["error"] is None
    assert found(store, "once") == expected
    assert (once["missing"], once["different"]) == (120, 300)
    # one ordered read per table: the rows of the differing buckets, each read once
    compared = once["rowsCompared"]
    assert 420 <= compared["source"] < rows and compared["destination"] < rows

    # fewer rows per ordered read: the differing buckets are read in several ranges, each row still once
    ranged = reconcile(mariadb, fresh_database, destinations, store, config="ranged", max_compare_rows=100, **small)
    assert ranged["destinations"]["des0"]["rowsCompared"] == compared
    assert found(store, "ranged") == expected

    runs = []
    while not runs or not runs[-1]["complete"]:
        runs.append(
            reconcile(mariadb, fresh_database, destinations, store, config="paused", max_chunks_per_run=2, **small)[
                "destinations"
            ]["des0"]
        )
        assert runs[-1]["error"] is None
        assert len(runs) < 200
    assert "compare" in {r["phase"] for r in runs[:-1]}  # paused in the middle of the compare, too
    assert sum(r["rowsChecked"]["source"] for r in runs) == rows
    assert sum(r["missing"] + r["different"] for r in runs) == 420  # every batch counted once
    assert found(store, "paused") == expected


def test_a_busy_server_makes_the_run_wait_and_pause(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    simple_tables(mariadb, fresh_database, 100)
    summary = reconcile(
        mariadb,
        fresh_database,
        {"des0": (fresh_database, SIMPLE_SPEC)},
        store,
        max_threads_running=0,  # always busy: at least the status query itself runs
        max_seconds_per_run=1.0,
        wait_second=0.2,
    )["destinations"]["des0"]
    assert summary["complete"] is False
    assert summary["chunks"] == {"source": 0, "destination": 0}
    assert summary["waitedSecond"] >= 1.0
    assert checkpoints(mariadb, fresh_database) == 0  # no progress, nothing written


# -- 7. SIGKILL in the middle of a run ---------------------------------------------------------------
KILL_CHILD = textwrap.dedent(
    """
    import json, sys
    from cupid_airflow.core.compare import DestinationSpec
    from cupid_airflow.core.reconcile import ReconcileRun, ReconcileSettings
    from cupid_airflow.core.sql import ConnectionParams
    from cupid_airflow.core.store import DeliveryStore

    args = json.loads(sys.argv[1])
    params = ConnectionParams(**args["params"])
    spec = DestinationSpec("des0", "dst", "code", {"code": "code", "name": "name"})
    ReconcileRun(
        config=args["config"], source=params, table="src", id_column="id", by_column="code",
        destinations={"des0": (params, spec)},
        settings=ReconcileSettings(**args["settings"]), store=DeliveryStore(params),
    ).run()
    """
)


def test_a_killed_run_resumes_from_its_last_checkpoint(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    rows = 60_000
    simple_tables(mariadb, fresh_database, rows)
    execute(
        mariadb,
        fresh_database,
        "DELETE FROM dst WHERE code IN ('k00003', 'k59999')",
        "UPDATE dst SET name = 'stale' WHERE code IN ('k30000', 'k45000')",
    )
    settings = {"chunk_size": 100, "min_chunk_size": 100, "max_chunk_size": 100, "checkpoint_second": 0.05}
    params = params_for(mariadb, fresh_database)
    argument = {
        "params": {
            "host": params.host,
            "port": params.port,
            "user": params.user,
            "password": params.password,
            "database": params.database,
        },
        "config": CONFIG,
        "settings": settings,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, json.dumps(argument)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpointed = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            state = checkpoint_state(mariadb, fresh_database)
            if state is not None and state["sides"]["source"]["rows"] >= 5000:
                checkpointed = state["sides"]["source"]["rows"]
                break
            time.sleep(0.01)
        assert child.poll() is None, "the reconcile finished before it could be killed: make the table bigger"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL
    state = checkpoint_state(mariadb, fresh_database)
    assert state is not None and state["phase"] == "checksum"
    done = state["sides"]["source"]["rows"]
    assert checkpointed <= done < rows

    resumed = reconcile(mariadb, fresh_database, {"des0": (fresh_database, SIMPLE_SPEC)}, store, **settings)
    outcome = resumed["destinations"]["des0"]
    assert outcome["resumed"] is True and outcome["complete"] is True
    assert outcome["rowsChecked"]["source"] == rows - done  # nothing before the checkpoint is read again
    assert outcome["rows"]["source"] == rows
    assert found(store) == {
        ("des0", b"k00003", 1),
        ("des0", b"k59999", 1),
        ("des0", b"k30000", 2),
        ("des0", b"k45000", 2),
    }


class FailingStore(DeliveryStore):
    """A delivery store whose server refuses every recording from the ``fail_at``-th statement on."""

    def __init__(self, params: Any, fail_at: int) -> None:
        super().__init__(params)
        self.fail_at = fail_at
        self.recordings = 0

    def insert_statements(self, conn: Any, rows: Any) -> Any:
        statements = list(super().insert_statements(conn, rows))
        self.recordings += len(statements)
        if self.recordings < self.fail_at:
            return statements
        refused = b"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the state database refused this recording'"
        return [refused] * len(statements)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_recording_that_fails_never_leaves_a_checkpoint_past_its_findings(
    fail_at: int, mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    rows = 3000
    simple_tables(mariadb, fresh_database, rows)
    number = "CAST(SUBSTRING(code, 2) AS UNSIGNED)"
    execute(mariadb, fresh_database, f"UPDATE dst SET name = 'stale' WHERE {number} % 10 = 0")
    expected = {("des0", code(i), 2) for i in range(1, rows + 1) if i % 10 == 0}
    destinations = {"des0": (fresh_database, SIMPLE_SPEC)}
    # many compare batches of a few findings, a checkpoint after each, written while the batch before it
    # may still be on its way to the store
    small = {"chunk_size": 200, "min_chunk_size": 200, "max_chunk_size": 200, "fetch_batch": 5}
    settings = {**small, "max_compare_rows": 100, "checkpoint_second": 0.0}
    failing = FailingStore(params_for(mariadb, fresh_database), fail_at)
    try:
        first = reconcile(mariadb, fresh_database, destinations, failing, **settings)["destinations"]["des0"]
    finally:
        failing.close()
    assert failing.recordings >= fail_at
    assert first["complete"] is False and "refused this recording" in first["error"]
    again = reconcile(mariadb, fresh_database, destinations, store, **settings)["destinations"]["des0"]
    assert again["complete"] is True and again["error"] is None, again
    assert found(store) == expected  # the resumed verify went back to what was not recorded
