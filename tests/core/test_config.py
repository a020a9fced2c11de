"""Config files: the original format verbatim, comments, YAML, and one clear error per kind of mistake."""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

from cupid_airflow.core.config import CupidConfigError, CupidConfigWarning, load_config, parse_json5
from cupid_airflow.core.dsn import parse_dsn
from cupid_airflow.core.sql import quote_identifier, quote_table
from cupid_airflow.core.timeformat import php_to_mysql_format

DATA = Path(__file__).resolve().parent.parent / "data"
SHARED_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "cupid-go-testConfig.json"

GOOD = {
    "src": {"dsn": "u:s3cr3tpw@tcp(db1:3307)/app", "table": "user", "byColumn": "number"},
    "des": [
        {
            "dsn": "u:s3cr3tpw@tcp(db2:3306)/copy",
            "table": "user",
            "columns": {"number": "number", "name": "name"},
            "byColumn": "number",
            "callbackNotification": {"url": "http://app/cb"},
        }
    ],
}


def write(tmp_path: Path, data: object, name: str = "user.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def error_of(tmp_path: Path, data: object, name: str = "user.json") -> str:
    with pytest.raises(CupidConfigError) as caught:
        load_config(write(tmp_path, data, name))
    return str(caught.value)


def test_original_sample_loads_verbatim() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(DATA / "cupid-go-testConfig.json")
    assert config.name == "cupid-go-testConfig"
    assert config.src.table == "user" and config.src.by_column == "number"
    assert config.src.update_time_formate == "Y-m-d H:i:s"
    assert config.src.connection_params().database == "db"
    assert config.des[0].connection_params().database == "db2"
    assert config.des[0].columns == {"number": "number", "name": "name", "avatar": "avatar"}
    # the scheme-less callback URL is taken as http:// and reported
    assert config.des[0].callback_notification.url == "http://127.0.0.1:20000/test/callback"
    messages = [str(w.message) for w in caught if issubclass(w.category, CupidConfigWarning)]
    assert any("no scheme" in m for m in messages)
    assert any("PushBear" in m and "notify" in m for m in messages)
    assert config.worker_number == 3 and config.failure_job_retry_second == 10
    assert config.schedule == timedelta(seconds=2)


def test_test_copy_of_the_sample_is_the_shared_file() -> None:
    if SHARED_SAMPLE.exists():  # the reference ships beside the repo on developer machines and in CI
        assert (DATA / "cupid-go-testConfig.json").read_bytes() == SHARED_SAMPLE.read_bytes()
    assert json.loads((DATA / "cupid-go-testConfig.json").read_text())["src"]["table"] == "user"


def test_comments_after_values_and_block_comments(tmp_path: Path) -> None:
    text = """
    // the user table
    {
      "workerNumber": 5, // five workers
      /* a block
         comment */
      "src": {"dsn": "u:p@tcp(h:3306)/db", "table": "user", "byColumn": "number", /* x */ "update": false},
      "des": [{"dsn": "u:p@tcp(h:3306)/db2", "table": "user", "columns": {"number": "number"},
               "byColumn": "number", "callbackNotification": {"url": "http://h/a//b"}},],  // trailing comma
    }
    """
    config = load_config(write(tmp_path, text))
    assert config.worker_number == 5
    assert config.des[0].callback_notification.url == "http://h/a//b"  # // inside a string is not a comment


def test_comments_keep_escaped_quotes() -> None:
    assert parse_json5('{"a": "x\\" // y"} // z') == {"a": 'x" // y'}


def test_yaml_with_the_same_keys(tmp_path: Path) -> None:
    text = """
src:
  connId: cupid_source
  table: user
  byColumn: number
  update: true
  updateColumn: update_time
  updateIntervalMillisecond: 1500
des:
  - connId: cupid_copy
    name: cache
    table: user_copy
    columns: {number: number, name: nick}
    byColumn: number
    callbackNotification: {httpConnId: app_callback, endpoint: /cupid}
"""
    config = load_config(write(tmp_path, text, "orders.yaml"))
    assert config.sync_dag_id == "cupid_orders_sync" and config.failure_pool_dag_id == "cupid_orders_failure_pool"
    assert config.destination_names == ["cache"]
    assert config.schedule == timedelta(milliseconds=1500)


def test_snake_case_keys_are_accepted(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["src"]["by_column"] = data["src"].pop("byColumn")
    data["worker_number"] = 4
    config = load_config(write(tmp_path, data))
    assert config.src.by_column == "number" and config.worker_number == 4


def test_missing_key_names_file_and_path(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    del data["des"][0]["byColumn"]
    message = error_of(tmp_path, data)
    assert str(tmp_path / "user.json") in message
    assert "des[0].byColumn: required key is missing" in message


def test_wrong_type_names_value(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["workerNumber"] = "many"
    message = error_of(tmp_path, data)
    assert "workerNumber: 'many' is not accepted" in message and "integer" in message


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["des"][0]["byColum"] = "number"
    message = error_of(tmp_path, data)
    assert "des[0].byColum: unknown key" in message
    assert "did you mean 'byColumn'" in message


def test_bad_identifier_cannot_inject_sql(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["des"][0]["byColumn"] = "number`; DROP TABLE user; --"
    message = error_of(tmp_path, data)
    assert "des[0].byColumn" in message and "not a valid column name" in message
    data = json.loads(json.dumps(GOOD))
    data["src"]["table"] = "user where 1=1"
    assert "src.table" in error_of(tmp_path, data)
    data = json.loads(json.dumps(GOOD))
    data["des"][0]["columns"] = {"name); --": "name"}
    assert "des[0].columns" in error_of(tmp_path, data)
    assert quote_identifier("update_time") == "`update_time`"
    assert quote_table("db2.user") == "`db2`.`user`"
    with pytest.raises(ValueError):
        quote_identifier("a`b")


def test_bad_dsn_is_named_without_its_password(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["src"]["dsn"] = "u:hunter2@tcp(db1:notaport)/app"
    message = error_of(tmp_path, data)
    assert "src" in message and "port 'notaport'" in message
    assert "hunter2" not in message
    data["src"]["dsn"] = "u:hunter2@http(db1)/app"
    message = error_of(tmp_path, data)
    assert "network 'http' is not supported" in message and "hunter2" not in message


def test_bad_url(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["des"][0]["callbackNotification"]["url"] = "ftp://files/cb"
    message = error_of(tmp_path, data)
    assert "des[0].callbackNotification.url" in message and "scheme 'ftp' is not accepted" in message


def test_connection_must_be_given_once(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["src"]["connId"] = "cupid_source"
    assert "either connId or dsn, not both" in error_of(tmp_path, data)


def test_broken_json_names_the_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, '{"src": ')
    assert "user.json" in message and "not valid JSON" in message


def test_password_never_in_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert "s3cr3tpw" not in repr(config)
    assert "s3cr3tpw" not in repr(config.src.connection_params())
    assert "s3cr3tpw" not in config.src.describe()


def test_go_and_pdo_dsns() -> None:
    go = parse_dsn("app:p@ss@word@tcp(10.0.0.5:3307)/shop?charset=utf8&parseTime=true")
    assert (go.user, go.password, go.host, go.port, go.database) == ("app", "p@ss@word", "10.0.0.5", 3307, "shop")
    pdo = parse_dsn("mysql:dbname=shop;host=db;port=3308", "app", "pw")
    assert (pdo.user, pdo.password, pdo.host, pdo.port, pdo.database) == ("app", "pw", "db", 3308, "shop")
    sock = parse_dsn("app:pw@unix(/run/mysqld/mysqld.sock)/shop")
    assert sock.unix_socket == "/run/mysqld/mysqld.sock"


def test_pdo_dsn_in_config_with_user_and_password(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["src"] = {
        "dsn": "mysql:dbname=app;host=db1;port=3306",
        "user": "u",
        "password": "pw",
        "table": "user",
        "byColumn": "number",
    }
    config = load_config(write(tmp_path, data))
    assert config.src.connection_params().password == "pw"


def test_update_time_format_is_translated(tmp_path: Path) -> None:
    assert php_to_mysql_format("Y-m-d H:i:s") == "%Y-%m-%d %H:%i:%s"
    assert php_to_mysql_format("d/m/Y H:i") == "%d/%m/%Y %H:%i"
    data = json.loads(json.dumps(GOOD))
    data["src"].update(update=True, updateColumn="updated", updateTimeFormate="Y-m-d Q")
    message = error_of(tmp_path, data)
    assert "src.updateTimeFormate" in message and "'Q' is not supported" in message


def test_update_needs_a_column(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["src"]["update"] = True
    assert "updateColumn is required" in error_of(tmp_path, data)


# -- JSON5 parsing, header and URL checks, secrets in messages (issue 12) --------------------------------


def with_callback(**callback: object) -> dict[str, object]:
    data = json.loads(json.dumps(GOOD))
    data["des"][0]["callbackNotification"] = callback
    return data


def test_a_comma_before_a_closing_brace_inside_a_string_is_kept(tmp_path: Path) -> None:
    """The old comment stripper's trailing-comma rule ran inside strings: "a,}" became "a}"."""
    text = json.dumps(with_callback(url="http://app/cb?x=1,}", headers={"X-Tag": "a,}", "X-List": "[b, ]"}))
    config = load_config(write(tmp_path, "// with a comment\n" + text.replace("}}]", "}},],") + "\n"))
    callback = config.des[0].callback_notification
    assert callback.headers == {"X-Tag": "a,}", "X-List": "[b, ]"}
    assert callback.url == "http://app/cb?x=1,}"


def test_json5_errors_name_line_and_column_but_not_the_text(tmp_path: Path) -> None:
    message = error_of(tmp_path, '{\n  "src": {"dsn": "u:hunter2@tcp(h)/d"}\n  "des": []\n}')
    assert "not valid JSON (comments allowed)" in message and "line 3, column 3" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_a_header_value_with_a_line_break_is_refused_at_load(tmp_path: Path, value: str) -> None:
    message = error_of(tmp_path, with_callback(url="http://app/cb", headers={"Authorization": value}))
    assert "des[0].callbackNotification.headers" in message and "Authorization" in message
    assert "line break or NUL" in message
    assert "Injected" not in message


def test_a_header_name_that_is_not_a_token_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, with_callback(url="http://app/cb", headers={"Bad Header": "x"}))
    assert "'Bad Header' is not a valid header name" in message


def test_a_header_value_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    message = error_of(tmp_path, with_callback(url="http://app/cb", headers={"X-Api-Key": 912873465}))
    assert "headers" in message and "912873465" not in message


def test_a_callback_url_with_a_bad_port_is_a_config_error_without_its_token(tmp_path: Path) -> None:
    message = error_of(tmp_path, with_callback(url="http://127.0.0.1:99999/cb?token=PlantedT0ken"))
    assert "des[0].callbackNotification.url" in message and "port is not a number from 1 to 65535" in message
    assert "PlantedT0ken" not in message
    message = error_of(tmp_path, with_callback(url="ftp://files/cb?token=PlantedT0ken"))
    assert "scheme 'ftp' is not accepted" in message and "PlantedT0ken" not in message


def test_the_no_scheme_warning_shows_no_token(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(write(tmp_path, with_callback(url="127.0.0.1:20000/cb?token=PlantedT0ken")))
    messages = [str(w.message) for w in caught]
    assert any("has no scheme" in m for m in messages)
    assert not any("PlantedT0ken" in m for m in messages)
    assert config.des[0].callback_notification.url == "http://127.0.0.1:20000/cb?token=PlantedT0ken"
    assert "PlantedT0ken" not in repr(config)


def test_webhooks_take_a_url_with_a_scheme_or_a_connection(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["notify"] = {"webhooks": [{"url": "hooks.slack.com/services/T000/B000/PlantedT0ken", "format": "slack"}]}
    message = error_of(tmp_path, data)
    assert "notify.webhooks[0].url" in message and "scheme" in message and "PlantedT0ken" not in message
    data["notify"] = {"webhooks": [{"url": "https://h/x", "connId": "chat"}]}
    assert "exactly one of url or connId" in error_of(tmp_path, data)
    data["notify"] = {"webhooks": [{"connId": "chat", "format": "slack", "signSecretVariable": "v"}]}
    assert "signSecretVariable signs DingTalk messages" in error_of(tmp_path, data)
    data["notify"] = {"webhooks": [{"connId": "chat", "format": "dingtalk", "signSecretVariable": "v"}]}
    assert load_config(write(tmp_path, data)).notify.webhooks[0].describe() == "dingtalk webhook (connection 'chat')"


@pytest.mark.parametrize("dsn", ["@tcp(db:3306)/app", ":pw@tcp(db:3306)/app", "tcp(db:3306)/app"])
def test_a_go_dsn_without_a_user_is_a_config_error(tmp_path: Path, dsn: str) -> None:
    data = json.loads(json.dumps(GOOD))
    data["src"]["dsn"] = dsn
    assert "names no user" in error_of(tmp_path, data)


def test_a_pdo_dsn_needs_a_user(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["src"] = {"dsn": "mysql:dbname=app;host=db1", "password": "pw", "table": "user", "byColumn": "number"}
    assert "needs a 'user' key" in error_of(tmp_path, data)


def test_config_carries_the_hash_of_its_file(tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path, GOOD)
    assert load_config(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "sha256: unknown key" in error_of(tmp_path, {**GOOD, "sha256": "x"})


def test_secrets_of_a_config(tmp_path: Path) -> None:
    data = with_callback(
        url="http://app/cb?token=T0kenT0ken", headers={"Authorization": "Bearer B3arerB3arer", "X-Team": "ops"}
    )
    data["notify"] = {
        "webhooks": [{"url": "https://hooks.slack.com/services/T000/B000/Sl4ckSl4ckSl4ck", "format": "slack"}],
        "notifiers": [{"classPath": "x.Y", "kwargs": {"api_token": "N0tifierN0tifier", "channel": "#ops"}}],
    }
    secrets = load_config(write(tmp_path, data)).secrets()
    for planted in ("s3cr3tpw", "T0kenT0ken", "Bearer B3arerB3arer", "Sl4ckSl4ckSl4ck", "N0tifierN0tifier"):
        assert planted in secrets
    assert "ops" not in secrets and "#ops" not in secrets


# A persisted format: the state database labels an unnamed destination by this fingerprint (cupid_destination).
# Changing it relabels every unnamed destination of every store: a migration (see docs/architecture.md).
def test_destination_fingerprints_known_values(tmp_path: Path) -> None:
    twin = {**GOOD["des"][0], "callbackNotification": {"url": "http://app/other"}}
    named = {**GOOD["des"][0], "name": "copy"}
    config = load_config(write(tmp_path, {**GOOD, "des": [GOOD["des"][0], twin, named]}))
    assert config.destination_keys == [
        # sha1("dsn:db2:3306/copy|user|number|<occurrence among destinations at that place>")
        (None, "651be91a6d1a7d353dda4675bde71840dfc291ea"),
        (None, "a1d1e1ec7628be28838e3ce3fe1196b187043a86"),
        ("copy", "c6f7aeda176ce19e426c647f863f0e6656ca66d2"),
    ]
