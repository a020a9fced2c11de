"""Measure callback delivery throughput against a local receiver and check nothing is lost.

Two figures per concurrency level, each from its own round:

- ``deliver()``: HTTP alone (bodies built beforehand, nothing recorded);
- ``dispatch()``: what the ``deliver`` task does per item — claim it in the store, read the
  destination and the source row, build and sign nothing more than the body, POST it, record the
  attempt and the result — against a source table of N rows missing at the destination.

    .venv/bin/python bench/bench_delivery.py --count 20000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.receiver import serve
from cupid_airflow.core.delivery import CallbackTarget, Delivery, deliver
from cupid_airflow.core.payload import IDEMPOTENCY_HEADER, build_body

if TYPE_CHECKING:
    from multiprocessing.queues import Queue


def _run_receiver(port_queue: Queue[int]) -> None:
    """Answer 204 to every POST at once; count idempotency keys; ``GET /stats`` reports and resets."""
    from aiohttp import web

    counts: Counter[str] = Counter()

    async def callback(request: web.Request) -> web.Response:
        await request.read()
        counts[request.headers.get(IDEMPOTENCY_HEADER, "")] += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        report = {
            "received": sum(counts.values()),
            "distinct": len(counts),
            "duplicated": sorted(key for key, count in counts.items() if count > 1)[:10],
        }
        counts.clear()
        return web.json_response(report)

    app = web.Application()
    app.router.add_post("/callback", callback)
    app.router.add_get("/stats", stats)

    serve(app, port_queue)


def _deliveries(count: int, round_name: str) -> list[Delivery]:
    """Bodies of realistic size (about 300 bytes): a user row missing at a destination."""
    deliveries = []
    for i in range(count):
        row_key = str(1_000_000 + i).encode()
        row = {
            "id": row_key,
            "name": f"user {i} Zoë".encode(),
            "email": f"user{i}@example.com".encode(),
            "note": None,
            "updated_at": b"2025-01-02 03:04:06",
        }
        body = build_body(
            config=f"bench_{round_name}",
            item_id=i,
            mismatch_type=1,
            source_row=row,
            destination="des0",
            destination_table="user_copy",
            key_column="id",
            row_key=row_key,
            differences=None,
            detected_at="2025-01-02T03:04:07.123456+00:00",
        )
        deliveries.append(Delivery(item_id=i, idempotency_key=body.idempotency_key, body=body.body))
    return deliveries


def _stats(base_url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{base_url}/stats", timeout=10) as answer:
        report: dict[str, object] = json.load(answer)
    return report


def _round(base_url: str, count: int, concurrency: int, hmac_secret: str | None) -> bool:
    deliveries = _deliveries(count, f"c{concurrency}")
    body_size = sum(len(d.body) for d in deliveries) / len(deliveries)
    target = CallbackTarget(f"{base_url}/callback", concurrency=concurrency, hmac_secret=hmac_secret)
    started = time.perf_counter()
    results = deliver(target, deliveries)
    wall = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    report = _stats(base_url)
    complete = not failed and report["received"] == count and report["distinct"] == count
    print(
        f"concurrency {concurrency:>3}: {count} callbacks ({body_size:.0f} B) in {wall:6.2f} s "
        f"= {count / wall:8.0f} callbacks/s; failed {len(failed)}, received {report['received']}, "
        f"distinct {report['distinct']}" + ("" if complete else "  <-- LOST OR DUPLICATED")
    )
    if failed:
        print(f"    first failure: {failed[0].error}")
    if report["duplicated"]:
        print(f"    duplicated keys: {report['duplicated']}")
    return complete


DISPATCH_DB = "cupid_bench_dispatch"


def _dispatch_round(base_url: str, count: int, concurrency: int) -> bool:
    """Plant ``count`` items of rows missing at the destination; time one dispatch() until all are delivered."""
    from cupid_airflow.core.compare import DestinationSpec
    from cupid_airflow.core.detection import Detection
    from cupid_airflow.core.dispatch import DispatchSettings, Route, dispatch
    from cupid_airflow.core.judge import JudgeSpec
    from cupid_airflow.core.sql import ConnectionParams, connect
    from cupid_airflow.core.store import DeliveryStore

    admin = connect(ConnectionParams())
    cursor = admin.cursor()
    cursor.execute(f"DROP DATABASE IF EXISTS {DISPATCH_DB}")
    cursor.execute(f"CREATE DATABASE {DISPATCH_DB} CHARACTER SET utf8mb4")
    cursor.execute(f"USE {DISPATCH_DB}")
    cursor.execute(
        f"CREATE TABLE {DISPATCH_DB}.user (id BIGINT PRIMARY KEY, number VARCHAR(32) NOT NULL UNIQUE, "
        "name VARCHAR(64), email VARCHAR(128), note VARCHAR(64), updated_at DATETIME)"
    )
    cursor.execute(f"CREATE TABLE {DISPATCH_DB}.user_copy (number VARCHAR(32) PRIMARY KEY, name VARCHAR(64))")
    cursor.execute(
        f"INSERT INTO {DISPATCH_DB}.user SELECT seq, CONCAT('u-', seq), CONCAT('user ', seq, ' Zoë'), "
        f"CONCAT('user', seq, '@example.com'), NULL, '2025-01-02 03:04:06' FROM seq_1_to_{count}"
    )
    admin.close()
    params = ConnectionParams(database=DISPATCH_DB)
    store = DeliveryStore(params)
    store.ensure_schema()
    store.record([Detection("bench", "des0", f"u-{i}".encode(), 1, i) for i in range(1, count + 1)])
    store.close()
    spec = DestinationSpec("des0", "user_copy", "number", {"number": "number", "name": "name"})
    route = Route(
        "des0",
        CallbackTarget(f"{base_url}/callback", concurrency=concurrency),
        JudgeSpec("bench", "des0", params, "user", "id", "number", params, spec),
    )
    started = time.perf_counter()
    outcome = dispatch(params, "bench", [route], DispatchSettings(batch_size=2000))["des0"]
    wall = time.perf_counter() - started
    report = _stats(base_url)
    complete = outcome.delivered == count and report["received"] == count and report["distinct"] == count
    print(
        f"concurrency {concurrency:>3}: dispatch(): {count} items claimed, judged, sent and recorded in {wall:6.2f} s "
        f"= {count / wall:8.0f} callbacks/s; delivered {outcome.delivered}, received {report['received']}, "
        f"distinct {report['distinct']}" + ("" if complete else "  <-- LOST OR DUPLICATED")
    )
    return complete


def main(argv: list[str] | None = None) -> int:
    """Run one round per concurrency level; return 1 when any callback was lost or duplicated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000, help="callbacks per round (default 20000)")
    parser.add_argument("--concurrency", default="3,8,16", help="comma-separated concurrency levels (default 3,8,16)")
    parser.add_argument("--hmac-secret", default=None, help="sign every body with this secret")
    arguments = parser.parse_args(argv)
    levels = [int(level) for level in arguments.concurrency.split(",")]

    context = multiprocessing.get_context("spawn")
    port_queue: Queue[int] = context.Queue()
    receiver = context.Process(target=_run_receiver, args=(port_queue,), daemon=True)
    receiver.start()
    try:
        base_url = f"http://127.0.0.1:{port_queue.get(timeout=30)}"
        print(f"receiver (pid {receiver.pid}) at {base_url}")
        complete = [_round(base_url, arguments.count, level, arguments.hmac_secret) for level in levels]
        complete += [_dispatch_round(base_url, arguments.count, level) for level in levels]
    finally:
        receiver.terminate()
        receiver.join(5)
    return 0 if all(complete) else 1


if __name__ == "__main__":
    sys.exit(main())
