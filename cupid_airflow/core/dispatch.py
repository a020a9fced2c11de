"""Deliver recorded mismatches: re-check, POST, record each result, park what keeps failing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DestinationReader, DestinationSpec
from cupid_airflow.core.delivery import CIRCUIT_OPEN_PREFIX, CallbackTarget, Delivery, DeliveryResult, deliver
from cupid_airflow.core.payload import PayloadError, source_values
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import PENDING, DeliveryStore, StoredItem

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where one destination's mismatches go, and how to re-check them before sending."""

    destination: str
    target: CallbackTarget
    recheck: tuple[ConnectionParams, DestinationSpec] | None = None


@dataclass
class RouteOutcome:
    """What one dispatch did for one destination."""

    delivered: int = 0
    resolved: int = 0
    failed: list[int] = field(default_factory=list)
    not_sent: int = 0
    errors: list[str] = field(default_factory=list)
    circuit_open: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "resolved": self.resolved,
            "failed": len(self.failed),
            "notSent": self.not_sent,
            "lastErrors": self.errors[-3:],
        }


class _ResultBuffer:
    """Records delivery results in the store in groups: one UPDATE per group, not per callback."""

    def __init__(self, store: DeliveryStore, outcome: RouteOutcome, flush_every: int = 200) -> None:
        self.store = store
        self.outcome = outcome
        self.flush_every = flush_every
        self.delivered: dict[int | None, list[int]] = {}  # by the answer's HTTP status
        self.failures: list[DeliveryResult] = []
        self.circuit_open = False

    def add(self, result: DeliveryResult) -> None:
        if result.ok:
            self.delivered.setdefault(result.http_status, []).append(result.item_id)
        elif result.error and result.error.startswith(CIRCUIT_OPEN_PREFIX):
            self.circuit_open = True
            self.outcome.not_sent += 1
            self.outcome.failed.append(result.item_id)
        else:
            self.failures.append(result)
        if sum(map(len, self.delivered.values())) + len(self.failures) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for http_status, ids in self.delivered.items():
            self.store.mark_delivered(ids, http_status)
            self.outcome.delivered += len(ids)
        self.delivered = {}
        for failure in self.failures:
            self.store.record_failure(failure.item_id, failure.http_status, failure.error or "failed")
            self.outcome.failed.append(failure.item_id)
            self.outcome.errors.append(f"item {failure.item_id}: {failure.error}")
        self.failures = []


def dispatch(
    store: DeliveryStore,
    config: str,
    routes: Sequence[Route],
    statuses: Sequence[str] = (PENDING,),
    *,
    batch_size: int = 2000,
    max_seconds: float = 600.0,
) -> dict[str, RouteOutcome]:
    """Deliver every item of ``config`` in ``statuses``, oldest first, destination by destination.

    Each result is recorded before the next group is sent; a receiver whose
    circuit breaker opens gets nothing more in this dispatch.
    """
    deadline = time.monotonic() + max_seconds
    outcomes: dict[str, RouteOutcome] = {}
    for route in routes:
        outcome = outcomes[route.destination] = RouteOutcome()
        after_id = 0
        while time.monotonic() < deadline:
            items = store.items(config, statuses, destination=route.destination, after_id=after_id, limit=batch_size)
            if not items:
                break
            after_id = items[-1].id
            if route.recheck is not None:
                items = _drop_consistent(store, route, items, outcome)
            buffer = _ResultBuffer(store, outcome)
            try:
                deliver(route.target, [Delivery(i.id, i.idempotency_key, i.body) for i in items], buffer.add)
            finally:
                buffer.flush()
            if buffer.circuit_open:
                outcome.circuit_open = True
                log.error(
                    "destination %s: circuit open after repeated failures; the rest waits for the next try",
                    route.destination,
                )
                break
    return outcomes


def park_failures(store: DeliveryStore, config: str, outcomes: dict[str, RouteOutcome]) -> int:
    """After the last try: park the items that failed, and every pending item of a destination whose
    circuit opened (not even fetched yet: its receiver keeps failing, so the failure pool takes them)."""
    failed = sorted(i for o in outcomes.values() for i in o.failed)
    parked = store.park(config, failed) if failed else 0
    for destination, outcome in outcomes.items():
        if outcome.circuit_open:
            parked += store.park(config, destination=destination)
    return parked


def _drop_consistent(
    store: DeliveryStore, route: Route, items: list[StoredItem], outcome: RouteOutcome
) -> list[StoredItem]:
    """Mark resolved the items whose destination row now matches; return the others."""
    assert route.recheck is not None
    params, spec = route.recheck
    reader = DestinationReader(spec, list(spec.columns))
    checkable = [i for i in items if i.type in (1, 2)]
    try:
        conn = connect(params, connect_timeout=5)
        try:
            found = reader.lookup(conn, sorted({i.row_key for i in checkable}))
        finally:
            conn.close()
    except Exception as err:  # the re-check is an optimisation: deliver anyway
        log.warning("destination %s: re-check skipped (%s: %s)", route.destination, type(err).__name__, err)
        return items
    resolved: list[int] = []
    for item in checkable:
        try:
            values = source_values(item.body)
        except PayloadError:
            continue
        expected = tuple(values.get(c) for c in spec.columns)
        if found.get(item.row_key) == expected:
            resolved.append(item.id)
    if resolved:
        store.mark_resolved(resolved)
        outcome.resolved += len(resolved)
        log.info(
            "destination %s: %d item(s) caught up before sending, nothing sent",
            route.destination,
            len(resolved),
        )
    dropped = set(resolved)
    return [i for i in items if i.id not in dropped]
