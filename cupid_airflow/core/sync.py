"""One sync run: scan new and updated source rows, compare them with every destination, record mismatches."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cupid_airflow.core.compare import DestinationReader, DestinationSpec, Difference, Lookup
from cupid_airflow.core.detection import Detection
from cupid_airflow.core.scan import (
    SourceBatch,
    SourceReader,
    UpdateColumn,
    parse_db_time,
    window_low,
)
from cupid_airflow.core.sql import ConnectionParams, connect, describe_error
from cupid_airflow.core.store import DeliveryStore, RecordOutcome

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator, Sequence

log = logging.getLogger(__name__)


class CursorStore(Protocol):
    """Where each destination's cursor lives between runs (Airflow Variables in production)."""

    def load(self, destination: str) -> dict[str, Any] | None: ...

    def save(self, destination: str, cursor: dict[str, Any]) -> None: ...


class MemoryCursorStore:
    """Cursors in a dict: for benchmarks and unit tests."""

    def __init__(self) -> None:
        self.cursors: dict[str, dict[str, Any]] = {}

    def load(self, destination: str) -> dict[str, Any] | None:
        cursor = self.cursors.get(destination)
        return dict(cursor) if cursor is not None else None

    def save(self, destination: str, cursor: dict[str, Any]) -> None:
        self.cursors[destination] = dict(cursor)


@dataclass(frozen=True)
class SyncPlan:
    """Everything one sync run needs, with connections already resolved."""

    config: str
    source: ConnectionParams
    table: str
    id_column: str
    by_column: str
    destinations: dict[str, tuple[ConnectionParams, DestinationSpec]]
    insert: bool = True
    update: bool = False
    update_column: str | None = None
    update_time_format: str | None = None
    update_scan_second: int = 5
    late_commit_second: int = 10
    late_commit_max_rows: int = 20000
    batch_size: int = 5000
    max_rows_per_run: int = 500000
    max_seconds_per_run: float = 20.0
    lookup_connections: int = 8

    @property
    def compared_columns(self) -> list[str]:
        """The source columns any destination compares, in first-seen order."""
        columns: dict[str, None] = {}
        for _, spec in self.destinations.values():
            columns.update(dict.fromkeys(spec.columns))
        return list(columns)


@dataclass
class DestinationState:
    """One destination during a run: its cursor and whether it can be reached."""

    name: str
    spec: DestinationSpec
    reader: DestinationReader
    cursor: dict[str, Any]
    before: dict[str, Any]
    error: str | None = None
    mismatched: dict[int, set[int]] = field(default_factory=lambda: {1: set(), 2: set()})

    @property
    def healthy(self) -> bool:
        return self.error is None


def new_cursor() -> dict[str, Any]:
    return {"insertId": 1, "recent": [], "updateTime": None, "updateWindow": None, "updatePosition": None}


class SyncRun:
    """One bounded run of the compare; :meth:`run` returns the run's summary."""

    RECORD_DETECTIONS = 5000  # detections buffered before one recording transaction

    def __init__(
        self,
        plan: SyncPlan,
        cursors: CursorStore,
        store: DeliveryStore,
        *,
        start_id: int | None = None,
        connector: Callable[[ConnectionParams], Any] = connect,
    ) -> None:
        self.plan = plan
        self.cursors = cursors
        self.store = store
        self.start_id = start_id
        self.connector = connector
        self.columns = plan.compared_columns
        self.rows_scanned = {"insert": 0, "update": 0}
        self.null_keys = 0
        self.recorded = RecordOutcome()
        self._unrecorded: list[Detection] = []
        self._local = threading.local()
        self._all_conns: list[Any] = []
        self._conn_lock = threading.Lock()

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan = self.plan
        source_conn = self.connector(plan.source)
        batch_conn = None
        try:
            self.source = self._reader(source_conn)
            # batches are read ahead on a connection of their own while the main thread compares
            batch_conn = self.connector(plan.source)
            self.batch_reader = self._reader(batch_conn)
            types = self.source.check(plan.update_column if plan.update else None)
            update = None
            if plan.update and plan.update_column:  # an unusable update column fails before anything is scanned
                update = UpdateColumn(plan.update_column, types[plan.update_column.lower()], plan.update_time_format)
            self.now = self.source.now()
            self.store.ensure_schema()
            self.states = self._load_states()
            with ThreadPoolExecutor(max(1, plan.lookup_connections), thread_name_prefix="cupid-lookup") as pool:
                self.pool = pool
                insert_done = self._insert_scan() if plan.insert else True
                update_done = self._update_scan(update) if update is not None else True
            for state in self.states.values():
                if state.cursor != state.before:
                    self.cursors.save(state.name, state.cursor)
            return self._summary(insert_done and update_done, update)
        finally:
            self._close_lookup_connections()
            source_conn.close()
            if batch_conn is not None:
                batch_conn.close()

    def _reader(self, conn: Any) -> SourceReader:
        plan = self.plan
        return SourceReader(
            conn,
            table=plan.table,
            id_column=plan.id_column,
            by_column=plan.by_column,
            columns=self.columns,
            database=plan.source.database,
        )

    def _load_states(self) -> dict[str, DestinationState]:
        states: dict[str, DestinationState] = {}
        for name, (params, spec) in self.plan.destinations.items():
            stored = self.cursors.load(name)
            cursor = {**new_cursor(), **(stored or {})}
            before = dict(cursor)
            if self.start_id is not None:
                cursor.update(insertId=int(self.start_id), recent=[])
            reader = DestinationReader(spec, self.columns, key_column=self.plan.by_column)
            state = DestinationState(name, spec, reader, cursor, before)
            try:
                conn = self._lookup_connection(name, params)
                state.reader.lookup(conn, [b""])  # proves the table and columns exist
            except Exception as err:  # a broken destination delays only itself
                state.error = describe_error(err, params)
                log.error("destination %s is unavailable, its cursor waits: %s", name, state.error)
            states[name] = state
        return states

    # -- new rows -----------------------------------------------------------------------------
    def _insert_scan(self) -> bool:
        plan = self.plan
        healthy = [s for s in self.states.values() if s.healthy]
        if not healthy:
            return False
        band_cap = min(plan.late_commit_max_rows, plan.max_rows_per_run // 2)
        starts: dict[str, int] = {}
        for state in healthy:
            cursor_id = int(state.cursor["insertId"])
            recent = _recent_passes(state.cursor.get("recent") or [], plan.late_commit_second)
            band_start = min([cursor_id, *(int(i) for _, i in recent)])
            starts[state.name] = max(band_start, cursor_id - band_cap, 1)
            state.cursor["recent"] = [*recent, (self.now, cursor_id)][-50:]
        scan_start = min(starts.values())

        def skip_for(state: DestinationState, batch: SourceBatch) -> list[bool] | None:
            start = starts[state.name]
            return None if batch.ids[0] >= start else [i < start for i in batch.ids]

        def advance(state: DestinationState, batch: SourceBatch) -> None:
            state.cursor["insertId"] = max(int(state.cursor["insertId"]), batch.ids[-1] + 1)

        batches = _read_ahead(self.batch_reader.id_batches(scan_start, plan.batch_size))
        done = self._scan("insert", batches, healthy, skip_for, advance)
        return done and len(healthy) == len(self.states)

    # -- updated rows -------------------------------------------------------------------------
    def _update_scan(self, update: UpdateColumn) -> bool:
        healthy = [s for s in self.states.values() if s.healthy]
        groups: dict[tuple[str, str, str | None, int | None], list[DestinationState]] = {}
        for state in healthy:
            window = state.cursor.get("updateWindow")
            position = state.cursor.get("updatePosition")
            if window:
                low, high = window
            else:
                low, high = (
                    window_low(state.cursor.get("updateTime"), self.now, self.plan.update_scan_second),
                    self.now,
                )
                position = None
            key = (low, high, position[0] if position else None, position[1] if position else None)
            groups.setdefault(key, []).append(state)
        done = bool(healthy) and len(healthy) == len(self.states)
        for (low, high, position_time, position_id), members in groups.items():
            position = (position_time, position_id) if position_time is not None and position_id is not None else None

            def advance(state: DestinationState, batch: SourceBatch, low: str = low, high: str = high) -> None:
                last = batch.positions[-1]
                state.cursor["updateWindow"] = [low, high]
                state.cursor["updatePosition"] = [last.decode() if last else None, batch.ids[-1]]

            batches = _read_ahead(self.batch_reader.update_batches(update, low, high, position, self.plan.batch_size))
            complete = self._scan("update", batches, members, lambda s, b: None, advance)
            if complete:
                for state in members:
                    if state.healthy:
                        state.cursor.update(updateTime=high, updateWindow=None, updatePosition=None)
            done = done and complete
        return done

    # -- the pipeline shared by both scans ----------------------------------------------------
    def _scan(
        self,
        phase: str,
        batches: Generator[SourceBatch, None, None],
        states: Sequence[DestinationState],
        skip_for: Callable[[DestinationState, SourceBatch], list[bool] | None],
        advance: Callable[[DestinationState, SourceBatch], None],
    ) -> bool:
        """Compare batches with destinations, lookups pipelined; True when the source had no more rows."""
        plan = self.plan
        deadline = time.monotonic() + plan.max_seconds_per_run
        depth = max(1, plan.lookup_connections)
        in_flight: deque[tuple[SourceBatch, dict[str, Future[Lookup]]]] = deque()
        scanned = 0
        exhausted = True
        try:
            for batch in batches:
                keys = [k for k in batch.keys if k is not None]
                futures = {s.name: self.pool.submit(self._lookup, s, keys) for s in states if s.healthy}
                in_flight.append((batch, futures))
                scanned += len(batch.ids)
                while len(in_flight) >= depth:
                    self._finish(phase, *in_flight.popleft(), states, skip_for, advance)
                if scanned >= plan.max_rows_per_run or time.monotonic() >= deadline:
                    exhausted = False
                    break
        finally:
            batches.close()  # stops the read-ahead before anything else uses the source
        while in_flight:
            self._finish(phase, *in_flight.popleft(), states, skip_for, advance)
        self._flush()
        if not exhausted:
            log.info("%s scan stopped by its budget after %d rows; the next run continues", phase, scanned)
        return exhausted and all(s.healthy for s in states)

    def _lookup(self, state: DestinationState, keys: list[bytes]) -> Lookup:
        params = self.plan.destinations[state.name][0]
        return state.reader.lookup(self._lookup_connection(state.name, params), keys)

    def _finish(
        self,
        phase: str,
        batch: SourceBatch,
        futures: dict[str, Future[Lookup]],
        states: Sequence[DestinationState],
        skip_for: Callable[[DestinationState, SourceBatch], list[bool] | None],
        advance: Callable[[DestinationState, SourceBatch], None],
    ) -> None:
        self.rows_scanned[phase] += len(batch.ids)
        nulls = sum(1 for k in batch.keys if k is None)
        if nulls:
            self.null_keys += nulls
            bad = [batch.ids[i] for i, k in enumerate(batch.keys) if k is None][:10]
            log.warning(
                "%d source row(s) have a NULL %s and cannot be compared (ids %s)",
                nulls,
                self.plan.by_column,
                bad,
            )
        found: dict[str, list[Difference]] = {}
        for state in states:
            future = futures.get(state.name)
            if future is None or not state.healthy:
                continue
            try:
                rows = future.result()
            except Exception as err:
                state.error = describe_error(err, self.plan.destinations[state.name][0])
                log.error(
                    "destination %s failed during the %s scan, its cursor waits: %s",
                    state.name,
                    phase,
                    state.error,
                )
                continue
            found[state.name] = state.reader.compare(batch.keys, batch.values, rows, skip_for(state, batch))
        self._record(batch, found)
        for state in states:
            if state.name in found:
                advance(state, batch)

    def _record(self, batch: SourceBatch, found: dict[str, list[Difference]]) -> None:
        """Buffer the batch's mismatches as detections; they are recorded before any cursor moves."""
        config = self.plan.config
        for name, diffs in found.items():
            state = self.states[name]
            for diff in diffs:
                key = batch.keys[diff.index]
                if key is None:
                    continue
                source_id = batch.ids[diff.index]
                self._unrecorded.append(Detection(config, name, key, diff.type, source_id, diff.differences or None))
                state.mismatched.setdefault(diff.type, set()).add(source_id)
        if len(self._unrecorded) >= self.RECORD_DETECTIONS:
            self._flush()

    def _flush(self) -> None:
        """Record buffered detections in one transaction (cursors are saved only after this)."""
        if self._unrecorded:
            self.recorded += self.store.record(self._unrecorded)
            self._unrecorded = []

    # -- connections --------------------------------------------------------------------------
    def _lookup_connection(self, name: str, params: ConnectionParams) -> Any:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(name)
        if conn is None:
            conn = conns[name] = self.connector(params)
            with self._conn_lock:
                self._all_conns.append(conn)
        return conn

    def _close_lookup_connections(self) -> None:
        for conn in self._all_conns:
            with contextlib.suppress(Exception):  # closing a broken connection must not hide the run's result
                conn.close()
        self._all_conns.clear()

    # -- summary ------------------------------------------------------------------------------
    def _summary(self, complete: bool, update: UpdateColumn | None) -> dict[str, Any]:
        newest_id = self.source.newest_id()
        newest_update = self.source.newest_update(update) if update else None
        destinations: dict[str, Any] = {}
        for state in self.states.values():
            next_id = int(state.cursor["insertId"])
            destinations[state.name] = {
                "mismatches": {"missing": len(state.mismatched[1]), "different": len(state.mismatched[2])},
                "cursorBefore": _visible(state.before),
                "cursorAfter": _visible(state.cursor),
                "lagRows": max(0, (newest_id or 0) - (next_id - 1)) if self.plan.insert else None,
                "lagUpdateSecond": _lag_second(self.now, state.cursor.get("updateTime")) if update else None,
                "error": state.error,
            }
        return {
            "config": self.plan.config,
            "sourceNow": self.now,
            "rowsScanned": dict(self.rows_scanned),
            "nullKeys": self.null_keys,
            "recorded": self.recorded.new,
            "superseded": self.recorded.superseded,
            "recordedReduced": self.recorded.reduced,
            "recordedDead": self.recorded.dead,
            "newestId": newest_id,
            "newestUpdate": newest_update,
            "caughtUp": complete,
            "destinations": destinations,
        }


def _read_ahead(batches: Iterator[SourceBatch], depth: int = 2) -> Generator[SourceBatch, None, None]:
    """Yield the batches while a thread already reads the next ``depth`` ones; ``close()`` stops it."""
    ready: queue.Queue[Any] = queue.Queue()
    slots = threading.Semaphore(depth)
    stop = threading.Event()
    end = object()

    def pump() -> None:
        try:
            for batch in batches:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                ready.put(batch)
            ready.put(end)
        except BaseException as err:  # handed to the consumer, which raises it
            ready.put(err)

    reader = threading.Thread(target=pump, name="cupid-source-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            slots.release()
            yield item
    finally:
        stop.set()
        reader.join()


def _recent_passes(recent: list[Any], late_commit_second: int) -> list[tuple[str, int]]:
    """The earlier runs whose rows may still see late commits.

    A run's entry (start time, insert cursor) is kept until some later run
    that started at least ``late_commit_second`` after it has completed,
    however long ago that was: downtime never shortens the late-commit
    guarantee.
    """
    if late_commit_second <= 0:
        return []
    starts = [parse_db_time(t) for t, _ in recent]
    kept = []
    for n, (t, i) in enumerate(recent):
        if any((later - starts[n]).total_seconds() >= late_commit_second for later in starts[n + 1 :]):
            continue
        kept.append((t, int(i)))
    return kept


def _visible(cursor: dict[str, Any]) -> dict[str, Any]:
    return {k: cursor.get(k) for k in ("insertId", "updateTime", "updatePosition")}


def _lag_second(now: str, update_time: str | None) -> float | None:
    if not update_time:
        return None
    return round((parse_db_time(now) - parse_db_time(update_time)).total_seconds(), 3)


def run_sync(
    plan: SyncPlan, cursors: CursorStore, store: DeliveryStore, *, start_id: int | None = None
) -> dict[str, Any]:
    """Run one bounded sync and return its summary."""
    return SyncRun(plan, cursors, store, start_id=start_id).run()
