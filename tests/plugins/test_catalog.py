"""The page's connections to state databases: reused across requests, and good again after the server dropped them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cupid_airflow.core import pool
from cupid_airflow.core.config import load_config
from cupid_airflow.plugins import catalog
from cupid_airflow.plugins.catalog import StateConnections
from tests.support.outbox import plant_items, write_config

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import MariaDB

pytestmark = pytest.mark.integration


def test_a_connection_the_server_closed_while_idle_is_replaced_before_it_is_used(
    mariadb: MariaDB, fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write_config(tmp_path, "conns", mariadb.go_dsn(fresh_database), "http://127.0.0.1:9/"))
    connections = StateConnections()
    with connections.open(config) as (store, _):
        store.ensure_schema()
        plant_items(store, config.name, [1, 2], destination="copy0")
        first_thread = int(store.query("SELECT CONNECTION_ID()")[0][0])
    admin = mariadb.connect()
    admin.cursor().execute(f"KILL CONNECTION {first_thread}")  # as wait_timeout would
    admin.close()
    monkeypatch.setattr(catalog, "STALE_SECOND", 0.0, raising=False)

    with connections.open(config) as (store, _):
        again = pool.page(store, config.name, "copy0", pool.PoolFilter(("pending",)))
        assert int(store.query("SELECT CONNECTION_ID()")[0][0]) != first_thread, "the same object, a new connection"
    assert [i.key for i in again.items] == ["n-0002", "n-0001"]
