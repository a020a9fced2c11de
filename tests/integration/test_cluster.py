"""scripts/cluster.sh runs the cupid DAGs unchanged on a real CeleryExecutor cluster.

One cluster for the module (about a minute to start): a Postgres metadata DB and a Redis broker on
this machine, scheduler, dag-processor, api-server, triggerer and two Celery workers as separate
processes, the repository's ``dags/`` folder, and ``CUPID_CONFIG_FOLDER`` pointing at one config over
a fresh MariaDB database whose callbacks go to a receiver in this test process. Its own Postgres
database, Celery queue and API port keep it apart from any other cluster on the machine. When
Postgres or Redis is down the fixture fails with the script's reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.receivers import Receiver, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import MariaDB

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster.sh"
ROWS = 300
MISSING = {5, 120, 299}
DIFFERENT = {17, 250}
TERMINAL = {"success", "failed"}


class Cluster:
    """A running cluster.sh cluster: its environment, folder and metadata database."""

    def __init__(self, folder: Path, env: dict[str, str], database: str) -> None:
        self.folder = folder
        self.env = env
        self.database = database

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def airflow(self, *args: str) -> str:
        result = self.run("airflow", *args)
        assert result.returncode == 0, f"airflow {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.database) as conn:
            return conn.execute(sql, params).fetchall()

    def worker_log(self, worker: str) -> str:
        return (self.folder / "logs" / f"{worker}.log").read_text(errors="replace")

    def session_ids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in (self.folder / "pids").glob("*.pid")}


def live_members(session_id: int) -> list[int]:
    """Live processes of a session (zombies are finished)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,stat="], capture_output=True, text=True, check=True).stdout
    return [
        int(pid)
        for pid, sid, stat in (line.split()[:3] for line in out.splitlines())
        if int(sid) == session_id and not stat.startswith("Z")
    ]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source_database(mariadb: MariaDB) -> Iterator[str]:
    """``src`` with ROWS rows and its copy ``dst`` with MISSING and DIFFERENT planted."""
    name = f"cupid_t_cluster_{secrets.token_hex(4)}"
    conn = mariadb.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        cursor.execute(f"USE `{name}`")
        cursor.execute(
            "CREATE TABLE src (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
            "name VARCHAR(64) NULL)"
        )
        cursor.execute(f"INSERT INTO src SELECT seq, CONCAT('k', seq), CONCAT('n', seq) FROM seq_1_to_{ROWS}")
        cursor.execute("CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)")
        cursor.execute("INSERT INTO dst SELECT code, name FROM src")
        cursor.execute(f"DELETE FROM dst WHERE code IN ({', '.join(repr(f'k{i}') for i in MISSING)})")
        cursor.execute(f"UPDATE dst SET name = 'stale' WHERE code IN ({', '.join(repr(f'k{i}') for i in DIFFERENT)})")
        yield name
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, mariadb: MariaDB, source_database: str, receiver: Receiver
) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    configs = folder / "configs"
    configs.mkdir()
    dsn = mariadb.go_dsn(source_database)
    (configs / "celery.json").write_text(
        json.dumps(
            {
                "retries": 0,
                "src": {"dsn": dsn, "table": "src", "byColumn": "code", "insertIntervalMillisecond": 3_600_000},
                "des": [
                    {
                        "name": "copy",
                        "dsn": dsn,
                        "table": "dst",
                        "byColumn": "code",
                        "columns": {"code": "code", "name": "name"},
                        "callbackNotification": {"url": receiver.url, "timeoutSecond": 5},
                    }
                ],
            }
        )
    )
    token = secrets.token_hex(4)
    database = f"cupid_t_cluster_{token}"
    env = {
        **os.environ,
        "CUPID_CLUSTER_DIR": str(folder / "cluster"),
        "CUPID_CLUSTER_PG_DB": database,
        "CUPID_CLUSTER_QUEUE": f"cupid_t_{token}",
        "CUPID_CLUSTER_API_PORT": str(free_port()),
        "CUPID_CLUSTER_CONCURRENCY": "2",
        "CUPID_CONFIG_FOLDER": str(configs),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    running = Cluster(folder / "cluster", env, database)
    started = running.run("start", timeout=400)
    try:
        if started.returncode != 0:
            pytest.fail(f"cluster.sh start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
        yield running
    finally:
        destroyed = running.run("destroy", timeout=120)
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr


def wait_for_runs(cluster: Cluster, dag_id: str, count: int, timeout: float = 240) -> list[tuple[str, str, str]]:
    """(run_id, run_type, state) of the DAG's runs once ``count`` of them have finished."""
    deadline = time.monotonic() + timeout
    while True:
        runs = cluster.query("SELECT run_id, run_type, state FROM dag_run WHERE dag_id = %s ORDER BY id", dag_id)
        if len(runs) >= count and all(state in TERMINAL for _, _, state in runs):
            return runs
        if time.monotonic() > deadline:
            tis = cluster.query("SELECT run_id, task_id, state FROM task_instance WHERE dag_id = %s", dag_id)
            pytest.fail(f"{dag_id}: runs did not finish within {timeout:.0f} s: {runs}; tasks: {tis}")
        time.sleep(1)


def test_the_sync_dag_runs_on_the_celery_workers_and_delivers_every_planted_mismatch(
    cluster: Cluster, receiver: Receiver
) -> None:
    dag_id = "cupid_celery_sync"
    assert dag_id in cluster.airflow("dags", "list", "-o", "plain")
    cluster.airflow("dags", "trigger", dag_id)
    cluster.airflow("dags", "unpause", dag_id)  # the scheduler also starts a scheduled run: an idle one

    runs = wait_for_runs(cluster, dag_id, 2)

    assert [state for _, _, state in runs] == ["success"] * len(runs), runs
    assert {body["key"]: body["type"] for body in receiver.documents()} == {
        **{f"k{i}": 1 for i in MISSING},
        **{f"k{i}": 2 for i in DIFFERENT},
    }
    assert len(receiver.documents()) == len(MISSING) + len(DIFFERENT)
    tis = cluster.query(
        "SELECT run_id, task_id, state, queue, external_executor_id FROM task_instance WHERE dag_id = %s",
        dag_id,
    )
    by_run: dict[str, dict[str, str]] = {}
    for run_id, task_id, state, _, _ in tis:
        by_run.setdefault(run_id, {})[task_id] = state
    # the first run to compare delivered everything; the other found nothing pending and skipped deliver
    assert sorted(by_run.values(), key=lambda s: s["deliver"]) == [
        {"compare": "success", "deliver": "skipped", "done": "success"},
        {"compare": "success", "deliver": "success", "done": "success"},
    ]
    logs = {worker: cluster.worker_log(worker) for worker in ("worker1", "worker2")}
    executed = [
        (task, queue, celery_id) for _, task, state, queue, celery_id in tis if task != "done" and state == "success"
    ]
    assert len(executed) == 3  # two compares and one deliver; done is an EmptyOperator the scheduler finishes
    for task_id, queue, celery_id in executed:
        assert queue == cluster.env["CUPID_CLUSTER_QUEUE"], task_id
        ran_on = [w for w, log in logs.items() if re.search(rf"\[{re.escape(celery_id)}\] Executing workload", log)]
        assert len(ran_on) == 1, f"{task_id} (celery task {celery_id}) ran on {ran_on}"


def test_status_names_every_component_running_and_healthy(cluster: Cluster) -> None:
    result = cluster.run("status")

    assert result.returncode == 0, result.stdout + result.stderr
    for component in ("scheduler", "dag-processor", "api-server", "triggerer", "worker1", "worker2"):
        assert re.search(rf"^cluster: {component} +running", result.stdout, re.MULTILINE), component
    assert "health: healthy" in result.stdout


def test_stop_ends_every_process_of_every_component(cluster: Cluster) -> None:
    sessions = cluster.session_ids()
    assert set(sessions) == {"scheduler", "dag-processor", "api-server", "triggerer", "worker1", "worker2"}
    assert all(live_members(sid) for sid in sessions.values())

    stopped = cluster.run("stop", timeout=120)

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert {name: live_members(sid) for name, sid in sessions.items()} == {name: [] for name in sessions}
    status = cluster.run("status")
    assert status.returncode == 3
    assert "health: api-server not answering" in status.stdout
