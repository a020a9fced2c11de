"""Integration tests of the compare core: real MariaDB tables, :class:`SyncRun`, the delivery store.

Every test builds its own source and destination tables in a fresh database (the store table
``cupid_delivery`` lives there too), runs :class:`cupid_airflow.core.sync.SyncRun` with cursors
in memory (or in a JSON file, for the crash test) and checks what was recorded.
"""

from __future__ import annotations

import base64
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
from cupid_airflow.core.delivery import CallbackTarget
from cupid_airflow.core.dispatch import Route, dispatch
from cupid_airflow.core.judge import JudgeSpec
from cupid_airflow.core.scan import ScanError
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import PENDING, STATUSES, DeliveryStore, StoredItem
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import MariaDB

    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration

CONFIG = "cmp"
REPO_ROOT = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------------------
def params_for(mariadb: MariaDB, database: str | None, *, port: int | None = None) -> ConnectionParams:
    return ConnectionParams(
        host=mariadb.host,
        port=mariadb.port if port is None else port,
        user=mariadb.user,
        password=mariadb.password,
        database=database,
    )


def execute(mariadb: MariaDB, database: str, *statements: str | tuple[str, Any]) -> None:
    """Run statements (``sql`` or ``(sql, args)``) in autocommit."""
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        for statement in statements:
            if isinstance(statement, tuple):
                cursor.execute(*statement)
            else:
                cursor.execute(statement)
    finally:
        conn.close()


def query(mariadb: MariaDB, database: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute(sql, args)
        return list(cursor.fetchall())
    finally:
        conn.close()


def make_plan(
    source: ConnectionParams,
    destinations: dict[str, tuple[ConnectionParams, DestinationSpec]],
    *,
    table: str = "src",
    by_column: str = "code",
    **options: Any,
) -> SyncPlan:
    return SyncPlan(
        config=CONFIG,
        source=source,
        table=table,
        id_column="id",
        by_column=by_column,
        destinations=destinations,
        **options,
    )


def all_items(store: DeliveryStore, config: str = CONFIG) -> list[StoredItem]:
    return store.items(config, statuses=STATUSES, limit=1_000_000)


def found(store: DeliveryStore, destination: str | None = None) -> set[tuple[str, bytes, int]]:
    """(destination, row key, type) of every recorded item."""
    return {
        (i.destination, i.row_key, i.type)
        for i in all_items(store)
        if destination is None or i.destination == destination
    }


@pytest.fixture
def store(mariadb: MariaDB, fresh_database: str) -> Iterator[DeliveryStore]:
    """The delivery store in the test's fresh database (where the source tables live too)."""
    delivery_store = DeliveryStore(params_for(mariadb, fresh_database))
    yield delivery_store
    delivery_store.close()


@pytest.fixture
def other_database(mariadb: MariaDB) -> Iterator[str]:
    """A second uniquely named database (for a destination on its own), dropped afterwards."""
    name = f"cupid_t_other_{secrets.token_hex(6)}"
    execute(mariadb, "mysql", f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        execute(mariadb, "mysql", f"DROP DATABASE IF EXISTS `{name}`")


SIMPLE_SPEC = DestinationSpec("des0", "dst", "code", {"code": "code", "name": "name"})


def simple_tables(
    mariadb: MariaDB,
    database: str,
    rows: int,
    *,
    missing: set[int],
    different: set[int],
    destination_database: str | None = None,
) -> None:
    """``src(id, code, name)`` with ``rows`` rows; ``dst(code, name)`` the copy with planted mismatches."""
    execute(
        mariadb,
        database,
        "CREATE TABLE src (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NULL, "
        "name VARCHAR(64) NULL, UNIQUE KEY uq_code (code))",
        f"INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', seq), CONCAT('name ', seq) FROM seq_1_to_{rows}",
    )
    copy_table(mariadb, database, destination_database or database, missing=missing, different=different)


def copy_table(
    mariadb: MariaDB,
    source_database: str,
    database: str,
    *,
    missing: set[int],
    different: set[int],
    table: str = "dst",
) -> None:
    execute(
        mariadb,
        database,
        f"CREATE TABLE {table} (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        f"INSERT INTO {table} (code, name) SELECT code, name FROM `{source_database}`.src",
    )
    if missing:
        execute(mariadb, database, f"DELETE FROM {table} WHERE code IN ({keys_sql(missing)})")
    if different:
        execute(
            mariadb,
            database,
            f"UPDATE {table} SET name = CONCAT(name, ' (stale)') WHERE code IN ({keys_sql(different)})",
        )


def keys_sql(ids: set[int]) -> str:
    return ", ".join(f"'k{i}'" for i in sorted(ids))


def keyset(ids: set[int] | range, destination: str, mismatch_type: int) -> set[tuple[str, bytes, int]]:
    return {(destination, f"k{i}".encode(), mismatch_type) for i in ids}


# -- 1. types of mismatch and of values ------------------------------------------------------------
# (id, source values, destination values or None when the destination row is missing)
# columns: code, label, note, amount, happened, big, payload (hex), extra (source only, not compared)
EQUAL_ROW = (
    "Zoë 日本語 🎉 👨‍👩‍👧",
    None,
    "1.2300",
    "2024-05-06 07:08:09.123456",
    "9223372036854775807",
    "ff00fe",
    "x",
)
PLANTED_ROWS: list[tuple[int, tuple[Any, ...], tuple[Any, ...] | None, int | None]] = [
    # id, source (label, note, amount, happened, big, payload, extra), destination, expected type
    (1, EQUAL_ROW, EQUAL_ROW, None),
    (2, ("gone", "n", "5.0000", "2024-01-01 00:00:00.000000", "1", "8081", "x"), None, 1),
    (3, ("a", None, "1.0000", None, None, None, "x"), ("a", "", "1.0000", None, None, None, "x"), 2),
    (4, ("a", "", "1.0000", None, None, None, "x"), ("a", None, "1.0000", None, None, None, "x"), 2),
    (5, ("a", "NULL", "1.0000", None, None, None, "x"), ("a", None, "1.0000", None, None, None, "x"), 2),
    (6, ("a", "NULL", "1.0000", None, None, None, "x"), ("a", "", "1.0000", None, None, None, "x"), 2),
    (7, ("a", "NULL", "1.0000", None, None, None, "x"), ("a", "NULL", "1.0000", None, None, None, "x"), None),
    (8, ("a", "", None, None, None, None, "x"), ("a", "", None, None, None, None, "x"), None),
    (9, ("🎉 party", "", None, None, None, None, "x"), ("🎊 party", "", None, None, None, None, "x"), 2),
    # precomposed é against e + combining acute: equal to the eye and to a _ci collation, not as bytes
    (10, ("caf\u00e9", "", None, None, None, None, "x"), ("cafe\u0301", "", None, None, None, None, "x"), 2),
    (11, ("a", "", "1.2300", None, None, None, "x"), ("a", "", "1.2301", None, None, None, "x"), 2),
    (
        12,
        ("a", "", None, "2024-05-06 07:08:09.123456", None, None, "x"),
        ("a", "", None, "2024-05-06 07:08:09.123457", None, None, "x"),
        2,
    ),
    (
        13,
        ("a", "", None, None, "9223372036854775807", None, "x"),
        ("a", "", None, None, "9223372036854775806", None, "x"),
        2,
    ),
    (14, ("a", "", None, None, None, "fffe0001", "x"), ("a", "", None, None, None, "fffe0002", "x"), 2),
    (
        15,
        ("日本語", "", "-99999999.9999", "1000-01-01 00:00:00.000001", "-9223372036854775808", "c328", "x"),
        ("日本語", "", "-99999999.9999", "1000-01-01 00:00:00.000001", "-9223372036854775808", "c328", "x"),
        None,
    ),
    # a column that is not mapped differs: not compared
    (
        16,
        ("a", "", None, None, None, None, "only in source"),
        ("a", "", None, None, None, None, "other"),
        None,
    ),
]


def test_planted_missing_and_different_rows_are_found_with_types_and_bodies(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, receivers: Callable[..., Receiver]
) -> None:
    column_types = (
        "label VARCHAR(64) NULL, note VARCHAR(16) NULL, amount DECIMAL(14,4) NULL, "
        "happened DATETIME(6) NULL, "
        "big BIGINT NULL, payload BLOB NULL"
    )
    execute(
        mariadb,
        fresh_database,
        f"CREATE TABLE src (id INT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, {column_types}, "
        "extra VARCHAR(32) NULL, UNIQUE KEY (code))",
        # other column names and order at the destination: the mapping decides what is compared
        "CREATE TABLE dst (sku VARCHAR(32) NOT NULL PRIMARY KEY, payload BLOB NULL, big BIGINT NULL, "
        "happened DATETIME(6) NULL, amount DECIMAL(14,4) NULL, remark VARCHAR(16) NULL, "
        "title VARCHAR(64) NULL)",
    )
    insert_source = (
        "INSERT INTO src (id, code, label, note, amount, happened, big, payload, extra) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, UNHEX(%s), %s)"
    )
    insert_destination = (
        "INSERT INTO dst (sku, title, remark, amount, happened, big, payload) "
        "VALUES (%s, %s, %s, %s, %s, %s, UNHEX(%s))"
    )
    statements: list[str | tuple[str, Any]] = []
    for row_id, source, destination, _ in PLANTED_ROWS:
        statements.append((insert_source, (row_id, f"k{row_id}", *source)))
        if destination is not None:
            statements.append((insert_destination, (f"k{row_id}", *destination[:6])))
    statements.append((insert_destination, ("k99", "only at the destination", None, None, None, None, None)))
    execute(mariadb, fresh_database, *statements)

    spec = DestinationSpec(
        "des0",
        "dst",
        "sku",
        {
            "code": "sku",
            "label": "title",
            "note": "remark",
            "amount": "amount",
            "happened": "happened",
            "big": "big",
            "payload": "payload",
        },
    )
    params = params_for(mariadb, fresh_database)
    cursors = MemoryCursorStore()
    summary = SyncRun(make_plan(params, {"des0": (params, spec)}, batch_size=4), cursors, store).run()

    expected_types = {row_id: kind for row_id, _, _, kind in PLANTED_ROWS if kind is not None}
    assert found(store) == {("des0", f"k{i}".encode(), kind) for i, kind in expected_types.items()}
    assert summary["destinations"]["des0"]["mismatches"] == {"missing": 1, "different": 10}
    assert summary["recorded"] == 11
    assert summary["caughtUp"] is True
    assert summary["nullKeys"] == 0
    assert cursors.load("des0")["insertId"] == 17  # type: ignore[index]

    rows = query(mariadb, fresh_database, "SELECT destination, row_key, type, source_id, status FROM cupid_delivery")
    assert sorted((r[0], r[1], r[2], r[3], r[4]) for r in rows) == sorted(
        ("des0", f"k{i}".encode(), kind, i, PENDING) for i, kind in expected_types.items()
    )

    # what was seen is recorded with the item; the body is built when it is sent
    differences = {item.row_key.decode(): item.differences for item in all_items(store)}
    assert differences["k2"] is None
    assert differences["k3"] == {"note": {"source": None, "destination": ""}}
    assert differences["k14"] == {
        "payload": {"source": {"base64": "//4AAQ=="}, "destination": {"base64": "//4AAg=="}}
    }
    receiver = receivers()
    judge = JudgeSpec(CONFIG, "des0", params, "src", "id", "code", params, spec)
    route = Route("des0", CallbackTarget(receiver.url), judge)
    outcomes = dispatch(params, "cmp", [route])
    assert (outcomes["des0"].delivered, outcomes["des0"].failed) == (11, [])
    bodies = {json.loads(hit.body)["key"]: json.loads(hit.body) for hit in receiver.hits}
    by_id = {row_id: source for row_id, source, _, _ in PLANTED_ROWS}

    def source_text(row_id: int) -> dict[str, str | None]:
        label, note, amount, happened, big, payload, extra = by_id[row_id]
        payload_text = None
        if payload is not None:
            raw = bytes.fromhex(payload)
            payload_text = raw.decode() if _is_utf8(raw) else base64.b64encode(raw).decode()
        return {
            "id": str(row_id),
            "code": f"k{row_id}",
            "label": label,
            "note": note,
            "amount": amount,
            "happened": happened,
            "big": big,
            "payload": payload_text,
            "extra": extra,
        }

    for row_id, kind in expected_types.items():
        body = bodies[f"k{row_id}"]
        assert body["type"] == kind, row_id
        assert body["srcColumn"] == source_text(row_id), row_id
        assert all(v is None or isinstance(v, str) for v in body["srcColumn"].values())
        assert body["destination"] == "des0"
        assert body["destinationTable"] == "dst"
        assert body["keyColumn"] == "code"
        assert body["key"] == f"k{row_id}"
    # the missing row carries bytes that are not UTF-8: base64, and listed
    assert bodies["k2"]["binaryColumns"] == ["payload"]
    assert bodies["k2"]["srcColumn"]["payload"] == base64.b64encode(b"\x80\x81").decode()
    assert "differences" not in bodies["k2"]
    assert bodies["k3"]["binaryColumns"] == []
    # NULL, '' and 'NULL' are three values
    assert bodies["k3"]["differences"] == {"note": {"source": None, "destination": ""}}
    assert bodies["k4"]["differences"] == {"note": {"source": "", "destination": None}}
    assert bodies["k5"]["differences"] == {"note": {"source": "NULL", "destination": None}}
    assert bodies["k6"]["differences"] == {"note": {"source": "NULL", "destination": ""}}
    assert bodies["k9"]["differences"] == {"label": {"source": "🎉 party", "destination": "🎊 party"}}
    assert bodies["k10"]["differences"] == {"label": {"source": "caf\u00e9", "destination": "cafe\u0301"}}
    assert bodies["k11"]["differences"] == {"amount": {"source": "1.2300", "destination": "1.2301"}}
    assert bodies["k12"]["differences"] == {
        "happened": {"source": "2024-05-06 07:08:09.123456", "destination": "2024-05-06 07:08:09.123457"}
    }
    assert bodies["k13"]["differences"] == {
        "big": {"source": "9223372036854775807", "destination": "9223372036854775806"}
    }
    assert bodies["k14"]["binaryColumns"] == ["payload"]
    assert bodies["k14"]["binaryDestinationColumns"] == ["payload"]
    assert bodies["k14"]["differences"] == {
        "payload": {
            "source": base64.b64encode(b"\xff\xfe\x00\x01").decode(),
            "destination": base64.b64encode(b"\xff\xfe\x00\x02").decode(),
        }
    }
    # the body is UTF-8 JSON, emoji not escaped
    assert "🎉 party".encode() in next(h.body for h in receiver.hits if b'"key":"k9"' in h.body)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- 2. a broken destination delays only itself ----------------------------------------------------
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


# -- 3. cursors survive downtime -------------------------------------------------------------------
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


# -- 4. late commits below the insert cursor -------------------------------------------------------
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


# -- 5. SIGKILL in the middle of a run -------------------------------------------------------------
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


# -- 6. every supported update column type ---------------------------------------------------------
UPDATE_COLUMN_TYPES = {
    # id: (column type, updateTimeFormate, an old value, the DB's current time in that format)
    "datetime": ("DATETIME", None, "'2020-01-01 00:00:00'", "NOW()"),
    "datetime6": ("DATETIME(6)", None, "'2020-01-01 00:00:00'", "NOW(6)"),
    "timestamp": ("TIMESTAMP NULL", None, "'2020-01-01 00:00:00'", "NOW()"),
    "epoch_seconds": ("INT", "U", "1577836800", "UNIX_TIMESTAMP()"),
    "epoch_milliseconds": ("BIGINT", "Uv", "1577836800000", "FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000)"),
    "varchar_sortable": (
        "VARCHAR(32)",
        "Y-m-d H:i:s",
        "'2020-01-01 00:00:00'",
        "DATE_FORMAT(NOW(), '%Y-%m-%d %H:%i:%s')",
    ),
    "varchar_iso_escaped_t": (
        "VARCHAR(32)",
        "Y-m-d\\TH:i:s",
        "'2020-01-01T00:00:00'",
        "DATE_FORMAT(NOW(), '%Y-%m-%dT%H:%i:%s')",
    ),
    "bigint_digits": ("BIGINT", "YmdHis", "20200101000000", "DATE_FORMAT(NOW(), '%Y%m%d%H%i%s')"),
}  # text that does not sort as time (d/m/Y) is refused: tests/integration/test_update_column.py


@pytest.mark.parametrize("kind", list(UPDATE_COLUMN_TYPES))
def test_update_scan_finds_a_row_updated_below_the_insert_cursor(
    kind: str, mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    column_type, php_format, old_value, now_value = UPDATE_COLUMN_TYPES[kind]
    execute(
        mariadb,
        fresh_database,
        "CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, "
        "name VARCHAR(64) NULL, "
        f"mtime {column_type}, KEY (mtime))",
        f"INSERT INTO src SELECT seq, CONCAT('k', seq), 'same', {old_value} FROM seq_1_to_10",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        "INSERT INTO dst SELECT code, name FROM src",
    )
    params = params_for(mariadb, fresh_database)
    plan = make_plan(
        params,
        {"des0": (params, SIMPLE_SPEC)},
        update=True,
        update_column="mtime",
        update_time_format=php_format,
        update_scan_second=1,
        late_commit_second=0,
    )
    cursors = MemoryCursorStore()
    first = SyncRun(plan, cursors, store).run()
    assert first["recorded"] == 0
    assert first["rowsScanned"] == {"insert": 10, "update": 0}
    assert cursors.load("des0")["insertId"] == 11  # type: ignore[index]

    execute(mariadb, fresh_database, f"UPDATE src SET name = 'changed', mtime = {now_value} WHERE id = 3")
    second = SyncRun(plan, cursors, store).run()

    assert found(store) == {("des0", b"k3", 2)}
    assert second["rowsScanned"] == {"insert": 0, "update": 1}
    assert second["caughtUp"] is True
    assert cursors.load("des0")["updateTimeUtc"] == second["sourceUtc"]  # type: ignore[index]


def test_update_column_of_an_unsupported_type_is_a_clear_error(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    execute(
        mariadb,
        fresh_database,
        "CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, name VARCHAR(64) NULL, "
        "score DOUBLE NULL)",
        "INSERT INTO src VALUES (1, 'k1', 'a', 1.5)",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
    )
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, {"des0": (params, SIMPLE_SPEC)}, update=True, update_column="score")
    cursors = MemoryCursorStore()
    with pytest.raises(ScanError, match=r"update column 'score' has type double") as error:
        SyncRun(plan, cursors, store).run()
    assert "DATETIME" in str(error.value)  # says what is accepted
    assert cursors.load("des0") is None


# -- 8. NULL keys ----------------------------------------------------------------------------------
def test_null_source_key_is_counted_not_a_crash(mariadb: MariaDB, fresh_database: str, store: DeliveryStore) -> None:
    simple_tables(mariadb, fresh_database, 12, missing={9}, different={11})
    execute(mariadb, fresh_database, "UPDATE src SET code = NULL WHERE id IN (4, 5)")
    params = params_for(mariadb, fresh_database)
    cursors = MemoryCursorStore()
    summary = SyncRun(make_plan(params, {"des0": (params, SIMPLE_SPEC)}, batch_size=3), cursors, store).run()

    assert summary["nullKeys"] == 2
    assert found(store) == {("des0", b"k9", 1), ("des0", b"k11", 2)}
    assert cursors.load("des0")["insertId"] == 13  # type: ignore[index]
    assert summary["caughtUp"] is True


# -- 9. re-running a range records nothing twice ---------------------------------------------------
def test_rescanning_the_same_range_records_no_duplicates(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    simple_tables(mariadb, fresh_database, 1000, missing={1, 500, 1000}, different={2, 999})
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, {"des0": (params, SIMPLE_SPEC)}, batch_size=100, late_commit_second=0)
    cursors = MemoryCursorStore()
    first = SyncRun(plan, cursors, store).run()
    assert first["recorded"] == 5
    items = "SELECT id, row_key, type, status, revision FROM cupid_delivery ORDER BY id"
    before = query(mariadb, fresh_database, items)

    again = SyncRun(plan, cursors, store, start_id=1).run()
    lost_cursor = SyncRun(plan, MemoryCursorStore(), store).run()  # as if the cursor had been lost

    for summary in (again, lost_cursor):
        assert summary["rowsScanned"]["insert"] == 1000
        assert summary["destinations"]["des0"]["mismatches"] == {"missing": 3, "different": 2}
        assert (summary["recorded"], summary["superseded"]) == (0, 5)
    # the same items, each detected three times (a detection of a live item updates it in place)
    assert query(mariadb, fresh_database, items) == [(i, k, t, s, r + 2) for i, k, t, s, r in before]


# -- 10. bounded runs ------------------------------------------------------------------------------
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
