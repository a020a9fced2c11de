"""The delivery store's tables: their schema, and how a table of an earlier version is brought up to date."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cupid_airflow.core.store import DeliveryStore

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
  id               BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  config           VARCHAR(128)    NOT NULL,
  destination      VARCHAR(128)    NOT NULL,
  key_hash         BINARY(32)      NOT NULL,
  row_key          MEDIUMBLOB      NOT NULL,
  key_columns      VARCHAR(512)    NULL,
  live             TINYINT         NULL DEFAULT 1,
  type             TINYINT         NOT NULL,
  origin           VARCHAR(16)     NOT NULL DEFAULT 'sync',
  source_id        DECIMAL(20,0)   NULL,
  differences      MEDIUMBLOB      NULL,
  note             VARCHAR(1024)   NULL,
  status           VARCHAR(16)     NOT NULL DEFAULT 'pending',
  revision         INT UNSIGNED    NOT NULL DEFAULT 0,
  claim_revision   INT UNSIGNED    NULL,
  claim_token      BINARY(16)      NULL,
  claimed_until    DATETIME(6)     NULL,
  claimant         VARCHAR(255)    NULL,
  not_before       DATETIME(6)     NULL,
  attempts         INT             NOT NULL DEFAULT 0,
  idempotency_key  CHAR(64)        NULL,
  version          CHAR(40)        NULL,
  sent_type        TINYINT         NULL,
  last_http_status INT             NULL,
  last_error       VARCHAR(1024)   NULL,
  detected_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  last_detected_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  queued_at        DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at       DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  delivered_at     DATETIME(6)     NULL,
  UNIQUE KEY uq_live (config, destination, key_hash, live),
  KEY ix_queue (config, destination, status, id),
  KEY ix_claim (claim_token),
  KEY ix_age (config, destination, status, queued_at),
  KEY ix_ended (config, destination, status, updated_at),
  KEY ix_key (config, destination, status, row_key(64))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

ATTEMPT_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
  id               BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  item_id          BIGINT UNSIGNED NOT NULL,
  flush            BINARY(16)      NOT NULL,
  ok               TINYINT         NOT NULL,
  type             TINYINT         NOT NULL,
  idempotency_key  CHAR(64)        NOT NULL,
  version          CHAR(40)        NOT NULL,
  http_status      INT             NULL,
  error            VARCHAR(1024)   NULL,
  retry_after_ms   INT             NULL,
  body             MEDIUMBLOB      NOT NULL,
  body_cut         TINYINT         NOT NULL DEFAULT 0,
  elapsed_ms       INT             NOT NULL,
  sent_at          DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY ix_item (item_id, id),
  KEY ix_flush_item (flush, item_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

# A 0.1 store (one item per row version, bodies recorded at detection) becomes this one in place.
MIGRATION_0_1 = (
    "ALTER TABLE {table} DROP INDEX uq_idempotency, DROP INDEX ix_queue, DROP COLUMN body,"
    " MODIFY row_key MEDIUMBLOB NOT NULL, MODIFY source_id DECIMAL(20,0) NULL,"
    " MODIFY version CHAR(40) NULL, MODIFY idempotency_key CHAR(64) NULL,"
    " MODIFY last_error VARCHAR(1024) NULL,"
    " ADD COLUMN key_hash BINARY(32) NULL AFTER destination,"
    " ADD COLUMN key_columns VARCHAR(512) NULL AFTER row_key,"
    " ADD COLUMN live TINYINT NULL DEFAULT 1 AFTER key_columns,"
    " ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'sync' AFTER type,"
    " ADD COLUMN differences MEDIUMBLOB NULL AFTER source_id,"
    " ADD COLUMN note VARCHAR(1024) NULL AFTER differences,"
    " ADD COLUMN revision INT UNSIGNED NOT NULL DEFAULT 0 AFTER status,"
    " ADD COLUMN claim_revision INT UNSIGNED NULL AFTER revision,"
    " ADD COLUMN claim_token BINARY(16) NULL AFTER claim_revision,"
    " ADD COLUMN claimed_until DATETIME(6) NULL AFTER claim_token,"
    " ADD COLUMN claimant VARCHAR(255) NULL AFTER claimed_until,"
    " ADD COLUMN not_before DATETIME(6) NULL AFTER claimed_until,"
    " ADD COLUMN sent_type TINYINT NULL AFTER version,"
    " ADD COLUMN last_detected_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) AFTER detected_at",
    "UPDATE {table} SET key_hash = UNHEX(SHA2(row_key, 256)), last_detected_at = detected_at,"
    " live = IF(status IN ('pending', 'parked'), 1, NULL), version = NULL, idempotency_key = NULL",
    "UPDATE {table} t JOIN (SELECT config, destination, key_hash, MAX(id) AS keep FROM {table} WHERE live = 1"
    " GROUP BY config, destination, key_hash HAVING COUNT(*) > 1) k"
    " ON t.config = k.config AND t.destination = k.destination AND t.key_hash = k.key_hash"
    " SET t.status = 'superseded', t.live = NULL WHERE t.live = 1 AND t.id < k.keep",
    "ALTER TABLE {table} MODIFY key_hash BINARY(32) NOT NULL,"
    " ADD UNIQUE KEY uq_live (config, destination, key_hash, live),"
    " ADD KEY ix_queue (config, destination, status, id), ADD KEY ix_claim (claim_token)",
)


def ensure_schema(store: DeliveryStore) -> None:
    """Create the store's tables when they do not exist yet; migrate a 0.1 store in place; add the
    columns and indexes a table made by an earlier version lacks."""
    columns = _columns(store, store.table)
    if columns and "live" in columns and not _missing_columns(SCHEMA, columns):
        if not _has_table(store, store.attempt_table):
            store._execute(ATTEMPT_SCHEMA.format(table=store.attempt_table))
        if not any(_missing(store, table, schema) for table, schema in _tables(store)):
            return
    lock = f"cupid_schema_{store.params.database}"
    store._execute("SELECT GET_LOCK(%s, 60)", (lock,))
    try:
        columns = _columns(store, store.table)
        if not columns:
            store._execute(SCHEMA.format(table=store.table))
        elif "live" not in columns:
            log.warning("migrating the delivery store %s from cupid-airflow 0.1", store.table)
            if "queued_at" not in columns:
                store._execute(
                    f"ALTER TABLE {store.table} ADD COLUMN queued_at DATETIME(6) NOT NULL "
                    "DEFAULT CURRENT_TIMESTAMP(6) AFTER detected_at"
                )
            for statement in MIGRATION_0_1:
                store._execute(statement.format(table=store.table))
        store._execute(ATTEMPT_SCHEMA.format(table=store.attempt_table))
        for table, schema in _tables(store):
            missing = _missing(store, table, schema)
            if missing:  # one ALTER: the table is read once for all of them, writes go on meanwhile
                log.warning("adding %s to %s", ", ".join(missing), table)
                store._execute(f"ALTER TABLE {table} " + ", ".join(f"ADD {d}" for d in missing))
    finally:
        store._execute("SELECT RELEASE_LOCK(%s)", (lock,))


def _tables(store: DeliveryStore) -> tuple[tuple[str, str], ...]:
    return (store.table, SCHEMA), (store.attempt_table, ATTEMPT_SCHEMA)


def _missing(store: DeliveryStore, table: str, schema: str) -> list[str]:
    """What a table made by an earlier version lacks, as ``ADD`` clauses: ``COLUMN …`` then ``KEY …``."""
    columns = [f"COLUMN {d}" for d in _missing_columns(schema, _columns(store, table))]
    return columns + list(_missing_indexes(store, table, schema).values())


def _missing_indexes(store: DeliveryStore, table: str, schema: str) -> dict[str, str]:
    """Definitions of the schema's indexes (by name) that a table lacks."""
    rows = store._execute(f"SHOW INDEX FROM {table}").fetchall()
    present = {row[2].decode().lower() for row in rows}
    return {name: d for name, d in _indexes(schema).items() if name not in present}


def _columns(store: DeliveryStore, table: str) -> set[str]:
    if not _has_table(store, table):
        return set()
    return {row[0].decode().lower() for row in store._execute(f"SHOW COLUMNS FROM {table}").fetchall()}


def _has_table(store: DeliveryStore, table: str) -> bool:
    name = table.split(".")[-1].strip("`")
    return bool(store._execute("SHOW TABLES LIKE %s", (name.replace("_", "\\_"),)).fetchall())


def _missing_columns(schema: str, columns: set[str]) -> list[str]:
    """Definitions of the schema's columns that a table lacks."""
    definitions = [line.strip().rstrip(",") for line in schema.splitlines() if line.startswith("  ")]
    return [
        d for d in definitions if not d.startswith(("UNIQUE", "KEY", "PRIMARY")) and d.split()[0].lower() not in columns
    ]


def _indexes(schema: str) -> dict[str, str]:
    """The schema's secondary index definitions by name (``KEY name (...)``, ``UNIQUE KEY name (...)``)."""
    definitions = [line.strip().rstrip(",") for line in schema.splitlines() if line.startswith("  ")]
    indexes = {}
    for d in definitions:
        words = d.split()
        if words[0] == "KEY":
            indexes[words[1].lower()] = d
        elif words[:2] == ["UNIQUE", "KEY"]:
            indexes[words[2].lower()] = d
    return indexes
