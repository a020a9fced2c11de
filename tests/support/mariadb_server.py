"""A MariaDB server of one test or module alone: its own data dir, port and socket, started and killed by pid.

The one starter of the suite (a state database that restarts, a destination on another server, a server
that speaks TLS). It never skips: when ``mariadb-install-db`` or ``mariadbd`` is missing, or the server
does not start, it raises with the reason and the server's log, so the test fails and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.sql import ConnectionParams
from tests.support.receivers import free_port

if TYPE_CHECKING:
    from collections.abc import Sequence


class PrivateMariaDB:
    """A private server, root with an empty password over TCP; ``options`` are extra ``mariadbd`` options."""

    def __init__(self, options: Sequence[str] = ()) -> None:
        for program in ("mariadb-install-db", "mariadbd"):
            if shutil.which(program) is None:
                raise RuntimeError(f"{program} is not on PATH: scripts/setup.sh installs mariadb-server")
        self.base = Path(tempfile.mkdtemp(prefix="cupid-mdb-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.base / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *as_root,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self.base, ignore_errors=True)
            raise RuntimeError(f"mariadb-install-db failed: {result.stdout[-1500:]}\n{result.stderr[-1500:]}")
        self._command = [
            "mariadbd",
            "--no-defaults",
            f"--datadir={self.base / 'data'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.base / 'sock'}",
            f"--pid-file={self.base / 'pid'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
            f"--log-error={self.base / 'error.log'}",
            *options,
            *as_root,
        ]

    def params(self, database: str | None = None) -> ConnectionParams:
        return ConnectionParams(host="127.0.0.1", port=self.port, user="root", password="", database=database)

    def start(self) -> PrivateMariaDB:
        """Start the server (again, after :meth:`kill`) and wait until it answers."""
        import MySQLdb

        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
                return self
            except MySQLdb.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.base / "error.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the private MariaDB did not start: {log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """Stop the server and remove its data."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)

    def execute(self, *statements: str, database: str | None = None) -> None:
        import MySQLdb

        extra: dict[str, Any] = {"database": database} if database else {}
        conn = MySQLdb.connect(
            host="127.0.0.1", port=self.port, user="root", autocommit=True, charset="utf8mb4", **extra
        )
        try:
            cursor = conn.cursor()
            for statement in statements:
                cursor.execute(statement)
        finally:
            conn.close()

    def __enter__(self) -> PrivateMariaDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
