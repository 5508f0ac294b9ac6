"""The payload zstd level is a build parameter: any level gives a capsule the runtime reads the
same; a lower one trades bytes for packing time (firmware_tools/sealing.py, PAYLOAD_ZSTD_LEVEL)."""

from __future__ import annotations

import pytest

from edge import open_capsule

from ...conftest import FAQ_DOCS, build_test_capsule, run_cli


def test_a_lower_level_packs_more_bytes_and_reads_the_same_text(tmp_path):
    fast = build_test_capsule(FAQ_DOCS, tmp_path / "fast.capsule", keys_dir=tmp_path / "keys", zstd_level=3)
    small = build_test_capsule(FAQ_DOCS, tmp_path / "small.capsule", keys_dir=tmp_path / "keys")
    assert fast.result.payload_bytes > small.result.payload_bytes
    texts = []
    for built in (fast, small):
        with open_capsule(built.path, trusted_keys=[built.publisher_key.public_key()],
                          identities=[built.device_key]) as capsule:
            texts.append([hit.text for hit in capsule.export()])
    assert texts[0] == texts[1] and len(texts[0]) == small.result.n_chunks


@pytest.mark.parametrize("level", [0, 23])
def test_a_level_outside_zstd_range_is_refused(tmp_path, level):
    with pytest.raises(ValueError, match="zstd_level"):
        build_test_capsule(FAQ_DOCS, tmp_path / "x.capsule", keys_dir=tmp_path / "keys", zstd_level=level)
    proc = run_cli("firmware_tools", "build", str(FAQ_DOCS), "-o", str(tmp_path / "y.capsule"),
                   "--zstd-level", str(level), "--signing-key", "k", "--recipient", "r", "--expires", "+1d")
    assert proc.returncode == 2 and "--zstd-level" in proc.stderr and "Traceback" not in proc.stderr
