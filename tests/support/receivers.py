"""Callback receivers for tests: HTTP servers on 127.0.0.1 that record what they get and answer as told."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cupid_airflow.core.payload import IDEMPOTENCY_HEADER, SIGNATURE_HEADER

if TYPE_CHECKING:
    from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_of(body: bytes) -> str | None:
    """The row key a callback body is about (``srcColumn.number``, else the body's ``key``)."""
    try:
        document = json.loads(body)
        return document["srcColumn"].get("number") or document.get("key")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class Hit:
    """One request a receiver got."""

    index: int
    key: str | None
    idempotency_key: str | None
    signature: str | None
    body: bytes
    at: float
    status: int | None = None
    path: str = ""


@dataclass
class Receiver:
    """An aiohttp callback receiver on 127.0.0.1 in a background thread.

    :param respond: ``respond(hit, nth)`` -> HTTP status for this request (``nth`` counts this key's
        requests from 1); 204 for every request when None. Replace it at any time.
    :param delay: seconds before each answer.
    :param before_answer: ``before_answer(hit)``, called in the server loop before the delay.
    :param after_answer: ``after_answer(hit)``, called once the answer was written and flushed.
    :param answer_headers: ``answer_headers(hit, nth)`` -> extra headers of the answer (e.g. ``Retry-After``).
    """

    respond: Callable[[Hit, int], int] | None = None
    answer_headers: Callable[[Hit, int], dict[str, str]] | None = None
    delay: float = 0.0
    port: int = 0
    before_answer: Callable[[Hit], None] | None = None
    after_answer: Callable[[Hit], None] | None = None
    hits: list[Hit] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    def start(self) -> Receiver:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _serve(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        return f"http://{host}:{port}/cupid/callback"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            hit = Hit(
                len(self.hits) + 1,
                key_of(body),
                request.headers.get(IDEMPOTENCY_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                body,
                time.monotonic(),
                path=request.path,
            )
            nth = 1 + sum(1 for h in self.hits if h.key == hit.key)
            self.hits.append(hit)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.before_answer is not None:
                self.before_answer(hit)
            if self.delay:
                await asyncio.sleep(self.delay)
            status = self.respond(hit, nth) if self.respond is not None else 204
            hit.status = status
            headers = self.answer_headers(hit, nth) if self.answer_headers is not None else None
            response = web.Response(status=status, text=None if status == 204 else f"answer {status}", headers=headers)
            if self.after_answer is None:
                return response
            await response.prepare(request)
            await response.write_eof()
            self.after_answer(hit)
            return response
        finally:
            with self._lock:
                self.in_flight -= 1

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``: callback URLs with paths of their own (every path is answered)."""
        return f"http://127.0.0.1:{self.port}"

    # -- what was received --
    def documents(self, path: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received (at ``path`` only, when given), in the order they came."""
        return [json.loads(h.body) for h in list(self.hits) if path is None or h.path == path]

    def ok_keys(self) -> set[str | None]:
        """Keys answered 2xx (recorded before the answer leaves)."""
        return {h.key for h in list(self.hits) if h.status is not None and 200 <= h.status < 300}

    def keys(self) -> set[str | None]:
        return {h.key for h in list(self.hits)}

    def counts(self) -> Counter[str | None]:
        return Counter(h.key for h in list(self.hits))


class RawHttpReceiver:
    """A threaded raw-socket HTTP/1.1 server whose answer to each request is chosen by key.

    ``behaviour(key)`` returns one of ``ok`` (204, keep-alive), ``500``, ``404``, ``301``, ``slow``
    (answers nothing for 2 s), ``reset`` (half an answer, then a TCP reset) or ``garbage`` (bytes
    that are not HTTP). Replace ``behaviour`` at any time.
    """

    def __init__(self, behaviour: Callable[[str | None], str]) -> None:
        self.behaviour = behaviour
        self.hits: list[tuple[str | None, str | None, str]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/cupid/callback"

    def __enter__(self) -> RawHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            while True:
                request = _read_http_request(connection)
                if request is None:
                    return
                headers, body = request
                key = key_of(body)
                action = self.behaviour(key)
                with self._lock:
                    self.hits.append((key, headers.get(IDEMPOTENCY_HEADER.lower()), action))
                if action == "ok":
                    connection.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    continue
                if action in ("500", "404", "301"):
                    text = {"500": b"database\n is down", "404": b"", "301": b"moved"}[action]
                    reason = {"500": b"Internal Server Error", "404": b"Not Found", "301": b"Moved Permanently"}
                    location = b"Location: http://elsewhere.example/cb\r\n" if action == "301" else b""
                    connection.sendall(
                        b"HTTP/1.1 "
                        + action.encode()
                        + b" "
                        + reason[action]
                        + b"\r\n"
                        + location
                        + b"Content-Type: text/plain\r\nContent-Length: "
                        + str(len(text)).encode()
                        + b"\r\nConnection: close\r\n\r\n"
                        + text
                    )
                elif action == "slow":
                    time.sleep(2)
                elif action == "reset":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
                    time.sleep(0.05)
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif action == "garbage":
                    connection.sendall(b"\x00\xffthis is not HTTP at all\r\n\r\n")
                return


def _read_http_request(connection: socket.socket) -> tuple[dict[str, str], bytes] | None:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = connection.recv(65536)
            if not chunk:
                return None
            rest += chunk
    except OSError:
        return None
    return headers, rest
