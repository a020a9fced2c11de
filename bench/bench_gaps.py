"""Benchmark the late-commit gap tracker on a table whose ids have holes (rolled-back inserts).

Builds (or reuses) a source of N rows whose ids skip every ``--hole-every``-th value (10% of
ids rolled back by default) and an exact destination copy, then measures, each in a child
process so its peak RSS is its own:

- the compare of the whole table from id 1 with gap tracking off (``lateCommitSecond`` 0);
- the same with gap tracking on: every hole becomes a gap (``lateCommitMaxGaps`` raised to
  hold them all), with the gaps' size in the cursor Variable;
- the next run, which reads every gap again through the id index while nothing is new
  (the steady cost of that many gaps; expiry needs ``lateCommitSecond`` to pass).

    .venv/bin/python bench/bench_gaps.py --rows 1000000
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

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun

SOURCE_DB = "cupid_bench_gaps_src"
DESTINATION_DB = "cupid_bench_gaps_dst"
CONFIG = "bench_gaps"
STORE_TABLE = "cupid_delivery_bench_gaps"


def build(params: ConnectionParams, rows: int, hole_every: int, *, rebuild: bool = False) -> float:
    """Source ``user`` with ``rows`` rows, ids 1.. skipping multiples of ``hole_every``; destination an exact copy."""
    started = time.monotonic()
    conn = connect(params)
    cursor = conn.cursor()
    tag = f"{rows}:{hole_every}:v1"
    for database in (SOURCE_DB, DESTINATION_DB):
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS {database} CHARACTER SET utf8mb4")
    cursor.execute(
        "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'user'",
        (DESTINATION_DB,),
    )
    found = cursor.fetchall()
    if found and found[0][0].decode() == tag and not rebuild:
        conn.close()
        return 0.0
    cursor.execute(f"DROP TABLE IF EXISTS {SOURCE_DB}.user")
    cursor.execute(f"DROP TABLE IF EXISTS {DESTINATION_DB}.user")
    cursor.execute(
        f"""CREATE TABLE {SOURCE_DB}.user (
          id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
          number VARCHAR(32) NOT NULL, name VARCHAR(64) NULL, avatar VARCHAR(255) NULL,
          UNIQUE KEY uq_number (number)) ENGINE=InnoDB"""
    )
    cursor.execute(
        f"""CREATE TABLE {DESTINATION_DB}.user (
          number VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL, avatar VARCHAR(255) NULL) ENGINE=InnoDB"""
    )
    highest = rows + (rows - 1) // (hole_every - 1)  # the id of the rows-th id that is not a multiple
    step = 200_000
    for low in range(1, highest + 1, step):
        high = min(highest, low + step - 1)
        cursor.execute(
            f"""INSERT INTO {SOURCE_DB}.user (id, number, name, avatar)
            SELECT seq, SUBSTRING(MD5(seq), 1, 20), CONCAT('name ', seq), CONCAT('https://img.example.com/', seq)
            FROM {SOURCE_DB}.seq_{low}_to_{high} WHERE seq % {hole_every} <> 0"""
        )
    cursor.execute(f"INSERT INTO {DESTINATION_DB}.user SELECT number, name, avatar FROM {SOURCE_DB}.user")
    cursor.execute(f"ANALYZE TABLE {SOURCE_DB}.user, {DESTINATION_DB}.user")
    cursor.fetchall()
    cursor.execute(f"ALTER TABLE {DESTINATION_DB}.user COMMENT = '{tag}'")
    conn.close()
    return time.monotonic() - started


def plan(params: ConnectionParams, late_commit_second: int, max_gaps: int) -> SyncPlan:
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
        late_commit_second=late_commit_second,
        late_commit_max_gaps=max_gaps,
        max_rows_per_run=10_000_000,
        max_seconds_per_run=600,
    )


def measure(params: ConnectionParams, late_commit_second: int, max_gaps: int, out: Any) -> None:
    """Child process: one run over the whole table from id 1, then one more run; figures of both."""
    sync_plan = plan(params, late_commit_second, max_gaps)
    store = DeliveryStore(sync_plan.source, table=STORE_TABLE)
    store.ensure_schema()
    store.conn.cursor().execute(f"TRUNCATE TABLE {STORE_TABLE}")
    cursors = MemoryCursorStore()
    started = time.monotonic()
    first = SyncRun(sync_plan, cursors, store, start_id=1).run()
    first_second = time.monotonic() - started
    cursor_bytes = len(json.dumps(cursors.load("des0")))
    started = time.monotonic()
    second = SyncRun(sync_plan, cursors, store).run()
    second_second = time.monotonic() - started
    store.close()
    out.send(
        {
            "first_second": first_second,
            "scanned": first["rowsScanned"]["insert"],
            "caught_up": first["caughtUp"],
            "gaps": first["destinations"]["des0"]["lateCommits"]["gaps"],
            "cursor_bytes": cursor_bytes,
            "second_second": second_second,
            "second_gaps": second["destinations"]["des0"]["lateCommits"]["gaps"],
            "recorded": first["recorded"] + second["recorded"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def in_child(params: ConnectionParams, late_commit_second: int, max_gaps: int) -> dict[str, Any]:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=measure, args=(params, late_commit_second, max_gaps, sender)
    )
    child.start()
    figures: dict[str, Any] = receiver.recv()
    child.join()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hole-every", type=int, default=10, help="every n-th id is missing (10: 10%% of ids)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    args = parser.parse_args()
    params = ConnectionParams(args.host, args.port, args.user, args.password)

    built = build(params, args.rows, args.hole_every, rebuild=args.rebuild)
    how = f"built in {built:.1f} s" if built else "reused"
    print(f"tables: {args.rows:,} rows, every {args.hole_every}th id missing ({how})")
    off = in_child(params, 0, 1)
    on = in_child(params, 600, 10 * args.rows)
    exact = off["recorded"] == 0 and on["recorded"] == 0 and off["caught_up"] and on["caught_up"]
    for label, figures in (("gap tracking off", off), ("gap tracking on", on)):
        print(
            f"{label}: first run {figures['first_second']:.2f} s for {figures['scanned']:,} rows "
            f"({figures['scanned'] / figures['first_second']:,.0f} rows/s), {figures['gaps']:,} gaps, "
            f"cursor {figures['cursor_bytes']:,} bytes, peak RSS {figures['peak_rss_mb']:.1f} MB"
        )
    print(f"gap tracking cost on the first run: {on['first_second'] / off['first_second']:.2f}x")
    print(
        f"next run, nothing new: {on['second_second']:.2f} s reading {on['second_gaps']:,} gaps again "
        f"(off: {off['second_second']:.2f} s)"
    )
    print(
        f"recorded {off['recorded'] + on['recorded']} mismatches on an exact copy: {'EXACT' if exact else 'MISMATCH'}"
    )
    print(json.dumps({"rows": args.rows, "hole_every": args.hole_every, "off": off, "on": on, "exact": exact}))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
