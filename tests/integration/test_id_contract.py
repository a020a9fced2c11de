"""The id column contract: an integer column with a unique index of its own, checked before anything is scanned.

Any integer width, signed or unsigned, over its full range: zero, negative and the largest ids
are scanned like the others.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.scan import ScanError
from cupid_airflow.core.store import STATUSES, DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore, SyncRun
from tests.support.database import execute, params_for, query
from tests.support.scans import CONFIG, found, keyset, make_plan

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import MariaDB

pytestmark = pytest.mark.integration


def source_with(mariadb: MariaDB, database: str, id_definition: str, ids: list[Any], extra: str = "") -> None:
    """``src(<id_definition>, code, name{extra})`` holding ``ids`` (codes ``k<id>``), and an empty ``dst``."""
    execute(
        mariadb,
        database,
        f"CREATE TABLE src ({id_definition}, code VARCHAR(32) NOT NULL, name VARCHAR(64) NULL{extra})",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        *[("INSERT INTO src (id, code, name) VALUES (%s, %s, 'x')", (i, f"k{i}")) for i in ids],
    )


@pytest.mark.parametrize(
    ("id_definition", "extra", "message"),
    [
        ("id VARCHAR(8) NOT NULL PRIMARY KEY", "", r"idColumn 'id' of table 'src' is varchar\(8\).*integer column"),
        ("id INT NOT NULL", ", KEY (id)", r"idColumn 'id' of table 'src' has no unique index of its own"),
        ("id INT NOT NULL", ", UNIQUE KEY (id, code)", r"no unique index of its own.*ADD UNIQUE KEY \(`id`\)"),
        ("id INT NULL", ", UNIQUE KEY (id)", r"idColumn 'id' of table 'src' allows NULL"),
        ("id DECIMAL(20,0) NOT NULL PRIMARY KEY", "", r"is decimal\(20,0\).*TINYINT to BIGINT"),
    ],
    ids=["varchar", "non-unique", "unique-only-with-another-column", "nullable", "decimal"],
)
def test_an_id_column_that_breaks_the_contract_is_refused_before_anything_is_scanned(
    id_definition: str, extra: str, message: str, mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10: a VARCHAR id paged numerically skipped 8 of 20 rows; ties of a non-unique id were skipped."""
    source_with(mariadb, fresh_database, id_definition, [1, 2, 10, 11, 20], extra)
    params = params_for(mariadb, fresh_database)
    cursors = MemoryCursorStore()
    with pytest.raises(ScanError, match=message):
        SyncRun(make_plan(params), cursors, store).run()
    assert cursors.load("des0") is None


def test_a_non_primary_unique_integer_column_is_a_valid_id(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    execute(
        mariadb,
        fresh_database,
        "CREATE TABLE src (uid CHAR(8) NOT NULL PRIMARY KEY, seq INT UNSIGNED NOT NULL, code VARCHAR(32) NOT NULL, "
        "name VARCHAR(64) NULL, UNIQUE KEY uq_seq (seq))",
        "INSERT INTO src VALUES ('a', 3, 'k3', 'x'), ('b', 1, 'k1', 'x')",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
    )
    params = params_for(mariadb, fresh_database)
    summary = SyncRun(make_plan(params, id_column="seq"), MemoryCursorStore(), store).run()
    assert found(store) == keyset([b"k1", b"k3"])
    assert summary["destinations"]["des0"]["cursorAfter"]["insertId"] == 4


SIGNED_MIN, SIGNED_MAX = -(2**63), 2**63 - 1
UNSIGNED_MAX = 2**64 - 1


@pytest.mark.parametrize(
    ("id_definition", "ids", "next_id"),
    [
        ("id BIGINT NOT NULL PRIMARY KEY", [SIGNED_MIN, -7, -1, 0, 5, SIGNED_MAX], SIGNED_MAX + 1),
        ("id BIGINT UNSIGNED NOT NULL PRIMARY KEY", [0, 1, 2**63, UNSIGNED_MAX], UNSIGNED_MAX + 1),
        ("id TINYINT NOT NULL PRIMARY KEY", [-128, -1, 0, 127], 128),
        ("id INT NOT NULL AUTO_INCREMENT PRIMARY KEY", [-5, 0, 3], 4),
    ],
    ids=["bigint", "bigint-unsigned", "tinyint", "int"],
)
def test_zero_negative_and_extreme_ids_are_all_scanned(
    id_definition: str, ids: list[int], next_id: int, mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10: ids <= 0 were never scanned (the cursor started at 1)."""
    source_with(mariadb, fresh_database, id_definition, ids)
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, batch_size=2)
    cursors = MemoryCursorStore()
    first = SyncRun(plan, cursors, store).run()

    assert found(store) == keyset([f"k{i}" for i in ids])  # ids past 2**63 - 1 too (the store keeps 20 digits)
    source_ids = {int(r[0]) for r in query(mariadb, fresh_database, "SELECT id FROM src")}
    assert {item.source_id for item in store.items(CONFIG, STATUSES, limit=100)} == source_ids
    assert first["rowsScanned"]["insert"] == len(ids)
    assert (cursors.load("des0") or {})["insertId"] == next_id
    assert first["caughtUp"] is True

    second = SyncRun(plan, cursors, store).run()  # past the largest id the column can hold
    assert second["rowsScanned"]["insert"] == 0
    assert second["destinations"]["des0"]["lagRows"] == 0
    assert json.loads(json.dumps(cursors.load("des0")))["insertId"] == next_id  # survives JSON (Variables)


def test_a_rescan_can_start_at_a_negative_id(mariadb: MariaDB, fresh_database: str, store: DeliveryStore) -> None:
    source_with(mariadb, fresh_database, "id BIGINT NOT NULL PRIMARY KEY", [-20, -10, 0, 10])
    params = params_for(mariadb, fresh_database)
    plan = make_plan(params, late_commit_second=0)
    cursors = MemoryCursorStore()
    SyncRun(plan, cursors, store).run()
    execute(mariadb, fresh_database, "DELETE FROM cupid_delivery")

    summary = SyncRun(plan, cursors, store, start_id=-10).run()

    assert summary["rowsScanned"]["insert"] == 3
    assert found(store) == keyset([b"k-10", b"k0", b"k10"])


def test_dag_start_id_may_be_zero_or_negative(
    mariadb: MariaDB,
    fresh_database: str,
    tmp_path: Any,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
) -> None:
    """Issue 10: the operator refused start_id < 1, so negative ids could never be rescanned through the DAG."""
    from cupid_airflow.core.config import load_config
    from cupid_airflow.dag_factory import build_dags

    source_with(mariadb, fresh_database, "id INT NOT NULL PRIMARY KEY", [-3, -2, 0, 4])
    execute(mariadb, fresh_database, "INSERT INTO dst SELECT code, name FROM src WHERE id <> -2")
    name = f"idneg{fresh_database[-8:]}"
    dsn = mariadb.go_dsn(fresh_database)
    path = tmp_path / f"{name}.json"
    des = {
        "dsn": dsn,
        "table": "dst",
        "byColumn": "code",
        "columns": {"code": "code", "name": "name"},
        "callbackNotification": {"url": "http://127.0.0.1:9/cb"},
    }
    src = {"dsn": dsn, "table": "src", "byColumn": "code", "lateCommitSecond": 0}
    path.write_text(json.dumps({"retries": 0, "src": src, "des": [des]}), encoding="utf-8")
    config = load_config(path)
    dag = build_dags(config)[config.sync_dag_id]

    run = run_dag(dag, run_conf={"start_id": -3})

    assert run.get_task_instance("compare").state == "success"
    summary = xcom_value(run, "compare")
    assert summary["rowsScanned"]["insert"] == 4
    assert summary["destinations"]["des0"]["cursorBefore"]["insertId"] is None
    rows = query(mariadb, fresh_database, "SELECT row_key FROM cupid_delivery WHERE config = %s", (name,))
    assert {r[0] for r in rows} == {b"k-2"}
