"""Benchmark the full reconcile: hash-bucket checksums on two 1,000,000-row tables.

Measures, on the local MariaDB, ``--repeat`` times side by side: the floor
(streaming both tables' mapped columns to a client once), cupid's reconcile of
two identical tables, cupid's reconcile with 0.1% of rows missing or different
(and that it finds exactly those), and reladiff 0.6.0 on the same tables
(installed into its own venv under ``.bench/`` on first use; ``--no-reladiff``
skips it). Each reconcile runs in a child process, whose peak RSS is reported.

    .venv/bin/python bench/bench_reconcile.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tables import build, planted_ids
from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.reconcile import CheckpointStore, ReconcileRun, ReconcileSettings
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import DeliveryStore

REPO = Path(__file__).resolve().parent.parent
STORE_TABLE = "cupid_delivery_bench_reconcile"
CHECKPOINT_TABLE = "cupid_reconcile_checkpoint_bench"
IDENTICAL = ("cupid_bench_rsrc", "cupid_bench_rdst")
DIFFERENT = ("cupid_bench_r1src", "cupid_bench_r1dst")
ONE_PERCENT = ("cupid_bench_r10src", "cupid_bench_r10dst")
COLUMNS = {"number": "number", "name": "name", "avatar": "avatar"}


def _params(database: str | None = None) -> ConnectionParams:
    return ConnectionParams(database=database)


def run_reconcile(databases: tuple[str, str], out: Any) -> None:
    """Child process: one unbounded reconcile; report seconds, chunks, found and peak RSS."""
    source_db, destination_db = databases
    store = DeliveryStore(_params(source_db), table=STORE_TABLE)
    store.ensure_schema()
    store.conn.cursor().execute(f"TRUNCATE TABLE {STORE_TABLE}")
    started = time.monotonic()
    summary = ReconcileRun(
        config="bench",
        source=_params(source_db),
        table="user",
        id_column="id",
        by_column="number",
        destinations={"des0": (_params(destination_db), DestinationSpec("des0", "user", "number", COLUMNS))},
        settings=ReconcileSettings(),
        store=store,
        checkpoints=CheckpointStore(_params(source_db), table=CHECKPOINT_TABLE),
        restart=True,
    ).run()
    elapsed = time.monotonic() - started
    cursor = store.conn.cursor()
    cursor.execute(f"SELECT type, source_id FROM {STORE_TABLE}")
    found = [(int(t), int(i)) for t, i in cursor.fetchall()]
    store.close()
    out.send(
        {
            "seconds": elapsed,
            "summary": summary["destinations"]["des0"],
            "found": found,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def reconcile(databases: tuple[str, str]) -> dict[str, Any]:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(target=run_reconcile, args=(databases, sender))
    child.start()
    result: dict[str, Any] = receiver.recv()
    child.join()
    return result


def floor(databases: tuple[str, str]) -> float:
    import MySQLdb.cursors

    started = time.monotonic()
    for database in databases:
        conn = connect(_params(database))
        cursor = conn.cursor(MySQLdb.cursors.SSCursor)
        cursor.execute("SELECT number, name, avatar FROM user")
        while cursor.fetchmany(10000):
            pass
        conn.close()
    return time.monotonic() - started


def reladiff(databases: tuple[str, str], timeout: float, threads: int) -> tuple[float, str] | None:
    """Seconds reladiff took and its stats line (rows exclusive to each side, updated), or None when it failed.

    reladiff 0.6.0 exits 0 even when it fails: a run counts only when it printed its stats. Its default
    sorting of the differences crashes on rows with NULLs (``'<' not supported between ... 'NoneType'``),
    so ``--skip-sort-results`` is passed; ``hashdiff`` is what it picks for tables in two databases.
    """
    venv = REPO / ".bench" / "reladiff-venv"
    binary = venv / "bin" / "reladiff"
    if not binary.exists():
        print("installing reladiff 0.6.0 into .bench/reladiff-venv ...")
        subprocess.run(["uv", "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            ["uv", "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "reladiff[mysql]==0.6.0"],
            check=True,
        )
    source_db, destination_db = databases
    command = [
        str(binary),
        f"mysql://root@127.0.0.1:3306/{source_db}",
        "user",
        f"mysql://root@127.0.0.1:3306/{destination_db}",
        "user",
        "-k",
        "id",
        "-c",
        "number",
        "-c",
        "name",
        "-c",
        "avatar",
        "--stats",
        "--algorithm",
        "hashdiff",
        "--skip-sort-results",
        "--threads",
        str(threads),
    ]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    elapsed = time.monotonic() - started
    errors = [line for line in result.stderr.splitlines() if " ERROR - " in line]
    if result.returncode != 0 or errors or "rows in table A" not in result.stdout:
        print(f"reladiff failed ({result.returncode}): {'; '.join(errors) or result.stderr.strip()[-500:]}")
        return None
    stats = [line.strip() for line in result.stdout.splitlines() if "exclusive" in line or "updated" in line]
    return elapsed, "; ".join(stats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="measure everything this many times")
    parser.add_argument("--no-reladiff", action="store_true")
    parser.add_argument(
        "--one-percent", action="store_true", help="also reconcile tables with 1%% missing and 1%% different rows"
    )
    parser.add_argument("--reladiff-timeout", type=float, default=300.0)
    parser.add_argument("--reladiff-threads", type=int, default=1, help="reladiff's --threads (its default: 1)")
    args = parser.parse_args()
    params = _params()
    for databases, missing, different in ((IDENTICAL, 0, 0), (DIFFERENT, 5, 5)):
        built = build(
            params,
            args.rows,
            missing,
            different,
            per=10000,
            source_db=databases[0],
            destination_db=databases[1],
            destination_id=True,
        )
        print(f"{databases[1]}: {args.rows:,} rows ({f'built in {built:.1f} s' if built else 'reused'})")
    if args.one_percent:
        built = build(
            params,
            args.rows,
            10,
            10,
            per=1000,
            source_db=ONE_PERCENT[0],
            destination_db=ONE_PERCENT[1],
            destination_id=True,
        )
        print(f"{ONE_PERCENT[1]}: {args.rows:,} rows ({f'built in {built:.1f} s' if built else 'reused'})")
    planted = planted_ids(args.rows, 5, 5, per=10000)
    expected = {(1, i) for i in planted.missing} | {(2, i) for i in planted.different}

    runs: list[dict[str, Any]] = []
    all_exact = True
    for n in range(1, args.repeat + 1):
        run: dict[str, Any] = {"floor_second": floor(IDENTICAL)}
        same = reconcile(IDENTICAL)
        diff = reconcile(DIFFERENT)
        exact = set(diff["found"]) == expected and len(diff["found"]) == len(expected) and not same["found"]
        all_exact = all_exact and exact
        run.update(
            identical_second=same["seconds"],
            different_second=diff["seconds"],
            exact=exact,
            peak_rss_mb=max(same["peak_rss_mb"], diff["peak_rss_mb"]),
        )
        print(
            f"run {n}: floor {run['floor_second']:.2f} s | identical {same['seconds']:.2f} s "
            f"({same['seconds'] / run['floor_second']:.2f}x floor; chunks {_chunks(same)}, found {len(same['found'])})"
            f" | 0.1% different {diff['seconds']:.2f} s ({diff['seconds'] / same['seconds']:.2f}x identical; "
            f"chunks {_chunks(diff)}, {diff['summary']['differingBuckets']} of {diff['summary']['buckets']} buckets "
            f"differ; planted {len(expected):,}, found {len(diff['found']):,}: {'EXACT' if exact else 'MISMATCH'})"
            f" | peak RSS {run['peak_rss_mb']:.1f} MB"
        )
        if not args.no_reladiff:
            measured = reladiff(DIFFERENT, args.reladiff_timeout, args.reladiff_threads)
            run["reladiff_second"] = measured[0] if measured else None
            if measured is None:
                print(
                    f"run {n}: reladiff 0.6.0 (key id), 0.1% different: no result within {args.reladiff_timeout:.0f} s"
                )
            else:
                seconds, stats = measured
                print(
                    f"run {n}: reladiff 0.6.0 (key id, --threads {args.reladiff_threads}), 0.1% different: "
                    f"{seconds:.2f} s ({stats}); cupid {diff['seconds']:.2f} s, {seconds / diff['seconds']:.1f}x faster"
                )
        if args.one_percent:
            large = planted_ids(args.rows, 10, 10, per=1000)
            wanted = {(1, i) for i in large.missing} | {(2, i) for i in large.different}
            big = reconcile(ONE_PERCENT)
            big_exact = set(big["found"]) == wanted and len(big["found"]) == len(wanted)
            all_exact = all_exact and big_exact
            run["one_percent_second"] = big["seconds"]
            print(
                f"run {n}: 1% missing + 1% different {big['seconds']:.2f} s ({big['seconds'] / same['seconds']:.2f}x "
                f"identical; chunks {_chunks(big)}, {big['summary']['differingBuckets']} buckets differ, refined "
                f"into {big['summary']['refine']} each; planted {len(wanted):,}, found {len(big['found']):,}: "
                f"{'EXACT' if big_exact else 'MISMATCH'}) | peak RSS {big['peak_rss_mb']:.1f} MB"
            )
        runs.append(run)

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    results: dict[str, Any] = {"rows": args.rows, "runs": runs}
    for key in (
        "floor_second",
        "identical_second",
        "different_second",
        "one_percent_second",
        "reladiff_second",
        "peak_rss_mb",
    ):
        results[f"median_{key}"] = median(key)
    floor_s, same_s, diff_s = median("floor_second"), median("identical_second"), median("different_second")
    if floor_s and same_s and diff_s:
        print(
            f"median of {len(runs)}: floor {floor_s:.2f} s, identical {same_s:.2f} s ({same_s / floor_s:.2f}x floor), "
            f"0.1% different {diff_s:.2f} s ({diff_s / same_s:.2f}x identical)"
            + (f", reladiff {results['median_reladiff_second']:.2f} s" if results["median_reladiff_second"] else "")
        )
    print(json.dumps(results))
    return 0 if all_exact else 1


def _chunks(result: dict[str, Any]) -> str:
    chunks = result["summary"]["chunks"]
    return f"{chunks['source']}+{chunks['destination']}"


if __name__ == "__main__":
    sys.exit(main())
