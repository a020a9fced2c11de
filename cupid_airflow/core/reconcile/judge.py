"""Judge what the compare read: types 1 and 2 from both tables' rows, type 3 after asking both tables again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DELETED, DIFFERENT, MISSING
from cupid_airflow.core.detection import differences as differences_of
from cupid_airflow.core.reconcile.findings import Differences, Finding, source_id
from cupid_airflow.core.reconcile.keys import key_digest
from cupid_airflow.core.reconcile.match import KeyMatcher

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.reconcile.keys import Key, Values
    from cupid_airflow.core.reconcile.table import TableSide

SourceRow = tuple[bytes, tuple[bytes | None, ...], bytes | None]  # key, compared values, id


@dataclass
class Tally:
    """What one batch came to; it joins the verify's counts only once its records are stored."""

    missing: int = 0
    different: int = 0
    deleted: int = 0
    extra: int = 0
    deferred: int = 0
    changed: int = 0
    key_bytes_only: int = 0
    duplicate_keys: int = 0
    paired: set[int] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)

    def size(self) -> int:
        return len(self.findings) + self.changed + self.key_bytes_only


class Judge:
    """Judges one destination's compare.

    The compare reads both tables' rows of the differing buckets in one statement each, the
    destination's from a snapshot taken before the source's statement starts: a source row is always
    read after the destination row it is compared with, so a commit that changes both in between can
    only make the source row newer. Rows are grouped by their key as the destination's collation folds
    it (``folded``); then a source row with no destination row in its group is missing, with no lookup.

    :param folded: rows are grouped by the destination collation's fold of the key (both servers compute
        it alike). Otherwise by the key's bytes, and a source row without a destination row of the same
        bytes is looked up in the destination for collation twins (:meth:`unmatched_sources`).
    :param same_pairing: the key columns of both tables pair values alike (type family, character set,
        collation): a source lookup then answers for the destination's collation.
    :param paired: without ``folded``, digests of destination keys the destination's collation paired with
        a source key of other bytes (filled by :meth:`unmatched_sources`, read by :meth:`destinations`).
    """

    def __init__(
        self,
        source: TableSide,
        destination: TableSide,
        *,
        detect_deletes: bool,
        folded: bool,
        same_pairing: bool,
        paired: set[int],
    ) -> None:
        self.source = source
        self.destination = destination
        self.detect_deletes = detect_deletes
        self.folded = folded
        self.same_pairing = same_pairing
        self.paired = paired
        self._in_destination = KeyMatcher(destination)
        self._in_source = KeyMatcher(source)
        self._source_columns = list(source.columns)
        self._destination_columns = [destination.column(c).name for c in destination.columns]

    # -- source rows -----------------------------------------------------------------------------
    def compare(self, row: SourceRow, held: Sequence[tuple[Key, Values]], tally: Tally) -> None:
        """A source row against the destination rows its key pairs with: none is type 1; one that differs
        (the row of the very key first, then twins; duplicates are all looked at) is type 2."""
        key, values, ident = row
        if not held:
            tally.missing += 1
            tally.findings.append(Finding(MISSING, key, source_id(ident), None, None))
            return
        if len(held) > 1:
            tally.duplicate_keys += 1
        differing = [(k, v) for k, v in held if v != values]
        if not differing:
            if all(k != key for k, _ in held):
                tally.key_bytes_only += 1  # equal but for the key's case, spaces or accents
                if not self.source.composite:  # a twin is type 2 naming the key, as the compare reports it
                    twin: Differences = {self.source.key_name: (key, min(k for k, _ in held))}
                    tally.different += 1
                    tally.findings.append(Finding(DIFFERENT, key, source_id(ident), twin, held[0][1]))
            return
        differing.sort(key=lambda r: r[0] != key)
        actual = differing[0][1]
        names = self._source_columns
        differences: Differences = dict(differences_of(names, values, actual))
        tally.different += 1
        tally.findings.append(Finding(DIFFERENT, key, source_id(ident), differences, actual))

    def unmatched_sources(self, rows: Sequence[SourceRow], tally: Tally) -> None:
        """Without ``folded``: source rows no destination row of the same bytes was read for. The destination
        is asked for collation twins; a row with a twin is read again from the source after that (the
        destination first), the others are missing."""
        if not rows:
            return
        held = self._in_destination.rows_for([r[0] for r in rows])
        for key, matched in held.items():
            tally.paired.update(key_digest(k) for k, _ in matched if k != key)
        twinned = [r[0] for r in rows if held.get(r[0])]
        current = {k: (k, v, i) for k, v, i in self.source.mapped_rows(twinned)} if twinned else {}
        for row in rows:
            if not held.get(row[0]):
                self.compare(row, [], tally)
            elif row[0] in current:
                self.compare(current[row[0]], held[row[0]], tally)
            else:
                tally.changed += 1  # deleted or re-keyed at the source since it was read

    # -- destination rows without a source row ------------------------------------------------------
    def destinations(self, keys: Sequence[Key], tally: Tally, *, final: bool) -> None:
        """Destination rows no source row of their group was read for: type 3 (only a count without
        ``detect_deletes``) when the source has no row for the key by bytes nor under the destination's
        collation. Both tables are asked again, the destination first."""
        if not keys:
            return
        keys = list(dict.fromkeys(keys))
        held = self._in_destination.rows_for(keys)
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
        # a source row the destination's collation pairs with the key has the key's bytes, or those of a
        # destination twin of it (a duplicate), or (read in the same group) the same fold
        asked = list(dict.fromkeys([*present, *(t for ts in twins.values() for t in ts)]))
        by_bytes = {k for k, _, _ in self.source.mapped_rows(asked)}
        unpaired = [k for k in present if k not in by_bytes and not any(t in by_bytes for t in twins[k])]
        gone: list[Key] = []
        if self.folded:
            gone = unpaired
        elif self.same_pairing:
            in_source = self._in_source.rows_for(unpaired)
            gone = [k for k in unpaired if not in_source.get(k)]
        else:
            for key in unpaired:
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
            tally.deleted += 1
            tally.findings.append(Finding(DELETED, key, None, None, self._destination_row(key, present[key])))

    def _destination_row(self, key: Key, values: Values) -> dict[str, bytes | None]:
        """The destination row of a type 3: its key column and compared columns (a composite key's parts are
        compared columns, so the row holds them already)."""
        if self.destination.composite:
            return dict(zip(self._destination_columns, values, strict=True))
        return dict(zip([self.destination.keys[0].name, *self._destination_columns], [key, *values], strict=True))
