"""The one place the CLI touches the delivery store: every store call of ``airflow cupid pool`` is here."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.store import DELIVERED, RESOLVED, STATUSES, UNDELIVERED, DeliveryStore

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from cupid_airflow.core.config import CupidConfig
    from cupid_airflow.core.sql import ConnectionParams

__all__ = ["DELIVERED", "RESOLVED", "STATUSES", "UNDELIVERED", "PoolStore"]


class PoolStore:
    """A config's items in the delivery store of its state database, as the CLI shows and moves them.

    Open it only once every argument is validated: opening creates the store table when it is missing.
    """

    def __init__(self, config: CupidConfig, params: ConnectionParams) -> None:
        self.config = config
        self.params = params
        self._store = DeliveryStore(params)

    def __enter__(self) -> PoolStore:
        try:
            self._store.ensure_schema()
        except Exception:
            self._store.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._store.close()

    def stats(self) -> dict[str, Any]:
        """Items by status (and by destination), the oldest parked and pending ages in seconds, and the
        ``orphaned`` items of destinations no longer configured (never sent anywhere)."""
        from cupid_airflow.core.destinations import DestinationRegistry

        registry = DestinationRegistry(self.params)
        try:
            identities = registry.identities(self.config.name, self.config.destination_keys)
        finally:
            registry.close()
        return self._store.counts(self.config.name, identities)

    def items(self, statuses: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """Items in these statuses, oldest first, as the CLI prints them: what was detected, and the last
        body sent (``lastBody``, parsed; None when nothing was sent yet)."""
        return [
            {
                "id": item.id,
                "destination": item.destination,
                "status": item.status,
                "type": item.type,
                "origin": item.origin,
                "attempts": item.attempts,
                "claimed": item.claimed,
                "lastHttpStatus": item.last_http_status,
                "lastError": item.last_error,
                "note": item.note,
                "detectedAt": item.detected_at,
                "queuedAt": item.queued_at,
                "idempotencyKey": item.idempotency_key,
                "differences": item.differences,
                "lastBody": self._last_body(item.id),
            }
            for item in self._store.items(self.config.name, statuses, limit=limit)
        ]

    def _last_body(self, item_id: int) -> Any:
        attempts = self._store.attempts_of(item_id, limit=1)
        return _body(attempts[0]["body"]) if attempts else None

    def requeue(self, statuses: Sequence[str], ids: Sequence[int] | None) -> int:
        """Move items in these statuses (all, or the given ids) into the failure pool, attempts reset."""
        return self._store.requeue(self.config.name, ids, statuses=statuses)

    def purge(self, statuses: Sequence[str], ids: Sequence[int] | None) -> int:
        """Delete items in these statuses (all, or the given ids)."""
        return self._store.purge(self.config.name, statuses, ids)

    def expire(self, max_attempts: int | None, max_age_second: int | None) -> int:
        """Move parked items past these limits to dead."""
        return self._store.expire(self.config.name, max_attempts=max_attempts, max_age_second=max_age_second)


def _body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
