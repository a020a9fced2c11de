"""The demo: ``scripts/demo.sh --once`` delivers every planted mismatch; the receiver's fail switch works."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.demo.__main__ import last_json_after
from cupid_airflow.demo.receiver import describe

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent
RECEIVER_PORT = 18080  # the callback URL of dags/cupid/user.json


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_once_delivers_every_planted_mismatch() -> None:
    assert not _port_busy(RECEIVER_PORT), (
        f"port {RECEIVER_PORT} is taken (an interactive demo running?): the demo receiver needs it; stop it first"
    )
    started = time.monotonic()
    # The inherited environment is conftest's (another AIRFLOW_HOME, dags folder and metadata DB): the
    # script must set up its own.
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "demo.sh"), "--once"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    planted = json.loads((REPO_ROOT / ".demo" / "planted.json").read_text())["planted"]
    assert len(planted) >= 8
    assert {p["type"] for p in planted} == {1, 2}
    assert any("NULL" in p["why"] and "''" in p["why"] for p in planted), "the NULL vs '' case is planted"
    assert f"demo: OK: all {len(planted)} planted mismatches delivered, nothing else" in output, output
    assert re.search(r"demo: compare: destination copy: \d+ missing, \d+ different", output), output
    for p in planted:
        assert re.search(rf"demo: received type {p['type']} \w+ +key {p['key']} ", output), (p, output)
    assert not _port_busy(RECEIVER_PORT), "the receiver was left running"
    print(f"demo.sh --once: {elapsed:.1f}s")


# -- the receiver ------------------------------------------------------------------------------------


class Receiver:
    """``python -m cupid_airflow.demo.receiver`` on a free port, in a subprocess."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cupid_airflow.demo.receiver", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/cupid/callback", first)
        assert match, first
        self.url = f"http://127.0.0.1:{match.group(1)}"

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """(status, JSON answer) of one request."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self) -> str:
        """SIGTERM it; return everything it printed."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=10)
        assert self.process.returncode == 0, out
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait()


def _body(kind: int, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "srcColumn": {"number": key},
        "destination": "copy",
        "destinationTable": "user",
        "key": key,
        "idempotencyKey": f"idem-{key}",
        **extra,
    }


def test_receiver_fail_switch(receiver: Receiver) -> None:
    different = _body(2, "u-1", differences={"avatar": {"source": None, "destination": ""}})
    assert receiver.request("POST", "/cupid/callback", different, {"Idempotency-Key": "k-1"}) == (200, {"ok": True})

    status, stats = receiver.request("POST", "/control/fail")
    assert (status, stats["failing"]) == (200, True)
    status, _ = receiver.request("POST", "/cupid/callback", _body(1, "u-2"), {"Idempotency-Key": "k-2"})
    assert status == 503
    assert receiver.request("GET", "/received") == (200, [{"type": 2, "key": "u-1", "idempotencyKey": "k-1"}])

    status, stats = receiver.request("POST", "/control/ok")
    assert (status, stats["failing"], stats["refused"]) == (200, False, 1)
    assert receiver.request("POST", "/cupid/callback", _body(1, "u-2"))[0] == 200  # key from the body
    status, received = receiver.request("GET", "/received")
    assert received == [
        {"type": 2, "key": "u-1", "idempotencyKey": "k-1"},
        {"type": 1, "key": "u-2", "idempotencyKey": "idem-u-2"},
    ]
    assert receiver.request("POST", "/nowhere", {})[0] == 404

    output = receiver.stop()
    assert "type 2 different key u-1  (copy): avatar source NULL != destination ''" in output, output
    assert "type 1 missing   key u-2  (copy): not in user  -> answered 503 (fail mode)" in output, output
    assert "now answering 503" in output and "now answering 200 again" in output


def test_receiver_started_with_fail_answers_503_until_told_ok() -> None:
    receiver = Receiver("--fail")
    try:
        assert receiver.request("POST", "/cupid/callback", _body(1, "u-9"))[0] == 503
        assert receiver.request("GET", "/received") == (200, [])
        receiver.request("POST", "/control/ok")
        assert receiver.request("POST", "/cupid/callback", _body(1, "u-9"))[0] == 200
        assert receiver.request("GET", "/stats")[1] == {"failing": False, "received": 1, "unique": 1, "refused": 1}
    finally:
        receiver.stop()


def test_receiver_line_shows_null_and_empty_apart() -> None:
    line = describe(_body(2, "u-3", differences={"name": {"source": "Ann", "destination": "Ann "}}))
    assert line == "type 2 different key u-3  (copy): name source 'Ann' != destination 'Ann '"
    assert describe(_body(1, "u-4")) == "type 1 missing   key u-4  (copy): not in user"


def test_summary_is_read_from_the_last_log_line() -> None:
    log = (
        'x [info] cupid summary: {"recorded": 1} extra=1\n'
        'y [info] cupid summary: {"recorded": 2, "destinations": {}} dag_id=d\n'
        "z [info] cupid summary: not json\n"
    )
    assert last_json_after(log, "cupid summary: ") == {"recorded": 2, "destinations": {}}
    assert last_json_after("nothing", "cupid summary: ") is None
