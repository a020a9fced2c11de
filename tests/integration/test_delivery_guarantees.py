"""Delivery guarantees, end to end: real MariaDB, real HTTP receivers on 127.0.0.1, real DAG runs.

What a user relies on once a mismatch is recorded in the delivery store:

- at least once: whatever the receiver does (down, 5xx, 4xx, redirect, slow, reset, garbage) and
  whatever happens to the delivering process (SIGKILL) or to the state database (killed and
  restarted), every recorded item is eventually delivered, and every duplicate carries the same
  ``Idempotency-Key`` as its first delivery;
- each Airflow try sends only what is still undelivered; what fails after the last try is parked
  and the failure-pool DAG delivers it once the receiver is back;
- every failure is recorded on its item with a message a person can act on;
- alerts never hold up delivery; the ``python -m cupid_airflow pool`` command works on the store;
- concurrency and rate limits hold.

Nothing is mocked: the sync DAG (``compare >> deliver``) and the failure-pool DAG (``drain``) run with
``dag.test()``; receivers are aiohttp or raw-socket servers in background threads of this process
(``dag.test()`` runs tasks in this process); one test starts a private MariaDB server of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.dispatch import DispatchSettings, dispatch
from cupid_airflow.core.payload import verify_signature
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import DeliveryStore
from tests.support.outbox import (
    dags_of,
    make_tables,
    new_stem,
    number_of,
    plant_items,
    route,
    source_row,
    statuses,
    store_rows,
    task_states,
    write_config,
)
from tests.support.receivers import Hit, RawHttpReceiver, Receiver, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import AirflowVariables, MariaDB

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def duration(ti: Any) -> float:
    return (ti.end_date - ti.start_date).total_seconds()


# == 1. at least once through the failure pool =======================================================


@pytest.mark.parametrize("down", ["nothing_listens", "answers_503"])
@pytest.mark.parametrize("count", [5, 30])
def test_items_outlive_the_short_retries_and_the_failure_pool_delivers_them_all(
    down: str,
    count: int,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    # 5 items fail through every try; 30 are more than the circuit breaker's 20: the first try trips it
    # and parks them all at once (no retries), so the sync DAG keeps its cadence
    planted = make_tables(mariadb, fresh_database, count)
    if down == "nothing_listens":
        port = free_port()
        url = f"http://127.0.0.1:{port}/cupid/callback"
        receiver = None
    else:
        receiver = receivers(respond=lambda hit, nth: 503)
        url = receiver.url
    stem = new_stem("alo")
    sync, pool = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), url, retries=2))

    started = time.monotonic()
    dag_run = run_dag(sync)
    elapsed = time.monotonic() - started

    deliver_ti = dag_run.get_task_instance("deliver")
    if count == 5:
        assert task_states(dag_run) == {"compare": "success", "deliver": "failed"}
        assert deliver_ti.try_number == 3, "retries=2 means three tries"
        assert elapsed >= 2, "two retry delays of failureJobRetrySecond=1 were waited"
    else:
        assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
        assert deliver_ti.try_number == 1, "the tripped circuit parks at once: no retries"
        assert xcom_value(dag_run, "deliver")["destinations"]["copy0"]["circuitOpen"] is True
    summary = xcom_value(dag_run, "deliver")
    assert summary["parked"] == count
    rows = store_rows(mariadb, fresh_database, stem)
    assert {r.key for r in rows} == planted
    assert statuses(rows) == {"parked": count}

    # while the circuit is open, a new item is parked by the next run without being sent
    conn = mariadb.connect(fresh_database)
    try:
        conn.cursor().execute("INSERT INTO user (number, name) VALUES ('n-late', 'late')")
    finally:
        conn.close()
    hits_before = len(receiver.hits) if receiver else 0
    next_run = run_dag(sync)
    assert task_states(next_run) == {"compare": "success", "deliver": "success"}
    assert next_run.get_task_instance("deliver").try_number == 1
    assert (len(receiver.hits) if receiver else 0) == hits_before
    planted = planted | {"n-late"}
    assert statuses(store_rows(mariadb, fresh_database, stem)) == {"parked": count + 1}

    # the receiver comes back
    if receiver is None:
        receiver = receivers(port=port)
    else:
        receiver.respond = None
    pool_run = run_dag(pool)

    assert task_states(pool_run) == {"drain": "success"}, xcom_value(pool_run, "drain")
    rows = store_rows(mariadb, fresh_database, stem)
    assert statuses(rows) == {"delivered": count + 1}
    assert receiver.ok_keys() == planted
    assert {h.idempotency_key for h in receiver.hits if h.status == 204} == {r.idempotency_key for r in rows}


# == 2. each try sends only what is still undelivered ======================================================


def test_a_retry_sends_only_the_items_that_failed(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 12)
    flaky = number_of(7)
    receiver = receivers(respond=lambda hit, nth: 503 if hit.key == flaky and nth == 1 else 204)
    stem = new_stem("once")
    sync, _ = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=1))

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert dag_run.get_task_instance("deliver").try_number == 2
    counts = receiver.counts()
    assert set(counts) == planted
    assert counts[flaky] == 2
    assert {k: n for k, n in counts.items() if k != flaky} == dict.fromkeys(planted - {flaky}, 1)
    rows = store_rows(mariadb, fresh_database, stem)
    assert statuses(rows) == {"delivered": 12}
    assert {r.key: r.attempts for r in rows} == {k: 2 if k == flaky else 1 for k in planted}


def test_a_delivered_item_records_the_answer_that_delivered_it(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    """After a 503 then a 204, the item's last_http_status is 204 (not the stale 503) and last_error is gone."""
    planted = make_tables(mariadb, fresh_database, 3)
    flaky = number_of(2)
    receiver = receivers(respond=lambda hit, nth: 503 if hit.key == flaky and nth == 1 else 204)
    stem = new_stem("laststatus")
    sync, _ = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=1))

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    rows = {r.key: r for r in store_rows(mariadb, fresh_database, stem)}
    assert set(rows) == planted
    assert all(r.status == "delivered" and r.last_error is None for r in rows.values())
    recorded = {k: r.last_http_status for k, r in sorted(rows.items())}
    assert recorded == dict.fromkeys(sorted(planted), 204), f"last_http_status of delivered items: {recorded}"


# == 3. SIGKILL of the delivering process ====================================================================

CHILD_DISPATCH = r"""
import json, sys
from cupid_airflow.core.dispatch import DispatchSettings, dispatch
from cupid_airflow.core.sql import ConnectionParams
from tests.support.outbox import route

args = json.loads(sys.argv[1])
params = ConnectionParams(**args["params"])
routes = [route(params, "des0", args["url"], config=args["config"], concurrency=args["concurrency"])]
outcomes = dispatch(params, args["config"], routes, DispatchSettings(batch_size=1000))
print(json.dumps({name: outcome.as_dict() for name, outcome in outcomes.items()}))
"""


@pytest.mark.parametrize("kill_point", ["early", "midway", "after_the_last_answer"])
def test_sigkill_during_delivery_loses_nothing_and_duplicates_keep_their_idempotency_key(
    kill_point: str,
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
) -> None:
    total = 400
    config = new_stem("kill")
    params = ConnectionParams(
        host=mariadb.host, port=mariadb.port, user=mariadb.user, password=mariadb.password, database=fresh_database
    )
    make_tables(mariadb, fresh_database, total)
    store = DeliveryStore(params)
    planted = plant_items(store, config, range(1, total + 1))
    child: list[subprocess.Popen[str]] = []
    killed = threading.Event()

    def kill_child() -> None:
        if not killed.is_set():
            killed.set()
            os.kill(child[0].pid, signal.SIGKILL)

    def before(hit: Hit) -> None:
        # killed while this request is in flight: it reached the receiver, its answer never came back
        kill_at = {"early": 3, "midway": 200}.get(kill_point)
        if hit.index == kill_at:
            kill_child()

    def after(hit: Hit) -> None:
        if kill_point == "after_the_last_answer" and hit.index == total:
            kill_child()

    receiver = receivers(delay=0.005, before_answer=before, after_answer=after)
    arguments = {
        "params": {
            "host": params.host,
            "port": params.port,
            "user": params.user,
            "password": params.password,
            "database": fresh_database,
        },
        "config": config,
        "url": receiver.url,
        "concurrency": 2,
    }
    child.append(
        subprocess.Popen(
            [sys.executable, "-c", CHILD_DISPATCH, json.dumps(arguments)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
    )
    _, stderr = child[0].communicate(timeout=60)
    assert child[0].returncode == -signal.SIGKILL, f"the child was not killed at {kill_point}: {stderr[-2000:]}"

    at_kill = statuses(store_rows(mariadb, fresh_database, config))
    if kill_point == "early":
        assert at_kill["delivered"] <= 2, at_kill
    elif kill_point == "midway":
        assert 0 < at_kill["delivered"] < 200, at_kill  # results are recorded as they come, not in big groups
    # every item the store calls delivered was answered 2xx
    delivered_then = {r.key for r in store_rows(mariadb, fresh_database, config) if r.status == "delivered"}
    assert delivered_then <= receiver.ok_keys()

    # run the dispatch again, to completion, once the killed child's claims have expired
    receiver.before_answer = receiver.after_answer = None
    settings = DispatchSettings(batch_size=1000, lease_second=60)
    try:
        _expire_claims(mariadb, fresh_database)
        routes = [route(params, "des0", receiver.url, config=config, concurrency=2)]
        outcome = dispatch(params, config, routes, settings)
    finally:
        store.close()
    assert outcome["des0"].failed == []

    rows = store_rows(mariadb, fresh_database, config)
    assert statuses(rows) == {"delivered": total}, "no item is left pending"
    assert receiver.ok_keys() == set(planted), "every planted key was received"
    keys: dict[str | None, str | None] = {}
    for hit in receiver.hits:
        assert keys.setdefault(hit.key, hit.idempotency_key) == hit.idempotency_key, f"{hit.key} sent with two keys"
        assert json.loads(hit.body)["idempotencyKey"] == hit.idempotency_key
    duplicates = {k: n for k, n in receiver.counts().items() if n > 1}
    if kill_point != "after_the_last_answer":
        assert duplicates, "the request in flight at the kill must have been sent again"


def _expire_claims(mariadb: MariaDB, database: str) -> None:
    """Let the lease of a killed dispatcher run out now (instead of waiting for it)."""
    conn = mariadb.connect(database)
    try:
        conn.cursor().execute(
            "UPDATE cupid_delivery SET claimed_until = NOW(6) - INTERVAL 1 SECOND WHERE claimed_until IS NOT NULL"
        )
    finally:
        conn.close()


# == 4. every kind of receiver failure is recorded, nothing is lost ==========================================

BEHAVIOURS = {1: "500", 2: "404", 3: "301", 4: "slow", 5: "reset", 6: "garbage"}


def test_receiver_failures_are_recorded_per_item_and_nothing_is_lost(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, len(BEHAVIOURS))
    behaviour_of = {number_of(i): b for i, b in BEHAVIOURS.items()}
    refused_port = free_port()
    stem = new_stem("fail")
    with RawHttpReceiver(lambda key: behaviour_of.get(key or "", "ok")) as raw:
        path = write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            raw.url,
            retries=1,
            destinations=[
                {"name": "main", "callbackNotification": {"url": raw.url, "timeoutSecond": 0.5}},
                {
                    "name": "refused",
                    "callbackNotification": {
                        "url": f"http://127.0.0.1:{refused_port}/cupid/callback",
                        "timeoutSecond": 0.5,
                    },
                },
            ],
        )
        sync, pool = dags_of(path)

        dag_run = run_dag(sync)

        assert task_states(dag_run) == {"compare": "success", "deliver": "failed"}
        summary = xcom_value(dag_run, "deliver")
        assert summary["parked"] == 12
        assert summary["destinations"]["main"]["failed"] == 6
        assert summary["destinations"]["refused"]["failed"] == 6
        rows = store_rows(mariadb, fresh_database, stem)
        assert statuses(rows) == {"parked": 12}
        assert all(r.attempts == 2 for r in rows), [(r.destination, r.key, r.attempts) for r in rows]
        main = {r.key: r for r in rows if r.destination == "main"}
        refused = {r.key: r for r in rows if r.destination == "refused"}
        assert set(main) == set(refused) == planted

        def check(key: str, status: int | None, *fragments: str) -> None:
            row = main[key]
            assert row.last_http_status == status, (key, row)
            assert row.last_error is not None and all(f in row.last_error for f in fragments), (key, row)
            assert "\n" not in row.last_error and len(row.last_error) < 400, (key, row.last_error)

        check(number_of(1), 500, "HTTP 500: database is down")
        check(number_of(2), 404, "HTTP 404")
        check(number_of(3), 301, "redirect 301 to http://elsewhere.example/cb", "not followed")
        check(number_of(4), None, "timeout after 0.5 s")
        check(number_of(5), None, "connection")
        assert main[number_of(5)].last_error in (
            "connection reset by the receiver before a complete answer",
            "connection closed by the receiver before a complete answer",
        )
        check(number_of(6), None, "invalid HTTP answer")
        for row in refused.values():
            assert row.last_http_status is None
            assert row.last_error == f"connection refused: nothing listens on 127.0.0.1:{refused_port}"

        # the receivers are fixed: the failure pool delivers everything
        raw.behaviour = lambda key: "ok"
        fixed = receivers(port=refused_port)
        pool_run = run_dag(pool)

        assert task_states(pool_run) == {"drain": "success"}
        rows = store_rows(mariadb, fresh_database, stem)
        assert statuses(rows) == {"delivered": 12}
        assert all(r.last_error is None for r in rows)
        assert {k for k, _, action in raw.hits if action == "ok"} == planted
        assert fixed.ok_keys() == planted


# == 5. the state database restarts during delivery ========================================================


class PrivateMariaDB:
    """A MariaDB server of this test alone: own data dir, port and socket; started and killed by pid."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cupid-mdb-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.base / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *as_root,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stdout}\n{result.stderr}")
        self._command = [
            "mariadbd",
            "--no-defaults",
            f"--datadir={self.base / 'data'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.base / 'sock'}",
            f"--pid-file={self.base / 'pid'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
            f"--log-error={self.base / 'error.log'}",
            *as_root,
        ]

    def params(self, database: str | None = None) -> ConnectionParams:
        return ConnectionParams(host="127.0.0.1", port=self.port, user="root", password="", database=database)

    def start(self) -> None:
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import MySQLdb

        deadline = time.monotonic() + 30
        while True:
            try:
                MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
                return
            except MySQLdb.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.base / "error.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"private MariaDB did not start: {log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)

    def execute(self, statement: str) -> None:
        import MySQLdb

        conn = MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDB]:
    if not (shutil.which("mariadbd") and shutil.which("mariadb-install-db")):
        pytest.skip("mariadbd and mariadb-install-db are needed for a private state database")
    server = PrivateMariaDB()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_state_database_restart_during_delivery(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    private_mariadb: PrivateMariaDB,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    total = 500
    planted = make_tables(mariadb, fresh_database, total)
    private_mariadb.execute("CREATE DATABASE cupid_state")
    state = private_mariadb.params("cupid_state")
    snapshots: list[tuple[set[str], set[str | None]]] = []
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(0.3)
        private_mariadb.start()
        # at this instant: everything the store calls delivered was answered 2xx by the receiver
        delivered = {r.key for r in store_rows(state, "cupid_state", stem) if r.status == "delivered"}
        snapshots.append((delivered, receiver.ok_keys()))
        restarted.set()

    def before(hit: Hit) -> None:
        if hit.index == 300:  # after the first group of 200 results was recorded
            private_mariadb.kill()
            threading.Thread(target=restart, daemon=True).start()

    receiver = receivers(delay=0.01, before_answer=before)
    stem = new_stem("statedb")
    sync, _ = dags_of(
        write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            receiver.url,
            retries=3,
            worker_number=2,
            extra={"state": {"dsn": f"root:@tcp(127.0.0.1:{private_mariadb.port})/cupid_state"}},
        )
    )

    dag_run = run_dag(sync)

    assert restarted.wait(30), "the state database was never killed and restarted"
    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert dag_run.get_task_instance("deliver").try_number >= 2, "the try during the outage must fail"
    [(delivered_at_restart, received_at_restart)] = snapshots
    assert 0 < len(delivered_at_restart) < total
    assert delivered_at_restart <= received_at_restart, "marked delivered but never answered 2xx"
    rows = store_rows(state, "cupid_state", stem)
    assert statuses(rows) == {"delivered": total}
    assert {r.key for r in rows} == planted
    assert receiver.ok_keys() == planted
    key_of_item = {r.key: r.idempotency_key for r in rows}
    assert all(h.idempotency_key == key_of_item.get(str(h.key)) for h in receiver.hits)


# == 6. the re-check drops items that became consistent before sending =======================================


@pytest.mark.parametrize("recheck", [True, False])
def test_recheck_resolves_items_the_destination_caught_up_with(
    recheck: bool,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    # rows 1-4 differ (stale name), rows 5-10 are missing
    planted = make_tables(mariadb, fresh_database, 10, {i: ("stale", source_row(i)[3]) for i in range(1, 5)})
    assert planted == {number_of(i) for i in range(1, 11)}
    receiver = receivers()
    stem = new_stem("recheck")
    sync, _ = dags_of(
        write_config(
            tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=0, callback={"recheck": recheck}
        )
    )

    compare_run = run_dag(sync.partial_subset(task_ids=["compare"], include_upstream=False))
    assert task_states(compare_run) == {"compare": "success"}
    assert statuses(store_rows(mariadb, fresh_database, stem)) == {"pending": 10}
    assert receiver.hits == []

    # the CDC pipeline catches up with rows 1, 2 (updated), 5, 6, 7 (inserted; row 5 has a NULL avatar);
    # row 8 arrives with a wrong avatar and still needs its callback
    conn = mariadb.connect(fresh_database)
    try:
        cur = conn.cursor()
        for i in (1, 2):
            cur.execute("UPDATE user_copy SET name = %s WHERE number = %s", (source_row(i)[2], number_of(i)))
        cur.executemany(
            "INSERT INTO user_copy (number, name, avatar) VALUES (%s, %s, %s)",
            [source_row(i)[1:] for i in (5, 6, 7)] + [(number_of(8), source_row(8)[2], "wrong.png")],
        )
    finally:
        conn.close()

    deliver_run = run_dag(sync.partial_subset(task_ids=["deliver"], include_upstream=False))

    assert task_states(deliver_run) == {"deliver": "success"}
    rows = {r.key: r.status for r in store_rows(mariadb, fresh_database, stem)}
    caught_up = {number_of(i) for i in (1, 2, 5, 6, 7)}
    summary = xcom_value(deliver_run, "deliver")["destinations"]["copy0"]
    # recheck: false no longer turns the re-check off: every item is judged on the rows as they are
    assert receiver.counts() == Counter(planted - caught_up)
    assert rows == {k: "resolved" if k in caught_up else "delivered" for k in planted}
    assert (summary["resolved"], summary["delivered"]) == (5, 5)


# == 7. a notification webhook that is down does not hold delivery up ======================================


class HangingWebhook:
    """Accepts connections and never answers (or trickles header bytes forever, with ``trickle``)."""

    def __init__(self, trickle: float | None = None, trickle_for: float = 6.0) -> None:
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
        started = time.monotonic()
        dag_run = run_dag(sync)
        elapsed = time.monotonic() - started

    assert task_states(dag_run) == {"compare": "success", "deliver": "failed"}
    ti = dag_run.get_task_instance("deliver")
    # one webhook never answers (1 s), one refuses at once: the task is late by about 1 s, no more
    assert duration(ti) < 3.5, f"deliver took {duration(ti):.1f} s"
    assert elapsed < 15, f"the whole run took {elapsed:.1f} s"
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
    with HangingWebhook(trickle=0.3, trickle_for=6.0) as dripping:
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
    assert duration(ti) < 3.5, (
        f"deliver took {duration(ti):.1f} s: the webhook's timeoutSecond=1 did not bound the alert"
    )
    assert statuses(store_rows(mariadb, fresh_database, stem)) == {"parked": 3}


# == 8. Idempotency-Key and HMAC signature ================================================================


def test_signature_verifies_and_idempotency_key_is_stable_across_retries(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    airflow_variables: AirflowVariables,
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 6)
    stem = new_stem("hmac")
    variable = f"{stem}_hmac_secret"
    secret = "s3cret-" + secrets.token_hex(8)
    airflow_variables.set(variable, secret)
    bad_signatures: list[str | None] = []

    def respond(hit: Hit, nth: int) -> int:
        if not hit.signature or not verify_signature(hit.body, secret, hit.signature):
            bad_signatures.append(hit.key)
            return 401
        return 503 if nth == 1 else 204  # every item needs the retry

    receiver = receivers(respond=respond)
    sync, _ = dags_of(
        write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            receiver.url,
            retries=1,
            callback={"hmacSecretVariable": variable},
        )
    )
    try:
        dag_run = run_dag(sync)
    finally:
        airflow_variables.delete(variable)

    assert bad_signatures == []
    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    rows = {r.key: r for r in store_rows(mariadb, fresh_database, stem)}
    assert set(rows) == planted
    assert all(r.status == "delivered" for r in rows.values())
    assert receiver.counts() == dict.fromkeys(planted, 2)
    for hit in receiver.hits:
        assert hit.idempotency_key == rows[str(hit.key)].idempotency_key
        assert json.loads(hit.body)["idempotencyKey"] == hit.idempotency_key
        assert hit.signature and hit.signature.startswith("sha256=")
        assert not verify_signature(hit.body, secret + "x", hit.signature)
    # the retry sent the very same body: same key, same signature
    by_key: dict[str | None, set[tuple[str | None, str | None, bytes]]] = {}
    for hit in receiver.hits:
        by_key.setdefault(hit.key, set()).add((hit.idempotency_key, hit.signature, hit.body))
    assert all(len(v) == 1 for v in by_key.values()), by_key


# == 9. python -m cupid_airflow pool ======================================================================


def pool_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cupid_airflow", "pool", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env=os.environ.copy(),
    )


def pool_stats(path: Path) -> dict[str, Any]:
    result = pool_command("stats", str(path), "--output", "json")
    assert result.returncode == 0, result.stderr
    [stats] = json.loads(result.stdout)
    return stats


@pytest.mark.parametrize("limit", ["maxAttempts", "maxAgeSecond"])
def test_pool_command_lists_and_requeues_dead_items_which_are_then_delivered(
    limit: str,
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 4)
    receiver = receivers(respond=lambda hit, nth: 503)
    stem = new_stem("pool")
    pool_limits = {"maxAttempts": 1} if limit == "maxAttempts" else {"maxAgeSecond": 3600}
    path = write_config(
        tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=0, extra={"failurePool": pool_limits}
    )
    sync, pool = dags_of(path)
    assert task_states(run_dag(sync)) == {"compare": "success", "deliver": "failed"}

    stats = pool_stats(path)
    assert stats["config"] == stem
    assert (stats["parked"], stats["pending"], stats["delivered"], stats["dead"]) == (4, 0, 0, 0)
    assert isinstance(stats["oldestParkedSecond"], int)

    listing = pool_command("list", str(path), "--status", "parked")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.strip().splitlines()
    assert lines[-1] == "4 item(s)"
    rows = [line for line in lines if "| parked |" in line]
    assert len(rows) == 4 and all("HTTP 503" in line for line in rows), lines
    as_json = pool_command("list", str(path), "--status", "parked", "--json")
    assert as_json.returncode == 0, as_json.stderr
    documents = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {d["lastBody"]["srcColumn"]["number"] for d in documents} == planted
    assert {d["status"] for d in documents} == {"parked"}
    assert {d["idempotencyKey"] for d in documents} == {h.idempotency_key for h in receiver.hits}
    unknown = pool_command("list", str(path), "--status", "lost")
    assert unknown.returncode != 0 and "unknown status(es) lost" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    # the failure pool gives up on them: one attempt made (maxAttempts=1), or queued 2 h ago (maxAgeSecond=3600)
    if limit == "maxAgeSecond":
        conn = mariadb.connect(fresh_database)
        try:
            conn.cursor().execute(
                "UPDATE cupid_delivery SET detected_at = NOW(6) - INTERVAL 2 HOUR, "
                "queued_at = NOW(6) - INTERVAL 2 HOUR WHERE config = %s",
                (stem,),
            )
        finally:
            conn.close()
    run_dag(pool)
    stats = pool_stats(path)
    assert (stats["parked"], stats["dead"]) == (0, 4)

    requeued = pool_command("requeue", str(path))
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"requeued 4 item(s) into the failure pool of {stem}"
    stats = pool_stats(path)
    assert (stats["parked"], stats["dead"]) == (4, 0)

    # the receiver is fixed; the requeued items get their retry and are delivered
    receiver.respond = None
    pool_run = run_dag(pool)
    final = statuses(store_rows(mariadb, fresh_database, stem))
    assert final == {"delivered": 4}, f"requeued items were not delivered by the next failure-pool run: {dict(final)}"
    assert task_states(pool_run) == {"drain": "success"}
    assert receiver.ok_keys() == planted


def test_pool_purge_refuses_undelivered_items_without_the_force_flag(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 6)
    good = {number_of(i) for i in (1, 3, 5)}
    receiver = receivers(respond=lambda hit, nth: 204 if hit.key in good else 503)
    stem = new_stem("purge")
    path = write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=0)
    sync, _ = dags_of(path)
    assert task_states(run_dag(sync)) == {"compare": "success", "deliver": "failed"}
    by_status = lambda: {(r.key, r.status) for r in store_rows(mariadb, fresh_database, stem)}  # noqa: E731
    before = by_status()
    assert before == {(k, "delivered" if k in good else "parked") for k in planted}

    for status in ("parked", "pending", "dead", "delivered,parked"):
        refused = pool_command("purge", str(path), "--status", status)
        assert refused.returncode != 0, (status, refused.stdout)
        assert "refusing to purge undelivered items" in refused.stderr
        assert "--i-know-this-loses-data" in refused.stderr
        assert by_status() == before

    unconfirmed = pool_command("purge", str(path))
    assert unconfirmed.returncode != 0 and "--yes" in unconfirmed.stderr
    assert by_status() == before
    purged = pool_command("purge", str(path), "--yes")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == f"purged 3 item(s) of {stem}"
    assert by_status() == {(k, "parked") for k in planted - good}

    forced = pool_command("purge", str(path), "--status", "parked", "--i-know-this-loses-data", "--yes")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == f"purged 3 item(s) of {stem}"
    assert by_status() == set()


# == 10. backpressure: concurrency and rate limit ===========================================================


def test_no_more_requests_in_flight_than_worker_number(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 200)
    receiver = receivers(delay=0.02)
    stem = new_stem("conc")
    sync, _ = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, worker_number=4))

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert receiver.ok_keys() == planted
    assert len(receiver.hits) == 200
    assert receiver.max_in_flight <= 4
    assert receiver.max_in_flight >= 3, "workerNumber=4 should give concurrent requests"


def test_rate_limit_per_second_is_respected(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 40)
    receiver = receivers()
    stem = new_stem("rate")
    sync, _ = dags_of(
        write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            receiver.url,
            worker_number=8,
            callback={"rateLimitPerSecond": 25},
        )
    )

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert receiver.ok_keys() == planted
    times = sorted(h.at for h in receiver.hits)
    # 40 starts at most 25 per second apart: the last one no sooner than 39/25 = 1.56 s after the first
    assert times[-1] - times[0] >= 1.5, times[-1] - times[0]
    # and in no window of 1 s more than 25 + 1 starts (burst of one)
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 26
