"""Late commits below the insert cursor: the id gaps not yet seen, each with the time it was first seen.

An auto-increment id is taken when a transaction inserts, and becomes visible when it commits:
a scan can see id 12 while id 11 is still uncommitted. Every range of ids missing below the
highest id seen is a *gap*, remembered with the source clock (UTC epoch seconds) of the read that
revealed it. Each run reads the gaps again through the id index; the ids found fill them (and
are compared); a gap is forgotten once a read that started ``lateCommitSecond`` or more after it
was first seen has looked at it (rolled-back inserts and deleted rows leave gaps that never fill).

Guarantee: a row whose transaction commits within ``lateCommitSecond`` of its gap being first
seen is compared, whatever the run length, the number of runs or the id spacing. The number of
gaps is capped; beyond the cap the lowest gaps are dropped and counted.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from itertools import compress, repeat
from operator import ne, sub
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

Gap = tuple[int, int, float]  # (lowest id, highest id, first seen as UTC epoch seconds)
_RANGE = re.compile(r"^(-?\d+)(?:\+(\d+))?(?:@(\d+))?$")


def _lo(gap: Gap) -> int:
    return gap[0]


def missing_ranges(previous: int, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Ranges of ids absent between ``previous`` (the highest id already seen) and ``ids`` (ascending, unique)."""
    n = len(ids)
    if not n or ids[-1] - previous == n:  # dense from previous + 1: the common case, checked in O(1)
        return []
    out: list[tuple[int, int]] = []
    if ids[0] > previous + 1:
        out.append((previous + 1, ids[0] - 1))
    if ids[-1] - ids[0] != n - 1:
        # positions i where ids[i] - ids[i - 1] != 1, found by map/compress in C
        jumps = compress(range(1, n), map(ne, map(sub, ids[1:], ids), repeat(1)))
        out.extend((ids[i - 1] + 1, ids[i] - 1) for i in jumps)
    return out


class GapTracker:
    """The gaps of one destination, sorted by id and disjoint."""

    def __init__(self, gaps: Iterable[Gap] = ()) -> None:
        self._gaps: list[Gap] = sorted(gaps)

    def __len__(self) -> int:
        return len(self._gaps)

    @property
    def gaps(self) -> list[Gap]:
        return list(self._gaps)

    def ranges(self) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi, _ in self._gaps]

    def add(self, lo: int, hi: int, seen: float) -> None:
        """Remember ids ``lo..hi`` as missing since ``seen``; they lie above every gap already known."""
        if lo > hi:
            return
        if self._gaps:
            last_lo, last_hi, last_seen = self._gaps[-1]
            if lo <= last_hi:
                raise ValueError(f"gap {lo}..{hi} is not above the last gap {last_lo}..{last_hi}")
            if lo == last_hi + 1:  # adjacent: one range, kept as long as the later of the two
                self._gaps[-1] = (last_lo, hi, max(last_seen, seen))
                return
        self._gaps.append((lo, hi, seen))

    def observe(self, previous: int, ids: Sequence[int], seen: float) -> None:
        """Record the gaps a scan revealed: ``ids`` were read after ``previous`` (the highest id seen so far)."""
        for lo, hi in missing_ranges(previous, ids):
            self.add(lo, hi, seen)

    def fill(self, ids: Sequence[int]) -> int:
        """Remove ids that were found (ascending); return how many of them were in a gap."""
        if not ids or not self._gaps:
            return 0
        gaps = self._gaps
        start = max(0, bisect_right(gaps, ids[0], key=_lo) - 1)
        end = bisect_right(gaps, ids[-1], key=_lo)
        kept: list[Gap] = []
        filled = 0
        k = 0
        n = len(ids)
        for lo, hi, seen in gaps[start:end]:
            while k < n and ids[k] < lo:
                k += 1
            cursor = lo
            while k < n and ids[k] <= hi:
                if ids[k] > cursor:
                    kept.append((cursor, ids[k] - 1, seen))
                cursor = ids[k] + 1
                filled += 1
                k += 1
            if cursor <= hi:
                kept.append((cursor, hi, seen))
        gaps[start:end] = kept
        return filled

    def holds(self, ids: Sequence[int]) -> list[bool]:
        """For each id (ascending): whether it lies in a gap."""
        out = [False] * len(ids)
        if not ids or not self._gaps:
            return out
        gaps = self._gaps
        g = max(0, bisect_right(gaps, ids[0], key=_lo) - 1)
        for i, value in enumerate(ids):
            while g < len(gaps) and gaps[g][1] < value:
                g += 1
            if g == len(gaps):
                break
            out[i] = gaps[g][0] <= value
        return out

    def expire(self, clock: float, late_commit_second: float) -> int:
        """Forget gaps first seen ``late_commit_second`` or more before ``clock``; return how many.

        ``clock`` must be a source time taken *before* a read that looked at every gap.
        """
        kept = [g for g in self._gaps if clock - g[2] < late_commit_second]
        expired = len(self._gaps) - len(kept)
        self._gaps = kept
        return expired

    def trim(self, limit: int) -> list[Gap]:
        """Keep at most ``limit`` gaps, dropping the lowest; return the dropped ones."""
        excess = len(self._gaps) - limit
        if excess <= 0:
            return []
        dropped = self._gaps[:excess]
        del self._gaps[:excess]
        return dropped

    def forget_from(self, start: int) -> None:
        """Forget ids ``start`` and above (a rescan from ``start`` finds its gaps again)."""
        kept = [g for g in self._gaps if g[0] < start]
        if kept and kept[-1][1] >= start:
            lo, _, seen = kept[-1]
            kept[-1] = (lo, start - 1, seen)
        self._gaps = kept

    # -- in the cursor ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any] | None:
        """The gaps for the cursor Variable: distinct first-seen times, and the ranges as one compact string.

        Each comma-separated range is its distance from the previous range's end (the first
        range: its first id), then ``+n`` when it spans n more ids, then ``@k`` when it was first
        seen at ``firstSeen[k]`` and the previous range was not (the first range: unless k is 0).
        ``{"firstSeen": [1764600000.123, 1764600001.5], "ranges": "11,5+2,10@1"}`` is id 11 and
        ids 16..18 first seen at the first time, id 28 at the second. About 3 bytes per gap
        (Airflow writes JSON Variables indented, one line per list item: a string stays one line).
        """
        if not self._gaps:
            return None
        times = sorted({seen for _, _, seen in self._gaps})
        index = {t: n for n, t in enumerate(times)}
        tokens: list[str] = []
        previous: int | None = None
        previous_k = 0
        for lo, hi, seen in self._gaps:
            k = index[seen]
            token = str(lo if previous is None else lo - previous)
            if hi != lo:
                token += f"+{hi - lo}"
            if k != previous_k:
                token += f"@{k}"
            tokens.append(token)
            previous, previous_k = hi, k
        return {"firstSeen": times, "ranges": ",".join(tokens)}

    @classmethod
    def from_json(cls, data: Any) -> GapTracker:
        """The tracker stored by :meth:`to_json` (``None`` or ``{}`` for none)."""
        if not data:
            return cls()
        try:
            times = [float(t) for t in data["firstSeen"]]
            gaps: list[Gap] = []
            previous: int | None = None
            k = 0
            for n, token in enumerate(str(data["ranges"]).split(",")):
                match = _RANGE.match(token.strip())
                if match is None:
                    raise ValueError(f"range {n} is {token!r}")
                step = int(match.group(1))
                if previous is not None and step < 1:
                    raise ValueError(f"range {n} is out of order")
                lo = step if previous is None else previous + step
                hi = lo + int(match.group(2) or 0)
                k = int(match.group(3)) if match.group(3) is not None else k
                gaps.append((lo, hi, times[k]))
                previous = hi
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(
                f"the cursor's 'gaps' cannot be read ({err}); remove the key to start without gaps"
            ) from None
        return cls(gaps)


def seen_time(epoch: float) -> float:
    """A first-seen time as stored: rounded *up* to the millisecond, so a gap never expires early."""
    return math.ceil(epoch * 1000) / 1000


def merged_ranges(trackers: Iterable[GapTracker]) -> list[tuple[int, int]]:
    """The union of several trackers' gaps, sorted and merged."""
    ranges = sorted(r for tracker in trackers for r in tracker.ranges())
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged
