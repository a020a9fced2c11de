"""Reconcile checkpoints: what a resumed verify may reuse, when and how much is written, the lock, the age bound.

Items 5 and 8 of issue 11: the fingerprint covers column types, collations and options; checkpoints
are written only on progress and stay small; the lock cannot be lost silently; a checkpoint older
than ``max_checkpoint_age_second`` starts the verify over.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.reconcile import CHECKPOINT_TABLE, CheckpointStore, TableSide
from cupid_airflow.core.store import DeliveryStore
from tests.support.database import execute, params_for, scalar
from tests.support.reconcile import CONFIG, SIMPLE_SPEC, checkpoints, found, reconcile, simple_tables

if TYPE_CHECKING:
    from conftest import MariaDB

pytestmark = pytest.mark.integration


def until_complete(run: Any, limit: int = 500) -> list[dict[str, Any]]:
    runs = [run()]
    while not runs[-1]["complete"]:
        assert runs[-1]["error"] is None
        runs.append(run())
        assert len(runs) < limit
    assert runs[-1]["error"] is None
    return runs


# -- item 5: the fingerprint ----------------------------------------------------------------------
def test_a_column_type_changed_between_runs_starts_the_verify_over(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    db = fresh_database
    rows = 5000
    execute(
        mariadb,
        db,
        "CREATE TABLE src (id INT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, amount DECIMAL(10,2) NULL, "
        "UNIQUE KEY (code))",
        f"INSERT INTO src SELECT seq, CONCAT('k', LPAD(seq, 5, '0')), seq / 4 FROM seq_1_to_{rows}",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, amount DECIMAL(10,2) NULL)",
        "INSERT INTO dst SELECT code, amount FROM src",
    )
    spec = DestinationSpec("des0", "dst", "code", {"code": "code", "amount": "amount"})
    small = {"chunk_size": 500, "min_chunk_size": 500, "max_chunk_size": 500, "max_chunks_per_run": 4}
    first = reconcile(mariadb, db, {"des0": (db, spec)}, store, **small)["destinations"]["des0"]
    assert first["complete"] is False and checkpoints(mariadb, db) == 1
    # every destination value now renders with three decimals: every row differs
    execute(mariadb, db, "ALTER TABLE dst MODIFY amount DECIMAL(10,3) NULL")
    runs = until_complete(lambda: reconcile(mariadb, db, {"des0": (db, spec)}, store, **small)["destinations"]["des0"])
    assert runs[0]["resumed"] is False
    assert len(found(store)) == rows
    assert sum(r["different"] for r in runs) == rows


def test_changed_options_start_the_verify_over(mariadb: MariaDB, fresh_database: str, store: DeliveryStore) -> None:
    db = fresh_database
    simple_tables(mariadb, db, 3000)
    execute(mariadb, db, "INSERT INTO dst VALUES ('k99999', 'extra')")
    small = {"chunk_size": 500, "min_chunk_size": 500, "max_chunk_size": 500, "max_chunks_per_run": 2}
    first = reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, **small)["destinations"]["des0"]
    assert first["complete"] is False
    runs = until_complete(
        lambda: reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, detect_deletes=True, **small)[
            "destinations"
        ]["des0"]
    )
    assert runs[0]["resumed"] is False  # detectDeletes is part of what a checkpoint was made for
    assert found(store) == {("des0", b"k99999", 3)}


# -- item 5: checkpoints are written on progress only, and small ----------------------------------------
def checkpoint_writes(mariadb: MariaDB, database: str) -> None:
    """Log every write of the checkpoint table (phase and blob size) into ``checkpoint_writes``."""
    CheckpointStore(params_for(mariadb, database)).ensure_schema()
    execute(
        mariadb,
        database,
        "CREATE TABLE checkpoint_writes (n INT AUTO_INCREMENT PRIMARY KEY, phase VARCHAR(32), size BIGINT)",
        f"CREATE TRIGGER cw_insert AFTER INSERT ON {CHECKPOINT_TABLE} FOR EACH ROW INSERT INTO checkpoint_writes "
        "(phase, size) VALUES (JSON_VALUE(NEW.state, '$.phase'), LENGTH(NEW.state) + IFNULL(LENGTH(NEW.buckets), 0))",
        f"CREATE TRIGGER cw_update AFTER UPDATE ON {CHECKPOINT_TABLE} FOR EACH ROW INSERT INTO checkpoint_writes "
        "(phase, size) VALUES (JSON_VALUE(NEW.state, '$.phase'), LENGTH(NEW.state) + IFNULL(LENGTH(NEW.buckets), 0))",
    )


def test_no_checkpoint_is_written_while_the_load_gate_waits(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    db = fresh_database
    simple_tables(mariadb, db, 2000)
    checkpoint_writes(mariadb, db)
    small = {"chunk_size": 500, "min_chunk_size": 500, "max_chunk_size": 500, "checkpoint_second": 0.05}
    first = reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, max_chunks_per_run=1, **small)
    assert first["destinations"]["des0"]["complete"] is False
    written = int(scalar(mariadb, db, "SELECT COUNT(*) FROM checkpoint_writes"))
    assert written >= 1
    # a server that is always busy: the run waits a second and a half, and writes nothing
    waited = reconcile(
        mariadb,
        db,
        {"des0": (db, SIMPLE_SPEC)},
        store,
        max_threads_running=0,
        max_seconds_per_run=1.5,
        wait_second=0.05,
        **small,
    )["destinations"]["des0"]
    assert waited["waitedSecond"] >= 1.0 and waited["chunks"] == {"source": 0, "destination": 0}
    assert int(scalar(mariadb, db, "SELECT COUNT(*) FROM checkpoint_writes")) == written


def test_checkpoints_stay_small_through_every_phase(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    db = fresh_database
    rows = 20000
    simple_tables(mariadb, db, rows)
    execute(mariadb, db, "UPDATE dst SET name = 'stale' WHERE CAST(SUBSTRING(code, 2) AS UNSIGNED) % 2 = 0")
    checkpoint_writes(mariadb, db)
    settings = {
        "chunk_size": 1000,
        "min_chunk_size": 1000,
        "max_chunk_size": 1000,
        "max_chunks_per_run": 3,
        "fetch_batch": 500,
        "max_compare_rows": 4000,
        "max_seconds_per_run": 0.2,
    }
    runs = until_complete(
        lambda: reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, **settings)["destinations"]["des0"]
    )
    assert len(found(store)) == rows // 2
    buckets = runs[-1]["buckets"]
    sizes = dict(scalar_rows(mariadb, db, "SELECT phase, MAX(size) FROM checkpoint_writes GROUP BY phase"))
    assert set(sizes) >= {"checksum", "compare"}
    # bucket sums: 12 bytes a bucket at most; past the checksums, a bitmap of the differing buckets
    assert int(sizes["checksum"]) <= 12 * buckets + 2048
    assert int(sizes["compare"]) <= buckets // 8 + 2048, sizes


def scalar_rows(mariadb: MariaDB, database: str, sql: str) -> list[tuple[str, Any]]:
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        return [(r[0].decode() if isinstance(r[0], bytes) else r[0], r[1]) for r in cursor.fetchall()]
    finally:
        conn.close()


# -- item 5: the lock ------------------------------------------------------------------------------
def lock_name(database: str, config: str, destination: str) -> str:
    return "cupid_reconcile:" + hashlib.sha1(f"{database}\0{config}\0{destination}".encode()).hexdigest()[:40]


def test_a_run_whose_lock_connection_died_stops_instead_of_running_beside_another(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = fresh_database
    simple_tables(mariadb, db, 6000)
    execute(mariadb, db, "DELETE FROM dst WHERE code = 'k00010'")
    checksum = TableSide.checksum

    def slow_checksum(self: TableSide, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.02)
        return checksum(self, *args, **kwargs)

    monkeypatch.setattr(TableSide, "checksum", slow_checksum)
    small = {"chunk_size": 50, "min_chunk_size": 50, "max_chunk_size": 50, "checkpoint_second": 0.05}
    result: dict[str, Any] = {}
    first = threading.Thread(
        target=lambda: result.update(reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, **small)), daemon=True
    )
    first.start()
    name = lock_name(db, CONFIG, "des0")
    deadline = time.monotonic() + 30
    holder = None
    while holder is None and time.monotonic() < deadline:
        holder = scalar(mariadb, None, f"SELECT IS_USED_LOCK('{name}')") if checkpoints_exist(mariadb, db) else None
        time.sleep(0.02)
    assert holder is not None, "the first run never took its lock"
    # the connection that holds the lock dies (a network blip, a DBA's KILL): the lock is gone with it
    execute(mariadb, None, f"KILL CONNECTION {int(holder)}")
    second_store = DeliveryStore(params_for(mariadb, db))
    try:
        second = reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, second_store, config=CONFIG, **small)
    finally:
        second_store.close()
    first.join(60)
    assert not first.is_alive()
    lost = result["destinations"]["des0"]
    assert lost["error"] is not None and "lock" in lost["error"], lost
    assert second["destinations"]["des0"]["error"] is None
    assert found(store) == {("des0", b"k00010", 1)}


def checkpoints_exist(mariadb: MariaDB, database: str) -> bool:
    try:
        return checkpoints(mariadb, database) > 0
    except Exception:  # the table is not created yet
        return False


# -- item 8: how old a resumed checkpoint may be -------------------------------------------------------
def test_a_checkpoint_older_than_the_age_bound_starts_the_verify_over(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    db = fresh_database
    simple_tables(mariadb, db, 3000)
    small = {"chunk_size": 500, "min_chunk_size": 500, "max_chunk_size": 500, "max_chunks_per_run": 2}
    first = reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, **small)["destinations"]["des0"]
    assert first["complete"] is False
    resumed = reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, max_checkpoint_age_second=3600, **small)[
        "destinations"
    ]["des0"]
    assert resumed["resumed"] is True
    execute(mariadb, db, f"UPDATE {CHECKPOINT_TABLE} SET started_at = started_at - INTERVAL 2 HOUR")
    old = reconcile(mariadb, db, {"des0": (db, SIMPLE_SPEC)}, store, max_checkpoint_age_second=3600, **small)[
        "destinations"
    ]["des0"]
    assert old["resumed"] is False
    assert old["verifyStartedAt"] > first["verifyStartedAt"]
