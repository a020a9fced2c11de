"""End to end through real DAG runs: from id 1 until every planted mismatch is delivered.

Builds (or reuses) the compare benchmark's tables (1,000,000 rows, 1% missing
and 1% different by default), starts a callback receiver in its own process,
writes a cupid config, migrates a throw-away Airflow metadata DB (SQLite), and
runs the generated ``cupid_bench_e2e_sync`` DAG with ``dag.test()`` in this
process, run after run (as the scheduler would, back to back), until the
compare has caught up and nothing is pending. Prints the wall time from the
first run's start to the last delivery, the runs, the POSTs received, and
whether the receiver got exactly the planted rows.

    .venv/bin/python bench/bench_end_to_end.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.receiver import serve
from bench.tables import DESTINATION_DB, SOURCE_DB, build, planted_ids
from cupid_airflow.core.sql import ConnectionParams, connect

CONFIG = "bench_e2e"


def _receiver(port_queue: Any) -> None:
    """Answer 204 at once; remember (type, key) of every POST; ``GET /stats`` reports."""
    from collections import Counter

    from aiohttp import web

    posts: Counter[tuple[int, str]] = Counter()

    async def callback(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        posts[(int(body["type"]), str(body["key"]))] += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"posts": sum(posts.values()), "received": [[t, k] for (t, k) in posts]})

    app = web.Application()
    app.router.add_post("/callback", callback)
    app.router.add_get("/stats", stats)

    serve(app, port_queue)


def _planted_keys(params: ConnectionParams, rows: int) -> set[tuple[int, str]]:
    planted = planted_ids(rows, 10, 10)
    conn = connect(ConnectionParams(params.host, params.port, params.user, params.password, SOURCE_DB))
    cursor = conn.cursor()
    keys: set[tuple[int, str]] = set()
    for kind, ids in ((1, planted.missing), (2, planted.different)):
        id_list = sorted(ids)
        for start in range(0, len(id_list), 5000):
            chunk = id_list[start : start + 5000]
            cursor.execute(f"SELECT number FROM user WHERE id IN ({', '.join(map(str, chunk))})")
            keys.update((kind, number.decode()) for (number,) in cursor.fetchall())
    conn.close()
    return keys


def _config_text(args: argparse.Namespace, port: int) -> str:
    return json.dumps(
        {
            "workerNumber": args.worker_number,
            "failureJobRetrySecond": 2,
            "src": {
                "dsn": f"root:@tcp(127.0.0.1:3306)/{SOURCE_DB}",
                "table": "user",
                "byColumn": "number",
                "insert": True,
                "insertIntervalMillisecond": 2000,
                "maxRowsPerRun": args.max_rows_per_run,
            },
            "des": [
                {
                    "dsn": f"root:@tcp(127.0.0.1:3306)/{DESTINATION_DB}",
                    "table": "user",
                    "columns": {"number": "number", "name": "name", "avatar": "avatar"},
                    "byColumn": "number",
                    "callbackNotification": {"url": f"http://127.0.0.1:{port}/callback"},
                }
            ],
        }
    )


def _clean_store() -> None:
    from cupid_airflow.core.store import STATUSES, DeliveryStore

    store = DeliveryStore(ConnectionParams(database=SOURCE_DB))
    try:
        store.ensure_schema()
        store.purge(CONFIG, STATUSES)
    finally:
        store.close()


def _celery(args: argparse.Namespace, planted: set[tuple[int, str]]) -> int:
    """The same config on a CeleryExecutor cluster (scripts/cluster.sh, two workers), from unpause to the last POST."""
    import secrets

    from cupid_airflow.core.store import DeliveryStore

    work = Path(tempfile.mkdtemp(prefix="cupid-bench-celery-"))
    configs = work / "configs"
    configs.mkdir()
    port_queue: Any = multiprocessing.get_context("spawn").Queue()
    receiver = multiprocessing.get_context("spawn").Process(target=_receiver, args=(port_queue,), daemon=True)
    receiver.start()
    port = port_queue.get(timeout=30)
    (configs / f"{CONFIG}.json").write_text(_config_text(args, port))
    _clean_store()
    token = secrets.token_hex(3)
    env = {
        **os.environ,
        "CUPID_CLUSTER_DIR": str(work / "cluster"),
        "CUPID_CLUSTER_PG_DB": f"cupid_bench_e2e_{token}",
        "CUPID_CLUSTER_QUEUE": f"cupid_bench_{token}",
        "CUPID_CONFIG_FOLDER": str(configs),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    script = Path(__file__).resolve().parent.parent / "scripts" / "cluster.sh"

    def cluster(*arguments: str, timeout: float = 600) -> str:
        result = subprocess.run(
            ["bash", str(script), *arguments], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(arguments)}: {result.stdout}\n{result.stderr}")
        return result.stdout

    dag_id = f"cupid_{CONFIG}_sync"
    try:
        cluster("start")
        deadline = time.monotonic() + 300
        while dag_id not in cluster("airflow", "dags", "list", "-o", "plain"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dag_id} never appeared on the cluster")
            time.sleep(2)
        started = time.monotonic()
        cluster("airflow", "dags", "unpause", dag_id)
        received: set[tuple[int, str]] = set()
        stats: dict[str, Any] = {"posts": 0}
        while time.monotonic() - started < 900:
            time.sleep(1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as answer:
                stats = json.loads(answer.read())
            received = {(int(t), str(k)) for t, k in stats["received"]}
            store = DeliveryStore(ConnectionParams(database=SOURCE_DB))
            pending = store.pending(CONFIG)
            store.close()
            if received >= planted and pending == 0:
                break
        elapsed = time.monotonic() - started
        runs = cluster("airflow", "dags", "list-runs", dag_id, "-o", "plain").count("success")
    finally:
        receiver.terminate()
        subprocess.run(["bash", str(script), "destroy"], env=env, capture_output=True, timeout=300, check=False)
        shutil.rmtree(work, ignore_errors=True)
    exact = received == planted and stats["posts"] == len(planted)
    print(
        f"end to end on the CeleryExecutor cluster (2 workers): {elapsed:.1f} s from unpause, {runs} successful "
        f"run(s); {stats['posts']:,} POSTs for {len(planted):,} planted mismatches; every planted mismatch "
        f"delivered exactly once: {'YES' if exact else 'NO'}"
    )
    figures = {"mode": "celery", "rows": args.rows, "seconds": elapsed, "posts": stats["posts"], "exact": exact}
    print(json.dumps(figures))
    return 0 if exact else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--worker-number", type=int, default=3, help="delivery concurrency (workerNumber)")
    parser.add_argument("--max-runs", type=int, default=30)
    parser.add_argument("--max-rows-per-run", type=int, default=500000)
    parser.add_argument("--mode", choices=("dag-test", "celery"), default="dag-test")
    args = parser.parse_args()
    params = ConnectionParams()

    built = build(params, args.rows)
    print(f"tables: {args.rows:,} rows ({f'built in {built:.1f} s' if built else 'reused'})")
    planted = _planted_keys(params, args.rows)
    if args.mode == "celery":
        return _celery(args, planted)

    home = Path(tempfile.mkdtemp(prefix="cupid-bench-airflow-"))
    (home / "dags").mkdir()
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)

    port_queue: Any = multiprocessing.get_context("spawn").Queue()
    receiver = multiprocessing.get_context("spawn").Process(target=_receiver, args=(port_queue,), daemon=True)
    receiver.start()
    port = port_queue.get(timeout=30)

    # a clean start: no stored items of this config
    from cupid_airflow.core.store import DeliveryStore

    _clean_store()

    config_path = home / "dags" / f"{CONFIG}.json"
    config_path.write_text(_config_text(args, port))

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.models.xcom import XComModel
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    from cupid_airflow.core.config import load_config
    from cupid_airflow.dag_factory import build_dags

    config = load_config(config_path)
    dag = build_dags(config)[config.sync_dag_id]
    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.flush()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )

    started = time.monotonic()
    runs = 0
    caught_up = False
    for runs in range(1, args.max_runs + 1):
        run_started = time.monotonic()
        dag_run = dag.test(run_conf={"start_id": 1} if runs == 1 else None)
        with create_session() as session:
            row = session.scalars(
                XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag.dag_id, task_ids="compare", key="return_value")
            ).first()
            summary = XComModel.deserialize_value(row) if row is not None else {}
        scanned = summary.get("rowsScanned", {}).get("insert")
        print(
            f"run {runs}: {dag_run.state}, {time.monotonic() - run_started:.1f} s, scanned {scanned}, "
            f"recorded {summary.get('recorded')}, cursor "
            + ", ".join(
                f"{d['cursorBefore']['insertId']} -> {d['cursorAfter']['insertId']}"
                for d in summary.get("destinations", {}).values()
            )
        )
        caught_up = bool(summary.get("caughtUp"))
        store = DeliveryStore(ConnectionParams(database=SOURCE_DB))
        pending = store.counts(CONFIG)
        store.close()
        if caught_up and pending["pending"] == 0 and pending["parked"] == 0:
            break
    elapsed = time.monotonic() - started

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as answer:
        stats = json.loads(answer.read())
    receiver.terminate()
    received = {(int(t), str(k)) for t, k in stats["received"]}
    exact = received == planted
    print(
        f"end to end: {elapsed:.1f} s in {runs} DAG run(s); {stats['posts']:,} POSTs for {len(planted):,} planted "
        f"mismatches; received exactly the planted rows: {'YES' if exact else 'NO'}"
    )
    if not exact:
        print(f"  missing {len(planted - received)}, unexpected {len(received - planted)}")
    print(
        json.dumps(
            {
                "rows": args.rows,
                "seconds": elapsed,
                "runs": runs,
                "posts": stats["posts"],
                "planted": len(planted),
                "exact": exact,
            }
        )
    )
    shutil.rmtree(home, ignore_errors=True)
    return 0 if exact and caught_up else 1


if __name__ == "__main__":
    sys.exit(main())
