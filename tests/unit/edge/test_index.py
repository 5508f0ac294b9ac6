"""Projection parsing and the two-stage search of edge/index.py (FORMAT.md §4.4, §5.2-§5.3)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge.budget import MemoryBudget
from edge.errors import BudgetExceededError, CapsuleFormatError
from edge.index import Projection, VectorIndex
from edge.manifest import IndexInfo, ProjectionInfo
from firmware_tools.index_builder import build_index

N, DIM, ANN_DIM, REFINE_DIM = 600, 48, 8, 24


def _vectors(seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, DIM))
    x = centers[rng.integers(0, 12, N)] + 0.3 * rng.normal(size=(N, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _info(projected=True, **changes):
    info = IndexInfo(dim=ANN_DIM if projected else DIM, metric="angular", n_items=N, n_trees=8, seed=1,
                     search_k=2000, n_candidates=100,
                     projection=ProjectionInfo("pca", DIM, REFINE_DIM) if projected else None,
                     encryption="chacha20poly1305-stream")
    return dataclasses.replace(info, **changes)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_index(_vectors(), n_trees=8, seed=1, work_dir=tmp_path_factory.mktemp("index"), ann_dim=ANN_DIM,
                       refine_dim=REFINE_DIM)


def _open(built, budget=None, **kwargs):
    info = _info()
    projection = Projection.from_bytes(built.projection_bytes, info=info)
    return VectorIndex.from_segments([built.index_bytes], n_bytes=len(built.index_bytes), info=info,
                                     budget=budget or MemoryBudget(None), projection=projection,
                                     vecs_segments=[built.vecs_bytes[:1000], built.vecs_bytes[1000:]], **kwargs)


def test_projection_round_trips_and_axes_are_orthonormal(built):
    projection = Projection.from_bytes(built.projection_bytes, info=_info())
    assert projection.to_bytes() == built.projection_bytes
    gram = projection.axes @ projection.axes.T
    assert np.allclose(gram, np.eye(REFINE_DIM), atol=2e-3)  # float16 storage


def test_two_stage_search_returns_exact_reranked_top_k(built):
    index = _open(built)
    rng = np.random.default_rng(7)
    queries = _vectors()[::30] + 0.1 * rng.normal(size=(20, DIM)).astype(np.float32)
    for q in queries / np.linalg.norm(queries, axis=1, keepdims=True):
        ids, scores = index.search(q, 5)
        z = index.projection.project(q[None])[0]
        rows = np.stack([index.item_vector(i) for i in range(N)])
        exact = rows @ z / (np.linalg.norm(rows, axis=1) * np.linalg.norm(z))
        assert scores == pytest.approx([float(exact[i]) for i in ids], abs=1e-5)
        assert scores == sorted(scores, reverse=True)
        assert ids[0] == int(np.argmax(exact))  # near a data point: the best item is a candidate
    index.close()


def test_index_without_projection_scores_are_cosines(tmp_path):
    vectors = _vectors()
    built = build_index(vectors, n_trees=8, seed=1, work_dir=tmp_path)
    info = _info(projected=False)
    index = VectorIndex.from_segments([built.index_bytes], n_bytes=len(built.index_bytes), info=info,
                                      budget=MemoryBudget(None))
    ids, scores = index.search(vectors[3], 3)
    assert ids[0] == 3 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] == pytest.approx(float(vectors[ids[1]] @ vectors[3]), abs=1e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:-4], "needs"),
    (lambda b: b + b"\0\0\0\0", "needs"),
    (lambda b: b[:-4] + np.float32(0).tobytes(), "scale <= 0"),
    (lambda b: np.float32(np.nan).tobytes() + b[4:], "non-finite"),
    (lambda b: b[:-4] + np.float32(3.4e38).tobytes(), "> 1"),  # finite, but scores overflow to NaN
    (lambda b: np.float32(1.5).tobytes() + b[4:], "outside \\[-1, 1\\]"),
])
def test_malformed_projection_is_refused(built, mutate, message):
    with pytest.raises(CapsuleFormatError, match=message):
        Projection.from_bytes(mutate(built.projection_bytes), info=_info())


def test_projection_bytes_without_projection_in_manifest_are_refused(built):
    with pytest.raises(CapsuleFormatError, match="manifest has none"):
        Projection.from_bytes(built.projection_bytes, info=_info(projected=False))


def test_vecs_of_wrong_length_are_refused_and_budget_released(built):
    info = _info()
    budget = MemoryBudget(None)
    projection = Projection.from_bytes(built.projection_bytes, info=info)
    with pytest.raises(CapsuleFormatError, match="re-ranking vectors are"):
        VectorIndex.from_segments([built.index_bytes], n_bytes=len(built.index_bytes), info=info, budget=budget,
                                  projection=projection, vecs_segments=[built.vecs_bytes[:-1]])
    assert budget.reserved_bytes == 0


def test_index_reserves_index_projection_and_vecs_before_loading(built):
    budget = MemoryBudget(None)
    index = _open(built, budget)
    reserved = budget.report()["reserved_bytes"]
    assert reserved["index"] == len(built.index_bytes) and reserved["vecs"] == N * REFINE_DIM
    assert reserved["projection"] == 4 * DIM + 4 * REFINE_DIM * DIM + 4 * REFINE_DIM
    index.close()
    assert budget.reserved_bytes == 0
    small = MemoryBudget(len(built.index_bytes) + 100)
    with pytest.raises(BudgetExceededError):
        _open(built, small)
    assert small.reserved_bytes == 0
