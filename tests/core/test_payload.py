"""Tests for callback bodies, row versions, idempotency keys and signatures."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.payload import (
    MISMATCH_DIFFERENT,
    MISMATCH_MISSING,
    PayloadError,
    build_body,
    idempotency_key,
    row_version,
    sign_body,
    signature_header_value,
    source_values,
    verify_signature,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

INVALID_UTF8 = b"\xff\xfe\x00\x81binary"


def _body(source_row: Mapping[str, bytes | None], **overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "mismatch_type": MISMATCH_MISSING,
        "source_row": source_row,
        "destination": "des0",
        "destination_table": "user_copy",
        "key_column": "id",
        "row_key": source_row.get("id", b"7"),
        "differences": None,
        "detected_at": "2025-01-02T03:04:05.000006+00:00",
        "config": "user",
        "item_id": 41,
    }
    arguments.update(overrides)
    return build_body(**arguments).body


def test_null_empty_and_null_text_stay_distinct() -> None:
    row = {"id": b"7", "a": None, "b": b"", "c": b"NULL"}
    document = json.loads(_body(row))
    assert document["srcColumn"] == {"id": "7", "a": None, "b": "", "c": "NULL"}
    assert document["binaryColumns"] == []
    versions = {row_version({"id": b"7", "a": value}) for value in (None, b"", b"NULL")}
    assert len(versions) == 3


def test_original_fields_and_extras() -> None:
    body = _body({"id": b"7", "name": b"Ann"})
    document = json.loads(body)
    assert list(document) == [
        "type",
        "srcColumn",
        "binaryColumns",
        "destination",
        "destinationTable",
        "keyColumn",
        "key",
        "detectedAt",
        "idempotencyKey",
    ]
    assert document["type"] == 1
    assert document["destination"] == "des0"
    assert document["destinationTable"] == "user_copy"
    assert document["keyColumn"] == "id"
    assert document["key"] == "7"
    assert document["detectedAt"] == "2025-01-02T03:04:05.000006+00:00"
    assert len(document["idempotencyKey"]) == 64
    assert b" " not in body


def test_source_column_order_is_kept() -> None:
    row = {"zeta": b"1", "id": b"7", "alpha": b"2"}
    assert list(json.loads(_body(row))["srcColumn"]) == ["zeta", "id", "alpha"]


def test_emoji_and_unicode_are_sent_as_text() -> None:
    row = {"id": b"7", "name": "Zoë 🐱 王".encode()}
    body = _body(row)
    assert json.loads(body)["srcColumn"]["name"] == "Zoë 🐱 王"
    assert "🐱".encode() in body


def test_invalid_utf8_is_base64_and_listed() -> None:
    row = {"id": b"7", "blob": INVALID_UTF8, "name": b"ok"}
    document = json.loads(_body(row))
    assert document["binaryColumns"] == ["blob"]
    assert base64.b64decode(document["srcColumn"]["blob"]) == INVALID_UTF8
    assert document["srcColumn"]["name"] == "ok"


def test_binary_key_follows_key_column_encoding() -> None:
    row = {"id": INVALID_UTF8, "name": b"ok"}
    document = json.loads(_body(row, row_key=INVALID_UTF8))
    assert document["binaryColumns"] == ["id"]
    assert base64.b64decode(document["key"]) == INVALID_UTF8


def test_row_key_must_match_the_row() -> None:
    with pytest.raises(ValueError, match="row key"):
        _body({"id": b"7"}, row_key=b"8")


def test_differences_use_source_column_names() -> None:
    row = {"id": b"7", "name": b"Ann", "blob": INVALID_UTF8, "note": None}
    differences = {"name": (b"Ann", b"Anne"), "blob": (INVALID_UTF8, b"x"), "note": (None, b"\xc3")}
    document = json.loads(_body(row, mismatch_type=MISMATCH_DIFFERENT, differences=differences))
    assert document["type"] == 2
    assert document["differences"] == {
        "name": {"source": "Ann", "destination": "Anne"},
        "blob": {"source": base64.b64encode(INVALID_UTF8).decode(), "destination": "x"},
        "note": {"source": None, "destination": base64.b64encode(b"\xc3").decode()},
    }
    assert document["binaryColumns"] == ["blob"]
    assert document["binaryDestinationColumns"] == ["note"]


def test_difference_source_value_must_be_the_rows() -> None:
    with pytest.raises(ValueError, match="name"):
        _body({"id": b"7", "name": b"Ann"}, mismatch_type=2, differences={"name": (b"Bob", b"Ann")})


def test_unknown_mismatch_type_is_refused() -> None:
    with pytest.raises(ValueError, match="mismatch type"):
        _body({"id": b"7"}, mismatch_type=4)


def test_row_version_is_stable_and_changes_with_any_value() -> None:
    row = {"id": b"7", "name": b"Ann", "note": None}
    version = row_version(row)
    assert len(version) == 40
    assert row_version(dict(row)) == version
    assert row_version({"note": None, "name": b"Ann", "id": b"7"}) == version
    assert row_version({**row, "name": b"Anne"}) != version
    assert row_version({**row, "note": b""}) != version
    assert row_version({**row, "extra": None}) != version


def test_row_version_is_unambiguous() -> None:
    assert row_version({"ab": b"c"}) != row_version({"a": b"bc"})
    assert row_version({"a": b"b", "c": b""}) != row_version({"a": b"", "c": b"b"})
    assert row_version({"a": b"\x00"}) != row_version({"a": None})


def test_idempotency_key_is_stable_and_distinct() -> None:
    digest = b"\x01" * 32
    key = idempotency_key("user", "des0", b"7", 41, digest)
    assert len(key) == 64
    assert idempotency_key("user", "des0", b"7", 41, digest) == key
    others = {
        idempotency_key("user", "des1", b"7", 41, digest),
        idempotency_key("users", "des0", b"7", 41, digest),
        idempotency_key("user", "des0", b"8", 41, digest),
        idempotency_key("user", "des0", b"7", 42, digest),
        idempotency_key("user", "des0", b"7", 41, b"\x02" * 32),
        idempotency_key("use", "rdes0", b"7", 41, digest),
        idempotency_key("user", "des", b"07", 41, digest),
    }
    assert key not in others
    assert len(others) == 7


def test_the_key_names_the_body_and_the_item() -> None:
    row = {"id": b"7", "name": b"Ann"}
    first = build_body(
        config="user",
        item_id=41,
        mismatch_type=1,
        source_row=row,
        destination="des0",
        destination_table="user_copy",
        key_column="id",
        row_key=b"7",
        differences=None,
        detected_at="t",
    )
    again = build_body(
        config="user",
        item_id=41,
        mismatch_type=1,
        source_row=dict(row),
        destination="des0",
        destination_table="user_copy",
        key_column="id",
        row_key=b"7",
        differences=None,
        detected_at="t",
    )
    newer = build_body(
        config="user",
        item_id=41,
        mismatch_type=1,
        source_row={**row, "name": b"Anne"},
        destination="des0",
        destination_table="user_copy",
        key_column="id",
        row_key=b"7",
        differences=None,
        detected_at="t",
    )
    redetected = build_body(
        config="user",
        item_id=42,
        mismatch_type=1,
        source_row=row,
        destination="des0",
        destination_table="user_copy",
        key_column="id",
        row_key=b"7",
        differences=None,
        detected_at="t",
    )
    assert first == again
    document = json.loads(first.body)
    assert document["idempotencyKey"] == first.idempotency_key
    assert first.body == json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    assert len({first.idempotency_key, newer.idempotency_key, redetected.idempotency_key}) == 3


# Persisted formats: a change to any of these values is a migration of every store (see docs/architecture.md).
def test_row_version_known_value() -> None:
    assert row_version({"id": b"7", "name": "Zoë".encode(), "note": None}) == "6692cb522e5478276fd75ec05e22fcdf89dca0f4"
    # a column name's case and an empty value count too
    mixed = {"id": b"7", "name": "Zoë".encode(), "note": None, "Avatar": b""}
    assert row_version(mixed) == "134d62b1c5c48e05f8213a7db65375f8b3876774"


def test_idempotency_key_known_value() -> None:
    key = idempotency_key("user", "des0", b"u-7", 41, bytes(range(32)))
    assert key == "6a094dc21425d09e2899c1c8d4cb3ca1130b89aca922f5f63a8a44a03743c613"


def test_key_hash_known_values() -> None:
    from cupid_airflow.core.detection import key_hash

    # a single key's hash is plain sha256, which the 0.1 store migration computes in SQL (SHA2)
    assert key_hash(b"u-7").hex() == "bf9023e0fc14f272cb98cf9d5c5f3e5cc4dc81206799b0b977c681738d7308b3"
    composite = key_hash(b'["a",null]', ("a", "b")).hex()
    assert composite == "afc9703cd474669ff0b0ab8886c68c5436cf14011d6d1d55985ce8f00d25bd8f"


def test_a_signature_header_that_is_not_ascii_does_not_verify() -> None:
    body = _body({"id": b"7"})
    assert not verify_signature(body, "s3cret", "sha256=é" + "0" * 63)


def test_signature_verifies_and_detects_tampering() -> None:
    body = _body({"id": b"7"})
    header = signature_header_value(body, "s3cret")
    assert header == "sha256=" + sign_body(body, "s3cret")
    assert verify_signature(body, "s3cret", header)
    assert not verify_signature(body + b" ", "s3cret", header)
    assert not verify_signature(body, "other", header)


def test_source_values_round_trip() -> None:
    row = {
        "id": b"7",
        "name": "Zoë 🐱".encode(),
        "blob": INVALID_UTF8,
        "empty": b"",
        "null_text": b"NULL",
        "null": None,
        "newline": b"a\nb\x00c",
    }
    body = _body(row)
    assert source_values(body) == row
    assert list(source_values(body.decode("utf-8"))) == list(row)


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"srcColumn": [1]}', b"[]"])
def test_source_values_refuses_foreign_bodies(body: bytes) -> None:
    with pytest.raises(PayloadError, match="not a cupid callback body"):
        source_values(body)
