"""Tables, items and routes for delivery tests: a source ``user`` and its copies, items planted in the store."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.config import load_config
from cupid_airflow.core.delivery import CallbackTarget
from cupid_airflow.core.detection import Detection
from cupid_airflow.core.dispatch import Route
from cupid_airflow.core.judge import JudgeSpec
from cupid_airflow.core.sql import ConnectionParams

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import MariaDB

    from cupid_airflow.core.store import DeliveryStore
from cupid_airflow.dag_factory import build_dags

COLUMNS = {"number": "number", "name": "name", "avatar": "avatar"}


def number_of(i: int) -> str:
    return f"n-{i:04d}"


def source_row(i: int) -> tuple[int, str, str, str | None]:
    """Source row ``i``: every fifth row has a NULL avatar."""
    return (i, number_of(i), f"name {i}", None if i % 5 == 0 else f"a{i}.png")


def make_tables(
    mariadb: MariaDB, database: str, count: int, present: dict[int, tuple[str | None, str | None]] | None = None
) -> set[str]:
    """Source ``user`` with ``count`` rows; destination ``user_copy`` holding only ``present``.

    ``present`` maps a source id to the (name, avatar) its destination row has. Returns the keys
    (``number`` values) of every source row that does not match its destination row.
    """
    present = present or {}
    conn = mariadb.connect(database)
    try:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE user (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, number VARCHAR(32) NOT NULL,"
            " name VARCHAR(64) NULL, avatar VARCHAR(255) NULL,"
            " update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,"
            " UNIQUE KEY uq_number (number), KEY ix_update (update_time))"
        )
        cur.execute(
            "CREATE TABLE user_copy (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, number VARCHAR(32) NOT NULL,"
            " name VARCHAR(64) NULL, avatar VARCHAR(255) NULL, UNIQUE KEY uq_number (number))"
        )
        rows = [source_row(i) for i in range(1, count + 1)]
        cur.executemany("INSERT INTO user (id, number, name, avatar) VALUES (%s, %s, %s, %s)", rows)
        if present:
            cur.executemany(
                "INSERT INTO user_copy (number, name, avatar) VALUES (%s, %s, %s)",
                [(number_of(i), name, avatar) for i, (name, avatar) in present.items()],
            )
    finally:
        conn.close()
    return {number_of(i) for i in range(1, count + 1) if i not in present or present[i] != source_row(i)[2:]}


def make_copy(mariadb: MariaDB, database: str, table: str) -> None:
    """Another empty destination table shaped like ``user_copy``."""
    conn = mariadb.connect(database)
    try:
        conn.cursor().execute(f"CREATE TABLE `{table}` LIKE user_copy")
    finally:
        conn.close()


def params_of(mariadb: MariaDB, database: str) -> ConnectionParams:
    return ConnectionParams(mariadb.host, mariadb.port, mariadb.user, mariadb.password, database)


def route(
    params: ConnectionParams,
    destination: str,
    url: str,
    *,
    table: str = "user_copy",
    config: str = "cfg",
    columns: dict[str, str] | None = None,
    **target: Any,
) -> Route:
    """A route to ``url`` for items of ``user`` copied into ``table``, judged against both tables."""
    spec = DestinationSpec(destination, table, "number", dict(columns or COLUMNS))
    return Route(
        destination,
        CallbackTarget(url=url, **target),
        JudgeSpec(config, destination, params, "user", "id", "number", params, spec),
    )


def plant_items(store: DeliveryStore, config: str, ids: range | list[int], destination: str = "des0") -> list[str]:
    """Record type-1 detections of source rows ``ids`` for ``destination``; return their keys."""
    store.ensure_schema()
    detections = [Detection(config, destination, number_of(i).encode(), 1, i) for i in ids]
    outcome = store.record(detections)
    assert outcome.new == len(detections), outcome
    return [number_of(i) for i in ids]


def write_config(
    tmp_path: Path,
    stem: str,
    dsn: str,
    url: str,
    *,
    retries: int = 1,
    worker_number: int = 3,
    callback: dict[str, Any] | None = None,
    destinations: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A cupid config (original JSON format, with a comment) watching new rows of ``user``."""
    des = destinations or [{"name": "copy0", "callbackNotification": {"url": url, **(callback or {})}}]
    document = {
        "workerNumber": worker_number,
        "failureJobRetrySecond": 1,
        "retries": retries,
        "src": {
            "dsn": dsn,
            "table": "user",
            "byColumn": "number",
            "idColumn": "id",
            "insert": True,
            "insertIntervalMillisecond": 5000,
            "update": False,
        },
        "des": [{"dsn": dsn, "table": "user_copy", "columns": COLUMNS, "byColumn": "number", **d} for d in des],
        **(extra or {}),
    }
    path = tmp_path / f"{stem}.json"
    path.write_text("// delivery guarantees test config\n" + json.dumps(document, indent=2), encoding="utf-8")
    return path


def new_stem(label: str) -> str:
    return f"dg_{label}_{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Row:
    id: int
    key: str
    status: str
    attempts: int
    last_http_status: int | None
    last_error: str | None
    idempotency_key: str
    destination: str


def store_rows(params: ConnectionParams | MariaDB, database: str, config: str) -> list[Row]:
    import MySQLdb

    if isinstance(params, ConnectionParams):
        conn = MySQLdb.connect(
            host=params.host,
            port=params.port,
            user=params.user,
            passwd=params.password,
            db=database,
            charset="utf8mb4",
            autocommit=True,
        )
    else:
        conn = params.connect(database)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT id, row_key, status, attempts, last_http_status, last_error, idempotency_key, destination "
            "FROM cupid_delivery WHERE config = %s ORDER BY id",
            (config,),
        )
        return [
            Row(
                int(r[0]),
                r[1].decode() if isinstance(r[1], bytes) else r[1],
                r[2],
                int(r[3]),
                None if r[4] is None else int(r[4]),
                r[5],
                r[6],
                r[7],
            )
            for r in cur.fetchall()
        ]
    finally:
        conn.close()


def statuses(rows: list[Row]) -> Counter[str]:
    return Counter(r.status for r in rows)


def dags_of(path: Path) -> tuple[Any, Any]:
    config = load_config(path)
    dags = build_dags(config)
    return dags[config.sync_dag_id], dags[config.failure_pool_dag_id]


def duration(ti: Any) -> float:
    """Seconds a task instance ran."""
    return (ti.end_date - ti.start_date).total_seconds()


def task_states(dag_run: Any) -> dict[str, str | None]:
    """States of the cupid tasks of a run (other tasks the DAG may have, like ``done``, are left out)."""
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances() if ti.task_id in CUPID_TASKS}


CUPID_TASKS = ("compare", "deliver", "drain")
