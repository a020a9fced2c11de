"""One sync run: scan new and updated source rows, compare them with every destination, record mismatches."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from bisect import bisect_left
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cupid_airflow.core.compare import DestinationReader, DestinationSpec, Difference, Lookup
from cupid_airflow.core.detection import Detection
from cupid_airflow.core.gaps import GapTracker, merged_ranges, seen_time
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
    update_time_zone: str | None = None
    update_scan_second: int = 5
    late_commit_second: int = 10
    late_commit_max_gaps: int = 100000
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
    gaps: GapTracker = field(default_factory=GapTracker)
    late: dict[str, int] = field(default_factory=lambda: {"found": 0, "expired": 0, "overCap": 0})
    dropped_ids: tuple[int, int] | None = None  # lowest and highest id of gaps dropped over the cap

    @property
    def healthy(self) -> bool:
        return self.error is None


def new_cursor() -> dict[str, Any]:
    """A destination's cursor before its first run: ``insertId`` None is the id column's lowest value.

    ``gaps`` are the late-commit gaps (:meth:`GapTracker.to_json`); ``updateTimeUtc`` and
    ``updateWindow`` are UTC source times.
    """
    return {"insertId": None, "gaps": None, "updateTimeUtc": None, "updateWindow": None, "updatePosition": None}


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
            self.id = self.source.id_contract()
            update = None
            if plan.update and plan.update_column:  # an unusable update column fails before anything is scanned
                update = self._update_column(types[plan.update_column.lower()])
            self.clock = self.source.clock()
            self.now = self.clock.local
            self.store.ensure_schema()
            self.states = self._load_states()
            with ThreadPoolExecutor(max(1, plan.lookup_connections), thread_name_prefix="cupid-lookup") as pool:
                self.pool = pool
                insert_done = self._insert_scan() if plan.insert else True
                update_done = self._update_scan(update) if update is not None else True
            self._keep_gaps()
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
            gaps = self._upgrade(cursor)
            if self.start_id is not None:
                cursor["insertId"] = int(self.start_id)
                gaps.forget_from(int(self.start_id))
            reader = DestinationReader(spec, self.columns, key_column=self.plan.by_column)
            state = DestinationState(name, spec, reader, cursor, before, gaps=gaps)
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
        tracking = plan.late_commit_second > 0
        gaps_done = self._gap_scan(healthy) if tracking else True
        starts = {state.name: self._next_id(state) for state in healthy}
        scan_start = min(starts.values())

        def skip_for(state: DestinationState, batch: SourceBatch) -> list[bool] | None:
            start = starts[state.name]
            return None if batch.ids[0] >= start else [i < start for i in batch.ids]

        def advance(state: DestinationState, batch: SourceBatch) -> None:
            next_id = self._next_id(state)
            ids = batch.ids
            if ids[-1] < next_id:
                return
            if ids[0] < next_id:  # a sibling destination further behind read these rows too
                ids = ids[bisect_left(ids, next_id) :]
            if tracking and batch.seen_at is not None:
                state.gaps.observe(next_id - 1, ids, seen_time(batch.seen_at))
                self._cap_gaps(state)
            state.cursor["insertId"] = ids[-1] + 1

        batches = _read_ahead(self.batch_reader.id_batches(scan_start, plan.batch_size, clock=tracking))
        done = self._scan("insert", batches, healthy, skip_for, advance)
        return done and gaps_done and len(healthy) == len(self.states)

    def _next_id(self, state: DestinationState) -> int:
        insert_id = state.cursor.get("insertId")
        return self.id.lowest if insert_id is None else int(insert_id)

    def _gap_scan(self, healthy: Sequence[DestinationState]) -> bool:
        """Read every gap of the healthy destinations again; True when all of them were read."""
        tracked = [s for s in healthy if len(s.gaps)]
        if not tracked:
            return True
        clock = self.source.clock().epoch  # before the reads: a gap this much older was seen by them
        ranges = merged_ranges(s.gaps for s in tracked)
        exhausted: list[bool] = []

        def skip_for(state: DestinationState, batch: SourceBatch) -> list[bool] | None:
            inside = state.gaps.holds(batch.ids)
            return None if all(inside) else [not x for x in inside]

        def advance(state: DestinationState, batch: SourceBatch) -> None:
            state.late["found"] += state.gaps.fill(batch.ids)

        reads = _read_ahead(self.batch_reader.range_batches(ranges, self.plan.batch_size))
        # exhausted only once the pipeline took every batch (read ahead is not compared)
        self._scan("insert", _until_exhausted(reads, exhausted), tracked, skip_for, advance)
        for state in tracked:
            if exhausted and state.healthy:
                state.late["expired"] += state.gaps.expire(clock, self.plan.late_commit_second)
        return bool(exhausted)

    def _cap_gaps(self, state: DestinationState) -> None:
        dropped = state.gaps.trim(self.plan.late_commit_max_gaps)
        if dropped:
            state.late["overCap"] += len(dropped)
            low = dropped[0][0] if state.dropped_ids is None else state.dropped_ids[0]
            state.dropped_ids = (low, dropped[-1][1])

    def _keep_gaps(self) -> None:
        """Put each destination's gaps into its cursor, and warn about gaps dropped over the cap."""
        for state in self.states.values():
            self._cap_gaps(state)
            state.cursor["gaps"] = state.gaps.to_json()
            if state.dropped_ids is not None:
                log.warning(
                    "destination %s: %d id gap(s) over src.lateCommitMaxGaps=%d were dropped (ids %d..%d): a row "
                    "committing late there is not compared; raise lateCommitMaxGaps, or run the reconcile",
                    state.name,
                    state.late["overCap"],
                    self.plan.late_commit_max_gaps,
                    *state.dropped_ids,
                )

    def _upgrade(self, cursor: dict[str, Any]) -> GapTracker:
        """The cursor's gaps; a cursor of an earlier version is brought to this one first.

        Its late-commit band (``recent``) becomes one gap, read again from now on; its
        ``updateTime`` (the server's local time) becomes ``updateTimeUtc``.
        """
        gaps = GapTracker.from_json(cursor.get("gaps"))
        recent = cursor.pop("recent", None) or []
        if recent and cursor.get("insertId") is not None and self.plan.late_commit_second > 0:
            low = min(int(i) for _, i in recent)
            gaps.forget_from(low)
            gaps.add(low, int(cursor["insertId"]) - 1, seen_time(self.clock.epoch))
        if cursor.get("insertId") is not None:  # a cursor moved down by hand: the rescan finds those gaps again
            gaps.forget_from(int(cursor["insertId"]))
        local = cursor.pop("updateTime", None)
        if local:
            cursor.update(
                updateTimeUtc=self.source.to_utc(local, self.clock.time_zone), updateWindow=None, updatePosition=None
            )
        return gaps

    # -- updated rows -------------------------------------------------------------------------
    def _update_column(self, data_type: str) -> UpdateColumn:
        plan = self.plan
        column = plan.update_column or ""
        update = UpdateColumn(column, data_type, plan.update_time_format, plan.update_time_zone, plan.table)
        if update.zone:
            self.source.check_zone(update.zone)
        if not self.source.indexed_first(column):
            log.warning(
                "update column %r of %s has no index starting with it: every update scan reads the whole table; "
                "add one (ALTER TABLE %s ADD INDEX (%s))",
                column,
                plan.table,
                plan.table,
                column,
            )
        return update

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
                    window_low(state.cursor.get("updateTimeUtc"), self.clock.utc, self.plan.update_scan_second),
                    self.clock.utc,
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

            bounds = self.source.window_bounds(update, low, high, self.clock.time_zone)
            batches = _read_ahead(self.batch_reader.update_batches(update, *bounds, position, self.plan.batch_size))
            complete = self._scan("update", batches, members, lambda s, b: None, advance)
            if complete:
                for state in members:
                    if state.healthy:
                        state.cursor.update(updateTimeUtc=high, updateWindow=None, updatePosition=None)
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
        oldest_id: int | None = None
        destinations: dict[str, Any] = {}
        for state in self.states.values():
            lag_rows = None
            if self.plan.insert:
                if state.cursor.get("insertId") is None:  # nothing seen yet: every id is behind
                    oldest_id = self.source.oldest_id() if oldest_id is None else oldest_id
                    lag_rows = 0 if newest_id is None or oldest_id is None else newest_id - oldest_id + 1
                else:
                    lag_rows = max(0, (newest_id if newest_id is not None else 0) - (int(state.cursor["insertId"]) - 1))
            destinations[state.name] = {
                "mismatches": {"missing": len(state.mismatched[1]), "different": len(state.mismatched[2])},
                "cursorBefore": _visible(state.before),
                "cursorAfter": _visible(state.cursor),
                "lagRows": lag_rows,
                "lagUpdateSecond": _lag_second(self.clock.utc, state.cursor.get("updateTimeUtc")) if update else None,
                "lateCommits": {"gaps": len(state.gaps), **state.late},
                "error": state.error,
            }
        return {
            "config": self.plan.config,
            "sourceNow": self.now,
            "sourceUtc": self.clock.utc,
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


def _until_exhausted(
    batches: Generator[SourceBatch, None, None], exhausted: list[bool]
) -> Generator[SourceBatch, None, None]:
    """Yield the batches; append True to ``exhausted`` once all were taken (not when closed early)."""
    yield from batches
    exhausted.append(True)


def _visible(cursor: dict[str, Any]) -> dict[str, Any]:
    return {k: cursor.get(k) for k in ("insertId", "updateTimeUtc", "updatePosition")}


def _lag_second(now: str, update_time: str | None) -> float | None:
    if not update_time:
        return None
    return round((parse_db_time(now) - parse_db_time(update_time)).total_seconds(), 3)


def run_sync(
    plan: SyncPlan, cursors: CursorStore, store: DeliveryStore, *, start_id: int | None = None
) -> dict[str, Any]:
    """Run one bounded sync and return its summary."""
    return SyncRun(plan, cursors, store, start_id=start_id).run()
