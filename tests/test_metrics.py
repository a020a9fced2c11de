"""Run summaries reach Airflow's metrics: pure mapping, and a real StatsD listener fed by ``airflow dags test``."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from cupid_airflow.metrics import delivery_metrics, sync_metrics
from tests.support.dags_folder import (
    PARSING_CONTEXT_ENV,
    CallbackReceiver,
    config_text,
    create_tables,
    make_dags_folder,
)

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import MariaDB

SYNC_SUMMARY = {
    "config": "user",
    "rowsScanned": {"insert": 120, "update": 30},
    "recorded": 4,
    "nullKeys": 1,
    "destinations": {
        "copy": {
            "mismatches": {"missing": 3, "different": 1},
            "lagRows": 7,
            "lagUpdateSecond": 2.5,
            "lateCommits": {"gaps": 12, "found": 2, "expired": 5, "overCap": 3},
            "error": None,
        },
        "cache": {
            "mismatches": {"missing": 0, "different": 0},
            "lagRows": None,
            "lagUpdateSecond": None,
            "error": "OperationalError",
        },
    },
}


def test_sync_summary_maps_to_counters_and_gauges() -> None:
    metrics = sync_metrics(SYNC_SUMMARY)
    assert metrics["cupid.user.rows_scanned"] == ("incr", 150)
    assert metrics["cupid.user.recorded"] == ("incr", 4)
    assert metrics["cupid.user.copy.missing"] == ("incr", 3)
    assert metrics["cupid.user.copy.lag_rows"] == ("gauge", 7)
    assert metrics["cupid.user.copy.lag_update_second"] == ("gauge", 2.5)
    assert metrics["cupid.user.cache.unavailable"] == ("gauge", 1)
    assert "cupid.user.cache.lag_rows" not in metrics
    assert metrics["cupid.user.copy.late_gaps"] == ("gauge", 12)
    assert metrics["cupid.user.copy.late_found"] == ("incr", 2)
    assert metrics["cupid.user.copy.late_gaps_over_cap"] == ("incr", 3)


def test_delivery_summary_maps_pool_size_and_age() -> None:
    summary = {
        "config": "user",
        "destinations": {"copy": {"delivered": 5, "resolved": 1, "failed": 2}},
        "parked": 2,
        "store": {"pending": 0, "parked": 9, "dead": 1, "oldestParkedSecond": 640},
    }
    metrics = delivery_metrics(summary)
    assert metrics["cupid.user.copy.delivered"] == ("incr", 5)
    assert metrics["cupid.user.parked"] == ("incr", 2)
    assert metrics["cupid.user.pool.parked"] == ("gauge", 9)
    assert metrics["cupid.user.pool.oldest_parked_second"] == ("gauge", 640)


class StatsdListener:
    """A UDP socket on loopback collecting StatsD lines."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.lines.extend(data.decode("utf-8", "replace").splitlines())

    def wait_for(self, *prefixes: str, timeout: float = 10.0) -> None:
        """Wait until a line starting with each prefix has arrived (datagrams may land after the sender ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(any(line.startswith(p) for line in list(self.lines)) for p in prefixes):
                return
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.mark.integration
def test_a_sync_run_publishes_its_metrics_to_statsd(
    airflow_db: Path, mariadb: MariaDB, fresh_database: str, tmp_path: Path
) -> None:
    create_tables(mariadb, fresh_database)
    stem = f"m_{secrets.token_hex(3)}"
    dsn = mariadb.go_dsn(fresh_database)
    listener = StatsdListener()
    try:
        with CallbackReceiver() as receiver:
            folder = make_dags_folder(
                tmp_path,
                {
                    f"{stem}.json": config_text(
                        src_dsn=dsn, des_dsn=dsn, des_table="user_copy", callback_url=receiver.url
                    )
                },
            )
            env = {
                **os.environ,
                "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(listener.port),
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            }
            for name in ("CUPID_CONFIG_FOLDER", "AIRFLOW__CUPID__CONFIG_FOLDER", PARSING_CONTEXT_ENV):
                env.pop(name, None)
            # `airflow dags test` runs tasks in its own process, where the task runner's set-up of Airflow's
            # Stats does not happen: do that set-up exactly as the task runner does, then run the command.
            script = (
                "import sys\n"
                "from airflow.sdk._shared.observability.metrics import stats\n"
                "from airflow.sdk.observability.metrics import stats_utils\n"
                "stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)\n"
                "from airflow.__main__ import main\n"
                f"sys.argv = ['airflow', 'dags', 'test', 'cupid_{stem}_sync']\n"
                "main()\n"
            )
            result = subprocess.run(
                [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
            )
            assert result.returncode == 0, result.stdout + result.stderr
        listener.wait_for(
            *(
                f"airflow.cupid.{stem}.{name}:"
                for name in ("rows_scanned", "copy0.missing", "copy0.delivered", "pool.parked")
            )
        )
    finally:
        listener.close()
    cupid = [line for line in listener.lines if f"cupid.{stem}." in line]
    names = {line.split(":", 1)[0] for line in cupid}
    assert f"airflow.cupid.{stem}.rows_scanned" in names, listener.lines[:50]
    assert f"airflow.cupid.{stem}.copy0.missing" in names, sorted(names)
    assert f"airflow.cupid.{stem}.copy0.delivered" in names, sorted(names)
    assert f"airflow.cupid.{stem}.pool.parked" in names, sorted(names)
    missing = next(line for line in cupid if line.startswith(f"airflow.cupid.{stem}.copy0.missing:"))
    assert missing.split(":", 1)[1].startswith("1|c"), missing
