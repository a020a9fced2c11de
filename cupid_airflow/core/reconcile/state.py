"""The state of one verify, as a checkpoint holds it: a small JSON document and a small compressed blob."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
import time
import zlib
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cupid_airflow.core.reconcile.keys import Pk

FORMAT_VERSION = 2

CHECKSUM = "checksum"
COMPARE = "compare"
DONE = "done"
SOURCE = "source"
DESTINATION = "destination"
SIDES = (SOURCE, DESTINATION)
FOUND = ("missing", "different", "deleted", "extra")
GROUPS = 1 << 32  # the compare's group numbers: CRC32 of the folded key


def fingerprint(source: dict[str, Any], destination: dict[str, Any], options: dict[str, Any]) -> str:
    """What a checkpoint was made for: both tables' shapes (columns, types, collations) and the options
    that change what a verify finds. A checkpoint with another fingerprint is never resumed."""
    shape = {"source": source, "destination": destination, "options": options, "formatVersion": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


@dataclass
class SideProgress:
    """How far one table's checksum pass is: rows up to primary key ``last`` are summed."""

    last: Pk | None = None
    done: bool = False
    rows: int = 0
    chunks: int = 0
    chunk_size: int = 0
    null_keys: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "last": None if self.last is None else [base64.b64encode(v).decode("ascii") for v in self.last],
            "done": self.done,
            "rows": self.rows,
            "chunks": self.chunks,
            "chunkSize": self.chunk_size,
            "nullKeys": self.null_keys,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SideProgress:
        last = data.get("last")
        return cls(
            last=None if last is None else tuple(base64.b64decode(v) for v in last),
            done=bool(data["done"]),
            rows=int(data["rows"]),
            chunks=int(data["chunks"]),
            chunk_size=int(data["chunkSize"]),
            null_keys=int(data["nullKeys"]),
        )


@dataclass
class Verify:
    """One full verify of one destination, possibly spread over several runs.

    The checksum phase sums both tables into one pair of arrays: per hash bucket, source rows minus
    destination rows (``counts``) and the XOR of every row hash of both (``xors``); a bucket is equal
    when both are zero. The compare phase reads the rows of the differing buckets (a bitmap) in one
    ordered pass per table, sorted by the key as the destination's collation folds it, in the ranges of
    ``CRC32`` of that fold that start at ``ranges``: range ``range_index``, fold ``position`` onwards.
    Sweep 1 judges every candidate; sweep 2 (only when needed) decides the destination rows sweep 1 had
    to defer, once ``paired`` (digests of destination keys the destination's collation paired with a
    source key of other bytes) is complete.
    """

    fingerprint: str
    started_at: str
    buckets: int
    method: str
    phase: str = CHECKSUM
    sides: dict[str, SideProgress] = field(default_factory=lambda: {s: SideProgress() for s in SIDES})
    counts: array[int] = field(default_factory=lambda: array("i"))
    xors: array[int] = field(default_factory=lambda: array("Q"))
    differing: bytearray = field(default_factory=bytearray)
    differing_buckets: int = 0
    ranges: list[int] = field(default_factory=lambda: [0])
    sweep: int = 1
    range_index: int = 0
    position: bytes | None = None
    deferred: int = 0
    paired: set[int] = field(default_factory=set)
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FOUND, 0))
    recorded: int = 0
    runs: int = 0

    @classmethod
    def start(cls, fingerprint: str, started_at: str, buckets: int, method: str, chunk_size: int) -> Verify:
        verify = cls(fingerprint, started_at, buckets, method)
        for progress in verify.sides.values():
            progress.chunk_size = chunk_size
        verify.counts = array("i", bytes(4 * buckets))
        verify.xors = array("Q", bytes(8 * buckets))
        return verify

    # -- the compare phase's buckets ----------------------------------------------------------
    def begin_compare(self, max_compare_rows: int) -> None:
        """Turn the bucket sums into the bitmap of differing buckets; the compare phase (or done). The ordered
        reads cover one range of buckets, or several when the differing buckets of the larger table hold more
        than ``max_compare_rows`` rows."""
        counts, xors = self.counts, self.xors
        bitmap = bytearray((self.buckets + 7) // 8)
        differing = 0
        for bucket in range(self.buckets):
            if counts[bucket] or xors[bucket]:
                bitmap[bucket >> 3] |= 1 << (bucket & 7)
                differing += 1
        self.differing, self.differing_buckets = bitmap, differing
        self.counts, self.xors = array("i"), array("Q")
        rows = max(s.rows for s in self.sides.values()) * differing // max(1, self.buckets)
        parts = max(1, -(-rows // max(1, max_compare_rows)))
        self.ranges = [GROUPS * n // parts for n in range(parts)]
        self.sweep, self.range_index, self.position = 1, 0, None
        self.phase = COMPARE if differing else DONE

    def differs(self, bucket: int) -> bool:
        return bool(self.differing[bucket >> 3] & (1 << (bucket & 7)))

    def differing_in(self, start: int, end: int) -> list[int]:
        return [b for b in range(start, end) if self.differing[b >> 3] & (1 << (b & 7))]

    # -- checkpoint form ----------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        return {
            "formatVersion": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "startedAt": self.started_at,
            "buckets": self.buckets,
            "hash": self.method,
            "phase": self.phase,
            "sides": {n: s.to_json() for n, s in self.sides.items()},
            "differingBuckets": self.differing_buckets,
            "ranges": self.ranges,
            "sweep": self.sweep,
            "rangeIndex": self.range_index,
            "position": None if self.position is None else self.position.hex(),
            "deferred": self.deferred,
            "found": self.found,
            "recorded": self.recorded,
            "runs": self.runs,
        }

    def blob(self) -> bytes:
        """The bucket sums (checksum phase) or the differing bitmap and paired keys (compare phase), compressed."""
        if self.phase == CHECKSUM:
            sections = {"counts": _little(self.counts), "xors": _little(self.xors)}
        else:
            sections = {"differing": bytes(self.differing), "paired": _little(array("Q", sorted(self.paired)))}
        packed = b"".join(_frame(name.encode()) + _frame(data) for name, data in sections.items())
        return zlib.compress(packed, 6)

    @classmethod
    def restore(cls, state: dict[str, Any], blob: bytes | None) -> Verify:
        """A verify from its checkpoint; raises KeyError, ValueError, TypeError or zlib.error when unreadable."""
        buckets = int(state["buckets"])
        verify = cls(str(state["fingerprint"]), str(state["startedAt"]), buckets, str(state["hash"]))
        verify.phase = str(state["phase"])
        verify.sides = {n: SideProgress.from_json(state["sides"][n]) for n in SIDES}
        verify.differing_buckets = int(state["differingBuckets"])
        verify.ranges = [int(r) for r in state["ranges"]]
        verify.sweep = int(state["sweep"])
        verify.range_index = int(state["rangeIndex"])
        verify.position = None if state["position"] is None else bytes.fromhex(state["position"])
        verify.deferred = int(state["deferred"])
        verify.found = {k: int(state["found"][k]) for k in FOUND}
        verify.recorded = int(state["recorded"])
        verify.runs = int(state["runs"])
        sections = _sections(zlib.decompress(blob or b""))
        if verify.phase == CHECKSUM:
            verify.counts = _from_little("i", sections["counts"], buckets)
            verify.xors = _from_little("Q", sections["xors"], buckets)
        elif verify.phase == COMPARE:
            verify.differing = bytearray(sections["differing"])
            if len(verify.differing) != (buckets + 7) // 8:
                raise ValueError("the differing-bucket bitmap does not fit the bucket count")
            verify.paired = set(_from_little("Q", sections["paired"], None))
        return verify

    def progress(self) -> dict[str, Any]:
        """A small summary for the progress Variable."""
        return {
            "phase": self.phase,
            "verifyStartedAt": self.started_at,
            "buckets": self.buckets,
            "rows": {n: s.rows for n, s in self.sides.items()},
            "checksumDone": {n: s.done for n, s in self.sides.items()},
            "differingBuckets": self.differing_buckets if self.phase != CHECKSUM else None,
            "sweep": self.sweep,
            "found": dict(self.found),
            "recorded": self.recorded,
            "runs": self.runs,
            "updatedAt": time.strftime("%Y-%m-%d %H:%M:%S"),
        }


def _little(values: array[int]) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    copy = array(values.typecode, values)
    copy.byteswap()
    return copy.tobytes()


def _from_little(typecode: str, data: bytes, length: int | None) -> array[int]:
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    if length is not None and len(values) != length:
        raise ValueError(f"checkpoint holds {len(values)} buckets, expected {length}")
    return values


def _frame(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _sections(data: bytes) -> dict[str, bytes]:
    frames, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        frames.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return {frames[i].decode(): frames[i + 1] for i in range(0, len(frames), 2)}
