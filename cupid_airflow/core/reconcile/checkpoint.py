"""Reconcile checkpoints in the state database, and the lock that keeps one run per verify."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.reconcile.table import ReconcileError
from cupid_airflow.core.sql import ConnectionParams, LazyConnection, quote_table

if TYPE_CHECKING:
    from cupid_airflow.core.reconcile.state import Verify

CHECKPOINT_TABLE = "cupid_reconcile_checkpoint"
CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
  config       VARCHAR(128) NOT NULL,
  destination  VARCHAR(128) NOT NULL,
  started_at   DATETIME(6)  NOT NULL,
  state        LONGTEXT     NOT NULL,
  buckets      LONGBLOB     NULL,
  updated_at   DATETIME(6)  NOT NULL,
  PRIMARY KEY (config, destination)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


class LockLost(ReconcileError):
    """The connection that held this verify's lock is gone: another run may hold it now."""


class Checkpoint:
    """A stored checkpoint: its state, its blob and its age in seconds (by the state database's clock)."""

    def __init__(self, state: dict[str, Any], blob: bytes | None, age_second: float) -> None:
        self.state, self.blob, self.age_second = state, blob, age_second


class CheckpointStore(LazyConnection):
    """Reconcile checkpoints (table ``cupid_reconcile_checkpoint``) and the lock of each verify.

    One row per config and destination: the verify's JSON state and a small compressed blob (bucket
    sums, or the differing-bucket bitmap). A completed verify deletes its row. ``started_at`` is when
    the verify began, by this database's clock.

    The lock is ``GET_LOCK`` on this store's connection, and every write is conditional on it in the
    same statement (``IS_USED_LOCK(name) = CONNECTION_ID()``): when the connection drops, the lock
    drops with it, the next write reconnects, finds the lock not its own and raises :class:`LockLost`,
    so two runs never write one verify.

    :param params: the state database (the delivery store's connection).
    """

    def __init__(self, params: ConnectionParams, table: str = CHECKPOINT_TABLE) -> None:
        if not params.database:
            raise ReconcileError(f"the state connection {params.describe()} names no database for {table}")
        super().__init__(params)
        self.table = quote_table(table)
        self._lock: str | None = None

    def ensure_schema(self) -> None:
        self._execute(CHECKPOINT_SCHEMA.format(table=self.table))

    # -- the lock -----------------------------------------------------------------------------
    def lock(self, config: str, destination: str) -> bool:
        """Take the lock of this verify; False when another run holds it. Lock names are server-wide: the
        name covers the state database, whose checkpoint table the verify belongs to."""
        verify = f"{self.params.database}\0{config}\0{destination}"
        name = "cupid_reconcile:" + hashlib.sha1(verify.encode()).hexdigest()[:40]
        row = self._execute("SELECT GET_LOCK(%s, 0)", (name,)).fetchone()
        if row and row[0] is not None and int(row[0]) == 1:
            self._lock = name
            return True
        return False

    def unlock(self) -> None:
        if self._lock is not None and self._conn is not None:
            with contextlib.suppress(Exception):
                self._execute("SELECT RELEASE_LOCK(%s)", (self._lock,)).fetchall()
        self._lock = None

    def check(self) -> None:
        """Raise :class:`LockLost` unless this store's connection still holds the lock (before a write)."""
        row = self._execute_locked("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self._held(),)).fetchone()
        if not row or row[0] is None or int(row[0]) != 1:
            raise LockLost("the reconcile lock was lost (its state-database connection dropped); stopping")

    def _held(self) -> str:
        if self._lock is None:
            raise LockLost("the reconcile lock is not held")
        return self._lock

    def _execute_locked(self, sql: str, args: tuple[Any, ...]) -> Any:
        """Run a statement of a lock holder: any failure closes the connection, and with it the lock."""
        try:
            return self._execute(sql, args)
        except Exception as err:
            raise LockLost(
                f"the reconcile lock was lost with its state-database connection ({type(err).__name__}: {err})"
            ) from err

    # -- rows -----------------------------------------------------------------------------------
    def now(self) -> str:
        return str(self._execute("SELECT NOW(6)").fetchone()[0].decode())

    def load(self, config: str, destination: str) -> Checkpoint | None:
        row = self._execute(
            f"SELECT state, buckets, TIMESTAMPDIFF(MICROSECOND, started_at, NOW(6)) FROM {self.table} "
            "WHERE config = %s AND destination = %s",
            (config, destination),
        ).fetchone()
        if row is None:
            return None
        return Checkpoint(json.loads(row[0]), row[1], int(row[2]) / 1e6)

    def save(self, config: str, destination: str, verify: Verify) -> None:
        self.save_snapshot(config, destination, verify.started_at, verify.state_json(), verify.blob())

    def save_snapshot(
        self, config: str, destination: str, started_at: str, state_json: dict[str, Any], blob: bytes
    ) -> None:
        """Write a checkpoint, only while holding the lock (else :class:`LockLost`)."""
        state = json.dumps(state_json, separators=(",", ":"))
        cursor = self._execute_locked(
            f"INSERT INTO {self.table} (config, destination, started_at, state, buckets, updated_at) "
            "SELECT %s, %s, %s, %s, %s, NOW(6) FROM DUAL WHERE IS_USED_LOCK(%s) = CONNECTION_ID() "
            "ON DUPLICATE KEY UPDATE started_at = VALUES(started_at), state = VALUES(state), "
            "buckets = VALUES(buckets), updated_at = VALUES(updated_at)",
            (config, destination, started_at, state, blob, self._held()),
        )
        if cursor.rowcount < 1:
            raise LockLost("the reconcile lock was lost (its state-database connection dropped); not written")

    def clear(self, config: str, destination: str) -> None:
        """Delete a checkpoint (a completed or abandoned verify), only while holding the lock."""
        self.check()
        self._execute_locked(
            f"DELETE FROM {self.table} WHERE config = %s AND destination = %s AND IS_USED_LOCK(%s) = CONNECTION_ID()",
            (config, destination, self._held()),
        )
