"""Benchmark the full reconcile on 1,000,000-row tables at 0/2/10/50% differing rows, and 10,000,000 identical rows.

Per run (``--repeat``), side by side on the local MariaDB:

- the read floor: streaming both tables' mapped columns (``number, name, avatar``) to a client once;
- cupid's reconcile of identical tables and of tables where 2%, 10% and 50% of the rows differ (half
  of them missing at the destination, half different), each in a child process whose peak RSS is
  reported; every found row is checked against the planted ones; ``record`` is the time the run spent
  handing findings to the delivery store (one item each, its body built when it is sent) and waiting for
  the store to finish the batch before (the server writes a batch while the next is judged), ``verify``
  the rest;
- reladiff 0.6.0 on the same differing tables (``--reladiff-repeat`` runs, installed into its own venv
  under ``.bench/`` on first use; ``--no-reladiff`` skips it); its answer is checked against the planted
  rows, and a ratio is printed only when it is exact;
- with ``--ten-million``: the floor and cupid's reconcile of two identical 10,000,000-row tables.

Each figure's median is the median of that figure over the runs (``statistics.median``; with two runs,
their mean). The machine is shared: figures move with its load, which is printed with them. Each
measurement starts once InnoDB has written back the previous run's dirty pages (:func:`settle`).

    .venv/bin/python bench/bench_reconcile.py --repeat 3 --ten-million
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
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
COLUMNS = {"number": "number", "name": "name", "avatar": "avatar"}
PER = 1000
# name, missing and different rows per PER (half of the differing rows each)
SCENARIOS = (("identical", 0, 0), ("2%", 10, 10), ("10%", 50, 50), ("50%", 250, 250))


def databases(name: str, rows: int) -> tuple[str, str]:
    tag = {"identical": "same", "2%": "p2", "10%": "p10", "50%": "p50"}[name]
    prefix = "cupid_bench_rec" if rows == 1_000_000 else f"cupid_bench_rec{rows // 1_000_000}m"
    return f"{prefix}_{tag}_src", f"{prefix}_{tag}_dst"


def _params(database: str | None = None) -> ConnectionParams:
    return ConnectionParams(database=database)


def run_reconcile(pair: tuple[str, str], out: Any) -> None:
    """Child process: one unbounded reconcile; report seconds, the summary, what was found and peak RSS."""
    source_db, destination_db = pair
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
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def peak_rss_mb() -> float:
    """This process's peak RSS. ``VmHWM``, not ``getrusage``: on Linux the latter also counts the parent's RSS
    at the moment a spawned child was forked."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reconcile(pair: tuple[str, str]) -> dict[str, Any]:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(target=run_reconcile, args=(pair, sender))
    child.start()
    result: dict[str, Any] = receiver.recv()
    child.join()
    if result["summary"]["error"]:
        raise RuntimeError(f"reconcile failed: {result['summary']['error']}")
    return result


def floor(pair: tuple[str, str]) -> float:
    """Seconds to stream both tables' mapped columns to a client, one after the other."""
    import MySQLdb.cursors

    started = time.monotonic()
    for database in pair:
        conn = connect(_params(database))
        cursor = conn.cursor(MySQLdb.cursors.SSCursor)
        cursor.execute("SELECT number, name, avatar FROM user")
        while cursor.fetchmany(10000):
            pass
        conn.close()
    return time.monotonic() - started


def reladiff(pair: tuple[str, str], timeout: float, threads: int) -> tuple[float, set[int], set[int], set[int]] | None:
    """Seconds reladiff took and the ids it reported missing, different and extra; None when it failed.

    reladiff 0.6.0 exits 0 even when it fails: a run counts only when it exited cleanly with no error
    logged. Its default sorting of the differences crashes on rows with NULLs, so ``--skip-sort-results``
    is passed; ``hashdiff`` is what it picks for tables in two databases. Its diff lines start with
    ``- id, ...`` (a row of the first table) or ``+ id, ...`` (of the second).
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
    source_db, destination_db = pair
    command = [
        str(binary),
        f"mysql://root@127.0.0.1:3306/{source_db}",
        "user",
        f"mysql://root@127.0.0.1:3306/{destination_db}",
        "user",
        "-k",
        "id",
        *("-c", "number", "-c", "name", "-c", "avatar"),
        *("--algorithm", "hashdiff", "--skip-sort-results", "--threads", str(threads)),
    ]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    elapsed = time.monotonic() - started
    errors = [line for line in result.stderr.splitlines() if " ERROR - " in line]
    if result.returncode != 0 or errors:
        print(f"reladiff failed ({result.returncode}): {'; '.join(errors) or result.stderr.strip()[-500:]}")
        return None
    first: set[int] = set()
    second: set[int] = set()
    for sign, ident in re.findall(r"^([+-]) (\d+),", result.stdout, flags=re.MULTILINE):
        (first if sign == "-" else second).add(int(ident))
    return elapsed, first - second, first & second, second - first


def settle(limit_second: float = 120.0, dirty_share: float = 0.1) -> float:
    """Wait (at most ``limit_second``) until InnoDB has written most dirty pages back; the seconds waited.

    A run that recorded 500,000 items leaves most of a small buffer pool dirty; until the server has written
    it back, whatever runs next reads the tables more slowly (up to 8x seen on the checksum pass), so each
    measurement starts on a settled server.
    """
    started = time.monotonic()
    conn = connect(_params())
    try:
        cursor = conn.cursor()
        while time.monotonic() - started < limit_second:
            cursor.execute(
                "SHOW GLOBAL STATUS WHERE Variable_name IN "
                "('Innodb_buffer_pool_pages_dirty', 'Innodb_buffer_pool_pages_total')"
            )
            status = {name.decode(): int(value) for name, value in cursor.fetchall()}
            if status["Innodb_buffer_pool_pages_dirty"] <= dirty_share * status["Innodb_buffer_pool_pages_total"]:
                break
            time.sleep(0.5)
    finally:
        conn.close()
    return time.monotonic() - started


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="measure cupid and the floor this many times")
    parser.add_argument("--no-reladiff", action="store_true")
    parser.add_argument("--reladiff-repeat", type=int, default=1, help="reladiff runs per differing scenario")
    parser.add_argument("--reladiff-timeout", type=float, default=900.0)
    parser.add_argument("--reladiff-threads", type=int, default=1, help="reladiff's --threads (its default: 1)")
    parser.add_argument("--ten-million", action="store_true", help="also 10,000,000 identical rows")
    parser.add_argument("--scenarios", default="identical,2%,10%,50%", help="which of identical,2%%,10%%,50%%")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
    pairs: dict[str, tuple[str, str]] = {}
    for name, missing, different in chosen:
        pairs[name] = databases(name, args.rows)
        built = build(
            _params(),
            args.rows,
            missing,
            different,
            per=PER,
            source_db=pairs[name][0],
            destination_db=pairs[name][1],
            destination_id=True,
        )
        print(f"{name}: {args.rows:,} rows ({f'built in {built:.1f} s' if built else 'reused'})", flush=True)
    big = databases("identical", 10_000_000) if args.ten_million else None
    if big:
        built = build(
            _params(), 10_000_000, 0, 0, per=PER, source_db=big[0], destination_db=big[1], destination_id=True
        )
        print(f"identical: 10,000,000 rows ({f'built in {built:.1f} s' if built else 'reused'})", flush=True)
    planted = {name: planted_ids(args.rows, m, d, per=PER) for name, m, d in chosen}

    runs: list[dict[str, Any]] = []
    all_exact = True
    for n in range(1, args.repeat + 1):
        waited = settle()
        run: dict[str, Any] = {"load": load(), "floor": floor(pairs[chosen[0][0]])}
        print(f"run {n} (load {run['load']}, settled {waited:.1f} s): floor {run['floor']:.2f} s", flush=True)
        for name, _, _ in chosen:
            waited = settle()
            result = reconcile(pairs[name])
            expected = {(1, i) for i in planted[name].missing} | {(2, i) for i in planted[name].different}
            exact = set(result["found"]) == expected and len(result["found"]) == len(expected)
            all_exact = all_exact and exact
            summary = result["summary"]
            run[name] = result["seconds"]
            run[f"{name} record"] = summary["recordSecond"]
            run[f"{name} rss"] = result["peak_rss_mb"]
            base = run.get("identical")
            print(
                f"  {name}: {result['seconds']:.2f} s"
                + (f" ({result['seconds'] / base:.2f}x identical)" if base and name != "identical" else "")
                + (f" ({result['seconds'] / run['floor']:.2f}x floor)" if name == "identical" else "")
                + f"; verify {result['seconds'] - summary['recordSecond']:.2f} s"
                f" + record {summary['recordSecond']:.2f} s"
                f"; {summary['differingBuckets']} of {summary['buckets']} buckets differ, rows compared "
                f"{summary['rowsCompared']['source']:,}+{summary['rowsCompared']['destination']:,}; planted "
                f"{len(expected):,}, found {len(result['found']):,}: {'EXACT' if exact else 'MISMATCH'}"
                f"; peak RSS {result['peak_rss_mb']:.0f} MB (load {load()}, settled {waited:.1f} s before)",
                flush=True,
            )
        if big:
            settle()
            run["floor 10M"] = floor(big)
            settle()
            result = reconcile(big)
            exact = not result["found"]
            all_exact = all_exact and exact
            run["identical 10M"], run["identical 10M rss"] = result["seconds"], result["peak_rss_mb"]
            base = run.get("identical")
            print(
                f"  identical 10M: {result['seconds']:.2f} s"
                + (f" ({result['seconds'] / base:.1f}x the 1M time)" if base else "")
                + f", floor {run['floor 10M']:.2f} s; found {len(result['found'])}; "
                f"peak RSS {result['peak_rss_mb']:.0f} MB (load {load()})",
                flush=True,
            )
        runs.append(run)

    if not args.no_reladiff:
        for name, _, _ in chosen:
            if name == "identical":
                continue
            for n in range(1, args.reladiff_repeat + 1):
                measured = reladiff(pairs[name], args.reladiff_timeout, args.reladiff_threads)
                if measured is None:
                    print(f"reladiff 0.6.0, {name}: no result within {args.reladiff_timeout:.0f} s")
                    continue
                seconds, reported_missing, reported_different, extra = measured
                exact = (
                    reported_missing == set(planted[name].missing)
                    and reported_different == set(planted[name].different)
                    and not extra
                )
                cupid = statistics.median(r[name] for r in runs)
                print(
                    f"reladiff 0.6.0 (key id, --threads {args.reladiff_threads}), {name}, run {n}: {seconds:.2f} s; "
                    f"reported {len(reported_missing):,} missing, {len(reported_different):,} different, "
                    f"{len(extra):,} extra: "
                    + (
                        f"EXACT; cupid's median {cupid:.2f} s is {seconds / cupid:.1f}x faster"
                        if exact
                        else "NOT the planted rows, no ratio"
                    )
                    + f" (load {load()})",
                    flush=True,
                )
                runs[-1].setdefault("reladiff", {}).setdefault(name, []).append(seconds if exact else None)

    medians = {}
    for key in sorted({k for r in runs for k, v in r.items() if isinstance(v, float)}):
        values = [r[key] for r in runs if isinstance(r.get(key), float)]
        if len(values) < len(runs):  # a failed run is not left out of a median: the figure has none
            print(f"{key}: {len(runs) - len(values)} of {len(runs)} runs failed, no median")
            all_exact = False
            continue
        medians[key] = statistics.median(values)
    print(f"medians of {len(runs)} runs: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    print(json.dumps({"rows": args.rows, "runs": runs, "medians": medians}))
    return 0 if all_exact else 1


if __name__ == "__main__":
    sys.exit(main())
