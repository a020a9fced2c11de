"""Alerts to chat webhooks (Slack, WeCom, DingTalk, Feishu, plain JSON): bodies, URLs, signing, answers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cupid_airflow.core.redact import is_secret_name, redact, url_secrets

WEBHOOK_FORMATS = ("json", "text", "slack", "wecom", "dingtalk", "feishu")
ANSWER_CAP = 64 * 1024
EXCERPT_CHARS = 200

# each platform's webhook host, path, and where its token goes (a path segment or a query parameter)
PLATFORMS = {
    "slack": ("https://hooks.slack.com", "/services", "path"),
    "wecom": ("https://qyapi.weixin.qq.com", "/cgi-bin/webhook/send", "key"),
    "dingtalk": ("https://oapi.dingtalk.com", "/robot/send", "access_token"),
    "feishu": ("https://open.feishu.cn", "/open-apis/bot/v2/hook", "path"),
}


class WebhookError(RuntimeError):
    """A webhook refused or did not take an alert; the message never holds the webhook's token."""


def webhook_body(fmt: str, event: str, text: str, details: dict[str, Any]) -> bytes:
    """The JSON body a webhook of this format expects."""
    if fmt == "json":
        payload: dict[str, Any] = {"event": event, "text": text, "details": details}
    elif fmt in ("wecom", "dingtalk"):
        payload = {"msgtype": "text", "text": {"content": text}}
    elif fmt == "feishu":
        payload = {"msg_type": "text", "content": {"text": text}}
    else:  # slack and plain text
        payload = {"text": text}
    return json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")


def webhook_url(fmt: str, base: str | None, endpoint: str | None, token: str | None) -> str:
    """A webhook URL from a connection's parts: ``base`` (scheme://host[:port]; the platform's when None),
    ``endpoint`` (the platform's path when None) and, for chat platforms, ``token`` put where the platform
    expects it (a path segment for Slack and Feishu, ``key`` for WeCom, ``access_token`` for DingTalk)."""
    if fmt not in PLATFORMS:
        if not base:
            raise ValueError(f"a {fmt} webhook connection needs a host")
        return _join(base, endpoint or "")
    default_base, default_path, place = PLATFORMS[fmt]
    if not token:
        raise ValueError(f"a {fmt} webhook connection needs the webhook token as its password")
    url = _join(base or default_base, default_path if endpoint is None else endpoint)
    if place == "path":
        return url.rstrip("/") + "/" + urllib.parse.quote(token, safe="/")
    return f"{url}{'&' if '?' in url else '?'}{place}={urllib.parse.quote(token, safe='')}"


def _join(base: str, endpoint: str) -> str:
    if not endpoint:
        return base
    return base.rstrip("/") + "/" + endpoint.lstrip("/")


def dingtalk_signed_url(url: str, secret: str, now_ms: int | None = None) -> str:
    """DingTalk's "加签" security setting: ``timestamp`` and ``sign`` (HMAC-SHA256, base64) query values."""
    timestamp = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest))
    return f"{url}{'&' if '?' in url else '?'}timestamp={timestamp}&sign={sign}"


def answer_error(fmt: str, status: int, body: bytes) -> str | None:
    """None when the platform took the message, else why not: a non-2xx status, or a 2xx whose
    ``errcode`` (DingTalk, WeCom) or ``code``/``StatusCode`` (Feishu) is not 0."""
    excerpt = " ".join(body[:EXCERPT_CHARS].decode("utf-8", "replace").split())
    if not 200 <= status < 300:
        return f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if fmt not in ("dingtalk", "wecom", "feishu"):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return f"HTTP {status} but the answer is not the platform's JSON: {excerpt!r}"
    if not isinstance(answer, dict):
        return f"HTTP {status} but the answer is not the platform's JSON: {excerpt!r}"
    if fmt == "feishu":
        code = answer.get("code", answer.get("StatusCode"))
        message = answer.get("msg", answer.get("StatusMessage"))
        field = "code"
    else:
        code, message, field = answer.get("errcode"), answer.get("errmsg"), "errcode"
    if code is None:
        return f"HTTP {status} but the answer has no {field}: {excerpt!r}"
    if code != 0:
        return f"{field} {code}: {message}"
    return None


def send_webhook(
    url: str,
    body: bytes,
    timeout_second: float,
    fmt: str = "json",
    headers: dict[str, str] | None = None,
) -> str | None:
    """POST an alert; return None when the platform took it, else a short error without the URL's token.
    Never raises, never takes much longer than ``timeout_second`` in all (a webhook that trickles its
    answer is abandoned)."""
    outcome: list[str | None] = []
    worker = threading.Thread(
        target=lambda: outcome.append(_post(url, body, timeout_second, fmt, headers or {})), daemon=True
    )
    worker.start()
    worker.join(timeout_second)
    if not outcome:
        return f"no complete answer within {timeout_second:g} s"
    if outcome[0] is None:
        return None
    # a platform may repeat the URL or headers it was called with in its error message
    secrets = [*url_secrets(url), *(v for k, v in (headers or {}).items() if is_secret_name(k))]
    return redact(outcome[0], secrets)


def _post(url: str, body: bytes, timeout_second: float, fmt: str, headers: dict[str, str]) -> str | None:
    try:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "cupid-airflow", **headers},
        )
        with urllib.request.urlopen(request, timeout=timeout_second) as answer:
            return answer_error(fmt, answer.status, answer.read(ANSWER_CAP))
    except urllib.error.HTTPError as err:
        return answer_error(fmt, err.code, err.read(ANSWER_CAP) if err.fp else b"")
    except Exception as err:  # an alert must never fail or block delivery
        return f"{type(err).__name__}: {err}"
