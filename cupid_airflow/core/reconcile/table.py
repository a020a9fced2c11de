"""One side of a reconcile: a table read through its own connection, and every SQL statement run on it."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.reconcile.keys import Column, composite_key, composite_parts, numeric_literal
from cupid_airflow.core.sql import (
    ConnectionParams,
    LazyConnection,
    literal_int,
    quote_identifier,
    quote_table,
    split_table,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Sequence

    from cupid_airflow.core.reconcile.keys import Key, Pk, Values

log = logging.getLogger(__name__)

HASH_CRC32C = "crc32*crc32c"
HASH_REVERSE = "crc32*crc32(reverse)"
KEY_TUPLES = 500  # composite keys per re-read query (an OR of ANDs)


class ReconcileError(RuntimeError):
    """A table cannot be reconciled as configured."""


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
        id_column: str | None = None,
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
        self.id_column = id_column  # the source's id column (``src.idColumn``), read for ``source_id``

    def reader(self) -> TableSide:
        """The same prepared side on a connection of its own (a streamed result holds its connection)."""
        other = TableSide(
            self.role, self.params, self.table_name, self.key_name, self.columns, self.key_parts, self.id_column
        )
        other.key_parts, other.composite = self.key_parts, self.composite
        other.keys, other.info, other.pk, other.pk_index = self.keys, self.info, self.pk, self.pk_index
        other.estimated_rows, other.has_crc32c = self.estimated_rows, self.has_crc32c
        return other

    # -- running statements -------------------------------------------------------------------
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one fully rendered statement (no parameters, so a literal ``%`` stays as it is)."""
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
        except Exception:
            self.close()
            raise
        return list(cursor.fetchall())

    def query_dicts(self, sql: str) -> list[dict[str, bytes | None]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
        except Exception:
            self.close()
            raise
        names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def stream(self, sql: str, batch: int = 10000) -> Generator[list[tuple[Any, ...]], None, None]:
        """Run one statement and yield its rows in batches, unbuffered. Stopping early drops the connection
        (reading the rest to the end could take as long as the whole statement)."""
        import MySQLdb.cursors

        cursor = self.conn.cursor(MySQLdb.cursors.SSCursor)
        finished = False
        try:
            cursor.execute(sql)
            while rows := cursor.fetchmany(batch):
                yield list(rows)
            finished = True
        finally:
            if finished:
                with contextlib.suppress(Exception):
                    cursor.close()
            else:
                self.close()

    def connection_id(self) -> int:
        return int(self.query("SELECT CONNECTION_ID()")[0][0])

    def kill_query(self, connection_id: int) -> None:
        """Stop a statement another connection of this side runs (a stream given up before its end)."""
        with contextlib.suppress(Exception):
            self.query(f"KILL QUERY {literal_int(connection_id)}")

    # -- schema -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Read the table's columns, clustered key, size estimate and whether the server has ``CRC32C``."""
        database, table = split_table(self.table_name, self.params.database)
        where = f"TABLE_SCHEMA = {self.text_literal(database) if database else 'DATABASE()'} AND TABLE_NAME = "
        where += self.text_literal(table)
        rows = self.query(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, IS_NULLABLE "
            f"FROM information_schema.COLUMNS WHERE {where} ORDER BY ORDINAL_POSITION"
        )
        self.info = {
            r[0].decode().lower(): Column(
                r[0].decode(),
                r[1].decode().lower(),
                r[2].decode().lower(),
                _text(r[3]),
                _text(r[4]),
                r[5].decode().upper() == "YES",
            )
            for r in rows
        }
        if not self.info:
            raise ReconcileError(f"{self.role} table {self.table_name!r} does not exist at {self.params.describe()}")
        named = [self.key_name, *self.key_parts, *self.columns]
        absent = [c for c in dict.fromkeys(named) if c.lower() not in self.info]
        if absent:
            raise ReconcileError(f"{self.role} table {self.table_name!r} has no column(s) {', '.join(absent)}")
        if self.id_column is not None and self.id_column.lower() not in self.info:
            self.id_column = None
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

    def shape(self) -> dict[str, Any]:
        """What a checkpoint depends on: the table, its key, compared and clustered columns with their types,
        character sets and collations. A changed shape starts the verify over."""
        return {
            "table": self.table_name,
            "where": self.params.describe(),
            "key": [c.shape() for c in self.keys],
            "columns": [self.info[c.lower()].shape() for c in self.columns],
            "pk": [c.shape() for c in self.pk],
        }

    def column(self, name: str) -> Column:
        return self.info[name.lower()]

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
        """The hash bucket of a row's key (NULL for a NULL single-column key)."""
        if self.composite:
            text = f"CONCAT_WS('|', {', '.join(self._framed(c) for c in self.keys)})"
            return f"MOD(CRC32({text}), {literal_int(buckets)})"
        return f"MOD(CRC32({self._value(self.keys[0])}), {literal_int(buckets)})"

    def row_hash_sql(self, method: str) -> str:
        names = [*self.key_parts, *self.columns] if self.composite else [self.key_name, *self.columns]
        parts = [self._framed(self.column(name)) for name in names]
        text = f"CONCAT_WS('|', {', '.join(parts)})"
        if method == HASH_CRC32C:
            return f"(CRC32({text}) * CRC32C({text}))"
        return f"(CRC32({text}) * CRC32(REVERSE(CAST({text} AS BINARY))))"

    def literal(self, column: Column, value: bytes) -> str | None:
        """A value, as a literal this column compares with exactly; None when the column cannot hold it
        (an integer column and ``'x-1'``): no row of this table can match it."""
        rendered = numeric_literal(column, value)
        return self.text_literal(value) if rendered == "" else rendered

    def text_literal(self, value: bytes | str) -> str:
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

    def _key_list(self) -> str:
        return ", ".join(quote_identifier(c.name) for c in self.keys)

    def _compare_pk(self, op: str, values: Pk) -> str:
        """``pk > values`` or ``pk <= values`` for a (composite) key, as ranges the optimizer can use."""
        columns = [quote_identifier(c.name) for c in self.pk]
        literals = [self.literal(c, v) or "NULL" for c, v in zip(self.pk, values, strict=True)]
        if len(columns) == 1:
            return f"{columns[0]} {op} {literals[0]}"
        strict = ">" if op == ">" else "<"
        terms = []
        for n in range(len(columns)):
            equal = [f"{columns[i]} = {literals[i]}" for i in range(n)]
            last = op if n == len(columns) - 1 else strict
            terms.append("(" + " AND ".join([*equal, f"{columns[n]} {last} {literals[n]}"]) + ")")
        return "(" + " OR ".join(terms) + ")"

    def _range_where(self, low: Pk | None, high: Pk | None) -> str:
        """``WHERE low < pk <= high`` (either end open when None)."""
        clauses = []
        if low is not None:
            clauses.append(self._compare_pk(">", low))
        if high is not None:
            clauses.append(self._compare_pk("<=", high))
        return (" WHERE " + " AND ".join(clauses)) if clauses else ""

    # -- the checksum pass --------------------------------------------------------------------
    def boundary(self, low: Pk | None, size: int) -> Pk | None:
        """The primary key ``size`` rows after ``low``, or None when fewer rows are left (or no key)."""
        if not self.pk:
            return None
        rows = self.query(
            f"SELECT {self._pk_list()} FROM {self.table}{self._index_hint()}{self._range_where(low, None)} "
            f"ORDER BY {self._pk_list()} LIMIT 1 OFFSET {literal_int(max(0, size - 1))}"
        )
        return tuple(rows[0]) if rows else None

    def checksum(self, low: Pk | None, high: Pk | None, buckets: int, method: str) -> list[tuple[Any, ...]]:
        """``(bucket, rows, xor of row hashes)`` of each bucket met in the chunk ``low < pk <= high``."""
        return self.query(
            f"SELECT {self.bucket_sql(buckets)}, COUNT(*), BIT_XOR({self.row_hash_sql(method)}) "
            f"FROM {self.table}{self._index_hint()}{self._range_where(low, high)} GROUP BY 1 ORDER BY NULL"
        )

    # -- the ordered pass ---------------------------------------------------------------------
    def fold_sql(self, theirs: Sequence[Column] | None) -> str:
        """The key as the destination's collation sees it: the weight string of each part under the
        destination column's collation (trailing spaces dropped where it pads), so keys it pairs fold alike.
        ``theirs`` are the destination's key columns; None: the key's text itself (no collation folding)."""
        if theirs is None:
            if not self.composite:
                return f"CAST({self._value(self.keys[0])} AS BINARY)"
            return f"CAST(CONCAT_WS('|', {', '.join(self._framed(c) for c in self.keys)}) AS BINARY)"
        parts = [self._fold_part(ours, other) for ours, other in zip(self.keys, theirs, strict=True)]
        if len(parts) == 1:
            return parts[0]
        framed = [
            f"IF({quote_identifier(c.name)} IS NULL, 'N', CONCAT(LENGTH({p}), ':', {p}))"
            for c, p in zip(self.keys, parts, strict=True)
        ]
        return f"CONCAT_WS('|', {', '.join(framed)})"

    def _fold_part(self, ours: Column, theirs: Column) -> str:
        name = quote_identifier(ours.name)
        if theirs.collation is None or theirs.charset in (None, "binary"):
            return f"CAST({self._value(ours)} AS BINARY)"  # numbers, dates, bytes: as rendered
        text = name if ours.charset else f"CAST({name} AS CHAR)"
        converted = f"CONVERT({text} USING {theirs.charset})"
        if pads(theirs.collation):
            converted = f"RTRIM({converted})"
        return f"WEIGHT_STRING({converted} COLLATE {theirs.collation})"

    def fold_probe(self, theirs: Column, probes: Sequence[str]) -> list[bytes | None] | None:
        """The folds of ``probes`` (text) on this server under ``theirs``' collation; None when it cannot."""
        if theirs.collation is None or theirs.charset in (None, "binary"):
            return None
        folds = []
        for probe in probes:
            converted = f"CONVERT({self.text_literal(probe)} USING {theirs.charset})"
            if pads(theirs.collation):
                converted = f"RTRIM({converted})"
            try:
                folds.append(self.query(f"SELECT WEIGHT_STRING({converted} COLLATE {theirs.collation})")[0][0])
            except Exception:  # this server does not know that collation
                return None
        return folds

    def ordered_sql(self, buckets: int, fold: str, where: str, with_bucket: bool) -> str:
        """``(fold, key part..., compared value...[, id][, bucket])`` of the rows ``where`` picks (conditions on
        ``{b}``, the checksum bucket, ``{f}``, the fold, and ``{g}``, ``CRC32`` of the fold), sorted by fold:
        both tables' results merge in one pass with little memory."""
        bucket = self.bucket_sql(buckets)
        select = [f"{fold} AS f", self._key_list()]
        select += [quote_identifier(self.column(c).name) for c in self.columns]
        if self.id_column is not None:
            select.append(quote_identifier(self.column(self.id_column).name))
        if with_bucket:
            select.append(bucket)
        condition = where.replace("{b}", bucket).replace("{g}", f"CRC32({fold})").replace("{f}", fold)
        return f"SELECT {', '.join(select)} FROM {self.table} WHERE {condition} ORDER BY f"

    def prepare_sort(self) -> None:
        """Let the server sort the (small) selected values themselves, not row ids it must read again, and by
        whole folds (the merge checks that rows come in fold order)."""
        for setting in ("max_length_for_sort_data = 65536", "max_sort_length = 8192"):
            with contextlib.suppress(Exception):
                self.query(f"SET SESSION {setting}")

    # -- lookups of the judge ------------------------------------------------------------------
    def rows_by_key(self, keys: Sequence[Key]) -> list[dict[str, bytes | None]]:
        """Whole rows (``SELECT *``) this table's collation matches to ``keys``."""
        return [
            row
            for where in self._keys_in(keys)
            for row in self.query_dicts(f"SELECT * FROM {self.table} WHERE {where}")
        ]

    def rows_by_id(self, ids: Sequence[int]) -> list[dict[str, bytes | None]] | None:
        """Whole rows by id, when the id column is the clustered key (one lookup a row); else None."""
        if self.id_column is None or len(self.pk) != 1 or self.pk[0].name.lower() != self.id_column.lower():
            return None
        if not ids:
            return []
        listed = ", ".join(str(int(i)) for i in sorted(ids))
        return self.query_dicts(f"SELECT * FROM {self.table} WHERE {quote_identifier(self.pk[0].name)} IN ({listed})")

    def row_key(self, row: dict[str, bytes | None]) -> Key | None:
        """The match key of a whole row read by ``SELECT *`` (None for a NULL single key)."""
        if self.composite:
            return composite_key([row.get(name_in(row, c.name)) for c in self.keys])
        return row.get(name_in(row, self.keys[0].name))

    def values(self, row: dict[str, bytes | None]) -> Values:
        """The compared values of a whole row, in this side's compared-column order."""
        return tuple(row.get(name_in(row, c)) for c in self.columns)

    def mapped_rows(self, keys: Sequence[Key]) -> list[tuple[Key, Values, bytes | None]]:
        """``(key, compared values, id)`` of every row this table's collation matches to ``keys`` (twins and
        duplicates included), values in this side's compared-column order; the id is None without an id
        column."""
        columns = [quote_identifier(self.column(c).name) for c in self.columns]
        if self.id_column is not None:
            columns.append(quote_identifier(self.column(self.id_column).name))
        width, count = len(self.keys), len(self.columns)
        out: list[tuple[Key, Values, bytes | None]] = []
        for where in self._keys_in(keys):
            for row in self.query(f"SELECT {self._key_list()}, {', '.join(columns)} FROM {self.table} WHERE {where}"):
                key = composite_key(row[:width]) if self.composite else row[0]
                if key is not None:
                    ident = row[width + count] if self.id_column is not None else None
                    out.append((key, tuple(row[width : width + count]), ident))
        return out

    def _keys_in(self, keys: Sequence[Key]) -> Iterator[str]:
        """``WHERE`` conditions matching ``keys``; keys this table's key cannot hold are left out."""
        if not self.composite:
            column = self.keys[0]
            literals = [lit for lit in (self.literal(column, k) for k in keys) if lit is not None]
            if literals:
                yield f"{quote_identifier(column.name)} IN ({', '.join(literals)})"
            return
        # composite keys: an OR of ANDs, KEY_TUPLES a query (IS NULL for a NULL part, which a row constructor
        # IN list could never match)
        terms = []
        for key in keys:
            parts = composite_parts(key)
            if len(parts) != len(self.keys):
                raise ReconcileError(f"composite key {key!r} has {len(parts)} parts, not {len(self.keys)}")
            term = []
            for column, value in zip(self.keys, parts, strict=True):
                rendered = None if value is None else self.literal(column, value)
                if value is not None and rendered is None:
                    break
                name = quote_identifier(column.name)
                term.append(f"{name} IS NULL" if value is None else f"{name} = {rendered}")
            else:
                terms.append("(" + " AND ".join(term) + ")")
            if len(terms) >= KEY_TUPLES:
                yield "(" + " OR ".join(terms) + ")"
                terms = []
        if terms:
            yield "(" + " OR ".join(terms) + ")"

    # -- load ---------------------------------------------------------------------------------
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


def pads(collation: str) -> bool:
    """Whether a collation compares as if shorter strings were padded with spaces (PAD SPACE)."""
    lowered = collation.lower()
    return "nopad" not in lowered and "_0900_" not in lowered


def name_in(row: dict[str, Any], column: str) -> str:
    """The row's own spelling of a column name (names are case-insensitive)."""
    if column in row:
        return column
    lowered = column.lower()
    return next((n for n in row if n.lower() == lowered), column)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
