"""Every byte of header, table, manifest, signatures and stanzas flipped; random flips in video and index.

Each family is defined by its vector's EXPECT (tests/vectors/README.md). A flipped byte must give
a capsule error of the expected class, never another exception and never a silent success; text
read from a capsule whose MP4 was altered is either refused or the genuine text.
"""

from __future__ import annotations

import pytest

from .families import genuine_texts, run_family

FAMILIES = {
    "flip-header-and-table": 2 * (64 + 10 * 32),
    "flip-manifest": None,
    "flip-signatures": None,
    "flip-stanzas": None,
    "flip-stanzas-resigned": None,
    "flip-video": 24,
    "flip-index": 72,
    "flip-index-resigned": 72,
}


@pytest.fixture(scope="module")
def genuine():
    return genuine_texts()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_flip_family_is_refused(family, tmp_path, genuine):
    n = run_family(family, tmp_path, genuine)
    if FAMILIES[family] is not None:
        assert n == FAMILIES[family]
    assert n >= 24
