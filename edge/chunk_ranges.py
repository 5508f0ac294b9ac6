"""Sorted, disjoint half-open chunk-id ranges ``[(start, end), ...]``: what document filters and
tombstones select (FORMAT.md §4.7), and the merge of per-segment rankings.

Pure functions over small lists; ``Capsule`` uses them to filter ANN and BM25 candidates.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def merge_ranked(rankings: Sequence[tuple[list[int], list[float]]], n: int) -> tuple[list[int], list[float]]:
    """Merge per-segment rankings by score, descending (stable: ties keep segment order); the best ``n``."""
    if len(rankings) == 1:
        return rankings[0]
    merged = sorted(((c, s) for ids, scores in rankings for c, s in zip(ids, scores)), key=lambda item: -item[1])[:n]
    return [c for c, _ in merged], [s for _, s in merged]


def complement(ranges: Sequence[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """``[0, n)`` minus sorted disjoint ``ranges``."""
    out, cursor = [], 0
    for start, end in ranges:
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < n:
        out.append((cursor, n))
    return out


def in_ranges(ranges: Sequence[tuple[int, int]], value: int) -> bool:
    """Whether ``value`` lies in one of the sorted, disjoint ``ranges`` (binary search)."""
    i = bisect.bisect_right(ranges, (value, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= value < ranges[i][1]


def overlaps(ranges: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    """Whether ``[start, end)`` meets any of the sorted, disjoint ``ranges``."""
    return start < end and any(lo < end and start < hi for lo, hi in ranges)


def intersect(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges in both ``a`` and ``b`` (each sorted and disjoint)."""
    a, b = sorted(a), sorted(b)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):  # one merge walk: O(len(a) + len(b))
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out
