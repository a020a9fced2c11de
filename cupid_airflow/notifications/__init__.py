"""Airflow notifiers for chat and JSON webhooks (Slack, WeCom, DingTalk, Feishu, plain JSON)."""

from __future__ import annotations

from cupid_airflow.notifications.webhook import (
    DingTalkWebhookNotifier,
    FeishuWebhookNotifier,
    JsonWebhookNotifier,
    SlackWebhookNotifier,
    WebhookNotifier,
    WeComWebhookNotifier,
)

__all__ = [
    "DingTalkWebhookNotifier",
    "FeishuWebhookNotifier",
    "JsonWebhookNotifier",
    "SlackWebhookNotifier",
    "WeComWebhookNotifier",
    "WebhookNotifier",
]
