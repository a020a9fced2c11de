"""Full reconciliation: verify whole tables by checksums of key ranges, fetch rows only where ranges differ.

Incremental scans only see new ids and moved update columns. A reconcile run
walks the source key index in chunks ("nibbles", as pt-table-checksum does),
computes on each side, in the database, the row count and an
order-independent 128-bit hash of the range (BIT_XOR of the MD5 halves of
every row's length-prefixed, NULL-marked text), and only where the two
differ fetches ``(key, row hash)`` pairs to find the rows. Chunk sizes adapt
to a target time per chunk query. Progress is checkpointed after every chunk
so a paused run resumes where it stopped.
"""

from __future__ import annotations

import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DELETED, DIFFERENT, MISSING, DestinationSpec
from cupid_airflow.core.payload import build_body, idempotency_key, row_version
from cupid_airflow.core.scan import SourceReader
from cupid_airflow.core.sql import ConnectionParams, connect, quote_identifier, quote_table, split_table
from cupid_airflow.core.store import DeliveryStore, Mismatch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cupid_airflow.core.sync import CursorStore

log = logging.getLogger(__name__)

Key = bytes
Row = tuple[bytes | None, ...]


@dataclass(frozen=True)
class ReconcileSettings:
    """How hard a reconcile run may work.

    :param target_chunk_second: chunk sizes adapt so one checksum query takes about this long.
    :param max_seconds_per_run: pause (checkpoint) after this long; the next run resumes.
    :param max_chunks_per_run: pause after this many chunks (None: no limit).
    :param max_threads_running: wait while the source's ``Threads_running`` is above this.
    :param max_replica_lag_second: wait while a destination replica lags more than this.
    """

    detect_deletes: bool = False
    chunk_size: int = 10000
    min_chunk_size: int = 1000
    max_chunk_size: int = 200000
    target_chunk_second: float = 0.5
    max_seconds_per_run: float = 3600.0
    max_chunks_per_run: int | None = None
    max_threads_running: int | None = None
    max_replica_lag_second: int | None = None
    wait_second: float = 1.0


@dataclass
class ReconcileOutcome:
    """What one reconcile run did for one destination."""

    chunks: int = 0
    differing_chunks: int = 0
    rows: int = 0
    found: dict[int, int] = field(default_factory=lambda: {MISSING: 0, DIFFERENT: 0, DELETED: 0})
    recorded: int = 0
    complete: bool = False
    error: str | None = None
    waited_second: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "differingChunks": self.differing_chunks,
            "rows": self.rows,
            "missing": self.found[MISSING],
            "different": self.found[DIFFERENT],
            "deleted": self.found[DELETED],
            "recorded": self.recorded,
            "complete": self.complete,
            "waitedSecond": round(self.waited_second, 3),
            "error": self.error,
        }


def encode_key(key: bytes | None) -> str | None:
    """A key as JSON can hold it (checkpoints live in Variables)."""
    return None if key is None else base64.b64encode(key).decode("ascii")


def decode_key(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


class TableSide:
    """One side of a reconcile: a table, its key and its compared columns, in that side's names."""

    def __init__(
        self, params: ConnectionParams, table: str, key: str, columns: Sequence[str], *, binary_keys: bool
    ) -> None:
        self.params = params
        self.table_name = table
        self.table = quote_table(table)
        self.key_name = key
        self.key = quote_identifier(key)
        self.columns = list(columns)
        self.binary_keys = binary_keys
        self._conn: Any = None
        self.row_hash = ""  # set by prepare()

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = connect(self.params)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        cursor.execute(sql, args)
        return list(cursor.fetchall())

    def column_info(self) -> dict[str, tuple[str, str | None, str | None]]:
        database, table = split_table(self.table_name, self.params.database)
        rows = self.query(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = " + ("%s" if database else "DATABASE()") + " AND TABLE_NAME = %s",
            [database, table] if database else [table],
        )
        return {r[0].decode().lower(): (r[1].decode(), r[2] and r[2].decode(), r[3] and r[3].decode()) for r in rows}

    def prepare(self) -> tuple[str | None, str]:
        """Check the table; build the row hash expression; return the key's collation and data type."""
        info = self.column_info()
        if not info:
            raise ValueError(f"table {self.table_name!r} does not exist at {self.params.describe()}")
        missing = [c for c in [self.key_name, *self.columns] if c.lower() not in info]
        if missing:
            raise ValueError(f"table {self.table_name!r} has no column(s) {', '.join(missing)}")
        parts = [self._text(self.key_name, info)] + [self._text(c, info) for c in self.columns]
        self.row_hash = f"MD5(CONCAT_WS('|', {', '.join(parts)}))"
        data_type, _, collation = info[self.key_name.lower()]
        return collation, data_type

    @staticmethod
    def _text(column: str, info: dict[str, tuple[str, str | None, str | None]]) -> str:
        """A column as unambiguous text: NULL marked, values length-prefixed, text in one character set."""
        quoted = quote_identifier(column)
        _, charset, _ = info[column.lower()]
        value = quoted if charset in (None, "binary", "utf8mb4") else f"CONVERT({quoted} USING utf8mb4)"
        return f"IF({quoted} IS NULL, 'N', CONCAT(LENGTH({value}), ':', {value}))"

    def _key_expr(self) -> str:
        return f"CAST({self.key} AS BINARY)" if self.binary_keys else self.key

    def range_where(self, low: bytes | None, high: bytes | None) -> tuple[str, list[Any]]:
        """``low < key <= high`` (either end open when None)."""
        key = self._key_expr()
        clauses, args = [], []
        if low is not None:
            clauses.append(f"{key} > %s")
            args.append(low)
        if high is not None:
            clauses.append(f"{key} <= %s")
            args.append(high)
        return (" AND ".join(clauses) or "1=1"), args

    def checksum(self, low: bytes | None, high: bytes | None) -> tuple[int, bytes | None, bytes | None]:
        where, args = self.range_where(low, high)
        row = self.query(
            f"SELECT COUNT(*), BIT_XOR(CAST(CONV(SUBSTRING(h, 1, 16), 16, 10) AS UNSIGNED)), "
            f"BIT_XOR(CAST(CONV(SUBSTRING(h, 17, 16), 16, 10) AS UNSIGNED)) "
            f"FROM (SELECT {self.row_hash} AS h FROM {self.table} WHERE {where}) AS t",
            args,
        )[0]
        return int(row[0]), row[1], row[2]

    def hashes(self, low: bytes | None, high: bytes | None) -> dict[Key, bytes]:
        where, args = self.range_where(low, high)
        return dict(self.query(f"SELECT {self.key}, {self.row_hash} FROM {self.table} WHERE {where}", args))

    def boundary(self, low: bytes | None, size: int) -> bytes | None:
        """The key ``size`` rows above ``low``, or None when fewer rows are left."""
        where, args = self.range_where(low, None)
        key = self._key_expr()
        rows = self.query(
            f"SELECT {self.key} FROM {self.table} WHERE {where} ORDER BY {key} LIMIT 1 OFFSET {int(size) - 1}", args
        )
        return rows[0][0] if rows else None

    def rows_by_key(self, keys: Sequence[bytes]) -> dict[Key, Row]:
        if not keys:
            return {}
        columns = ", ".join(quote_identifier(c) for c in self.columns)
        sql = f"SELECT {self.key}, {columns} FROM {self.table} WHERE {self.key} IN ".encode()
        cursor = self.conn.cursor()
        cursor.execute(sql + self.conn.literal(tuple(keys)))
        return {r[0]: tuple(r[1:]) for r in cursor.fetchall()}

    def status_value(self, name: str) -> int | None:
        rows = self.query("SHOW GLOBAL STATUS LIKE %s", (name,))
        return int(rows[0][1]) if rows else None

    def replica_lag(self) -> int | None:
        try:
            cursor = self.conn.cursor()
            cursor.execute("SHOW SLAVE STATUS")
            row = cursor.fetchone()
            if not row:
                return None
            names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
            value = row[names.index("Seconds_Behind_Master")]
            return None if value is None else int(value)
        except Exception:  # not a replica, or no privilege: no lag gate
            return None


class ReconcileRun:
    """Verify a source table against each destination; record every mismatch for delivery.

    :param checkpoints: one checkpoint per destination (Airflow Variables in production).
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
        checkpoints: CursorStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.source = source
        self.table = table
        self.id_column = id_column
        self.by_column = by_column
        self.destinations = destinations
        self.settings = settings
        self.store = store
        self.checkpoints = checkpoints
        self.clock = clock

    def run(self) -> dict[str, Any]:
        deadline = self.clock() + self.settings.max_seconds_per_run
        outcomes: dict[str, ReconcileOutcome] = {}
        self.store.ensure_schema()
        for name, (params, spec) in self.destinations.items():
            outcome = outcomes[name] = ReconcileOutcome()
            try:
                self._reconcile(name, params, spec, outcome, deadline)
            except Exception as err:  # one broken destination does not stop the others
                outcome.error = f"{type(err).__name__}: {err}"[:1000]
                log.error("reconcile of destination %s failed: %s", name, outcome.error)
        return {"config": self.config, "destinations": {n: o.as_dict() for n, o in outcomes.items()}}

    # -- one destination ----------------------------------------------------------------------
    def _reconcile(
        self, name: str, params: ConnectionParams, spec: DestinationSpec, outcome: ReconcileOutcome, deadline: float
    ) -> None:
        settings = self.settings
        source_columns = list(spec.columns)
        source = TableSide(self.source, self.table, self.by_column, source_columns, binary_keys=False)
        destination = TableSide(
            params, spec.table, spec.by_column, [spec.columns[c] for c in source_columns], binary_keys=False
        )
        reader_conn = connect(self.source)
        try:
            source_collation, source_type = source.prepare()
            destination_collation, _ = destination.prepare()
            if source_collation != destination_collation:
                # a range must mean the same on both sides: compare keys as bytes (slower: no index order)
                log.warning(
                    "destination %s: key collations differ (%s vs %s); comparing key ranges as bytes",
                    name,
                    source_collation,
                    destination_collation,
                )
                source.binary_keys = destination.binary_keys = True
            self.reader = SourceReader(
                reader_conn,
                table=self.table,
                id_column=self.id_column,
                by_column=self.by_column,
                columns=source_columns,
                database=self.source.database,
            )
            checkpoint = self.checkpoints.load(name) or {}
            if checkpoint.get("complete"):
                checkpoint = {}
            low = decode_key(checkpoint.get("lastKey"))
            size = int(checkpoint.get("chunkSize") or settings.chunk_size)
            hash_mode = bool(checkpoint.get("hashMode"))
            started = checkpoint.get("startedAt") or time.strftime("%Y-%m-%d %H:%M:%S")
            chunks_this_run = 0
            with ThreadPoolExecutor(2, thread_name_prefix="cupid-reconcile") as pool:
                while True:
                    if self.clock() >= deadline or (
                        settings.max_chunks_per_run is not None and chunks_this_run >= settings.max_chunks_per_run
                    ):
                        log.info("destination %s: reconcile paused after %d chunk(s)", name, chunks_this_run)
                        break
                    outcome.waited_second += self._wait_for_load(source, destination, deadline)
                    high = source.boundary(low, size)
                    chunk_started = self.clock()
                    found = self._chunk(source, destination, low, high, hash_mode, outcome, pool)
                    elapsed = max(self.clock() - chunk_started, 1e-3)
                    outcome.chunks += 1
                    chunks_this_run += 1
                    if found is not None:
                        outcome.differing_chunks += 1
                        outcome.recorded += self._record(name, spec, source, destination, found, outcome)
                    # adapt: chunk sizes follow the target time; dense differences switch to hash mode
                    size = int(
                        min(
                            settings.max_chunk_size,
                            max(settings.min_chunk_size, size * settings.target_chunk_second / elapsed),
                        )
                    )
                    hash_mode = found is not None
                    low = high
                    done = high is None
                    self.checkpoints.save(
                        name,
                        {
                            "startedAt": started,
                            "lastKey": encode_key(low),
                            "chunkSize": size,
                            "hashMode": hash_mode,
                            "complete": done,
                            "chunks": int(checkpoint.get("chunks") or 0) + chunks_this_run,
                        },
                    )
                    if done:
                        outcome.complete = True
                        break
        finally:
            reader_conn.close()
            source.close()
            destination.close()
        del source_type

    def _wait_for_load(self, source: TableSide, destination: TableSide, deadline: float) -> float:
        settings = self.settings
        waited = 0.0
        while self.clock() < deadline:
            busy = []
            if settings.max_threads_running is not None:
                running = source.status_value("Threads_running")
                if running is not None and running > settings.max_threads_running:
                    busy.append(f"Threads_running {running} > {settings.max_threads_running}")
            if settings.max_replica_lag_second is not None:
                lag = destination.replica_lag()
                if lag is not None and lag > settings.max_replica_lag_second:
                    busy.append(f"replica lag {lag} s > {settings.max_replica_lag_second} s")
            if not busy:
                break
            log.info("reconcile waits: %s", "; ".join(busy))
            time.sleep(settings.wait_second)
            waited += settings.wait_second
        return waited

    def _chunk(
        self,
        source: TableSide,
        destination: TableSide,
        low: bytes | None,
        high: bytes | None,
        hash_mode: bool,
        outcome: ReconcileOutcome,
        pool: ThreadPoolExecutor,
    ) -> tuple[list[Key], list[Key], list[Key]] | None:
        """None when the range matches; else (missing, different, extra) keys."""
        if not hash_mode:
            theirs = pool.submit(destination.checksum, low, high)
            ours = source.checksum(low, high)
            outcome.rows += ours[0]
            if ours == theirs.result():
                return None
        their_hashes = pool.submit(destination.hashes, low, high)
        our_hashes = source.hashes(low, high)
        destination_hashes = their_hashes.result()
        if hash_mode:
            outcome.rows += len(our_hashes)
        if our_hashes == destination_hashes:
            return None
        missing = [k for k in our_hashes if k not in destination_hashes]
        different = [k for k, h in our_hashes.items() if k in destination_hashes and destination_hashes[k] != h]
        extra = [k for k in destination_hashes if k not in our_hashes]
        return missing, different, extra

    def _record(
        self,
        name: str,
        spec: DestinationSpec,
        source: TableSide,
        destination: TableSide,
        found: tuple[list[Key], list[Key], list[Key]],
        outcome: ReconcileOutcome,
    ) -> int:
        missing, different, extra = found
        loose_extra = {_loose(k): k for k in extra}
        # a key the collation matches but whose bytes differ (case, trailing spaces) is a difference
        for key in list(missing):
            twin = loose_extra.pop(_loose(key), None)
            if twin is not None:
                missing.remove(key)
                different.append(key)
                extra.remove(twin)
        source_rows = self._source_rows([*missing, *different])
        destination_rows = destination.rows_by_key(different + extra)
        loose_destination = {_loose(k): v for k, v in destination_rows.items()}
        mismatches: list[Mismatch] = []
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        for kind, keys in ((MISSING, missing), (DIFFERENT, different)):
            for key in keys:
                row = source_rows.get(key)
                if row is None:
                    continue  # deleted since the checksum: nothing to send
                names = {c.lower(): c for c in row}
                differences = None
                if kind == DIFFERENT:
                    actual = destination_rows.get(key) or loose_destination.get(_loose(key))
                    if actual is None:
                        continue
                    differences = {
                        names[c.lower()]: (row[names[c.lower()]], actual[n])
                        for n, c in enumerate(source.columns)
                        if row[names[c.lower()]] != actual[n]
                    }
                    if not differences:
                        continue  # only a key-case difference the incremental compare also ignores
                mismatches.append(self._mismatch(name, spec, kind, key, row, differences, now))
                outcome.found[kind] += 1
        if self.settings.detect_deletes:
            for key in extra:
                values = destination_rows.get(key)
                if values is None:
                    continue
                row = dict(zip([spec.by_column, *destination.columns], [key, *values], strict=True))
                mismatches.append(self._mismatch(name, spec, DELETED, key, row, None, now))
                outcome.found[DELETED] += 1
        return self.store.record(mismatches)

    def _source_rows(self, keys: Sequence[bytes]) -> dict[Key, dict[str, bytes | None]]:
        if not keys:
            return {}
        cursor = self.reader.conn.cursor()
        cursor.execute(
            f"SELECT * FROM {quote_table(self.table)} WHERE {quote_identifier(self.by_column)} IN ".encode()
            + self.reader.conn.literal(tuple(keys))
        )
        names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
        key_index = [n.lower() for n in names].index(self.by_column.lower())
        return {row[key_index]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}

    def _mismatch(
        self,
        name: str,
        spec: DestinationSpec,
        kind: int,
        key: bytes,
        row: dict[str, bytes | None],
        differences: dict[str, tuple[bytes | None, bytes | None]] | None,
        detected_at: str,
    ) -> Mismatch:
        names = {c.lower(): c for c in row}
        version = row_version(row) if kind != DELETED else "deleted:" + row_version(row)
        idem = idempotency_key(self.config, name, key, version)
        if kind == DELETED:
            body = build_body(
                mismatch_type=kind,
                source_row={},
                destination=name,
                destination_table=spec.table,
                key_column=self.by_column,
                row_key=key,
                differences=None,
                detected_at=detected_at,
                idempotency_key=idem,
                destination_row=row,
            )
            source_id = None
        else:
            body = build_body(
                mismatch_type=kind,
                source_row=row,
                destination=name,
                destination_table=spec.table,
                key_column=names.get(self.by_column.lower(), self.by_column),
                row_key=key,
                differences=differences,
                detected_at=detected_at,
                idempotency_key=idem,
            )
            id_name = names.get(self.id_column.lower())
            source_id = int(row[id_name]) if id_name and row[id_name] is not None else None  # type: ignore[arg-type]
        return Mismatch(self.config, name, key, version, idem, kind, source_id, body)


def _loose(key: bytes) -> bytes:
    return key.rstrip(b" ").lower()
