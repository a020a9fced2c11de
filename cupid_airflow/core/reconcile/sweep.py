"""The compare phase of a verify: one ordered read of the differing buckets per table, merged window by window."""

from __future__ import annotations

import logging
import queue
import threading
from bisect import bisect_left, bisect_right
from collections import Counter
from itertools import pairwise
from operator import itemgetter, le
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.reconcile.gates import wait_for_load
from cupid_airflow.core.reconcile.judge import Tally
from cupid_airflow.core.reconcile.keys import composite_key
from cupid_airflow.core.reconcile.state import DESTINATION, GROUPS, SIDES, SOURCE
from cupid_airflow.core.reconcile.table import ReconcileError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from cupid_airflow.core.reconcile.gates import Budget
    from cupid_airflow.core.reconcile.judge import Judge, SourceRow
    from cupid_airflow.core.reconcile.keys import Key
    from cupid_airflow.core.reconcile.run import ReconcileSettings
    from cupid_airflow.core.reconcile.state import Verify
    from cupid_airflow.core.reconcile.table import TableSide

log = logging.getLogger(__name__)

LISTED_BUCKETS = 20000  # the most bucket numbers one ordered read names in SQL; beyond, it filters as it reads
WINDOW = 5000  # rows of each table merged at once (fewer with a small fetch_batch: batches end with a window)
_END = object()
_FOLD = itemgetter(0)


class OrderedRead:
    """One table's rows of the differing buckets in fold order, read ahead in a thread of its own.

    The statement holds its connection until the end; closing early stops it on the server (``KILL QUERY``
    through ``killer``, the side's other connection) and drops the connection. With ``snapshot`` the read
    runs in a transaction whose consistent snapshot exists before this constructor returns.
    """

    def __init__(self, side: TableSide, sql: str, *, snapshot: bool = False, depth: int = 4) -> None:
        self.side = side
        side.prepare_sort()
        self.connection_id = side.connection_id()
        self._snapshot = snapshot
        if snapshot:
            side.query("START TRANSACTION READ ONLY, WITH CONSISTENT SNAPSHOT")
        self._sql = sql
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self.rows_read = 0
        self._thread = threading.Thread(target=self._read, name=f"cupid-reconcile-{side.role}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        batches = self.side.stream(self._sql)
        try:
            for batch in batches:
                if not self._put(batch):
                    return
            if self._snapshot:
                self.side.query("COMMIT")
            self._put(_END)
        except BaseException as err:  # handed to the reading thread
            self._put(err)
        finally:
            batches.close()

    def _put(self, item: Any) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def batches(self) -> Iterator[list[tuple[Any, ...]]]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise ReconcileError(f"{self.side.role} side: {type(item).__name__}: {item}") from item
            self.rows_read += len(item)
            yield item

    def close(self, killer: TableSide) -> None:
        if not self._thread.is_alive():
            return
        self._stopped.set()
        killer.kill_query(self.connection_id)
        self._thread.join(30)


class _Window:
    """One table's rows in fold order, handed out window by window (a fold's rows never split)."""

    def __init__(self, batches: Iterator[list[tuple[Any, ...]]], keep: Callable[[tuple[Any, ...]], bool] | None):
        self._batches = batches
        self._keep = keep
        self.rows: list[tuple[Any, ...]] = []
        self.done = False
        self._last: bytes | None = None

    def fill(self, wanted: int) -> None:
        while not self.done and len(self.rows) < wanted:
            batch = next(self._batches, None)
            if batch is None:
                self.done = True
                return
            if self._keep is not None:
                batch = [r for r in batch if self._keep(r)]
            if not batch:
                continue
            folds = list(map(_FOLD, batch))
            if (self._last is not None and folds[0] < self._last) or not all(map(le, folds, folds[1:])):
                raise ReconcileError("a table's rows did not come in key order (keys longer than max_sort_length?)")
            self._last = folds[-1]
            self.rows.extend(batch)

    def take_below(self, bound: bytes | None) -> list[tuple[Any, ...]]:
        """The rows whose fold is below ``bound`` (all of them for None)."""
        cut = len(self.rows) if bound is None else bisect_left(self.rows, bound, key=_FOLD)
        taken = self.rows[:cut]
        del self.rows[:cut]
        return taken


class ComparePass:
    """The compare phase of one verify: an ordered read of the differing buckets per table, from the
    checkpointed fold on, merged window by window and judged in batches.

    Both reads return ``(fold, key part..., compared value...[, id][, bucket])`` sorted by fold, the key as
    the destination's collation sees it: the keys it pairs are neighbours. Rows equal on both tables
    cancel out in set differences (in C); only folds with a difference are looked at in Python.

    :param record: stores a batch's findings (after checking the lock).
    :param checkpoint: writes the checkpoint (``force`` even within ``checkpoint_second`` of the last).
    """

    def __init__(
        self,
        verify: Verify,
        sides: dict[str, TableSide],
        readers: dict[str, TableSide],
        judge: Judge,
        folds: dict[str, str],
        settings: ReconcileSettings,
        budget: Budget,
        record: Callable[[Tally], None],
        checkpoint: Callable[[bool], None],
    ) -> None:
        self.verify = verify
        self.sides = sides
        self.readers = readers
        self.judge = judge
        self.folds = folds
        self.settings = settings
        self.budget = budget
        self.record = record
        self.checkpoint = checkpoint
        self.width = width = len(sides[SOURCE].keys)
        self.count = count = len(sides[SOURCE].columns)
        self.with_id = sides[SOURCE].id_column is not None
        self._compared = itemgetter(slice(0, 1 + width + count))  # fold, key parts, compared values
        self._tally = Tally()
        self._unmatched: list[SourceRow] = []
        self._lost: list[Key] = []

    def run(self) -> bool:
        """Go on from the checkpointed range and fold; True when the sweep finished, False when paused."""
        verify = self.verify
        ranges = list(pairwise([*verify.ranges, GROUPS]))
        while verify.range_index < len(ranges):
            start, end = ranges[verify.range_index]
            if not self._read_range(start, end, verify.position):
                return False
            verify.range_index, verify.position = verify.range_index + 1, None
        return True

    def _read_range(self, start: int, end: int, position: bytes | None) -> bool:
        if not self._may_go_on():
            return False
        for role in SIDES:
            if not wait_for_load(self.readers[role], self.settings, self.budget):
                return False
        verify = self.verify
        buckets, exact = _bucket_filter(verify.differing_in(0, verify.buckets), verify.buckets)
        conditions = [buckets]
        if (start, end) != (0, GROUPS):
            conditions.append(f"{{g}} >= {start} AND {{g}} < {end}")
        if position is not None:
            conditions.append(f"{{f}} >= X'{position.hex()}'")
        reads: dict[str, OrderedRead] = {}
        try:
            # the destination's snapshot first: every source row is read after the destination rows
            for role in (DESTINATION, SOURCE):
                side = self.sides[role]
                sql = side.ordered_sql(verify.buckets, self.folds[role], " AND ".join(conditions), not exact)
                reads[role] = OrderedRead(side, sql, snapshot=role == DESTINATION)
            return self._merge(reads, exact)
        finally:
            for role, read in reads.items():
                read.close(self.readers[role])
                self.budget.outcome.rows_compared[role] += read.rows_read

    def _merge(self, reads: dict[str, OrderedRead], exact: bool) -> bool:
        keep = None if exact else (lambda row, differs=self.verify.differs: differs(int(row[-1])))
        ours, theirs = _Window(reads[SOURCE].batches(), keep), _Window(reads[DESTINATION].batches(), keep)
        window = max(100, min(WINDOW, 20 * self.settings.fetch_batch))
        size = window
        while True:
            ours.fill(size)
            theirs.fill(size)
            if ours.done and theirs.done and not ours.rows and not theirs.rows:
                break
            open_ends = [w.rows[-1][0] for w in (ours, theirs) if not w.done and w.rows]
            bound = min(open_ends) if open_ends else None
            our_rows, their_rows = ours.take_below(bound), theirs.take_below(bound)
            if not our_rows and not their_rows:
                size *= 2  # one fold holds more rows than a window: take more
                continue
            size = window
            self._window(our_rows, their_rows)
            if self._pending() >= self.settings.fetch_batch and bound is not None:
                if not self._may_go_on():
                    return False  # this batch is read again by the next run, from the position before it
                self._judge(bound)
        if self._pending() and not self._may_go_on():
            return False
        self._judge(None)
        return True

    def _window(self, ours: list[tuple[Any, ...]], theirs: list[tuple[Any, ...]]) -> None:
        """Find the folds of a window with a difference (rows equal on both tables cancel out), judge them."""
        compared = self._compared
        a, b = list(map(compared, ours)), list(map(compared, theirs))
        set_a, set_b = set(a), set(b)
        if len(set_a) == len(a) and len(set_b) == len(b):
            only_a, only_b = set_a - set_b, set_b - set_a
        else:  # a row twice on one table: count them
            counted_a, counted_b = Counter(a), Counter(b)
            only_a, only_b = set(counted_a - counted_b), set(counted_b - counted_a)
        if not only_a and not only_b:
            return
        for fold in {r[0] for r in only_a} | {r[0] for r in only_b}:
            our_rows = ours[bisect_left(ours, fold, key=_FOLD) : bisect_right(ours, fold, key=_FOLD)]
            their_rows = theirs[bisect_left(theirs, fold, key=_FOLD) : bisect_right(theirs, fold, key=_FOLD)]
            self._fold(our_rows, their_rows)

    def _fold(self, ours: list[tuple[Any, ...]], theirs: list[tuple[Any, ...]]) -> None:
        """The rows of one folded key on both tables, with a difference among them."""
        judge, tally = self.judge, self._tally
        if not ours:
            self._lost.extend(self._key(r) for r in theirs)
            return
        if self.verify.sweep != 1:
            return
        if not theirs:
            rows = [self._source_row(r) for r in ours]
            if judge.folded:
                for row in rows:
                    judge.compare(row, [], tally)
            else:
                self._unmatched.extend(rows)
            return
        start, end = 1 + self.width, 1 + self.width + self.count
        held = [(self._key(r), tuple(r[start:end])) for r in theirs]
        for row in ours:
            judge.compare(self._source_row(row), held, tally)

    def _key(self, row: tuple[Any, ...]) -> Key:
        return row[1] if self.width == 1 else composite_key(row[1 : 1 + self.width])

    def _source_row(self, row: tuple[Any, ...]) -> SourceRow:
        start, end = 1 + self.width, 1 + self.width + self.count
        return self._key(row), tuple(row[start:end]), row[end] if self.with_id else None

    def _pending(self) -> int:
        return self._tally.size() + len(self._unmatched) + len(self._lost)

    def _judge(self, position: bytes | None) -> None:
        """Judge what needs asking again, record the batch, then move the position to ``position`` (the next
        fold; None: the end of the range). The batch's counts join the verify's together with the position,
        so a batch judged again after a crash counts once."""
        verify, judge, outcome = self.verify, self.judge, self.budget.outcome
        tally, unmatched, lost = self._tally, self._unmatched, self._lost
        judge.unmatched_sources(unmatched, tally)
        judge.destinations(lost, tally, final=verify.sweep == 2 or not judge.detect_deletes)
        if tally.size() or unmatched or lost:
            self.record(tally)
            for name in ("missing", "different", "deleted", "extra"):
                verify.found[name] += getattr(tally, name)
            verify.deferred += tally.deferred
            verify.paired |= tally.paired
            outcome.add(tally)
            for role in SIDES:
                outcome.chunks[role] += 1
        self._tally, self._unmatched, self._lost = Tally(), [], []
        if position is not None:
            verify.position = position
            self.checkpoint(False)

    def _may_go_on(self) -> bool:
        return all(self.budget.allows(role) for role in SIDES)


def _bucket_filter(listed: list[int], buckets: int) -> tuple[str, bool]:
    """A condition on the checksum bucket ``{b}`` picking the differing buckets, and whether it picks them
    exactly (else rows carry their bucket and the reader skips equal buckets itself)."""
    if len(listed) == buckets:
        return "{b} IS NOT NULL", True
    if len(listed) <= LISTED_BUCKETS:
        return f"{{b}} IN ({', '.join(map(str, listed))})", True
    if buckets - len(listed) <= LISTED_BUCKETS:
        differing = set(listed)
        equal = [b for b in range(buckets) if b not in differing]
        return f"{{b}} NOT IN ({', '.join(map(str, equal))})", True
    return "{b} IS NOT NULL", False
