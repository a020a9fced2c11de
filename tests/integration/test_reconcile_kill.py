"""A verify SIGKILLed at random points while a writer changes both tables still finds exactly the truth.

The writer owns a range of keys and changes them in transactions that touch both tables alike (as a
CDC that works would); the planted differences lie outside that range and never change. Verify runs
are child processes, each killed after a random delay (seeded), until one completes. Then every
planted difference is recorded with its type, nothing is recorded for an untouched row, a key the
writer touched is recorded only as what the writer did to it (type 1 after an insert, 2 after an
update, 3 after a delete), and the verify's counts never exceed what was recorded (no batch counted
twice).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.database import execute, params_for
from tests.support.reconcile import CONFIG, all_items, checkpoint_state

if TYPE_CHECKING:
    from conftest import MariaDB

    from cupid_airflow.core.store import DeliveryStore

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = 60_000
WRITER_FROM = 40_001  # keys k20001.. belong to the writer; planted differences lie below
SEED = int(os.environ.get("CUPID_KILL_SEED", "20260611"))

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from cupid_airflow.core.compare import DestinationSpec
    from cupid_airflow.core.reconcile import ReconcileRun, ReconcileSettings
    from cupid_airflow.core.sql import ConnectionParams
    from cupid_airflow.core.store import DeliveryStore

    class FileProgress:
        def __init__(self, path):
            self.path = path
        def load(self, destination):
            return None
        def save(self, destination, summary):
            with open(self.path + ".tmp", "w") as out:
                json.dump(summary, out)
            os.replace(self.path + ".tmp", self.path)

    args = json.loads(sys.argv[1])
    params = ConnectionParams(**args["params"])
    spec = DestinationSpec("des0", "dst", "code", {"code": "code", "name": "name", "ver": "ver"})
    summary = ReconcileRun(
        config=args["config"], source=params, table="src", id_column="id", by_column="code",
        destinations={"des0": (params, spec)}, settings=ReconcileSettings(**args["settings"]),
        store=DeliveryStore(params), progress=FileProgress(args["progress"]),
    ).run()
    print(json.dumps(summary["destinations"]["des0"]))
    """
)


class Writer:
    """Changes rows of the writer's key range in both tables at once, and remembers what it did to each key."""

    def __init__(self, mariadb: MariaDB, database: str, seed: int) -> None:
        self.conn = mariadb.connect(database)
        self.random = random.Random(seed)
        self.live = set(range(WRITER_FROM, ROWS + 1))
        self.next_new = ROWS + 1
        self.done: dict[str, set[bytes]] = {"insert": set(), "update": set(), "delete": set()}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.operations = 0

    def _run(self) -> None:
        cursor = self.conn.cursor()
        while not self.stop.is_set():
            kind = self.random.choice(("update", "update", "insert", "delete"))
            if kind == "insert":
                n = self.next_new
                self.next_new += 1
                self.live.add(n)
            else:
                n = self.random.choice(sorted(self.live))
            code = f"k{n:05d}"
            self.done[kind].add(code.encode())
            cursor.execute("START TRANSACTION")
            if kind == "insert":
                cursor.execute("INSERT INTO src (id, code, name, ver) VALUES (%s, %s, %s, 1)", (n, code, f"new {n}"))
                cursor.execute("INSERT INTO dst (code, name, ver) VALUES (%s, %s, 1)", (code, f"new {n}"))
            elif kind == "update":
                name = f"name {n} v{self.operations}"
                cursor.execute("UPDATE src SET name = %s, ver = ver + 1 WHERE code = %s", (name, code))
                cursor.execute("UPDATE dst SET name = %s, ver = ver + 1 WHERE code = %s", (name, code))
            else:
                self.live.discard(n)
                cursor.execute("DELETE FROM src WHERE code = %s", (code,))
                cursor.execute("DELETE FROM dst WHERE code = %s", (code,))
            cursor.execute("COMMIT")
            self.operations += 1
            time.sleep(0.002)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.conn.close()


def test_a_verify_killed_at_random_points_while_both_tables_change_finds_exactly_the_truth(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, tmp_path: Path
) -> None:
    db = fresh_database
    rng = random.Random(SEED)
    execute(
        mariadb,
        db,
        "CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, name VARCHAR(64) NULL, "
        "ver INT NOT NULL, UNIQUE KEY (code))",
        f"INSERT INTO src SELECT seq, CONCAT('k', LPAD(seq, 5, '0')), CONCAT('name ', seq), 1 FROM seq_1_to_{ROWS}",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL, ver INT NOT NULL)",
        "INSERT INTO dst SELECT code, name, ver FROM src",
    )
    planted = rng.sample(range(1, WRITER_FROM), 2000)
    missing = {f"k{n:05d}".encode() for n in planted[:800]}
    different = {f"k{n:05d}".encode() for n in planted[800:1600]}
    extra = {f"z{n:05d}".encode() for n in planted[1600:]}
    execute(
        mariadb,
        db,
        "DELETE FROM dst WHERE code IN (" + ", ".join(f"'{k.decode()}'" for k in missing) + ")",
        "UPDATE dst SET name = 'stale' WHERE code IN (" + ", ".join(f"'{k.decode()}'" for k in different) + ")",
        "INSERT INTO dst (code, name, ver) VALUES " + ", ".join(f"('{k.decode()}', 'extra', 1)" for k in extra),
    )
    params = params_for(mariadb, db)
    progress = tmp_path / "progress.json"
    argument = json.dumps(
        {
            "params": {
                "host": params.host,
                "port": params.port,
                "user": params.user,
                "password": params.password,
                "database": db,
            },
            "config": CONFIG,
            "progress": str(progress),
            "settings": {
                "detect_deletes": True,
                "chunk_size": 50,
                "min_chunk_size": 50,
                "max_chunk_size": 50,
                "fetch_batch": 10,
                "checkpoint_second": 0.02,
                "min_buckets": 4096,
            },
        }
    )
    kills: list[float] = []
    phases: list[str | None] = []  # the checkpoint each kill left behind
    final = None
    with Writer(mariadb, db, SEED) as writer:
        for attempt in range(200):
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, argument],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            # early attempts die young, later ones get longer: kills land in every phase, then one run finishes
            delay = rng.uniform(0.35, 0.6 + 0.05 * attempt)
            try:
                out, err = child.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
                child.communicate(timeout=30)
                kills.append(delay)
                state = checkpoint_state(mariadb, db)
                phases.append(None if state is None else f"{state['phase']}{state['sweep']}")
                continue
            assert child.returncode == 0, err.decode()[-2000:]
            final = json.loads(out.decode().strip().splitlines()[-1])
            assert final["error"] is None, final
            if final["complete"]:
                break
        operations = writer.operations
    assert final is not None and final["complete"], f"no verify completed in {len(kills)} kills"
    assert len(kills) >= 3, f"the verify finished before it could be killed often ({final}): make the tables bigger"
    assert operations > 100
    print(f"{len(kills)} kills; checkpoints left: {Counter(phases)}; writer: {operations} transactions")

    items = all_items(store)
    recorded: dict[bytes, set[int]] = {}
    for item in items:
        recorded.setdefault(item.row_key, set()).add(item.type)
    # every planted difference, with its type
    for keys, kind in ((missing, 1), (different, 2), (extra, 3)):
        for key in keys:
            assert recorded.get(key) == {kind}, (key, recorded.get(key))
    # nothing else but what the writer did, and only as what it did
    allowed = {1: writer.done["insert"], 2: writer.done["update"], 3: writer.done["delete"]}
    for key, kinds in recorded.items():
        if key in missing | different | extra:
            continue
        for kind in kinds:
            assert key in allowed[kind], f"{key!r} recorded as type {kind}, but the writer did not do that"
    # each batch's counts joined the verify once: never more findings counted than items recorded
    totals = json.loads(progress.read_text())["found"]
    by_kind = Counter(t for kinds in recorded.values() for t in kinds)
    assert len(missing) <= totals["missing"] <= by_kind[1]
    assert len(different) <= totals["different"] <= by_kind[2]
    assert len(extra) <= totals["deleted"] <= by_kind[3]
