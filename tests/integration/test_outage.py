"""One broken receiver never holds up the rest: an outage through real scheduled runs (``airflow standalone``).

Two destinations of one config, ``a`` and ``b``; a row is inserted every 3 s; ``a``'s receiver answers
503 for 3 minutes, then heals. Throughout, ``b``'s callbacks arrive within 3 schedule intervals of the
insert, but for one stall of at most retries x retry delay at the start (the ``deliver`` task's
retries, before ``a``'s circuit opens); ``a``'s mismatches are recorded within the same bounds; once
``a`` heals, all of its items are delivered within one failure-pool interval; nothing is lost and no
key is sent twice with different bodies.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests.support.standalone import Standalone

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import MariaDB

    from tests.support.receivers import Hit, Receiver

pytestmark = pytest.mark.integration

INTERVAL = 5  # the sync DAG's schedule, seconds
RETRY_DELAY = 10  # failureJobRetrySecond
RETRIES = 3
POOL_INTERVAL = 60  # failurePool.scheduleSecond
OUTAGE = 180
INSERT_EVERY = 3
INSERTING = 240
SLACK = 5  # a run's own time on a 2-core machine


def test_an_outage_of_one_receiver_stalls_the_other_once_at_most_and_loses_nothing(
    mariadb: MariaDB, fresh_database: str, receivers: Callable[..., Receiver], tmp_path: Path
) -> None:
    conn = mariadb.connect(fresh_database)
    cur = conn.cursor()
    cur.execute(
        "CREATE TABLE src (id BIGINT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL UNIQUE, name VARCHAR(64))"
    )
    for table in ("copy_a", "copy_b"):
        cur.execute(f"CREATE TABLE {table} (code VARCHAR(32) PRIMARY KEY, name VARCHAR(64))")
    cur.execute("INSERT INTO src (code, name) VALUES ('k000', 'first')")
    for table in ("copy_a", "copy_b"):
        cur.execute(f"INSERT INTO {table} SELECT code, name FROM src")

    down = threading.Event()
    arrived: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    bodies: dict[tuple[str, str], set[str]] = {}

    def seen(destination: str) -> Callable[[Hit], None]:
        def record(hit: Hit) -> None:
            key = json.loads(hit.body)["key"]
            bodies.setdefault((destination, key), set()).add(hashlib.sha256(hit.body).hexdigest())
            if destination == "b" or not down.is_set():
                arrived[destination].setdefault(key, time.time())

        return record

    a = receivers(before_answer=seen("a"), respond=lambda hit, nth: 503 if down.is_set() else 204)
    b = receivers(before_answer=seen("b"))
    dsn = mariadb.go_dsn(fresh_database)
    configs = tmp_path / "configs"
    configs.mkdir()

    def destination(name: str, url: str) -> dict[str, object]:
        return {
            "name": name,
            "dsn": dsn,
            "table": f"copy_{name}",
            "byColumn": "code",
            "columns": {"code": "code", "name": "name"},
            "callbackNotification": {"url": url, "timeoutSecond": 2},
        }

    (configs / "outage.json").write_text(
        json.dumps(
            {
                "failureJobRetrySecond": RETRY_DELAY,
                "retries": RETRIES,
                "src": {"dsn": dsn, "table": "src", "byColumn": "code", "insertIntervalMillisecond": INTERVAL * 1000},
                "des": [destination("a", a.url), destination("b", b.url)],
                "failurePool": {"scheduleSecond": POOL_INTERVAL},
            }
        ),
        encoding="utf-8",
    )
    airflow = Standalone(tmp_path, configs, dict(os.environ))
    airflow.start()
    try:
        deadline = time.monotonic() + 240
        while not any(r[1] == "success" for r in _runs(airflow)):
            assert time.monotonic() < deadline, "the sync DAG never had a successful run"
            time.sleep(2)

        inserted: dict[str, float] = {}
        down.set()
        outage_started = time.time()
        healed_at = None
        n = 0
        while time.time() - outage_started < INSERTING:
            n += 1
            key = f"k{n:03d}"
            cur.execute("INSERT INTO src (code, name) VALUES (%s, %s)", (key, f"row {n}"))
            inserted[key] = time.time()
            if healed_at is None and time.time() - outage_started >= OUTAGE:
                down.clear()
                healed_at = time.time()
            time.sleep(INSERT_EVERY)
        assert healed_at is not None

        everything_by = healed_at + POOL_INTERVAL + 2 * INTERVAL + SLACK
        while set(arrived["a"]) < set(inserted) and time.time() < everything_by + 30:
            time.sleep(1)
    finally:
        airflow.stop()
        conn.close()

    quick = 3 * INTERVAL + SLACK
    stall = RETRIES * RETRY_DELAY + quick
    print(
        f"b: slowest {max(arrived['b'][k] - t for k, t in inserted.items() if k in arrived['b']):.1f} s after "
        f"its insert; a: its backlog delivered {max(arrived['a'].values(), default=healed_at) - healed_at:.1f} s "
        f"after the receiver healed; {len(inserted)} rows inserted"
    )
    latency_b = {k: arrived["b"][k] - t for k, t in inserted.items() if k in arrived["b"]}
    assert set(latency_b) == set(inserted), f"b never got {sorted(set(inserted) - set(latency_b))}"
    slow = sorted(k for k, d in latency_b.items() if d > quick)
    assert all(latency_b[k] <= stall for k in slow), {k: round(latency_b[k]) for k in slow}
    assert _one_stretch(sorted(inserted), slow), f"b was held up more than once: {slow}"

    cur2 = mariadb.connect(fresh_database).cursor()
    cur2.execute("SELECT row_key, UNIX_TIMESTAMP(detected_at) FROM cupid_delivery WHERE destination = 'a'")
    recorded = {k.decode(): float(t) for k, t in cur2.fetchall()}
    assert set(recorded) == set(inserted), "every mismatch of a is recorded"
    late = sorted(k for k in inserted if recorded[k] - inserted[k] > quick)
    assert all(recorded[k] - inserted[k] <= stall for k in late)
    assert _one_stretch(sorted(inserted), late)

    assert set(arrived["a"]) == set(inserted), f"a never got {sorted(set(inserted) - set(arrived['a']))}"
    assert max(arrived["a"].values()) <= everything_by, "a's backlog took more than one failure-pool interval"
    assert all(len(digests) == 1 for digests in bodies.values()), "a key was sent with two different bodies"


def _runs(airflow: Standalone) -> list[tuple[str, str]]:
    try:
        return [(r[0], r[1]) for r in airflow.runs("cupid_outage_sync")]
    except Exception:  # the metadata DB is not ready yet
        return []


def _one_stretch(order: list[str], slow: list[str]) -> bool:
    """Whether the slow keys are consecutive in insert order (one stall, not several)."""
    if not slow:
        return True
    positions = sorted(order.index(k) for k in slow)
    return positions == list(range(positions[0], positions[-1] + 1))
