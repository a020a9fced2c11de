"""Connections the Airflow way: MySQL through MySqlHook's own settings (TLS included), callbacks through
HttpHook's semantics, HMAC keys that must exist.

Real parts only: the local MariaDB, a private MariaDB with TLS on (its own CA), loopback HTTP(S) servers
that record every request; Airflow connections come from ``AIRFLOW_CONN_*`` variables, as in deployments.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.connections import CupidConnectionError, callback_target, resolve_connection
from cupid_airflow.core.config import StateConnection, load_config, parse_json5
from cupid_airflow.core.delivery import Delivery, deliver
from cupid_airflow.core.sql import connect
from cupid_airflow.dag_factory import build_dags
from tests.support.dags_folder import CallbackReceiver, config_text, create_tables
from tests.support.tls import Pki, Recorder, make_pki, private_tls_mariadb

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import MariaDB

    from tests.support.mariadb_server import PrivateMariaDB

pytestmark = pytest.mark.integration


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> str:
    """An Airflow connection in the JSON form of ``AIRFLOW_CONN_<ID>``."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return conn_id


def new_id(label: str) -> str:
    return f"cupid_{label}_{secrets.token_hex(3)}"


def query(params: Any, sql: str) -> Any:
    conn = connect(params)
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        return cursor, cursor.fetchall()
    finally:
        conn.close()


# == MySQL: one path through MySqlHook ===================================================================


def test_mysql_connection_extras_reach_the_server_and_results_stay_raw_bytes(
    mariadb: MariaDB, fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init_command, charset and the cursor extra used to be dropped: only six fields were copied."""
    conn_id = set_connection(
        monkeypatch,
        new_id("extras"),
        conn_type="mysql",
        host=mariadb.host,
        port=mariadb.port,
        login=mariadb.user,
        password=mariadb.password,
        schema=fresh_database,
        extra={"init_command": "SET @@session.time_zone = '+05:30'", "charset": "latin1", "cursor": "sscursor"},
    )
    params = resolve_connection(StateConnection(conn_id=conn_id))

    cursor, rows = query(params, "SELECT @@session.time_zone, @@character_set_client, DATABASE(), 42, NULL")
    assert rows == ((b"+05:30", b"latin1", fresh_database.encode(), b"42", None),)
    assert type(cursor).__name__ == "Cursor"  # cupid's own cursors, not the extra's SSCursor
    assert params.database == fresh_database and params.user == mariadb.user


def test_a_dsn_takes_the_same_path(mariadb: MariaDB, fresh_database: str, tmp_path: Path) -> None:
    path = tmp_path / "dsn.json"
    path.write_text(config_text(src_dsn=mariadb.go_dsn(fresh_database), des_dsn=mariadb.go_dsn(fresh_database)))
    params = resolve_connection(load_config(path).src)
    _, rows = query(params, "SELECT DATABASE(), @@character_set_client")
    assert rows == ((fresh_database.encode(), b"utf8mb4"),)


def test_a_connection_without_a_login_is_a_named_config_error(
    mariadb: MariaDB, fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It silently became root before."""
    conn_id = set_connection(
        monkeypatch, new_id("nologin"), conn_type="mysql", host=mariadb.host, port=mariadb.port, schema=fresh_database
    )
    with pytest.raises(CupidConnectionError, match=f"connection '{conn_id}' has no login"):
        resolve_connection(StateConnection(conn_id=conn_id))


@pytest.mark.parametrize(
    ("extra", "named"),
    [({"client": "mysql-connector-python"}, "client"), ({"use_unicode": True}, "use_unicode")],
)
def test_extras_that_would_change_the_raw_bytes_are_refused(
    mariadb: MariaDB, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], named: str
) -> None:
    conn_id = set_connection(monkeypatch, new_id("refused"), conn_type="mysql", host="h", login="u", extra=extra)
    with pytest.raises(CupidConnectionError, match=f"extra '{named}' is not accepted"):
        resolve_connection(StateConnection(conn_id=conn_id))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_mariadb(pki: Pki) -> Iterator[PrivateMariaDB]:
    with private_tls_mariadb(pki) as server:
        # a user the server lets in over TLS only
        server.execute(
            "CREATE USER 'cupid_tls'@'%' IDENTIFIED BY 'tls-Pa55word' REQUIRE SSL",
            "GRANT ALL ON *.* TO 'cupid_tls'@'%'",
        )
        yield server


def tls_connection(
    monkeypatch: pytest.MonkeyPatch, server: PrivateMariaDB, database: str, extra: dict[str, Any]
) -> str:
    return set_connection(
        monkeypatch,
        new_id("tls"),
        conn_type="mysql",
        host="127.0.0.1",
        port=server.port,
        login="cupid_tls",
        password="tls-Pa55word",
        schema=database,
        extra=extra,
    )


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("ssl_ca", id="ssl-with-ca"),
        pytest.param({"ssl_mode": "REQUIRED"}, id="ssl_mode-required"),
        pytest.param("ssl_ca_verify_identity", id="ssl-ca-and-verify-identity"),
    ],
)
def test_tls_options_of_a_mysql_connection_are_used(
    tls_mariadb: PrivateMariaDB, pki: Pki, monkeypatch: pytest.MonkeyPatch, extra: Any
) -> None:
    """The TLS extras were ignored: a server that requires TLS refused cupid."""
    if extra == "ssl_ca":
        extra = {"ssl": {"ca": str(pki.ca)}}
    elif extra == "ssl_ca_verify_identity":
        extra = {"ssl": json.dumps({"ca": str(pki.ca)}), "ssl_mode": "VERIFY_IDENTITY"}  # ssl as a string, as in URIs
    conn_id = tls_connection(monkeypatch, tls_mariadb, "mysql", extra)

    _, rows = query(resolve_connection(StateConnection(conn_id=conn_id)), "SHOW STATUS LIKE 'Ssl_cipher'")
    assert rows[0][1], rows

    plain = tls_connection(monkeypatch, tls_mariadb, "mysql", {})
    import MySQLdb

    with pytest.raises(MySQLdb.OperationalError, match="Access denied"):
        query(resolve_connection(StateConnection(conn_id=plain)), "SELECT 1")


def test_a_sync_dag_run_compares_and_delivers_over_tls(
    tls_mariadb: PrivateMariaDB,
    pki: Pki,
    run_dag: Callable[..., Any],
    receiver: CallbackReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = f"tls_{secrets.token_hex(3)}"
    tls_mariadb.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    tls_mariadb.execute(
        "CREATE TABLE user (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, number VARCHAR(32) NOT NULL,"
        " name VARCHAR(64) NULL, avatar VARCHAR(255) NULL,"
        " update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,"
        " UNIQUE KEY uq_number (number), KEY ix_update (update_time))",
        "CREATE TABLE user_copy (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, number VARCHAR(32) NOT NULL,"
        " name VARCHAR(64) NULL, avatar VARCHAR(255) NULL, UNIQUE KEY uq_number (number))",
        "INSERT INTO user (number, name, avatar) VALUES"
        " ('n-001', 'ann', 'a.png'), ('n-002', 'b\u00f6b \U0001f600', NULL)",
        "INSERT INTO user_copy (number, name, avatar) VALUES ('n-001', 'ann', 'a.png')",
        database=database,
    )
    conn_id = tls_connection(monkeypatch, tls_mariadb, database, {"ssl": {"ca": str(pki.ca)}})
    stem = f"tls_{secrets.token_hex(3)}"
    path = tmp_path / f"{stem}.json"
    path.write_text(
        config_text(src_conn_id=conn_id, des_conn_id=conn_id, des_table="user_copy", callback_url=receiver.url)
    )
    dag_run = run_dag(build_dags(load_config(path))[f"cupid_{stem}_sync"])

    assert dag_run.get_task_instance("compare").state == "success"
    assert dag_run.get_task_instance("deliver").state == "success"
    [(_, _, _, raw)] = receiver.requests
    body = json.loads(raw)
    assert body["srcColumn"]["number"] == "n-002"
    assert body["srcColumn"]["name"] == "b\u00f6b \U0001f600"


# == HTTP: HttpHook's semantics for httpConnId ===========================================================


def callback_config(tmp_path: Path, **callback: Any) -> Any:
    """A loaded config whose one destination has this ``callbackNotification``."""
    stem = f"http_{secrets.token_hex(3)}"
    path = tmp_path / f"{stem}.json"
    text = parse_json5(config_text())
    text["des"][0]["callbackNotification"] = callback
    path.write_text(json.dumps(text))
    return load_config(path)


def send_one(config: Any) -> list[Any]:
    target = callback_target(config, config.des[0])
    return deliver(target, [Delivery(1, "key-1", b'{"type": 1}')])


def test_known_extras_are_options_and_the_rest_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every extra but verify/timeout used to become a request header; the connection beat the config."""
    with Recorder() as recorder:
        conn_id = set_connection(
            monkeypatch,
            new_id("http"),
            conn_type="http",
            host="127.0.0.1",
            port=recorder.port,
            login="app",
            password="basic-Pa55",
            extra={
                "X-Team": "blue",
                "X-Override": "from the connection",
                "timeout": 7,
                "verify": True,
                "allow_redirects": False,
                "max_redirects": 3,
                "trust_env": False,
            },
        )
        config = callback_config(
            tmp_path, httpConnId=conn_id, endpoint="/cupid/callback", headers={"X-Override": "from the config"}
        )
        target = callback_target(config, config.des[0])
        [result] = deliver(target, [Delivery(1, "key-1", b"{}")])

    assert result.ok, result.error
    [request] = recorder.requests
    assert request.target == "/cupid/callback"
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["x-team"] == "blue"
    assert headers["x-override"] == "from the config"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"app:basic-Pa55").decode()
    for option in ("timeout", "verify", "allow_redirects", "max_redirects", "trust_env"):
        assert option not in headers, option
    assert target.timeout_second == 7 and target.max_redirects == 3
    # a timeoutSecond written in the config wins over the connection's timeout
    explicit = callback_config(tmp_path, httpConnId=conn_id, timeoutSecond=2)
    assert callback_target(explicit, explicit.des[0]).timeout_second == 2


def test_proxies_with_credentials_are_used_not_sent_as_a_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxies extra went to the receiver as a header, credentials included."""
    with Recorder() as proxy:
        conn_id = set_connection(
            monkeypatch,
            new_id("proxy"),
            conn_type="http",
            host="http://callback.invalid",
            extra={"proxies": {"http": f"http://relay:relay-Pa55@127.0.0.1:{proxy.port}"}},
        )
        [result] = send_one(callback_config(tmp_path, httpConnId=conn_id, endpoint="/cupid/callback"))

    assert result.ok, result.error
    [request] = proxy.requests
    assert request.target == "http://callback.invalid/cupid/callback"  # absolute form: a proxy request
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"relay:relay-Pa55").decode()
    assert "proxies" not in headers and not any(
        "relay-Pa55" in v for k, v in headers.items() if k != "proxy-authorization"
    )


TLS_CASES = [
    ({}, False),  # verifies by default: the test CA is not trusted
    ({"verify": False}, True),
    ({"verify": "false"}, True),  # as text, as in a connection URI
    ({"verify_ssl": False}, True),
    ({"verify": "CA"}, True),  # a CA bundle path
]


def test_tls_verification_follows_the_connection(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_ssl: false was ignored, "false" as text meant true, and a CA bundle path was taken as plain
    'verify' with the system's CAs."""
    outcomes = []
    with Recorder(context=pki.server_context()) as recorder:
        for extra, _ in TLS_CASES:
            extra = {k: str(pki.ca) if v == "CA" else v for k, v in extra.items()}
            conn_id = set_connection(
                monkeypatch, new_id("tls"), conn_type="http", host=f"https://127.0.0.1:{recorder.port}", extra=extra
            )
            [result] = send_one(callback_config(tmp_path, httpConnId=conn_id, endpoint="/cupid/callback"))
            outcomes.append(result)
    assert [r.ok for r in outcomes] == [delivered for _, delivered in TLS_CASES], [r.error for r in outcomes]
    assert len(recorder.requests) == sum(delivered for _, delivered in TLS_CASES)
    assert outcomes[0].error and "TLS certificate of 127.0.0.1" in outcomes[0].error


def test_a_client_certificate_from_the_connection_is_presented(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Recorder(context=pki.server_context(require_client_cert=True)) as recorder:
        url = f"https://127.0.0.1:{recorder.port}"
        without = set_connection(
            monkeypatch, new_id("nocert"), conn_type="http", host=url, extra={"verify": str(pki.ca)}
        )
        [refused] = send_one(callback_config(tmp_path, httpConnId=without))
        with_cert = set_connection(
            monkeypatch,
            new_id("cert"),
            conn_type="http",
            host=url,
            extra={"verify": str(pki.ca), "cert": [str(pki.client_cert), str(pki.client_key)]},
        )
        [result] = send_one(callback_config(tmp_path, httpConnId=with_cert, endpoint="/cupid/callback"))

    assert not refused.ok
    assert result.ok, result.error
    [request] = recorder.requests
    assert request.client_cert is not None
    assert dict(x[0] for x in request.client_cert["subject"])["commonName"] == "cupid client"


def test_redirects_are_followed_only_when_the_connection_allows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Recorder(answers={"/old": (307, {"Location": "/new?token=Redirect5ecret"}, b"")}) as recorder:
        stay = set_connection(monkeypatch, new_id("stay"), conn_type="http", host="127.0.0.1", port=recorder.port)
        [refused] = send_one(callback_config(tmp_path, httpConnId=stay, endpoint="/old"))
        follow = set_connection(
            monkeypatch,
            new_id("follow"),
            conn_type="http",
            host="127.0.0.1",
            port=recorder.port,
            extra={"allow_redirects": True},
        )
        [followed] = send_one(callback_config(tmp_path, httpConnId=follow, endpoint="/old"))

    assert not refused.ok and refused.error
    assert "redirect 307 to /new?***" in refused.error and "Redirect5ecret" not in refused.error
    assert followed.ok, followed.error
    assert [r.target for r in recorder.requests] == ["/old", "/old", "/new?token=Redirect5ecret"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"extra": {"stream": True}}, "'stream' = True", id="stream"),
        pytest.param({"extra": {"check_response": False}}, "'check_response' = False", id="check_response"),
        pytest.param({"extra": {"srv_lookup": "true"}}, "'srv_lookup' = 'true'", id="srv_lookup"),
        pytest.param({"extra": {"X-Typo": {"a": 1}}}, "extra 'X-Typo' is not a header value", id="dict-value"),
        pytest.param({"extra": {"timeout": "soon"}}, "extra 'timeout' must be one number", id="timeout"),
        pytest.param({"extra": {"X-Inject": "a\r\nX-Evil: 1"}}, "line break", id="crlf-header"),
        pytest.param({"port": 99999}, "port is not a number from 1 to 65535", id="bad-port"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], message: str
) -> None:
    conn_id = set_connection(monkeypatch, new_id("bad"), **{"conn_type": "http", "host": "127.0.0.1", **fields})
    config = callback_config(tmp_path, httpConnId=conn_id)
    with pytest.raises(CupidConnectionError) as caught:
        callback_target(config, config.des[0])
    assert conn_id in str(caught.value) and message in str(caught.value)
    assert "X-Evil" not in str(caught.value)


# == HMAC keys ===========================================================================================


@pytest.mark.parametrize("password", [None, ""])
def test_an_hmac_connection_without_a_password_fails_the_task_and_sends_nothing(
    password: str | None,
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receiver: CallbackReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The callbacks went out unsigned (no password) or signed with an empty key."""
    create_tables(mariadb, fresh_database)
    conn_id = set_connection(
        monkeypatch, new_id("hmac"), conn_type="generic", **({"password": password} if password is not None else {})
    )
    stem = f"hmac_{secrets.token_hex(3)}"
    text = parse_json5(
        config_text(
            src_dsn=mariadb.go_dsn(fresh_database),
            des_dsn=mariadb.go_dsn(fresh_database),
            des_table="user_copy",
            callback_url=receiver.url,
        )
    )
    text["des"][0]["callbackNotification"]["hmacSecretConnId"] = conn_id
    text["retries"] = 2
    path = tmp_path / f"{stem}.json"
    path.write_text(json.dumps(text))

    dag_run = run_dag(build_dags(load_config(path))[f"cupid_{stem}_sync"])

    deliver_ti = dag_run.get_task_instance("deliver")
    assert deliver_ti.state == "failed"
    assert deliver_ti.try_number == 1  # a config error is not retried
    assert receiver.requests == []


@pytest.mark.parametrize("value", [None, ""])
def test_an_empty_or_missing_hmac_variable_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    name = f"cupid_hmac_{secrets.token_hex(3)}"
    if value is not None:
        monkeypatch.setenv(f"AIRFLOW_VAR_{name.upper()}", value)
    config = callback_config(tmp_path, url="http://127.0.0.1:1/cb", hmacSecretVariable=name)
    with pytest.raises(
        CupidConnectionError, match=f"hmacSecretVariable '{name}' is {'empty' if value == '' else 'not set'}"
    ):
        callback_target(config, config.des[0])


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as server:
        yield server
