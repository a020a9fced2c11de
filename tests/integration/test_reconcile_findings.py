"""Reconcile findings: every kind of difference, identical tables, collations, key types, composite keys.

Every test builds its own source and destination tables in a fresh database (the delivery store
``cupid_delivery`` and the checkpoint table ``cupid_reconcile_checkpoint`` live there too), runs
:class:`cupid_airflow.core.reconcile.ReconcileRun` and checks what was recorded.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.config import load_config
from cupid_airflow.core.reconcile import ReconcileRun, ReconcileSettings, TableSide
from cupid_airflow.core.reconcile import table as reconcile_table
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun
from tests.support.database import execute, params_for, scalar
from tests.support.reconcile import (
    CONFIG,
    SIMPLE_SPEC,
    all_items,
    checkpoints,
    code,
    delivered_bodies,
    found,
    keys_sql,
    raw_rows,
    reconcile,
    simple_tables,
)

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import MariaDB

    from cupid_airflow.core.store import DeliveryStore

pytestmark = pytest.mark.integration


# -- 1. every kind of difference -------------------------------------------------------------------
ROWS = 2000


def same_bucket_pair(rows: int, buckets: int, taken: set[int]) -> tuple[int, int]:
    """Two ids whose codes share a hash bucket and whose rows have equal lengths (same ``id % 3``)."""
    seen: dict[tuple[int, int], int] = {}
    for n in range(1, rows + 1):
        if n in taken:
            continue
        slot = (zlib.crc32(code(n)) % buckets, n % 3)
        if slot in seen:
            return seen[slot], n
        seen[slot] = n
    raise AssertionError("no two codes share a bucket")


def test_planted_differences_of_every_kind_are_found_exactly_as_incremental_scans_report_them(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    db = fresh_database
    execute(
        mariadb,
        db,
        "CREATE TABLE src (id INT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, name VARCHAR(64) NULL, "
        "note VARCHAR(16) NULL, flag CHAR(1) NOT NULL, extra VARCHAR(32) NULL, "
        "updated_at DATETIME NOT NULL DEFAULT '2024-01-01 00:00:00' ON UPDATE CURRENT_TIMESTAMP, "
        "UNIQUE KEY (code), KEY (updated_at))",
        "INSERT INTO src (id, code, name, note, flag, extra) SELECT seq, CONCAT('k', LPAD(seq, 5, '0')), "
        "CONCAT('name ', LPAD(seq, 5, '0')), ELT(seq % 3 + 1, NULL, '', 'x'), '0', 'not compared' "
        f"FROM seq_1_to_{ROWS}",
        # other column names and order at the destination: the mapping decides what is compared
        "CREATE TABLE dst (sku VARCHAR(32) NOT NULL PRIMARY KEY, f CHAR(1) NOT NULL, remark VARCHAR(16) NULL, "
        "title VARCHAR(64) NULL, extra VARCHAR(32) NULL)",
        "INSERT INTO dst (sku, f, remark, title, extra) SELECT code, flag, note, name, 'other' FROM src",
    )
    spec = DestinationSpec("des0", "dst", "sku", {"code": "sku", "name": "title", "note": "remark", "flag": "f"})
    # two rows of one hash bucket changed the same way: the XOR of plain CRC32s cannot see it
    twin_a, twin_b = same_bucket_pair(ROWS, 4096, {5, 700, 1999, 10, 11, 12, 13, 14, 20, 1500, 1501})
    missing = {5, 700, 1999}
    different = {10, 11, 12, 13, 14, twin_a, twin_b, 1500, 1501}
    extra = [b"k99998", b"k99999"]
    execute(
        mariadb,
        db,
        f"DELETE FROM dst WHERE sku IN ({keys_sql(missing)})",
        "UPDATE dst SET title = 'stale' WHERE sku = 'k00010'",
        "UPDATE dst SET remark = '' WHERE sku = 'k00012'",  # NULL at the source ('k00012': 12 % 3 == 0)
        "UPDATE dst SET remark = NULL WHERE sku = 'k00013'",  # '' at the source
        "UPDATE dst SET remark = 'NULL' WHERE sku = 'k00014'",  # 'x' at the source
        f"UPDATE dst SET f = '1' WHERE sku IN ({keys_sql({twin_a, twin_b})})",
        # two rows of one bucket with their values swapped: the key is part of the row hash
        "UPDATE dst SET title = CASE sku WHEN 'k01500' THEN 'name 01501' ELSE 'name 01500' END "
        "WHERE sku IN ('k01500', 'k01501')",
        "INSERT INTO dst (sku, f, remark, title) VALUES ('k99998', '0', NULL, 'only here'), ('k99999', '1', '', '')",
        # a column that is not compared differs: not a difference
        "UPDATE dst SET extra = 'changed' WHERE sku = 'k00020'",
    )
    # a source change whose update timestamp did not move (so the update scan never sees it)
    before = scalar(mariadb, db, "SELECT updated_at FROM src WHERE id = 11")
    execute(mariadb, db, "UPDATE src SET name = 'silently changed', updated_at = updated_at WHERE id = 11")
    assert scalar(mariadb, db, "SELECT updated_at FROM src WHERE id = 11") == before
    plain = "SELECT BIT_XOR(CRC32(CONCAT_WS('|', {k}, {n}, {f}))) FROM {t} WHERE {k} IN ('{a}', '{b}')"
    assert scalar(
        mariadb,
        db,
        plain.format(k="code", n="name", f="flag", t="src", a=code(twin_a).decode(), b=code(twin_b).decode()),
    ) == scalar(
        mariadb, db, plain.format(k="sku", n="title", f="f", t="dst", a=code(twin_a).decode(), b=code(twin_b).decode())
    ), "the plain CRC32 XOR of the twin rows must cancel out (the reason for the non-linear row hash)"

    progress = MemoryCursorStore()
    summary = reconcile(
        mariadb,
        db,
        {"des0": (db, spec)},
        store,
        detect_deletes=True,
        chunk_size=300,
        max_chunk_size=300,
        progress=progress,
    )["destinations"]["des0"]

    expected = (
        {("des0", code(i), 1) for i in missing}
        | {("des0", code(i), 2) for i in different}
        | {("des0", k, 3) for k in extra}
    )
    assert found(store) == expected
    assert summary["complete"] is True
    assert summary["error"] is None
    assert summary["buckets"] == 4096
    assert summary["rows"] == {"source": ROWS, "destination": ROWS - len(missing) + len(extra)}
    assert (summary["missing"], summary["different"], summary["deleted"]) == (3, 9, 2)
    assert summary["recorded"] == 14
    assert summary["chunks"]["source"] > 3  # several chunk queries per side
    assert checkpoints(mariadb, db) == 0  # a completed verify leaves no checkpoint
    assert progress.load("des0")["complete"] is True  # type: ignore[index]

    # the incremental compare reports the same rows with the same idempotency keys: nothing new
    plan = SyncPlan(
        config=CONFIG,
        source=params_for(mariadb, db),
        table="src",
        id_column="id",
        by_column="code",
        destinations={"des0": (params_for(mariadb, db), spec)},
        batch_size=500,
    )
    sync = SyncRun(plan, MemoryCursorStore(), store).run()
    assert sync["destinations"]["des0"]["mismatches"] == {"missing": 3, "different": 9}
    assert sync["recorded"] == 0

    # a second verify finds the same and records nothing twice
    again = reconcile(mariadb, db, {"des0": (db, spec)}, store, detect_deletes=True)["destinations"]["des0"]
    assert (again["missing"], again["different"], again["deleted"], again["recorded"]) == (3, 9, 2, 0)
    assert again["resumed"] is False

    # the bodies, built when the items are sent
    items = {item.row_key: item for item in all_items(store)}
    source_rows = {r["code"]: r for r in raw_rows(mariadb, db, "SELECT * FROM src")}
    bodies = {k: b for (_, k), b in delivered_bodies(mariadb, db, {"des0": (db, spec)}, store).items()}
    assert set(bodies) == set(items)
    for key, item in items.items():
        body = bodies[key]
        assert body["type"] == item.type
        assert body["key"] == key.decode()
        assert body["destination"] == "des0" and body["destinationTable"] == "dst"
        assert body["keyColumn"] == "code"
        if item.type in (1, 2):
            row = source_rows[key]
            assert body["srcColumn"] == {c: None if v is None else v.decode() for c, v in row.items()}
    assert "differences" not in bodies[b"k00005"]
    differences = {k: bodies[k].get("differences") for k, i in items.items() if i.type == 2}
    assert differences[b"k00010"] == {"name": {"source": "name 00010", "destination": "stale"}}
    assert differences[b"k00011"] == {"name": {"source": "silently changed", "destination": "name 00011"}}
    assert differences[b"k00012"] == {"note": {"source": None, "destination": ""}}
    assert differences[b"k00013"] == {"note": {"source": "", "destination": None}}
    assert differences[b"k00014"] == {"note": {"source": "x", "destination": "NULL"}}
    assert differences[code(twin_a)] == {"flag": {"source": "0", "destination": "1"}}
    assert differences[b"k01500"] == {"name": {"source": "name 01500", "destination": "name 01501"}}
    deleted = bodies[b"k99999"]
    assert deleted["srcColumn"] == {}
    # the whole destination row, as it is when the callback is sent
    assert deleted["desColumn"] == {"sku": "k99999", "title": "", "remark": "", "f": "1", "extra": None}


def test_deleted_rows_are_only_counted_without_detect_deletes_and_the_fallback_row_hash_finds_the_same(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    simple_tables(mariadb, fresh_database, 500)
    execute(
        mariadb,
        fresh_database,
        "DELETE FROM dst WHERE code = 'k00042'",
        "UPDATE dst SET name = NULL WHERE code = 'k00043'",
        "INSERT INTO dst VALUES ('k77777', 'extra')",
    )
    summary = reconcile(mariadb, fresh_database, {"des0": (fresh_database, SIMPLE_SPEC)}, store)
    outcome = summary["destinations"]["des0"]
    assert found(store) == {("des0", b"k00042", 1), ("des0", b"k00043", 2)}
    assert (outcome["deleted"], outcome["extraNotRecorded"]) == (0, 1)

    # servers without CRC32C (MySQL) hash rows as CRC32(s) * CRC32(REVERSE(s)): same findings
    prepare = TableSide.prepare

    def without_crc32c(self: TableSide) -> None:
        prepare(self)
        self.has_crc32c = False

    monkeypatch.setattr(TableSide, "prepare", without_crc32c)
    again = reconcile(
        mariadb, fresh_database, {"des0": (fresh_database, SIMPLE_SPEC)}, store, config="fallback", detect_deletes=True
    )
    assert again["destinations"]["des0"]["complete"] is True
    assert found(store, "fallback") == {("des0", b"k00042", 1), ("des0", b"k00043", 2), ("des0", b"k77777", 3)}


# -- 2. identical tables ---------------------------------------------------------------------------
def test_identical_tables_report_nothing_and_null_keys_are_counted(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    simple_tables(mariadb, fresh_database, 3000)
    execute(mariadb, fresh_database, "INSERT INTO src (id, code, name) VALUES (5001, NULL, 'no key'), (5002, NULL, '')")
    summary = reconcile(
        mariadb, fresh_database, {"des0": (fresh_database, SIMPLE_SPEC)}, store, detect_deletes=True, chunk_size=500
    )["destinations"]["des0"]
    assert found(store) == set()
    assert summary["complete"] is True
    assert summary["differingBuckets"] == 0
    assert summary["rows"] == {"source": 3002, "destination": 3000}
    assert summary["nullKeys"] == {"source": 2, "destination": 0}
    assert summary["rowsCompared"] == {"source": 0, "destination": 0}  # nothing fetched
    assert (summary["missing"], summary["different"], summary["deleted"], summary["recorded"]) == (0, 0, 0, 0)
    assert checkpoints(mariadb, fresh_database) == 0


# -- 4. collations ---------------------------------------------------------------------------------
def test_keys_differing_in_case_spaces_or_accents_under_a_ci_collation_are_one_row_not_missing_and_extra(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    db = fresh_database
    collation = "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
    execute(
        mariadb,
        db,
        f"CREATE TABLE src (id INT NOT NULL PRIMARY KEY, code VARCHAR(32) {collation} NOT NULL, "
        "name VARCHAR(64) NULL, UNIQUE KEY (code))",
        # mixed case, trailing spaces, accents
        "INSERT INTO src SELECT seq, ELT(seq % 3 + 1, CONCAT('MiXeD', seq), CONCAT('sp', seq, '  '), "
        "CONCAT('caf\u00e9', seq)), CONCAT('name ', seq) FROM seq_1_to_600",
        f"CREATE TABLE dst (code VARCHAR(32) {collation} NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        "INSERT INTO dst SELECT code, name FROM src",
        "CREATE TABLE dst_latin (code VARCHAR(32) CHARACTER SET latin1 NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        "INSERT INTO dst_latin SELECT code, name FROM src",
    )
    named_only = DestinationSpec("des1", "dst", "code", {"name": "name"})
    latin = DestinationSpec("latin", "dst_latin", "code", {"code": "code", "name": "name"})
    destinations = {"des0": (db, SIMPLE_SPEC), "des1": (db, named_only), "latin": (db, latin)}
    first = reconcile(mariadb, db, destinations, store, detect_deletes=True)
    assert found(store) == set(), "identical tables with tricky keys report nothing"
    assert all(d["complete"] and d["differingBuckets"] == 0 for d in first["destinations"].values())

    execute(
        mariadb,
        db,
        "UPDATE dst SET code = 'MIXED3' WHERE code = 'MiXeD3'",  # only the key's case differs
        "UPDATE dst SET code = 'sp4', name = 'stale' WHERE code = 'sp4  '",  # spaces and a value
        "UPDATE dst SET code = 'cafe5' WHERE code = 'caf\u00e95'",  # an accent (general_ci: e = \u00e9)
        "UPDATE dst_latin SET name = 'stale' WHERE code = 'caf\u00e98'",
    )
    second = reconcile(mariadb, db, destinations, store, config="planted", detect_deletes=True)
    assert all(d["error"] is None and d["complete"] for d in second["destinations"].values())
    assert found(store, "planted") == {
        ("des0", b"MiXeD3", 2),
        ("des0", b"sp4  ", 2),
        ("des0", "caf\u00e95".encode(), 2),
        # des1 does not map the key; its rows are twins all the same: type 2 naming the key, as the compare does
        ("des1", b"MiXeD3", 2),
        ("des1", b"sp4  ", 2),
        ("des1", "caf\u00e95".encode(), 2),
        ("latin", "caf\u00e98".encode(), 2),
    }
    bodies = delivered_bodies(mariadb, db, destinations, store, config="planted")
    assert bodies["des0", b"MiXeD3"]["differences"] == {"code": {"source": "MiXeD3", "destination": "MIXED3"}}
    assert bodies["des0", b"sp4  "]["differences"] == {
        "code": {"source": "sp4  ", "destination": "sp4"},
        "name": {"source": "name 4", "destination": "stale"},
    }
    assert bodies["des1", b"sp4  "]["differences"] == {
        "code": {"source": "sp4  ", "destination": "sp4"},
        "name": {"source": "name 4", "destination": "stale"},
    }
    assert bodies["des1", b"MiXeD3"]["differences"] == {"code": {"source": "MiXeD3", "destination": "MIXED3"}}
    counts = second["destinations"]["des0"]
    assert (counts["missing"], counts["different"], counts["deleted"]) == (0, 3, 0)
    assert second["destinations"]["des1"]["keyBytesOnly"] == 2  # MIXED3 and cafe5: equal but for the key


# -- 5. key types, other databases, composite and missing primary keys -----------------------------
def test_destinations_in_another_database_with_integer_composite_or_no_primary_keys(
    mariadb: MariaDB, fresh_database: str, other_database: str, store: DeliveryStore
) -> None:
    simple_tables(mariadb, fresh_database, 1200, destination_database=other_database)
    execute(
        mariadb,
        other_database,
        "CREATE TABLE dst_comp (tenant INT NOT NULL, code VARCHAR(32) NOT NULL, name VARCHAR(64) NULL, "
        "PRIMARY KEY (tenant, code), UNIQUE KEY (code))",
        "INSERT INTO dst_comp SELECT CAST(SUBSTRING(code, 2) AS UNSIGNED) % 7, code, name FROM dst",
        "CREATE TABLE dst_nopk (code VARCHAR(32) NULL, name VARCHAR(64) NULL)",
        "INSERT INTO dst_nopk SELECT code, name FROM dst",
        "DELETE FROM dst WHERE code = 'k00001'",
        "UPDATE dst_comp SET name = 'stale' WHERE code IN ('k00600', 'k01200')",
        "DELETE FROM dst_comp WHERE code = 'k00300'",
        "INSERT INTO dst_comp VALUES (3, 'k88888', 'extra')",
        "UPDATE dst_nopk SET name = NULL WHERE code = 'k00002'",
    )
    destinations = {
        "plain": (other_database, SIMPLE_SPEC),
        "comp": (other_database, DestinationSpec("comp", "dst_comp", "code", {"code": "code", "name": "name"})),
        "nopk": (other_database, DestinationSpec("nopk", "dst_nopk", "code", {"code": "code", "name": "name"})),
    }
    summary = reconcile(
        mariadb,
        fresh_database,
        destinations,
        store,
        detect_deletes=True,
        chunk_size=37,
        min_chunk_size=37,
        max_chunk_size=37,
    )
    for name, outcome in summary["destinations"].items():
        assert outcome["error"] is None, name
        assert outcome["complete"] is True, name
    assert summary["destinations"]["comp"]["chunks"]["destination"] > 30  # composite key ranges
    assert summary["destinations"]["nopk"]["chunks"]["destination"] == 2  # one checksum, one compare query
    assert found(store) == {
        ("plain", b"k00001", 1),
        ("comp", b"k00600", 2),
        ("comp", b"k01200", 2),
        ("comp", b"k00300", 1),
        ("comp", b"k88888", 3),
        ("nopk", b"k00002", 2),
    }

    # integer keys: the source's id against a BIGINT key column
    execute(
        mariadb,
        other_database,
        "CREATE TABLE by_id (uid BIGINT UNSIGNED NOT NULL PRIMARY KEY, label VARCHAR(64) NULL)",
        f"INSERT INTO by_id SELECT id, name FROM `{fresh_database}`.src WHERE id NOT IN (17, 1100)",
        "UPDATE by_id SET label = 'stale' WHERE uid = 9",
        "INSERT INTO by_id VALUES (18446744073709551615, 'max')",
    )
    spec = DestinationSpec("ids", "by_id", "uid", {"name": "label"})
    ids = reconcile(
        mariadb,
        fresh_database,
        {"ids": (other_database, spec)},
        store,
        config="ids",
        by_column="id",
        detect_deletes=True,
        chunk_size=100,
        min_chunk_size=100,
        max_chunk_size=100,
    )
    assert ids["destinations"]["ids"]["error"] is None
    assert found(store, "ids") == {
        ("ids", b"17", 1),
        ("ids", b"1100", 1),
        ("ids", b"9", 2),
        ("ids", b"18446744073709551615", 3),
    }
    item = next(i for i in all_items(store, "ids") if i.row_key == b"17")
    assert item.source_id == 17


# -- 5b. composite keys (reconcile.keyColumns) ---------------------------------------------------------
TENANT_SPEC = DestinationSpec("des0", "dst_t", "num", {"tenant_id": "tid", "number": "num", "name": "title"})


def tenant_tables(mariadb: MariaDB, database: str) -> None:
    """``src_t`` keyed by (tenant_id, number), ``number`` repeated in every tenant, and its copy ``dst_t``."""
    execute(
        mariadb,
        database,
        "CREATE TABLE src_t (id INT NOT NULL PRIMARY KEY, tenant_id INT NOT NULL, number VARCHAR(32) NULL, "
        "name VARCHAR(64) NULL, UNIQUE KEY uq_tenant_number (tenant_id, number), KEY (number))",
        "INSERT INTO src_t SELECT seq, seq % 3 + 1, CONCAT('n', LPAD(seq DIV 3, 3, '0')), CONCAT('name ', seq) "
        "FROM seq_1_to_900",
        # a NULL key part is a value of the tuple, matched by IS NULL
        "INSERT INTO src_t VALUES (901, 7, NULL, 'no number'), (902, 8, NULL, 'no number either')",
        # other names and a different clustered key at the destination
        "CREATE TABLE dst_t (did INT NOT NULL AUTO_INCREMENT PRIMARY KEY, num VARCHAR(32) NULL, tid INT NOT NULL, "
        "title VARCHAR(64) NULL, UNIQUE KEY (tid, num))",
        "INSERT INTO dst_t (num, tid, title) SELECT number, tenant_id, name FROM src_t ORDER BY number, tenant_id",
    )


def tenant_key(tenant: int, number: str | None) -> bytes:
    return json.dumps([str(tenant), number], separators=(",", ":")).encode()


def test_composite_key_columns_match_rows_by_the_tuple(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = fresh_database
    tenant_tables(mariadb, db)
    assert scalar(mariadb, db, "SELECT COUNT(*) FROM src_t WHERE number = 'n010'") == 3  # not unique alone

    def run(config: str, **settings: Any) -> dict[str, Any]:
        return ReconcileRun(
            config=config,
            source=params_for(mariadb, db),
            table="src_t",
            id_column="id",
            by_column="number",
            destinations={"des0": (params_for(mariadb, db), TENANT_SPEC)},
            settings=ReconcileSettings(chunk_size=100, min_chunk_size=100, max_chunk_size=100, **settings),
            store=store,
            key_columns=["tenant_id", "number"],
        ).run()["destinations"]["des0"]

    identical = run("same", detect_deletes=True)
    assert identical["error"] is None and identical["complete"] is True
    assert identical["differingBuckets"] == 0
    assert identical["rows"] == {"source": 902, "destination": 902}
    assert identical["nullKeys"] == {"source": 0, "destination": 0}
    assert found(store, "same") == set()

    tenant_of_10 = scalar(mariadb, db, "SELECT tenant_id FROM src_t WHERE id = 10")  # number 'n003'
    execute(
        mariadb,
        db,
        "DELETE FROM dst_t WHERE tid = 2 AND num = 'n010'",  # missing; 'n010' of tenants 1 and 3 still there
        "UPDATE dst_t SET title = 'stale' WHERE tid = 3 AND num = 'n010'",  # different
        "INSERT INTO dst_t (num, tid, title) VALUES ('n010', 4, 'only here')",  # extra: a fourth tenant
        "DELETE FROM dst_t WHERE tid = 8 AND num IS NULL",  # missing, with a NULL part
        "UPDATE dst_t SET title = 'stale' WHERE tid = 7 AND num IS NULL",  # different, with a NULL part
        # only the case of a key part differs: the collation's twin, one different row (not missing + extra)
        f"UPDATE dst_t SET num = 'N003' WHERE tid = {int(tenant_of_10)} AND num = 'n003'",
    )
    monkeypatch.setattr(reconcile_table, "KEY_TUPLES", 2)  # re-reads in several OR-of-AND queries
    planted = run(CONFIG, detect_deletes=True)
    assert planted["error"] is None and planted["complete"] is True
    twin = tenant_key(int(tenant_of_10), "n003")
    assert found(store) == {
        ("des0", tenant_key(2, "n010"), 1),
        ("des0", tenant_key(3, "n010"), 2),
        ("des0", tenant_key(4, "n010"), 3),
        ("des0", tenant_key(8, None), 1),
        ("des0", tenant_key(7, None), 2),
        ("des0", twin, 2),
    }
    assert (planted["missing"], planted["different"], planted["deleted"]) == (2, 3, 1)

    # without detectDeletes the extra row is only counted; a second verify records nothing twice
    again = run(CONFIG)
    assert (again["missing"], again["different"], again["deleted"], again["extraNotRecorded"]) == (2, 3, 0, 1)
    assert again["recorded"] == 0

    # the bodies, built when the items are sent
    source_rows = {(r["tenant_id"], r["number"]): r for r in raw_rows(mariadb, db, "SELECT * FROM src_t")}
    sent = delivered_bodies(mariadb, db, {"des0": (db, TENANT_SPEC)}, store, table="src_t", by_column="number")
    bodies = {key: body for (_, key), body in sent.items()}
    for item in all_items(store):
        body = bodies[item.row_key]
        assert body["type"] == item.type
        assert body["keyColumn"] == "tenant_id,number"
        assert body["key"].encode() == item.row_key  # the stored row key is the JSON text sent
        tenant, number = json.loads(body["key"])
        if item.type in (1, 2):
            row = source_rows[tenant.encode(), None if number is None else number.encode()]
            assert body["srcColumn"] == {c: None if v is None else v.decode() for c, v in row.items()}
    assert json.loads(bodies[tenant_key(2, "n010")]["key"]) == ["2", "n010"]
    assert json.loads(bodies[tenant_key(8, None)]["key"]) == ["8", None]
    assert bodies[tenant_key(3, "n010")]["differences"] == {
        "name": {"source": bodies[tenant_key(3, "n010")]["srcColumn"]["name"], "destination": "stale"}
    }
    assert bodies[twin]["differences"] == {"number": {"source": "n003", "destination": "N003"}}
    deleted = bodies[tenant_key(4, "n010")]
    assert deleted["srcColumn"] == {}
    assert deleted["desColumn"] == {"did": "1024", "tid": "4", "num": "n010", "title": "only here"}  # the whole row


def test_composite_key_columns_must_be_mapped_in_every_destination(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "src": {"dsn": "u:p@tcp(127.0.0.1:3306)/app", "table": "src_t", "byColumn": "number"},
        "des": [
            {
                "dsn": "u:p@tcp(127.0.0.1:3306)/app",
                "table": "dst_t",
                "byColumn": "num",
                "columns": {"tenant_id": "tid", "number": "num", "name": "title"},
                "callbackNotification": {"url": "http://127.0.0.1:9/cb"},
            },
            {
                "name": "partial",
                "dsn": "u:p@tcp(127.0.0.1:3306)/app",
                "table": "dst_p",
                "byColumn": "num",
                "columns": {"number": "num", "name": "title"},
                "callbackNotification": {"url": "http://127.0.0.1:9/cb"},
            },
        ],
        "reconcile": {"enabled": True, "keyColumns": ["tenant_id", "number"]},
    }
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"reconcile\.keyColumns: 'tenant_id' not mapped in des\[1\]\.columns"):
        load_config(path)

    data["des"].pop()
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_config(path).reconcile.key_columns == ["tenant_id", "number"]

    for wrong, problem in ((["tenant_id"], "at least 2"), (["tenant_id", "no-such"], "valid column name")):
        data["reconcile"]["keyColumns"] = wrong
        path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(ValueError, match=problem) as raised:
            load_config(path)
        assert "reconcile.keyColumns" in str(raised.value)
