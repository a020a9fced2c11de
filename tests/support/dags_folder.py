"""Test support: dags folders holding the repo's DAG files and cupid configs, the usual source and
destination tables, and a loopback receiver that answers 204 and records every request."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import MariaDB

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = ("cupid_dags.py", "cupid_config_errors.py")
PARSING_CONTEXT_ENV = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"  # airflow/sdk/definitions/context.py
UNREACHABLE_DSN = "root:s3cret-Pa55@tcp(127.0.0.1:1)/nowhere?charset=utf8mb4"
# TEST-NET-1 (RFC 5737): never routed, so a connection attempt would hang until its timeout.
BLACKHOLE_DSN = "cupid:bl4ckh0le-pw@tcp(192.0.2.1:3306)/nowhere?charset=utf8mb4"


def config_text(
    *,
    src_dsn: str | None = UNREACHABLE_DSN,
    src_conn_id: str | None = None,
    des_dsn: str | None = UNREACHABLE_DSN,
    des_conn_id: str | None = None,
    table: str = "user",
    des_table: str = "user",
    callback_url: str = "http://127.0.0.1:1/cupid/callback",
    destinations: int = 1,
    extra: dict[str, Any] | None = None,
    src_extra: dict[str, Any] | None = None,
) -> str:
    """A cupid config in the original JSON format, with the comments users write."""
    src: dict[str, Any] = {
        "table": table,
        "byColumn": "number",
        "idColumn": "id",
        "insert": True,
        "insertIntervalMillisecond": 5000,
        "update": True,
        "updateColumn": "update_time",
        "updateIntervalMillisecond": 5000,
        "updateScanSecond": 10,
        "updateTimeFormate": "Y-m-d H:i:s",
        **({"dsn": src_dsn} if src_conn_id is None else {"connId": src_conn_id}),
        **(src_extra or {}),
    }
    des = [
        {
            "name": f"copy{i}",
            **({"dsn": des_dsn} if des_conn_id is None else {"connId": des_conn_id}),
            "table": des_table,
            "columns": {"number": "number", "name": "name", "avatar": "avatar"},
            "byColumn": "number",
            "callbackNotification": {"url": callback_url, "timeoutSecond": 5},
        }
        for i in range(destinations)
    ]
    body = json.dumps(
        {"workerNumber": 2, "failureJobRetrySecond": 10, **(extra or {}), "src": src, "des": des}, indent=2
    )
    return (
        "// a cupid config, as users write them: comments are allowed\n"
        + body.replace('"workerNumber": 2,', '"workerNumber": 2,   // concurrent callbacks', 1)
        + "\n/* end of config */\n"
    )


def make_dags_folder(root: Path, configs: dict[str, str]) -> Path:
    """A dags folder holding copies of the repo's DAG files and ``cupid/<name>`` configs."""
    folder = root / "dags"
    (folder / "cupid").mkdir(parents=True)
    for name in DAG_FILES:
        shutil.copy(REPO / "dags" / name, folder / name)
    for name, text in configs.items():
        (folder / "cupid" / name).write_text(text, encoding="utf-8")
    return folder


def dagbag(folder: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


class CallbackReceiver:
    """A loopback HTTP server that answers 204 and records every request body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(("POST", self.path, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/cupid/callback"

    def __enter__(self) -> CallbackReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


SOURCE_ROWS = [
    (1, "n-001", "ann", "a.png"),
    (2, "n-002", "bob", None),
    (3, "n-003", "cé", "c.png"),
]


def create_tables(mariadb: MariaDB, database: str, missing_number: str = "n-002") -> None:
    """Source ``user`` and destination ``user_copy``; the destination lacks one row."""
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
            "CREATE TABLE user_copy (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,"
            " number VARCHAR(32) NOT NULL, name VARCHAR(64) NULL, avatar VARCHAR(255) NULL,"
            " UNIQUE KEY uq_number (number))"
        )
        cur.executemany("INSERT INTO user (id, number, name, avatar) VALUES (%s, %s, %s, %s)", SOURCE_ROWS)
        cur.executemany(
            "INSERT INTO user_copy (number, name, avatar) VALUES (%s, %s, %s)",
            [row[1:] for row in SOURCE_ROWS if row[1] != missing_number],
        )
    finally:
        conn.close()
