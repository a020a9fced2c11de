"""Deliver the delivery store's live items: claim, judge on the rows as they are now, POST, record.

Every destination (a *route*) is worked on at the same time, each with its own database
connections on a thread of its own, so a slow receiver or a slow database never holds up
another destination, and the HTTP event loop never waits on a database. For each batch:

1. claim live items with a lease (``DeliveryStore.claim``);
2. judge them against the current destination and source rows (``core.judge``): caught-up
   items end ``resolved`` and nothing is sent for them;
3. POST the others, ``workerNumber`` at a time, paced by the destination's shared rate limit;
   a POST starts only while the lease outlives its timeout, and leases are renewed as work goes;
4. record each attempt as it is answered (``DeliveryStore.record_attempts``), which ends
   delivered items and counts failures on the destination's shared circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from cupid_airflow.core.delivery import CallbackTarget, Delivery, DeliveryResult, open_session, post
from cupid_airflow.core.destinations import DestinationRegistry
from cupid_airflow.core.judge import DEAD, RESOLVED, SEND, Judge, JudgeSpec, Verdict
from cupid_airflow.core.store import PENDING, Attempt, Claim, ClaimedItem, DeliveryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import aiohttp

    from cupid_airflow.core.sql import ConnectionParams

log = logging.getLogger(__name__)

T = TypeVar("T")

FLUSH_SECOND = 0.05  # results wait at most this long before they are recorded
FLUSH_RESULTS = 200
GROUP_SECOND = 0.25  # items are judged in groups of about this much sending time; the next one while this one goes
GROUP_MAX = 500
CIRCUIT_OPEN = "circuit open"


@dataclass(frozen=True)
class Route:
    """Where one destination's items go, and where they are judged before sending."""

    destination: str
    target: CallbackTarget
    judge: JudgeSpec


@dataclass
class RouteOutcome:
    """What one dispatch did for one destination."""

    delivered: int = 0
    resolved: int = 0
    dead: int = 0
    sent: int = 0
    failed: list[int] = field(default_factory=list)
    not_sent: int = 0
    errors: list[str] = field(default_factory=list)
    circuit_open: bool = False
    tripped: bool = False  # the breaker opened in this dispatch (not a failed probe of an open circuit)
    error: str | None = None  # why the route stopped early (a database error, the circuit)

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "resolved": self.resolved,
            "dead": self.dead,
            "sent": self.sent,
            "failed": len(self.failed),
            "notSent": self.not_sent,
            "circuitOpen": self.circuit_open,
            "error": self.error,
            "lastErrors": self.errors[-3:],
        }


@dataclass(frozen=True)
class DispatchSettings:
    """How one dispatch behaves.

    :param statuses: which live items to send (``pending`` in the sync DAG, ``parked`` in the failure pool).
    :param max_seconds: no POST starts after this long; what is left waits for the next run.
    :param lease_second: how long a claim holds without renewal (a killed dispatcher's items wait this long).
    :param batch_size: items claimed at once.
    :param probe: send to a destination whose circuit is open (the failure pool's half-open probe);
        otherwise such a destination gets nothing until its cooldown ends.
    :param claimant: who dispatches, when its earlier attempts are known to have ended (an Airflow
        task instance: its retry takes over the claims a failed try left, see ``DeliveryStore.claim``).
    """

    statuses: tuple[str, ...] = (PENDING,)
    max_seconds: float = 600.0
    lease_second: float = 60.0
    batch_size: int = 500
    probe: bool = False
    claimant: str | None = None


class DispatchError(RuntimeError):
    """A destination's dispatch stopped on a database error; what was answered is recorded."""

    def __init__(self, message: str, outcomes: dict[str, RouteOutcome]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


def dispatch(
    state: ConnectionParams, config: str, routes: Sequence[Route], settings: DispatchSettings | None = None
) -> dict[str, RouteOutcome]:
    """Deliver the live items of ``config`` to every route at once; one outcome per destination.

    A route that stops on a database error keeps its error in its outcome (``error``) while the
    others go on; :class:`DispatchError` is raised at the end when any did.

    :raises RuntimeError: when called from inside a running event loop.
    """
    settings = settings or DispatchSettings()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("dispatch() runs its own event loop: call it from synchronous code or a worker thread")
    outcomes = asyncio.run(_dispatch(state, config, routes, settings))
    broken = {name: o.error for name, o in outcomes.items() if o.error and not o.circuit_open}
    if broken:
        raise DispatchError("; ".join(f"destination {n}: {e}" for n, e in broken.items()), outcomes)
    return outcomes


async def _dispatch(
    state: ConnectionParams, config: str, routes: Sequence[Route], settings: DispatchSettings
) -> dict[str, RouteOutcome]:
    deadline = time.monotonic() + settings.max_seconds
    runs = [_RouteRun(state, config, route, settings, deadline) for route in routes]
    await asyncio.gather(*(run.run() for run in runs))
    return {run.route.destination: run.outcome for run in runs}


class _RouteRun:
    """One destination's share of a dispatch."""

    def __init__(
        self, state: ConnectionParams, config: str, route: Route, settings: DispatchSettings, deadline: float
    ) -> None:
        self.config = config
        self.route = route
        self.target = route.target
        self.settings = settings
        self.deadline = deadline
        self.outcome = RouteOutcome()
        self.store = DeliveryStore(state)
        self.registry = DestinationRegistry(state)
        self.judge = Judge(route.judge)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"cupid-db-{route.destination}")
        # results are written on a thread and connections of their own, while the next group is judged and sent
        self.results_store = DeliveryStore(state)
        self.results_registry = DestinationRegistry(state)
        self.results_thread = ThreadPoolExecutor(1, thread_name_prefix=f"cupid-results-{route.destination}")
        self.consecutive_failures = 0
        self.after_id = 0
        self.retry_at: dict[int, float] = {}  # items answered 429: when their Retry-After has passed
        self.stop_sending: str | None = None
        self.pace_next = 0.0  # monotonic time of the next reserved rate-limit slot
        self.hold_until = 0.0  # monotonic time before which nothing is sent (a 429's Retry-After)
        self.mean_elapsed = 0.05  # seconds a POST took lately (moving mean), which sizes the judged groups

    async def db(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run database work on this route's own thread (its connections live there)."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, lambda: work(*args, **kwargs))

    async def results_db(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run the writing of results on their own thread (``results_store``, ``results_registry``)."""
        return await asyncio.get_running_loop().run_in_executor(self.results_thread, lambda: work(*args, **kwargs))

    async def run(self) -> None:
        name = self.route.destination
        try:
            async with open_session(self.target) as session:
                await self._batches(session)
        except Exception as err:
            self.outcome.error = f"{type(err).__name__}: {err}"[:1000]
            log.error("destination %s: dispatch stopped: %s", name, self.outcome.error)
        finally:
            await self.db(self._close)
            await self.results_db(self._close_results)
            self.thread.shutdown(wait=False)
            self.results_thread.shutdown(wait=False)

    def _close(self) -> None:
        self.judge.close()
        self.store.close()
        self.registry.close()

    def _close_results(self) -> None:
        self.results_store.close()
        self.results_registry.close()

    async def _batches(self, session: aiohttp.ClientSession) -> None:
        config, name, settings = self.config, self.route.destination, self.settings
        while time.monotonic() < self.deadline and self.stop_sending is None:
            circuit = await self.db(self.registry.circuit, config, name)
            half_open = circuit.opened
            if circuit.open_for_second > 0 and not settings.probe:
                self.outcome.circuit_open = True
                self.outcome.error = f"{CIRCUIT_OPEN}: {circuit.last_error or 'repeated failures'}"
                return
            if circuit.hold_second > 0 and not self.target.rate_limit_per_second:
                if time.monotonic() + circuit.hold_second >= self.deadline:
                    return
                await asyncio.sleep(circuit.hold_second)
            limit = 1 if half_open else settings.batch_size
            claim = await self.db(
                self.store.claim,
                config,
                name,
                settings.statuses,
                limit=limit,
                lease_second=settings.lease_second,
                after_id=self.after_id,
                claimant=settings.claimant,
            )
            if not claim.items:
                claim = await self._after_retry_after(limit)
                if not claim.items:
                    return
            else:
                self.after_id = claim.items[-1].id  # one pass: an item is tried once per dispatch (but see 429)
            try:
                await self._batch(session, claim)
            finally:
                await self.db(self.store.release, claim)
            if half_open and self.outcome.sent and self.consecutive_failures:
                self.outcome.circuit_open = True
                await self.db(
                    self.registry.open_circuit, config, name, self.target.breaker_cooldown_second, "probe failed"
                )
                return

    async def _after_retry_after(self, limit: int) -> Claim:
        """Items a receiver answered 429 are tried again in this dispatch once their ``Retry-After`` has
        passed, when that fits in the time budget (otherwise the next run takes them)."""
        settings = self.settings
        fits = {i: at for i, at in self.retry_at.items() if at + self.target.timeout_second < self.deadline}
        self.retry_at = {}
        if not fits:
            return Claim(b"", [], 0.0)
        wait = max(fits.values()) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return await self.db(
            self.store.claim,
            self.config,
            self.route.destination,
            settings.statuses,
            limit=limit,
            lease_second=settings.lease_second,
            claimant=settings.claimant,
            ids=sorted(fits),
        )

    async def _batch(self, session: aiohttp.ClientSession, claim: Claim) -> None:
        """Work through one claimed batch in small groups, each judged just before it is sent: the next
        group is judged while this one is sent, and answers are recorded as they come, meanwhile."""
        keeper = _LeaseKeeper(self, claim)
        renewing = asyncio.create_task(keeper.run())
        writer = _Writer(self, keeper)
        writing = asyncio.create_task(writer.run())
        items = list(claim.items)
        ahead: asyncio.Task[list[Verdict]] | None = None
        try:
            ahead = self._judge_next(items)
            while ahead is not None:
                verdicts = await ahead
                ahead = self._judge_next(items) if self.allowed(keeper.claim) is None else None
                await self._settle(keeper.claim, verdicts)
                sends = [v for v in verdicts if v.action == SEND]
                if sends:
                    await _Sending(self, session, keeper, writer, sends).run()
                if writer.failure is not None:
                    break
            self.outcome.not_sent += len(items)
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            writer.close()
            await writing  # every answer is recorded before the batch's claim is released
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
        if writer.failure is not None:
            raise writer.failure

    def _judge_next(self, items: list[ClaimedItem]) -> asyncio.Task[list[Verdict]] | None:
        """Start judging the next group (taken off ``items``); None when nothing is left or may be sent."""
        if not items or self.stop_sending is not None:
            return None
        size = self.group_size()
        group = items[:size]
        del items[:size]

        async def judged() -> list[Verdict]:
            await self.wait_for_slots(len(group))
            return await self.db(self.judge.judge, group)

        return asyncio.create_task(judged())

    async def _settle(self, claim: Claim, verdicts: list[Verdict]) -> None:
        ended: dict[str, dict[int, str]] = {RESOLVED: {}, DEAD: {}}
        for verdict in verdicts:
            if verdict.action in ended:
                ended[verdict.action][verdict.item.id] = verdict.reason or verdict.action
        if ended[RESOLVED]:
            self.outcome.resolved += await self.db(self.store.settle, claim, RESOLVED, ended[RESOLVED])
        if ended[DEAD]:
            self.outcome.dead += await self.db(self.store.settle, claim, DEAD, ended[DEAD])

    def group_size(self) -> int:
        """Items judged at once: about ``GROUP_SECOND`` of sending, so a body is never read long before it goes."""
        target = self.target
        size = target.concurrency * GROUP_SECOND / max(self.mean_elapsed, 0.001)
        if target.rate_limit_per_second:
            size = min(size, target.rate_limit_per_second * GROUP_SECOND)
        return int(min(GROUP_MAX, max(1, size)))

    def allowed(self, claim: Claim) -> str | None:
        """Why no POST may start now (None: it may)."""
        now = time.monotonic()
        if self.stop_sending:
            return self.stop_sending
        if now + self.target.timeout_second > self.deadline:
            return "the run's time budget is spent"
        if now + self.target.timeout_second + 1 > claim.valid_until:
            return "the claim's lease would run out during the request"
        return None

    async def wait_for_slots(self, count: int) -> None:
        """Before a group is judged: wait out any Retry-After, and reserve its slots of the shared rate limit."""
        if self.hold_until > time.monotonic():
            await asyncio.sleep(self.hold_until - time.monotonic())
        rate = self.target.rate_limit_per_second
        if not rate:
            return
        delay = await self.db(self.registry.reserve, self.config, self.route.destination, count, rate)
        self.pace_next = time.monotonic() + delay
        if delay > 0:
            await asyncio.sleep(delay)

    async def pace(self) -> None:
        """Wait for this send's slot: any Retry-After, and the reserved rate-limit slot (``1 / rate`` apart)."""
        if self.hold_until > time.monotonic():
            await asyncio.sleep(self.hold_until - time.monotonic())
        rate = self.target.rate_limit_per_second
        if not rate:
            return
        start = self.pace_next
        self.pace_next = max(start, time.monotonic()) + 1.0 / rate
        if start > time.monotonic():
            await asyncio.sleep(start - time.monotonic())

    def count(self, result: DeliveryResult) -> None:
        self.mean_elapsed = 0.8 * self.mean_elapsed + 0.2 * result.elapsed_second
        if result.ok:
            self.consecutive_failures = 0
        elif result.counts_for_breaker:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.target.breaker_threshold and self.stop_sending is None:
                self.stop_sending = f"{CIRCUIT_OPEN}: {self.consecutive_failures} consecutive failures, not sent"
                self.outcome.circuit_open = self.outcome.tripped = True
                log.error("destination %s: circuit open after repeated failures", self.route.destination)
        if result.retry_after_second:
            self.hold_until = max(self.hold_until, time.monotonic() + result.retry_after_second)


class _LeaseKeeper:
    """Renews a batch's claim while it is worked on; ``claim.valid_until`` follows each renewal."""

    def __init__(self, run: _RouteRun, claim: Claim) -> None:
        self.run_ = run
        self.claim = claim

    async def run(self) -> None:
        run = self.run_
        interval = max(0.5, run.settings.lease_second / 3)
        while True:
            await asyncio.sleep(interval)
            self.claim = await run.db(run.store.renew, self.claim, run.settings.lease_second)


class _Sending:
    """The POSTs of one judged group, ``workerNumber`` at a time; each answer goes to the batch's writer."""

    def __init__(
        self,
        run: _RouteRun,
        session: aiohttp.ClientSession,
        keeper: _LeaseKeeper,
        writer: _Writer,
        sends: list[Verdict],
    ) -> None:
        self.run_ = run
        self.session = session
        self.keeper = keeper
        self.writer = writer
        self.queue = list(reversed(sends))

    async def run(self) -> None:
        run = self.run_
        workers = [asyncio.create_task(self._worker()) for _ in range(min(run.target.concurrency, len(self.queue)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
        run.outcome.not_sent += len(self.queue)

    async def _worker(self) -> None:
        run = self.run_
        while self.queue:
            reason = run.allowed(self.keeper.claim)
            if reason is not None:
                if reason.startswith(CIRCUIT_OPEN):
                    run.outcome.errors.append(reason)
                return
            verdict = self.queue.pop()
            await run.pace()
            if run.allowed(self.keeper.claim) is not None:
                self.queue.append(verdict)
                return
            assert verdict.body is not None
            result = await post(
                self.session, run.target, Delivery(verdict.item.id, verdict.body.idempotency_key, verdict.body.body)
            )
            run.count(result)
            run.outcome.sent += 1
            self.writer.add(verdict, result)


class _Writer:
    """Records a batch's answers as they come (every ``FLUSH_SECOND``, or ``FLUSH_RESULTS`` answers), on the
    route's results thread; a failure to record stops all sending of the route."""

    def __init__(self, run: _RouteRun, keeper: _LeaseKeeper) -> None:
        self.run_ = run
        self.keeper = keeper
        self.answered: list[tuple[Verdict, DeliveryResult]] = []
        self.wake = asyncio.Event()
        self.done = False
        self.failure: BaseException | None = None

    def add(self, verdict: Verdict, result: DeliveryResult) -> None:
        self.answered.append((verdict, result))
        if len(self.answered) >= FLUSH_RESULTS:
            self.wake.set()

    def close(self) -> None:
        self.done = True
        self.wake.set()

    async def run(self) -> None:
        run = self.run_
        while True:
            if not self.done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), FLUSH_SECOND)
            self.wake.clear()
            batch, self.answered = self.answered, []
            if batch:
                try:
                    await self._record(batch)
                except Exception as err:  # nothing more is sent: its answer could not be recorded
                    self.failure = err
                    run.stop_sending = f"recording results failed: {type(err).__name__}: {err}"
                    return
            if self.done and not self.answered:
                return

    async def _record(self, batch: list[tuple[Verdict, DeliveryResult]]) -> None:
        run = self.run_
        attempts = [
            Attempt(
                item_id=v.item.id,
                ok=r.ok,
                type=v.type,
                idempotency_key=v.body.idempotency_key if v.body else "",
                version=v.version,
                body=v.body.body if v.body else b"",
                http_status=r.http_status,
                error=r.error,
                elapsed_second=r.elapsed_second,
                retry_after_second=r.retry_after_second,
            )
            for v, r in batch
        ]
        run.outcome.delivered += await run.results_db(run.results_store.record_attempts, self.keeper.claim, attempts)
        for verdict, result in batch:
            item_id = verdict.item.id
            if result.ok:
                if item_id in run.outcome.failed:  # delivered on its retry after a Retry-After
                    run.outcome.failed.remove(item_id)
            else:
                if item_id not in run.outcome.failed:
                    run.outcome.failed.append(item_id)
                run.outcome.errors.append(f"item {item_id}: {result.error}")
                if result.retry_after_second is not None:
                    run.retry_at[item_id] = time.monotonic() + result.retry_after_second
        await self._count_on_circuit([r for _, r in batch])

    async def _count_on_circuit(self, results: list[DeliveryResult]) -> None:
        run = self.run_
        counted = [r for r in results if r.ok or r.counts_for_breaker]
        if counted:
            succeeded = any(r.ok for r in counted)
            after = 0
            for result in reversed(counted):
                if result.ok:
                    break
                after += 1
            last_error = next((r.error for r in reversed(counted) if not r.ok), None)
            await run.results_db(
                run.results_registry.count_sends,
                run.config,
                run.route.destination,
                succeeded=succeeded,
                failures_after=after,
                threshold=run.target.breaker_threshold,
                cooldown_second=run.target.breaker_cooldown_second,
                last_error=last_error,
            )
        held = max((r.retry_after_second or 0.0 for r in results), default=0.0)
        if held:
            await run.results_db(run.results_registry.hold_off, run.config, run.route.destination, held)


@dataclass
class Parked:
    """What :func:`after_try` parked.

    :param by_circuit: items of destinations whose circuit is open (their receiver keeps failing).
    :param after_last_try: items that failed through every try.
    :param opened: destinations whose circuit opened in this try (worth an alert).
    """

    by_circuit: int = 0
    after_last_try: int = 0
    opened: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.by_circuit + self.after_last_try


def after_try(
    store: DeliveryStore,
    registry: DestinationRegistry,
    config: str,
    outcomes: dict[str, RouteOutcome],
    *,
    last_try: bool,
    cooldown_second: dict[str, float],
) -> Parked:
    """What the sync DAG's delivery does after each try: park what it will not retry.

    A destination whose circuit is open (it tripped in this try, or was open already) has its
    whole pending backlog parked at once, without retries: the failure pool probes it, and
    later runs park its new items the same way until a probe gets through. After the last try,
    what failed is parked; a destination that delivered nothing gets its circuit opened too.
    """
    parked = Parked()
    for destination, outcome in outcomes.items():
        if outcome.circuit_open:
            parked.by_circuit += store.park(config, destination)
            if outcome.tripped:
                parked.opened.append(destination)
        elif outcome.failed and last_try:
            parked.after_last_try += store.park(config, destination, sorted(set(outcome.failed)))
            if not outcome.delivered:
                reason = outcome.errors[-1] if outcome.errors else "deliveries failed through every try"
                registry.open_circuit(config, destination, cooldown_second.get(destination, 60.0), reason)
                parked.after_last_try += store.park(config, destination)
                parked.opened.append(destination)
    return parked


def still_failing(outcomes: dict[str, RouteOutcome]) -> list[int]:
    """Items that failed at a destination whose circuit is not open: what an Airflow retry is for."""
    return sorted(i for o in outcomes.values() if not o.circuit_open for i in o.failed)
