"""Destinations as the state database knows them: stable identities, a shared rate limit, a shared breaker.

Table ``cupid_destination`` has one row per (config, destination identity). An unnamed destination
(no ``des[].name``) is identified by a fingerprint of where it is (connection, table, key column);
the first time a fingerprint is seen it gets a ``desN`` label — its position then, so a store and
cursors of cupid-airflow 0.1 keep their meaning — and keeps that label when other destinations
are added, removed or reordered. A label is never given to another fingerprint.

The same row holds what every dispatcher of the destination shares: the next free send slot of
its rate limit, and its circuit breaker (consecutive failed sends, open until when).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.sql import ConnectionParams, LazyConnection, literal_int, quote_table

if TYPE_CHECKING:
    from collections.abc import Sequence

REGISTRY_TABLE = "cupid_destination"

SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
  config              VARCHAR(128) NOT NULL,
  destination         VARCHAR(128) NOT NULL,
  fingerprint         CHAR(40)     NULL,
  first_seen_at       DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  next_send_at        DATETIME(6)  NULL,
  failures            INT          NOT NULL DEFAULT 0,
  circuit_open_until  DATETIME(6)  NULL,
  last_error          VARCHAR(1024) NULL,
  PRIMARY KEY (config, destination),
  UNIQUE KEY uq_fingerprint (config, fingerprint)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


class IdentityError(ValueError):
    """A destination name that would take another destination's identity."""


@dataclass(frozen=True)
class Circuit:
    """A destination's shared circuit breaker.

    :param failures: consecutive failed sends, across dispatchers.
    :param open_for_second: how much longer the circuit stays open (0: closed, or due for a probe).
    :param opened: the circuit has opened and no send has succeeded since.
    """

    failures: int
    open_for_second: float
    opened: bool
    last_error: str | None = None
    hold_second: float = 0.0  # nothing may be sent before this (a 429's Retry-After, the rate limit)


class DestinationRegistry(LazyConnection):
    """The ``cupid_destination`` table in the state database."""

    SESSION_SQL = ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",)

    def __init__(self, params: ConnectionParams, table: str = REGISTRY_TABLE) -> None:
        super().__init__(params)
        self.table = quote_table(table)
        self._ready = False

    def ensure_schema(self) -> None:
        if not self._ready:
            self._execute(SCHEMA.format(table=self.table))
            self._ready = True

    # -- identities -------------------------------------------------------------------------------
    def identities(self, config: str, destinations: Sequence[tuple[str | None, str]]) -> list[str]:
        """Each destination's identity: its name, or the label of its fingerprint (given on first sight).

        :param destinations: (``des[].name`` or None, fingerprint) in config order.
        """
        self.ensure_schema()
        for _ in range(5):
            try:
                return self._identities(config, destinations)
            except Exception as err:  # two tasks labelling new destinations at once: read again
                if getattr(err, "args", (None,))[0] != 1062:
                    raise
                self.close()
                time.sleep(0.05)
        return self._identities(config, destinations)

    def _identities(self, config: str, destinations: Sequence[tuple[str | None, str]]) -> list[str]:
        rows = self._execute(
            f"SELECT destination, fingerprint FROM {self.table} WHERE config = %s", (config,)
        ).fetchall()
        known = {r[0].decode(): None if r[1] is None else r[1].decode() for r in rows}
        labels = {fingerprint: label for label, fingerprint in known.items() if fingerprint is not None}
        taken = set(known) | {name for name, _ in destinations if name}
        identities = []
        for position, (name, fingerprint) in enumerate(destinations):
            if name:
                held = known.get(name)
                if held is not None and held != fingerprint:
                    raise IdentityError(
                        f"destination name {name!r} is the label cupid gave another, unnamed destination of config "
                        f"{config!r} (a different connection, table or key column): its items and cursor would be "
                        "mixed up with this one's; choose another name"
                    )
                if name not in known:
                    self._insert(config, name, None)
                identities.append(name)
                continue
            label = labels.get(fingerprint)
            if label is None:
                label = f"des{position}"
                number = 0
                while label in taken:
                    label = f"des{number}"
                    number += 1
                self._insert(config, label, fingerprint)
                taken.add(label)
                labels[fingerprint] = label
            identities.append(label)
        return identities

    def _insert(self, config: str, destination: str, fingerprint: str | None) -> None:
        self._execute(
            f"INSERT INTO {self.table} (config, destination, fingerprint) VALUES (%s, %s, %s)",
            (config, destination, fingerprint),
        )

    # -- the shared rate limit ------------------------------------------------------------------------
    def reserve(self, config: str, destination: str, count: int, rate_per_second: float) -> float:
        """Reserve ``count`` send slots of a destination's rate limit; return seconds until the first.

        Slots are ``1 / rate`` apart across every dispatcher of the destination; the caller spaces
        its sends that far apart from the returned delay on.
        """
        self.ensure_schema()
        interval_us = int(count * 1_000_000 / rate_per_second)
        conn = self.conn
        try:
            conn.begin()
            self._ensure_row(config, destination)
            row = self._execute(
                f"SELECT TIMESTAMPDIFF(MICROSECOND, NOW(6), GREATEST(COALESCE(next_send_at, NOW(6)), NOW(6))) "
                f"FROM {self.table} WHERE config = %s AND destination = %s FOR UPDATE",
                (config, destination),
            ).fetchone()
            delay_us = int(row[0])
            self._execute(
                f"UPDATE {self.table} SET next_send_at = NOW(6) + INTERVAL {delay_us + interval_us} MICROSECOND "
                "WHERE config = %s AND destination = %s",
                (config, destination),
            )
            conn.commit()
        except Exception:
            with contextlib.suppress(Exception):
                conn.rollback()
            self.close()
            raise
        return delay_us / 1_000_000

    def hold_off(self, config: str, destination: str, second: float) -> None:
        """No dispatcher sends to the destination for ``second`` (a 429's ``Retry-After``)."""
        self.ensure_schema()
        self._ensure_row(config, destination)
        self._execute(
            f"UPDATE {self.table} SET next_send_at = GREATEST(COALESCE(next_send_at, NOW(6)), "
            f"NOW(6) + INTERVAL {int(second * 1_000_000)} MICROSECOND) WHERE config = %s AND destination = %s",
            (config, destination),
        )

    # -- the shared circuit breaker -------------------------------------------------------------------
    def circuit(self, config: str, destination: str) -> Circuit:
        self.ensure_schema()
        row = self._execute(
            "SELECT failures, GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), COALESCE(circuit_open_until, NOW(6)))), "
            "circuit_open_until IS NOT NULL, last_error, "
            "GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), COALESCE(next_send_at, NOW(6)))) "
            f"FROM {self.table} WHERE config = %s AND destination = %s",
            (config, destination),
        ).fetchone()
        if row is None:
            return Circuit(0, 0.0, False)
        return Circuit(
            failures=int(row[0]),
            open_for_second=int(row[1]) / 1_000_000,
            opened=int(row[2]) == 1,
            last_error=None if row[3] is None else row[3].decode("utf-8", "replace"),
            hold_second=int(row[4]) / 1_000_000,
        )

    def count_sends(
        self,
        config: str,
        destination: str,
        *,
        succeeded: bool,
        failures_after: int,
        threshold: int,
        cooldown_second: float,
        last_error: str | None = None,
    ) -> Circuit:
        """Count a group of sends: a success resets the failure count to the failures after it, else they add up.

        Reaching ``threshold`` consecutive failures opens the circuit for ``cooldown_second``;
        a success closes it.
        """
        self.ensure_schema()
        self._ensure_row(config, destination)
        failures = literal_int(failures_after)
        total = failures if succeeded else f"failures + {failures}"
        cooldown_us = int(cooldown_second * 1_000_000)
        otherwise = "NULL" if succeeded else "circuit_open_until"  # a success closes it
        self._execute(
            f"UPDATE {self.table} SET circuit_open_until = CASE WHEN {total} >= {literal_int(threshold)} "
            f"THEN NOW(6) + INTERVAL {cooldown_us} MICROSECOND ELSE {otherwise} END, "
            f"failures = {total}, last_error = COALESCE(%s, last_error) WHERE config = %s AND destination = %s",
            (None if last_error is None else last_error[:1024], config, destination),
        )
        return self.circuit(config, destination)

    def open_circuit(self, config: str, destination: str, cooldown_second: float, reason: str) -> None:
        """Open a destination's circuit now (its deliveries failed through every try)."""
        self.ensure_schema()
        self._ensure_row(config, destination)
        self._execute(
            f"UPDATE {self.table} SET circuit_open_until = NOW(6) + INTERVAL {int(cooldown_second * 1_000_000)} "
            "MICROSECOND, last_error = %s WHERE config = %s AND destination = %s",
            (reason[:1024], config, destination),
        )

    def _ensure_row(self, config: str, destination: str) -> None:
        self._execute(
            f"INSERT IGNORE INTO {self.table} (config, destination) VALUES (%s, %s)", (config, destination)
        )

    def rows(self, config: str) -> list[dict[str, Any]]:
        """Every destination the state database knows for a config (for ``pool stats``)."""
        self.ensure_schema()
        rows = self._execute(
            "SELECT destination, fingerprint, failures, circuit_open_until, last_error FROM "
            f"{self.table} WHERE config = %s ORDER BY destination",
            (config,),
        ).fetchall()
        return [
            {
                "destination": r[0].decode(),
                "fingerprint": None if r[1] is None else r[1].decode(),
                "failures": int(r[2]),
                "circuitOpenUntil": None if r[3] is None else r[3].decode(),
                "lastError": None if r[4] is None else r[4].decode("utf-8", "replace"),
            }
            for r in rows
        ]
