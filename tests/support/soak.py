"""The seeded invariant soak: the real core against MariaDB and applying receivers, under random faults.

One soak is a sequence of rounds driven by one seed. Each round:

- the *source* gets random inserts, updates (every update raises the row's ``ver``, a counter that
  only grows, so ``ver`` orders the versions of a key) and deletes;
- a lossy *CDC* copies some changed rows to each destination, drops others, replays stale versions,
  lets destination rows drift and deletes some;
- the *receivers* (one per destination, loopback HTTP servers that, like the owning application,
  apply the ``srcColumn`` they get to the destination table) answer 2xx at once or slowly, 5xx,
  time out after applying, or reset the connection, as the round's fault plan says;
- cupid runs: a sync run, several dispatchers at once (the sync DAG's ``deliver`` tries, the
  failure-pool drain, a dispatcher in a child process that is SIGKILLed at a random moment), while
  a killer closes random state-database connections.

Then it quiesces: faults stop, a full rescan (``start_id`` at the lowest id) records whatever
still differs, and dispatch runs until nothing is live. The invariants checked:

1. every destination equals the source (every difference was detected, recorded and delivered);
2. per (destination, key), callbacks arrive in non-decreasing ``ver`` (never an older row after a
   newer one);
3. an ``Idempotency-Key`` always carries the same body;
4. nothing is left pending, parked, dead or claimed;
5. attempts recorded in the store never exceed the requests the receiver got for that key.

``run_soak`` returns a report; ``report.violations`` lists every broken invariant with its evidence.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = Path(__file__).resolve().parents[2]
CONFIG = "soak"
COLUMNS = {"name": "name", "ver": "ver"}
CALLBACK_TIMEOUT = 0.6
LATE_COMMIT_SECOND = 3  # the soak's lateCommitSecond
LATE_COMMIT_MAX = 1.5  # a late insert commits at most this long after it began: within the guarantee
MODES = ("ok", "lag", "fail", "slow", "reset")


@dataclass(frozen=True)
class Server:
    """Where the MariaDB server is."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""

    def connect(self, database: str | None = None) -> Any:
        import MySQLdb

        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "autocommit": True,
        }
        if database:
            kwargs["database"] = database
        return MySQLdb.connect(**kwargs)


@dataclass
class SoakSettings:
    """What one soak does; everything random comes from ``seed``."""

    seed: int
    rounds: int = 12
    initial_rows: int = 120
    destinations: int = 2
    changes_per_round: int = 25
    dispatchers: int = 2
    kill_child_every: int = 3  # rounds; 0: never start a child dispatcher
    kill_connections: bool = True
    faults: bool = True
    cdc_loss: float = 0.5  # share of source changes the CDC never copies to a destination
    late_commits: bool = True  # inserts whose transaction commits up to LATE_COMMIT_MAX later
    sparse_ids: bool = True  # some inserts jump ahead by up to 100,000 ids


@dataclass
class Arrival:
    """One request a receiver got, in arrival order."""

    destination: str
    key: str | None
    ver: int | None
    type: int | None
    idempotency_key: str | None
    body_digest: str
    mode: str


@dataclass
class SoakReport:
    seed: int
    rounds: int = 0
    source_changes: int = 0
    cdc_copies: int = 0
    drifts: int = 0
    requests: int = 0
    late_commits: int = 0
    kills: int = 0
    connection_kills: int = 0
    task_failures: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"seed {self.seed}: {self.rounds} rounds, {self.source_changes} source changes ({self.late_commits} "
            f"committed late), {self.cdc_copies} CDC copies, {self.drifts} drifts, {self.requests} callbacks, "
            f"{self.kills} dispatchers SIGKILLed, "
            f"{self.connection_kills} state connections killed, {self.task_failures} failed tasks, "
            f"{self.seconds:.1f} s, {len(self.violations)} violation(s)"
        )


# -- the application side: receivers that apply what they get -------------------------------------------------


class ApplyingReceiver:
    """A callback receiver that applies each body's ``srcColumn`` to its destination table."""

    def __init__(self, server: Server, database: str, destination: str, table: str) -> None:
        self.server = server
        self.database = database
        self.destination = destination
        self.table = table
        self.mode = "ok"
        self.arrivals: list[Arrival] = []
        self.lock = threading.Lock()
        self.local = threading.local()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.handle(self, body)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (timeouts) or was killed: nothing to report

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/callback/{destination}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _conn(self) -> Any:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self.server.connect(self.database)
        return conn

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        mode = self.mode
        try:
            document = json.loads(body)
            row = document.get("srcColumn") or {}
            key = row.get("number") if row else document.get("key")
            ver = int(row["ver"]) if row.get("ver") is not None else None
            kind = int(document["type"])
        except (ValueError, KeyError, TypeError):
            document, key, ver, kind = {}, None, None, None
        with self.lock:
            self.arrivals.append(
                Arrival(
                    self.destination,
                    key,
                    ver,
                    kind,
                    request.headers.get("Idempotency-Key"),
                    hashlib.sha256(body).hexdigest(),
                    mode,
                )
            )
        if mode == "reset":
            request.close_connection = True
            with contextlib.suppress(OSError):
                request.connection.shutdown(2)
            return
        if mode == "fail":
            self._answer(request, 503)
            return
        self._apply(document)
        if mode == "slow":  # applied, but the answer comes after the caller gave up
            time.sleep(CALLBACK_TIMEOUT + 0.4)
        elif mode == "lag":  # applied, answered in time, slowly
            time.sleep(CALLBACK_TIMEOUT / 2)
        self._answer(request, 200)

    def _apply(self, document: dict[str, Any]) -> None:
        kind = document.get("type")
        row = document.get("srcColumn") or {}
        cur = self._conn().cursor()
        if kind in (1, 2):
            cur.execute(
                f"INSERT INTO `{self.table}` (number, name, ver) VALUES (%s, %s, %s) "
                "ON DUPLICATE KEY UPDATE name = VALUES(name), ver = VALUES(ver)",
                (row.get("number"), row.get("name"), row.get("ver")),
            )
        elif kind == 3:
            key = (document.get("desColumn") or {}).get("number") or document.get("key")
            cur.execute(f"DELETE FROM `{self.table}` WHERE number = %s", (key,))

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int) -> None:
        with contextlib.suppress(OSError):
            request.send_response(status)
            request.send_header("Content-Length", "0")
            request.end_headers()


# -- the world: source, destinations, CDC --------------------------------------------------------------------


class World:
    """The source table, its destination copies and a lossy CDC between them."""

    def __init__(self, server: Server, database: str, settings: SoakSettings, rng: random.Random) -> None:
        self.server = server
        self.database = database
        self.settings = settings
        self.rng = rng
        self.conn = server.connect(database)
        self.ver = 0
        self.next_number = 0
        self.history: dict[str, list[tuple[str, int]]] = {}  # key -> (name, ver) versions ever written
        self.changed: list[str] = []  # keys changed since the CDC last looked
        self.destinations = [f"d{n}" for n in range(settings.destinations)]
        # (destination, key) whose destination row was changed by something other than a faithful copy
        # after the source row last changed: only a full rescan can see those
        self.dirty: set[tuple[str, str]] = set()
        self.open_inserts: list[tuple[Any, float, str]] = []  # (connection, commit at, key): late commits

    def execute(self, sql: str, args: Any = None) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql, args)
        return cur

    def create(self) -> None:
        self.execute(
            "CREATE TABLE src (id BIGINT AUTO_INCREMENT PRIMARY KEY, number VARCHAR(32) NOT NULL, "
            "name VARCHAR(64) NULL, ver BIGINT NOT NULL, "
            "update_time DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), "
            "UNIQUE KEY uq_number (number), KEY ix_update (update_time))"
        )
        for name in self.destinations:
            self.execute(
                f"CREATE TABLE `{name}` (id BIGINT AUTO_INCREMENT PRIMARY KEY, number VARCHAR(32) NOT NULL, "
                "name VARCHAR(64) NULL, ver BIGINT NULL, UNIQUE KEY uq_number (number))"
            )
        for _ in range(self.settings.initial_rows):
            self.insert()
        for name in self.destinations:  # the copies start mostly in sync
            self.execute(f"INSERT INTO `{name}` (number, name, ver) SELECT number, name, ver FROM src")
        self.changed.clear()

    def _version(self, key: str) -> tuple[str, int]:
        self.ver += 1
        version = (f"{key} v{self.ver} {self.rng.choice(['ada', 'bob', 'cy', 'dee'])}", self.ver)
        self.history.setdefault(key, []).append(version)
        self._source_changed(key)
        return version

    def _source_changed(self, key: str) -> None:
        self.changed.append(key)
        for destination in self.destinations:
            self.dirty.discard((destination, key))

    def insert(self, *, late: bool = False) -> None:
        self.next_number += 1
        key = f"k{self.next_number:06d}"
        name, ver = self._version(key)
        sql, args = "INSERT INTO src (number, name, ver) VALUES (%s, %s, %s)", (key, name, ver)
        if late:
            conn = self.server.connect(self.database)  # a transaction that commits a while after its id was taken
            conn.autocommit(False)
            conn.cursor().execute(sql, args)
            self.open_inserts.append((conn, time.monotonic() + self.rng.uniform(0.1, LATE_COMMIT_MAX), key))
            return
        if self.settings.sparse_ids and self.rng.random() < 0.15:  # snowflake-like jumps ahead
            top = self.execute("SELECT COALESCE(MAX(id), 0) FROM src").fetchone()[0]
            for _ in range(5):  # an id an open late insert holds (not visible yet) is taken: jump again
                with contextlib.suppress(Exception):
                    jump = self.rng.randint(20, 100_000)
                    explicit = "INSERT INTO src (id, number, name, ver) VALUES (%s, %s, %s, %s)"
                    self.execute(explicit, (top + jump, *args))
                    return
        self.execute(sql, args)

    def commit_due(self, everything: bool = False) -> None:
        """Commit the late inserts whose time has come (all of them with ``everything``)."""
        now = time.monotonic()
        for entry in list(self.open_inserts):
            conn, at, key = entry
            if everything or at <= now:
                conn.commit()
                conn.close()
                self.open_inserts.remove(entry)
                self._source_changed(key)  # visible now: the CDC sees it from here on

    def keys(self) -> list[str]:
        return [r[0] for r in self.execute("SELECT number FROM src").fetchall()]

    def mutate(self, changes: int) -> int:
        """Random inserts, updates and deletes of the source; A->B->A reverts included."""
        keys = self.keys()
        done = 0
        for _ in range(changes):
            roll = self.rng.random()
            if roll < 0.3 or not keys:
                self.insert()
            elif roll < 0.9:
                # half the updates hit a few hot rows, as real tables have: they change while being repaired
                key = self.rng.choice(keys[:5] if self.rng.random() < 0.5 else keys)
                history = self.history.get(key) or []
                if len(history) >= 2 and self.rng.random() < 0.2:  # back to an earlier name: A -> B -> A
                    name = history[-2][0]
                    self.ver += 1
                    ver = self.ver
                    history.append((name, ver))
                    self._source_changed(key)
                else:
                    name, ver = self._version(key)
                self.execute("UPDATE src SET name = %s, ver = %s WHERE number = %s", (name, ver, key))
            else:
                key = self.rng.choice(keys)
                self.execute("DELETE FROM src WHERE number = %s", (key,))
                keys.remove(key)
                self._source_changed(key)
            done += 1
        return done

    def cdc(self, report: SoakReport) -> None:
        """Copy changed rows to each destination, dropping some; replay stale versions; drift; delete."""
        changed = list(dict.fromkeys(self.changed))
        self.changed.clear()
        current = {}
        if changed:
            rows = self.execute(
                f"SELECT number, name, ver FROM src WHERE number IN ({', '.join(['%s'] * len(changed))})", changed
            ).fetchall()
            current = {r[0]: (r[1], r[2]) for r in rows}
        for destination in self.destinations:
            for key in changed:
                roll = self.rng.random()
                if roll < self.settings.cdc_loss:
                    continue  # lost by the CDC
                roll = self.rng.random()
                if key not in current:
                    if roll < 0.75:
                        self.execute(f"DELETE FROM `{destination}` WHERE number = %s", (key,))
                    continue
                name, ver = current[key]
                history = self.history.get(key) or []
                if roll < 0.15 and len(history) >= 2:  # a stale event applied late
                    name, ver = self.rng.choice(history[:-1])
                    self.dirty.add((destination, key))
                self.execute(
                    f"INSERT INTO `{destination}` (number, name, ver) VALUES (%s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE name = VALUES(name), ver = VALUES(ver)",
                    (key, name, ver),
                )
                report.cdc_copies += 1
            keys = self.keys()
            for _ in range(self.rng.randint(0, 3)):  # drift of rows the source did not touch
                if not keys:
                    break
                key = self.rng.choice(keys)
                if self.rng.random() < 0.3:
                    self.execute(f"DELETE FROM `{destination}` WHERE number = %s", (key,))
                else:
                    self.execute(f"UPDATE `{destination}` SET name = 'drifted' WHERE number = %s", (key,))
                self.dirty.add((destination, key))
                report.drifts += 1

    def differences(self, *, detectable_only: bool = False) -> list[str]:
        """Every (destination, key) whose row differs from the source's (keys the source has).

        :param detectable_only: only keys an incremental scan must have seen: those whose source
            row changed after anything else last touched their destination row.
        """
        out = []
        source = {r[0]: (r[1], int(r[2])) for r in self.execute("SELECT number, name, ver FROM src").fetchall()}
        for destination in self.destinations:
            rows = self.execute(f"SELECT number, name, ver FROM `{destination}`").fetchall()
            held = {r[0]: (r[1], None if r[2] is None else int(r[2])) for r in rows}
            for key, value in source.items():
                if detectable_only and (destination, key) in self.dirty:
                    continue
                if held.get(key) != value:
                    kind = "after incremental scans" if detectable_only else "after a full rescan"
                    out.append(f"{destination}/{key} ({kind}): source {value}, destination {held.get(key)}")
        return out

    def traffic(self, stop: threading.Event, report: SoakReport) -> None:
        """The application and the CDC at work while cupid runs: changes, late commits, copies, drift."""
        while not stop.is_set():
            report.source_changes += self.mutate(self.rng.randint(1, 4))
            if self.settings.late_commits and self.rng.random() < 0.15:
                self.insert(late=True)
                report.late_commits += 1
            self.commit_due()
            if self.rng.random() < 0.5:
                self.cdc(report)
            stop.wait(self.rng.uniform(0.01, 0.08))
        self.commit_due(everything=True)


# -- the cupid side ------------------------------------------------------------------------------------------


class StateKiller:
    """Kills random connections to the state database while it runs."""

    def __init__(self, server: Server, state_database: str, rng: random.Random, report: SoakReport) -> None:
        self.server = server
        self.state_database = state_database
        self.rng = random.Random(rng.random())
        self.report = report
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> StateKiller:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        conn = self.server.connect()
        try:
            while not self.stop.wait(self.rng.uniform(0.05, 0.4)):
                cur = conn.cursor()
                cur.execute(
                    "SELECT id FROM information_schema.PROCESSLIST WHERE DB = %s AND ID != CONNECTION_ID()",
                    (self.state_database,),
                )
                ids = [r[0] for r in cur.fetchall()]
                if ids:
                    with contextlib.suppress(Exception):
                        cur.execute(f"KILL CONNECTION {int(self.rng.choice(ids))}")
                        self.report.connection_kills += 1
        finally:
            conn.close()


def soak_databases(prefix: str) -> tuple[str, str]:
    return f"{prefix}_data", f"{prefix}_state"


def run_soak(
    settings: SoakSettings,
    server: Server,
    prefix: str,
    cupid_factory: Callable[[Server, str, str, dict[str, str], random.Random], Any],
) -> SoakReport:
    """Run one seeded soak in fresh databases ``<prefix>_data`` and ``<prefix>_state``; drop them after."""
    rng = random.Random(settings.seed)
    report = SoakReport(settings.seed)
    data, state = soak_databases(prefix)
    admin = server.connect()
    for database in (data, state):
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.cursor().execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    started = time.monotonic()
    world = World(server, data, settings, random.Random(rng.random()))
    receivers: dict[str, ApplyingReceiver] = {}
    try:
        world.create()
        receivers = {d: ApplyingReceiver(server, data, d, d) for d in world.destinations}
        urls = {d: r.url for d, r in receivers.items()}
        cupid = cupid_factory(server, data, state, urls, random.Random(rng.random()))
        for number in range(settings.rounds):
            report.rounds = number + 1
            report.source_changes += world.mutate(rng.randint(1, settings.changes_per_round))
            world.cdc(report)
            for receiver in receivers.values():
                receiver.mode = rng.choice(MODES) if settings.faults and rng.random() < 0.6 else "ok"
            killer = (
                StateKiller(server, state, rng, report)
                if settings.kill_connections and rng.random() < 0.5
                else contextlib.nullcontext()
            )
            stop = threading.Event()
            traffic = threading.Thread(target=world.traffic, args=(stop, report))
            traffic.start()
            try:
                with killer:
                    _cupid_round(cupid, settings, rng, report, number)
            finally:
                stop.set()
                traffic.join()
        for receiver in receivers.values():
            receiver.mode = "ok"
        _quiesce(cupid, report)
        report.violations += world.differences(detectable_only=True)
        _full_rescan(cupid, report)
        report.violations += world.differences()
        report.violations += _arrival_violations(receivers)
        report.violations += cupid.store_violations(_arrivals_per_key(receivers))
        report.requests = sum(len(r.arrivals) for r in receivers.values())
    finally:
        for receiver in receivers.values():
            receiver.stop()
        world.conn.close()
        for database in (data, state):
            with contextlib.suppress(Exception):
                admin.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()
    report.seconds = time.monotonic() - started
    return report


def _attempt(step: Callable[[], Any]) -> int:
    """Run one cupid task body; a failure counts like a failed Airflow try (the next one carries on)."""
    try:
        step()
    except Exception:
        return 1
    return 0


def _cupid_round(cupid: Any, settings: SoakSettings, rng: random.Random, report: SoakReport, number: int) -> None:
    """One round of cupid, everything at once: sync runs, deliver tries, a failure-pool drain, maybe a
    child dispatcher to SIGKILL, while the source and the destinations keep changing."""
    failures: list[int] = []

    def deliver() -> None:
        for attempt in range(2):  # two Airflow tries; the last one parks what still fails
            if not _attempt(lambda a=attempt: cupid.deliver(last_try=a == 1)):
                return
            failures.append(1)

    def sync() -> None:
        for _ in range(rng.randint(1, 3)):
            failures.append(_attempt(cupid.sync))

    threads = [threading.Thread(target=deliver) for _ in range(settings.dispatchers)]
    threads.append(threading.Thread(target=lambda: failures.append(_attempt(cupid.drain))))
    threads.append(threading.Thread(target=sync))
    for thread in threads:
        thread.start()
    if settings.kill_child_every and number % settings.kill_child_every == 0:
        child = cupid.start_child()
        time.sleep(rng.uniform(0.2, 1.5))
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            report.kills += 1
        child.wait()
    for thread in threads:
        thread.join()
    report.task_failures += sum(failures)


def _quiesce(cupid: Any, report: SoakReport) -> None:
    """No more faults or changes: incremental scans until caught up, then deliver until nothing is live."""
    _sync_until_caught_up(cupid, report)
    _drain_all(cupid, report)


def _full_rescan(cupid: Any, report: SoakReport) -> None:
    """What a user does to repair what incremental scans cannot see: a rescan from the first id."""
    _sync_until_caught_up(cupid, report, full=True)
    _drain_all(cupid, report)


def _sync_until_caught_up(cupid: Any, report: SoakReport, full: bool = False) -> None:
    """Sync runs (bounded ones stop partway) until one ends caught up; a failed run counts and goes on."""
    for n in range(500):
        try:
            if cupid.sync(full=full and n == 0) and n >= 2:  # 2 more: the update window reaches now
                return
        except Exception:
            report.task_failures += 1
    raise AssertionError("sync runs never caught up")


def _drain_all(cupid: Any, report: SoakReport) -> None:
    for _ in range(60):
        report.task_failures += _attempt(lambda: cupid.deliver(last_try=False))
        report.task_failures += _attempt(cupid.drain)
        if cupid.live() == 0:
            return
        time.sleep(0.5)  # a killed child's claims expire with their lease


def _arrivals_per_key(receivers: dict[str, ApplyingReceiver]) -> dict[tuple[str, str], list[Arrival]]:
    per_key: dict[tuple[str, str], list[Arrival]] = {}
    for receiver in receivers.values():
        for arrival in receiver.arrivals:
            if arrival.key is not None:
                per_key.setdefault((arrival.destination, arrival.key), []).append(arrival)
    return per_key


def _arrival_violations(receivers: dict[str, ApplyingReceiver]) -> list[str]:
    out: list[str] = []
    bodies: dict[str, str] = {}
    for (destination, key), arrivals in _arrivals_per_key(receivers).items():
        newest = -1
        for arrival in arrivals:
            if arrival.ver is not None:
                if arrival.ver < newest:
                    out.append(f"{destination}/{key}: ver {arrival.ver} arrived after ver {newest}")
                newest = max(newest, arrival.ver)
    for receiver in receivers.values():
        for arrival in receiver.arrivals:
            if arrival.idempotency_key is None:
                out.append(f"{arrival.destination}/{arrival.key}: a callback without an Idempotency-Key")
                continue
            seen = bodies.setdefault(arrival.idempotency_key, arrival.body_digest)
            if seen != arrival.body_digest:
                out.append(
                    f"{arrival.destination}/{arrival.key}: Idempotency-Key {arrival.idempotency_key[:12]} "
                    "carried two different bodies"
                )
    return out


def iter_seeds(first: int, count: int) -> Iterator[int]:
    yield from range(first, first + count)


def child_main(argv: list[str]) -> None:
    """Entry of the child dispatcher (``python -m tests.support.soak child <json>``)."""
    from tests.support.soak_cupid import child_dispatch

    child_dispatch(json.loads(argv[0]))


def start_child(arguments: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start a child dispatcher in its own process group (so SIGKILL reaches all of it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.soak", "child", json.dumps(arguments)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child_main(sys.argv[2:])
