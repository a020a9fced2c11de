"""Read the source: new rows by id, updated rows by their update column, in bounded keyset batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.sql import literal_int, quote_identifier, quote_table, split_table
from cupid_airflow.core.timeformat import epoch_scale, php_to_mysql_format

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

DATETIME_TYPES = {"datetime", "timestamp"}
INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal"}
STRING_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
DB_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class ScanError(RuntimeError):
    """The source cannot be scanned as configured (missing table or column, unsupported type)."""


@dataclass(frozen=True)
class SourceBatch:
    """Rows read from the source: ``ids[i]``, ``keys[i]`` and ``values[i]`` (the compared columns)."""

    ids: list[int]
    keys: list[bytes | None]
    values: list[tuple[bytes | None, ...]]
    positions: list[bytes | None]  # the update-time expression of each row (update scans only)


def parse_db_time(text: str) -> datetime:
    """Parse a ``DATETIME(6)`` string as stored in cursors."""
    return datetime.strptime(text if "." in text else text + ".000000", DB_TIME_FORMAT)


def format_db_time(value: datetime) -> str:
    return value.strftime(DB_TIME_FORMAT)


class UpdateColumn:
    """How to compare an update column, whatever its type, with DB times (``DATETIME(6)`` strings).

    ``expression`` is what is ordered and paged on; ``bound(param)`` turns a DB
    time parameter into that expression's terms.
    """

    def __init__(self, column: str, data_type: str, php_format: str | None) -> None:
        self.column = column
        self.data_type = data_type
        quoted = quote_identifier(column)
        self.expression = quoted
        scale = epoch_scale(php_format)
        if data_type in DATETIME_TYPES:
            self.kind = "datetime"
            self._bound = "CAST(%s AS DATETIME(6))"
        elif data_type in INTEGER_TYPES:
            self.kind = "epoch"
            scale = scale or 1
            self._bound = f"FLOOR(UNIX_TIMESTAMP(%s) * {int(scale)})"
        elif data_type in STRING_TYPES:
            if not php_format or scale:
                raise ScanError(
                    f"update column {column!r} is a {data_type} column: set src.updateTimeFormate to the "
                    "PHP date format it is written in (e.g. 'Y-m-d H:i:s')"
                )
            # '%' doubled: these queries always go through parameter formatting (see SourceReader._query)
            mysql_format = php_to_mysql_format(php_format).replace("'", "''").replace("%", "%%")
            self.kind = "string"
            if _sorts_as_text(php_format):
                self._bound = f"DATE_FORMAT(%s, '{mysql_format}')"
            else:
                self.expression = f"STR_TO_DATE({quoted}, '{mysql_format}')"
                self._bound = "CAST(%s AS DATETIME(6))"
        else:
            raise ScanError(
                f"update column {column!r} has type {data_type}, which cupid cannot read as a time "
                "(accepted: DATETIME, TIMESTAMP, integer epoch seconds/milliseconds, or text with updateTimeFormate)"
            )

    def bound(self) -> str:
        return self._bound


def _sorts_as_text(php_format: str) -> bool:
    """True when text written in this format sorts like the time it names (e.g. ``Y-m-d H:i:s``)."""
    significant = [ch for ch in php_format if ch.isalpha()]
    order = "YmdHisu"
    return significant == list(order[: len(significant)]) and len(significant) >= 3


class SourceReader:
    """Reads the source table through one raw-bytes connection.

    :param conn: a connection from :func:`cupid_airflow.core.sql.connect`.
    :param columns: the compared source columns, in order.
    """

    def __init__(
        self,
        conn: Any,
        *,
        table: str,
        id_column: str,
        by_column: str,
        columns: Sequence[str],
        database: str | None,
    ) -> None:
        self.conn = conn
        self.table_name = table
        self.table = quote_table(table)
        self.database, self.bare_table = split_table(table, database)
        self.id_column = id_column
        self.by_column = by_column
        self.columns = list(columns)
        self._id = quote_identifier(id_column)
        self._select = ", ".join([self._id, quote_identifier(by_column), *map(quote_identifier, columns)])

    def _query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        cursor.execute(sql, tuple(args or ()))  # always formatted, so a literal '%' is written '%%'
        return list(cursor.fetchall())

    def now(self) -> str:
        """The source server's current time as a DB time string."""
        return str(self._query("SELECT NOW(6)")[0][0].decode())

    def column_types(self) -> dict[str, str]:
        rows = self._query(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            + ("%s" if self.database else "DATABASE()")
            + " AND TABLE_NAME = %s",
            [self.database, self.bare_table] if self.database else [self.bare_table],
        )
        return {name.decode().lower(): data_type.decode().lower() for name, data_type in rows}

    def check(self, update_column: str | None) -> dict[str, str]:
        """Fail with a clear error when the table or a configured column does not exist."""
        types = self.column_types()
        if not types:
            raise ScanError(f"source table {self.table_name!r} does not exist or has no columns")
        wanted = [self.id_column, self.by_column, *self.columns]
        if update_column:
            wanted.append(update_column)
        missing = [c for c in dict.fromkeys(wanted) if c.lower() not in types]
        if missing:
            raise ScanError(f"source table {self.table_name!r} has no column(s) {', '.join(missing)}")
        return types

    def newest_id(self) -> int | None:
        value = self._query(f"SELECT MAX({self._id}) FROM {self.table}")[0][0]
        return None if value is None else int(value)

    def newest_update(self, update: UpdateColumn) -> str | None:
        value = self._query(f"SELECT MAX({update.expression}) FROM {self.table}")[0][0]
        return None if value is None else value.decode("utf-8", "replace")

    def id_batches(self, start_id: int, batch_size: int) -> Iterator[SourceBatch]:
        """Rows with id >= start_id, in id order, ``batch_size`` at a time, forever until exhausted."""
        next_id = start_id
        while True:
            rows = self._query(
                f"SELECT {self._select} FROM {self.table} WHERE {self._id} >= {literal_int(next_id)} "
                f"ORDER BY {self._id} LIMIT {literal_int(batch_size)}"
            )
            if not rows:
                return
            yield self._batch(rows, None)
            next_id = int(rows[-1][0]) + 1
            if len(rows) < batch_size:
                return

    def update_batches(
        self, update: UpdateColumn, low: str, high: str, position: tuple[str, int] | None, batch_size: int
    ) -> Iterator[SourceBatch]:
        """Rows whose update time lies in [low, high], in (time, id) order, after ``position``."""
        expression, bound = update.expression, update.bound()
        while True:
            where = f"{expression} >= {bound} AND {expression} <= {bound}"
            args: list[Any] = [low, high]
            if position is not None:
                where += f" AND ({expression} > %s OR ({expression} = %s AND {self._id} > {literal_int(position[1])}))"
                args += [position[0], position[0]]
            rows = self._query(
                f"SELECT {self._select}, {expression} FROM {self.table} WHERE {where} "
                f"ORDER BY {expression}, {self._id} LIMIT {literal_int(batch_size)}",
                args,
            )
            if not rows:
                return
            batch = self._batch([r[:-1] for r in rows], [r[-1] for r in rows])
            yield batch
            last = rows[-1]
            position = (last[-1].decode(), int(last[0]))
            if len(rows) < batch_size:
                return

    def full_rows(self, ids: Sequence[int]) -> dict[int, dict[str, bytes | None]]:
        """Whole source rows by id (only for mismatched rows)."""
        if not ids:
            return {}
        cursor = self.conn.cursor()
        cursor.execute(f"SELECT * FROM {self.table} WHERE {self._id} IN ({', '.join(literal_int(i) for i in ids)})")
        names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
        id_index = [n.lower() for n in names].index(self.id_column.lower())
        return {int(row[id_index]): dict(zip(names, row, strict=False)) for row in cursor.fetchall()}

    def _batch(self, rows: list[tuple[Any, ...]], positions: list[bytes | None] | None) -> SourceBatch:
        columns = list(zip(*rows, strict=True))  # transposed in C: much faster than a loop per row
        return SourceBatch(
            ids=list(map(int, columns[0])),
            keys=list(columns[1]),
            values=list(zip(*columns[2:], strict=True)),
            positions=positions or [],
        )


def window_low(cursor_time: str | None, now: str, overlap_second: int) -> str:
    """Start of the update window: the stored cursor (or now) minus the overlap."""
    base = parse_db_time(cursor_time) if cursor_time else parse_db_time(now)
    return format_db_time(base - timedelta(seconds=overlap_second))
