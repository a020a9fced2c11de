"""What the reconcile found, and its records for the delivery store: the one place a record is built."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DELETED, DIFFERENT
from cupid_airflow.core.payload import build_body, idempotency_key, row_version
from cupid_airflow.core.reconcile.table import name_in
from cupid_airflow.core.store import Mismatch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.reconcile.table import TableSide

Values = tuple[bytes | None, ...]
Differences = dict[str, tuple[bytes | None, bytes | None]]


@dataclass(frozen=True)
class Finding:
    """One finding, as a detection: its key and type, the source id, and for a type 2 the differing
    columns by source name ``(source value, destination value)``. ``actual`` keeps the destination's
    compared values (type 2) or its row (type 3)."""

    kind: int
    key: bytes
    source_id: int | None
    differences: Differences | None
    actual: Values | dict[str, bytes | None] | None


class Findings:
    """Builds the records of one destination's findings.

    Today's delivery store keeps the callback body, which carries the whole source row: :meth:`records`
    reads the source rows of a batch (after the destination was read) to build it. Once the store keeps
    detections and builds bodies when it sends, a record is the :class:`Finding` itself and that read goes.

    :param key_column: the source key column (``src.byColumn``), or ``keyColumns`` joined by ``,``.
    """

    def __init__(
        self, config: str, destination: str, destination_table: str, key_column: str, source: TableSide
    ) -> None:
        self.config = config
        self.destination = destination
        self.destination_table = destination_table
        self.key_column = key_column
        self.source = source

    def records(self, findings: Sequence[Finding], detected_at: str) -> tuple[list[Mismatch], list[Finding]]:
        """The records of a batch of findings, and the findings that turned out equal (or gone) on a second look."""
        wanted = [f for f in findings if f.kind != DELETED]
        by_id = None
        if all(f.source_id is not None for f in wanted):
            by_id = self.source.rows_by_id([f.source_id for f in wanted if f.source_id is not None])
        rows = {}
        for row in by_id if by_id is not None else self.source.rows_by_key([f.key for f in wanted]):
            key = self.source.row_key(row)
            if key is not None:
                rows[key] = row
        out: list[Mismatch] = []
        vanished: list[Finding] = []
        for finding in findings:
            if finding.kind == DELETED:
                out.append(self._deleted(finding, detected_at))
                continue
            current = rows.get(finding.key)
            if current is None:
                vanished.append(finding)  # deleted or re-keyed at the source since it was compared
                continue
            differences = None
            if finding.kind == DIFFERENT:
                assert isinstance(finding.actual, tuple)
                values = self.source.values(current)
                names = [name_in(current, c) for c in self.source.columns]
                differences = {
                    names[n]: (values[n], finding.actual[n])
                    for n in range(len(names))
                    if values[n] != finding.actual[n]
                }
                if not differences:
                    vanished.append(finding)  # equal now
                    continue
            out.append(self._source(finding, current, differences, detected_at))
        return out, vanished

    def _source(
        self, finding: Finding, row: dict[str, bytes | None], differences: Differences | None, detected_at: str
    ) -> Mismatch:
        version = row_version(row)
        idem = idempotency_key(self.config, self.destination, finding.key, version)
        body = build_body(
            mismatch_type=finding.kind,
            source_row=row,
            destination=self.destination,
            destination_table=self.destination_table,
            key_column=self.key_column if self.source.composite else name_in(row, self.key_column),
            row_key=finding.key,
            differences=differences,
            detected_at=detected_at,
            idempotency_key=idem,
        )
        return Mismatch(
            self.config, self.destination, finding.key, version, idem, finding.kind, finding.source_id, body
        )

    def _deleted(self, finding: Finding, detected_at: str) -> Mismatch:
        row = finding.actual if isinstance(finding.actual, dict) else {}
        version = hashlib.sha1(b"deleted:" + row_version(row).encode()).hexdigest()
        idem = idempotency_key(self.config, self.destination, finding.key, version)
        body = build_body(
            mismatch_type=DELETED,
            source_row={},
            destination=self.destination,
            destination_table=self.destination_table,
            key_column=self.key_column,
            row_key=finding.key,
            differences=None,
            detected_at=detected_at,
            idempotency_key=idem,
            destination_row=row,
        )
        return Mismatch(self.config, self.destination, finding.key, version, idem, DELETED, None, body)


def source_id(value: bytes | None) -> int | None:
    """The source id column's value as a record keeps it (None when it is not an integer)."""
    return int(value) if value is not None and value.lstrip(b"-").isdigit() else None
