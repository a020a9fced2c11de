"""Judge the candidates of the compare on what the tables hold now: the destination first, then the source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DELETED, DIFFERENT, MISSING
from cupid_airflow.core.reconcile.keys import key_digest
from cupid_airflow.core.reconcile.match import KeyMatcher
from cupid_airflow.core.reconcile.table import name_in

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.reconcile.findings import Findings
    from cupid_airflow.core.reconcile.keys import Key, Pk, Values
    from cupid_airflow.core.reconcile.table import TableSide
    from cupid_airflow.core.store import Mismatch


@dataclass
class Tally:
    """What one batch of candidates came to; it joins the verify's counts only once its records are stored."""

    missing: int = 0
    different: int = 0
    deleted: int = 0
    extra: int = 0
    deferred: int = 0
    changed: int = 0
    key_bytes_only: int = 0
    duplicate_keys: int = 0
    paired: set[int] = field(default_factory=set)
    records: list[Mismatch] = field(default_factory=list)


class Judge:
    """Judges candidates of one destination's compare.

    A *source candidate* is a source row whose key and row hash the destination's bucket does not hold;
    a *destination candidate* a destination row whose key no source row of its bucket has, byte for byte.
    Each batch reads the destination first and the source after it, so a commit that changes both in
    between can only make the source row newer than the destination row it is compared with.

    :param exact_deletes: the key columns of both tables pair values alike (same type family, character
        set and collation): a source lookup then answers for the destination's collation, and a
        destination candidate is decided at once. Otherwise it is decided at once only when a source row
        pairs with it by bytes, through a destination twin, or through ``paired``; else it is deferred to
        a second sweep (``final``), when ``paired`` is complete.
    :param paired: digests of destination keys the destination's collation paired with a source key of
        other bytes (filled by source candidates, read by destination candidates).
    """

    def __init__(
        self,
        source: TableSide,
        destination: TableSide,
        findings: Findings,
        *,
        detect_deletes: bool,
        exact_deletes: bool,
        paired: set[int],
    ) -> None:
        self.source = source
        self.destination = destination
        self.findings = findings
        self.detect_deletes = detect_deletes
        self.exact_deletes = exact_deletes
        self.paired = paired
        self._in_destination = KeyMatcher(destination)
        self._in_source = KeyMatcher(source)
        self._destination_columns = [destination.column(c).name for c in destination.columns]

    def now(self) -> str:
        return str(self.source.query("SELECT NOW(6)")[0][0].decode())

    # -- source rows the destination lacks or holds otherwise -----------------------------------
    def sources(self, candidates: Sequence[tuple[Key, Pk]], tally: Tally, detected_at: str) -> None:
        """Types 1 and 2 of source candidates ``(key, primary key)``."""
        if not candidates:
            return
        keys = list(dict.fromkeys(k for k, _ in candidates))
        held = self._in_destination.rows_for(keys)  # the destination first
        if not self.exact_deletes:
            for key, matched in held.items():
                tally.paired.update(key_digest(k) for k, _ in matched if k != key)
        if self.source.pk:
            rows = self.source.rows_by_pk(list(dict.fromkeys(pk for _, pk in candidates)))
        else:
            rows = self.source.rows_by_key(keys)
        current = {}
        for row in rows:
            row_key = self.source.row_key(row)
            if row_key is not None:
                current[row_key] = row
        for key in keys:
            now = current.get(key)
            if now is None:
                tally.changed += 1  # deleted or re-keyed since it was read: the next verify sees it
                continue
            self._judge_source_row(key, now, held.get(key, []), tally, detected_at)

    def _judge_source_row(
        self,
        key: Key,
        row: dict[str, bytes | None],
        held: list[tuple[Key, Values]],
        tally: Tally,
        detected_at: str,
    ) -> None:
        if not held:
            tally.missing += 1
            tally.records.append(self.findings.record(MISSING, key, row, None, detected_at))
            return
        if len(held) > 1:
            tally.duplicate_keys += 1
        expected = self.source.values(row)
        differing = [(k, v) for k, v in held if v != expected]
        if not differing:
            if all(k != key for k, _ in held):
                tally.key_bytes_only += 1  # equal but for the key's case, spaces or accents
            else:
                tally.changed += 1  # equal now: repaired meanwhile
            return
        differing.sort(key=lambda r: r[0] != key)  # the row of the very key first, then twins
        actual = differing[0][1]
        names = [name_in(row, c) for c in self.source.columns]
        differences = {names[n]: (expected[n], actual[n]) for n in range(len(names)) if expected[n] != actual[n]}
        tally.different += 1
        tally.records.append(self.findings.record(DIFFERENT, key, row, differences, detected_at))

    # -- destination rows without a source row ----------------------------------------------------
    def destinations(self, keys: Sequence[Key], tally: Tally, detected_at: str, *, final: bool) -> None:
        """Type 3 (or only a count without ``detect_deletes``) of destination candidates."""
        if not keys:
            return
        keys = list(dict.fromkeys(keys))
        held = self._in_destination.rows_for(keys)  # the destination first
        present: dict[Key, Values] = {}
        twins: dict[Key, list[Key]] = {}
        for key in keys:
            rows = held.get(key, [])
            own = [v for k, v in rows if k == key]
            if not own:
                tally.changed += 1  # gone from the destination meanwhile
                continue
            present[key] = own[0]
            twins[key] = [k for k, _ in rows if k != key]
        if not present:
            return
        if self.exact_deletes:
            in_source = self._in_source.rows_for(list(present))
            gone = [k for k in present if not in_source.get(k)]
        else:
            asked = list(dict.fromkeys([*present, *(t for ts in twins.values() for t in ts)]))
            by_bytes = {k for k, _ in self.source.mapped_rows(asked)}
            gone = []
            for key in present:
                if key in by_bytes or any(t in by_bytes for t in twins[key]):
                    continue
                digest = key_digest(key)
                if digest in self.paired or digest in tally.paired:
                    continue
                if not final:
                    tally.deferred += 1  # a source key of other bytes may still pair with it: sweep 2 decides
                    continue
                gone.append(key)
        if not self.detect_deletes:
            tally.extra += len(gone)
            return
        for key in gone:
            row = self._destination_row(key, present[key])
            tally.deleted += 1
            tally.records.append(self.findings.record(DELETED, key, row, None, detected_at))

    def _destination_row(self, key: Key, values: Values) -> dict[str, bytes | None]:
        """The destination row sent with a type 3: its key column and compared columns (a composite key's
        parts are compared columns, so the row holds them already)."""
        if self.destination.composite:
            return dict(zip(self._destination_columns, values, strict=True))
        return dict(zip([self.destination.keys[0].name, *self._destination_columns], [key, *values], strict=True))
