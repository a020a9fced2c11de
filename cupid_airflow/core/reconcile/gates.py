"""What a reconcile run may still do (time, chunk queries, a stop signal), and the load gates it waits at."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cupid_airflow.core.reconcile.run import ReconcileOutcome, ReconcileSettings
    from cupid_airflow.core.reconcile.table import TableSide

log = logging.getLogger(__name__)


class Budget:
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


def busy_reasons(side: TableSide, settings: ReconcileSettings) -> list[str]:
    """Why this side's server is too busy for the next query now (empty when it is not)."""
    busy = []
    if settings.max_threads_running is not None:
        running = side.threads_running()
        if running is not None and running > settings.max_threads_running:
            busy.append(f"Threads_running {running} > {settings.max_threads_running}")
    if settings.max_replica_lag_second is not None:
        lag = side.replica_lag()
        if lag is not None and lag > settings.max_replica_lag_second:
            busy.append(f"replica lag {lag} s > {settings.max_replica_lag_second} s")
    return busy


def wait_for_load(side: TableSide, settings: ReconcileSettings, budget: Budget) -> bool:
    """Wait while this side's server is too busy; False when the run's time ran out meanwhile.

    Waiting writes nothing: checkpoints follow progress, not time.
    """
    if settings.max_threads_running is None and settings.max_replica_lag_second is None:
        return True
    while True:
        busy = busy_reasons(side, settings)
        if not busy:
            return True
        if not budget.in_time():
            return False
        log.info("reconcile waits for the %s server: %s", side.role, "; ".join(busy))
        budget.stop.wait(settings.wait_second)
        with budget.lock:
            budget.outcome.waited_second += settings.wait_second


def adapt(size: int, rows: int, elapsed: float, settings: ReconcileSettings) -> int:
    """The next chunk size: what the last chunk's rate says fits the target time, growing at most 8x."""
    wanted = rows / elapsed * settings.target_chunk_second if rows else size * 8
    return int(min(settings.max_chunk_size, max(settings.min_chunk_size, min(wanted, size * 8))))
