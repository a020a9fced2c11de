"""The late-commit gap tracker, as pure logic: what a scan reveals, what a re-read fills, expiry, cap, storage."""

from __future__ import annotations

import json
import random

import pytest

from cupid_airflow.core.gaps import GapTracker, merged_ranges, missing_ranges, seen_time


@pytest.mark.parametrize(
    ("previous", "ids", "expected"),
    [
        (10, [11, 12, 13], []),
        (10, [], []),
        (10, [12, 13], [(11, 11)]),
        (10, [11, 15, 16, 20], [(12, 14), (17, 19)]),
        (-(2**63) - 1, [-5], [(-(2**63), -6)]),
        (0, [1_000_000_007, 2_000_000_014], [(1, 1_000_000_006), (1_000_000_008, 2_000_000_013)]),
    ],
)
def test_missing_ranges(previous: int, ids: list[int], expected: list[tuple[int, int]]) -> None:
    assert missing_ranges(previous, ids) == expected


def test_missing_ranges_agree_with_a_set_difference() -> None:
    rng = random.Random(7)
    for _ in range(200):
        ids = sorted(rng.sample(range(1, 400), rng.randint(1, 120)))
        previous = rng.randint(-5, ids[0] - 1)
        expected = sorted(set(range(previous + 1, ids[-1] + 1)) - set(ids))
        got = [i for lo, hi in missing_ranges(previous, ids) for i in range(lo, hi + 1)]
        assert got == expected


def test_observe_merges_adjacent_gaps_keeping_the_later_time() -> None:
    tracker = GapTracker()
    tracker.observe(10, [12, 14], 100.0)
    tracker.observe(14, [16], 105.0)
    tracker.observe(16, [17], 110.0)
    assert tracker.gaps == [(11, 11, 100.0), (13, 13, 100.0), (15, 15, 105.0)]
    tracker.add(16, 16, 90.0)  # adjacent to 15: one range, as long as the later time
    assert tracker.gaps[-1] == (15, 16, 105.0)
    with pytest.raises(ValueError, match="not above"):
        tracker.add(5, 6, 1.0)


def test_fill_splits_ranges_and_counts_only_ids_that_were_missing() -> None:
    tracker = GapTracker([(10, 20, 1.0), (30, 30, 2.0), (40, 45, 3.0)])
    assert tracker.fill([5, 10, 15, 16, 20, 25, 30, 44]) == 6
    assert tracker.gaps == [(11, 14, 1.0), (17, 19, 1.0), (40, 43, 3.0), (45, 45, 3.0)]
    assert tracker.fill([]) == 0
    assert tracker.fill([1000]) == 0
    assert len(tracker) == 4


def test_fill_agrees_with_a_set_model() -> None:
    rng = random.Random(11)
    for _ in range(200):
        tracker = GapTracker()
        previous = 0
        model: set[int] = set()
        for _ in range(3):
            ids = sorted(rng.sample(range(previous + 1, previous + 60), rng.randint(1, 30)))
            model |= set(range(previous + 1, ids[-1] + 1)) - set(ids)
            tracker.observe(previous, ids, 1.0)
            previous = ids[-1]
        found = sorted(rng.sample(range(0, previous + 5), rng.randint(0, 40)))
        assert tracker.fill(found) == len(model & set(found))
        model -= set(found)
        assert {i for lo, hi, _ in tracker.gaps for i in range(lo, hi + 1)} == model
        probe = sorted(rng.sample(range(0, previous + 5), 30))
        assert tracker.holds(probe) == [i in model for i in probe]


def test_expire_forgets_gaps_at_least_late_commit_second_old() -> None:
    tracker = GapTracker([(1, 1, 100.0), (3, 3, 105.0), (5, 5, 105.5)])
    assert tracker.expire(110.0, 5) == 2
    assert tracker.ranges() == [(5, 5)]
    assert tracker.expire(0.0, 5) == 0


def test_trim_drops_the_lowest_gaps() -> None:
    tracker = GapTracker([(i, i, 1.0) for i in range(0, 20, 2)])
    dropped = tracker.trim(3)
    assert [g[0] for g in dropped] == [0, 2, 4, 6, 8, 10, 12]
    assert tracker.ranges() == [(14, 14), (16, 16), (18, 18)]
    assert tracker.trim(3) == []


def test_forget_from_cuts_a_gap_that_straddles_the_start() -> None:
    tracker = GapTracker([(1, 5, 1.0), (8, 12, 2.0), (20, 30, 3.0)])
    tracker.forget_from(10)
    assert tracker.gaps == [(1, 5, 1.0), (8, 9, 2.0)]


def test_json_round_trip_is_compact_and_exact() -> None:
    gaps = [
        (-(2**63), -1, 1764600000.123),
        (11, 11, 1764600000.123),
        (16, 18, 1764600000.123),
        (2**64 - 3, 2**64 - 2, 1764600001.5),
        (2**64 - 1, 2**64 - 1, 1764600000.123),
    ]
    tracker = GapTracker(gaps)
    data = tracker.to_json()
    assert data == {
        "firstSeen": [1764600000.123, 1764600001.5],
        "ranges": f"{-(2**63)}+{2**63 - 1},12,5+2,{2**64 - 3 - 18}+1@1,1@0",
    }
    again = GapTracker.from_json(json.loads(json.dumps(data, indent=2)))
    assert again.gaps == gaps
    assert again.to_json() == data
    assert GapTracker().to_json() is None
    assert len(GapTracker.from_json(None)) == 0
    assert len(json.dumps(GapTracker([(i, i, 1.0) for i in range(0, 30000, 10)]).to_json())) < 4 * 3000


@pytest.mark.parametrize(
    "data",
    [
        {"ranges": "1"},
        {"firstSeen": [1.0], "ranges": "1,0"},
        {"firstSeen": [1.0], "ranges": "1,x"},
        {"firstSeen": [1.0], "ranges": "1@3"},
    ],
)
def test_unreadable_gaps_name_the_fix(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="remove the key"):
        GapTracker.from_json(data)


def test_seen_time_rounds_up_to_the_millisecond() -> None:
    assert seen_time(100.0001) == 100.001
    assert seen_time(100.001) == 100.001


def test_merged_ranges_is_the_union() -> None:
    a = GapTracker([(1, 3, 1.0), (10, 10, 1.0)])
    b = GapTracker([(2, 5, 1.0), (11, 12, 1.0), (20, 20, 1.0)])
    assert merged_ranges([a, b]) == [(1, 5), (10, 12), (20, 20)]
