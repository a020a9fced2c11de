"""Benchmark the compare: the whole source table from id 1, the way the sync DAG runs it.

Builds (or reuses) a source and a destination table of N rows in the local
MariaDB with planted missing and different rows, then measures in the same
run: a same-server SQL anti-join (the floor a single server allows), streaming
the mapped columns to a client, and cupid's compare (repeated bounded sync
runs until caught up, in a child process so its peak RSS is its own). Prints
rows/s, wall time, peak RSS, the ratio to the anti-join, and whether exactly
the planted mismatches were recorded.

    .venv/bin/python bench/bench_compare.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tables import DESTINATION_DB, SOURCE_DB, build, planted_ids
from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun

CONFIG = "bench"
STORE_TABLE = "cupid_delivery_bench"


def plan(params: ConnectionParams, lookup_connections: int, batch_size: int) -> SyncPlan:
    source = ConnectionParams(params.host, params.port, params.user, params.password, SOURCE_DB)
    destination = ConnectionParams(params.host, params.port, params.user, params.password, DESTINATION_DB)
    spec = DestinationSpec("des0", "user", "number", {"number": "number", "name": "name", "avatar": "avatar"})
    return SyncPlan(
        config=CONFIG,
        source=source,
        table="user",
        id_column="id",
        by_column="number",
        destinations={"des0": (destination, spec)},
        insert=True,
        update=False,
        batch_size=batch_size,
        lookup_connections=lookup_connections,
    )


def run_compare(params: ConnectionParams, lookup_connections: int, batch_size: int, out: Any) -> None:
    """Child process: sync runs from id 1 until caught up; report time, runs and peak RSS."""
    sync_plan = plan(params, lookup_connections, batch_size)
    store = DeliveryStore(sync_plan.source, table=STORE_TABLE)
    store.ensure_schema()
    store.conn.cursor().execute(f"TRUNCATE TABLE {STORE_TABLE}")
    cursors = MemoryCursorStore()
    started = time.monotonic()
    runs = scanned = 0
    while True:
        summary = SyncRun(sync_plan, cursors, store, start_id=1 if runs == 0 else None).run()
        runs += 1
        scanned += summary["rowsScanned"]["insert"]
        if summary["caughtUp"]:
            break
    elapsed = time.monotonic() - started
    store.close()
    out.send(
        {
            "seconds": elapsed,
            "runs": runs,
            "scanned": scanned,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def timed(params: ConnectionParams, sql: str, stream: bool = False) -> tuple[float, int]:
    conn = connect(ConnectionParams(params.host, params.port, params.user, params.password, None))
    started = time.monotonic()
    if stream:
        import MySQLdb.cursors

        cursor = conn.cursor(MySQLdb.cursors.SSCursor)
        cursor.execute(sql)
        count = 0
        while rows := cursor.fetchmany(10000):
            count += len(rows)
    else:
        cursor = conn.cursor()
        cursor.execute(sql)
        count = int(cursor.fetchall()[0][0])
    elapsed = time.monotonic() - started
    conn.close()
    return elapsed, count


def recorded(params: ConnectionParams) -> tuple[set[int], set[int]]:
    conn = connect(ConnectionParams(params.host, params.port, params.user, params.password, SOURCE_DB))
    cursor = conn.cursor()
    cursor.execute(f"SELECT type, source_id FROM {STORE_TABLE} WHERE config = %s", (CONFIG,))
    missing: set[int] = set()
    different: set[int] = set()
    for kind, source_id in cursor.fetchall():
        (missing if int(kind) == 1 else different).add(int(source_id))
    conn.close()
    return missing, different


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--missing-per-mille", type=int, default=10)
    parser.add_argument("--different-per-mille", type=int, default=10)
    parser.add_argument("--lookup-connections", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--skip-floor", action="store_true", help="do not time the anti-join and the stream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    args = parser.parse_args()
    params = ConnectionParams(args.host, args.port, args.user, args.password)

    built = build(params, args.rows, args.missing_per_mille, args.different_per_mille, rebuild=args.rebuild)
    print(f"tables: {args.rows:,} rows ({f'built in {built:.1f} s' if built else 'reused'})")
    results: dict[str, Any] = {"rows": args.rows}

    planted = planted_ids(args.rows, args.missing_per_mille, args.different_per_mille)
    if not args.skip_floor:
        join_s, join_n = timed(
            params,
            f"SELECT COUNT(*) FROM {SOURCE_DB}.user s LEFT JOIN {DESTINATION_DB}.user d ON d.number = s.number "
            "WHERE d.number IS NULL OR NOT (s.name <=> d.name AND s.avatar <=> d.avatar)",
        )
        stream_s, _ = timed(params, f"SELECT number, name, avatar FROM {SOURCE_DB}.user", stream=True)
        join_exact = join_n == len(planted.missing) + len(planted.different)
        print(
            f"anti-join (same server, SQL): {join_s:.2f} s, {join_n:,} mismatches: "
            f"{'the planted count' if join_exact else 'NOT the planted count, no ratio'}"
        )
        print(f"stream mapped columns to a client: {stream_s:.2f} s")
        results.update(stream_second=stream_s, antijoin_exact=join_exact)
        if join_exact:
            results["antijoin_second"] = join_s

    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=run_compare, args=(params, args.lookup_connections, args.batch_size, sender)
    )
    child.start()
    figures = receiver.recv()
    child.join()
    rate = figures["scanned"] / figures["seconds"]
    print(
        f"cupid compare: {figures['seconds']:.2f} s for {figures['scanned']:,} rows in {figures['runs']} run(s): "
        f"{rate:,.0f} rows/s, peak RSS {figures['peak_rss_mb']:.1f} MB"
    )
    if "antijoin_second" in results:
        print(f"ratio to the anti-join: {figures['seconds'] / results['antijoin_second']:.2f}x")

    missing, different = recorded(params)
    exact = missing == set(planted.missing) and different == set(planted.different)
    print(
        f"planted {len(planted.missing):,} missing + {len(planted.different):,} different; recorded "
        f"{len(missing):,} missing + {len(different):,} different: {'EXACT' if exact else 'MISMATCH'}"
    )
    results.update(figures, rows_per_second=rate, exact=exact)
    print(json.dumps(results))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
