"""What the delivery store's rows hold: detections as stored, items, claims and attempts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.detection import Detection, differences_json, key_hash

if TYPE_CHECKING:
    from collections.abc import Sequence

PENDING = "pending"
PARKED = "parked"
DELIVERED = "delivered"
RESOLVED = "resolved"
DEAD = "dead"
SUPERSEDED = "superseded"  # only items of a 0.1 store that a newer live item of their key replaced
STATUSES = (PENDING, PARKED, DELIVERED, RESOLVED, DEAD, SUPERSEDED)
LIVE_STATUSES = (PENDING, PARKED)
UNDELIVERED = (PENDING, PARKED, DEAD)

LIVE = 1  # the item is pending or parked
POISONED = 2  # dead when recorded (the store cannot hold it as it is); one per key, like a live item

KEY_CAP = 65535  # bytes of a key the store keeps; a longer key is recorded dead, cut, with its hash
DIFFERENCES_CAP = 16384  # bytes of the detection's differences (JSON) kept; longer ones are dropped
BODY_CAP = 65536  # bytes of a sent body kept on its attempt; the rest is cut (attempt.body_cut)
ERROR_CAP = 1024


@dataclass(frozen=True)
class RecordOutcome:
    """What one :meth:`DeliveryStore.record` did.

    :param new: items created.
    :param superseded: live items a newer detection of their key updated in place.
    :param reduced: detections stored without their differences (too big, or refused as they were).
    :param dead: detections the store could not hold (e.g. a key over 64 KiB), stored dead with the reason.
    """

    new: int = 0
    superseded: int = 0
    reduced: int = 0
    dead: int = 0

    def __add__(self, other: RecordOutcome) -> RecordOutcome:
        return RecordOutcome(
            self.new + other.new,
            self.superseded + other.superseded,
            self.reduced + other.reduced,
            self.dead + other.dead,
        )


def counted(rows: int, affected: int) -> tuple[int, int]:
    """New and superseded items of an ``INSERT … ON DUPLICATE KEY UPDATE`` of ``rows`` rows: MySQL counts 1 per
    inserted row and 2 per updated one."""
    superseded = max(0, affected - rows)
    return rows - superseded, superseded


def recorded(kinds: Sequence[str], affected: int) -> RecordOutcome:
    """What recording rows of these kinds (:func:`stored_form`'s) came to, by the rows the server affected."""
    new, superseded = counted(len(kinds), affected)
    dead = kinds.count("dead")
    return RecordOutcome(max(0, new - dead), superseded, kinds.count("reduced"), dead)


@dataclass(frozen=True)
class ClaimedItem:
    """A live item under this dispatcher's claim."""

    id: int
    destination: str
    row_key: bytes
    key_columns: tuple[str, ...]
    type: int
    source_id: int | None
    status: str
    attempts: int
    detected_at: str


@dataclass(frozen=True)
class Claim:
    """A batch of items claimed with one token until a lease runs out.

    :param valid_until: ``time.monotonic()`` before which the lease surely holds (measured from
        before the claim was asked for, less a margin); no POST may start that could outlive it.
    """

    token: bytes
    items: list[ClaimedItem]
    valid_until: float


@dataclass(frozen=True)
class Attempt:
    """One POST that was started, and how it ended."""

    item_id: int
    ok: bool
    type: int
    idempotency_key: str
    version: str
    body: bytes
    http_status: int | None
    error: str | None
    elapsed_second: float
    retry_after_second: float | None = None


@dataclass(frozen=True)
class StoredItem:
    """An item as the failure-pool command and page show it."""

    id: int
    config: str
    destination: str
    row_key: bytes
    key_columns: tuple[str, ...]
    type: int
    origin: str
    source_id: int | None
    status: str
    revision: int
    attempts: int
    claimed: bool
    idempotency_key: str | None
    last_http_status: int | None
    last_error: str | None
    note: str | None
    differences: dict[str, Any] | None
    detected_at: str
    queued_at: str
    updated_at: str
    delivered_at: str | None


ITEM_COLUMNS = (
    "id, config, destination, row_key, key_columns, type, origin, source_id, status, revision, attempts,"
    " claimed_until IS NOT NULL AND claimed_until >= NOW(6), idempotency_key, last_http_status, last_error, note,"
    " differences, detected_at, queued_at, updated_at, delivered_at"
)


def stored_form(detection: Detection, poison: str | None = None) -> tuple[tuple[Any, ...], str]:
    """The row to insert for a detection, and whether it is ``full``, ``reduced`` or ``dead``."""
    key = detection.key
    differences: bytes | None = None
    notes: list[str] = []
    kind = "full"
    if poison is None and len(key) > KEY_CAP:
        poison = f"key of {len(key)} bytes is longer than {KEY_CAP} bytes: kept cut, with the whole key's hash"
    if poison is None:
        document = differences_json(detection.differences)
        if document is not None:
            differences = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            if len(differences) > DIFFERENCES_CAP:
                notes.append(f"differences of {len(differences)} bytes not kept (over {DIFFERENCES_CAP})")
                differences, kind = None, "reduced"
    else:
        notes.append(poison)
        kind = "dead"
    source_id = detection.source_id
    if source_id is not None and not -(10**20) < source_id < 10**20:
        notes.append(f"source id {source_id} not kept (over 20 digits)")
        source_id = None
        kind = "reduced" if kind == "full" else kind
    dead = kind == "dead"
    row = (
        detection.config,
        detection.destination,
        key_hash(key, detection.key_columns),
        key[:KEY_CAP],
        ",".join(detection.key_columns) or None,
        detection.type,
        detection.origin,
        source_id,
        differences,
        "; ".join(notes)[:ERROR_CAP] or None,
        DEAD if dead else PENDING,
        POISONED if dead else LIVE,
    )
    return row, kind


def stored_item(r: tuple[Any, ...]) -> StoredItem:
    def text(value: bytes | None) -> str | None:
        return None if value is None else value.decode("utf-8", "replace")

    return StoredItem(
        id=int(r[0]),
        config=r[1].decode(),
        destination=r[2].decode(),
        row_key=r[3],
        key_columns=split_columns(r[4]),
        type=int(r[5]),
        origin=r[6].decode(),
        source_id=None if r[7] is None else int(r[7]),
        status=r[8].decode(),
        revision=int(r[9]),
        attempts=int(r[10]),
        claimed=bool(int(r[11] or 0)),
        idempotency_key=text(r[12]),
        last_http_status=None if r[13] is None else int(r[13]),
        last_error=text(r[14]),
        note=text(r[15]),
        differences=None if r[16] is None else json.loads(r[16]),
        detected_at=r[17].decode(),
        queued_at=r[18].decode(),
        updated_at=r[19].decode(),
        delivered_at=text(r[20]),
    )


def split_columns(value: bytes | None) -> tuple[str, ...]:
    return tuple(value.decode().split(",")) if value else ()
