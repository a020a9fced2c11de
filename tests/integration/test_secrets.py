"""Planted secrets never reach task logs, XCom, the delivery store or alerts, even in failing runs.

One failing sync run through ``airflow dags test`` (a real subprocess; it writes task logs to its own
stdout, and the log folder is scanned too) with a secret in every place a config can hold one: a database
password in the DSNs, a callback token in a scheme-less URL's query, an ``Authorization`` header and an
HMAC key that a broken receiver echoes back, a Slack webhook token in a URL path, a DingTalk token in an
Airflow connection (its stand-in echoes the request back in ``errmsg``), and a notifier's API token that
its error repeats.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.dags_folder import PARSING_CONTEXT_ENV, create_tables, make_dags_folder
from tests.support.receivers import free_port
from tests.support.tls import Recorder, Request

if TYPE_CHECKING:
    from conftest import MariaDB

pytestmark = pytest.mark.integration


class LeakyNotifier:
    """An Airflow-style notifier whose error repeats its own API token."""

    def __init__(self, api_token: str) -> None:
        self.api_token = api_token

    def __call__(self, context: Any) -> None:
        raise RuntimeError(f"the chat service refused api_token={self.api_token}")


def echo(request: Request) -> tuple[int, dict[str, str], bytes]:
    """A 500 whose body repeats the request line and headers, as a debug page does."""
    text = f"POST {request.target}\n" + "\n".join(f"{k}: {v}" for k, v in request.headers.items())
    return 500, {"Content-Type": "text/plain"}, text.encode()


def ding_echo(request: Request) -> tuple[int, dict[str, str], bytes]:
    """DingTalk refusing inside a 200, its errmsg repeating the URL it was called at."""
    return (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"errcode": 300001, "errmsg": f"token invalid: {request.target}"}).encode(),
    )


def xcom_text(dag_id: str) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(XComModel).where(XComModel.dag_id == dag_id)).all()
        return "\n".join(json.dumps(XComModel.deserialize_value(row), default=str) for row in rows)


def store_text(mariadb: MariaDB, database: str) -> str:
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT * FROM cupid_delivery")
        return "\n".join(repr(row) for row in cursor.fetchall())
    finally:
        conn.close()


def logs_text(home: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file())


def test_a_failing_run_shows_no_planted_secret(
    airflow_db: Path, mariadb: MariaDB, fresh_database: str, tmp_path: Path
) -> None:
    tag = secrets.token_hex(4)
    planted = {
        "database password": f"Db-Pa55-{tag}",
        "callback token": f"Cb-T0ken-{tag}",
        "echoed callback token": f"Echo-T0ken-{tag}",
        "authorization header": f"Auth-Bearer-{tag}",
        "hmac key": f"Hmac-Key-{tag}",
        "slack token": f"Sl4ckT0ken{tag}",
        "dingtalk token": f"Ding-T0ken-{tag}",
        "notifier token": f"Notif-T0ken-{tag}",
    }
    user = f"cupid_s_{tag}"
    root = mariadb.connect()
    root.cursor().execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{planted['database password']}'")
    root.cursor().execute(f"GRANT ALL ON `{fresh_database}`.* TO '{user}'@'%'")
    try:
        create_tables(mariadb, fresh_database)
        dsn = f"{user}:{planted['database password']}@tcp({mariadb.host}:{mariadb.port})/{fresh_database}"
        slack_path = f"/services/T0PLANT00/B0PLANT00/{planted['slack token']}"
        answers = {slack_path: (404, {}, b"no_service")}
        with (
            Recorder(respond=echo) as receiver,
            Recorder(answers=answers) as slack,
            Recorder(respond=ding_echo) as dingtalk,
        ):
            stem = f"sec_{tag}"
            config = {
                "retries": 0,
                "failureJobRetrySecond": 1,
                "src": {"dsn": dsn, "table": "user", "byColumn": "number", "idColumn": "id"},
                "des": [
                    {
                        "name": "closed",
                        "dsn": dsn,
                        "table": "user_copy",
                        "columns": {"number": "number", "name": "name"},
                        "byColumn": "number",
                        # the original's scheme-less form: a config warning used to print it whole
                        "callbackNotification": {
                            "url": f"127.0.0.1:{free_port()}/cupid/callback?token={planted['callback token']}"
                        },
                    },
                    {
                        "name": "echo",
                        "dsn": dsn,
                        "table": "user_copy",
                        "columns": {"number": "number", "name": "name"},
                        "byColumn": "number",
                        "callbackNotification": {
                            "url": f"{receiver.url()}?token={planted['echoed callback token']}",
                            "headers": {"Authorization": f"Bearer {planted['authorization header']}"},
                            "hmacSecretVariable": f"cupid_hmac_{tag}",
                        },
                    },
                ],
                "notify": {
                    "webhooks": [
                        {"url": slack.url(slack_path), "format": "slack", "timeoutSecond": 2},
                        {"connId": f"cupid_ding_{tag}", "format": "dingtalk", "timeoutSecond": 2},
                    ],
                    "notifiers": [
                        {"classPath": f"{__name__}.LeakyNotifier", "kwargs": {"api_token": planted["notifier token"]}}
                    ],
                },
            }
            folder = make_dags_folder(tmp_path, {f"{stem}.json": json.dumps(config)})
            env = {
                **os.environ,
                "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
                "PYTHONPATH": os.pathsep.join(
                    [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
                ),
                f"AIRFLOW_VAR_CUPID_HMAC_{tag.upper()}": planted["hmac key"],
                f"AIRFLOW_CONN_CUPID_DING_{tag.upper()}": json.dumps(
                    {
                        "conn_type": "http",
                        "host": "127.0.0.1",
                        "port": dingtalk.port,
                        "schema": "http",
                        "password": planted["dingtalk token"],
                    }
                ),
            }
            for name in ("CUPID_CONFIG_FOLDER", "AIRFLOW__CUPID__CONFIG_FOLDER", PARSING_CONTEXT_ENV):
                env.pop(name, None)
            result = subprocess.run(
                [str(Path(sys.executable).with_name("airflow")), "dags", "test", f"cupid_{stem}_sync"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            received = list(receiver.requests), list(slack.requests), list(dingtalk.requests)
    finally:
        root.cursor().execute(f"DROP USER IF EXISTS '{user}'@'%'")
        root.close()

    output = result.stdout + result.stderr
    # it really ran and failed where the secrets are: deliveries failed, alerts were refused
    assert "state=failed" in output, output[-3000:]
    echo_requests, slack_requests, ding_requests = received
    assert echo_requests and echo_requests[0].headers["Authorization"] == f"Bearer {planted['authorization header']}"
    assert echo_requests[0].headers.get("X-Cupid-Signature", "").startswith("sha256=")
    assert slack_requests and ding_requests
    assert "has no scheme" in output and "alert parked not sent" in output
    store = store_text(mariadb, fresh_database)
    assert "parked" in store and "HTTP 500" in store

    places = {
        "airflow dags test output": output,
        "task log files": logs_text(airflow_db),
        "XCom": xcom_text(f"cupid_{stem}_sync"),
        "delivery store": store,
        "alerts": "\n".join(r.body.decode(errors="replace") for r in (*slack_requests, *ding_requests)),
    }
    leaks = [(what, where) for what, secret in planted.items() for where, text in places.items() if secret in text]
    assert leaks == [], [
        (what, where, [line for line in places[where].splitlines() if planted[what] in line][:3])
        for what, where in leaks
    ]
