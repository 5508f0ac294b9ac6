"""Every concrete vector through open_capsule, verify_capsule(full=True) / its operation, and the CLI.

Mutation families (EXPECT ``mutate:``) run in ``tests/corruption/``. The EXPECT format is
defined in ``tests/vectors/README.md``; every MUST of ``edge/FORMAT.md`` cites vectors, and
``test_every_must_cites_existing_vectors`` keeps the two together.
"""

from __future__ import annotations

import io
import re

import pytest

from edge import format as fmt

from .harness import VECTORS, Expect, capsule_bytes, run_cli, run_library, section_ranges, vector_dirs

CONCRETE = vector_dirs(families=False)
FAMILIES = vector_dirs(families=True)
FORMAT_MD = VECTORS.parents[1] / "edge" / "FORMAT.md"
#: Vectors allowed to exceed the size budget, and why.
LARGE = {"recipients-too-many": "1025 stanzas are the point",
         **{name: "a binary-codes index needs 64 projected coordinates: PROJ is 50 KB of float16 axes"
            for name in ("ok-binary-codes", "codes-wrong-length-resigned", "manifest-codes-dim-not-whole-words",
                         "manifest-codes-without-projection", "codes-in-format-1-2")}}
WORDS = {"ok", "format", "integrity", "signature", "decryption", "expired", "not-yet-valid", "rollback", "rule",
         "frame", "model", "over-budget", "trust", "genuine", "delta-base", "store"}


def test_there_are_vectors_and_families():
    assert len(CONCRETE) >= 90 and len(FAMILIES) >= 8


@pytest.mark.parametrize("vector", CONCRETE, ids=[v.name for v in CONCRETE])
def test_vector_through_the_library(vector, tmp_path):
    expect = Expect.read(vector / "EXPECT")
    path = tmp_path / "capsule"
    path.write_bytes(capsule_bytes(vector))
    opened, final = run_library(vector, path)
    assert opened in expect.open_words(), (opened, expect.get("comment"))
    assert final in expect.words(), (final, expect.get("comment"))


@pytest.mark.parametrize("vector", CONCRETE, ids=[v.name for v in CONCRETE])
def test_vector_through_the_cli(vector, tmp_path, monkeypatch, capsys):
    expect = Expect.read(vector / "EXPECT")
    path = tmp_path / "vector.capsule"
    path.write_bytes(capsule_bytes(vector))
    assert run_cli(vector, path, tmp_path, monkeypatch, capsys) in expect.words(), expect.get("comment")


def test_every_expect_file_uses_known_keys_and_words():
    keys = {"expect", "open", "read", "now", "trusted_keys", "root_keys", "installed_trust", "threshold", "identity",
            "passphrase", "hardware_id", "floor", "installed", "operation", "repeat", "budget_bytes", "base",
            "patch", "truncate", "append", "mutate", "segment", "store", "store_quota_bytes", "first_hit", "comment"}
    for vector in CONCRETE + FAMILIES:
        expect = Expect.read(vector / "EXPECT")
        assert set(expect.fields) <= keys, (vector.name, set(expect.fields) - keys)
        assert expect.words() <= WORDS and expect.open_words() <= WORDS, vector.name
        assert expect.get("comment"), vector.name


def test_every_must_cites_existing_vectors():
    text = FORMAT_MD.read_text()
    names = {v.name for v in CONCRETE + FAMILIES}
    blocks = re.split(r"\n\s*\n|\n(?=\| )|\n(?=- )", text)
    n_musts = 0
    for block in blocks:
        if "MUST" not in block or "The key words MUST" in block or "Every MUST names" in block:
            continue
        n_musts += 1
        cited = [n.strip() for m in re.finditer(r"\[vectors:([^\]]*)\]", block) for n in m.group(1).split(",")]
        assert cited, f"a MUST without vectors: {block[:200]!r}"
        missing = [n for n in cited if n not in names]
        assert not missing, (missing, block[:120])
    assert n_musts >= 40


def test_vectors_are_tiny_and_have_two_to_five_frames():
    for vector in CONCRETE:
        data = capsule_bytes(vector)
        if vector.name not in LARGE:
            assert len(data) <= 40 * 1024, (vector.name, len(data))  # 4-8 KiB of it is LEXI
    ok = (VECTORS / "ok" / "capsule").read_bytes()
    start, end = section_ranges(ok)["FTAB"]
    assert 2 <= (end - start) // fmt.FRAME_ENTRY_BYTES <= 5


def test_ok_vector_video_is_a_standard_mp4_that_ffmpeg_plays():
    import av

    ok = (VECTORS / "ok" / "capsule").read_bytes()
    start, end = section_ranges(ok)["VIDE"]
    with av.open(io.BytesIO(ok[start:end])) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == (section_ranges(ok)["FTAB"][1] - section_ranges(ok)["FTAB"][0]) // 16
    assert frames[0].width == frames[0].height == 80
