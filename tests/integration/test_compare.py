"""Integration tests of the compare core: real MariaDB tables, :class:`SyncRun`, the delivery store.

Every test builds its own source and destination tables in a fresh database (the store table
``cupid_delivery`` lives there too), runs :class:`cupid_airflow.core.sync.SyncRun` with cursors
in memory and checks what was recorded (runs over time and the SIGKILL test: test_compare_runs.py).
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.delivery import CallbackTarget
from cupid_airflow.core.dispatch import Route, dispatch
from cupid_airflow.core.judge import JudgeSpec
from cupid_airflow.core.scan import ScanError
from cupid_airflow.core.store import PENDING, DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore, SyncRun
from tests.support.compare_tables import (
    CONFIG,
    SIMPLE_SPEC,
    all_items,
    found,
    make_plan,
    simple_tables,
)
from tests.support.database import execute, params_for, query

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import MariaDB

    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


# -- types of mismatch and of values ------------------------------------------------------------
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
    assert differences["k14"] == {"payload": {"source": {"base64": "//4AAQ=="}, "destination": {"base64": "//4AAg=="}}}
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


# -- every supported update column type ---------------------------------------------------------
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


# -- NULL keys ----------------------------------------------------------------------------------
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


# -- re-running a range records nothing twice ---------------------------------------------------
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
