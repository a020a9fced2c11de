"""Helpers of the reconcile integration tests: tables, one reconcile run, what the delivery store holds."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.reconcile import CHECKPOINT_TABLE, ReconcileRun, ReconcileSettings
from cupid_airflow.core.sql import connect
from cupid_airflow.core.store import STATUSES, DeliveryStore, StoredItem
from tests.support.database import execute, params_for, scalar

if TYPE_CHECKING:
    from conftest import MariaDB

    from cupid_airflow.core.sync import MemoryCursorStore

CONFIG = "rec"
SIMPLE_SPEC = DestinationSpec("des0", "dst", "code", {"code": "code", "name": "name"})


def raw_rows(mariadb: MariaDB, database: str, sql: str) -> list[dict[str, bytes | None]]:
    """Rows as cupid reads them: raw bytes, None for NULL."""
    conn = connect(params_for(mariadb, database))
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()


def reconcile(
    mariadb: MariaDB,
    source_database: str,
    destinations: dict[str, tuple[str, DestinationSpec]],
    store: DeliveryStore,
    *,
    config: str = CONFIG,
    table: str = "src",
    by_column: str = "code",
    progress: MemoryCursorStore | None = None,
    restart: bool = False,
    key_columns: list[str] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """One reconcile run; returns its summary."""
    return ReconcileRun(
        config=config,
        source=params_for(mariadb, source_database),
        table=table,
        id_column="id",
        by_column=by_column,
        destinations={n: (params_for(mariadb, db), spec) for n, (db, spec) in destinations.items()},
        settings=ReconcileSettings(**settings),
        store=store,
        progress=progress,
        restart=restart,
        key_columns=key_columns,
    ).run()


def all_items(store: DeliveryStore, config: str = CONFIG) -> list[StoredItem]:
    return store.items(config, statuses=STATUSES, limit=1_000_000)


def found(store: DeliveryStore, config: str = CONFIG) -> set[tuple[str, bytes, int]]:
    """(destination, row key, type) of every recorded item."""
    return {(i.destination, i.row_key, i.type) for i in all_items(store, config)}


def differences(store: DeliveryStore, config: str = CONFIG) -> dict[tuple[str, bytes], dict[str, Any] | None]:
    """What each recorded item saw differ, by (destination, key): ``{column: {"source", "destination"}}``."""
    return {(i.destination, i.row_key): i.differences for i in all_items(store, config)}


def delivered_bodies(
    mariadb: MariaDB,
    source_database: str,
    destinations: dict[str, tuple[str, DestinationSpec]],
    store: DeliveryStore,
    *,
    config: str = CONFIG,
    table: str = "src",
    by_column: str = "code",
    detect_deletes: bool = True,
) -> dict[tuple[str, bytes], dict[str, Any]]:
    """Deliver the recorded items (bodies are built when they are sent); the bodies by (destination, key)."""
    from cupid_airflow.core.delivery import CallbackTarget
    from cupid_airflow.core.dispatch import Route, dispatch
    from cupid_airflow.core.judge import JudgeSpec
    from tests.support.receivers import Receiver

    receiver = Receiver().start()
    try:
        source = params_for(mariadb, source_database)
        routes = [
            Route(
                name,
                CallbackTarget(receiver.url),
                JudgeSpec(config, name, source, table, "id", by_column, params_for(mariadb, db), spec, detect_deletes),
            )
            for name, (db, spec) in destinations.items()
        ]
        outcomes = dispatch(store.params, config, routes)
        assert all(not o.failed for o in outcomes.values()), outcomes
        bodies = [json.loads(hit.body) for hit in receiver.hits]
    finally:
        receiver.stop()
    return {(b["destination"], b["key"].encode()): b for b in bodies}


def checkpoints(mariadb: MariaDB, database: str, config: str = CONFIG) -> int:
    return int(scalar(mariadb, database, f"SELECT COUNT(*) FROM {CHECKPOINT_TABLE} WHERE config = '{config}'"))


def checkpoint_state(mariadb: MariaDB, database: str, config: str = CONFIG) -> dict[str, Any] | None:
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute(f"SHOW TABLES LIKE '{CHECKPOINT_TABLE}'")
        if not cursor.fetchall():
            return None
        cursor.execute(f"SELECT state FROM {CHECKPOINT_TABLE} WHERE config = %s AND destination = 'des0'", (config,))
        row = cursor.fetchone()
        return None if row is None else json.loads(row[0])
    finally:
        conn.close()


def code(n: int) -> bytes:
    return f"k{n:05d}".encode()


def keys_sql(ids: set[int]) -> str:
    return ", ".join(f"'{code(i).decode()}'" for i in sorted(ids))


def simple_tables(mariadb: MariaDB, database: str, rows: int, destination_database: str | None = None) -> None:
    """``src(id, code, name)`` with ``rows`` rows and its exact copy ``dst(code, name)``."""
    execute(
        mariadb,
        database,
        "CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, code VARCHAR(32) NULL, name VARCHAR(64) NULL, "
        "UNIQUE KEY uq_code (code))",
        "INSERT INTO src (id, code, name) SELECT seq, CONCAT('k', LPAD(seq, 5, '0')), CONCAT('name ', seq) "
        f"FROM seq_1_to_{rows}",
    )
    execute(
        mariadb,
        destination_database or database,
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        f"INSERT INTO dst (code, name) SELECT code, name FROM `{database}`.src WHERE code IS NOT NULL",
    )
