"""What the reconcile found, as records for the delivery store: the one place a finding is built."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DELETED
from cupid_airflow.core.payload import build_body, idempotency_key, row_version
from cupid_airflow.core.reconcile.table import name_in
from cupid_airflow.core.store import Mismatch

if TYPE_CHECKING:
    from collections.abc import Mapping

Row = dict[str, bytes | None]
Differences = dict[str, tuple[bytes | None, bytes | None]]


class Findings:
    """Builds the record of each finding of one destination's verify.

    :param key_column: the source key column (``src.byColumn``), or ``keyColumns`` joined by ``,``.
    :param id_column: the source id column (``src.idColumn``), whose value a record keeps as ``source_id``.
    """

    def __init__(
        self, config: str, destination: str, destination_table: str, key_column: str, id_column: str, composite: bool
    ) -> None:
        self.config = config
        self.destination = destination
        self.destination_table = destination_table
        self.key_column = key_column
        self.id_column = id_column
        self.composite = composite

    def record(
        self, kind: int, key: bytes, row: Mapping[str, bytes | None], differences: Differences | None, detected_at: str
    ) -> Mismatch:
        """The record of one finding: ``row`` is the current source row (type 1 missing, 2 different, with the
        ``differences`` by source column), or the destination row whose source row is gone (type 3)."""
        if kind == DELETED:
            version = hashlib.sha1(b"deleted:" + row_version(row).encode()).hexdigest()
            idem = idempotency_key(self.config, self.destination, key, version)
            body = build_body(
                mismatch_type=kind,
                source_row={},
                destination=self.destination,
                destination_table=self.destination_table,
                key_column=self.key_column,
                row_key=key,
                differences=None,
                detected_at=detected_at,
                idempotency_key=idem,
                destination_row=row,
            )
            return Mismatch(self.config, self.destination, key, version, idem, kind, None, body)
        version = row_version(row)
        idem = idempotency_key(self.config, self.destination, key, version)
        body = build_body(
            mismatch_type=kind,
            source_row=row,
            destination=self.destination,
            destination_table=self.destination_table,
            key_column=self.key_column if self.composite else name_in(dict(row), self.key_column),
            row_key=key,
            differences=differences,
            detected_at=detected_at,
            idempotency_key=idem,
        )
        raw_id = row.get(name_in(dict(row), self.id_column))
        source_id = int(raw_id) if raw_id is not None and raw_id.lstrip(b"-").isdigit() else None
        return Mismatch(self.config, self.destination, key, version, idem, kind, source_id, body)
