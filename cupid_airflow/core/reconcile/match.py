"""Which rows a table's collation pairs with each requested key: the one seam the shared key matcher replaces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cupid_airflow.core.compare import loose_key
from cupid_airflow.core.reconcile.keys import loose_composite

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.reconcile.keys import Key, Values
    from cupid_airflow.core.reconcile.table import TableSide

Held = dict[bytes, list[tuple[bytes, tuple[bytes | None, ...]]]]
MAX_SINGLE_LOOKUPS = 1000  # keys per batch asked about one by one when twins cannot be told apart


class KeyMatcher:
    """Asks a table which of its rows its collation pairs with each key: the byte-equal rows (all of them:
    duplicates are kept), and rows that differ in case, trailing spaces or otherwise (collation twins).

    One ``IN (...)`` query per batch; a returned row byte-equal to no requested key is given to the
    requested key it equals loosely (case and trailing spaces), else each key still without a row is
    asked about on its own, so the server's collation decides.
    """

    def __init__(self, side: TableSide) -> None:
        self.side = side
        self._loose = loose_composite if side.composite else loose_key

    def rows_for(self, keys: Sequence[Key]) -> dict[Key, list[tuple[Key, Values]]]:
        if not keys:
            return {}
        wanted = set(keys)
        held: dict[Key, list[tuple[Key, Values]]] = {}
        twins: dict[Key, list[tuple[Key, Values]]] = {}
        for key, values, _ in self.side.mapped_rows(keys):
            (held if key in wanted else twins).setdefault(key, []).append((key, values))
        if twins:
            by_loose: dict[Key, list[tuple[Key, Values]]] = {}
            for key, twin_rows in twins.items():
                by_loose.setdefault(self._loose(key), []).extend(twin_rows)
            claimed: set[Key] = set()
            for key in keys:
                rows = by_loose.get(self._loose(key))
                if rows:
                    held.setdefault(key, []).extend(rows)
                    claimed.update(k for k, _ in rows)
            unclaimed = [k for k in twins if k not in claimed]
            if unclaimed:  # twins by the collation's own rules (accents, expansions): ask key by key
                for key in [k for k in keys if k not in held][:MAX_SINGLE_LOOKUPS]:
                    single = [(k, v) for k, v, _ in self.side.mapped_rows([key])]
                    if single:
                        held[key] = single
        return held
