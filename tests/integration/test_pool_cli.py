"""The failure-pool command (`python -m cupid_airflow pool`) on a real store: list, requeue, purge, then delivery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.outbox import (
    dags_of,
    make_tables,
    new_stem,
    number_of,
    statuses,
    store_rows,
    task_states,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import MariaDB

    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# == python -m cupid_airflow pool ======================================================================


def pool_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cupid_airflow", "pool", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env=os.environ.copy(),
    )


def pool_stats(path: Path) -> dict[str, Any]:
    result = pool_command("stats", str(path), "--output", "json")
    assert result.returncode == 0, result.stderr
    [stats] = json.loads(result.stdout)
    return stats


@pytest.mark.parametrize("limit", ["maxAttempts", "maxAgeSecond"])
def test_pool_command_lists_and_requeues_dead_items_which_are_then_delivered(
    limit: str,
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 4)
    receiver = receivers(respond=lambda hit, nth: 503)
    stem = new_stem("pool")
    pool_limits = {"maxAttempts": 1} if limit == "maxAttempts" else {"maxAgeSecond": 3600}
    path = write_config(
        tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=0, extra={"failurePool": pool_limits}
    )
    sync, pool = dags_of(path)
    assert task_states(run_dag(sync)) == {"compare": "success", "deliver": "failed"}

    stats = pool_stats(path)
    assert stats["config"] == stem
    assert (stats["parked"], stats["pending"], stats["delivered"], stats["dead"]) == (4, 0, 0, 0)
    assert isinstance(stats["oldestParkedSecond"], int)

    listing = pool_command("list", str(path), "--status", "parked")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.strip().splitlines()
    assert lines[-1] == "4 item(s)"
    rows = [line for line in lines if "| parked |" in line]
    assert len(rows) == 4 and all("HTTP 503" in line for line in rows), lines
    as_json = pool_command("list", str(path), "--status", "parked", "--json")
    assert as_json.returncode == 0, as_json.stderr
    documents = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {d["lastBody"]["srcColumn"]["number"] for d in documents} == planted
    assert {d["status"] for d in documents} == {"parked"}
    assert {d["idempotencyKey"] for d in documents} == {h.idempotency_key for h in receiver.hits}
    unknown = pool_command("list", str(path), "--status", "lost")
    assert unknown.returncode != 0 and "unknown status(es) lost" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    # the failure pool gives up on them: one attempt made (maxAttempts=1), or queued 2 h ago (maxAgeSecond=3600)
    if limit == "maxAgeSecond":
        conn = mariadb.connect(fresh_database)
        try:
            conn.cursor().execute(
                "UPDATE cupid_delivery SET detected_at = NOW(6) - INTERVAL 2 HOUR, "
                "queued_at = NOW(6) - INTERVAL 2 HOUR WHERE config = %s",
                (stem,),
            )
        finally:
            conn.close()
    run_dag(pool)
    stats = pool_stats(path)
    assert (stats["parked"], stats["dead"]) == (0, 4)

    requeued = pool_command("requeue", str(path))
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"requeued 4 item(s) into the failure pool of {stem}"
    stats = pool_stats(path)
    assert (stats["parked"], stats["dead"]) == (4, 0)

    # the receiver is fixed; the requeued items get their retry and are delivered
    receiver.respond = None
    pool_run = run_dag(pool)
    final = statuses(store_rows(mariadb, fresh_database, stem))
    assert final == {"delivered": 4}, f"requeued items were not delivered by the next failure-pool run: {dict(final)}"
    assert task_states(pool_run) == {"drain": "success"}
    assert receiver.ok_keys() == planted


def test_pool_purge_refuses_undelivered_items_without_the_force_flag(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 6)
    good = {number_of(i) for i in (1, 3, 5)}
    receiver = receivers(respond=lambda hit, nth: 204 if hit.key in good else 503)
    stem = new_stem("purge")
    path = write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=0)
    sync, _ = dags_of(path)
    assert task_states(run_dag(sync)) == {"compare": "success", "deliver": "failed"}
    by_status = lambda: {(r.key, r.status) for r in store_rows(mariadb, fresh_database, stem)}  # noqa: E731
    before = by_status()
    assert before == {(k, "delivered" if k in good else "parked") for k in planted}

    for status in ("parked", "pending", "dead", "delivered,parked"):
        refused = pool_command("purge", str(path), "--status", status)
        assert refused.returncode != 0, (status, refused.stdout)
        assert "refusing to purge undelivered items" in refused.stderr
        assert "--i-know-this-loses-data" in refused.stderr
        assert by_status() == before

    unconfirmed = pool_command("purge", str(path))
    assert unconfirmed.returncode != 0 and "--yes" in unconfirmed.stderr
    assert by_status() == before
    purged = pool_command("purge", str(path), "--yes")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == f"purged 3 item(s) of {stem}"
    assert by_status() == {(k, "parked") for k in planted - good}

    forced = pool_command("purge", str(path), "--status", "parked", "--i-know-this-loses-data", "--yes")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == f"purged 3 item(s) of {stem}"
    assert by_status() == set()
