"""Test support: source ``src(id, code, name)`` and its copies with planted mismatches, for the compare tests.

Keys are ``k<id>``; items are recorded under config ``cmp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.store import STATUSES, DeliveryStore, StoredItem
from cupid_airflow.core.sync import SyncPlan
from tests.support.database import execute

if TYPE_CHECKING:
    from conftest import MariaDB

    from cupid_airflow.core.sql import ConnectionParams

CONFIG = "cmp"


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
