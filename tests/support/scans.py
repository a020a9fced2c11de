"""Helpers shared by the scan tests (gaps, id contract, update columns): tables, plans, and fault-injecting connectors.

The connectors wrap :func:`cupid_airflow.core.sql.connect` (real MariaDB connections) and only add
what a test needs to provoke: a pause before a query, a destination that fails after a number of
queries, a session time zone or a fixed clock (``SET timestamp``), or a record of the SQL sent.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import MySQLdb

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import STATUSES, DeliveryStore
from cupid_airflow.core.sync import SyncPlan

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import MariaDB

CONFIG = "scan"
SIMPLE_SPEC = DestinationSpec("des0", "dst", "code", {"code": "code", "name": "name"})


def make_plan(
    source: ConnectionParams,
    destinations: dict[str, tuple[ConnectionParams, DestinationSpec]] | None = None,
    **options: Any,
) -> SyncPlan:
    """A plan on ``src`` keyed by ``code``; one destination ``des0`` (table ``dst``) in the same database by default."""
    options.setdefault("table", "src")
    options.setdefault("id_column", "id")
    options.setdefault("by_column", "code")
    return SyncPlan(
        config=CONFIG,
        source=source,
        destinations=destinations if destinations is not None else {"des0": (source, SIMPLE_SPEC)},
        **options,
    )


def found(store: DeliveryStore, destination: str | None = None) -> set[tuple[str, bytes, int]]:
    """(destination, row key, type) of every recorded item."""
    return {
        (i.destination, i.row_key, i.type)
        for i in store.items(CONFIG, statuses=STATUSES, limit=1_000_000)
        if destination is None or i.destination == destination
    }


def keyset(keys: Any, destination: str = "des0", mismatch_type: int = 1) -> set[tuple[str, bytes, int]]:
    return {(destination, k if isinstance(k, bytes) else str(k).encode(), mismatch_type) for k in keys}


@contextlib.contextmanager
def open_insert(mariadb: MariaDB, database: str, sql: str, args: Any = None) -> Iterator[Callable[[], int]]:
    """An INSERT left uncommitted (a slow transaction); yields ``commit()``, which returns the row's id.

    Rolled back if the block ends without ``commit()``.
    """
    conn = mariadb.connect(database, autocommit=False)
    cursor = conn.cursor()
    cursor.execute("BEGIN")
    cursor.execute(sql, args)
    row_id = int(cursor.lastrowid)
    done = False

    def commit() -> int:
        nonlocal done
        conn.commit()
        done = True
        return row_id

    try:
        yield commit
    finally:
        if not done:
            conn.rollback()
        conn.close()


# -- connectors ----------------------------------------------------------------------------------
class _Cursor:
    def __init__(self, inner: Any, on_execute: Callable[[Any, Any], None]) -> None:
        self._inner = inner
        self._on_execute = on_execute

    def execute(self, sql: Any, args: Any = None) -> Any:
        self._on_execute(sql, args)
        return self._inner.execute(sql, args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Connection:
    def __init__(self, inner: Any, on_execute: Callable[[Any, Any], None]) -> None:
        self._inner = inner
        self._on_execute = on_execute

    def cursor(self, *args: Any) -> _Cursor:
        return _Cursor(self._inner.cursor(*args), self._on_execute)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _text(sql: Any) -> str:
    return sql.decode("utf-8", "replace") if isinstance(sql, bytes) else str(sql)


class Connector:
    """``connector=`` for :class:`SyncRun`: real connections, with hooks.

    :param session_sql: statements run on every new connection (e.g. ``SET time_zone = ...``).
    :param before: called with each statement's SQL text before it runs (to pause or to fail).
    """

    def __init__(self, session_sql: tuple[str, ...] = (), before: Callable[[str], None] | None = None) -> None:
        self.session_sql = session_sql
        self.before = before
        self.statements: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, params: ConnectionParams) -> Any:
        conn = connect(params)
        cursor = conn.cursor()
        for statement in self.session_sql:
            cursor.execute(statement)
        return _Connection(conn, self._on_execute)

    def _on_execute(self, sql: Any, args: Any) -> None:
        text = _text(sql)
        with self._lock:
            self.statements.append((text, args))
        if self.before is not None:
            self.before(text)


def pause_first(marker: str, seconds: float) -> Callable[[str], None]:
    """A ``before`` hook that sleeps once, before the first statement containing ``marker``."""
    done = threading.Event()

    def before(sql: str) -> None:
        if marker in sql and not done.is_set():
            done.set()
            time.sleep(seconds)

    return before


def fail_after(marker: str, allowed: int) -> Callable[[str], None]:
    """A ``before`` hook that lets ``allowed`` statements containing ``marker`` run, then fails every other one."""
    seen = 0
    lock = threading.Lock()

    def before(sql: str) -> None:
        nonlocal seen
        if marker not in sql:
            return
        with lock:
            seen += 1
            if seen > allowed:
                raise MySQLdb.OperationalError(2013, "Lost connection to server during query (injected by the test)")

    return before
