"""A running Airflow with the cupid plugin, shared by the page's API and browser tests.

``pool_stack`` (session): api-server, scheduler and dag-processor in their own ``AIRFLOW_HOME``
(see tests/support/airflow_stack.py) with users ``viewer`` (role viewer), ``editor`` (role user),
``admin`` and ``scoped_alpha`` (role user, but only config ``alpha``'s DAGs), and one state
database on the test MariaDB holding the delivery store. Config ``alpha`` reaches it by DSN,
``beta`` by the Airflow connection ``cupid_state``.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import DeliveryStore
from tests.support.airflow_stack import AirflowStack
from tests.support.outbox import COLUMNS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import MariaDB

CALLBACK_URL = "https://hooks.example.com/callback/T0KEN5ECRET?token=q5ecret"


def write_config(stack: AirflowStack, name: str, dsn: str | None, url: str, **extra: Any) -> Path:
    where: dict[str, Any] = {"dsn": dsn} if dsn else {"connId": "cupid_state"}
    document = {
        "src": {**where, "table": "user", "byColumn": "number", "insert": True, "insertIntervalMillisecond": 60000},
        "des": [
            {**where, "name": "copy", "table": "user_copy", "columns": COLUMNS, "byColumn": "number",
             "callbackNotification": {"url": url}},
        ],
        "failurePool": {"scheduleSecond": 5},
        **extra,
    }  # fmt: skip
    path = stack.config_folder / f"{name}.json"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def state_database(mariadb: MariaDB) -> Iterator[str]:
    name = f"cupid_t_pool_{secrets.token_hex(4)}"
    connection = mariadb.connect()
    try:
        connection.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        connection.close()
    yield name
    connection = mariadb.connect()
    try:
        connection.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


@pytest.fixture(scope="session")
def state_params(mariadb: MariaDB, state_database: str) -> ConnectionParams:
    return ConnectionParams(mariadb.host, mariadb.port, mariadb.user, mariadb.password, state_database)


@pytest.fixture(scope="session")
def pool_stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb: MariaDB, state_database: str, state_params: ConnectionParams
) -> Iterator[AirflowStack]:
    store = DeliveryStore(state_params)
    store.ensure_schema()
    store.close()
    stack = AirflowStack.prepare(tmp_path_factory.mktemp("airflow-stack"), extra_users={"scoped_alpha": "user"})
    stack.extra_env["AIRFLOW_CONN_CUPID_STATE"] = mariadb.uri(state_database)
    dsn = mariadb.go_dsn(state_database)
    write_config(stack, "alpha", dsn, CALLBACK_URL)
    write_config(stack, "beta", None, CALLBACK_URL)
    (stack.config_folder / "broken.json").write_text('{"src": {}}', encoding="utf-8")
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
