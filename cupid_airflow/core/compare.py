"""Compare source rows with one destination: missing rows are type 1, different rows type 2."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter, ne
from typing import TYPE_CHECKING, Any, cast

from cupid_airflow.core.detection import differences
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


UNREPRESENTABLE_ERRORS = frozenset({1267, 1270, 1271, 1300, 1366})
"""MySQL errors of a lookup whose key the destination column's character set cannot hold."""

TWIN_QUERY_KEYS = 200


@dataclass
class Lookup:
    """What a destination holds for a list of requested keys.

    :param rows: requested key -> the destination's mapped values, for every requested key the
        destination holds: byte for byte, or a *twin* its key collation matches (case, accents,
        width, trailing spaces).
    :param twins: requested key -> the destination's key, where the two differ in bytes.
    :param unrepresentable: requested keys the destination's key column cannot hold (its
        character set lacks a character); such a row cannot exist there.
    """

    rows: dict[bytes, tuple[Value, ...]] = field(default_factory=dict)
    twins: dict[bytes, bytes] = field(default_factory=dict)
    unrepresentable: list[bytes] = field(default_factory=list)


class DestinationReader:
    """Looks up a batch of keys in a destination with one ``IN (...)`` query.

    :param source_columns: the compared source columns, in the order of the value tuples given to
        :meth:`compare` (each destination compares the ones it maps).
    :param key_column: the source key column, named in the differences of a twin.
    """

    def __init__(self, spec: DestinationSpec, source_columns: Sequence[str], key_column: str = "key") -> None:
        self.spec = spec
        self.key_column = key_column
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
        by = quote_identifier(spec.by_column)
        self._table = quote_table(spec.table)
        self._by = by
        mapped = ", ".join(map(quote_identifier, destination_columns))
        self._sql = f"SELECT {by}, {mapped} FROM {self._table} WHERE {by} IN "

    def lookup(self, conn: Any, keys: Sequence[bytes]) -> Lookup:
        """The destination rows of the given keys, matched the way the destination's key collation matches.

        A key the destination's character set cannot hold fails the ``IN`` query for the whole
        batch; the batch is then split until that key is alone, and it is reported in
        ``unrepresentable`` (not found) while every other key is looked up.
        """
        result = Lookup()
        if not keys:
            return result
        found = self._rows(conn, list(keys), result.unrepresentable)
        requested = set(keys)
        rows = result.rows
        for key in keys:
            values = found.get(key)
            if values is not None:
                rows[key] = values
        if len(rows) < len(found) and len(rows) < len(requested):
            self._pair_twins(conn, [k for k in keys if k not in rows], found.keys() - requested, found, result)
        return result

    def _rows(self, conn: Any, keys: list[bytes], unrepresentable: list[bytes]) -> dict[bytes, tuple[Value, ...]]:
        cursor = conn.cursor()
        try:
            cursor.execute(self._sql.encode() + conn.literal(tuple(keys)))
        except Exception as err:
            if _error_code(err) not in UNREPRESENTABLE_ERRORS:
                raise
            if len(keys) == 1:
                unrepresentable.append(keys[0])
                return {}
            middle = len(keys) // 2
            return {
                **self._rows(conn, keys[:middle], unrepresentable),
                **self._rows(conn, keys[middle:], unrepresentable),
            }
        return {row[0]: row[1:] for row in cursor.fetchall()}

    def _pair_twins(
        self,
        conn: Any,
        unmatched: list[bytes],
        extra: set[bytes],
        found: dict[bytes, tuple[Value, ...]],
        result: Lookup,
    ) -> None:
        """Ask the destination which of its keys its collation matches to each unmatched requested key.

        Keys whose loose form (case-folded, accents and trailing spaces dropped) equals an extra
        key's are asked first; the rest only while some extra key is still unexplained.
        """
        loose_extra = {loose_key(k) for k in extra}
        likely = [k for k in unmatched if loose_key(k) in loose_extra]
        rest = [k for k in unmatched if loose_key(k) not in loose_extra]
        explained: set[bytes] = set()
        for group in (likely, rest):
            for start in range(0, len(group), TWIN_QUERY_KEYS):
                if explained >= extra:
                    return
                for requested, held in self._twin_query(conn, group[start : start + TWIN_QUERY_KEYS]):
                    if held in found and requested not in result.rows:
                        result.rows[requested] = found[held]
                        result.twins[requested] = held
                        explained.add(held)

    def _twin_query(self, conn: Any, keys: list[bytes]) -> list[tuple[bytes, bytes]]:
        parts = [
            b"SELECT " + str(n).encode() + b", " + self._by.encode() + b" FROM " + self._table.encode()
            + b" WHERE " + self._by.encode() + b" = " + conn.literal(key)
            for n, key in enumerate(keys)
        ]
        cursor = conn.cursor()
        try:
            cursor.execute(b" UNION ALL ".join(parts))
        except Exception as err:
            if _error_code(err) not in UNREPRESENTABLE_ERRORS:
                raise
            return [pair for key in keys for pair in self._twin_query_one(conn, key)]
        return [(keys[int(n)], held) for n, held in cursor.fetchall()]

    def _twin_query_one(self, conn: Any, key: bytes) -> list[tuple[bytes, bytes]]:
        cursor = conn.cursor()
        try:
            cursor.execute(f"SELECT {self._by} FROM {self._table} WHERE {self._by} = ".encode() + conn.literal(key))
        except Exception as err:
            if _error_code(err) not in UNREPRESENTABLE_ERRORS:
                raise
            return []
        return [(key, row[0]) for row in cursor.fetchall()]

    def compare(
        self,
        keys: Sequence[Value],
        values: Sequence[tuple[Value, ...]],
        found: Lookup,
        skip: Sequence[bool] | None = None,
    ) -> list[Difference]:
        """Mismatches of a source batch against what the destination holds.

        A row the destination holds under a twin key (equal under its collation, different in
        bytes) is type 2, and its differences name the key.
        """
        expected_of = self._expected
        rows = found.rows
        # a NULL source key is looked up too (and found nowhere); it is skipped below
        get = cast("Callable[[Value], tuple[Value, ...] | None]", rows.get)
        # most rows match: find the candidates with map/compress, which run in C, then look at those only
        wanted: Iterable[tuple[Value, ...]] = values if expected_of is _same else map(expected_of, values)
        candidates = list(compress(range(len(keys)), map(ne, map(get, keys), wanted)))
        if found.twins:
            twins = found.twins
            candidates = sorted({*candidates, *(i for i, k in enumerate(keys) if k in twins)})
        mismatches: list[Difference] = []
        for i in candidates:
            key = keys[i]
            if key is None or (skip is not None and skip[i]):
                continue
            expected = expected_of(values[i])
            actual = get(key)
            if actual is None:
                mismatches.append(Difference(i, MISSING))
                continue
            differing = differences(self.source_columns, expected, actual)
            held = found.twins.get(key)
            if held is not None:
                differing[self.key_column] = (key, held)
            if differing:
                mismatches.append(Difference(i, DIFFERENT, differing, actual))
        return mismatches


def _same(row: tuple[Value, ...]) -> tuple[Value, ...]:
    return row


def _error_code(err: BaseException) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def loose_key(key: bytes) -> bytes:
    """A key with case, accents, width and trailing spaces dropped: a first guess at collation twins.

    Only a guess (collations differ: ``ß`` is ``s`` in one and ``ss`` in another); the destination
    server decides which keys are twins.
    """
    text = key.decode("utf-8", "replace").rstrip(" ")
    folded = unicodedata.normalize("NFKD", text).casefold()
    return "".join(c for c in folded if not unicodedata.combining(c)).encode("utf-8")
