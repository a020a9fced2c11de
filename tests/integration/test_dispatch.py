"""Dispatch and the last try: a receiver whose circuit opens gets its whole backlog parked, not hammered."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from cupid_airflow.core.delivery import CallbackTarget
from cupid_airflow.core.dispatch import Route, dispatch, park_failures
from cupid_airflow.core.payload import build_body, idempotency_key, row_version
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import DeliveryStore, Mismatch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import MariaDB

pytestmark = pytest.mark.integration


class _Accept(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/callback"
    finally:
        server.shutdown()
        server.server_close()


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/callback"  # nothing listens there any more


def _items(config: str, destination: str, count: int) -> list[Mismatch]:
    items = []
    for n in range(count):
        key = f"k-{destination}-{n:03d}".encode()
        row = {"id": str(n + 1).encode(), "number": key, "name": b"x"}
        version = row_version(row)
        idem = idempotency_key(config, destination, key, version)
        body = build_body(
            mismatch_type=1,
            source_row=row,
            destination=destination,
            destination_table="user",
            key_column="number",
            row_key=key,
            differences=None,
            detected_at="2026-11-26 00:00:00.000000",
            idempotency_key=idem,
        )
        items.append(Mismatch(config, destination, key, version, idem, 1, n + 1, body))
    return items


def test_open_circuit_parks_the_destinations_whole_backlog_and_only_it(
    mariadb: MariaDB, fresh_database: str, receiver: str
) -> None:
    store = DeliveryStore(ConnectionParams(mariadb.host, mariadb.port, mariadb.user, mariadb.password, fresh_database))
    try:
        store.ensure_schema()
        store.record(_items("cfg", "dead", 60) + _items("cfg", "alive", 3))
        routes = [
            Route("dead", CallbackTarget(url=_refused_url(), concurrency=1, breaker_threshold=5)),
            Route("alive", CallbackTarget(url=receiver, concurrency=1)),
        ]
        outcomes = dispatch(store, "cfg", routes, batch_size=10)

        dead = outcomes["dead"]
        assert dead.circuit_open
        assert len(dead.failed) == 10  # one batch fetched: 5 refused, 5 not sent; 50 never fetched
        assert dead.not_sent == 5
        assert outcomes["alive"].delivered == 3 and not outcomes["alive"].circuit_open
        assert store.counts("cfg")["pending"] == 60  # failures stay pending until the last try parks them

        parked = park_failures(store, "cfg", outcomes)
        counts = store.counts("cfg")
        assert parked == 60
        assert (counts["pending"], counts["parked"], counts["delivered"]) == (0, 60, 3)
        attempts = sorted(item.attempts for item in store.items("cfg", ("parked",), limit=100))
        assert attempts == [0] * 55 + [1] * 5  # the 5 refused counted an attempt; the unsent did not
    finally:
        store.close()


def test_without_an_open_circuit_only_the_failed_items_are_parked(mariadb: MariaDB, fresh_database: str) -> None:
    store = DeliveryStore(ConnectionParams(mariadb.host, mariadb.port, mariadb.user, mariadb.password, fresh_database))
    try:
        store.ensure_schema()
        store.record(_items("cfg", "flaky", 4))
        route = Route("flaky", CallbackTarget(url=_refused_url(), concurrency=1, breaker_threshold=50))
        outcomes = dispatch(store, "cfg", [route], batch_size=2)
        assert not outcomes["flaky"].circuit_open and len(outcomes["flaky"].failed) == 4
        store.record(_items("cfg", "flaky", 6)[4:])  # recorded after the try: not this try's failures
        assert park_failures(store, "cfg", outcomes) == 4
        assert store.counts("cfg")["pending"] == 2
    finally:
        store.close()
