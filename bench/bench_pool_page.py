"""Benchmark the cupid page's endpoints on a big delivery store, through a running api-server.

Builds (or reuses) a store with ``--delivered`` delivered items of destination ``copy``
(delivered over the last 30 days), ``--parked`` parked items of destination ``search``
(parked over the last 7 days, with errors) and a few pending and dead ones, starts an Airflow
api-server with the cupid plugin (tests/support/airflow_stack.py), and times each request as an
operator's browser would make it (a signed-in user, real HTTP on loopback):

- the overview of the config;
- filtered list pages: parked items by type, key prefix and age; the newest and a deep page of
  the delivered items; a rare key prefix among the delivered items;
- one item's view.

    .venv/bin/python bench/bench_pool_page.py --delivered 1000000 --parked 10000

MariaDB's sequence engine (``seq_1_to_N``) builds the rows; ``--screenshot PATH`` also saves the
page's overview, as a browser shows it, to PATH (docs/failure-pool-page.png is made so).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cupid_airflow.core.destinations import DestinationRegistry
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import DeliveryStore
from tests.support.airflow_stack import AirflowStack

DATABASE = "cupid_bench_pool"
CONFIG = "bench"


def build(params: ConnectionParams, delivered: int, parked: int, *, rebuild: bool = False) -> float:
    """Fill the store (unless it already holds this plan); return the seconds it took."""
    started = time.monotonic()
    conn = connect(ConnectionParams(params.host, params.port, params.user, params.password))
    cursor = conn.cursor()
    tag = f"{delivered}:{parked}:v2"
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4")
    cursor.execute(
        "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'cupid_delivery'",
        (DATABASE,),
    )
    found = cursor.fetchall()
    if found and found[0][0].decode() == tag and not rebuild:
        conn.close()
        return 0.0
    cursor.execute(f"DROP TABLE IF EXISTS {DATABASE}.cupid_delivery")
    cursor.execute(f"DROP TABLE IF EXISTS {DATABASE}.cupid_delivery_attempt")
    cursor.execute(f"DROP TABLE IF EXISTS {DATABASE}.cupid_destination")
    store = DeliveryStore(ConnectionParams(params.host, params.port, params.user, params.password, DATABASE))
    store.ensure_schema()
    store.close()
    table = f"{DATABASE}.cupid_delivery"
    columns = (
        "config, destination, key_hash, row_key, live, type, source_id, status, attempts, idempotency_key, "
        "last_http_status, last_error, detected_at, last_detected_at, queued_at, updated_at, delivered_at"
    )
    for start in range(1, delivered + 1, 100_000):
        end = min(delivered, start + 99_999)
        # delivered over the last 30 days, oldest first
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT '{CONFIG}', 'copy', UNHEX(SHA2(k, 256)), k, NULL, 1 + seq % 2, "
            "seq, 'delivered', 1, SHA2(CONCAT('ik', seq), 256), 204, NULL, t, t, t, t + INTERVAL 1 SECOND, "
            "t + INTERVAL 1 SECOND FROM (SELECT seq, CONCAT('u-', LPAD(seq, 7, '0')) AS k, "
            f"NOW(6) - INTERVAL ({delivered} - seq) * 2592 DIV {max(1, delivered // 1000)} SECOND AS t "
            f"FROM {DATABASE}.seq_{start}_to_{end}) s"
        )
    cursor.execute(
        f"INSERT INTO {table} ({columns}) SELECT '{CONFIG}', 'search', UNHEX(SHA2(k, 256)), k, 1, 1 + seq % 3, seq, "
        "'parked', 1 + seq % 7, SHA2(CONCAT('is', seq), 256), 503, "
        "CONCAT('HTTP 503: search index busy, retry later (shard ', seq % 12, ')'), t, t, t, t, NULL "
        f"FROM (SELECT seq, CONCAT('u-', LPAD(seq * 7, 7, '0')) AS k, NOW(6) - INTERVAL ({parked} - seq) * 60 SECOND "
        f"AS t FROM {DATABASE}.seq_1_to_{parked}) s"
    )
    cursor.execute(
        f"INSERT INTO {table} ({columns}) SELECT '{CONFIG}', IF(seq % 2, 'copy', 'search'), UNHEX(SHA2(k, 256)), k, "
        "IF(seq <= 40, 1, NULL), 2, seq, IF(seq <= 40, 'pending', 'dead'), IF(seq <= 40, 0, 10), NULL, "
        "IF(seq <= 40, NULL, 500), IF(seq <= 40, NULL, 'HTTP 500: {\"error\": \"unknown tenant\"}'), t, t, t, t, NULL "
        "FROM (SELECT seq, CONCAT('p-', LPAD(seq, 7, '0')) AS k, NOW(6) - INTERVAL seq MINUTE AS t "
        f"FROM {DATABASE}.seq_1_to_60) s"
    )
    cursor.execute(  # a destination since removed from the config: its items are orphaned
        f"INSERT INTO {table} ({columns}) SELECT '{CONFIG}', 'legacy', UNHEX(SHA2(k, 256)), k, 1, 1, seq, 'parked', 3, "
        "NULL, NULL, 'cannot connect to legacy.internal:443: timeout', t, t, t, t, NULL "
        "FROM (SELECT seq, CONCAT('l-', seq) AS k, NOW(6) - INTERVAL 3 DAY AS t "
        f"FROM {DATABASE}.seq_1_to_25) s"
    )
    cursor.execute(f"ALTER TABLE {table} COMMENT = '{tag}'")
    cursor.execute(f"ANALYZE TABLE {table}")
    cursor.fetchall()
    conn.close()
    return time.monotonic() - started


def middle_item(params: ConnectionParams, offset: int) -> tuple[int, str]:
    """A delivered item half-way down the list: where a deep page starts."""
    conn = connect(params)
    cursor = conn.cursor()
    cursor.execute(
        "SELECT id, queued_at FROM cupid_delivery WHERE config = %s AND destination = 'copy' AND status = 'delivered' "
        f"ORDER BY queued_at, id LIMIT 1 OFFSET {int(offset)}",
        (CONFIG,),
    )
    item_id, queued_at = cursor.fetchone()
    conn.close()
    return int(item_id), queued_at.decode()


def timed(stack: AirflowStack, path: str, repeat: int) -> tuple[list[float], Any]:
    samples = []
    body: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        status, body = stack.request("GET", path, user="admin")
        samples.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body!r}")
    return samples, body


def screenshot(stack: AirflowStack, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1440, "height": 520})
        page.set_default_timeout(60_000)
        page.goto(stack.base_url + "/plugin/cupid")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(stack.users["admin"])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/plugin/cupid**")
        page.frame_locator("iframe[title=cupid]").locator(f"section[data-config={CONFIG}] table").wait_for()
        page.screenshot(path=str(path))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delivered", type=int, default=1_000_000)
    parser.add_argument("--parked", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    args = parser.parse_args()
    server = ConnectionParams(args.host, args.port, "root", "", DATABASE)
    took = build(server, args.delivered, args.parked, rebuild=args.rebuild)
    built = f"built in {took:.0f} s" if took else "reused"
    print(f"store: {args.delivered:,} delivered, {args.parked:,} parked, 60 pending/dead ({built})", flush=True)

    with tempfile.TemporaryDirectory(prefix="cupid-bench-pool-") as home:
        stack = AirflowStack.prepare(Path(home))
        dsn = f"{server.user}:{server.password}@tcp({server.host}:{server.port})/{DATABASE}"
        destination = {"dsn": dsn, "table": "user_copy", "columns": {"number": "number"}, "byColumn": "number"}
        config = {
            "src": {"dsn": dsn, "table": "user", "byColumn": "number"},
            "des": [
                {**destination, "name": "copy", "callbackNotification": {"url": "https://copy.example.com/cupid/hook"}},
                {**destination, "name": "search", "callbackNotification": {"url": "https://search.example.com/v2/repair"}},
            ],
        }
        (stack.config_folder / f"{CONFIG}.json").write_text(json.dumps(config), encoding="utf-8")
        registry = DestinationRegistry(server)  # the search receiver keeps failing: its circuit is open
        registry.count_sends(CONFIG, "search", succeeded=False, failures_after=5, threshold=5, cooldown_second=900,
                             last_error="HTTP 503: search index busy, retry later")  # fmt: skip
        registry.close()
        stack.start(components=("api-server",))
        try:
            base = f"/cupid/api/configs/{CONFIG}"
            timed(stack, f"{base}/overview", 2)  # builds the app and loads the config
            middle_id, middle_queued_at = middle_item(server, args.delivered // 2)
            cursor = quote(f"{middle_queued_at}|{middle_id}")
            cases = [
                ("overview", f"{base}/overview"),
                ("parked: type 1, key prefix u-00, older than 1 h", f"{base}/destinations/search/items?status=parked"
                 "&type=1&key_prefix=u-00&min_age_second=3600&limit=50"),
                ("parked and dead, newest 50", f"{base}/destinations/search/items?status=parked&status=dead&limit=50"),
                ("delivered, newest 50", f"{base}/destinations/copy/items?status=delivered&limit=50"),
                ("delivered, a page in the middle", f"{base}/destinations/copy/items?status=delivered&limit=50"
                 f"&cursor={cursor}"),
                ("delivered, rare key prefix u-09999", f"{base}/destinations/copy/items?status=delivered"
                 "&key_prefix=u-09999&limit=50"),
                ("delivered, older than 20 days", f"{base}/destinations/copy/items?status=delivered"
                 "&min_age_second=1728000&limit=50"),
                ("one item with its attempts", f"{base}/items/{middle_id}"),
            ]  # fmt: skip
            cases.append(("delivered, key prefix u-0 (every key)", f"{base}/destinations/copy/items?status=delivered"
                          "&key_prefix=u-0&limit=50"))  # fmt: skip
            cut_off = [  # a small part of a million items, read in time order: bounded by the 2 s statement limit
                ("delivered, type 3 (none is)", f"{base}/destinations/copy/items?status=delivered&type=3&limit=50"),
                ("delivered, key prefix u-05, a page in the middle", f"{base}/destinations/copy/items?"
                 f"status=delivered&key_prefix=u-05&limit=50&cursor={cursor}"),
            ]  # fmt: skip
            print(f"{'request':<52} {'median':>8} {'p95':>8} {'max':>8}   (ms, {args.repeat} requests each)")
            for name, path in cases:
                samples, body = timed(stack, path, args.repeat)
                samples.sort()
                p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
                shown = f"{len(body['items'])} items" if isinstance(body, dict) and "items" in body else ""
                print(f"{name:<52} {statistics.median(samples):>8.1f} {p95:>8.1f} {samples[-1]:>8.1f}   {shown}")
            for name, path in cut_off:
                started = time.perf_counter()
                status, body = stack.request("GET", path, user="admin")
                took_ms = (time.perf_counter() - started) * 1000
                print(f"{name:<52} {took_ms:>8.1f}   HTTP {status} {body.get('detail', '') if status != 200 else ''}")
            overview = stack.request("GET", f"{base}/overview", user="admin")[1]
            for d in overview["destinations"]:
                print(f"  {d['destination']}: {d['counts']} capped {d['capped']}")
            if args.screenshot:
                screenshot(stack, args.screenshot)
                print(f"screenshot: {args.screenshot}")
        finally:
            stack.stop()
    print("figures are wall-clock times on a shared machine: read them as rough")
    return 0


if __name__ == "__main__":
    sys.exit(main())
