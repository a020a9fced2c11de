"""The circuit breaker and parking, through the core dispatcher (real MariaDB, real sockets)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest

from cupid_airflow.core.destinations import DestinationRegistry
from cupid_airflow.core.dispatch import DispatchSettings, after_try, dispatch
from cupid_airflow.core.store import DeliveryStore
from tests.support.outbox import make_copy, make_tables, number_of, params_of, plant_items, route

if TYPE_CHECKING:
    from conftest import MariaDB

    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/callback"  # nothing listens there any more


def test_open_circuit_parks_the_destinations_whole_backlog_and_only_it(
    mariadb: MariaDB, fresh_database: str, receiver: Receiver
) -> None:
    make_tables(mariadb, fresh_database, 63)
    make_copy(mariadb, fresh_database, "dead_copy")
    params = params_of(mariadb, fresh_database)
    store = DeliveryStore(params)
    registry = DestinationRegistry(params)
    try:
        plant_items(store, "cfg", range(1, 61), "dead")
        plant_items(store, "cfg", range(61, 64), "alive")
        routes = [
            route(params, "dead", _refused_url(), table="dead_copy", concurrency=1, breaker_threshold=5),
            route(params, "alive", receiver.url, concurrency=1),
        ]
        outcomes = dispatch(params, "cfg", routes, DispatchSettings(batch_size=10))

        dead = outcomes["dead"]
        assert dead.circuit_open
        assert len(dead.failed) == 5  # one group judged: 5 refused, then the breaker stops sending
        assert dead.sent == 5
        assert outcomes["alive"].delivered == 3 and not outcomes["alive"].circuit_open
        assert store.counts("cfg")["pending"] == 60  # failures stay pending until the last try parks them
        assert registry.circuit("cfg", "dead").open_for_second > 0  # the shared breaker opened too

        parked = after_try(store, registry, "cfg", outcomes, last_try=False, cooldown_second={"dead": 60})
        assert (parked.by_circuit, parked.after_last_try, parked.opened) == (60, 0, ["dead"])
        counts = store.counts("cfg")
        assert (counts["pending"], counts["parked"], counts["delivered"]) == (0, 60, 3)
        attempts = sorted(item.attempts for item in store.items("cfg", ("parked",), limit=100))
        assert attempts == [0] * 55 + [1] * 5  # the 5 refused counted an attempt; the unsent did not

        # a later try: the open circuit parks new items at once, without sending
        outcomes = dispatch(params, "cfg", routes, DispatchSettings(batch_size=10))
        assert outcomes["dead"].circuit_open and outcomes["dead"].sent == 0
    finally:
        store.close()
        registry.close()


def test_without_an_open_circuit_only_the_failed_items_are_parked(mariadb: MariaDB, fresh_database: str) -> None:
    make_tables(mariadb, fresh_database, 6)
    params = params_of(mariadb, fresh_database)
    store = DeliveryStore(params)
    registry = DestinationRegistry(params)
    try:
        plant_items(store, "cfg", range(1, 5), "flaky")
        flaky = route(params, "flaky", _refused_url(), concurrency=1, breaker_threshold=50)
        outcomes = dispatch(params, "cfg", [flaky], DispatchSettings(batch_size=2))
        assert not outcomes["flaky"].circuit_open and len(outcomes["flaky"].failed) == 4
        plant_items(store, "cfg", range(5, 7), "flaky")  # recorded after the try: not this try's failures
        assert after_try(store, registry, "cfg", outcomes, last_try=False, cooldown_second={}).total == 0
        assert store.counts("cfg")["pending"] == 6
        # the last try parks its 4 failures; nothing was delivered, so the circuit opens and the backlog goes too
        parked = after_try(store, registry, "cfg", outcomes, last_try=True, cooldown_second={"flaky": 60})
        assert (parked.by_circuit, parked.after_last_try, parked.opened) == (0, 6, ["flaky"])
        assert registry.circuit("cfg", "flaky").open_for_second > 0
    finally:
        store.close()
        registry.close()


def test_the_failure_pool_sends_parked_items_oldest_first(
    mariadb: MariaDB, fresh_database: str, receiver: Receiver
) -> None:
    make_tables(mariadb, fresh_database, 8)
    params = params_of(mariadb, fresh_database)
    store = DeliveryStore(params)
    try:
        order = [6, 2, 8, 1, 5, 3, 7, 4]  # detected in this order: not the order of the keys or row ids
        for i in order:
            plant_items(store, "cfg", [i])
        assert store.park("cfg", "des0") == 8
        outcomes = dispatch(
            params, "cfg", [route(params, "des0", receiver.url, concurrency=1)],
            DispatchSettings(statuses=("parked",), batch_size=3, probe=True),
        )  # fmt: skip
        assert outcomes["des0"].delivered == 8
        assert [h.key for h in receiver.hits] == [number_of(i) for i in order]
    finally:
        store.close()
