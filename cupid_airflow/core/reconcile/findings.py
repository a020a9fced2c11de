"""What the reconcile found, and its records for the delivery store: the one place a record is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DIFFERENT
from cupid_airflow.core.detection import RECONCILE, Detection

if TYPE_CHECKING:
    from collections.abc import Sequence

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
    """Builds the records of one destination's findings: a :class:`Detection` each.

    Nothing is read for it: the body is built from the rows as they are when the item is sent
    (``core.judge``), which also decides again whether there is anything to send.

    :param key_columns: the source key columns of a composite key (``reconcile.keyColumns``); empty for
        ``src.byColumn``.
    """

    def __init__(self, config: str, destination: str, key_columns: tuple[str, ...]) -> None:
        self.config = config
        self.destination = destination
        self.key_columns = key_columns

    def records(self, findings: Sequence[Finding]) -> list[Detection]:
        """The records of a batch of findings."""
        return [
            Detection(
                self.config,
                self.destination,
                f.key,
                f.kind,
                f.source_id,
                f.differences if f.kind == DIFFERENT else None,
                self.key_columns,
                RECONCILE,
            )
            for f in findings
        ]


def source_id(value: bytes | None) -> int | None:
    """The source id column's value as a record keeps it (None when it is not an integer)."""
    return int(value) if value is not None and value.lstrip(b"-").isdigit() else None
