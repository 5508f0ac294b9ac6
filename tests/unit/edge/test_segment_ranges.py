"""The range arithmetic behind tombstones (FORMAT.md §4.7), against brute-force sets."""

from __future__ import annotations

import random

from edge.chunk_ranges import complement, in_ranges, intersect, merge_ranked, overlaps
from firmware_tools.delta import merge_ranges


def _random_ranges(rng: random.Random, n: int = 60) -> list[tuple[int, int]]:
    points = sorted(rng.sample(range(n), rng.randrange(0, 12) * 2))
    return [(points[i], points[i + 1]) for i in range(0, len(points), 2)]


def _members(ranges) -> set[int]:
    return {x for lo, hi in ranges for x in range(lo, hi)}


def test_intersect_complement_membership_and_overlap_match_sets():
    rng = random.Random(1)
    for _ in range(2000):
        a, b = _random_ranges(rng), _random_ranges(rng)
        assert _members(intersect(a, b)) == _members(a) & _members(b)
        assert _members(complement(a, 60)) == set(range(60)) - _members(a)
        value = rng.randrange(60)
        assert in_ranges(a, value) == (value in _members(a))
        start = rng.randrange(60)
        end = rng.randrange(start, 61)
        assert overlaps(a, start, end) == bool(_members(a) & set(range(start, end)))


def test_merge_ranges_sorts_and_joins_overlapping_and_touching_ranges():
    rng = random.Random(2)
    for _ in range(1000):
        ranges = [(s, s + rng.randrange(0, 6)) for s in (rng.randrange(50) for _ in range(rng.randrange(8)))]
        merged = merge_ranges(ranges)
        assert _members(merged) == _members(ranges)
        assert all(a[1] < b[0] for a, b in zip(merged, merged[1:]))  # sorted, disjoint, not touching
        assert all(lo < hi for lo, hi in merged)


def test_merged_rankings_keep_the_best_n_by_score_and_segment_order_on_ties():
    merged = merge_ranked([([1, 2], [0.9, 0.5]), ([10, 11], [0.7, 0.5])], 3)
    assert merged == ([1, 10, 2], [0.9, 0.7, 0.5])
    assert merge_ranked([([3], [0.1])], 5) == ([3], [0.1])


def test_ranking_past_tombstones_fetches_by_the_dead_share_and_returns_the_best_live():
    from types import SimpleNamespace

    from edge.opened import Capsule

    rng = random.Random(3)
    for _ in range(300):
        total = rng.randrange(1, 400)
        dead = _random_ranges(rng, total) if total > 24 else []
        live = complement(dead, total)
        part = SimpleNamespace(manifest=SimpleNamespace(n_chunks=total), _n_dead=total - len(_members(live)),
                               _live=live)
        order = list(range(total))
        rng.shuffle(order)  # the ranking: chunk ids best first
        asked: list[int] = []

        def rank(m):
            asked.append(m)
            return order[:m], [-i for i in range(min(m, total))]

        n = rng.randrange(1, 30)
        ids, _ = Capsule._past_tombstones(part, rank, n)
        assert ids == [c for c in order if c in _members(live)][:n]
        assert asked[-1] <= total
