"""Reconcile against a destination on a MariaDB server of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cupid_airflow.core.reconcile import ReconcileRun, ReconcileSettings
from cupid_airflow.core.sql import ConnectionParams, connect
from tests.support.database import params_for, scalar
from tests.support.mariadb_server import PrivateMariaDB
from tests.support.reconcile import CONFIG, SIMPLE_SPEC, found, raw_rows, simple_tables

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import MariaDB

    from cupid_airflow.core.store import DeliveryStore

pytestmark = pytest.mark.integration


# -- 8. a destination on another server --------------------------------------------------------------
@pytest.fixture(scope="module")
def second_server() -> Iterator[ConnectionParams]:
    """A MariaDB server of its own, started for this module."""
    with PrivateMariaDB() as server:
        yield server.params()


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
        cursor.execute("TRUNCATE mysql.general_log")
        cursor.execute("SET GLOBAL log_output = 'TABLE', general_log = 1")
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
    conn = connect(second_server)
    try:
        cursor = conn.cursor()
        cursor.execute("SET GLOBAL general_log = 0")
        cursor.execute("SELECT argument FROM mysql.general_log WHERE command_type = 'Query'")
        statements = [row[0].decode() for row in cursor.fetchall()]
    finally:
        conn.close()
    assert summary["error"] is None and summary["complete"] is True
    assert summary["rows"] == {"source": 5000, "destination": 5000}
    # on the remote server: one hash query per chunk of 500 ids (5,000 rows, ids up to 5,001 after the
    # delete and insert: 11 chunks), then one read of the differing buckets' rows (a sweep batch, counted
    # as a chunk too), then one look-up of the extra row's key
    hashes = [q for q in statements if q.startswith("SELECT MOD(CRC32(`code`), 4096), COUNT(*)")]
    assert len(hashes) == 11
    assert sum(" WHERE MOD(CRC32(`code`), 4096) IN (" in q for q in statements) == 1
    assert summary["chunks"] == {"source": 12, "destination": 12}
    assert found(store) == {("remote", b"k04321", 1), ("remote", b"k00777", 2), ("remote", b"k90000", 3)}
