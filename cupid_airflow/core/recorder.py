"""Recording batches of detections while the caller goes on: the server writes one batch as the next is judged."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cupid_airflow.core.sql import LazyConnection
from cupid_airflow.core.store_rows import RecordOutcome, recorded, stored_form

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.detection import Detection
    from cupid_airflow.core.store import DeliveryStore

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    detections: Sequence[Detection]
    kinds: list[str]
    statements: int = 0
    affected: int = 0
    answered: int = 0

    def confirmed(self) -> RecordOutcome:
        return recorded(self.kinds, self.affected)


class Recorder:
    """Records batches of detections on a connection of its own, with one statement in flight.

    :meth:`add` sends a batch and returns without waiting for its answer: the server writes it while the
    caller goes on. The answer is read before the next statement is sent, or by :meth:`flush`. Each
    statement commits on its own; a batch is recorded once every statement of it is answered.

    Nothing added is known to be recorded before :meth:`flush` returns: a caller flushes before it moves a
    position (a checkpoint, a cursor) past what it added. When the server refuses a statement or the
    connection breaks, the batches not yet answered are recorded again through
    :meth:`DeliveryStore.record` (retries; a row the store cannot hold stored reduced or dead), and what
    that raises, ``add`` or ``flush`` raises. A batch written twice that way is one item per key: the
    second write supersedes the first.
    """

    def __init__(self, store: DeliveryStore) -> None:
        self.store = store
        self._link = LazyConnection(store.params)  # autocommit: each statement commits on its own
        self._link.SESSION_SQL = store.SESSION_SQL
        self._batches: list[_Batch] = []  # sent, not all answered; the first one's statement is in flight
        self._in_flight = False

    def add(self, detections: Sequence[Detection]) -> RecordOutcome:
        """Send a batch; what batches before it came to, as far as their answers were read."""
        if not detections:
            return RecordOutcome()
        done = RecordOutcome()
        rows = [stored_form(d) for d in detections]
        batch = _Batch(detections, [kind for _, kind in rows])
        self._batches.append(batch)
        try:
            conn = self._link.conn
            statements = list(self.store.insert_statements(conn, [r for r, _ in rows]))
            batch.statements = len(statements)
            for statement in statements:
                done += self._answer()
                conn.send_query(statement)
                self._in_flight = True
        except Exception as err:
            return done + self._again(err)
        return done

    def flush(self) -> RecordOutcome:
        """Wait until every batch added is recorded; what the batches answered meanwhile came to."""
        try:
            return self._answer()
        except Exception as err:
            return self._again(err)

    def close(self) -> None:
        """Drop the connection. A batch not yet answered is abandoned (it may or may not be recorded): a caller
        that needs it recorded flushes first."""
        self._batches = []
        self._drop()

    def _answer(self) -> RecordOutcome:
        """Read the answer of the statement in flight, if any."""
        if not self._in_flight:
            return RecordOutcome()
        self._in_flight = False
        conn = self._link.conn
        conn.read_query_result()
        batch = self._batches[0]
        batch.affected += max(0, int(conn.affected_rows()))
        batch.answered += 1
        if batch.answered < batch.statements:
            return RecordOutcome()
        self._batches.pop(0)
        return batch.confirmed()

    def _again(self, err: Exception) -> RecordOutcome:
        """Record the batches not yet answered through the store, one transaction each."""
        self._drop()
        batches, self._batches = self._batches, []
        log.warning("recording %d batch(es) failed (%s); recording them again", len(batches), err)
        outcome = RecordOutcome()
        for batch in batches:
            outcome += self.store.record(batch.detections)
        return outcome

    def _drop(self) -> None:
        self._in_flight = False
        self._link.close()
