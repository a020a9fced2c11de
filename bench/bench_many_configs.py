"""Many configs through the real scheduler: successful sync runs against the ideal count, and CPU.

For each N of ``--configs``: N source tables of ``--rows`` rows in MariaDB (database
``cupid_bench_many``) with exact copies, N config files at a ``--interval`` schedule (5 s), a
loopback receiver in its own process, and a fresh Airflow started in its own session:

  ``--mode standalone``  ``airflow standalone`` (LocalExecutor, SQLite metadata DB), as scripts/demo.sh runs it
  ``--mode celery``      ``scripts/cluster.sh`` (CeleryExecutor, Postgres, Redis, two workers)

Every sync DAG is unpaused at creation. After a warm-up (every sync DAG has a successful run, then
``--settle`` seconds) a window of ``--minutes`` starts; one row is inserted into a random source table
every ``--change-every`` seconds (its callback is expected). At the end of the window (plus a grace for
runs still going) it prints, per N:

- successful sync runs whose scheduled time fell in the window, against the ideal N x window / interval;
  failed runs; mean delay from scheduled time to start, and mean run time;
- CPU over the window, as a share of the whole host (all cores): the Airflow process tree (every process
  descended from the components, task processes included, from /proc: own CPU plus that of reaped
  children), the host as a whole (/proc/stat; other sessions count there too), and the shared services
  (mariadbd, postgres, redis-server by process name; other sessions use them too); CPU seconds per run;
- where the tree's CPU went: CPU seconds by process title (``airflow scheduler``, task runners, ...),
  short-lived processes counted under the parent that reaped them.

Both deployments preload cupid in every Airflow process (``cupid_airflow.preload`` from
``airflow_local_settings.py``); ``--no-preload`` runs standalone without it. Figures depend on the other
load on the machine: the host CPU line says how busy it was.
``--no-bytecode-cache`` makes every Airflow process compile Python from source again (what happened
before scripts/setup.sh compiled bytecode, with PYTHONDONTWRITEBYTECODE set), to measure that cost.

    .venv/bin/python bench/bench_many_configs.py --configs 5 20 30 40 --minutes 3
    .venv/bin/python bench/bench_many_configs.py --configs 30 --mode celery
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.receiver import serve
from cupid_airflow.core.sql import ConnectionParams, connect
from tests.support.standalone import PREFIX, Standalone, free_port

REPO = Path(__file__).resolve().parent.parent
DATABASE = "cupid_bench_many"
TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
SERVICES = ("mariadbd", "postgres", "redis-server")


# -- the data -----------------------------------------------------------------------------------------------
def build_tables(params: ConnectionParams, configs: int, rows: int) -> None:
    """``src<i>(id, code, name)`` with ``rows`` rows and an exact copy ``dst<i>``; an empty delivery store."""
    conn = connect(params)
    cursor = conn.cursor()
    cursor.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    cursor.execute(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
    cursor.execute(f"USE {DATABASE}")
    for i in range(configs):
        cursor.execute(
            f"CREATE TABLE src{i} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
            "name VARCHAR(64) NULL, UNIQUE KEY (code))"
        )
        cursor.execute(f"INSERT INTO src{i} SELECT seq, CONCAT('k', seq), CONCAT('n', seq) FROM seq_1_to_{rows}")
        cursor.execute(f"CREATE TABLE dst{i} (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)")
        cursor.execute(f"INSERT INTO dst{i} SELECT code, name FROM src{i}")
    conn.close()


def write_configs(folder: Path, configs: int, interval_ms: int, receiver_url: str, params: ConnectionParams) -> None:
    dsn = f"{params.user}:{params.password}@tcp({params.host}:{params.port})/{DATABASE}?charset=utf8mb4"
    for i in range(configs):
        config = {
            "src": {"dsn": dsn, "table": f"src{i}", "byColumn": "code", "insertIntervalMillisecond": interval_ms},
            "des": [
                {
                    "name": "copy",
                    "dsn": dsn,
                    "table": f"dst{i}",
                    "byColumn": "code",
                    "columns": {"code": "code", "name": "name"},
                    "callbackNotification": {"url": f"{receiver_url}/cb/{i}", "timeoutSecond": 5},
                }
            ],
        }
        (folder / f"{PREFIX}{i:03d}.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


class Changer(threading.Thread):
    """Inserts one row into a random source table every ``every`` seconds until stopped."""

    def __init__(self, params: ConnectionParams, configs: int, every: float) -> None:
        super().__init__(daemon=True)
        self.params, self.configs, self.every = params, configs, every
        self.inserted = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = connect(dataclasses.replace(self.params, database=DATABASE))
        cursor = conn.cursor()
        while not self.halt.wait(self.every):
            table = random.randrange(self.configs)
            cursor.execute(f"INSERT INTO src{table} (code, name) VALUES ('new-{secrets.token_hex(6)}', 'added')")
            conn.commit()
            self.inserted += 1
        conn.close()


def _receiver(port_queue: Any) -> None:
    from aiohttp import web

    posts = Counter[str]()

    async def callback(request: web.Request) -> web.Response:
        await request.read()
        posts[request.match_info["config"]] += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"posts": sum(posts.values())})

    app = web.Application()
    app.router.add_post("/cb/{config}", callback)
    app.router.add_get("/stats", stats)
    serve(app, port_queue)


# -- CPU from /proc -------------------------------------------------------------------------------------------
@dataclass
class Proc:
    ppid: int
    title: str
    own: int  # utime + stime, ticks
    children: int  # cutime + cstime: reaped children, ticks


def read_procs() -> dict[int, Proc]:
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        comm_end = stat.rindex(")")
        comm = stat[stat.index("(") + 1 : comm_end]
        fields = stat[comm_end + 2 :].split()
        procs[int(entry)] = Proc(
            ppid=int(fields[1]),
            title=title_of(cmdline or comm, comm),
            own=int(fields[11]) + int(fields[12]),
            children=int(fields[13]) + int(fields[14]),
        )
    return procs


ROLES = (  # (pattern on the process title, role); the first match wins
    (r"^airflow worker -- LocalExecutor", "LocalExecutor worker (supervises a task)"),
    (r"^airflow worker -- [0-9a-f-]{36}$", "task runner"),
    (r"^airflow task supervisor:|^airflow supervisor:", "task supervisor"),
    (r"\bapi[-_]server\b", "api-server"),
    (r"\bdag-processor\b|DagFileProcessor", "dag-processor"),
    (r"\bscheduler\b", "scheduler"),
    (r"\btriggerer\b", "triggerer"),
    (r"\bcelery worker\b|\[celeryd:|celery@|ForkPoolWorker|MainProcess", "celery worker"),
    (r"\bserve-logs\b", "serve-logs"),
    (r"\bstandalone\b", "standalone"),
)


def title_of(cmdline: str, comm: str) -> str:
    """The role of a process in the deployment, from its title (setproctitle) or command line."""
    if comm in SERVICES:
        return comm
    for pattern, role in ROLES:
        if re.search(pattern, cmdline):
            return role
    text = re.sub(r"\S*/", "", cmdline)  # paths -> base names
    return "other: " + re.sub(r"\b[0-9a-f]{8}-[0-9a-f-]{27}\b|\d+", "#", text)[:70]


def host_busy() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


@dataclass
class CpuMeter:
    """Samples /proc every second: CPU of the process trees under ``roots`` by title, and of the services."""

    roots: set[int]
    by_title: Counter[str] = field(default_factory=Counter)
    services: Counter[str] = field(default_factory=Counter)
    total: int = 0
    host: tuple[int, int] = (0, 0)
    _last: dict[int, Proc] = field(default_factory=dict)

    def tree(self, procs: dict[int, Proc]) -> set[int]:
        children: defaultdict[int, list[int]] = defaultdict(list)
        for pid, proc in procs.items():
            children[proc.ppid].append(pid)
        found, todo = set(), [r for r in self.roots if r in procs]
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo.extend(children[pid])
        return found

    def start(self) -> None:
        procs = read_procs()
        members = self.tree(procs)
        self._last = {pid: procs[pid] for pid in members | self._service_pids(procs)}
        self.host = host_busy()

    def _service_pids(self, procs: dict[int, Proc]) -> set[int]:
        return {pid for pid, proc in procs.items() if proc.title in SERVICES}

    def sample(self) -> None:
        procs = read_procs()
        members = self.tree(procs)
        services = self._service_pids(procs)
        last = self._last
        vanished: defaultdict[int, int] = defaultdict(int)  # parent pid -> what its vanished children had used
        for pid, proc in last.items():
            if pid not in procs:
                vanished[proc.ppid] += proc.own + proc.children
        for pid in members | services:
            proc = procs[pid]
            before = last.get(pid)
            own = proc.own - (before.own if before else 0)
            reaped = proc.children - (before.children if before else 0) - (vanished[pid] if before else 0)
            if pid in services:
                self.services[proc.title] += own + reaped
                continue
            self.by_title[proc.title] += own
            if reaped:
                self.by_title[f"  reaped by {proc.title}"] += reaped
            self.total += own + reaped
        self._last = {pid: procs[pid] for pid in members | services}

    def host_share(self) -> float:
        busy, total = host_busy()
        return (busy - self.host[0]) / max(1, total - self.host[1])


# -- Airflow deployments ----------------------------------------------------------------------------------------
class Cluster:
    """``scripts/cluster.sh`` with a folder, Postgres database and Celery queue of its own."""

    label = "scripts/cluster.sh (CeleryExecutor, Postgres, Redis, 2 workers)"

    def __init__(self, work: Path, configs_folder: Path, env: dict[str, str], parallelism: int, preload: bool) -> None:
        if not preload:
            raise SystemExit("--no-preload: scripts/cluster.sh always preloads cupid")
        token = secrets.token_hex(3)
        self.database = f"cupid_bench_many_{token}"
        self.env = {
            **env,
            "CUPID_CLUSTER_DIR": str(work / "cluster"),
            "CUPID_CLUSTER_PG_DB": self.database,
            "CUPID_CLUSTER_QUEUE": f"cupid_bench_{token}",
            "CUPID_CLUSTER_API_PORT": str(free_port()),
            "CUPID_CLUSTER_CONCURRENCY": str(max(1, parallelism // 2)),
            "CUPID_CONFIG_FOLDER": str(configs_folder),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        }
        self.folder = work / "cluster"

    def script(self, *args: str) -> None:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "cluster.sh"), *args], env=self.env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> set[int]:
        self.script("start")
        return {int(p.read_text()) for p in (self.folder / "pids").glob("*.pid")}

    def runs(self) -> list[tuple[str, str, datetime, datetime | None, datetime | None]]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.database) as conn:
            rows = conn.execute(
                "SELECT dag_id, state, run_after, start_date, end_date FROM dag_run WHERE dag_id LIKE %s",
                (f"cupid_{PREFIX}%_sync",),
            ).fetchall()
        return [tuple(row) for row in rows]

    def stop(self) -> None:
        self.script("destroy")


# -- one measurement ----------------------------------------------------------------------------------------------
@dataclass
class Result:
    configs: int
    ideal: float
    succeeded: int
    failed: int
    delay: float
    duration: float
    tree: float
    host: float
    services: dict[str, float]
    per_run: float
    callbacks: str
    by_title: list[tuple[str, float]]


def measure(args: argparse.Namespace, configs: int, params: ConnectionParams) -> Result:
    build_tables(params, configs, args.rows)
    work = Path(tempfile.mkdtemp(prefix="cupid-bench-many-"))
    configs_folder = work / "configs"
    configs_folder.mkdir()
    spawn = multiprocessing.get_context("spawn")
    port_queue: Any = spawn.Queue()
    receiver = spawn.Process(target=_receiver, args=(port_queue,), daemon=True)
    receiver.start()
    receiver_url = f"http://127.0.0.1:{port_queue.get(timeout=30)}"
    write_configs(configs_folder, configs, int(args.interval * 1000), receiver_url, params)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.pop("AIRFLOW_HOME", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    if args.no_bytecode_cache:
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(work / "no-pycache")})
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    deployment: Standalone | Cluster = (Standalone if args.mode == "standalone" else Cluster)(
        work, configs_folder, env, args.parallelism, not args.no_preload
    )
    changer = Changer(params, configs, args.change_every)
    try:
        started = time.monotonic()
        roots = deployment.start()
        warm_up(deployment, configs, args.warm_up_timeout)
        print(f"  N={configs}: every sync DAG ran after {time.monotonic() - started:.0f} s; settling {args.settle} s")
        time.sleep(args.settle)

        meter = CpuMeter(roots)
        meter.start()
        before = posts(receiver_url)
        window_start = datetime.now(UTC)
        changer.start()
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(1)
            meter.sample()
        changer.halt.set()
        window_end = datetime.now(UTC)
        host = meter.host_share()
        time.sleep(args.grace)  # runs scheduled in the window finish; new changes are not counted
        runs = [r for r in deployment.runs() if window_start <= r[2] < window_end]
        received = posts(receiver_url) - before
    finally:
        changer.halt.set()
        deployment.stop()
        receiver.terminate()
        if args.keep:
            print(f"  N={configs}: kept {work} (Airflow home or cluster folder, logs)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    seconds = (window_end - window_start).total_seconds()
    done = [r for r in runs if r[1] == "success" and r[3] and r[4]]
    succeeded = len(done)
    capacity = seconds * CORES * TICK
    return Result(
        configs=configs,
        ideal=configs * seconds / args.interval,
        succeeded=succeeded,
        failed=sum(1 for r in runs if r[1] == "failed"),
        delay=mean([(r[3] - r[2]).total_seconds() for r in done]),  # type: ignore[operator]
        duration=mean([(r[4] - r[3]).total_seconds() for r in done]),  # type: ignore[operator]
        tree=meter.total / capacity,
        host=host,
        services={name: ticks / capacity for name, ticks in meter.services.items()},
        per_run=meter.total / TICK / max(1, succeeded),
        callbacks=f"{received}/{changer.inserted}",
        by_title=[(title, ticks / TICK) for title, ticks in meter.by_title.most_common(args.top)],
    )


def warm_up(deployment: Standalone | Cluster, configs: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ran = {r[0] for r in deployment.runs() if r[1] == "success"}
        except Exception:  # the metadata DB is not migrated yet
            ran = set()
        if len(ran) >= configs:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(ran)} of {configs} sync DAGs had a successful run after {timeout:.0f} s")
        time.sleep(2)


def posts(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as answer:
        return int(json.loads(answer.read())["posts"])


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, nargs="+", default=[5, 20, 30, 40], help="config counts to measure")
    parser.add_argument("--mode", choices=("standalone", "celery"), default="standalone")
    parser.add_argument("--minutes", type=float, default=3.0, help="measurement window (default 3)")
    parser.add_argument("--interval", type=float, default=5.0, help="schedule of every sync DAG, seconds (5)")
    parser.add_argument("--rows", type=int, default=100, help="rows per source table (100)")
    parser.add_argument("--change-every", type=float, default=5.0, help="insert a row every this many seconds (5)")
    parser.add_argument("--parallelism", type=int, default=16, help="[core] parallelism; celery: /2 per worker")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds between warm-up and window (20)")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds for the window's last runs (20)")
    parser.add_argument("--warm-up-timeout", type=float, default=300.0)
    parser.add_argument("--top", type=int, default=12, help="process titles listed per N (12)")
    parser.add_argument("--no-preload", action="store_true", help="standalone: no cupid_airflow.preload")
    parser.add_argument("--keep", action="store_true", help="keep each N's work folder (logs) for inspection")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile Python from source in every process")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks stop Airflow and the receiver
    params = ConnectionParams()
    label = (Standalone if args.mode == "standalone" else Cluster).label
    print(
        f"many configs: {label}; schedule {args.interval:g} s; {args.minutes:g} min window; {CORES} cores; "
        f"parallelism {args.parallelism}; bytecode cache {'OFF' if args.no_bytecode_cache else 'on'}; "
        f"cupid preloaded {'NO' if args.no_preload else 'yes'}"
    )
    results = []
    for configs in args.configs:
        results.append(measure(args, configs, params))
        time.sleep(5)
    print()
    print("CPU is a share of the whole host (all cores). tree: the Airflow processes and their children;")
    print("host: /proc/stat, other sessions included; services: shared with other sessions.")
    header = (
        f"{'configs':>7} {'ideal':>6} {'success':>7} {'%ideal':>6} {'failed':>6} {'delay s':>7} {'run s':>5} "
        f"{'tree CPU':>8} {'host CPU':>8} {'CPU-s/run':>9} {'callbacks':>9}  services"
    )
    print(header)
    for r in results:
        services = ", ".join(f"{name} {share:.0%}" for name, share in sorted(r.services.items()))
        print(
            f"{r.configs:>7} {r.ideal:>6.0f} {r.succeeded:>7} {r.succeeded / r.ideal:>6.0%} {r.failed:>6} "
            f"{r.delay:>7.1f} {r.duration:>5.1f} {r.tree:>8.0%} {r.host:>8.0%} {r.per_run:>9.2f} "
            f"{r.callbacks:>9}  {services}"
        )
    for r in results:
        print(f"\nN={r.configs}: CPU seconds in the window by process title (top {args.top})")
        for title, seconds in r.by_title:
            print(f"  {seconds:8.1f}  {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
