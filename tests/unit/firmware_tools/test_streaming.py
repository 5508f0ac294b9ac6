"""Streaming build pieces: spool files, the embedding cache, rebuilds from the cache."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_tools._spool import ByteSpool, VectorSpool

from ...conftest import ROOT, TINY_DOCS, build_test_capsule


def test_byte_spool_reads_back_items_slices_and_steps(tmp_path):
    spool = ByteSpool(tmp_path / "s")
    items = [bytes([i]) * (i % 7) for i in range(100)]
    for item in items:
        spool.append(item)
    spool.close_writing()
    assert len(spool) == 100 and spool.n_bytes == sum(map(len, items))
    assert spool[5] == items[5] and spool[-1] == items[-1]
    assert spool[10:20] == items[10:20] and spool[::9] == items[::9] and spool[50:40] == []
    assert list(spool) == items
    with pytest.raises(IndexError):
        spool[100]


def test_vector_spool_maps_rows_back(tmp_path):
    spool = VectorSpool(tmp_path / "v", 3)
    spool.append(np.arange(6, dtype=np.float32).reshape(2, 3))
    spool.append(np.ones((1, 3), dtype=np.float32))
    rows = spool.array()
    assert rows.shape == (3, 3) and rows[1, 2] == 5.0 and rows[2, 0] == 1.0
    with pytest.raises(ValueError):
        VectorSpool(tmp_path / "w", 3).append(np.ones((1, 4), dtype=np.float32))


def test_rebuild_with_embedding_cache_embeds_nothing_and_is_byte_identical(tmp_path):
    cache = tmp_path / "embeddings.sqlite"
    first = build_test_capsule(TINY_DOCS / "good", tmp_path / "a.capsule", keys_dir=tmp_path / "keys",
                               embedding_cache=cache, name="tiny")
    assert first.result.n_embedded == first.result.n_chunks > 0
    second = build_test_capsule(TINY_DOCS / "good", tmp_path / "b.capsule", keys_dir=tmp_path / "keys",
                                embedding_cache=cache, name="tiny")
    assert second.result.n_embedded == 0
    assert second.path.read_bytes() == first.path.read_bytes()
    uncached = build_test_capsule(TINY_DOCS / "good", tmp_path / "c.capsule", keys_dir=tmp_path / "keys", name="tiny",
                                  embedding_cache=None)
    assert uncached.result.n_embedded == uncached.result.n_chunks
    assert uncached.path.read_bytes() == first.path.read_bytes()


def test_parallel_frame_packing_gives_the_same_payloads_as_one_process(tmp_path):
    import random

    from firmware_tools.build import _PACK_SEGMENT_RECORDS, _seal_frames
    from firmware_tools.qr_video import DEFAULT_VIDEO_PARAMS
    from firmware_tools.sealing import encode_record

    words = (ROOT / "examples/python-faq/docs/general.txt").read_text().split()
    rng = random.Random(5)
    records = ByteSpool(tmp_path / "records")
    n = 2 * _PACK_SEGMENT_RECORDS + 300
    for i in range(n):
        records.append(encode_record(0, i, i + 1, " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))))
    records.close_writing()
    outputs = []
    for n_workers in (1, 2):
        payloads = ByteSpool(tmp_path / f"payloads-{n_workers}")
        firsts = _seal_frames(records, payloads, b"", bytes(32), bytes(16), 1, DEFAULT_VIDEO_PARAMS, n_workers,
                              lambda *a: None)
        payloads.close_writing()
        outputs.append((firsts, list(payloads)))
    assert outputs[0] == outputs[1]
    firsts, payloads = outputs[0]
    assert firsts[0] == 0 and firsts == sorted(firsts) and len(payloads) == len(firsts)
    assert all(len(p) <= DEFAULT_VIDEO_PARAMS.payload_capacity_bytes for p in payloads)
