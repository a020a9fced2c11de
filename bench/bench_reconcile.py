"""Benchmark the full reconcile: checksums of key ranges on two 1,000,000-row tables.

Measures in one run, on the local MariaDB: the floor (streaming both tables'
mapped columns to a client once), cupid's reconcile of two identical tables,
cupid's reconcile with 0.1% of rows missing or different (and that it finds
exactly those), and reladiff 0.6.0 on the same tables (installed into its own
venv under ``.bench/`` on first use; ``--no-reladiff`` skips it).

    .venv/bin/python bench/bench_reconcile.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tables import build, planted_ids  # noqa: E402
from cupid_airflow.core.compare import DestinationSpec  # noqa: E402
from cupid_airflow.core.reconcile import ReconcileRun, ReconcileSettings  # noqa: E402
from cupid_airflow.core.sql import ConnectionParams, connect  # noqa: E402
from cupid_airflow.core.store import DeliveryStore  # noqa: E402
from cupid_airflow.core.sync import MemoryCursorStore  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STORE_TABLE = "cupid_delivery_bench_reconcile"
IDENTICAL = ("cupid_bench_rsrc", "cupid_bench_rdst")
DIFFERENT = ("cupid_bench_r1src", "cupid_bench_r1dst")
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
        checkpoints=MemoryCursorStore(),
    ).run()
    elapsed = time.monotonic() - started
    cursor = store.conn.cursor()
    cursor.execute(f"SELECT type, source_id FROM {STORE_TABLE}")
    found = [(int(t), int(i)) for t, i in cursor.fetchall()]
    store.close()
    out.send({
        "seconds": elapsed,
        "summary": summary["destinations"]["des0"],
        "found": found,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


def reconcile(databases: tuple[str, str]) -> dict[str, Any]:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=run_reconcile, args=(databases, sender))
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


def reladiff(databases: tuple[str, str], timeout: float) -> float | None:
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
    ]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        print(f"reladiff failed ({result.returncode}): {result.stderr.strip()[-500:]}")
        return None
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-reladiff", action="store_true")
    parser.add_argument("--reladiff-timeout", type=float, default=300.0)
    args = parser.parse_args()
    params = _params()
    for databases, missing, different in ((IDENTICAL, 0, 0), (DIFFERENT, 5, 5)):
        built = build(
            params, args.rows, missing, different, per=10000, source_db=databases[0], destination_db=databases[1],
            destination_id=True,
        )
        print(f"{databases[1]}: {args.rows:,} rows ({'built in %.1f s' % built if built else 'reused'})")

    results: dict[str, Any] = {"rows": args.rows}
    results["floor_second"] = floor(IDENTICAL)
    print(f"floor: stream both tables' mapped columns once: {results['floor_second']:.2f} s")

    same = reconcile(IDENTICAL)
    results["identical_second"] = same["seconds"]
    print(
        f"cupid reconcile, identical tables: {same['seconds']:.2f} s ({same['seconds'] / results['floor_second']:.2f}x"
        f" the floor), {same['summary']['chunks']} chunks, found {len(same['found'])}, "
        f"peak RSS {same['peak_rss_mb']:.1f} MB"
    )

    diff = reconcile(DIFFERENT)
    planted = planted_ids(args.rows, 5, 5, per=10000)
    expected = {(1, i) for i in planted.missing} | {(2, i) for i in planted.different}
    exact = set(diff["found"]) == expected and len(diff["found"]) == len(expected)
    results.update(different_second=diff["seconds"], exact=exact)
    print(
        f"cupid reconcile, 0.1% different: {diff['seconds']:.2f} s ({diff['seconds'] / same['seconds']:.2f}x the "
        f"identical case), {diff['summary']['chunks']} chunks ({diff['summary']['differingChunks']} differing); "
        f"planted {len(expected):,}, found {len(diff['found']):,}: {'EXACT' if exact else 'MISMATCH'}"
    )

    if not args.no_reladiff:
        seconds = reladiff(DIFFERENT, args.reladiff_timeout)
        results["reladiff_second"] = seconds
        if seconds is None:
            print(f"reladiff 0.6.0 (key id), 0.1% different: did not finish within {args.reladiff_timeout:.0f} s")
        else:
            print(f"reladiff 0.6.0 (key id), 0.1% different: {seconds:.2f} s")
    print(json.dumps(results))
    return 0 if exact and not same["found"] else 1


if __name__ == "__main__":
    sys.exit(main())
