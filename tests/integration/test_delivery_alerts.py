"""Alerts never hold delivery up: a notification webhook that is down, hangs or trickles is cut off at its timeout."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.outbox import (
    dags_of,
    duration,
    make_tables,
    new_stem,
    statuses,
    store_rows,
    task_states,
    write_config,
)
from tests.support.receivers import Receiver, free_port

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import MariaDB

pytestmark = pytest.mark.integration


# == a notification webhook that is down does not hold delivery up ======================================


class HangingWebhook:
    """Accepts connections and never answers (or trickles header bytes forever, with ``trickle``)."""

    def __init__(self, trickle: float | None = None, trickle_for: float = 30.0) -> None:
        self.trickle = trickle
        self.trickle_for = trickle_for
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"

    def __enter__(self) -> HangingWebhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(conn)
            if self.trickle:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            until = time.monotonic() + self.trickle_for
            while time.monotonic() < until and not self._stopping.is_set():
                conn.sendall(b"X-Wait: 1\r\n")
                time.sleep(self.trickle or 0.3)
            conn.sendall(b"Content-Length: 0\r\n\r\n")
        except OSError:
            pass


def _alerts(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(h.body) for h in receiver.hits]


def test_a_dead_webhook_does_not_hold_up_parking(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 5)
    callback = receivers(respond=lambda hit, nth: 503)
    chat = receivers()
    stem = new_stem("hook")
    with HangingWebhook() as hanging:
        webhooks = [
            {"url": f"http://127.0.0.1:{free_port()}/hook", "timeoutSecond": 1},
            {"url": hanging.url, "timeoutSecond": 1},
            {"url": chat.url, "format": "json", "timeoutSecond": 1},
        ]
        sync, _ = dags_of(
            write_config(
                tmp_path,
                stem,
                mariadb.go_dsn(fresh_database),
                callback.url,
                retries=0,
                extra={"notify": {"webhooks": webhooks}},
            )
        )
        dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "failed"}
    ti = dag_run.get_task_instance("deliver")
    # one webhook never answers (its timeout is 1 s), one refuses at once: the task ends although the
    # hanging webhook never would (a generous ceiling on a loaded machine; unbounded, it hangs for good)
    assert duration(ti) < 10, f"deliver took {duration(ti):.1f} s"
    assert xcom_value(dag_run, "deliver")["parked"] == 5
    rows = store_rows(mariadb, fresh_database, stem)
    assert statuses(rows) == {"parked": 5}
    assert {r.key for r in rows} == planted == callback.keys()
    parked = [a for a in _alerts(chat) if a.get("event") == "parked"]
    assert len(parked) == 1, _alerts(chat)
    assert f"[cupid {stem}]" in parked[0]["text"]
    assert "5 callback(s)" in parked[0]["text"]


def test_a_trickling_webhook_is_cut_off_at_its_timeout(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    """A webhook that sends one header line every 0.3 s never finishes its answer: timeoutSecond must bound it."""
    make_tables(mariadb, fresh_database, 3)
    callback = receivers(respond=lambda hit, nth: 503)
    stem = new_stem("drip")
    with HangingWebhook(trickle=0.3) as dripping:
        sync, _ = dags_of(
            write_config(
                tmp_path,
                stem,
                mariadb.go_dsn(fresh_database),
                callback.url,
                retries=0,
                extra={"notify": {"webhooks": [{"url": dripping.url, "timeoutSecond": 1}], "onTaskFailure": False}},
            )
        )
        dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "failed"}
    ti = dag_run.get_task_instance("deliver")
    # the webhook trickles for 30 s: a generous ceiling still tells the bounded alert from the unbounded one
    assert duration(ti) < 10, f"deliver took {duration(ti):.1f} s: the webhook's timeoutSecond=1 did not bound it"
    assert statuses(store_rows(mariadb, fresh_database, stem)) == {"parked": 3}
