"""Alerts as Airflow notifiers: chat webhooks that refuse inside a 200, tokens from connections, DingTalk
signing, bounded calls, and the notifiers used directly as Airflow callbacks.

The chat platforms are loopback stand-ins that answer as the real ones do (``errcode``/``code`` in a 200).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cupid_airflow.core.config import load_config, parse_json5
from cupid_airflow.get_provider_info import get_provider_info
from cupid_airflow.notify import TaskFailureAlert, send_alert
from tests.support.dags_folder import config_text
from tests.support.tls import Recorder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

OK = {"errcode": 0, "errmsg": "ok"}


def config_with(tmp_path: Path, webhooks: list[dict[str, Any]] = (), notifiers: list[dict[str, Any]] = ()) -> Any:  # type: ignore[assignment]
    document = parse_json5(config_text())
    document["notify"] = {"webhooks": list(webhooks), "notifiers": list(notifiers)}
    path = tmp_path / f"alerts_{secrets.token_hex(3)}.json"
    path.write_text(json.dumps(document))
    return load_config(path)


def answer(body: dict[str, Any], status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def set_connection(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> str:
    conn_id = f"cupid_chat_{secrets.token_hex(3)}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", **fields}))
    return conn_id


def dingtalk_text(body: Any) -> str:
    return str(body["text"]["content"])


def feishu_text(body: Any) -> str:
    return str(body["content"]["text"])


@pytest.mark.parametrize(
    ("fmt", "path", "accepted", "refusal", "reported", "text_of"),
    [
        (
            "dingtalk",
            "/robot/send",
            OK,
            {"errcode": 310000, "errmsg": "keywords not in content"},
            "errcode 310000: keywords not in content",
            dingtalk_text,
        ),
        (
            "wecom",
            "/cgi-bin/webhook/send",
            OK,
            {"errcode": 93000, "errmsg": "invalid webhook url"},
            "errcode 93000",
            dingtalk_text,
        ),
        (
            "feishu",
            "/open-apis/bot/v2/hook/x",
            {"code": 0, "msg": "success"},
            {"code": 19021, "msg": "sign match fail"},
            "code 19021: sign match fail",
            feishu_text,
        ),
        (
            "feishu",
            "/open-apis/bot/v2/hook/x",
            {"StatusCode": 0, "StatusMessage": "success"},
            {"StatusCode": 9499, "StatusMessage": "Bad Request"},
            "code 9499",
            feishu_text,
        ),
        ("dingtalk", "/robot/send", OK, {"message": "not the platform's answer"}, "has no errcode", dingtalk_text),
    ],
)
def test_a_refusal_inside_a_200_is_a_failed_alert(
    tmp_path: Path,
    fmt: str,
    path: str,
    accepted: dict[str, Any],
    refusal: dict[str, Any],
    reported: str,
    text_of: Callable[[Any], str],
) -> None:
    """DingTalk, WeCom and Feishu answer 200 with a non-zero errcode when they refuse: it counted as sent."""
    with Recorder(answers={path: answer(accepted)}) as chat:
        config = config_with(tmp_path, [{"url": chat.url(path), "format": fmt, "timeoutSecond": 5}])
        assert send_alert(config, "parked", "3 callbacks parked", {"parked": 3}) == []
        chat.answers[path] = answer(refusal)
        errors = send_alert(config, "parked", "3 callbacks parked", {"parked": 3})
    assert len(errors) == 1 and reported in errors[0], errors
    assert [text_of(json.loads(r.body)) for r in chat.requests] == [f"[cupid {config.name}] 3 callbacks parked"] * 2


@pytest.mark.parametrize(
    ("fmt", "endpoint", "target"),
    [
        ("dingtalk", None, "/robot/send?access_token=Ch4tT0kenCh4t"),
        ("wecom", None, "/cgi-bin/webhook/send?key=Ch4tT0kenCh4t"),
        ("feishu", None, "/open-apis/bot/v2/hook/Ch4tT0kenCh4t"),
        ("slack", None, "/services/Ch4tT0kenCh4t"),
        ("json", "/alerts/in", "/alerts/in"),
    ],
)
def test_a_webhook_token_comes_from_an_airflow_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, endpoint: str | None, target: str
) -> None:
    accepted = answer({"code": 0, "msg": "success"} if fmt == "feishu" else OK)
    with Recorder(answers={target.split("?")[0]: accepted}) as chat:
        conn_id = set_connection(monkeypatch, host="127.0.0.1", port=chat.port, schema="http", password="Ch4tT0kenCh4t")
        webhook: dict[str, Any] = {"connId": conn_id, "format": fmt}
        if endpoint:
            webhook["endpoint"] = endpoint
        errors = send_alert(config_with(tmp_path, [webhook]), "dead", "2 items dead", {})
    assert errors == []
    [request] = chat.requests
    assert request.target == target
    if fmt == "json":
        assert request.headers["Authorization"] == "Bearer Ch4tT0kenCh4t"


def test_a_connection_without_the_token_is_one_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_connection(monkeypatch, host="127.0.0.1", port=1)
    errors = send_alert(config_with(tmp_path, [{"connId": conn_id, "format": "dingtalk"}]), "dead", "x", {})
    assert len(errors) == 1 and f"connection '{conn_id}'" in errors[0] and "token as its password" in errors[0]


def signature_ok(target: str, secret: str) -> bool:
    query = parse_qs(urlsplit(target).query)
    timestamp, sign = query["timestamp"][0], query["sign"][0]
    expected = base64.b64encode(hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest())
    return sign == expected.decode()


@pytest.mark.parametrize("source", ["variable", "connection"])
def test_dingtalk_messages_are_signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    secret = "SEC" + secrets.token_hex(16)
    with Recorder(answers={"/robot/send": answer(OK)}) as chat:
        if source == "variable":
            variable = f"cupid_ding_{secrets.token_hex(3)}"
            monkeypatch.setenv(f"AIRFLOW_VAR_{variable.upper()}", secret)
            webhook = {
                "url": chat.url("/robot/send?access_token=t0ken"),
                "format": "dingtalk",
                "signSecretVariable": variable,
            }
        else:
            conn_id = set_connection(
                monkeypatch,
                host="127.0.0.1",
                port=chat.port,
                schema="http",
                password="t0ken",
                extra={"sign_secret": secret},
            )
            webhook = {"connId": conn_id, "format": "dingtalk"}
        assert send_alert(config_with(tmp_path, [webhook]), "dead", "x", {}) == []
    [request] = chat.requests
    assert request.target.startswith("/robot/send?access_token=t0ken&timestamp=")
    assert signature_ok(request.target, secret)
    assert not signature_ok(request.target, secret + "x")


def test_a_refused_webhook_error_and_log_show_no_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The alert error printed the whole webhook URL, Slack's token path included."""
    token_path = "/services/T0AB12CD3/B0AB12CD3/Xy9Zab12Cd34Ef56Gh78Ij90"
    with Recorder(answers={token_path: (404, {}, b"no_service")}) as chat:
        config = config_with(tmp_path, [{"url": chat.url(token_path), "format": "slack"}])
        with caplog.at_level(logging.WARNING):
            errors = send_alert(config, "parked", "x", {})
    assert len(errors) == 1 and "HTTP 404: no_service" in errors[0]
    assert f"127.0.0.1:{chat.port}/services/***/***/***" in errors[0]
    for token in ("T0AB12CD3", "B0AB12CD3", "Xy9Zab12Cd34Ef56Gh78Ij90"):
        assert token not in errors[0] and token not in caplog.text


RELEASE = threading.Event()


class StuckNotifier:
    """An Airflow-style notifier that never returns (until the test releases it)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __call__(self, context: Any) -> None:
        RELEASE.wait()


@pytest.fixture
def release_stuck() -> Iterator[None]:
    RELEASE.clear()
    yield
    RELEASE.set()


def test_any_airflow_notifier_is_bounded_by_its_timeout(tmp_path: Path, release_stuck: None) -> None:
    """A notifier that hangs used to hold the task (and its delivery) forever."""
    with Recorder(answers={"/robot/send": answer(OK)}) as chat:
        config = config_with(
            tmp_path,
            webhooks=[{"url": chat.url("/robot/send"), "format": "dingtalk"}],
            notifiers=[{"classPath": f"{__name__}.StuckNotifier", "kwargs": {"channel": "x"}, "timeoutSecond": 1}],
        )
        outcome: list[list[str]] = []
        caller = threading.Thread(target=lambda: outcome.append(send_alert(config, "dead", "x", {})), daemon=True)
        caller.start()
        caller.join(60)
        assert not caller.is_alive(), "send_alert never returned: the stuck notifier was not bounded"
        assert len(chat.requests) == 1  # the other alerts still went out
    assert outcome == [[f"notifier {__name__}.StuckNotifier: no answer within 1 s"]]


def test_provider_notifications_are_airflow_notifiers() -> None:
    import importlib

    from airflow.sdk import BaseNotifier

    classes = [
        getattr(importlib.import_module(path.rpartition(".")[0]), path.rpartition(".")[2])
        for path in get_provider_info()["notifications"]
    ]
    assert len(classes) == 6 and all(issubclass(c, BaseNotifier) for c in classes)
    assert issubclass(TaskFailureAlert, BaseNotifier)


def test_a_notifier_works_as_a_plain_airflow_callback(
    run_dag: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from cupid_airflow.notifications import DingTalkWebhookNotifier

    def boom() -> None:
        raise RuntimeError("boom")

    with Recorder(answers={"/robot/send": answer(OK)}) as chat:
        conn_id = set_connection(monkeypatch, host="127.0.0.1", port=chat.port, schema="http", password="t0ken")
        with DAG(dag_id=f"cupid_notifier_{secrets.token_hex(3)}", schedule=None) as dag:
            PythonOperator(
                task_id="fails",
                python_callable=boom,
                on_failure_callback=DingTalkWebhookNotifier(text="{{ ti.task_id }} failed", conn_id=conn_id),
            )
        dag_run = run_dag(dag)
    assert dag_run.get_task_instance("fails").state == "failed"
    [request] = chat.requests
    assert json.loads(request.body)["text"]["content"] == "fails failed"
