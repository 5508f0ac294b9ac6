"""Oversized lengths and counts are refused before anything sized by them is allocated.

Python's allocations (bytes, NumPy arrays) are traced with ``tracemalloc`` while each oversized
vector is refused; the peak must stay far below what the field asks for.
"""

from __future__ import annotations

import tracemalloc

import pytest

from edge.capsule import open_capsule

from ..vectors.harness import VECTORS, Expect, capsule_bytes, identities, outcome, trusted_keys

#: vector -> what the field would make a naive reader allocate or do
OVERSIZED = {
    "header-n-sections-huge": "a 2^32-entry section table (128 GiB)",
    "header-file-bytes-huge": "a 2^63-byte file",
    "table-mani-length-over-limit": "a 5 MiB manifest read",
    "table-vide-length-huge": "a 2^62-byte video",
    "recipients-too-many": "1025 key unwraps",
    "stanza-scrypt-log-n-too-big": "scrypt with 1 GiB of memory",
    "docs-decompression-bomb": "a 64 MiB document list",
}
PEAK_LIMIT_BYTES = 4 << 20  # hashing the model file reads 1 MiB blocks before DOCS is opened


def _peak_while(fn) -> tuple[str, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        word = outcome(fn)
        return word, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(OVERSIZED))
def test_oversized_field_is_refused_before_allocation(name, tmp_path):
    vector = VECTORS / name
    expect = Expect.read(vector / "EXPECT")
    path = tmp_path / "capsule"
    path.write_bytes(capsule_bytes(vector))
    word, peak = _peak_while(lambda: open_capsule(path, trusted_keys=trusted_keys(expect),
                                                  identities=identities(expect), now=expect.now).close())
    assert word in expect.words()
    assert peak < PEAK_LIMIT_BYTES, f"{name}: peak {peak} bytes while refusing {OVERSIZED[name]}"


def test_frame_decompression_bomb_is_refused_within_the_plaintext_bound(tmp_path):
    vector = VECTORS / "frame-decompression-bomb"
    expect = Expect.read(vector / "EXPECT")
    with open_capsule(vector / "capsule", trusted_keys=trusted_keys(expect), identities=identities(expect),
                      now=expect.now) as capsule:
        word, peak = _peak_while(lambda: capsule.read(0, now=expect.now))
        limit = capsule.manifest.max_plaintext_bytes
    assert word == "format"
    assert peak < 4 * limit  # the payload inflates to 1 MiB; at most the 64 KiB bound is ever produced
