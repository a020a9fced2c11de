"""The two passes of a verify: checksums of hash buckets, then one ordered read of the differing buckets."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from itertools import groupby, pairwise
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.reconcile.gates import adapt, wait_for_load
from cupid_airflow.core.reconcile.judge import Tally
from cupid_airflow.core.reconcile.keys import composite_key
from cupid_airflow.core.reconcile.state import DESTINATION, SIDES, SOURCE
from cupid_airflow.core.reconcile.table import ReconcileError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from cupid_airflow.core.reconcile.gates import Budget
    from cupid_airflow.core.reconcile.judge import Judge
    from cupid_airflow.core.reconcile.keys import Key, Pk
    from cupid_airflow.core.reconcile.run import ReconcileSettings
    from cupid_airflow.core.reconcile.state import Verify
    from cupid_airflow.core.reconcile.table import TableSide

log = logging.getLogger(__name__)

LISTED_BUCKETS = 20000  # the most bucket numbers one ordered read names in SQL; beyond, it filters as it reads
_END = object()


# -- pass 1: checksums ------------------------------------------------------------------------------
def checksum_pass(
    verify: Verify,
    sides: dict[str, TableSide],
    settings: ReconcileSettings,
    budget: Budget,
    checkpoint: Callable[[], None],
) -> None:
    """Sum both tables, chunk by chunk in their own primary-key order, each in its own thread; ``checkpoint``
    is called every ``checkpoint_second`` meanwhile (it writes only when chunks were added)."""
    work = {role: (lambda side=sides[role]: _checksum_side(verify, side, settings, budget)) for role in SIDES}
    with ThreadPoolExecutor(len(work), thread_name_prefix="cupid-reconcile") as pool:
        futures = {pool.submit(job): role for role, job in work.items()}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=settings.checkpoint_second, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in done):
                    budget.stop.set()
                elif pending:
                    checkpoint()
        except BaseException:
            budget.stop.set()
            raise
    for future, role in futures.items():
        error = future.exception()
        if error is not None:
            raise ReconcileError(f"{role} side: {type(error).__name__}: {error}") from error


def _checksum_side(verify: Verify, side: TableSide, settings: ReconcileSettings, budget: Budget) -> None:
    progress = verify.sides[side.role]
    counts, xors = verify.counts, verify.xors
    sign = 1 if side.role == SOURCE else -1
    size = progress.chunk_size or settings.chunk_size
    while not progress.done and budget.allows(side.role):
        if not wait_for_load(side, settings, budget):
            break
        began = time.monotonic()
        high = side.boundary(progress.last, size)
        result = side.checksum(progress.last, high, verify.buckets, verify.method)
        elapsed = max(time.monotonic() - began, 1e-3)
        rows = nulls = 0
        # the chunk's sums and the position after it change together: a checkpoint never holds half a chunk
        with budget.lock:
            for bucket, count, xor in result:
                n = int(count)
                rows += n
                if bucket is None:
                    nulls += n
                    continue
                b = int(bucket)
                counts[b] += sign * n
                xors[b] ^= int(xor)
            progress.null_keys += nulls
            progress.rows += rows
            progress.chunks += 1
            progress.last = high
            progress.done = high is None
            budget.outcome.chunks[side.role] += 1
            budget.outcome.rows_checked[side.role] += rows
        if nulls:
            log.warning("%s table %s: %d row(s) with a NULL key cannot be compared", side.role, side.table_name, nulls)
        size = adapt(size, rows, elapsed, settings)
        progress.chunk_size = size


# -- pass 2: the rows of the differing buckets, in bucket order -----------------------------------------
class OrderedRead:
    """One table's rows of some buckets, in bucket order, read ahead in a thread of its own.

    The statement holds its connection until the end; closing early stops the statement on the server
    (``KILL QUERY`` through ``killer``, the side's other connection) and drops the connection.
    """

    def __init__(self, side: TableSide, sql: str, depth: int = 4) -> None:
        self.side = side
        side.prepare_sort()
        self.connection_id = side.connection_id()
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

    def rows(self) -> Iterator[tuple[Any, ...]]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise ReconcileError(f"{self.side.role} side: {type(item).__name__}: {item}") from item
            self.rows_read += len(item)
            yield from item

    def close(self, killer: TableSide) -> None:
        if not self._thread.is_alive():
            return
        self._stopped.set()
        killer.kill_query(self.connection_id)
        self._thread.join(30)


def _buckets(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
    for bucket, group in groupby(rows, key=itemgetter(0)):
        yield int(bucket), list(group)


def merged(
    source: Iterator[tuple[Any, ...]], destination: Iterator[tuple[Any, ...]]
) -> Iterator[tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Both tables' rows bucket by bucket: ``(bucket, source rows, destination rows)``."""
    ours, theirs = _buckets(source), _buckets(destination)
    a, b = next(ours, None), next(theirs, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            yield a[0], a[1], []
            a = next(ours, None)
        elif a is None or b[0] < a[0]:
            yield b[0], [], b[1]
            b = next(theirs, None)
        else:
            yield a[0], a[1], b[1]
            a, b = next(ours, None), next(theirs, None)


def candidates(
    source_rows: list[tuple[Any, ...]], destination_rows: list[tuple[Any, ...]], width: int
) -> tuple[list[tuple[Key, Pk]], list[Key]]:
    """The candidates of one bucket: source rows whose (key, row hash) the destination does not hold, with their
    primary keys, and keys of destination rows no source row of the bucket has. A destination row whose key
    the source has with another hash (or a second time) makes that source row a candidate instead."""
    if width == 1:
        ours = [(r[1], r[2]) for r in source_rows]
        theirs = [(r[1], r[2]) for r in destination_rows]
    else:
        ours = [(composite_key(r[1 : 1 + width]), r[1 + width]) for r in source_rows]
        theirs = [(composite_key(r[1 : 1 + width]), r[1 + width]) for r in destination_rows]
    a, b = set(ours), set(theirs)
    if len(a) == len(ours) and len(b) == len(theirs):
        only_ours, only_theirs = a - b, b - a
    else:  # a key and hash twice on one side: count them
        counted_a, counted_b = Counter(ours), Counter(theirs)
        only_ours, only_theirs = set(counted_a - counted_b), set(counted_b - counted_a)
    if not only_ours and not only_theirs:
        return [], []
    wanted = {k for k, _ in only_ours}
    our_keys = {k for k, _ in ours}
    lost: list[Key] = []
    for key, _ in only_theirs:
        if key in our_keys:
            wanted.add(key)
        else:
            lost.append(key)
    found = [(key, tuple(row[2 + width :])) for (key, _), row in zip(ours, source_rows, strict=True) if key in wanted]
    return found, lost


class ComparePass:
    """The compare phase of one verify: ordered reads of the differing buckets, judged in batches.

    :param record: stores a batch's findings (after checking the lock) and returns how many are new.
    :param checkpoint: writes the checkpoint (``force`` even within ``checkpoint_second`` of the last).
    """

    def __init__(
        self,
        verify: Verify,
        sides: dict[str, TableSide],
        readers: dict[str, TableSide],
        judge: Judge,
        settings: ReconcileSettings,
        budget: Budget,
        record: Callable[[Tally], None],
        checkpoint: Callable[[bool], None],
    ) -> None:
        self.verify = verify
        self.sides = sides
        self.readers = readers
        self.judge = judge
        self.settings = settings
        self.budget = budget
        self.record = record
        self.checkpoint = checkpoint
        self.width = len(sides[SOURCE].keys)

    def run(self) -> bool:
        """Go on from the checkpointed bucket; True when the current sweep finished, False when paused."""
        verify = self.verify
        ranges = [*verify.ranges, verify.buckets]
        for start, end in pairwise(ranges):
            if end <= verify.position:
                continue
            if not self._read_range(max(start, verify.position), end):
                return False
        return True

    def _read_range(self, start: int, end: int) -> bool:
        verify = self.verify
        listed = verify.differing_in(start, end)
        if not listed:
            verify.position = end
            return True
        if not self._may_go_on():
            return False
        for role in SIDES:
            if not wait_for_load(self.readers[role], self.settings, self.budget):
                return False
        where, filtered = _bucket_filter(start, end, listed)
        reads = {
            role: OrderedRead(
                self.sides[role],
                self.sides[role].ordered_sql(verify.buckets, verify.method, where, with_pk=role == SOURCE),
            )
            for role in SIDES
        }
        try:
            finished = self._judge_range(reads, filtered, end)
        finally:
            for role, read in reads.items():
                read.close(self.readers[role])
                self.budget.outcome.rows_compared[role] += read.rows_read
        if finished:
            verify.position = end
        return finished

    def _judge_range(self, reads: dict[str, OrderedRead], filtered: bool, end: int) -> bool:
        verify, batch = self.verify, self.settings.fetch_batch
        sweep_one = verify.sweep == 1
        ours: list[tuple[Key, Pk]] = []
        theirs: list[Key] = []
        for bucket, source_rows, destination_rows in merged(reads[SOURCE].rows(), reads[DESTINATION].rows()):
            if not filtered and not verify.differs(bucket):
                continue
            found, lost = candidates(source_rows, destination_rows, self.width)
            if sweep_one:
                ours.extend(found)
            theirs.extend(lost)
            if len(ours) >= batch or len(theirs) >= batch:
                if not self._may_go_on():
                    return False  # this batch is read again by the next run, from the position before it
                self._judge(ours, theirs, bucket + 1)
                ours, theirs = [], []
        if (ours or theirs) and not self._may_go_on():
            return False
        self._judge(ours, theirs, end)
        return True

    def _judge(self, ours: list[tuple[Key, Pk]], theirs: list[Key], next_bucket: int) -> None:
        """Judge and record one batch, then move the position past it (the batch's counts join the verify's
        together with the position, so a batch judged again after a crash is counted once)."""
        verify, judge, outcome = self.verify, self.judge, self.budget.outcome
        if ours or theirs:
            tally = Tally()
            detected_at = judge.now()
            judge.sources(ours, tally, detected_at)
            final = verify.sweep == 2 or not judge.detect_deletes
            judge.destinations(theirs, tally, detected_at, final=final)
            self.record(tally)
            for name in ("missing", "different", "deleted", "extra"):
                verify.found[name] += getattr(tally, name)
            verify.deferred += tally.deferred
            verify.paired |= tally.paired
            outcome.add(tally)
            for role in SIDES:
                outcome.chunks[role] += 1
        verify.position = next_bucket
        self.checkpoint(False)

    def _may_go_on(self) -> bool:
        return all(self.budget.allows(role) for role in SIDES)


def _bucket_filter(start: int, end: int, listed: list[int]) -> tuple[str, bool]:
    """A condition on the bucket ``{b}`` picking the differing buckets of ``start <= b < end``, and whether it
    picks them exactly (else the reader skips equal buckets itself)."""
    in_range = f"{{b}} >= {start} AND {{b}} < {end}"
    if len(listed) == end - start:
        return in_range, True
    if len(listed) <= LISTED_BUCKETS:
        return f"{{b}} IN ({', '.join(map(str, listed))})", True
    if end - start - len(listed) <= LISTED_BUCKETS:
        differing = set(listed)
        equal = [b for b in range(start, end) if b not in differing]
        return f"{in_range} AND {{b}} NOT IN ({', '.join(map(str, equal))})", True
    return in_range, False
