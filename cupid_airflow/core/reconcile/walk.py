"""The checksum pass of a verify: both tables summed per hash bucket, chunk by chunk, each in its own thread."""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from cupid_airflow.core.reconcile.gates import adapt, wait_for_load
from cupid_airflow.core.reconcile.state import SIDES, SOURCE
from cupid_airflow.core.reconcile.table import ReconcileError

if TYPE_CHECKING:
    from collections.abc import Callable

    from cupid_airflow.core.reconcile.gates import Budget
    from cupid_airflow.core.reconcile.run import ReconcileSettings
    from cupid_airflow.core.reconcile.state import Verify
    from cupid_airflow.core.reconcile.table import TableSide

log = logging.getLogger(__name__)


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
