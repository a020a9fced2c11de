"""Webhook notifiers: each POSTs one message, bounded by its timeout, and checks the platform's answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from cupid_airflow.core.alerts import (
    WEBHOOK_FORMATS,
    WebhookError,
    dingtalk_signed_url,
    send_webhook,
    webhook_body,
    webhook_url,
)
from cupid_airflow.core.redact import url_secrets, url_shape

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

class WebhookNotifier(BaseNotifier):
    """POST a message to a webhook; a refusal (non-2xx, or the platform's error field) raises.

    Give either ``url`` (the whole webhook URL, token included) or ``conn_id``: an Airflow connection whose
    password is the webhook token and whose host (when set) replaces the platform's; ``endpoint`` replaces
    the platform's path. For ``json``/``text`` webhooks a connection's password is sent as a bearer token
    (basic auth when it has a login too).

    :param text: the message (templated).
    :param format: ``json`` (``{"event", "text", "details"}``), ``text`` (``{"text"}``), ``slack``,
        ``wecom``, ``dingtalk`` or ``feishu``.
    :param url: the webhook URL.
    :param conn_id: an Airflow connection holding the webhook token.
    :param endpoint: a path under the connection's host.
    :param timeout: seconds one message may take in all, the answer included.
    :param details: extra fields of a ``json`` message (templated).
    :param event: the ``event`` field of a ``json`` message.
    """

    template_fields: Sequence[str] = ("text", "details")
    format = "json"

    def __init__(
        self,
        *,
        text: str,
        url: str | None = None,
        conn_id: str | None = None,
        endpoint: str | None = None,
        timeout: float = 5.0,
        details: dict[str, Any] | None = None,
        event: str = "notification",
        format: str | None = None,
    ) -> None:
        super().__init__()
        if bool(url) == bool(conn_id):
            raise ValueError("give exactly one of url and conn_id")
        if format is not None:
            if format not in WEBHOOK_FORMATS:
                raise ValueError(f"format {format!r} is not one of {', '.join(WEBHOOK_FORMATS)}")
            self.format = format
        self.text = text
        self.url = url
        self.conn_id = conn_id
        self.endpoint = endpoint
        self.timeout = timeout
        self.details = details or {}
        self.event = event

    def describe(self) -> str:
        """Where this notifier posts, without the token."""
        where = f"connection {self.conn_id!r}" if self.conn_id else url_shape(self.url or "")
        return f"{self.format} webhook {where}"

    def notify(self, context: Context) -> None:
        try:
            self.post(*self.target())
        except WebhookError as err:
            raise WebhookError(f"{self.describe()}: {err}") from None

    def post(self, url: str, headers: dict[str, str]) -> None:
        """POST the message (bounded by ``timeout``); raise :class:`WebhookError` when it was not taken."""
        body = webhook_body(self.format, self.event, self.text, self.details)
        error = send_webhook(url, body, self.timeout, self.format, headers)
        if error:
            raise WebhookError(error)

    def target(self) -> tuple[str, dict[str, str]]:
        """The URL to POST to and extra headers, every secret in them registered with the log masker."""
        from airflow.sdk.log import mask_secret

        headers: dict[str, str] = {}
        if self.url:
            url = self.url
        else:
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection(self.conn_id or "")
            base = None
            if conn.host:
                base = conn.host if "://" in conn.host else f"{conn.schema or 'https'}://{conn.host}"
                base += f":{conn.port}" if conn.port else ""
            try:
                url = webhook_url(self.format, base, self.endpoint, conn.password)
            except ValueError as err:
                raise WebhookError(f"connection {self.conn_id!r}: {err}") from None
            if self.format in ("json", "text") and conn.password:
                headers["Authorization"] = _authorization(conn.login, conn.password)
                mask_secret(headers["Authorization"])
            self._from_connection(conn)
        url = self._signed(url)
        for secret in url_secrets(url):
            mask_secret(secret)
        return url, headers

    def _from_connection(self, conn: Any) -> None:
        """Hook for platform options kept in the connection's extras."""

    def _signed(self, url: str) -> str:
        return url


class JsonWebhookNotifier(WebhookNotifier):
    """POST ``{"event", "text", "details"}`` to any JSON webhook."""

    format = "json"


class SlackWebhookNotifier(WebhookNotifier):
    """A Slack incoming webhook (``https://hooks.slack.com/services/...``; a connection's password is the
    ``T.../B.../...`` part)."""

    format = "slack"


class WeComWebhookNotifier(WebhookNotifier):
    """A WeCom (企业微信) group robot; its ``errcode`` must be 0 (a connection's password is the ``key``)."""

    format = "wecom"


class FeishuWebhookNotifier(WebhookNotifier):
    """A Feishu/Lark custom bot; its ``code`` must be 0 (a connection's password is the hook's id)."""

    format = "feishu"


class DingTalkWebhookNotifier(WebhookNotifier):
    """A DingTalk custom robot; its ``errcode`` must be 0 (a connection's password is the ``access_token``).

    :param sign_secret: the robot's signing secret (``SEC...``) when its security setting is 加签; from a
        connection, its extra ``sign_secret`` works too.
    """

    format = "dingtalk"

    def __init__(self, *, sign_secret: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sign_secret = sign_secret

    def _from_connection(self, conn: Any) -> None:
        extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
        self.sign_secret = self.sign_secret or extra.get("sign_secret")

    def _signed(self, url: str) -> str:
        if not self.sign_secret:
            return url
        from airflow.sdk.log import mask_secret

        mask_secret(self.sign_secret)
        return dingtalk_signed_url(url, self.sign_secret)


NOTIFIERS: dict[str, type[WebhookNotifier]] = {
    "json": JsonWebhookNotifier,
    "text": WebhookNotifier,
    "slack": SlackWebhookNotifier,
    "wecom": WeComWebhookNotifier,
    "dingtalk": DingTalkWebhookNotifier,
    "feishu": FeishuWebhookNotifier,
}


def _authorization(login: str | None, password: str) -> str:
    if not login:
        return f"Bearer {password}"
    import base64

    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()
