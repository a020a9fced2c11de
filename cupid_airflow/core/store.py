"""The delivery store: a latest-state outbox of detected mismatches, claimed by one sender at a time.

Table ``cupid_delivery`` holds one *item* per detection episode of a (config, destination, key).
``pending`` and ``parked`` items are live: a unique index on ``(config, destination, key_hash,
live)`` allows one live item per key (``live`` is NULL once an item is terminal), so a newer
detection supersedes the live item in place (``revision`` goes up) and a detection after the item
ended is a new item. Items carry what was detected, not a body: the dispatcher builds the body
from the rows as they are when it sends. Each POST started is an attempt, recorded in
``cupid_delivery_attempt`` with the body sent, and applied to its item once, under its claim.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.recorder import Recorder
from cupid_airflow.core.sql import ConnectionParams, LazyConnection, literal_int, multi_row_inserts, quote_table
from cupid_airflow.core.store_rows import (
    BODY_CAP,
    DEAD,
    DELIVERED,
    ERROR_CAP,
    ITEM_COLUMNS,
    LIVE,
    LIVE_STATUSES,
    PARKED,
    PENDING,
    RESOLVED,
    STATUSES,
    UNDELIVERED,
    Attempt,
    Claim,
    ClaimedItem,
    RecordOutcome,
    StoredItem,
    counted,
    recorded,
    split_columns,
    stored_form,
    stored_item,
)
from cupid_airflow.core.store_schema import ensure_schema

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from cupid_airflow.core.detection import Detection

log = logging.getLogger(__name__)

STORE_TABLE = "cupid_delivery"
ATTEMPT_SUFFIX = "_attempt"

RETRYABLE_ERRORS = frozenset({1205, 1213})  # lock wait timeout, deadlock: the transaction is retried
UNREACHABLE_ERRORS = frozenset({2002, 2003, 2005, 2006, 2013})  # the server, not a row, is the problem


class StoreError(RuntimeError):
    """The delivery store cannot be used."""


class DeliveryStore(LazyConnection):
    """The ``cupid_delivery`` table (and its attempts) in the state database.

    :param params: where the state database is; it must name a database.
    :param table: the table name, ``cupid_delivery`` unless a test needs another.
    """

    SESSION_SQL = ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",)

    def __init__(self, params: ConnectionParams, table: str = STORE_TABLE) -> None:
        if not params.database:
            raise StoreError(f"the state connection {params.describe()} names no database for {table}")
        super().__init__(params)
        self.table = quote_table(table)
        self.attempt_table = quote_table(table + ATTEMPT_SUFFIX)

    def ensure_schema(self) -> None:
        """Create the tables when they do not exist yet; bring a table of an earlier version up to date."""
        ensure_schema(self)

    # -- recording (the compare side) ---------------------------------------------------------
    def record(self, detections: Sequence[Detection], chunk: int = 500) -> RecordOutcome:
        """Durably record detections in one transaction.

        A detection of a key that has a live item supersedes it (same item, ``revision`` + 1);
        otherwise it is a new item. A detection the store cannot hold as it is never stops the
        others: it is stored in a reduced form, or dead with the reason in ``note``.
        """
        if not detections:
            return RecordOutcome()
        rows = [stored_form(d) for d in detections]
        try:
            affected = self._transaction(lambda: self._insert([r for r, _ in rows], chunk))
            return recorded([kind for _, kind in rows], affected)
        except Exception as err:
            if _code(err) in UNREACHABLE_ERRORS:
                raise
            log.warning("recording %d detection(s) failed (%s); recording them one by one", len(rows), err)
        return self._record_one_by_one(detections, rows)

    def _record_one_by_one(
        self, detections: Sequence[Detection], rows: list[tuple[tuple[Any, ...], str]]
    ) -> RecordOutcome:
        new = superseded = reduced = dead = 0
        for detection, (row, kind) in zip(detections, rows, strict=True):
            try:
                added, replaced = self._insert_one(row)
            except Exception as err:
                if _code(err) in UNREACHABLE_ERRORS:
                    raise
                reason = f"refused by the store: {type(err).__name__}: {err}"
                log.error("detection of key %r at %s: %s", detection.key[:64], detection.destination, reason)
                row, kind = stored_form(detection, poison=reason)
                added, replaced = self._insert_one(row)
            new += added if kind != "dead" else 0
            superseded += replaced
            reduced += kind == "reduced"
            dead += kind == "dead"
        return RecordOutcome(new, superseded, reduced, dead)

    def _insert_one(self, row: tuple[Any, ...]) -> tuple[int, int]:
        return counted(1, self._transaction(lambda: self._insert([row], 1)))

    def _insert(self, rows: list[tuple[Any, ...]], chunk: int) -> int:
        """The rows the server says the statements recording ``rows`` affected."""
        conn = self.conn
        cursor = conn.cursor()
        affected = 0
        for start in range(0, len(rows), chunk):
            for statement in self.insert_statements(conn, rows[start : start + chunk]):
                cursor.execute(statement)
                affected += max(0, int(cursor.rowcount))
        return affected

    def insert_statements(self, conn: Any, rows: Sequence[tuple[Any, ...]]) -> Iterator[bytes]:
        """The statements recording ``rows`` (:func:`stored_form` rows), escaped for ``conn``: a detection of a
        key with a live item supersedes it, else it is a new item."""
        insert = (
            f"INSERT INTO {self.table} (config, destination, key_hash, row_key, key_columns, type, origin, "
            "source_id, differences, note, status, live) VALUES "
        )
        update = (
            " ON DUPLICATE KEY UPDATE revision = revision + 1, type = VALUES(type), origin = VALUES(origin), "
            "source_id = VALUES(source_id), differences = VALUES(differences), note = VALUES(note), "
            "last_detected_at = NOW(6), updated_at = NOW(6)"
        )
        return multi_row_inserts(conn, insert, rows, update)

    def recorder(self) -> Recorder:
        """A :class:`Recorder` of this store: the server writes one batch while the caller prepares the next."""
        return Recorder(self)

    # -- claims (the delivery side) -----------------------------------------------------------
    def claim(
        self,
        config: str,
        destination: str,
        statuses: Sequence[str],
        *,
        limit: int,
        lease_second: float,
        after_id: int = 0,
        claimant: str | None = None,
        ids: Sequence[int] | None = None,
    ) -> Claim:
        """Claim up to ``limit`` live items of one destination with ids above ``after_id``, oldest first,
        for ``lease_second``.

        Items claimed by another dispatcher whose lease has not run out, and items told to wait
        (a 429's ``Retry-After``), are left alone.

        :param claimant: who claims, when a later attempt of the same work knows the earlier one has
            ended (an Airflow task instance's retry): it takes over that claimant's claims at once
            instead of waiting for their leases to run out.
        :param ids: only these items (then ``after_id`` is not used).
        """
        only = f"AND id > {literal_int(after_id)}"
        if ids is not None:
            only = f"AND id IN ({', '.join(literal_int(i) for i in ids) or 'NULL'})"
        statuses = tuple(s for s in statuses if s in LIVE_STATUSES)
        token = os.urandom(16)
        asked_at = time.monotonic()
        lease_us = int(lease_second * 1_000_000)
        self._transaction(
            lambda: self._execute(
                f"UPDATE {self.table} SET claim_token = %s, claimed_until = NOW(6) + INTERVAL {lease_us} MICROSECOND, "
                "claimant = %s, claim_revision = revision "
                f"WHERE config = %s AND destination = %s AND live = {LIVE} {only} "
                f"AND status IN ({_marks(statuses)}) "
                "AND (claimed_until IS NULL OR claimed_until < NOW(6) OR claimant <=> %s AND %s IS NOT NULL) "
                f"AND (not_before IS NULL OR not_before <= NOW(6)) ORDER BY id LIMIT {literal_int(limit)}",
                [token, claimant, config, destination, *statuses, claimant, claimant],
            )
        )
        rows = self._execute(
            "SELECT id, destination, row_key, key_columns, type, source_id, status, attempts, detected_at "
            f"FROM {self.table} WHERE claim_token = %s ORDER BY id",
            (token,),
        ).fetchall()
        items = [
            ClaimedItem(
                id=int(r[0]),
                destination=r[1].decode(),
                row_key=r[2],
                key_columns=split_columns(r[3]),
                type=int(r[4]),
                source_id=None if r[5] is None else int(r[5]),
                status=r[6].decode(),
                attempts=int(r[7]),
                detected_at=r[8].decode(),
            )
            for r in rows
        ]
        return Claim(token, items, asked_at + lease_second - min(2.0, lease_second / 10))

    def renew(self, claim: Claim, lease_second: float) -> Claim:
        """Extend a claim's lease; the returned claim's ``valid_until`` counts from now."""
        asked_at = time.monotonic()
        lease_us = int(lease_second * 1_000_000)
        self._execute(
            f"UPDATE {self.table} SET claimed_until = NOW(6) + INTERVAL {lease_us} MICROSECOND WHERE claim_token = %s",
            (claim.token,),
        )
        return Claim(claim.token, claim.items, asked_at + lease_second - min(2.0, lease_second / 10))

    def release(self, claim: Claim, ids: Iterable[int] | None = None) -> int:
        """Give items back without an attempt (all the claim still holds when ``ids`` is None)."""
        where = "claim_token = %s"
        if ids is not None:
            id_list = ", ".join(literal_int(i) for i in ids)
            if not id_list:
                return 0
            where += f" AND id IN ({id_list})"
        cursor = self._execute(
            f"UPDATE {self.table} SET claim_token = NULL, claimed_until = NULL WHERE {where}", (claim.token,)
        )
        return int(cursor.rowcount)

    def settle(self, claim: Claim, status: str, reasons: dict[int, str]) -> int:
        """End claimed items without sending (``resolved``: nothing to repair; ``dead``: cannot be sent).

        Only items still at the revision they were claimed at are ended; a newer detection leaves
        its item live for the next claim. Returns how many were ended.
        """
        if status not in (RESOLVED, DEAD):
            raise ValueError(f"settle ends items as resolved or dead, not {status!r}")
        by_reason: dict[str, list[int]] = {}
        for item_id, reason in reasons.items():
            by_reason.setdefault(reason[:ERROR_CAP], []).append(item_id)

        def end() -> int:
            ended = 0
            for reason, ids in by_reason.items():
                cursor = self._execute(
                    f"UPDATE {self.table} SET status = %s, live = NULL, last_error = %s, claim_token = NULL, "
                    "claimed_until = NULL, updated_at = NOW(6) WHERE claim_token = %s AND revision = claim_revision "
                    f"AND id IN ({', '.join(literal_int(i) for i in ids)})",
                    (status, reason, claim.token),
                )
                ended += int(cursor.rowcount)
            id_list = ", ".join(literal_int(i) for i in reasons)
            self._execute(  # the others (detected again meanwhile) go back for the next claim
                f"UPDATE {self.table} SET claim_token = NULL, claimed_until = NULL WHERE claim_token = %s "
                f"AND id IN ({id_list})",
                (claim.token,),
            )
            return ended

        ended: int = self._transaction(end)
        return ended

    def record_attempts(self, claim: Claim, attempts: Sequence[Attempt]) -> int:
        """Record POSTs that were made, and apply each to its item once, under the claim; return how
        many items they delivered.

        A 2xx ends the item as ``delivered`` unless a newer detection came in while it was being
        sent (then it stays live and the newer state is sent next). Either way the item's claim
        is given up, so writing the same attempts again changes nothing.
        """
        if not attempts:
            return 0
        flush = os.urandom(16)
        rows = []
        for a in attempts:
            body = a.body[:BODY_CAP]
            rows.append(
                (
                    a.item_id,
                    flush,
                    int(a.ok),
                    a.type,
                    a.idempotency_key,
                    a.version,
                    a.http_status,
                    None if a.error is None else a.error[:ERROR_CAP],
                    None if a.retry_after_second is None else int(a.retry_after_second * 1000),
                    body,
                    int(len(body) < len(a.body)),
                    int(a.elapsed_second * 1000),
                )
            )
        join = f"{self.table} d JOIN {self.attempt_table} a ON a.flush = %s AND a.item_id = d.id"
        answer = (
            "d.attempts = d.attempts + 1, d.idempotency_key = a.idempotency_key, d.version = a.version, "
            "d.sent_type = a.type, d.last_http_status = a.http_status, d.last_error = a.error, "
            "d.not_before = IF(a.retry_after_ms IS NULL, NULL, NOW(6) + INTERVAL a.retry_after_ms * 1000 MICROSECOND), "
            "d.claim_token = NULL, d.claimed_until = NULL, d.updated_at = NOW(6)"
        )

        def write() -> int:
            conn = self.conn
            cursor = conn.cursor()
            insert = (
                f"INSERT INTO {self.attempt_table} (item_id, flush, ok, type, idempotency_key, version, "
                "http_status, error, retry_after_ms, body, body_cut, elapsed_ms) VALUES "
            )
            for statement in multi_row_inserts(conn, insert, rows):
                cursor.execute(statement)
            cursor.execute(
                f"UPDATE {join} SET d.status = 'delivered', d.live = NULL, d.delivered_at = NOW(6), {answer} "
                "WHERE d.claim_token = %s AND a.ok = 1 AND d.revision = d.claim_revision",
                (flush, claim.token),
            )
            delivered = int(cursor.rowcount)
            cursor.execute(f"UPDATE {join} SET {answer} WHERE d.claim_token = %s", (flush, claim.token))
            return delivered

        return int(self._transaction(write))

    # -- the failure pool -----------------------------------------------------------------------
    def park(self, config: str, destination: str, ids: Sequence[int] | None = None) -> int:
        """Move pending items of a destination (all, or the given ones) into the failure pool.

        Items another dispatcher holds a claim on are left to it.
        """
        where = (
            f"config = %s AND destination = %s AND status = %s AND live = {LIVE} "
            "AND (claimed_until IS NULL OR claimed_until < NOW(6))"
        )
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join(literal_int(i) for i in ids)})"
        cursor = self._execute(
            f"UPDATE {self.table} SET status = %s, queued_at = NOW(6), updated_at = NOW(6) WHERE {where}",
            (PARKED, config, destination, PENDING),
        )
        return int(cursor.rowcount)

    def requeue(self, config: str, ids: Sequence[int] | None = None, statuses: Sequence[str] = (DEAD,)) -> int:
        """Put items back into the failure pool with a fresh attempt count and age.

        An ended item (dead, delivered, resolved) becomes live again, unless its key already has
        a live item (which already covers it); items another dispatcher is sending are left alone.
        Returns how many items were requeued.
        """
        where = f"config = %s AND status IN ({_marks(statuses)}) AND (claimed_until IS NULL OR claimed_until < NOW(6))"
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join(literal_int(i) for i in ids)})"
        cursor = self._execute(
            f"UPDATE IGNORE {self.table} SET status = %s, live = {LIVE}, attempts = 0, not_before = NULL, "
            f"queued_at = NOW(6), updated_at = NOW(6) WHERE {where} ORDER BY id",
            [PARKED, config, *statuses],
        )
        return int(cursor.rowcount)

    def expire(self, config: str, *, max_attempts: int | None, max_age_second: int | None) -> int:
        """Move parked items with too many attempts or too long in the pool to the dead state."""
        limits = []
        if max_attempts is not None:
            limits.append(f"attempts >= {literal_int(max_attempts)}")
        if max_age_second is not None:
            limits.append(f"queued_at < NOW(6) - INTERVAL {literal_int(max_age_second)} SECOND")
        if not limits:
            return 0
        cursor = self._execute(
            f"UPDATE {self.table} SET status = %s, live = NULL, updated_at = NOW(6) WHERE config = %s AND status = %s "
            f"AND live = {LIVE} AND (claimed_until IS NULL OR claimed_until < NOW(6)) AND ({' OR '.join(limits)})",
            (DEAD, config, PARKED),
        )
        return int(cursor.rowcount)

    def purge(
        self, config: str, statuses: Sequence[str] = (DELIVERED, RESOLVED), ids: Sequence[int] | None = None
    ) -> int:
        """Delete items of a config in the given statuses, and their attempts; claimed items stay."""
        where = f"config = %s AND status IN ({_marks(statuses)}) AND (claimed_until IS NULL OR claimed_until < NOW(6))"
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join(literal_int(i) for i in ids)})"
        deleted = 0
        while True:
            found = self._execute(
                f"SELECT id FROM {self.table} WHERE {where} ORDER BY id LIMIT 5000", [config, *statuses]
            ).fetchall()
            if not found:
                return deleted
            id_list = ", ".join(literal_int(int(r[0])) for r in found)

            def delete(id_list: str = id_list) -> int:
                self._execute(f"DELETE FROM {self.attempt_table} WHERE item_id IN ({id_list})")
                return int(self._execute(f"DELETE FROM {self.table} WHERE id IN ({id_list})").rowcount)

            deleted += self._transaction(delete)

    # -- reading ----------------------------------------------------------------------------------
    def counts(self, config: str, destinations: Iterable[str] | None = None) -> dict[str, Any]:
        """Items by status (all destinations, and per destination), oldest pending and parked ages.

        With ``destinations`` (the configured ones), items of any other destination are counted
        as ``orphaned``: no dispatcher sends them.
        """
        rows = self._execute(
            "SELECT destination, status, COUNT(*), TIMESTAMPDIFF(SECOND, MIN(queued_at), NOW(6)), "
            "SUM(claimed_until IS NOT NULL AND claimed_until >= NOW(6)) "
            f"FROM {self.table} WHERE config = %s GROUP BY destination, status",
            (config,),
        ).fetchall()
        counts: dict[str, Any] = dict.fromkeys(STATUSES, 0)
        oldest: dict[str, int] = {}
        per_destination: dict[str, dict[str, int]] = {}
        claimed = 0
        for destination, status, count, age, held in rows:
            name, state = destination.decode(), status.decode()
            counts[state] += int(count)
            per_destination.setdefault(name, dict.fromkeys(STATUSES, 0))[state] = int(count)
            claimed += int(held or 0)
            if age is not None:
                oldest[state] = max(oldest.get(state, 0), int(age))
        counts["claimed"] = claimed
        counts["oldestParkedSecond"] = oldest.get(PARKED)
        counts["oldestPendingSecond"] = oldest.get(PENDING)
        counts["destinations"] = per_destination
        if destinations is not None:
            known = set(destinations)
            orphaned = {
                name: sum(c for s, c in by_status.items() if s in UNDELIVERED)
                for name, by_status in per_destination.items()
                if name not in known
            }
            counts["orphaned"] = {name: n for name, n in orphaned.items() if n}
        return counts

    def pending(self, config: str) -> int:
        """How many items of the config wait for the sync DAG's delivery (pending)."""
        return int(
            self._execute(
                f"SELECT COUNT(*) FROM {self.table} WHERE config = %s AND status = %s AND live = {LIVE}",
                (config, PENDING),
            ).fetchone()[0]
        )

    def items(
        self,
        config: str,
        statuses: Iterable[str] = (PENDING,),
        *,
        destination: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[StoredItem]:
        """Items of a config in the given statuses, oldest first (keyset paging by ``after_id``)."""
        statuses = tuple(statuses)
        where = [f"config = %s AND status IN ({_marks(statuses)}) AND id > {literal_int(after_id)}"]
        args: list[Any] = [config, *statuses]
        if destination is not None:
            where.append("destination = %s")
            args.append(destination)
        rows = self._execute(
            f"SELECT {ITEM_COLUMNS} FROM {self.table} WHERE {' AND '.join(where)} "
            f"ORDER BY id LIMIT {literal_int(limit)}",
            args,
        ).fetchall()
        return [stored_item(r) for r in rows]

    def attempts_of(self, item_id: int, limit: int = 50) -> list[dict[str, Any]]:
        """The newest attempts of one item: when, the body sent, its key, the answer."""
        rows = self._execute(
            "SELECT sent_at, ok, type, idempotency_key, http_status, error, body, body_cut, elapsed_ms "
            f"FROM {self.attempt_table} WHERE item_id = {literal_int(item_id)} "
            f"ORDER BY id DESC LIMIT {literal_int(limit)}"
        ).fetchall()
        return [
            {
                "sentAt": r[0].decode(),
                "ok": int(r[1]) == 1,
                "type": int(r[2]),
                "idempotencyKey": r[3].decode(),
                "httpStatus": None if r[4] is None else int(r[4]),
                "error": None if r[5] is None else r[5].decode("utf-8", "replace"),
                "body": r[6].decode("utf-8", "replace"),
                "bodyCut": int(r[7]) == 1,
                "elapsedMs": int(r[8]),
            }
            for r in rows
        ]

    # -- helpers ------------------------------------------------------------------------------
    def _transaction(self, work: Callable[[], Any], tries: int = 4) -> Any:
        """Run ``work`` in one transaction; a deadlock or lock wait timeout runs it again."""
        for attempt in range(tries):
            conn = self.conn
            try:
                conn.begin()
                result = work()
                conn.commit()
                return result
            except Exception as err:
                with contextlib.suppress(Exception):
                    conn.rollback()
                if _code(err) in RETRYABLE_ERRORS and attempt + 1 < tries:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                self.close()
                raise
        raise AssertionError("unreachable")


def _marks(values: Sequence[Any]) -> str:
    if not values:
        raise ValueError("at least one status is needed")
    return ", ".join(["%s"] * len(values))


def _code(err: BaseException) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None
