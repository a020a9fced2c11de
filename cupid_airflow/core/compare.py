"""Compare source rows with one destination: missing rows are type 1, different rows type 2."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter, ne
from typing import TYPE_CHECKING, Any, cast

from cupid_airflow.core.sql import quote_identifier, quote_table

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

MISSING = 1
DIFFERENT = 2
DELETED = 3

Value = bytes | None


@dataclass(frozen=True)
class DestinationSpec:
    """What the compare needs of one destination.

    :param columns: source column -> destination column; only these are compared.
    """

    name: str
    table: str
    by_column: str
    columns: dict[str, str]


@dataclass
class Difference:
    """One source row that does not match a destination."""

    index: int  # position in the source batch
    type: int
    differences: dict[str, tuple[Value, Value]] = field(default_factory=dict)
    actual: tuple[Value, ...] | None = None  # the destination's mapped values (type 2)


class DestinationReader:
    """Looks up a batch of keys in a destination with one ``IN (...)`` query."""

    def __init__(self, spec: DestinationSpec, source_columns: Sequence[str]) -> None:
        self.spec = spec
        # positions, in the source batch's value tuples, of each mapped source column
        self.source_columns = list(spec.columns)
        value_index = [list(source_columns).index(c) for c in self.source_columns]
        if value_index == list(range(len(source_columns))):
            self._expected: Callable[[tuple[Value, ...]], tuple[Value, ...]] = _same
        elif len(value_index) == 1:
            only = value_index[0]
            self._expected = lambda row: (row[only],)
        else:
            self._expected = itemgetter(*value_index)
        destination_columns = [spec.columns[c] for c in self.source_columns]
        self._sql = (
            f"SELECT {quote_identifier(spec.by_column)}, {', '.join(map(quote_identifier, destination_columns))} "
            f"FROM {quote_table(spec.table)} WHERE {quote_identifier(spec.by_column)} IN "
        )

    def lookup(self, conn: Any, keys: Sequence[bytes]) -> dict[bytes, tuple[Value, ...]]:
        """Destination rows for the given keys: key -> mapped values, in the spec's column order."""
        if not keys:
            return {}
        cursor = conn.cursor()
        cursor.execute(self._sql.encode() + conn.literal(tuple(keys)))
        return {row[0]: row[1:] for row in cursor.fetchall()}

    def compare(
        self,
        keys: Sequence[Value],
        values: Sequence[tuple[Value, ...]],
        found: dict[bytes, tuple[Value, ...]],
        skip: Sequence[bool] | None = None,
    ) -> list[Difference]:
        """Mismatches of a source batch against what the destination holds.

        Keys are matched byte for byte; when the destination's collation
        matched a key that differs in case or trailing spaces, the row is
        compared with it instead of being reported missing.
        """
        expected_of = self._expected
        # a NULL source key is looked up too (and found nowhere); it is skipped below
        get = cast("Callable[[Value], tuple[Value, ...] | None]", found.get)
        # most rows match: find the candidates with map/compress, which run in C, then look at those only
        wanted: Iterable[tuple[Value, ...]] = values if expected_of is _same else map(expected_of, values)
        candidates = list(compress(range(len(keys)), map(ne, map(get, keys), wanted)))
        mismatches: list[Difference] = []
        loose: dict[bytes, tuple[Value, ...]] | None = None
        for i in candidates:
            key = keys[i]
            if key is None or (skip is not None and skip[i]):
                continue
            expected = expected_of(values[i])
            actual = get(key)
            if actual is None:
                if loose is None:
                    # rows the destination's collation matched to a key that differs in case or spaces
                    extra = found.keys() - set(keys)
                    loose = {loose_key(k): found[k] for k in extra}
                actual = loose.get(loose_key(key)) if loose else None
                if actual is None:
                    mismatches.append(Difference(i, MISSING))
                    continue
            if actual != expected:
                mismatches.append(
                    Difference(
                        i,
                        DIFFERENT,
                        {
                            column: (expected[n], actual[n])
                            for n, column in enumerate(self.source_columns)
                            if expected[n] != actual[n]
                        },
                        actual,
                    )
                )
        return mismatches


def _same(row: tuple[Value, ...]) -> tuple[Value, ...]:
    return row


def loose_key(key: bytes) -> bytes:
    """A key as a case-insensitive, trailing-space-padding collation sees it (for pairing collation twins)."""
    return key.rstrip(b" ").lower()
