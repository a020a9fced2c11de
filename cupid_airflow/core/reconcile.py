"""Full reconciliation: verify whole tables by hash-bucket checksums over sequential primary-key scans.

Incremental scans only see new ids and moved update columns. A reconcile run
verifies the whole source table against each destination in three phases:

1. **checksum**: each side is read in its *own* primary-key order (sequential
   IO, never a lookup by the other side's key), in chunks found by nibbling
   (``pk > last ORDER BY pk LIMIT 1 OFFSET n-1``). One query per chunk
   returns, per hash bucket of the key (``MOD(CRC32(key text), B)``), the row
   count and the ``BIT_XOR`` of a 64-bit row hash. Counts and XORs add up in
   any order, so Python sums them into two arrays of ``B`` buckets per side.
2. **compare**: only buckets whose (count, XOR) differ matter. Each side is
   read again in primary-key order (the chunk bounds of phase 1 are reused,
   last chunk first) returning ``(pk, key, row hash)`` of the rows in those
   buckets only. When those buckets hold more rows than ``maxCompareRows``, a
   **refine** pass first checksums them again split into sub-buckets of about
   two rows (one more sequential read, fixed-size arrays), so the compare
   fetches little more than the differing rows.
3. **judge**: keys missing, extra or with another row hash are re-read
   (source rows by primary key, destination rows by key) and judged on what
   the tables hold now, exactly as the incremental compare judges: type 1
   missing, type 2 different, and type 3 (deleted at the source) for
   destination rows without a source row when ``detectDeletes`` is on.

The row hash is ``CRC32(s) * CRC32C(s)`` over ``s = CONCAT_WS('|', ...)`` of the
key and every compared column as ``IF(c IS NULL, 'N', CONCAT(LENGTH(c), ':', c))``
(text in utf8mb4), so NULL differs from ``''`` and ``'ab'+'c'`` from ``'a'+'bc'``.
The product is deliberate: CRC32 is linear, so the XOR of plain CRCs misses two
rows of a bucket changed the same way (the same flag flipped on two rows of
equal length); the product of two different CRCs is not linear. Servers
without ``CRC32C`` (MySQL) use ``CRC32(s) * CRC32(REVERSE(s))`` on both sides.

With ``reconcile.keyColumns`` the rows are matched by a tuple of columns instead of
``byColumn``: the bucket is ``CRC32`` of the parts framed like the row hash's values
(``CONCAT_WS('|', ...)`` of NULL-marked, length-prefixed texts), rows are paired and re-read
by the tuple (``OR`` of ``AND``s, ``IS NULL`` for NULL parts), and the key as stored and sent is
:func:`composite_key`: a UTF-8 JSON array of the parts.

Both sides run at once in two threads (one connection each). Chunk sizes adapt
to a target time per chunk query; optional gates wait while a server's
``Threads_running`` or replica lag is too high. Progress (phase, each side's
last primary key, the bucket arrays, partial compare results) is checkpointed
in table ``cupid_reconcile_checkpoint`` of the state database, so a paused or
killed run resumes where it stopped; a completed verify deletes its checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import struct
import threading
import time
import zlib
from array import array
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DELETED, DIFFERENT, MISSING, DestinationSpec, loose_key
from cupid_airflow.core.detection import RECONCILE, Detection
from cupid_airflow.core.sql import (
    ConnectionParams,
    LazyConnection,
    describe_error,
    literal_int,
    quote_identifier,
    quote_table,
    split_table,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from cupid_airflow.core.store import DeliveryStore
    from cupid_airflow.core.sync import CursorStore

log = logging.getLogger(__name__)

CHECKPOINT_TABLE = "cupid_reconcile_checkpoint"
CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
  config       VARCHAR(128) NOT NULL,
  destination  VARCHAR(128) NOT NULL,
  started_at   DATETIME(6)  NOT NULL,
  state        LONGTEXT     NOT NULL,
  buckets      LONGBLOB     NULL,
  updated_at   DATETIME(6)  NOT NULL,
  PRIMARY KEY (config, destination)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
FORMAT_VERSION = 1
MAX_REFINED = 1 << 19  # sub-buckets of the refine phase, per side (12 bytes each in the checkpoint)
RESULT_ROWS = 50_000  # rows a refine or compare chunk query should return at most (bounds memory)
KEY_TUPLES = 500  # composite keys per re-read query (an OR of ANDs)

CHECKSUM = "checksum"
REFINE = "refine"
COMPARE = "compare"
DONE = "done"
SOURCE = "source"
DESTINATION = "destination"
SIDES = (SOURCE, DESTINATION)
KIND_NAMES = {MISSING: "missing", DIFFERENT: "different", DELETED: "deleted"}

HASH_CRC32C = "crc32*crc32c"
HASH_REVERSE = "crc32*crc32(reverse)"

INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
NUMBER_TYPES = {"decimal", "numeric", "float", "double", "real"}
BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit"}
_NUMBER_RE = re.compile(rb"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")

Key = bytes
Pk = tuple[bytes, ...]
Values = tuple[bytes | None, ...]


@dataclass(frozen=True)
class ReconcileSettings:
    """How a reconcile run works and how hard it may load the servers.

    :param detect_deletes: record destination rows without a source row as type 3.
    :param chunk_size: rows of each side's first chunk; later chunks follow ``target_chunk_second``.
    :param min_chunk_size: the smallest chunk, in rows.
    :param max_chunk_size: the largest chunk, in rows.
    :param target_chunk_second: chunk sizes adapt so one chunk query takes about this long.
    :param max_seconds_per_run: pause (checkpoint) after this long; the next run resumes.
    :param max_chunks_per_run: pause after this many chunk queries on either side (None: no limit).
    :param max_threads_running: wait while a server's ``Threads_running`` is above this (None: no gate).
    :param max_replica_lag_second: wait while a server that is a replica lags more than this (None: no gate).
    :param wait_second: how long to wait before checking a busy server again.
    :param bucket_rows: rows per hash bucket aimed at; the bucket count follows the larger table.
    :param min_buckets: the fewest hash buckets.
    :param max_buckets: the most hash buckets (the checkpoint holds 12 bytes per bucket and side).
    :param max_compare_rows: rows of differing buckets (both sides) compared in memory at once; more are
        first refined into sub-buckets (and, if still more, compared in several passes).
    :param checkpoint_second: write the checkpoint at least this often while chunks run.
    :param fetch_batch: keys per re-read query of the judge phase.
    """

    detect_deletes: bool = False
    chunk_size: int = 20000
    min_chunk_size: int = 1000
    max_chunk_size: int = 1_000_000
    target_chunk_second: float = 0.5
    max_seconds_per_run: float = 1800.0
    max_chunks_per_run: int | None = None
    max_threads_running: int | None = None
    max_replica_lag_second: int | None = None
    wait_second: float = 1.0
    bucket_rows: int = 32
    min_buckets: int = 4096
    max_buckets: int = 262144
    max_compare_rows: int = 100_000
    checkpoint_second: float = 10.0
    fetch_batch: int = 1000


# -- one side: a table, its clustered key, its match key and compared columns -----------------------
@dataclass(frozen=True)
class Column:
    """A column as information_schema describes it."""

    name: str
    data_type: str
    charset: str | None
    collation: str | None
    nullable: bool


class ReconcileError(RuntimeError):
    """A table cannot be reconciled as configured."""


def composite_key(parts: Sequence[bytes | None]) -> Key:
    """A composite key as stored (``row_key``) and sent (``key``): the compact JSON array of its parts,
    UTF-8. A part is its text, NULL is ``null``, a part that is not UTF-8 is ``{"base64": "..."}``;
    so the encoding is unambiguous and the same parts always give the same bytes."""
    items: list[str | dict[str, str] | None] = []
    for part in parts:
        if part is None:
            items.append(None)
            continue
        try:
            items.append(part.decode("utf-8"))
        except UnicodeDecodeError:
            items.append({"base64": base64.b64encode(part).decode("ascii")})
    return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def composite_parts(key: Key) -> tuple[bytes | None, ...]:
    """The parts of a :func:`composite_key`."""
    parts: list[bytes | None] = []
    for item in json.loads(key):
        if item is None:
            parts.append(None)
        elif isinstance(item, dict):
            parts.append(base64.b64decode(item["base64"]))
        else:
            parts.append(str(item).encode("utf-8"))
    return tuple(parts)


class TableSide(LazyConnection):
    """One side of a reconcile: its table read through its own connection, in its own names.

    :param role: ``source`` or ``destination`` (for logs and summaries).
    :param key: the match key column (``byColumn``).
    :param columns: the compared columns, in the order both sides hash them.
    :param key_columns: two or more columns that match rows instead of ``key`` (``reconcile.keyColumns``,
        in this side's names); keys are then :func:`composite_key` bytes.
    """

    def __init__(
        self,
        role: str,
        params: ConnectionParams,
        table: str,
        key: str,
        columns: Sequence[str],
        key_columns: Sequence[str] | None = None,
    ) -> None:
        super().__init__(params)
        self.role = role
        self.table_name = table
        self.table = quote_table(table)
        self.key_name = key
        self.columns = list(columns)
        self.key_parts = list(key_columns) if key_columns else [key]
        self.composite = len(self.key_parts) > 1
        self.keys: list[Column] = []
        self.info: dict[str, Column] = {}
        self.pk: list[Column] = []
        self.pk_index: str | None = None
        self.estimated_rows = 0
        self.has_crc32c = False
        self.queries = 0

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one fully rendered statement (no parameters, so a literal ``%`` stays as it is)."""
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
        except Exception:
            self.close()
            raise
        self.queries += 1
        return list(cursor.fetchall())

    def stream(self, sql: str, batch: int = 10000) -> Iterator[list[tuple[Any, ...]]]:
        """Run one statement and yield its rows in batches, unbuffered (big results never sit in memory)."""
        import MySQLdb.cursors

        cursor = self.conn.cursor(MySQLdb.cursors.SSCursor)
        try:
            cursor.execute(sql)
            self.queries += 1
            while rows := cursor.fetchmany(batch):
                yield list(rows)
        except Exception:
            self.close()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    def query_dicts(self, sql: str) -> list[dict[str, bytes | None]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
        except Exception:
            self.close()
            raise
        self.queries += 1
        names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- schema -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Read the table's columns, clustered key, size estimate and whether the server has ``CRC32C``."""
        database, table = split_table(self.table_name, self.params.database)
        where = f"TABLE_SCHEMA = {self._text_literal(database) if database else 'DATABASE()'} AND TABLE_NAME = "
        where += self._text_literal(table)
        rows = self.query(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, IS_NULLABLE "
            f"FROM information_schema.COLUMNS WHERE {where} ORDER BY ORDINAL_POSITION"
        )
        self.info = {
            r[0].decode().lower(): Column(
                r[0].decode(), r[1].decode().lower(), _text(r[2]), _text(r[3]), r[4].decode().upper() == "YES"
            )
            for r in rows
        }
        if not self.info:
            raise ReconcileError(f"{self.role} table {self.table_name!r} does not exist at {self.params.describe()}")
        named = [self.key_name, *self.key_parts, *self.columns] if self.composite else [self.key_name, *self.columns]
        absent = [c for c in dict.fromkeys(named) if c.lower() not in self.info]
        if absent:
            raise ReconcileError(f"{self.role} table {self.table_name!r} has no column(s) {', '.join(absent)}")
        self.key = self.info[self.key_name.lower()]
        self.keys = [self.info[c.lower()] for c in self.key_parts]
        indexes: dict[str, list[tuple[int, str, bool, bool]]] = {}
        for name, seq, column, non_unique, sub_part in self.query(
            "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, SUB_PART FROM information_schema.STATISTICS "
            f"WHERE {where}"
        ):
            indexes.setdefault(name.decode(), []).append(
                (int(seq), column.decode(), int(non_unique) == 0, sub_part is None)
            )
        self.pk, self.pk_index = self._clustered(indexes)
        if not self.pk:
            log.warning(
                "%s table %s has no primary key (nor a unique NOT NULL key): it is checksummed in one chunk, "
                "which cannot pause in the middle",
                self.role,
                self.table_name,
            )
        estimate = self.query(f"SELECT TABLE_ROWS FROM information_schema.TABLES WHERE {where}")
        self.estimated_rows = int(estimate[0][0] or 0) if estimate else 0
        try:
            self.query("SELECT CRC32C('cupid')")
            self.has_crc32c = True
        except Exception:  # MySQL, MariaDB before 10.8
            self.has_crc32c = False

    def _clustered(self, indexes: dict[str, list[tuple[int, str, bool, bool]]]) -> tuple[list[Column], str | None]:
        """The primary key, else the first unique key of NOT NULL whole columns (InnoDB clusters on it)."""
        candidates = sorted(indexes.items(), key=lambda item: (item[0] != "PRIMARY", item[0]))
        for name, parts in candidates:
            parts.sort()
            columns = [self.info[c.lower()] for _, c, _, _ in parts]
            unique = all(u for _, _, u, _ in parts)
            whole = all(w for _, _, _, w in parts)
            if unique and whole and not any(c.nullable for c in columns):
                return columns, name
        return [], None

    def describe_shape(self) -> dict[str, Any]:
        """What the checkpoint depends on: a changed shape starts the verify over."""
        shape = {
            "table": self.table_name,
            "where": self.params.describe(),
            "key": self.key_name,
            "columns": self.columns,
            "pk": [c.name for c in self.pk],
        }
        if self.composite:
            shape["keyColumns"] = self.key_parts
        return shape

    # -- SQL pieces ---------------------------------------------------------------------------
    def _value(self, column: Column) -> str:
        """A column as bytes comparable across servers: text in utf8mb4, anything else as rendered."""
        quoted = quote_identifier(column.name)
        if column.charset and column.charset not in ("binary", "utf8mb4"):
            return f"CONVERT({quoted} USING utf8mb4)"
        return quoted

    def _framed(self, column: Column) -> str:
        """A column's value, NULL-marked and length-prefixed: no two value sequences join alike."""
        value = self._value(column)
        return f"IF({quote_identifier(column.name)} IS NULL, 'N', CONCAT(LENGTH({value}), ':', {value}))"

    def bucket_sql(self, buckets: int) -> str:
        if self.composite:
            text = f"CONCAT_WS('|', {', '.join(self._framed(c) for c in self.keys)})"
            return f"MOD(CRC32({text}), {literal_int(buckets)})"
        return f"MOD(CRC32({self._value(self.key)}), {literal_int(buckets)})"

    def row_hash_sql(self, method: str) -> str:
        names = [*self.key_parts, *self.columns] if self.composite else [self.key_name, *self.columns]
        parts = [self._framed(self.info[name.lower()]) for name in names]
        text = f"CONCAT_WS('|', {', '.join(parts)})"
        if method == HASH_CRC32C:
            return f"(CRC32({text}) * CRC32C({text}))"
        return f"(CRC32({text}) * CRC32(REVERSE(CAST({text} AS BINARY))))"

    def literal(self, column: Column, value: bytes) -> str:
        """A value read from this column, as a literal this column compares with exactly."""
        if column.data_type in INTEGER_TYPES:
            return literal_int(int(value))
        if column.data_type in NUMBER_TYPES and _NUMBER_RE.match(value):
            return value.decode("ascii")
        if column.data_type in BINARY_TYPES:
            return f"X'{value.hex()}'"
        return self._text_literal(value)

    def _text_literal(self, value: bytes | str) -> str:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        try:
            return str(self.conn.literal(raw).decode("utf-8"))
        except UnicodeDecodeError:
            return f"_utf8mb4 X'{raw.hex()}'"

    def _index_hint(self) -> str:
        if self.pk_index is None:
            return ""
        return f" FORCE INDEX ({'PRIMARY' if self.pk_index == 'PRIMARY' else quote_identifier(self.pk_index)})"

    def _pk_list(self) -> str:
        return ", ".join(quote_identifier(c.name) for c in self.pk)

    def _compare_pk(self, op: str, values: Pk) -> str:
        """``pk > values`` or ``pk <= values`` for a (composite) key, as ranges the optimizer can use."""
        columns = [quote_identifier(c.name) for c in self.pk]
        literals = [self.literal(c, v) for c, v in zip(self.pk, values, strict=True)]
        if len(columns) == 1:
            return f"{columns[0]} {op} {literals[0]}"
        strict = ">" if op == ">" else "<"
        terms = []
        for n in range(len(columns)):
            equal = [f"{columns[i]} = {literals[i]}" for i in range(n)]
            last = op if n == len(columns) - 1 else strict
            terms.append("(" + " AND ".join([*equal, f"{columns[n]} {last} {literals[n]}"]) + ")")
        return "(" + " OR ".join(terms) + ")"

    def range_where(self, low: Pk | None, high: Pk | None, extra: str | None = None) -> str:
        """``WHERE low < pk <= high`` (either end open when None)."""
        clauses = []
        if low is not None:
            clauses.append(self._compare_pk(">", low))
        if high is not None:
            clauses.append(self._compare_pk("<=", high))
        if extra:
            clauses.append(extra)
        return (" WHERE " + " AND ".join(clauses)) if clauses else ""

    # -- chunk queries ------------------------------------------------------------------------
    def boundary(self, low: Pk | None, size: int) -> Pk | None:
        """The primary key ``size`` rows after ``low``, or None when fewer rows are left (or no key)."""
        if not self.pk:
            return None
        rows = self.query(
            f"SELECT {self._pk_list()} FROM {self.table}{self._index_hint()}{self.range_where(low, None)} "
            f"ORDER BY {self._pk_list()} LIMIT 1 OFFSET {literal_int(max(0, size - 1))}"
        )
        return tuple(rows[0]) if rows else None

    def checksum(self, low: Pk | None, high: Pk | None, buckets: int, method: str) -> list[tuple[Any, ...]]:
        """``(bucket, rows, xor of row hashes)`` of each bucket met in the chunk ``low < pk <= high``."""
        return self.query(self._checksum_sql(low, high, buckets, method, None))

    def sub_checksums(
        self, low: Pk | None, high: Pk | None, modulus: int, method: str, within: tuple[int, str]
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The same per sub-bucket (key hash modulo ``modulus``), for the rows of the buckets ``within`` =
        (buckets, SQL list) only; streamed in batches, as there is about one result row per table row."""
        return self.stream(self._checksum_sql(low, high, modulus, method, within))

    def _checksum_sql(
        self, low: Pk | None, high: Pk | None, modulus: int, method: str, within: tuple[int, str] | None
    ) -> str:
        extra = f"{self.bucket_sql(within[0])} IN ({within[1]})" if within else None
        return (
            f"SELECT {self.bucket_sql(modulus)}, COUNT(*), BIT_XOR({self.row_hash_sql(method)}) "
            f"FROM {self.table}{self._index_hint()}{self.range_where(low, high, extra)} GROUP BY 1 ORDER BY NULL"
        )

    def pairs(self, low: Pk | None, high: Pk | None, buckets: int, method: str, wanted: str) -> list[tuple[Any, ...]]:
        """``(pk..., key, row hash)`` of the chunk's rows whose bucket is in ``wanted`` (an SQL list);
        ``(pk..., key parts..., row hash)`` for a composite key."""
        keys = self.keys if self.composite else [self.key]
        select = ", ".join([*(quote_identifier(c.name) for c in self.pk), *(quote_identifier(c.name) for c in keys)])
        return self.query(
            f"SELECT {select}, {self.row_hash_sql(method)} FROM {self.table}{self._index_hint()}"
            f"{self.range_where(low, high, f'{self.bucket_sql(buckets)} IN ({wanted})')}"
        )

    # -- re-reads for the judge phase ---------------------------------------------------------
    def whole_rows_by_pk(self, pks: Sequence[Pk]) -> list[dict[str, bytes | None]]:
        if not pks:
            return []
        if len(self.pk) == 1:
            where = f"{quote_identifier(self.pk[0].name)} IN ({', '.join(self.literal(self.pk[0], p[0]) for p in pks)})"
        else:
            rows = ", ".join(
                "(" + ", ".join(self.literal(c, v) for c, v in zip(self.pk, p, strict=True)) + ")" for p in pks
            )
            where = f"({self._pk_list()}) IN ({rows})"
        return self.query_dicts(f"SELECT * FROM {self.table} WHERE {where}")

    def whole_rows_by_key(self, keys: Sequence[Key]) -> list[dict[str, bytes | None]]:
        if not keys:
            return []
        if self.composite:
            return [r for w in self._tuples_in(keys) for r in self.query_dicts(f"SELECT * FROM {self.table} WHERE {w}")]
        return self.query_dicts(f"SELECT * FROM {self.table} WHERE {self._key_in(keys)}")

    def mapped_by_key(self, keys: Sequence[Key]) -> dict[Key, Values]:
        """Key -> compared values of the rows the table's collation matches to ``keys`` (twins included)."""
        if not keys:
            return {}
        columns = ", ".join(quote_identifier(self.info[c.lower()].name) for c in self.columns)
        if self.composite:
            width = len(self.keys)
            mapped: dict[Key, Values] = {}
            for where in self._tuples_in(keys):
                for r in self.query(f"SELECT {self._key_list()}, {columns} FROM {self.table} WHERE {where}"):
                    mapped[composite_key(r[:width])] = tuple(r[width:])
            return mapped
        rows = self.query(
            f"SELECT {quote_identifier(self.key.name)}, {columns} FROM {self.table} WHERE {self._key_in(keys)}"
        )
        return {r[0]: tuple(r[1:]) for r in rows if r[0] is not None}

    def keys_present(self, keys: Sequence[Key]) -> set[Key]:
        """Keys of the rows the table's collation matches to ``keys`` (twins included)."""
        if not keys:
            return set()
        if self.composite:
            return {
                composite_key(r)
                for where in self._tuples_in(keys)
                for r in self.query(f"SELECT {self._key_list()} FROM {self.table} WHERE {where}")
            }
        rows = self.query(f"SELECT {quote_identifier(self.key.name)} FROM {self.table} WHERE {self._key_in(keys)}")
        return {r[0] for r in rows if r[0] is not None}

    def row_key(self, row: dict[str, bytes | None]) -> Key | None:
        """The match key of a whole row read by ``SELECT *`` (None for a NULL single key)."""
        if self.composite:
            return composite_key([row.get(_name_in(row, c.name)) for c in self.keys])
        return row.get(_name_in(row, self.key.name))

    def _key_in(self, keys: Sequence[Key]) -> str:
        return f"{quote_identifier(self.key.name)} IN ({', '.join(self.literal(self.key, k) for k in keys)})"

    def _key_list(self) -> str:
        return ", ".join(quote_identifier(c.name) for c in self.keys)

    def _tuples_in(self, keys: Sequence[Key]) -> Iterator[str]:
        """``WHERE`` conditions matching composite ``keys``, ``KEY_TUPLES`` keys each: an ``OR`` of ``AND``s
        (``IS NULL`` for a NULL part, which a row constructor ``IN`` list could never match)."""
        for start in range(0, len(keys), KEY_TUPLES):
            terms = []
            for key in keys[start : start + KEY_TUPLES]:
                parts = composite_parts(key)
                if len(parts) != len(self.keys):
                    raise ReconcileError(f"composite key {key!r} has {len(parts)} parts, not {len(self.keys)}")
                terms.append(
                    "("
                    + " AND ".join(
                        f"{quote_identifier(c.name)} IS NULL"
                        if v is None
                        else f"{quote_identifier(c.name)} = {self.literal(c, v)}"
                        for c, v in zip(self.keys, parts, strict=True)
                    )
                    + ")"
                )
            yield "(" + " OR ".join(terms) + ")"

    # -- load gates ---------------------------------------------------------------------------
    def threads_running(self) -> int | None:
        rows = self.query("SHOW GLOBAL STATUS LIKE 'Threads_running'")
        return int(rows[0][1]) if rows else None

    def replica_lag(self) -> int | None:
        """Seconds behind its primary when this server is a replica; None otherwise (or without privilege)."""
        for statement in ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS"):
            try:
                cursor = self.conn.cursor()
                cursor.execute(statement)
                row = cursor.fetchone()
            except Exception:
                self.close()
                continue
            if not row:
                return None
            names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
            for column in ("Seconds_Behind_Source", "Seconds_Behind_Master"):
                if column in names:
                    value = row[names.index(column)]
                    return None if value is None else int(value)
            return None
        return None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


# -- the state of one verify (what the checkpoint holds) ----------------------------------------------
@dataclass
class SideProgress:
    """How far one side is in the current phase.

    ``bounds`` are the phase-1 chunks, ``(upper key or None for the end, rows)``;
    phase 2 reads the same chunks again (merged), ``position`` of them done.
    """

    last: Pk | None = None
    done: bool = False
    rows: int = 0
    chunks: int = 0
    chunk_size: int = 0
    null_keys: int = 0
    bounds: list[tuple[Pk | None, int]] = field(default_factory=list)
    position: int = 0
    compare_rows: int = 0
    compare_done: bool = False
    compare_size: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "last": _encode_pk(self.last),
            "done": self.done,
            "rows": self.rows,
            "chunks": self.chunks,
            "chunkSize": self.chunk_size,
            "nullKeys": self.null_keys,
            "bounds": [[_encode_pk(b), n] for b, n in self.bounds],
            "position": self.position,
            "compareRows": self.compare_rows,
            "compareDone": self.compare_done,
            "compareSize": self.compare_size,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SideProgress:
        return cls(
            last=_decode_pk(data.get("last")),
            done=bool(data.get("done")),
            rows=int(data.get("rows") or 0),
            chunks=int(data.get("chunks") or 0),
            chunk_size=int(data.get("chunkSize") or 0),
            null_keys=int(data.get("nullKeys") or 0),
            bounds=[(_decode_pk(b), int(n)) for b, n in data.get("bounds") or []],
            position=int(data.get("position") or 0),
            compare_rows=int(data.get("compareRows") or 0),
            compare_done=bool(data.get("compareDone")),
            compare_size=int(data.get("compareSize") or 0),
        )


@dataclass
class Verify:
    """One full verify of one destination, possibly spread over several runs."""

    fingerprint: str
    started_at: str
    buckets: int
    method: str
    phase: str = CHECKSUM
    modulus: int = 0  # the compare phase's buckets: ``buckets``, or ``buckets * refine`` after a refine
    refine: int = 0  # sub-buckets per differing bucket in the refine phase (0: no refine)
    coarse: array[int] = field(default_factory=lambda: array("I"))  # differing buckets the refine splits
    differing_buckets: int = 0
    refine_rows: int = 0  # rows (both sides) of the buckets the refine pass reads
    group_rows: list[int] = field(default_factory=list)  # rows (both sides) of each compare group
    sides: dict[str, SideProgress] = field(default_factory=dict)
    counts: dict[str, array[int]] = field(default_factory=dict)
    xors: dict[str, array[int]] = field(default_factory=dict)
    differing: array[int] = field(default_factory=lambda: array("I"))
    groups: list[int] = field(default_factory=list)  # start index (into differing) of each group
    group: int = 0
    pairs: dict[str, dict[Key, tuple[int, Pk]]] = field(default_factory=dict)
    found: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("missing", "different", "deleted", "extra"), 0)
    )
    recorded: int = 0
    runs: int = 0

    @classmethod
    def start(cls, fingerprint: str, started_at: str, buckets: int, method: str, chunk_size: int) -> Verify:
        verify = cls(fingerprint, started_at, buckets, method, modulus=buckets)
        for side in SIDES:
            verify.sides[side] = SideProgress(chunk_size=chunk_size)
            verify.counts[side] = array("I", bytes(4 * buckets))
            verify.xors[side] = array("Q", bytes(8 * buckets))
            verify.pairs[side] = {}
        return verify

    def state_json(self) -> dict[str, Any]:
        return {
            "formatVersion": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "startedAt": self.started_at,
            "buckets": self.buckets,
            "hash": self.method,
            "phase": self.phase,
            "modulus": self.modulus,
            "refine": self.refine,
            "sides": {n: s.to_json() for n, s in self.sides.items()},
            "differingBuckets": self.differing_buckets,
            "groups": self.groups,
            "groupRows": self.group_rows,
            "refineRows": self.refine_rows,
            "group": self.group,
            "found": self.found,
            "recorded": self.recorded,
            "runs": self.runs,
        }

    def blob(self) -> bytes:
        """The arrays (or partial compare results) as one compressed blob, streamed: no full-size copies."""
        packer = _Packer()
        if self.phase == REFINE:
            packer.section("coarse", [_little(self.coarse)])
        if self.phase in (CHECKSUM, REFINE):
            for side in SIDES:
                packer.section(f"counts.{side}", [_little(self.counts[side])])
                packer.section(f"xors.{side}", [_little(self.xors[side])])
        else:
            packer.section("differing", [_little(self.differing)])
            for side in SIDES:
                packer.section(f"pairs.{side}", _pack_pairs(self.pairs[side]))
        return packer.finish()

    @classmethod
    def restore(cls, state: dict[str, Any], blob: bytes | None) -> Verify:
        verify = cls.start(
            str(state["fingerprint"]), str(state["startedAt"]), int(state["buckets"]), str(state["hash"]), 0
        )
        verify.phase = str(state["phase"])
        verify.modulus = int(state.get("modulus") or verify.buckets)
        verify.refine = int(state.get("refine") or 0)
        verify.differing_buckets = int(state.get("differingBuckets") or 0)
        verify.sides = {n: SideProgress.from_json(state["sides"][n]) for n in SIDES}
        verify.groups = [int(g) for g in state.get("groups") or []]
        verify.group_rows = [int(g) for g in state.get("groupRows") or []]
        verify.refine_rows = int(state.get("refineRows") or 0)
        verify.group = int(state.get("group") or 0)
        verify.found.update({k: int(v) for k, v in (state.get("found") or {}).items()})
        verify.recorded = int(state.get("recorded") or 0)
        verify.runs = int(state.get("runs") or 0)
        sections = _unpack_sections(zlib.decompress(blob)) if blob else {}
        if verify.phase in (CHECKSUM, REFINE):
            size = verify.buckets
            if verify.phase == REFINE:
                verify.coarse = _from_little("I", sections["coarse"], None)
                size = len(verify.coarse) * verify.refine
            for side in SIDES:
                verify.counts[side] = _from_little("I", sections[f"counts.{side}"], size)
                verify.xors[side] = _from_little("Q", sections[f"xors.{side}"], size)
        else:
            verify.counts, verify.xors = {}, {}
            verify.differing = _from_little("I", sections["differing"], None)
            for side in SIDES:
                verify.pairs[side] = _unpack_pairs(sections.get(f"pairs.{side}", b""))
        return verify

    def progress(self) -> dict[str, Any]:
        """A small summary for the progress Variable."""
        return {
            "phase": self.phase,
            "verifyStartedAt": self.started_at,
            "buckets": self.buckets,
            "rows": {n: s.rows for n, s in self.sides.items()},
            "checksumDone": {n: s.done for n, s in self.sides.items()},
            "differingBuckets": self.differing_buckets if self.phase != CHECKSUM else None,
            "group": self.group,
            "groups": len(self.groups),
            "found": dict(self.found),
            "recorded": self.recorded,
            "runs": self.runs,
            "updatedAt": time.strftime("%Y-%m-%d %H:%M:%S"),
        }


def _encode_pk(pk: Pk | None) -> list[str] | None:
    return None if pk is None else [base64.b64encode(v).decode("ascii") for v in pk]


def _decode_pk(data: list[str] | None) -> Pk | None:
    return None if data is None else tuple(base64.b64decode(v) for v in data)


_BIG_ENDIAN = struct.pack("=H", 1) != struct.pack("<H", 1)


def _little(values: array[int]) -> bytes | memoryview:
    """The array's bytes in little-endian order (a view, without copying, on little-endian machines)."""
    if not _BIG_ENDIAN:
        return memoryview(values).cast("B")
    copy = array(values.typecode, values)
    copy.byteswap()
    return copy.tobytes()


class _Packer:
    """Named sections of bytes (``<len><name><len><data>`` each), compressed as they come."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(1)
        self._out: list[bytes] = []

    def section(self, name: str, parts: Iterable[bytes | memoryview]) -> None:
        chunks = list(parts)
        size = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
        self._out.append(self._compressor.compress(_frame(name.encode()) + struct.pack("<I", size)))
        for chunk in chunks:
            self._out.append(self._compressor.compress(chunk))

    def finish(self) -> bytes:
        self._out.append(self._compressor.flush())
        return b"".join(self._out)


def _from_little(typecode: str, data: bytes, length: int | None) -> array[int]:
    values = array(typecode)
    values.frombytes(data)
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        values.byteswap()
    if length is not None and len(values) != length:
        raise ValueError(f"checkpoint holds {len(values)} buckets, expected {length}")
    return values


def _frame(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _read_frames(data: bytes) -> list[bytes]:
    frames, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        frames.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return frames


def _unpack_sections(data: bytes) -> dict[str, bytes]:
    frames = _read_frames(data)
    return {frames[i].decode(): frames[i + 1] for i in range(0, len(frames), 2)}


def _pack_pairs(pairs: dict[Key, tuple[int, Pk]]) -> list[bytes]:
    """Compare results as frames, in slices of 10,000 pairs (so no slice is large)."""
    out, batch = [], []
    for key, (row_hash, pk) in pairs.items():
        batch.append(_frame(key) + struct.pack("<QB", row_hash, len(pk)) + b"".join(_frame(v) for v in pk))
        if len(batch) >= 10000:
            out.append(b"".join(batch))
            batch = []
    out.append(b"".join(batch))
    return out


def _unpack_pairs(data: bytes) -> dict[Key, tuple[int, Pk]]:
    pairs: dict[Key, tuple[int, Pk]] = {}
    offset = 0
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        key = data[offset + 4 : offset + 4 + size]
        offset += 4 + size
        row_hash, parts = struct.unpack_from("<QB", data, offset)
        offset += 9
        pk = []
        for _ in range(parts):
            (size,) = struct.unpack_from("<I", data, offset)
            pk.append(data[offset + 4 : offset + 4 + size])
            offset += 4 + size
        pairs[key] = (row_hash, tuple(pk))
    return pairs


# -- the checkpoint table --------------------------------------------------------------------------
class CheckpointStore(LazyConnection):
    """Reconcile checkpoints in the state database (table ``cupid_reconcile_checkpoint``).

    One row per config and destination: the verify's JSON state and its bucket
    arrays (or, in the compare phase, the differing buckets and partial
    results) as a compressed blob. A completed verify deletes its row.

    :param params: the state database (the delivery store's connection).
    """

    def __init__(self, params: ConnectionParams, table: str = CHECKPOINT_TABLE) -> None:
        if not params.database:
            raise ReconcileError(f"the state connection {params.describe()} names no database for {table}")
        super().__init__(params)
        self.table = quote_table(table)

    def ensure_schema(self) -> None:
        self._execute(CHECKPOINT_SCHEMA.format(table=self.table))

    def load(self, config: str, destination: str) -> tuple[dict[str, Any], bytes | None] | None:
        row = self._execute(
            f"SELECT state, buckets FROM {self.table} WHERE config = %s AND destination = %s", (config, destination)
        ).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), row[1]

    def save(self, config: str, destination: str, verify: Verify) -> None:
        self.save_snapshot(config, destination, verify.started_at, verify.state_json(), verify.blob())

    def save_snapshot(
        self, config: str, destination: str, started_at: str, state_json: dict[str, Any], blob: bytes
    ) -> None:
        state = json.dumps(state_json, separators=(",", ":"))
        self._execute(
            f"INSERT INTO {self.table} (config, destination, started_at, state, buckets, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, NOW(6)) ON DUPLICATE KEY UPDATE started_at = VALUES(started_at), "
            "state = VALUES(state), buckets = VALUES(buckets), updated_at = VALUES(updated_at)",
            (config, destination, started_at, state, blob),
        )

    def clear(self, config: str, destination: str) -> None:
        self._execute(f"DELETE FROM {self.table} WHERE config = %s AND destination = %s", (config, destination))

    def lock(self, config: str, destination: str) -> bool:
        """Take the named lock of this verify (one run at a time); False when another run holds it."""
        name = "cupid_reconcile:" + hashlib.sha1(f"{config}\0{destination}".encode()).hexdigest()[:40]
        row = self._execute("SELECT GET_LOCK(%s, 0)", (name,)).fetchone()
        return bool(row and row[0] is not None and int(row[0]) == 1)

    def unlock(self, config: str, destination: str) -> None:
        name = "cupid_reconcile:" + hashlib.sha1(f"{config}\0{destination}".encode()).hexdigest()[:40]
        with contextlib.suppress(Exception):
            self._execute("SELECT RELEASE_LOCK(%s)", (name,)).fetchall()


# -- one run --------------------------------------------------------------------------------------
@dataclass
class ReconcileOutcome:
    """What one reconcile run did for one destination."""

    phase: str = CHECKSUM
    complete: bool = False
    resumed: bool = False
    verify_started_at: str | None = None
    buckets: int | None = None
    differing_buckets: int | None = None
    refined: int = 0
    chunks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    rows_checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    rows_compared: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    null_keys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    found: dict[int, int] = field(default_factory=lambda: {MISSING: 0, DIFFERENT: 0, DELETED: 0})
    extra: int = 0
    recorded: int = 0
    changed: int = 0
    key_bytes_only: int = 0
    duplicate_keys: int = 0
    waited_second: float = 0.0
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "complete": self.complete,
            "resumed": self.resumed,
            "verifyStartedAt": self.verify_started_at,
            "buckets": self.buckets,
            "differingBuckets": self.differing_buckets,
            "refine": self.refined,
            "chunks": dict(self.chunks),
            "rowsChecked": dict(self.rows_checked),
            "rowsCompared": dict(self.rows_compared),
            "rows": dict(self.rows),
            "nullKeys": dict(self.null_keys),
            "missing": self.found[MISSING],
            "different": self.found[DIFFERENT],
            "deleted": self.found[DELETED],
            "extraNotRecorded": self.extra,
            "recorded": self.recorded,
            "changedWhileRead": self.changed,
            "keyBytesOnly": self.key_bytes_only,
            "duplicateKeys": self.duplicate_keys,
            "waitedSecond": round(self.waited_second, 3),
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


class _Budget:
    """What one destination's run may still do: time, chunk queries per side, and a stop signal."""

    def __init__(self, deadline: float, max_chunks: int | None, outcome: ReconcileOutcome) -> None:
        self.deadline = deadline
        self.max_chunks = max_chunks
        self.outcome = outcome
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def allows(self, side: str) -> bool:
        """Whether this side may run another chunk query; its first one always (every run makes progress)."""
        if self.stop.is_set():
            return False
        if self.outcome.chunks[side] == 0:
            return True
        over_budget = self.max_chunks is not None and self.outcome.chunks[side] >= self.max_chunks
        return time.monotonic() < self.deadline and not over_budget

    def in_time(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline


class ReconcileRun:
    """Verify a source table against each destination; record every mismatch for delivery.

    :param checkpoints: where verifies are checkpointed (default: ``cupid_reconcile_checkpoint`` in the
        delivery store's database).
    :param progress: where a small progress summary is mirrored per destination (Airflow Variables in
        production, so the UI shows it); None for none.
    :param restart: drop any checkpoint and start every verify over.
    :param key_columns: two or more source columns that match rows instead of ``by_column``
        (``reconcile.keyColumns``); each destination's names come from its ``columns`` mapping.
    """

    def __init__(
        self,
        *,
        config: str,
        source: ConnectionParams,
        table: str,
        id_column: str,
        by_column: str,
        destinations: dict[str, tuple[ConnectionParams, DestinationSpec]],
        settings: ReconcileSettings,
        store: DeliveryStore,
        checkpoints: CheckpointStore | None = None,
        progress: CursorStore | None = None,
        restart: bool = False,
        key_columns: Sequence[str] | None = None,
    ) -> None:
        if key_columns is not None and len(key_columns) < 2:
            raise ReconcileError("key_columns needs two or more columns (else use by_column)")
        self.key_columns = list(key_columns) if key_columns else None
        self.config = config
        self.source = source
        self.table = table
        self.id_column = id_column
        self.by_column = by_column
        self.destinations = destinations
        self.settings = settings
        self.store = store
        self.checkpoints = checkpoints or CheckpointStore(store.params)
        self.progress = progress
        self.restart = restart

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + self.settings.max_seconds_per_run
        outcomes: dict[str, ReconcileOutcome] = {}
        self.store.ensure_schema()
        self.checkpoints.ensure_schema()
        try:
            names = list(self.destinations)
            for n, name in enumerate(names):
                params, spec = self.destinations[name]
                outcome = outcomes[name] = ReconcileOutcome()
                # each destination gets a fair share of what is left of the run's time
                share = (deadline - time.monotonic()) / (len(names) - n)
                began = time.monotonic()
                try:
                    self._reconcile(name, params, spec, outcome, time.monotonic() + max(0.0, share))
                except Exception as err:  # one broken destination does not stop the others
                    outcome.error = describe_error(err, params, self.source)
                    log.error("reconcile of destination %s failed: %s", name, outcome.error)
                outcome.seconds = time.monotonic() - began
        finally:
            self.checkpoints.close()
        return {
            "config": self.config,
            "seconds": round(time.monotonic() - started, 3),
            "destinations": {n: o.as_dict() for n, o in outcomes.items()},
        }

    # -- one destination ----------------------------------------------------------------------
    def _reconcile(
        self, name: str, params: ConnectionParams, spec: DestinationSpec, outcome: ReconcileOutcome, deadline: float
    ) -> None:
        columns = list(spec.columns)
        source_keys = destination_keys = None
        if self.key_columns:
            source_keys = self.key_columns
            destination_keys = [_mapped_name(spec, c) for c in self.key_columns]
        source = TableSide(SOURCE, self.source, self.table, self.by_column, columns, source_keys)
        destination = TableSide(
            DESTINATION, params, spec.table, spec.by_column, [spec.columns[c] for c in columns], destination_keys
        )
        sides = {SOURCE: source, DESTINATION: destination}
        if not self.checkpoints.lock(self.config, name):
            raise ReconcileError("another reconcile run of this destination is in progress")
        try:
            for side in sides.values():
                side.prepare()
            verify = self._load(name, source, destination, outcome)
            verify.runs += 1
            budget = _Budget(deadline, self.settings.max_chunks_per_run, outcome)
            try:
                if verify.phase == CHECKSUM:
                    self._checksum_phase(name, verify, sides, budget)
                if verify.phase == REFINE:
                    self._refine_phase(name, verify, sides, budget)
                if verify.phase == COMPARE:
                    self._compare_phase(name, spec, verify, sides, budget)
            finally:
                self._finish(name, verify, outcome)
        finally:
            self.checkpoints.unlock(self.config, name)
            for side in sides.values():
                side.close()

    def _load(self, name: str, source: TableSide, destination: TableSide, outcome: ReconcileOutcome) -> Verify:
        method = HASH_CRC32C if source.has_crc32c and destination.has_crc32c else HASH_REVERSE
        shape = {
            "source": source.describe_shape(),
            "destination": destination.describe_shape(),
            "hash": method,
            "formatVersion": FORMAT_VERSION,
        }
        fingerprint = hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()
        stored = None if self.restart else self.checkpoints.load(self.config, name)
        if stored is not None:
            state, blob = stored
            if state.get("fingerprint") == fingerprint and state.get("formatVersion") == FORMAT_VERSION:
                try:
                    verify = Verify.restore(state, blob)
                except (KeyError, ValueError, TypeError, zlib.error, struct.error) as err:
                    log.warning("destination %s: unreadable reconcile checkpoint (%s); starting over", name, err)
                else:
                    outcome.resumed = True
                    log.info(
                        "destination %s: resuming the verify started %s (phase %s)",
                        name,
                        verify.started_at,
                        verify.phase,
                    )
                    return verify
            else:
                log.info("destination %s: tables, columns or keys changed since the checkpoint; starting over", name)
        settings = self.settings
        rows = max(source.estimated_rows, destination.estimated_rows)
        buckets = min(settings.max_buckets, max(settings.min_buckets, rows // max(1, settings.bucket_rows)))
        started_at = str(source.query("SELECT NOW(6)")[0][0].decode())
        log.info("destination %s: new verify, %d hash buckets, row hash %s", name, buckets, method)
        return Verify.start(fingerprint, started_at, buckets, method, settings.chunk_size)

    def _finish(self, name: str, verify: Verify, outcome: ReconcileOutcome) -> None:
        outcome.phase = verify.phase
        outcome.complete = verify.phase == DONE
        outcome.verify_started_at = verify.started_at
        outcome.buckets = verify.buckets
        outcome.differing_buckets = None if verify.phase == CHECKSUM else verify.differing_buckets
        outcome.refined = verify.refine
        for side, progress in verify.sides.items():
            outcome.rows[side] = progress.rows
            outcome.null_keys[side] = progress.null_keys
        try:
            if verify.phase == DONE:
                self.checkpoints.clear(self.config, name)
            else:
                self.checkpoints.save(self.config, name, verify)
        except Exception as err:  # the state database failing must not hide what was found
            log.error("destination %s: reconcile checkpoint not written: %s", name, err)
            if outcome.error is None:
                outcome.error = f"checkpoint not written: {type(err).__name__}: {err}"[:1000]
        self._mirror(name, {**verify.progress(), "complete": outcome.complete, "lastRun": outcome.as_dict()})

    def _save(self, name: str, verify: Verify, snapshot: tuple[dict[str, Any], bytes] | None = None) -> None:
        """Write the checkpoint while the run goes on; a failure only costs a longer redo after a crash."""
        try:
            state, blob = snapshot or (verify.state_json(), verify.blob())
            self.checkpoints.save_snapshot(self.config, name, verify.started_at, state, blob)
        except Exception as err:
            log.warning("destination %s: reconcile checkpoint not written (%s: %s)", name, type(err).__name__, err)

    def _mirror(self, name: str, summary: dict[str, Any]) -> None:
        if self.progress is None:
            return
        try:
            self.progress.save(name, summary)
        except Exception as err:  # progress is informative only
            log.warning("destination %s: reconcile progress not mirrored: %s", name, err)

    # -- phase 1: checksums of hash buckets ---------------------------------------------------
    def _checksum_phase(self, name: str, verify: Verify, sides: dict[str, TableSide], budget: _Budget) -> None:
        self._run_sides(
            name, verify, budget, {r: partial(self._checksum_side, verify, sides[r], budget) for r in SIDES}
        )
        if not all(verify.sides[r].done for r in SIDES):
            return
        differing, rows = _differing(verify.counts, verify.xors, range(verify.buckets))
        verify.differing_buckets = len(differing)
        log.info(
            "destination %s: checksums done (%d/%d rows), %d of %d buckets differ (%d rows)",
            name,
            verify.sides[SOURCE].rows,
            verify.sides[DESTINATION].rows,
            len(differing),
            verify.buckets,
            sum(rows),
        )
        if sum(rows) > self.settings.max_compare_rows and len(differing) > 1:
            # too many rows to compare in one pass: first split the differing buckets into sub-buckets
            # of about two rows each, by one more checksum pass over those buckets only
            refine = max(2, min(-(-sum(rows) // (2 * len(differing))), MAX_REFINED // len(differing)))
            verify.phase, verify.refine, verify.coarse = REFINE, refine, differing
            verify.refine_rows = sum(rows)
            size = len(differing) * refine
            verify.counts = {r: array("I", bytes(4 * size)) for r in SIDES}
            verify.xors = {r: array("Q", bytes(8 * size)) for r in SIDES}
            log.info("destination %s: refining %d differing buckets into %d each", name, len(differing), refine)
        else:
            self._plan_compare(verify, differing, rows)
        _reset_walks(verify)
        if verify.phase != DONE:
            self._save(name, verify)

    def _plan_compare(self, verify: Verify, differing: array[int], rows: list[int]) -> None:
        """Groups of differing buckets small enough to compare in memory; the compare phase (or done)."""
        groups, group_rows, total = [0], [], 0
        for n, size in enumerate(rows):
            if total and total + size > self.settings.max_compare_rows:
                groups.append(n)
                group_rows.append(total)
                total = 0
            total += size
        group_rows.append(total)
        verify.differing = differing
        verify.groups = groups if differing else []
        verify.group_rows = group_rows if differing else []
        verify.group = 0
        verify.phase = COMPARE if differing else DONE
        verify.counts, verify.xors = {}, {}

    # -- phase 1b: sub-buckets of the differing buckets, when they hold too many rows ----------
    def _refine_phase(self, name: str, verify: Verify, sides: dict[str, TableSide], budget: _Budget) -> None:
        within = (verify.buckets, ", ".join(str(b) for b in verify.coarse))
        self._run_sides(
            name, verify, budget, {r: partial(self._refine_side, verify, sides[r], within, budget) for r in SIDES}
        )
        if not all(verify.sides[r].compare_done for r in SIDES):
            return
        # sub-bucket n * refine + k of the refine arrays is bucket ``coarse[n] + k * buckets`` modulo buckets * refine
        refine, buckets = verify.refine, verify.buckets
        slots, rows = _differing(verify.counts, verify.xors, range(len(verify.coarse) * refine))
        fine = sorted(zip((verify.coarse[i // refine] + (i % refine) * buckets for i in slots), rows, strict=True))
        verify.modulus = buckets * refine
        self._plan_compare(verify, array("I", (b for b, _ in fine)), [n for _, n in fine])
        _reset_walks(verify)
        log.info(
            "destination %s: %d of %d sub-buckets differ (%d rows)",
            name,
            len(verify.differing),
            len(verify.coarse) * refine,
            sum(rows),
        )
        if verify.phase != DONE:
            self._save(name, verify)

    def _refine_side(self, verify: Verify, side: TableSide, within: tuple[int, str], budget: _Budget) -> None:
        counts, xors = verify.counts[side.role], verify.xors[side.role]
        rank = {b: n for n, b in enumerate(verify.coarse)}
        refine, buckets, modulus = verify.refine, verify.buckets, verify.buckets * verify.refine

        # a chunk adds up here first and joins the shared arrays at once: a checkpoint never holds half a chunk
        local_counts, local_xors = array("I", bytes(4 * len(counts))), array("Q", bytes(8 * len(counts)))
        touched = array("I")

        def chunk(low: Pk | None, high: Pk | None) -> None:
            for result in side.sub_checksums(low, high, modulus, verify.method, within):
                for bucket, count, xor in result:
                    b = int(bucket)
                    slot = rank[b % buckets] * refine + b // buckets
                    if not local_counts[slot]:
                        touched.append(slot)
                    local_counts[slot] += int(count)
                    local_xors[slot] ^= int(xor)
            with budget.lock:
                for slot in touched:
                    counts[slot] += local_counts[slot]
                    xors[slot] ^= local_xors[slot]
                    local_counts[slot] = local_xors[slot] = 0
            del touched[:]

        self._walk(verify, side, budget, chunk, verify.refine_rows)

    def _checksum_side(self, verify: Verify, side: TableSide, budget: _Budget) -> None:
        settings = self.settings
        progress = verify.sides[side.role]
        counts, xors = verify.counts[side.role], verify.xors[side.role]
        size = progress.chunk_size or settings.chunk_size
        while not progress.done and budget.allows(side.role):
            if not self._wait_for_load(side, budget):
                break
            began = time.monotonic()
            high = side.boundary(progress.last, size)
            result = side.checksum(progress.last, high, verify.buckets, verify.method)
            elapsed = max(time.monotonic() - began, 1e-3)
            rows = nulls = 0
            with budget.lock:
                for bucket, count, xor in result:
                    n = int(count)
                    rows += n
                    if bucket is None:
                        nulls += n
                        continue
                    b = int(bucket)
                    counts[b] += n
                    xors[b] ^= int(xor)
                progress.null_keys += nulls
                progress.rows += rows
                progress.chunks += 1
                progress.bounds.append((high, rows))
                progress.last = high
                progress.done = high is None
                budget.outcome.chunks[side.role] += 1
                budget.outcome.rows_checked[side.role] += rows
            if nulls:
                log.warning(
                    "%s table %s: %d row(s) with a NULL key cannot be compared", side.role, side.table_name, nulls
                )
            size = _adapt(size, rows, elapsed, settings)
            progress.chunk_size = size

    # -- phase 2: rows of the differing buckets -----------------------------------------------
    def _compare_phase(
        self, name: str, spec: DestinationSpec, verify: Verify, sides: dict[str, TableSide], budget: _Budget
    ) -> None:
        while verify.group < len(verify.groups):
            start = verify.groups[verify.group]
            end = verify.groups[verify.group + 1] if verify.group + 1 < len(verify.groups) else len(verify.differing)
            wanted = ", ".join(str(b) for b in verify.differing[start:end])
            self._run_sides(
                name, verify, budget, {r: partial(self._pairs_side, verify, sides[r], wanted, budget) for r in SIDES}
            )
            if not all(verify.sides[r].compare_done for r in SIDES):
                return
            found = self._judge(name, spec, verify, sides[SOURCE], sides[DESTINATION], budget.outcome)
            verify.recorded += found.pop("recorded")
            for kind, count in found.items():
                verify.found[kind] += count
            verify.group += 1
            _reset_walks(verify)
            if verify.group < len(verify.groups):
                self._save(name, verify)
        verify.phase = DONE
        log.info(
            "destination %s: verify complete: %d missing, %d different, %d deleted at source, %d extra not recorded",
            name,
            *(verify.found[k] for k in ("missing", "different", "deleted", "extra")),
        )

    def _pairs_side(self, verify: Verify, side: TableSide, wanted: str, budget: _Budget) -> None:
        pairs = verify.pairs[side.role]
        width = len(side.pk)
        parts = len(side.keys)

        def chunk(low: Pk | None, high: Pk | None) -> None:
            result = side.pairs(low, high, verify.modulus, verify.method, wanted)
            duplicates = 0
            with budget.lock:
                for row in result:
                    if side.composite:
                        key = composite_key(row[width : width + parts])
                        row_hash = row[width + parts]
                    else:
                        key, row_hash = row[width], row[width + 1]
                        if key is None:
                            continue
                    if key in pairs:
                        duplicates += 1
                    pairs[key] = (int(row_hash), tuple(row[:width]))
                budget.outcome.duplicate_keys += duplicates

        group_rows = verify.group_rows[verify.group] if verify.group < len(verify.group_rows) else 0
        self._walk(verify, side, budget, chunk, group_rows)

    def _walk(
        self,
        verify: Verify,
        side: TableSide,
        budget: _Budget,
        chunk: Callable[[Pk | None, Pk | None], None],
        wanted_rows: int,
    ) -> None:
        """Read this side again along its phase-1 chunks (merged up to the target time), last chunk first:
        the pages phase 1 read last may still be in the buffer pool. Of all rows (both sides),
        ``wanted_rows`` are returned: chunks stay small enough that one returns about ``RESULT_ROWS``."""
        settings = self.settings
        progress = verify.sides[side.role]
        target = progress.compare_size or max(settings.chunk_size, settings.min_chunk_size)
        total = sum(p.rows for p in verify.sides.values())
        limit = max(settings.min_chunk_size, RESULT_ROWS * total // wanted_rows) if wanted_rows else target
        bounds = progress.bounds or [(None, 0)]
        while not progress.compare_done and budget.allows(side.role):
            if not self._wait_for_load(side, budget):
                break
            last = len(bounds) - 1 - progress.position
            first, rows = last, bounds[last][1]
            while first > 0 and rows + bounds[first - 1][1] <= min(target, limit):
                first -= 1
                rows += bounds[first][1]
            began = time.monotonic()
            chunk(bounds[first - 1][0] if first > 0 else None, bounds[last][0])
            elapsed = max(time.monotonic() - began, 1e-3)
            with budget.lock:
                progress.position += last - first + 1
                progress.compare_rows += rows
                progress.compare_done = progress.position >= len(bounds)
                budget.outcome.chunks[side.role] += 1
                budget.outcome.rows_compared[side.role] += rows
            target = _adapt(target, max(rows, 1), elapsed, settings)
            progress.compare_size = target

    # -- both sides at once -------------------------------------------------------------------
    def _run_sides(self, name: str, verify: Verify, budget: _Budget, work: dict[str, Callable[[], None]]) -> None:
        """Run each side's work in its own thread; checkpoint every ``checkpoint_second`` meanwhile."""
        with ThreadPoolExecutor(len(work), thread_name_prefix="cupid-reconcile") as pool:
            futures = {pool.submit(job): role for role, job in work.items()}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=self.settings.checkpoint_second, return_when=FIRST_EXCEPTION)
                    for future in done:
                        if future.exception() is not None:
                            budget.stop.set()
                    if pending and not budget.stop.is_set():
                        with budget.lock:
                            state, blob = verify.state_json(), verify.blob()
                            summary = verify.progress()
                        self._save(name, verify, (state, blob))
                        self._mirror(name, summary)
            except BaseException:
                budget.stop.set()
                raise
        for future, role in futures.items():
            error = future.exception()
            if error is not None:
                raise ReconcileError(f"{role} side: {type(error).__name__}: {error}") from error

    def _wait_for_load(self, side: TableSide, budget: _Budget) -> bool:
        """Wait while this side's server is too busy; False when the run's time ran out meanwhile."""
        settings = self.settings
        if settings.max_threads_running is None and settings.max_replica_lag_second is None:
            return True
        while True:
            busy = []
            if settings.max_threads_running is not None:
                running = side.threads_running()
                if running is not None and running > settings.max_threads_running:
                    busy.append(f"Threads_running {running} > {settings.max_threads_running}")
            if settings.max_replica_lag_second is not None:
                lag = side.replica_lag()
                if lag is not None and lag > settings.max_replica_lag_second:
                    busy.append(f"replica lag {lag} s > {settings.max_replica_lag_second} s")
            if not busy:
                return True
            if not budget.in_time():
                return False
            log.info("reconcile waits for the %s server: %s", side.role, "; ".join(busy))
            budget.stop.wait(settings.wait_second)
            with budget.lock:
                budget.outcome.waited_second += settings.wait_second

    # -- phase 3: judge the candidates on what the tables hold now ------------------------------
    def _judge(
        self,
        name: str,
        spec: DestinationSpec,
        verify: Verify,
        source: TableSide,
        destination: TableSide,
        outcome: ReconcileOutcome,
    ) -> dict[str, int]:
        """Judge and record the candidates of one group; return what was found, by kind.

        Recording goes batch by batch; a group judged again after a crash records nothing twice
        (idempotency keys), and its counts join the verify's only once the whole group is done.
        """
        ours, theirs = verify.pairs[SOURCE], verify.pairs[DESTINATION]
        candidates = [k for k, (h, _) in ours.items() if k not in theirs or theirs[k][0] != h]
        extra = [k for k in theirs if k not in ours]
        batch = self.settings.fetch_batch
        now = str(source.query("SELECT NOW(6)")[0][0].decode())
        found = dict.fromkeys(("missing", "different", "deleted", "extra", "recorded"), 0)
        consumed: set[Key] = set()  # destination keys matched to a source key that differs in bytes only
        loose = _loose_composite if source.composite else loose_key
        for start in range(0, len(candidates), batch):
            keys = candidates[start : start + batch]
            by_pk = bool(source.pk)
            rows = source.whole_rows_by_pk([ours[k][1] for k in keys]) if by_pk else source.whole_rows_by_key(keys)
            if source.composite:
                current = {source.row_key(r): r for r in rows}
            else:
                key_name = _name_in(rows[0], self.by_column) if rows else self.by_column
                current = {r[key_name]: r for r in rows if r.get(key_name) is not None}
            matched = _match(keys, destination.mapped_by_key(keys), lambda k: destination.mapped_by_key([k]), loose)
            mismatches: list[Detection] = []
            for key in keys:
                row = current.get(key)
                if row is None:
                    outcome.changed += 1  # deleted or re-keyed since it was read: the next verify sees it
                    continue
                hit = matched.get(key)
                if hit is None:
                    mismatches.append(self._mismatch(name, spec, MISSING, key, row, None, now))
                    continue
                actual_key, actual = hit
                if actual_key != key:
                    consumed.add(actual_key)
                names = {c.lower(): c for c in row}
                differences = {
                    names[c.lower()]: (row[names[c.lower()]], actual[n])
                    for n, c in enumerate(source.columns)
                    if row[names[c.lower()]] != actual[n]
                }
                if not differences:
                    if actual_key != key:
                        outcome.key_bytes_only += 1  # equal but for the key's case, spaces or accents
                    else:
                        outcome.changed += 1  # equal now: repaired meanwhile
                    continue
                mismatches.append(self._mismatch(name, spec, DIFFERENT, key, row, differences, now))
            self._record(mismatches, found, outcome)
        extra = [k for k in extra if k not in consumed]
        for start in range(0, len(extra), batch):
            keys = extra[start : start + batch]
            present = _match(
                keys,
                dict.fromkeys(source.keys_present(keys), ()),
                lambda k: dict.fromkeys(source.keys_present([k]), ()),
                loose,
            )
            gone = [k for k in keys if k not in present]
            if not self.settings.detect_deletes:
                outcome.extra += len(gone)
                found["extra"] += len(gone)
                continue
            values = destination.mapped_by_key(gone)
            mapped = [destination.info[c.lower()].name for c in destination.columns]
            columns = mapped if destination.composite else [destination.key.name, *mapped]
            mismatches = []
            for key in gone:
                held = values.get(key)
                if held is None:
                    outcome.changed += 1  # deleted at the destination meanwhile
                    continue
                # a composite key's parts are mapped columns: the row holds them already
                row = dict(zip(columns, held if destination.composite else [key, *held], strict=True))
                mismatches.append(self._mismatch(name, spec, DELETED, key, row, None, now))
            self._record(mismatches, found, outcome)
        return found

    def _record(self, mismatches: list[Detection], found: dict[str, int], outcome: ReconcileOutcome) -> None:
        recorded = self.store.record(mismatches).new
        outcome.recorded += recorded
        found["recorded"] += recorded
        for mismatch in mismatches:
            found[KIND_NAMES[mismatch.type]] += 1
            outcome.found[mismatch.type] += 1

    def _mismatch(
        self,
        name: str,
        spec: DestinationSpec,
        kind: int,
        key: bytes,
        row: dict[str, bytes | None],
        differences: dict[str, tuple[bytes | None, bytes | None]] | None,
        detected_at: str,
    ) -> Detection:
        del spec, detected_at  # the body is built when it is sent, from the rows as they are then
        key_columns = tuple(self.key_columns or ())
        if kind == DELETED:
            return Detection(self.config, name, key, kind, None, None, key_columns, RECONCILE)
        id_name = _name_in(row, self.id_column)
        raw_id = row.get(id_name)
        source_id = int(raw_id) if raw_id is not None and raw_id.lstrip(b"-").isdigit() else None
        return Detection(self.config, name, key, kind, source_id, differences, key_columns, RECONCILE)


def _differing(
    counts: dict[str, array[int]], xors: dict[str, array[int]], slots: Iterable[int]
) -> tuple[array[int], list[int]]:
    """The slots whose (count, xor) differ between the sides, and the rows (both sides) each holds."""
    ours, theirs = counts[SOURCE], counts[DESTINATION]
    our_xors, their_xors = xors[SOURCE], xors[DESTINATION]
    differing = array("I", (b for b in slots if ours[b] != theirs[b] or our_xors[b] != their_xors[b]))
    return differing, [ours[b] + theirs[b] for b in differing]


def _reset_walks(verify: Verify) -> None:
    """Every side starts the next pass over its phase-1 chunks from the beginning, with no rows held."""
    for progress in verify.sides.values():
        progress.position, progress.compare_rows, progress.compare_done = 0, 0, False
    for role in SIDES:
        verify.pairs[role] = {}


def _adapt(size: int, rows: int, elapsed: float, settings: ReconcileSettings) -> int:
    """The next chunk size: what the last chunk's rate says fits the target time, growing at most 8x."""
    wanted = rows / elapsed * settings.target_chunk_second if rows else size * 8
    return int(min(settings.max_chunk_size, max(settings.min_chunk_size, min(wanted, size * 8))))


def _name_in(row: dict[str, Any], column: str) -> str:
    """The row's own spelling of a column name (names are case-insensitive)."""
    if column in row:
        return column
    lowered = column.lower()
    return next((n for n in row if n.lower() == lowered), column)


def _loose_composite(key: bytes) -> bytes:
    """:func:`loose_key` of each part of a composite key."""
    return composite_key([None if p is None else loose_key(p) for p in composite_parts(key)])


def _mapped_name(spec: DestinationSpec, column: str) -> str:
    """The destination's name of a source column, from the destination's ``columns`` mapping."""
    if column in spec.columns:
        return spec.columns[column]
    lowered = column.lower()
    for source_column, destination_column in spec.columns.items():
        if source_column.lower() == lowered:
            return destination_column
    raise ReconcileError(f"key column {column!r} is not mapped in the columns of destination {spec.name}")


def _match(
    keys: Iterable[Key],
    found: dict[Key, Values],
    lookup_one: Callable[[Key], dict[Key, Values]],
    normalize: Callable[[Key], Key] = loose_key,
) -> dict[Key, tuple[Key, Values]]:
    """Which row a table's collation matched to each key: byte-equal first, then a twin that differs only
    in case or trailing spaces (``normalize`` equal), then (for other collation twins, e.g. accents)
    one query per key."""
    keys = list(keys)
    matched: dict[Key, tuple[Key, Values]] = {}
    twins = {k: v for k, v in found.items() if k not in set(keys)}
    loose: dict[Key, Key] = {}
    for k in twins:
        loose.setdefault(normalize(k), k)
    unmatched = []
    for key in keys:
        if key in found:
            matched[key] = (key, found[key])
        elif (twin := loose.get(normalize(key))) is not None:
            matched[key] = (twin, twins[twin])
        else:
            unmatched.append(key)
    used = {k for k, _ in matched.values()}
    if unmatched and any(k not in used for k in twins):
        for key in unmatched[:1000]:
            for twin, values in lookup_one(key).items():
                matched[key] = (twin, values)
                break
    return matched
