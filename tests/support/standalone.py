"""``airflow standalone`` for tests and benchmarks: a fresh AIRFLOW_HOME, its own session, a clean stop."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIX = "many"
Run = tuple[str, str, datetime, datetime | None, datetime | None]
LOCAL_SETTINGS = "__all__: list[str] = []\nimport cupid_airflow.preload  # noqa: E402, F401\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Standalone:
    """``airflow standalone`` in a fresh AIRFLOW_HOME (SQLite, LocalExecutor), in its own session."""

    label = "standalone (LocalExecutor, SQLite metadata DB)"

    def __init__(
        self, work: Path, configs_folder: Path, env: dict[str, str], parallelism: int = 32, preload: bool = True
    ) -> None:
        self.home = work / "airflow"
        self.home.mkdir()
        port = free_port()
        self.env = {
            **env,
            # standalone starts its components as `airflow ...`: the one beside this Python
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
            "CUPID_CONFIG_FOLDER": str(configs_folder),
        }
        self.process: subprocess.Popen[bytes] | None = None
        if preload:
            (self.home / "config").mkdir()
            (self.home / "config" / "airflow_local_settings.py").write_text(LOCAL_SETTINGS)

    def start(self) -> set[int]:
        log = open(self.home / "standalone.log", "wb")  # noqa: SIM115  # closed with the process
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "standalone"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return {self.process.pid}

    def runs(self, dag_ids: str = f"cupid_{PREFIX}%_sync") -> list[Run]:
        """(dag id, state, run after, start, end) of the runs of the DAGs matching ``dag_ids`` (SQL LIKE)."""
        import sqlite3

        conn = sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute(
                "SELECT dag_id, state, run_after, start_date, end_date FROM dag_run WHERE dag_id LIKE ?",
                (dag_ids,),
            ).fetchall()
        finally:
            conn.close()
        return [(d, s, parse_time(a), parse_time(b), parse_time(e)) for d, s, a, b, e in rows]  # type: ignore[misc]

    def stop(self) -> None:
        if self.process is None:
            return
        stop_session(self.process.pid)
        self.process.wait(timeout=30)


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def stop_session(sid: int) -> None:
    """TERM every process of the session, KILL what is left after 20 s."""
    deadline = time.monotonic() + 20
    sig = signal.SIGTERM
    while True:
        members = [pid for pid in _pids() if _sid(pid) == sid]  # zombies excluded
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.5)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL


def _sid(pid: int) -> int | None:
    """The session of a live process; None for a zombie or a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()
        return None if fields[0] == "Z" else int(fields[3])
    except (OSError, ValueError):
        return None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
