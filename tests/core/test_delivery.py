"""Tests for HTTP delivery against real servers on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from multidict import CIMultiDict

from cupid_airflow.core.delivery import CallbackTarget, Delivery, DeliveryResult, deliver
from cupid_airflow.core.payload import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

pytestmark = pytest.mark.integration


@dataclass
class Received:
    """What a receiver saw of one request."""

    headers: CIMultiDict[str]
    body: bytes
    peer_port: int


@dataclass
class HttpReceiver:
    """An aiohttp server on 127.0.0.1 with its own event loop in a background thread."""

    handler: Handler
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    def start(self) -> HttpReceiver:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _serve(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}/callback"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer_port = request.transport.get_extra_info("peername")[1] if request.transport else 0
        self.received.append(Received(CIMultiDict(request.headers), await request.read(), peer_port))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.handler(request)
        finally:
            self.in_flight -= 1


@dataclass
class RawReceiver:
    """A plain TCP server that reads one request per connection, then does ``behaviour``."""

    behaviour: Callable[[socket.socket], None]
    connections: int = 0
    url: str = ""

    def start(self) -> RawReceiver:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/callback"
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with connection:
                _read_request(connection)
                self.behaviour(connection)


def _read_request(connection: socket.socket) -> None:
    connection.settimeout(2)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(rest) < length:
        rest += connection.recv(65536)


def _reset(connection: socket.socket) -> None:
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _partial_then_reset(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
    time.sleep(0.05)
    _reset(connection)


def _garbage(connection: socket.socket) -> None:
    connection.sendall(b"\x00\xffthis is not HTTP at all\r\n\r\n")


@pytest.fixture
def http_receiver() -> Iterator[Callable[[Handler], HttpReceiver]]:
    started: list[HttpReceiver] = []

    def start(handler: Handler) -> HttpReceiver:
        receiver = HttpReceiver(handler).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def raw_receiver() -> Iterator[Callable[[Callable[[socket.socket], None]], RawReceiver]]:
    started: list[RawReceiver] = []

    def start(behaviour: Callable[[socket.socket], None]) -> RawReceiver:
        receiver = RawReceiver(behaviour).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def _answer(status: int, text: str = "", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text or None, headers=headers)

    return handler


def _deliveries(count: int) -> list[Delivery]:
    return [Delivery(item_id=i, idempotency_key=f"key-{i}", body=b'{"type":1,"srcColumn":{}}') for i in range(count)]


def _one(target: CallbackTarget) -> DeliveryResult:
    [result] = deliver(target, _deliveries(1))
    return result


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_success(http_receiver: Callable[[Handler], HttpReceiver], status: int) -> None:
    receiver = http_receiver(_answer(status, "" if status == 204 else "fine"))
    result = _one(CallbackTarget(receiver.url))
    assert result == DeliveryResult(0, ok=True, http_status=status, error=None, elapsed_second=result.elapsed_second)
    assert 0 < result.elapsed_second < 5


def test_http_500_names_status_and_body(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(500, "database\n  is down " + "x" * 500))
    result = _one(CallbackTarget(receiver.url))
    assert not result.ok
    assert result.http_status == 500
    assert result.error is not None
    assert result.error.startswith("HTTP 500: database is down xxx")
    assert len(result.error) < 250


def test_http_404_with_empty_body(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(404))
    result = _one(CallbackTarget(receiver.url))
    assert (result.ok, result.http_status) == (False, 404)
    assert result.error == "HTTP 404 Not Found (empty body)"


def test_large_error_body_is_read_with_a_cap(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(503, "é" * 1_000_000))
    results = deliver(CallbackTarget(receiver.url), _deliveries(3))
    assert [r.http_status for r in results] == [503, 503, 503]
    assert all(r.error is not None and r.error.startswith("HTTP 503: éé") for r in results)


def test_redirect_is_not_followed(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(301, "moved", {"Location": "https://elsewhere.example/cb"}))
    result = _one(CallbackTarget(receiver.url))
    assert (result.ok, result.http_status) == (False, 301)
    assert result.error is not None
    assert "redirect 301 to https://elsewhere.example/cb" in result.error
    assert "not followed" in result.error
    assert len(receiver.received) == 1


def test_slow_answer_times_out(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response()

    receiver = http_receiver(slow)
    started = time.monotonic()
    result = _one(CallbackTarget(receiver.url, timeout_second=0.3))
    assert time.monotonic() - started < 5, "it waited for the answer (10 s), not for its timeout"
    assert (result.ok, result.http_status, result.error) == (False, None, "timeout after 0.3 s")


def test_connection_refused() -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        result = _one(CallbackTarget(f"http://127.0.0.1:{port}/callback"))
    assert (result.ok, result.http_status) == (False, None)
    assert result.error == f"connection refused: nothing listens on 127.0.0.1:{port}"


@pytest.mark.parametrize("behaviour", [_reset, _partial_then_reset])
def test_connection_reset(
    raw_receiver: Callable[[Callable[[socket.socket], None]], RawReceiver],
    behaviour: Callable[[socket.socket], None],
) -> None:
    receiver = raw_receiver(behaviour)
    result = _one(CallbackTarget(receiver.url))
    assert (result.ok, result.http_status) == (False, None)
    assert result.error is not None
    assert result.error in (
        "connection reset by the receiver before a complete answer",
        "connection closed by the receiver before a complete answer",
    )


def test_garbage_answer(raw_receiver: Callable[[Callable[[socket.socket], None]], RawReceiver]) -> None:
    receiver = raw_receiver(_garbage)
    result = _one(CallbackTarget(receiver.url))
    assert (result.ok, result.http_status) == (False, None)
    assert result.error is not None
    assert result.error.startswith("invalid HTTP answer: ")
    assert "\n" not in result.error


def test_headers_are_carried_and_signature_verifies(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(204))
    target = CallbackTarget(
        receiver.url,
        headers={
            "Authorization": "Bearer t",
            "content-type": "text/plain",
            "IDEMPOTENCY-KEY": "forged",
            SIGNATURE_HEADER.lower(): "sha256=forged",
        },
        hmac_secret="s3cret",
    )
    deliveries = _deliveries(3)
    assert all(r.ok for r in deliver(target, deliveries))
    by_key = {r.headers[IDEMPOTENCY_HEADER]: r for r in receiver.received}
    assert sorted(by_key) == ["key-0", "key-1", "key-2"]
    for received in receiver.received:
        assert received.headers.getall("Content-Type") == ["application/json"]
        assert received.headers.getall(IDEMPOTENCY_HEADER) == [received.headers[IDEMPOTENCY_HEADER]]
        assert received.headers["User-Agent"] == "cupid-airflow"
        assert received.headers["Authorization"] == "Bearer t"
        assert len(received.headers.getall(SIGNATURE_HEADER)) == 1
        assert verify_signature(received.body, "s3cret", received.headers[SIGNATURE_HEADER])
    assert "s3cret" not in repr(target)


def test_no_signature_without_secret(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(204))
    assert _one(CallbackTarget(receiver.url)).ok
    assert SIGNATURE_HEADER not in receiver.received[0].headers


def test_concurrency_limit_is_respected(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.05)
        return web.Response(status=204)

    receiver = http_receiver(slow)
    results = deliver(CallbackTarget(receiver.url, concurrency=4), _deliveries(40))
    assert all(r.ok for r in results)
    assert receiver.max_in_flight == 4


@pytest.mark.parametrize(("status", "text"), [(200, "ok"), (204, ""), (500, "down")])
def test_connections_are_kept_alive(http_receiver: Callable[[Handler], HttpReceiver], status: int, text: str) -> None:
    receiver = http_receiver(_answer(status, text))
    deliver(CallbackTarget(receiver.url, concurrency=3, breaker_threshold=1000), _deliveries(60))
    assert len(receiver.received) == 60
    assert len({r.peer_port for r in receiver.received}) <= 3


def test_rate_limit_is_respected(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(204))
    started = time.monotonic()
    results = deliver(CallbackTarget(receiver.url, concurrency=8, rate_limit_per_second=20), _deliveries(30))
    assert time.monotonic() - started >= 1.4
    assert all(r.ok for r in results)


def test_circuit_breaker_stops_sending(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(500, "down"))
    results = deliver(CallbackTarget(receiver.url, concurrency=2, breaker_threshold=5), _deliveries(50))
    assert len(results) == 50
    assert [r.item_id for r in results] == list(range(50))
    assert 5 <= len(receiver.received) <= 6
    not_sent = [r for r in results if r.http_status is None]
    assert len(not_sent) == 50 - len(receiver.received)
    assert {r.error for r in not_sent} == {"circuit open: 5 consecutive failures, not sent"}


def test_success_resets_the_breaker_count(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    async def every_third_ok(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204 if len(receiver.received) % 3 == 0 else 500)

    receiver = http_receiver(every_third_ok)
    results = deliver(CallbackTarget(receiver.url, concurrency=1, breaker_threshold=3), _deliveries(30))
    assert len(receiver.received) == 30
    assert sum(r.ok for r in results) == 10


def test_on_result_is_called_once_per_item(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(204))
    seen: list[DeliveryResult] = []
    results = deliver(CallbackTarget(receiver.url, concurrency=5), _deliveries(25), seen.append)
    assert sorted(r.item_id for r in seen) == list(range(25))
    assert sorted(seen, key=lambda r: r.item_id) == results


def test_on_result_is_called_for_items_not_sent() -> None:
    seen: list[DeliveryResult] = []
    results = deliver(CallbackTarget("http://127.0.0.1:9/cb", breaker_threshold=2), _deliveries(10), seen.append)
    assert len(seen) == 10
    # The breaker opens after 2 failures; at most concurrency - 1 more were already on their way.
    assert sum(r.error is not None and r.error.startswith("circuit open") for r in results) >= 10 - (2 + 3 - 1)


def test_exception_in_on_result_stops_delivery(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(204))

    def store_down(result: DeliveryResult) -> None:
        if result.item_id == 3:
            raise ConnectionError("delivery store is down")

    with pytest.raises(ConnectionError, match="store is down"):
        deliver(CallbackTarget(receiver.url, concurrency=2), _deliveries(200), store_down)
    time.sleep(0.5)  # requests already written when it raised may still reach the receiver
    sent = len(receiver.received)
    assert sent < 10
    time.sleep(1)  # deliver() has returned: nothing of it starts a request any more
    assert len(receiver.received) == sent


def test_runs_from_a_thread_without_event_loop(http_receiver: Callable[[Handler], HttpReceiver]) -> None:
    receiver = http_receiver(_answer(204))
    outcome: list[list[DeliveryResult]] = []
    thread = threading.Thread(target=lambda: outcome.append(deliver(CallbackTarget(receiver.url), _deliveries(5))))
    thread.start()
    thread.join(10)
    assert [r.ok for r in outcome[0]] == [True] * 5


def test_refuses_to_run_inside_a_running_loop() -> None:
    async def inside() -> None:
        deliver(CallbackTarget("http://127.0.0.1:9/cb"), _deliveries(1))

    with pytest.raises(RuntimeError, match="runs its own event loop"):
        asyncio.run(inside())


def test_no_deliveries_no_work() -> None:
    assert deliver(CallbackTarget("http://127.0.0.1:9/cb"), []) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"url": "127.0.0.1:20000/test/callback"}, "must start with http"),
        ({"url": "http://h/", "concurrency": 0}, "concurrency"),
        ({"url": "http://h/", "timeout_second": 0}, "timeout_second"),
        ({"url": "http://h/", "rate_limit_per_second": 0}, "rate_limit_per_second"),
        ({"url": "http://h/", "breaker_threshold": 0}, "breaker_threshold"),
    ],
)
def test_target_is_validated(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CallbackTarget(**arguments)  # type: ignore[arg-type]
