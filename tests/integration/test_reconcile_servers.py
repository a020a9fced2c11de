"""Reconcile against a destination on a MariaDB server of its own."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from cupid_airflow.core.reconcile import ReconcileRun, ReconcileSettings
from cupid_airflow.core.sql import ConnectionParams, connect
from cupid_airflow.core.store import DeliveryStore
from tests.integration.reconcile_support import (
    CONFIG,
    SIMPLE_SPEC,
    execute,
    found,
    params_for,
    raw_rows,
    scalar,
    simple_tables,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import MariaDB

pytestmark = pytest.mark.integration


@pytest.fixture
def store(mariadb: MariaDB, fresh_database: str) -> Iterator[DeliveryStore]:
    delivery_store = DeliveryStore(params_for(mariadb, fresh_database))
    yield delivery_store
    delivery_store.close()


@pytest.fixture
def other_database(mariadb: MariaDB) -> Iterator[str]:
    """A second uniquely named database (a destination elsewhere), dropped afterwards."""
    name = f"cupid_t_other_{secrets.token_hex(6)}"
    execute(mariadb, None, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        execute(mariadb, None, f"DROP DATABASE IF EXISTS `{name}`")


# -- 8. a destination on another server --------------------------------------------------------------
@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectionParams]:
    """A MariaDB server of its own (grant tables skipped, 16 MB buffer pool), started for this module."""
    server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    install = shutil.which("mariadb-install-db")
    if not os.path.exists(server) or install is None:
        pytest.skip("mariadbd and mariadb-install-db are needed to start a second server")
    home = tmp_path_factory.mktemp("second-mariadb")
    data = home / "data"
    installed = subprocess.run(
        [install, "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if installed.returncode != 0:
        pytest.skip(f"mariadb-install-db failed: {installed.stderr[-500:]}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed after the server stops
    process = subprocess.Popen(
        [
            server,
            "--no-defaults",
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={home / 'server.sock'}",
            f"--pid-file={home / 'server.pid'}",
            "--user=root",
            "--skip-grant-tables",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    params = ConnectionParams(host="127.0.0.1", port=port, user="root", password="", database=None)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connect(params).close()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"the second server did not start: {(home / 'server.log').read_text()[-500:]}")
                time.sleep(0.2)
        yield params
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def test_a_destination_on_another_server_is_verified_with_one_query_per_chunk_on_each(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, second_server: ConnectionParams
) -> None:
    simple_tables(mariadb, fresh_database, 5000)
    rows = raw_rows(mariadb, fresh_database, "SELECT code, name FROM dst")
    conn = connect(second_server)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT @@port, @@datadir")
        port, datadir = cursor.fetchone()
        assert int(port) == second_server.port != mariadb.port
        assert datadir.decode() != scalar(mariadb, fresh_database, "SELECT @@datadir")
        cursor.execute("CREATE DATABASE IF NOT EXISTS remote CHARACTER SET utf8mb4")
        cursor.execute("DROP TABLE IF EXISTS remote.dst")
        cursor.execute(
            "CREATE TABLE remote.dst (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL, "
            "name VARCHAR(64) NULL, UNIQUE KEY (code))"
        )
        cursor.executemany(
            "INSERT INTO remote.dst (code, name) VALUES (%s, %s)", [(r["code"], r["name"]) for r in rows]
        )
        cursor.execute("DELETE FROM remote.dst WHERE code = 'k04321'")
        cursor.execute("UPDATE remote.dst SET name = NULL WHERE code = 'k00777'")
        cursor.execute("INSERT INTO remote.dst (code, name) VALUES ('k90000', 'only remote')")
    finally:
        conn.close()
    remote = ConnectionParams(host=second_server.host, port=second_server.port, user="root", database="remote")
    summary = ReconcileRun(
        config=CONFIG,
        source=params_for(mariadb, fresh_database),
        table="src",
        id_column="id",
        by_column="code",
        destinations={"remote": (remote, SIMPLE_SPEC)},
        settings=ReconcileSettings(detect_deletes=True, chunk_size=500, min_chunk_size=500, max_chunk_size=500),
        store=store,
    ).run()["destinations"]["remote"]
    assert summary["error"] is None and summary["complete"] is True
    assert summary["rows"] == {"source": 5000, "destination": 5000}
    assert found(store) == {("remote", b"k04321", 1), ("remote", b"k00777", 2), ("remote", b"k90000", 3)}
