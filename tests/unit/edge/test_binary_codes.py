"""The ``binary-codes`` dense index of edge/index.py (FORMAT.md §4.4.1): the writer's codes, the
exhaustive Hamming scan, its tie rule and re-ranking, and its refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge.budget import MemoryBudget
from edge.errors import BudgetExceededError, CapsuleFormatError
from edge.index import BinaryCodeIndex, Projection, binary_codes
from edge.manifest import IndexInfo, ProjectionInfo
from firmware_tools.index_builder import build_index

N, DIM, BITS, REFINE_DIM = 700, 160, 128, 136


def _vectors(seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, DIM))
    x = centers[rng.integers(0, 12, N)] + 0.3 * rng.normal(size=(N, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _info(**changes):
    info = IndexInfo(dim=BITS, metric="hamming", n_items=N, n_trees=0, seed=0, search_k=0, n_candidates=50,
                     projection=ProjectionInfo("pca", DIM, REFINE_DIM), encryption="chacha20poly1305-stream",
                     format="binary-codes")
    return dataclasses.replace(info, **changes)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_index(_vectors(), n_trees=0, seed=0, work_dir=tmp_path_factory.mktemp("codes"), ann_dim=BITS,
                       refine_dim=REFINE_DIM, index_format="binary-codes")


def _open(built, budget=None, info=None, **kwargs):
    info = info or _info()
    projection = Projection.from_bytes(built.projection_bytes, info=info)
    codes = built.index_bytes
    return BinaryCodeIndex.from_segments([codes[:100], codes[100:]], info=info, budget=budget or MemoryBudget(None),
                                         projection=projection, vecs_segments=[built.vecs_bytes], **kwargs)


def _rows(built):
    return np.frombuffer(built.vecs_bytes, dtype=np.int8).reshape(N, REFINE_DIM)


def test_codes_are_the_sign_bits_of_the_int8_rows_word_major(built):
    rows = _rows(built)
    words = np.frombuffer(built.index_bytes, dtype="<u8").reshape(BITS // 64, N)
    assert built.format == "binary-codes" and len(built.index_bytes) == N * BITS // 8
    for i in (0, 1, 345, N - 1):
        for b in range(BITS):  # FORMAT.md §4.4.1, bit by bit, not through binary_codes
            assert (int(words[b // 64, i]) >> (b % 64)) & 1 == int(rows[i, b] > 0)


def test_binary_codes_refuses_partial_words():
    with pytest.raises(ValueError, match="64-bit words"):
        binary_codes(np.ones((2, 100)), 96)


def test_candidates_are_the_nearest_in_hamming_distance_ties_by_lower_id(built):
    index = _open(built)
    rows = _rows(built).astype(np.int64)
    bits = rows[:, :BITS] > 0
    rng = np.random.default_rng(3)
    for n in (1, 7, 50, 333, N):
        z = rng.normal(size=REFINE_DIM).astype(np.float32)
        distance = (bits != (z[:BITS] > 0)).sum(axis=1)
        expected = np.lexsort((np.arange(N), distance))[:n]  # by distance, then id: the reference
        assert sorted(index.candidates(z, n).tolist()) == sorted(expected.tolist())
    index.close()


@pytest.mark.parametrize("block", [64, 100, 699])
def test_the_scan_in_blocks_finds_the_same_candidates(built, monkeypatch, block):
    whole = _open(built)
    monkeypatch.setattr(BinaryCodeIndex, "SCAN_BLOCK_ITEMS", block)
    blocked = _open(built)
    assert blocked._word.shape == (block,)
    rng = np.random.default_rng(11)
    for n in (1, 50, 400):
        z = rng.normal(size=REFINE_DIM).astype(np.float32)
        assert sorted(blocked.candidates(z, n).tolist()) == sorted(whole.candidates(z, n).tolist())
    whole.close()
    blocked.close()


def test_the_popcount_without_bitwise_count_is_the_same(built, monkeypatch):
    """NumPy before 2.0 has no bitwise_count (pyproject allows 1.26): the byte table gives the same."""
    import edge.index

    rng = np.random.default_rng(5)
    words = rng.integers(0, 1 << 63, size=1000, dtype=np.uint64) | np.uint64(1 << 63) * (rng.random(1000) < 0.5)
    fast, table = np.empty(1000, np.uint8), np.empty(1000, np.uint8)
    edge.index.popcount_into(words, fast)
    monkeypatch.setattr(edge.index, "_HAS_BITWISE_COUNT", False)
    edge.index.popcount_into(words, table)
    assert np.array_equal(fast, table)
    assert table.tolist() == [bin(int(w)).count("1") for w in words]
    index = _open(built)
    z = rng.normal(size=REFINE_DIM).astype(np.float32)
    by_table = sorted(index.candidates(z, 50).tolist())
    monkeypatch.setattr(edge.index, "_HAS_BITWISE_COUNT", True)
    assert sorted(index.candidates(z, 50).tolist()) == by_table
    index.close()


def test_search_reranks_candidates_by_their_int8_rows(built):
    index = _open(built)
    rng = np.random.default_rng(7)
    queries = _vectors()[::35] + 0.1 * rng.normal(size=(20, DIM)).astype(np.float32)
    hits_at_1 = 0
    for q in queries / np.linalg.norm(queries, axis=1, keepdims=True):
        ids, scores = index.search(q, 5)
        z = index.projection.project(q[None])[0]
        candidates = index.candidates(z, 50)
        rows = np.stack([index.item_vector(i) for i in range(N)])
        exact = rows @ z / (np.linalg.norm(rows, axis=1) * np.linalg.norm(z))
        assert set(ids) <= set(candidates.tolist())
        fifth_best = sorted((float(exact[c]) for c in candidates), reverse=True)[4]
        assert all(exact[i] >= fifth_best - 1e-5 for i in ids)  # the candidates' top 5 (float ties aside)
        assert scores == pytest.approx([float(exact[i]) for i in ids], abs=1e-5)
        hits_at_1 += ids[0] == int(np.argmax(exact))
    assert hits_at_1 >= 14  # 50 of 700 candidates from 128-bit codes hold the true best 16 times of 20 here
    index.close()


def test_k_above_n_candidates_widens_the_scan_and_score_items_is_exact(built):
    index = _open(built)
    q = _vectors()[5]
    ids, _ = index.search(q, 120)
    assert len(ids) == 120 and len(set(ids)) == 120
    some = [3, 99, 5, 640]
    ids, scores = index.score_items(q, some, 2)
    z = index.projection.project(q[None])[0]
    exact = {c: float(index.item_vector(c) @ z / (np.linalg.norm(index.item_vector(c)) * np.linalg.norm(z)))
             for c in some}
    assert ids == sorted(some, key=lambda c: -exact[c])[:2]
    assert scores == pytest.approx([exact[c] for c in ids], abs=1e-5)
    with pytest.raises(ValueError):
        index.score_items(q, [N], 1)
    index.close()


@pytest.mark.parametrize("cut", [-8, -1, 1, 8])
def test_codes_of_the_wrong_length_are_refused(built, cut):
    info = _info()
    projection = Projection.from_bytes(built.projection_bytes, info=info)
    codes = built.index_bytes[:cut] if cut < 0 else built.index_bytes + bytes(cut)
    with pytest.raises(CapsuleFormatError, match="binary codes"):
        BinaryCodeIndex.from_segments([codes], info=info, budget=MemoryBudget(None), projection=projection,
                                      vecs_segments=[built.vecs_bytes])
    with pytest.raises(CapsuleFormatError, match="binary codes"):
        BinaryCodeIndex.from_segments(None, codes_view=memoryview(codes), info=info, budget=MemoryBudget(None),
                                      projection=projection, vecs_view=memoryview(built.vecs_bytes))


def test_codes_and_scratch_are_reserved_and_released(built):
    budget = MemoryBudget(None)
    index = _open(built, budget=budget)
    reserved = budget.report()["reserved_bytes"]
    assert reserved["index"] == N * BITS // 8 + BinaryCodeIndex.scratch_bytes(N)
    assert reserved["vecs"] == N * REFINE_DIM
    index.close()
    assert budget.reserved_bytes == 0
    with pytest.raises(BudgetExceededError):
        _open(built, budget=MemoryBudget(1000))


def test_mapped_codes_are_used_in_place_and_not_reserved(built):
    budget = MemoryBudget(None)
    info = _info()
    index = BinaryCodeIndex.from_segments(None, codes_view=memoryview(built.index_bytes), info=info, budget=budget,
                                          projection=Projection.from_bytes(built.projection_bytes, info=info),
                                          vecs_view=memoryview(built.vecs_bytes))
    assert index.file_backed and budget.report()["reserved_bytes"]["index"] == BinaryCodeIndex.scratch_bytes(N)
    assert index.search(_vectors()[9], 1)[0] == _open(built).search(_vectors()[9], 1)[0]
    index.close()
