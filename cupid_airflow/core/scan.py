"""Read the source: new rows by id, id gaps again, updated rows by their update column, in bounded keyset batches."""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.sql import literal_int, quote_identifier, quote_table, split_table
from cupid_airflow.core.timeformat import digits_format, epoch_scale, php_to_mysql_format, sorts_as_text

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

DATETIME_TYPES = {"datetime"}
TIMESTAMP_TYPES = {"timestamp"}
INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal"}
STRING_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
ID_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32, "bigint": 64}
DB_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
HOUR = timedelta(hours=1)
RANGES_PER_QUERY = 500


class ScanError(RuntimeError):
    """The source cannot be scanned as configured (missing table or column, unsupported type)."""


@dataclass(frozen=True)
class SourceBatch:
    """Rows read from the source: ``ids[i]``, ``keys[i]`` and ``values[i]`` (the compared columns)."""

    ids: list[int]
    keys: list[bytes | None]
    values: list[tuple[bytes | None, ...]]
    positions: list[bytes | None]  # the update-time expression of each row (update scans only)
    seen_at: float | None = None  # source clock (UTC epoch) taken after the read (new-row scans only)


@dataclass(frozen=True)
class SourceClock:
    """The source server's clock at one moment: ``local`` (``NOW(6)``), ``utc`` and the session's time zone."""

    local: str
    utc: str
    time_zone: str

    @property
    def epoch(self) -> float:
        return utc_epoch(self.utc)


@dataclass(frozen=True)
class IdColumn:
    """The id column as the contract requires it: an integer with a unique index, and its value range."""

    name: str
    column_type: str
    lowest: int
    highest: int


def parse_db_time(text: str) -> datetime:
    """Parse a ``DATETIME(6)`` string as stored in cursors."""
    return datetime.strptime(text if "." in text else text + ".000000", DB_TIME_FORMAT)


def format_db_time(value: datetime) -> str:
    return value.strftime(DB_TIME_FORMAT)


def utc_epoch(text: str) -> float:
    """Seconds since the epoch of a UTC DB time string."""
    value = parse_db_time(text)
    return calendar.timegm(value.timetuple()) + value.microsecond / 1_000_000


def _epoch_micros(text: str) -> int:
    value = parse_db_time(text)
    return calendar.timegm(value.timetuple()) * 1_000_000 + value.microsecond


class UpdateColumn:
    """How to page an update column, whatever its type, by windows of UTC source time.

    ``expression`` (the bare column, so its index is used) is what is ordered and paged on;
    ``bound()`` is the SQL term a window bound parameter becomes (see
    :meth:`SourceReader.window_bounds`, which turns UTC times into those parameters).

    :param zone: the time zone the application writes wall-clock values in (DATETIME, text and
        digit columns; ``src.updateTimeZone``); ``None`` is the source session's zone.
    """

    def __init__(
        self, column: str, data_type: str, php_format: str | None, zone: str | None = None, table: str = "src"
    ) -> None:
        self.column = column
        self.data_type = data_type
        self.expression = quote_identifier(column)
        self.zone = zone
        scale = epoch_scale(php_format)
        self.scale = 1
        if data_type in DATETIME_TYPES:
            self.kind = "datetime"
            self._bound = "CAST(%s AS DATETIME(6))"
        elif data_type in TIMESTAMP_TYPES:
            self.kind = "timestamp"  # compared in the session's zone, whatever updateTimeZone says
            self._bound = "CAST(%s AS DATETIME(6))"
            if zone:
                log.warning("updateTimeZone %r is ignored: TIMESTAMP column %r holds absolute times", zone, column)
            self.zone = None
        elif data_type in INTEGER_TYPES:
            if php_format and not scale:
                if not digits_format(php_format):
                    raise ScanError(
                        f"update column {column!r} is a {data_type} column, and updateTimeFormate {php_format!r} is "
                        "not a format an integer can hold in time order: use U (epoch seconds), Uv (milliseconds), "
                        "Uu (microseconds), or digits only in Y m d H i s order (e.g. YmdHis for 20240506070809)"
                    )
                self.kind = "digits"
                mysql_format = php_to_mysql_format(php_format).replace("%", "%%")
                self._bound = f"CAST(DATE_FORMAT(CAST(%s AS DATETIME(6)), '{mysql_format}') AS UNSIGNED)"
            else:
                self.kind = "epoch"
                self.scale = scale or 1
                self._bound = "%s"
        elif data_type in STRING_TYPES:
            if not php_format or scale:
                raise ScanError(
                    f"update column {column!r} is a {data_type} column: set src.updateTimeFormate to the "
                    "PHP date format it is written in (e.g. 'Y-m-d H:i:s')"
                )
            mysql_format = php_to_mysql_format(php_format).replace("'", "''")
            if not sorts_as_text(php_format):
                raise ScanError(
                    f"update column {column!r} holds text in format {php_format!r}, which does not sort in time "
                    "order: finding recent updates would read the whole table on every run. Add an indexed "
                    f"generated column and watch it instead: ALTER TABLE {quote_table(table)} ADD COLUMN "
                    f"{quote_identifier(column + '_at')} DATETIME(6) AS (STR_TO_DATE({quote_identifier(column)}, "
                    f"'{mysql_format}')) STORED, ADD INDEX ({quote_identifier(column + '_at')}); then set "
                    f"src.updateColumn to {column + '_at'!r} and remove updateTimeFormate"
                )
            self.kind = "text"
            # '%' doubled: these queries always go through parameter formatting (see SourceReader._query)
            self._bound = f"DATE_FORMAT(CAST(%s AS DATETIME(6)), '{mysql_format.replace('%', '%%')}')"
        else:
            raise ScanError(
                f"update column {column!r} has type {data_type}, which cupid cannot read as a time "
                "(accepted: DATETIME, TIMESTAMP, integer epoch seconds/milliseconds or digits like YmdHis, "
                "or text with updateTimeFormate)"
            )
        if self.kind == "epoch" and zone:
            log.warning("updateTimeZone %r is ignored: epoch column %r holds absolute times", zone, column)
            self.zone = None

    def bound(self) -> str:
        return self._bound

    def position_param(self, text: str) -> Any:
        """A paging position (the expression's value as read) as a query parameter."""
        return int(text) if self.kind in ("epoch", "digits") and text.lstrip("-").isdigit() else text


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

    def _schema_query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """An information_schema query on this table (``{where}`` becomes its schema and table condition)."""
        where = ("TABLE_SCHEMA = %s" if self.database else "TABLE_SCHEMA = DATABASE()") + " AND TABLE_NAME = %s"
        names = [self.database, self.bare_table] if self.database else [self.bare_table]
        return self._query(sql.format(where=where), [*names, *args])

    def now(self) -> str:
        """The source server's current time as a DB time string."""
        return self.clock().local

    def clock(self) -> SourceClock:
        """The source server's clock: local time, UTC time and the session's time zone."""
        local, utc, zone = self._query("SELECT NOW(6), UTC_TIMESTAMP(6), @@session.time_zone")[0]
        return SourceClock(local.decode(), utc.decode(), zone.decode())

    def _utc_epoch(self) -> float:
        return utc_epoch(self._query("SELECT UTC_TIMESTAMP(6)")[0][0].decode())

    def column_types(self) -> dict[str, str]:
        rows = self._schema_query("SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE {where}")
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

    def id_contract(self) -> IdColumn:
        """The id column, checked: an integer (any size, signed or unsigned), NOT NULL, with a unique index of its own.

        New rows are paged by ``id > last id seen``: a non-integer column would page in another
        order than it sorts, ties in a non-unique one would be skipped at batch edges, and NULL
        ids would never be read. Raises :class:`ScanError` naming the column and the fix.
        """
        name = self.id_column
        about = f"src.idColumn {name!r} of table {self.table_name!r}"
        rows = self._schema_query(
            "SELECT DATA_TYPE, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
            "WHERE {where} AND LOWER(COLUMN_NAME) = LOWER(%s)",
            [name],
        )
        if not rows:
            raise ScanError(f"{about} does not exist")
        data_type, column_type, nullable = (v.decode().lower() for v in rows[0])
        if data_type not in ID_BITS:
            raise ScanError(
                f"{about} is {column_type}: new rows are paged by id, so it must be an integer column "
                "(TINYINT to BIGINT, signed or unsigned) with a unique index (PRIMARY KEY, or UNIQUE on it alone); "
                "set src.idColumn to such a column, e.g. the AUTO_INCREMENT primary key"
            )
        if nullable == "yes":
            raise ScanError(
                f"{about} allows NULL: rows with a NULL id would never be compared; make it NOT NULL "
                "or set src.idColumn to the primary key"
            )
        unique = self._schema_query(
            "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE {where} AND NON_UNIQUE = 0 "
            "GROUP BY INDEX_NAME HAVING COUNT(*) = 1 AND SUM(LOWER(COLUMN_NAME) = LOWER(%s)) = 1",
            [name],
        )
        if not unique:
            raise ScanError(
                f"{about} has no unique index of its own: rows sharing an id would be skipped where a batch "
                f"ends; add one (ALTER TABLE {self.table} ADD UNIQUE KEY ({quote_identifier(name)})) or set "
                "src.idColumn to the primary key"
            )
        bits = ID_BITS[data_type]
        if "unsigned" in column_type:
            return IdColumn(name, column_type, 0, (1 << bits) - 1)
        return IdColumn(name, column_type, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)

    def indexed_first(self, column: str) -> bool:
        """Whether some index starts with ``column`` (so a range on it does not read the whole table)."""
        rows = self._schema_query(
            "SELECT 1 FROM information_schema.STATISTICS WHERE {where} AND SEQ_IN_INDEX = 1 "
            "AND LOWER(COLUMN_NAME) = LOWER(%s) LIMIT 1",
            [column],
        )
        return bool(rows)

    def newest_id(self) -> int | None:
        value = self._query(f"SELECT MAX({self._id}) FROM {self.table}")[0][0]
        return None if value is None else int(value)

    def oldest_id(self) -> int | None:
        value = self._query(f"SELECT MIN({self._id}) FROM {self.table}")[0][0]
        return None if value is None else int(value)

    def newest_update(self, update: UpdateColumn) -> str | None:
        value = self._query(f"SELECT MAX({update.expression}) FROM {self.table}")[0][0]
        return None if value is None else value.decode("utf-8", "replace")

    def id_batches(self, start_id: int, batch_size: int, *, clock: bool = False) -> Iterator[SourceBatch]:
        """Rows with id >= start_id, in id order, ``batch_size`` at a time, until exhausted.

        With ``clock``, each batch carries ``seen_at``: the source's UTC clock read *after* the
        batch, so every id missing from it was still missing at that time or later.
        """
        next_id = start_id
        while True:
            rows = self._query(
                f"SELECT {self._select} FROM {self.table} WHERE {self._id} >= {literal_int(next_id)} "
                f"ORDER BY {self._id} LIMIT {literal_int(batch_size)}"
            )
            if not rows:
                return
            yield self._batch(rows, None, self._utc_epoch() if clock else None)
            next_id = int(rows[-1][0]) + 1
            if len(rows) < batch_size:
                return

    def range_batches(self, ranges: Sequence[tuple[int, int]], batch_size: int) -> Iterator[SourceBatch]:
        """Rows whose id lies in one of ``ranges`` (sorted, disjoint), in id order, through the id index."""
        for n in range(0, len(ranges), RANGES_PER_QUERY):
            chunk = list(ranges[n : n + RANGES_PER_QUERY])
            while chunk:
                spans = [f"{self._id} BETWEEN {literal_int(lo)} AND {literal_int(hi)}" for lo, hi in chunk if lo != hi]
                singles = [literal_int(lo) for lo, hi in chunk if lo == hi]
                if singles:
                    spans.append(f"{self._id} IN ({', '.join(singles)})")
                rows = self._query(
                    f"SELECT {self._select} FROM {self.table} WHERE {' OR '.join(spans)} "
                    f"ORDER BY {self._id} LIMIT {literal_int(batch_size)}"
                )
                if rows:
                    yield self._batch(rows, None)
                if len(rows) < batch_size:
                    break
                after = int(rows[-1][0])
                chunk = [(max(lo, after + 1), hi) for lo, hi in chunk if hi > after]

    def window_bounds(self, update: UpdateColumn, low: str, high: str, session_zone: str) -> tuple[Any, Any]:
        """The parameters of :meth:`UpdateColumn.bound` for the UTC window ``[low, high]``.

        Epoch columns get exact integers. Wall-clock columns get the window in their zone,
        widened by any offset change (daylight saving) within an hour of either end, so that a
        repeated or skipped hour can never hide an update: the window covers every local time
        any instant of ``[low, high]`` can have, and a bound MySQL reads ambiguously still lies
        outside the window.
        """
        if update.kind == "epoch":
            per = 1_000_000 // update.scale
            return _epoch_micros(low) // per, _epoch_micros(high) // per
        zone = update.zone or session_zone
        low_at, high_at = parse_db_time(low), parse_db_time(high)
        samples = [low_at - HOUR, low_at, low_at + HOUR, high_at - HOUR, high_at, high_at + HOUR]
        converted = self._query(
            "SELECT " + ", ".join(["CONVERT_TZ(%s, '+00:00', %s)"] * len(samples)),
            [v for at in samples for v in (format_db_time(at), zone)],
        )[0]
        if any(value is None for value in converted):
            raise ScanError(_unknown_zone(zone))
        offsets = [parse_db_time(value.decode()) - at for value, at in zip(converted, samples, strict=True)]
        return format_db_time(low_at + min(offsets)), format_db_time(high_at + max(offsets))

    def check_zone(self, zone: str) -> None:
        """Fail, naming the fix, when the source server cannot convert times into ``zone``."""
        if self._query("SELECT CONVERT_TZ('2000-01-01 00:00:00', '+00:00', %s)", [zone])[0][0] is None:
            raise ScanError(_unknown_zone(zone))

    def to_utc(self, local: str, zone: str) -> str:
        """A time written in ``zone`` as UTC, the earliest it can mean (for cursors of earlier versions)."""
        at = parse_db_time(local)
        guess = self._query("SELECT CONVERT_TZ(%s, %s, '+00:00')", [local, zone])[0][0]
        if guess is None:
            return local
        guess_at = parse_db_time(guess.decode())
        samples = [guess_at - HOUR, guess_at, guess_at + HOUR]
        converted = self._query(
            "SELECT " + ", ".join(["CONVERT_TZ(%s, '+00:00', %s)"] * 3),
            [v for s in samples for v in (format_db_time(s), zone)],
        )[0]
        offsets = [parse_db_time(v.decode()) - s for v, s in zip(converted, samples, strict=True) if v is not None]
        return format_db_time(at - max(offsets)) if offsets else format_db_time(guess_at)

    def update_batches(
        self, update: UpdateColumn, low: Any, high: Any, position: tuple[str, int] | None, batch_size: int
    ) -> Iterator[SourceBatch]:
        """Rows whose update value lies in [low, high] (bound parameters), in (value, id) order, after ``position``."""
        expression, bound = update.expression, update.bound()
        while True:
            where = f"{expression} >= {bound} AND {expression} <= {bound}"
            args: list[Any] = [low, high]
            if position is not None:
                where += f" AND ({expression} > %s OR ({expression} = %s AND {self._id} > {literal_int(position[1])}))"
                args += [update.position_param(position[0])] * 2
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

    def _batch(
        self, rows: list[tuple[Any, ...]], positions: list[bytes | None] | None, seen_at: float | None = None
    ) -> SourceBatch:
        columns = list(zip(*rows, strict=True))  # transposed in C: much faster than a loop per row
        return SourceBatch(
            ids=list(map(int, columns[0])),
            keys=list(columns[1]),
            values=list(zip(*columns[2:], strict=True)),
            positions=positions or [],
            seen_at=seen_at,
        )


def _unknown_zone(zone: str) -> str:
    return (
        f"time zone {zone!r} is unknown to the source server: load its time zone tables "
        "(mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb mysql) or give src.updateTimeZone "
        "as an offset such as '+08:00'"
    )


def window_low(cursor_time: str | None, now: str, overlap_second: int) -> str:
    """Start of the update window: the stored cursor (or now) minus the overlap."""
    base = parse_db_time(cursor_time) if cursor_time else parse_db_time(now)
    return format_db_time(base - timedelta(seconds=overlap_second))
