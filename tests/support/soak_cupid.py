"""The cupid under test in the soak: the real core, driven the way the operators drive it."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.delivery import CallbackTarget
from cupid_airflow.core.destinations import DestinationRegistry
from cupid_airflow.core.dispatch import DispatchSettings, Route, after_try, dispatch, still_failing
from cupid_airflow.core.judge import JudgeSpec
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import PARKED, PENDING, DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun
from tests.support.soak import CALLBACK_TIMEOUT, COLUMNS, CONFIG, LATE_COMMIT_SECOND, start_child

if TYPE_CHECKING:
    import random
    import subprocess

    from tests.support.soak import Arrival, Server

LEASE_SECOND = 4.0


class CupidUnderTest:
    """Sync runs, deliver tries, failure-pool drains and child dispatchers over one config."""

    def __init__(self, server: Server, data: str, state: str, urls: dict[str, str], rng: random.Random) -> None:
        self.rng = rng
        self.arguments = {
            "server": [server.host, server.port, server.user, server.password],
            "data": data,
            "state": state,
            "urls": urls,
        }
        self.data_params = _params(server, data)
        self.state_params = _params(server, state)
        self.urls = urls
        self.cursors = MemoryCursorStore()

    def plan(self) -> SyncPlan:
        return SyncPlan(
            config=CONFIG,
            source=self.data_params,
            table="src",
            id_column="id",
            by_column="number",
            destinations={name: (self.data_params, _spec(name)) for name in self.urls},
            insert=True,
            update=True,
            update_column="update_time",
            update_scan_second=0,  # no overlap: a lost detection is not found again by the next scan
            late_commit_second=LATE_COMMIT_SECOND,
            lookup_connections=2,
            # random run lengths: some runs stop on their budget partway and the next one goes on
            batch_size=self.rng.choice([3, 17, 100, 5000]),
            max_rows_per_run=self.rng.choice([20, 200, 500_000]),
        )

    def sync(self, full: bool = False) -> bool:
        """One sync run (a rescan from the first id with ``full``); True when it caught up."""
        store = DeliveryStore(self.state_params)
        try:
            store.ensure_schema()
            return bool(SyncRun(self.plan(), self.cursors, store, start_id=1 if full else None).run()["caughtUp"])
        finally:
            store.close()

    def deliver(self, last_try: bool) -> None:
        _deliver(self.arguments, DispatchSettings((PENDING,), 30, LEASE_SECOND), last_try=last_try)

    def drain(self) -> None:
        _deliver(self.arguments, DispatchSettings((PARKED,), 30, LEASE_SECOND, probe=True), last_try=None)

    def start_child(self) -> subprocess.Popen[bytes]:
        return start_child(self.arguments)

    def live(self) -> int:
        rows = _query(self.state_params, "SELECT COUNT(*) FROM cupid_delivery WHERE live = 1")
        return int(rows[0][0])

    def store_violations(self, arrivals: dict[tuple[str, str], list[Arrival]]) -> list[str]:
        out = []
        rows = _query(
            self.state_params,
            "SELECT destination, row_key, status, attempts, claimed_until FROM cupid_delivery",
        )
        attempts: Counter[tuple[str, str]] = Counter()
        for destination, key, status, tries, claimed in rows:
            name, text = destination.decode(), key.decode()
            if status.decode() in ("pending", "parked", "dead"):
                out.append(f"{name}/{text}: item left {status.decode()}")
            if claimed is not None:
                out.append(f"{name}/{text}: item left claimed")
            attempts[(name, text)] += int(tries)
        live = _query(
            self.state_params,
            "SELECT destination, row_key, COUNT(*) FROM cupid_delivery WHERE live = 1 "
            "GROUP BY destination, row_key HAVING COUNT(*) > 1",
        )
        out += [f"{d.decode()}/{k.decode()}: {n} live items" for d, k, n in live]
        for (name, text), count in attempts.items():
            sent = len(arrivals.get((name, text), []))
            if count > sent:
                out.append(f"{name}/{text}: {count} attempts recorded, {sent} requests received")
        return out


def _spec(name: str) -> DestinationSpec:
    return DestinationSpec(name=name, table=name, by_column="number", columns=COLUMNS)


def _params(server: Server, database: str) -> ConnectionParams:
    return ConnectionParams(server.host, server.port, server.user, server.password, database)


def _query(params: ConnectionParams, sql: str) -> list[tuple[Any, ...]]:
    conn = connect(params)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return list(cur.fetchall())
    finally:
        conn.close()


def _routes(arguments: dict[str, Any]) -> list[Route]:
    host, port, user, password = arguments["server"]
    data = ConnectionParams(host, port, user, password, arguments["data"])
    return [
        Route(
            name,
            CallbackTarget(url=url, timeout_second=CALLBACK_TIMEOUT, concurrency=3, breaker_cooldown_second=1.0),
            JudgeSpec(CONFIG, name, data, "src", "id", "number", data, _spec(name)),
        )
        for name, url in arguments["urls"].items()
    ]


def _deliver(arguments: dict[str, Any], settings: DispatchSettings, *, last_try: bool | None) -> None:
    """One deliver try (``last_try`` True/False) or failure-pool drain (None), as the operator does it."""
    host, port, user, password = arguments["server"]
    state = ConnectionParams(host, port, user, password, arguments["state"])
    store = DeliveryStore(state)
    registry = DestinationRegistry(state)
    try:
        store.ensure_schema()
        routes = _routes(arguments)
        outcomes = dispatch(state, CONFIG, routes, settings)
        if last_try is not None:
            cooldowns = {r.destination: r.target.breaker_cooldown_second for r in routes}
            after_try(store, registry, CONFIG, outcomes, last_try=last_try, cooldown_second=cooldowns)
        failed = still_failing(outcomes) if last_try is not None else [i for o in outcomes.values() for i in o.failed]
        if failed:
            raise RuntimeError(f"{len(failed)} callback(s) failed")
    finally:
        store.close()
        registry.close()


def child_dispatch(arguments: dict[str, Any]) -> None:
    """A dispatcher in a child process: pending and parked items (it may be SIGKILLed at any moment)."""
    with contextlib.suppress(Exception):
        _deliver(arguments, DispatchSettings((PENDING, PARKED), 30, LEASE_SECOND, probe=True), last_try=None)
