"""The cupid under test in the soak: the real core, driven the way the operators drive it."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.delivery import CallbackTarget
from cupid_airflow.core.dispatch import Route, dispatch, park_failures
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import PARKED, PENDING, DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun
from tests.support.soak import CALLBACK_TIMEOUT, COLUMNS, CONFIG, start_child

if TYPE_CHECKING:
    import subprocess

    from tests.support.soak import Arrival, Server


class CupidUnderTest:
    """Sync runs, deliver tries, failure-pool drains and child dispatchers over one config."""

    def __init__(self, server: Server, data: str, state: str, urls: dict[str, str]) -> None:
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
            destinations={
                name: (self.data_params, DestinationSpec(name=name, table=name, by_column="number", columns=COLUMNS))
                for name in self.urls
            },
            insert=True,
            update=True,
            update_column="update_time",
            update_scan_second=2,
            late_commit_second=2,
            lookup_connections=2,
        )

    def sync(self, full: bool = False) -> None:
        store = DeliveryStore(self.state_params)
        try:
            SyncRun(self.plan(), self.cursors, store, start_id=1 if full else None).run()
        finally:
            store.close()

    def deliver(self, last_try: bool) -> None:
        _deliver(self.arguments, (PENDING,), park=last_try)

    def drain(self) -> None:
        _deliver(self.arguments, (PARKED,), park=False)

    def start_child(self) -> subprocess.Popen[bytes]:
        return start_child(self.arguments)

    def live(self) -> int:
        rows = _query(self.state_params, "SELECT COUNT(*) FROM cupid_delivery WHERE status IN ('pending', 'parked')")
        return int(rows[0][0])

    def store_violations(self, arrivals: dict[tuple[str, str], list[Arrival]]) -> list[str]:
        out = []
        rows = _query(self.state_params, "SELECT destination, row_key, status, attempts FROM cupid_delivery")
        attempts: Counter[tuple[str, str]] = Counter()
        for destination, key, status, tries in rows:
            name, text = destination.decode(), key.decode()
            if status.decode() in ("pending", "parked", "dead"):
                out.append(f"{name}/{text}: item left {status.decode()}")
            attempts[(name, text)] += int(tries)
        for (name, text), count in attempts.items():
            sent = len(arrivals.get((name, text), []))
            if count > sent:
                out.append(f"{name}/{text}: {count} attempts recorded, {sent} requests received")
        return out


def _params(server: Server, database: str) -> ConnectionParams:
    return ConnectionParams(server.host, server.port, server.user, server.password, database)


def _query(params: ConnectionParams, sql: str) -> list[tuple[Any, ...]]:
    from cupid_airflow.core.sql import connect

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
            CallbackTarget(url=url, timeout_second=CALLBACK_TIMEOUT, concurrency=3),
            (data, DestinationSpec(name=name, table=name, by_column="number", columns=COLUMNS)),
        )
        for name, url in arguments["urls"].items()
    ]


def _deliver(arguments: dict[str, Any], statuses: tuple[str, ...], park: bool) -> None:
    host, port, user, password = arguments["server"]
    store = DeliveryStore(ConnectionParams(host, port, user, password, arguments["state"]))
    try:
        store.ensure_schema()
        outcomes = dispatch(store, CONFIG, _routes(arguments), statuses, max_seconds=30)
        failed = [i for o in outcomes.values() for i in o.failed]
        if failed and park:
            park_failures(store, CONFIG, outcomes)
        if failed:
            raise RuntimeError(f"{len(failed)} callback(s) failed")
    finally:
        store.close()


def child_dispatch(arguments: dict[str, Any]) -> None:
    """A dispatcher in a child process: pending, then parked items (it may be SIGKILLed at any moment)."""
    for statuses in ((PENDING,), (PARKED,)):
        try:
            _deliver(arguments, statuses, park=False)
        except Exception:
            pass
