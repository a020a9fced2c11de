"""Match keys of a reconcile: composite keys, column kinds, and literals a column compares with exactly."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cupid_airflow.core.compare import loose_key
from cupid_airflow.core.detection import composite_key, composite_parts

if TYPE_CHECKING:
    from collections.abc import Sequence

Key = bytes
Pk = tuple[bytes, ...]
Values = tuple[bytes | None, ...]

INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
NUMBER_TYPES = {"decimal", "numeric", "float", "double", "real"}
BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit"}
TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}
_INTEGER_RE = re.compile(rb"^-?[0-9]+$")
_NUMBER_RE = re.compile(rb"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")


@dataclass(frozen=True)
class Column:
    """A column as information_schema describes it."""

    name: str
    data_type: str
    column_type: str
    charset: str | None
    collation: str | None
    nullable: bool

    def shape(self) -> list[str | None]:
        """What a checkpoint depends on: a changed type, charset or collation starts the verify over."""
        return [self.name.lower(), self.column_type, self.charset, self.collation]


def numeric_literal(column: Column, value: bytes) -> str | None:
    """``value`` as a literal of a non-text column; None when the column cannot hold it (no row can match),
    and the empty string when a quoted text literal is what the column compares with exactly."""
    if column.data_type in INTEGER_TYPES:
        if not _INTEGER_RE.match(value) or len(value) > 21:
            return None
        return str(int(value))
    if column.data_type in NUMBER_TYPES and _NUMBER_RE.match(value):
        return value.decode("ascii")
    if column.data_type in BINARY_TYPES:
        return f"X'{value.hex()}'"
    return ""


def same_pairing(ours: Sequence[Column], theirs: Sequence[Column]) -> bool:
    """Whether two key columns (or tuples) pair values alike: both integers, or the same type family with
    the same character set and collation. Then a lookup in one table answers for the other's collation."""
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs, strict=True):
        if a.data_type in INTEGER_TYPES and b.data_type in INTEGER_TYPES:
            continue
        family_a = "text" if a.data_type in TEXT_TYPES else a.data_type
        family_b = "text" if b.data_type in TEXT_TYPES else b.data_type
        if family_a != family_b or a.charset != b.charset or a.collation != b.collation:
            return False
    return True


def loose_composite(key: Key) -> Key:
    """:func:`loose_key` of each part of a composite key."""
    return composite_key([None if p is None else loose_key(p) for p in composite_parts(key)])


def key_digest(key: Key) -> int:
    """A 64-bit digest of a key, for sets of keys kept in a checkpoint."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
