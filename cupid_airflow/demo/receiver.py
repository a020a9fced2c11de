"""The demo callback receiver: one printed line per cupid callback; told to fail (503), it shows the failure pool."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

CALLBACK_PATH = "/cupid/callback"
TYPE_NAMES = {1: "missing", 2: "different", 3: "deleted"}


class ReceiverState:
    """What the receiver got, and whether it answers 503 for now."""

    def __init__(self, *, failing: bool = False, quiet: bool = False) -> None:
        self.lock = threading.Lock()
        self.print_lock = threading.Lock()
        self.failing = failing
        self.quiet = quiet
        self.received: list[dict[str, Any]] = []
        self.seen_keys: set[str] = set()
        self.refused = 0

    def set_failing(self, failing: bool) -> None:
        with self.lock:
            self.failing = failing
        self.say(f"control: now answering {'503 to every callback' if failing else '200 again'}")

    def say(self, line: str) -> None:
        if not self.quiet:
            with self.print_lock:  # one whole line at a time, whatever the number of handler threads
                sys.stdout.write(f"receiver {datetime.now():%H:%M:%S} | {line}\n")
                sys.stdout.flush()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "failing": self.failing,
                "received": len(self.received),
                "unique": len(self.seen_keys),
                "refused": self.refused,
            }


def _show(value: Any) -> str:
    """A value as the reader should see it: NULL for SQL NULL, '' for an empty string."""
    if value is None:
        return "NULL"
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def describe(body: dict[str, Any]) -> str:
    """One readable line for a callback body: type, key, and the differences."""
    kind = body.get("type")
    kind_name = TYPE_NAMES.get(kind, "?") if isinstance(kind, int) else "?"
    key = body.get("key")
    destination = body.get("destination", "?")
    text = f"type {kind} {kind_name:<9} key {key}  ({destination})"
    if kind == 1:
        text += f": not in {body.get('destinationTable', destination)}"
    differences = body.get("differences") or {}
    if isinstance(differences, dict) and differences:
        parts = [
            f"{column} source {_show(sides.get('source'))} != destination {_show(sides.get('destination'))}"
            for column, sides in differences.items()
            if isinstance(sides, dict)
        ]
        text += ": " + "; ".join(parts)
    return text


class Handler(BaseHTTPRequestHandler):
    """POST /cupid/callback, POST /control/fail|ok, GET /received, GET /stats."""

    server: ReceiverServer
    protocol_version = "HTTP/1.1"
    server_version = "cupid-demo-receiver"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log: the receiver prints its own lines."""

    def _answer(self, status: int, document: Any) -> None:
        data = json.dumps(document, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        if path == "/received":
            with state.lock:
                document: Any = list(state.received)
            self._answer(HTTPStatus.OK, document)
        elif path in ("/stats", "/"):
            self._answer(HTTPStatus.OK, state.stats())
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {path}"})

    def do_POST(self) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        raw = self._body()
        if path == "/control/fail":
            state.set_failing(True)
            self._answer(HTTPStatus.OK, state.stats())
        elif path == "/control/ok":
            state.set_failing(False)
            self._answer(HTTPStatus.OK, state.stats())
        elif path == CALLBACK_PATH:
            self._callback(raw)
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {path}"})

    def _callback(self, raw: bytes) -> None:
        state = self.server.state
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as err:
            state.say(f"bad callback ({err}): {raw[:200]!r}")
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        line = describe(body)
        key = self.headers.get("Idempotency-Key") or body.get("idempotencyKey")
        duplicate = False
        with state.lock:
            failing = state.failing
            if failing:
                state.refused += 1
            else:
                duplicate = key in state.seen_keys
                state.seen_keys.add(str(key))
                state.received.append({"type": body.get("type"), "key": body.get("key"), "idempotencyKey": key})
        if failing:
            state.say(f"{line}  -> answered 503 (fail mode)")
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the demo receiver is told to fail"})
            return
        state.say(line + ("  (again: same idempotency key)" if duplicate else ""))
        self._answer(HTTPStatus.OK, {"ok": True})


class ReceiverServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the receiver's state."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: ReceiverState) -> None:
        super().__init__(address, Handler)
        self.state = state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cupid_airflow.demo.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080, help="0 picks a free port (printed at start)")
    parser.add_argument("--fail", action="store_true", help="answer 503 to every callback until POST /control/ok")
    parser.add_argument("--quiet", action="store_true", help="print nothing but the start line")
    args = parser.parse_args(argv)

    state = ReceiverState(failing=args.fail, quiet=args.quiet)
    server = ReceiverServer((args.host, args.port), state)
    host, port = str(args.host), int(server.server_address[1])

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"receiver listening on http://{host}:{port}{CALLBACK_PATH} "
        f"({'failing: answers 503' if args.fail else 'answers 200'}; POST /control/fail or /control/ok to switch)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
