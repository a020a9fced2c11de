"""What the compare and the reconcile record: one detected mismatch of one key at one destination."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

Value = bytes | None

SYNC = "sync"
RECONCILE = "reconcile"


@dataclass(frozen=True)
class Detection:
    """A key of the source that does not match a destination, as first seen.

    Only what identifies the mismatch is kept: the body sent later is built from the rows as they
    are at send time, so nothing here can make us send an old row.

    :param destination: the destination's identity.
    :param key: the source key's raw bytes; for a composite key, :func:`composite_key` of its parts.
    :param key_columns: the source key columns of a composite key; empty for ``src.byColumn``.
    :param type: 1 missing at the destination, 2 different, 3 deleted at the source.
    :param source_id: the source row's id (a hint for finding the row again), if it has one.
    :param differences: source column -> (source value, destination value), as seen (type 2).
    :param origin: ``sync`` or ``reconcile``.
    """

    config: str
    destination: str
    key: bytes
    type: int
    source_id: int | None = None
    differences: Mapping[str, tuple[Value, Value]] | None = None
    key_columns: tuple[str, ...] = ()
    origin: str = SYNC


def key_hash(key: bytes, key_columns: Sequence[str] = ()) -> bytes:
    """The store's fixed-size name of a key (``sha256``); a composite key's columns are part of it.

    Persisted in the store (the unique live-item index): changing it is a migration.
    """
    if not key_columns:
        return hashlib.sha256(key).digest()
    return hashlib.sha256(b"\x00composite\x00" + ",".join(key_columns).encode("utf-8") + b"\x00" + key).digest()


def composite_key(parts: Sequence[Value]) -> bytes:
    """A composite key as stored (``row_key``) and sent (``key``): the compact JSON array of its parts,
    UTF-8. A part is its text, NULL is ``null``, a part that is not UTF-8 is ``{"base64": "..."}``;
    so the encoding is unambiguous and the same parts always give the same bytes."""
    items: list[str | dict[str, str] | None] = []
    for part in parts:
        if part is None:
            items.append(None)
            continue
        try:
            items.append(part.decode("utf-8"))
        except UnicodeDecodeError:
            items.append({"base64": base64.b64encode(part).decode("ascii")})
    return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def composite_parts(key: bytes) -> tuple[Value, ...]:
    """The parts of a :func:`composite_key`."""
    parts: list[Value] = []
    for item in json.loads(key):
        if item is None:
            parts.append(None)
        elif isinstance(item, dict):
            parts.append(base64.b64decode(item["base64"]))
        else:
            parts.append(str(item).encode("utf-8"))
    return tuple(parts)


def column_names(row: Iterable[str], wanted: Iterable[str]) -> dict[str, str]:
    """Each wanted column's spelling in the row (MySQL column names are case-insensitive).

    :raises KeyError: naming a wanted column the row does not have.
    """
    spelled = {name.lower(): name for name in row}
    names = {}
    for column in wanted:
        if column.lower() not in spelled:
            raise KeyError(f"column {column!r} is not in the row (it has {', '.join(spelled.values())})")
        names[column] = spelled[column.lower()]
    return names


def differences(
    columns: Sequence[str], source: Sequence[Value], destination: Sequence[Value]
) -> dict[str, tuple[Value, Value]]:
    """Source column -> (source value, destination value) for the mapped columns that differ."""
    return {c: (source[n], destination[n]) for n, c in enumerate(columns) if source[n] != destination[n]}


def differences_json(found: Mapping[str, tuple[Value, Value]] | None) -> dict[str, Any] | None:
    """Differences as JSON for the store and the UI: text as is, other bytes as ``{"base64": ...}``."""
    if not found:
        return None
    return {column: {"source": _text(s), "destination": _text(d)} for column, (s, d) in found.items()}


def _text(value: Value) -> str | dict[str, str] | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}
