"""The durable delivery store: every detected mismatch, until it is delivered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.sql import ConnectionParams, LazyConnection, literal_int, quote_table

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

STORE_TABLE = "cupid_delivery"

PENDING = "pending"
PARKED = "parked"
DELIVERED = "delivered"
RESOLVED = "resolved"
DEAD = "dead"
STATUSES = (PENDING, PARKED, DELIVERED, RESOLVED, DEAD)
UNDELIVERED = (PENDING, PARKED, DEAD)

SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
  id               BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  config           VARCHAR(128)    NOT NULL,
  destination      VARCHAR(128)    NOT NULL,
  row_key          VARBINARY(1024) NOT NULL,
  version          CHAR(40)        NOT NULL,
  idempotency_key  CHAR(64)        NOT NULL,
  type             TINYINT         NOT NULL,
  source_id        BIGINT          NULL,
  body             LONGBLOB        NOT NULL,
  status           VARCHAR(16)     NOT NULL DEFAULT 'pending',
  attempts         INT             NOT NULL DEFAULT 0,
  last_http_status INT             NULL,
  last_error       VARCHAR(1024)   NULL,
  detected_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  queued_at        DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at       DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  delivered_at     DATETIME(6)     NULL,
  UNIQUE KEY uq_idempotency (idempotency_key),
  KEY ix_queue (config, status, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


@dataclass(frozen=True)
class Mismatch:
    """One mismatch of one source row version against one destination, ready to record."""

    config: str
    destination: str
    row_key: bytes
    version: str
    idempotency_key: str
    type: int
    source_id: int | None
    body: bytes


@dataclass(frozen=True)
class StoredItem:
    """A recorded mismatch as the delivery side sees it."""

    id: int
    config: str
    destination: str
    row_key: bytes
    idempotency_key: str
    type: int
    body: bytes
    status: str
    attempts: int
    last_http_status: int | None
    last_error: str | None
    detected_at: str


class StoreError(RuntimeError):
    """The delivery store cannot be used."""


class DeliveryStore(LazyConnection):
    """The ``cupid_delivery`` table in the state database.

    :param params: where the state database is; it must name a database.
    :param table: the table name, ``cupid_delivery`` unless a test needs another.
    """

    def __init__(self, params: ConnectionParams, table: str = STORE_TABLE) -> None:
        if not params.database:
            raise StoreError(f"the state connection {params.describe()} names no database for {table}")
        super().__init__(params)
        self.table = quote_table(table)

    def ensure_schema(self) -> None:
        """Create the table when it does not exist yet; add columns that later versions introduced."""
        self._execute(SCHEMA.format(table=self.table))
        columns = {row[0].decode().lower() for row in self._execute(f"SHOW COLUMNS FROM {self.table}").fetchall()}
        if "queued_at" not in columns:  # added in 0.1.0's failure-pool requeue
            self._execute(
                f"ALTER TABLE {self.table} ADD COLUMN queued_at DATETIME(6) NOT NULL "
                "DEFAULT CURRENT_TIMESTAMP(6) AFTER detected_at"
            )

    # -- recording (the compare side) ---------------------------------------------------------
    def record(self, mismatches: Sequence[Mismatch], chunk: int = 500) -> int:
        """Durably record mismatches in one transaction; return how many are new.

        A mismatch already recorded (same idempotency key) is kept as it is.
        """
        if not mismatches:
            return 0
        sql = (
            f"INSERT INTO {self.table} (config, destination, row_key, version, idempotency_key, type, "
            "source_id, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE id = id"
        )
        new = 0
        conn = self.conn
        try:
            conn.begin()
            cursor = conn.cursor()
            for start in range(0, len(mismatches), chunk):
                cursor.executemany(
                    sql,
                    [
                        (
                            m.config,
                            m.destination,
                            m.row_key,
                            m.version,
                            m.idempotency_key,
                            m.type,
                            m.source_id,
                            m.body,
                        )
                        for m in mismatches[start : start + chunk]
                    ],
                )
                new += max(0, int(cursor.rowcount))
            conn.commit()
        except Exception:
            self.close()
            raise
        return new

    # -- delivery side ------------------------------------------------------------------------
    def items(
        self,
        config: str,
        statuses: Iterable[str] = (PENDING,),
        *,
        destination: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[StoredItem]:
        """Items of a config in the given statuses, oldest first."""
        statuses = tuple(statuses)
        where = [
            "config = %s",
            f"status IN ({', '.join(['%s'] * len(statuses))})",
            f"id > {literal_int(after_id)}",
        ]
        args: list[Any] = [config, *statuses]
        if destination is not None:
            where.append("destination = %s")
            args.append(destination)
        cursor = self._execute(
            "SELECT id, config, destination, row_key, idempotency_key, type, body, status, attempts, "
            f"last_http_status, last_error, detected_at FROM {self.table} WHERE {' AND '.join(where)} "
            f"ORDER BY id LIMIT {literal_int(limit)}",
            args,
        )
        return [
            StoredItem(
                id=int(r[0]),
                config=r[1].decode(),
                destination=r[2].decode(),
                row_key=r[3],
                idempotency_key=r[4].decode(),
                type=int(r[5]),
                body=r[6],
                status=r[7].decode(),
                attempts=int(r[8]),
                last_http_status=None if r[9] is None else int(r[9]),
                last_error=None if r[10] is None else r[10].decode("utf-8", "replace"),
                detected_at=r[11].decode(),
            )
            for r in cursor.fetchall()
        ]

    def mark_delivered(self, ids: Sequence[int], http_status: int | None = None) -> None:
        """Mark items delivered (a 2xx answer, ``http_status``)."""
        status = "NULL" if http_status is None else literal_int(http_status)
        self._set_status(
            ids,
            DELIVERED,
            extra=f", delivered_at = NOW(6), attempts = attempts + 1, last_http_status = {status}, last_error = NULL",
        )

    def mark_resolved(self, ids: Sequence[int]) -> None:
        """Mark items resolved: the destination caught up before anything was sent."""
        self._set_status(ids, RESOLVED, extra=", last_error = NULL")

    def record_failure(self, item_id: int, http_status: int | None, error: str) -> None:
        """Count a failed attempt on an item and keep the reason."""
        self._execute(
            f"UPDATE {self.table} SET attempts = attempts + 1, last_http_status = %s, last_error = %s, "
            f"updated_at = NOW(6) WHERE id = {literal_int(item_id)}",
            (None if http_status is None else str(http_status), error[:1024]),
        )

    def park(self, config: str, ids: Sequence[int] | None = None, *, destination: str | None = None) -> int:
        """Move pending items (all of a config or of one destination, or the given ones) into the failure pool."""
        if destination is None:
            return self._move(config, (PENDING,), PARKED, ids)
        where, args = self._where(config, (PENDING,), ids)
        cursor = self._execute(
            f"UPDATE {self.table} SET status = %s, updated_at = NOW(6) WHERE {where} AND destination = %s",
            [PARKED, *args, destination],
        )
        return int(cursor.rowcount)

    def requeue(self, config: str, ids: Sequence[int] | None = None, statuses: Sequence[str] = (DEAD,)) -> int:
        """Put items back into the failure pool (from dead, by default) with a fresh attempt count and age."""
        where, args = self._where(config, statuses, ids)
        cursor = self._execute(
            f"UPDATE {self.table} SET status = %s, attempts = 0, queued_at = NOW(6), updated_at = NOW(6) WHERE {where}",
            [PARKED, *args],
        )
        return int(cursor.rowcount)

    def kill(self, config: str, ids: Sequence[int]) -> int:
        """Move parked items to the dead state (too old or too many attempts)."""
        return self._move(config, (PARKED,), DEAD, ids)

    def expire(self, config: str, *, max_attempts: int | None, max_age_second: int | None) -> int:
        """Move parked items with too many attempts or too old to the dead state."""
        limits = []
        if max_attempts is not None:
            limits.append(f"attempts >= {literal_int(max_attempts)}")
        if max_age_second is not None:
            limits.append(f"queued_at < NOW(6) - INTERVAL {literal_int(max_age_second)} SECOND")
        if not limits:
            return 0
        cursor = self._execute(
            f"UPDATE {self.table} SET status = %s, updated_at = NOW(6) WHERE config = %s AND status = %s "
            f"AND ({' OR '.join(limits)})",
            (DEAD, config, PARKED),
        )
        return int(cursor.rowcount)

    def purge(
        self, config: str, statuses: Sequence[str] = (DELIVERED, RESOLVED), ids: Sequence[int] | None = None
    ) -> int:
        """Delete items of a config in the given statuses."""
        where, args = self._where(config, statuses, ids)
        return int(self._execute(f"DELETE FROM {self.table} WHERE {where}", args).rowcount)

    def counts(self, config: str) -> dict[str, Any]:
        """Items by status and the age in seconds of the oldest parked item."""
        cursor = self._execute(
            f"SELECT status, COUNT(*), TIMESTAMPDIFF(SECOND, MIN(detected_at), NOW(6)) FROM {self.table} "
            "WHERE config = %s GROUP BY status",
            (config,),
        )
        counts: dict[str, Any] = dict.fromkeys(STATUSES, 0)
        oldest: dict[str, int | None] = {}
        for status, count, age in cursor.fetchall():
            counts[status.decode()] = int(count)
            oldest[status.decode()] = None if age is None else int(age)
        counts["oldestParkedSecond"] = oldest.get(PARKED)
        counts["oldestPendingSecond"] = oldest.get(PENDING)
        return counts

    # -- helpers ------------------------------------------------------------------------------
    def _where(self, config: str, statuses: Sequence[str], ids: Sequence[int] | None) -> tuple[str, list[Any]]:
        where = f"config = %s AND status IN ({', '.join(['%s'] * len(statuses))})"
        if ids is not None:
            where += f" AND id IN ({', '.join(literal_int(i) for i in ids) or 'NULL'})"
        return where, [config, *statuses]

    def _move(self, config: str, from_statuses: Sequence[str], to_status: str, ids: Sequence[int] | None) -> int:
        where, args = self._where(config, from_statuses, ids)
        cursor = self._execute(
            f"UPDATE {self.table} SET status = %s, updated_at = NOW(6) WHERE {where}", [to_status, *args]
        )
        return int(cursor.rowcount)

    def _set_status(self, ids: Sequence[int], status: str, extra: str = "") -> None:
        if not ids:
            return
        id_list = ", ".join(literal_int(i) for i in ids)
        self._execute(
            f"UPDATE {self.table} SET status = %s, updated_at = NOW(6){extra} WHERE id IN ({id_list})",
            (status,),
        )
