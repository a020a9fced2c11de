"""Alerts to chat webhooks (WeCom, DingTalk, Feishu, Slack, plain JSON): the replacement for PushBear."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

WEBHOOK_FORMATS = ("json", "text", "slack", "wecom", "dingtalk", "feishu")


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
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def send_webhook(url: str, body: bytes, timeout_second: float) -> str | None:
    """POST an alert; return None when delivered, else a short error. Never raises, never takes much longer
    than ``timeout_second`` in all (a webhook that trickles its answer is abandoned)."""
    outcome: list[str | None] = []
    worker = threading.Thread(target=lambda: outcome.append(_post(url, body, timeout_second)), daemon=True)
    worker.start()
    worker.join(timeout_second)
    if not outcome:
        return f"no complete answer within {timeout_second:g} s"
    return outcome[0]


def _post(url: str, body: bytes, timeout_second: float) -> str | None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "cupid-airflow"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_second) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except Exception as err:  # an alert must never fail or block delivery
        return f"{type(err).__name__}: {err}"
    return None if 200 <= status < 300 else f"HTTP {status}"
