"""SQL identifiers and raw-bytes MySQL connections."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
IDENTIFIER_RULE = "letters, digits, '_' and '$', 1 to 64 characters"
TABLE_RULE = f"a table name or database.table, each part {IDENTIFIER_RULE}"


def is_identifier(name: str) -> bool:
    return bool(IDENTIFIER_RE.match(name)) and not name.isdigit()


def is_table_name(name: str) -> bool:
    parts = name.split(".")
    return 1 <= len(parts) <= 2 and all(is_identifier(p) for p in parts)


def quote_identifier(name: str) -> str:
    """Quote a validated column name as a MySQL identifier."""
    if not is_identifier(name):
        raise ValueError(f"not a valid identifier: {name!r} ({IDENTIFIER_RULE})")
    return f"`{name}`"


def quote_table(name: str) -> str:
    """Quote a validated ``table`` or ``database.table`` name."""
    if not is_table_name(name):
        raise ValueError(f"not a valid table name: {name!r} ({TABLE_RULE})")
    return ".".join(f"`{part}`" for part in name.split("."))


def split_table(name: str, default_database: str | None) -> tuple[str | None, str]:
    """Return (database, table) of a ``table`` or ``database.table`` name."""
    if "." in name:
        database, table = name.split(".", 1)
        return database, table
    return default_database, name


def literal_int(value: int) -> str:
    """Render an integer for SQL text (raw connections quote every parameter)."""
    return str(int(value))


def multi_row_inserts(
    conn: Any, head: str, rows: Sequence[Sequence[Any]], tail: str = "", max_bytes: int = 1 << 20
) -> Iterator[bytes]:
    """``head (v, …),(v, …) tail`` statements holding all ``rows``, each about ``max_bytes`` at most (a
    lone row may be longer), every value escaped by ``conn`` (a mysqlclient connection).

    What ``executemany`` sends for ``INSERT … VALUES (%s, …)``, without its Python dispatch per value
    (half a store write's time): ``None`` is NULL, integers (and bools) are numbers, text is UTF-8 and,
    like bytes, quoted and escaped by the client library for the connection's character set.
    """
    quote = conn.string_literal
    start, end = head.encode(), tail.encode()
    batch: list[bytes] = []
    size = 0
    for row in rows:
        values = []
        for value in row:
            if value is None:
                values.append(b"NULL")
            elif isinstance(value, bytes):
                values.append(quote(value))
            elif isinstance(value, str):
                values.append(quote(value.encode("utf-8")))
            elif isinstance(value, int):
                values.append(b"%d" % value)
            else:
                raise TypeError(f"no SQL literal for a {type(value).__name__}")
        rendered = b"(" + b",".join(values) + b")"
        if batch and size + len(rendered) > max_bytes:
            yield start + b",".join(batch) + end
            batch, size = [], 0
        batch.append(rendered)
        size += len(rendered) + 1
    if batch:
        yield start + b",".join(batch) + end


@dataclass(frozen=True)
class ConnectionParams:
    """Where a MySQL server is; ``repr`` never shows the password.

    :param options: more mysqlclient ``connect()`` arguments (``ssl``, ``ssl_mode``, ``init_command``,
        ``charset``...), e.g. from an Airflow connection; they cannot turn the raw-bytes results off.
    """

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = field(default="", repr=False)
    database: str | None = None
    unix_socket: str | None = None
    io_timeout_second: int = 60  # each read and write of a query; a server that stops answering fails the caller
    options: dict[str, Any] = field(default_factory=dict, repr=False, hash=False)

    def describe(self) -> str:
        """A password-free description for logs and errors."""
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database or ''}"

    def __repr__(self) -> str:
        return f"ConnectionParams({self.describe()})"


def describe_error(err: Exception, *params: ConnectionParams) -> str:
    """A database error for logs and summaries: never a password, and where it happened when that is one server."""
    text = str(err)
    for server in params:
        if server.password:
            text = text.replace(server.password, "***")
    where = f" at {params[0].describe()}" if len(params) == 1 else ""
    return f"{type(err).__name__}{where}: {text}"[:1000]


class LazyConnection:
    """One raw-bytes connection, opened on first use and dropped after an error so the next use reconnects.

    ``SESSION_SQL`` statements run on every new connection (e.g. the isolation level).
    """

    SESSION_SQL: tuple[str, ...] = ()

    def __init__(self, params: ConnectionParams) -> None:
        self.params = params
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            conn = connect(self.params)
            try:
                for statement in self.SESSION_SQL:
                    conn.cursor().execute(statement)
            except Exception:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection must not hide the real error
                self._conn.close()
            self._conn = None

    def _execute(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, args)
        except Exception:
            self.close()
            raise
        return cursor


_RAW_RESULTS = frozenset({"conv", "use_unicode", "cursorclass"})  # what the byte-exact compare relies on
CONNECT_TIMEOUT_SECOND = 10


def connect(params: ConnectionParams, *, connect_timeout: int = CONNECT_TIMEOUT_SECOND) -> Any:
    """Open a mysqlclient connection that returns every value as raw bytes.

    Values come back exactly as MySQL renders them as text (``None`` for
    NULL), which is what cupid compares and sends. Query parameters are
    encoded as usual (``None`` is NULL, integers stay numbers). Every wait on
    the server is bounded: connecting, and each read and write of a query, so
    a server that stops answering fails the caller instead of hanging it.
    """
    import MySQLdb
    from MySQLdb.converters import conversions

    kwargs: dict[str, Any] = {
        "user": params.user,
        "passwd": params.password,
        # encoders for parameters only: no decoders, so results stay raw bytes
        "conv": {k: v for k, v in conversions.items() if not isinstance(k, int)},
        "use_unicode": False,
        "charset": "utf8mb4",
        "connect_timeout": connect_timeout,
        "read_timeout": params.io_timeout_second,
        "write_timeout": params.io_timeout_second,
        "autocommit": True,
    }
    kwargs.update((k, v) for k, v in params.options.items() if k not in _RAW_RESULTS)
    if params.database:
        kwargs["db"] = params.database
    if params.unix_socket:
        kwargs["unix_socket"] = params.unix_socket
    else:
        kwargs["host"] = params.host
        kwargs["port"] = params.port
    return MySQLdb.connect(**kwargs)
