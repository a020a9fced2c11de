"""Callback bodies, row versions, idempotency keys and signatures."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

MISMATCH_MISSING = 1
MISMATCH_DIFFERENT = 2
MISMATCH_DELETED = 3
MISMATCH_TYPES = (MISMATCH_MISSING, MISMATCH_DIFFERENT, MISMATCH_DELETED)

SIGNATURE_HEADER = "X-Cupid-Signature"
SIGNATURE_PREFIX = "sha256="
IDEMPOTENCY_HEADER = "Idempotency-Key"

_NULL_MARK = b"\x00"
_VALUE_MARK = b"\x01"


class PayloadError(ValueError):
    """A stored callback body that cannot be read back."""


def _framed(data: bytes) -> bytes:
    # An 8-byte length in front of every part: no two sequences of parts hash alike.
    return struct.pack(">Q", len(data)) + data


def row_version(row: Mapping[str, bytes | None]) -> str:
    """Return the sha1 hex version of a whole source row.

    Column names and values both count; NULL, ``b''`` and ``b'NULL'`` give
    different versions. Columns are taken in name order, so the version does
    not depend on the order the scan returned them in.
    """
    parts: list[bytes] = []
    for name in sorted(row):
        value = row[name]
        parts.append(_framed(name.encode("utf-8")))
        parts.append(_NULL_MARK if value is None else _VALUE_MARK + _framed(value))
    return hashlib.sha1(b"".join(parts), usedforsecurity=False).hexdigest()


def idempotency_key(config: str, destination: str, row_key: bytes, item_id: int, body_digest: bytes) -> str:
    """Return the sha256 hex key of one callback body of one store item.

    The item id names the detection episode (a re-detection after delivery is a new item), the
    digest of the body without its key names what is sent: retries of an unchanged body repeat
    the key, any other body gets another one. Persisted in the store: changing it is a migration.
    """
    digest = hashlib.sha256(b"cupid-idempotency-2")
    for part in (config.encode("utf-8"), destination.encode("utf-8"), row_key, str(int(item_id)).encode(), body_digest):
        digest.update(_framed(part))
    return digest.hexdigest()


def _is_text(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _encode(value: bytes | None, binary: bool) -> str | None:
    if value is None:
        return None
    return base64.b64encode(value).decode("ascii") if binary else value.decode("utf-8")


def _decode(value: str | None, binary: bool) -> bytes | None:
    if value is None:
        return None
    return base64.b64decode(value, validate=True) if binary else value.encode("utf-8")


@dataclass(frozen=True)
class CallbackBody:
    """A callback body and the ``Idempotency-Key`` that names it."""

    body: bytes
    idempotency_key: str


def build_body(
    *,
    config: str,
    item_id: int,
    mismatch_type: int,
    source_row: Mapping[str, bytes | None],
    destination: str,
    destination_table: str,
    key_column: str,
    row_key: bytes,
    differences: Mapping[str, tuple[bytes | None, bytes | None]] | None,
    detected_at: str,
    destination_row: Mapping[str, bytes | None] | None = None,
) -> CallbackBody:
    """Return the compact UTF-8 JSON body POSTed to the callback, and its idempotency key.

    ``type`` and ``srcColumn`` keep the original meaning: the mismatch type and
    the whole source row, every non-NULL value as a string, NULL as ``null``.
    A value that is not valid UTF-8 is sent base64-encoded and its column is
    listed in ``binaryColumns``, which is always present (``[]`` when every
    value is text). ``key`` is the source key value, encoded like
    ``srcColumn[keyColumn]`` (base64 exactly when ``keyColumn`` is listed in
    ``binaryColumns``).

    Type 2 bodies also carry ``differences``: ``{column: {"source": ...,
    "destination": ...}}`` for the differing columns only, keyed by *source*
    column name. Its source side is encoded like ``srcColumn``; a destination
    value that is not valid UTF-8 is base64 and its column is listed in
    ``binaryDestinationColumns``.

    The last field, ``idempotencyKey``, is :func:`idempotency_key` of the body
    without it: the same item and the same body always give the same key.

    :param config: the config name.
    :param item_id: the delivery store item the body is sent for.
    :param mismatch_type: 1 missing at the destination, 2 different, 3 deleted at the source.
    :param source_row: the source row as read (raw bytes, None for NULL), in column order.
    :param destination: the destination's identity (``des[].name``, or its ``desN`` label).
    :param destination_table: the destination table.
    :param key_column: the source key column (``src.byColumn``), or the reconcile's ``keyColumns`` joined by ``,``.
    :param row_key: the source key value (for composite keys, their JSON array); must equal
        ``source_row[key_column]`` when that column is in the row.
    :param differences: source column -> (source value, destination value), for type 2.
    :param detected_at: when the mismatch was first detected, source DB time.
    :param destination_row: for type 3, the destination row whose source row is gone; sent as
        ``desColumn`` (encoded like ``srcColumn``, binary columns in ``binaryDestinationColumns``).
    """
    if mismatch_type not in MISMATCH_TYPES:
        raise ValueError(f"mismatch type {mismatch_type!r} is not one of {MISMATCH_TYPES}")
    if key_column in source_row and source_row[key_column] != row_key:
        raise ValueError(f"row key {row_key!r} differs from source column {key_column!r} of the row")
    binary = [name for name, value in source_row.items() if value is not None and not _is_text(value)]
    key_binary = not _is_text(row_key)
    if key_binary and key_column not in binary:
        binary.append(key_column)
    binary_names = set(binary)
    body: dict[str, Any] = {
        "type": mismatch_type,
        "srcColumn": {name: _encode(value, name in binary_names) for name, value in source_row.items()},
        "binaryColumns": binary,
        "destination": destination,
        "destinationTable": destination_table,
        "keyColumn": key_column,
        "key": _encode(row_key, key_binary),
    }
    if mismatch_type == MISMATCH_DIFFERENT:
        body["differences"], body["binaryDestinationColumns"] = _differences(
            differences or {}, source_row, binary_names
        )
    if destination_row is not None:
        binary_destination = [n for n, v in destination_row.items() if v is not None and not _is_text(v)]
        body["desColumn"] = {n: _encode(v, n in binary_destination) for n, v in destination_row.items()}
        body["binaryDestinationColumns"] = binary_destination
    body["detectedAt"] = detected_at
    unkeyed = _dumps(body)
    key = idempotency_key(config, destination, row_key, item_id, hashlib.sha256(unkeyed).digest())
    # the key goes last: what json.dumps of the body with it would give, without serializing twice
    return CallbackBody(unkeyed[:-1] + b',"idempotencyKey":"' + key.encode("ascii") + b'"}', key)


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _differences(
    differences: Mapping[str, tuple[bytes | None, bytes | None]],
    source_row: Mapping[str, bytes | None],
    binary_source: set[str],
) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    encoded: dict[str, dict[str, str | None]] = {}
    binary_destination: list[str] = []
    for name, (source_value, destination_value) in differences.items():
        if name not in source_row or source_row[name] != source_value:
            raise ValueError(f"difference in column {name!r}: its source value is not the source row's")
        destination_binary = destination_value is not None and not _is_text(destination_value)
        if destination_binary:
            binary_destination.append(name)
        encoded[name] = {
            "source": _encode(source_value, name in binary_source),
            "destination": _encode(destination_value, destination_binary),
        }
    return encoded, binary_destination


def sign_body(body: bytes, secret: str) -> str:
    """Return the HMAC-SHA256 hex of the body; sent as ``X-Cupid-Signature: sha256=<hex>``."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_header_value(body: bytes, secret: str) -> str:
    """Return the value of the :data:`SIGNATURE_HEADER` for this body."""
    return SIGNATURE_PREFIX + sign_body(body, secret)


def verify_signature(body: bytes, secret: str, header_value: str) -> bool:
    """Tell whether a :data:`SIGNATURE_HEADER` value signs this body (what a receiver does)."""
    try:
        given = header_value.strip().encode("ascii")
    except UnicodeEncodeError:
        return False  # a signature is ASCII hex: anything else does not sign this body
    return hmac.compare_digest(signature_header_value(body, secret).encode("ascii"), given)


def source_values(body: bytes | str) -> dict[str, bytes | None]:
    """Return the source row of a callback body as raw bytes (the inverse of ``srcColumn``).

    :raises PayloadError: the body is not a callback body of this module.
    """
    try:
        document = json.loads(body)
        columns = document["srcColumn"]
        binary = set(document.get("binaryColumns") or ())
        return {name: _decode(value, name in binary) for name, value in columns.items()}
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise PayloadError(f"not a cupid callback body: {type(exc).__name__}: {exc}") from exc
