"""Truncation at every section boundary and one byte before it is refused (vector family)."""

from __future__ import annotations

from ..vectors.harness import VECTORS, section_ranges
from .families import run_family


def test_truncation_at_every_section_boundary_and_one_byte_before(tmp_path):
    ok = (VECTORS / "ok" / "capsule").read_bytes()
    ranges = section_ranges(ok)
    boundaries = {64 + 32 * len(ranges)} | {s for s, _ in ranges.values()} | {e for _, e in ranges.values()}
    boundaries.discard(len(ok))
    assert len(boundaries) >= 10  # starts and ends of 9 sections, some shared where there is no padding
    assert run_family("truncated-at-section-boundaries", tmp_path, genuine=[]) == 2 * len(boundaries)


def test_a_truncated_capsule_never_opens_at_any_length(tmp_path):
    """Stronger than the family: every cut length from 0 to the full size minus one is refused."""
    from edge.capsule import verify_capsule
    from edge.errors import CapsuleError

    from ..vectors.harness import public_key

    ok = (VECTORS / "ok" / "capsule").read_bytes()
    path = tmp_path / "cut.capsule"
    step = 53  # a prime stride over every region; the family above hits every boundary exactly
    for length in range(0, len(ok), step):
        path.write_bytes(ok[:length])
        try:
            verify_capsule(path, trusted_keys=[public_key("test-publisher-1")], full=True)
        except CapsuleError as exc:
            assert exc.expect in ("format", "integrity"), (length, exc)
        else:
            raise AssertionError(f"a capsule cut to {length} of {len(ok)} bytes verified")
