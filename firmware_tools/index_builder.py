"""Chunk embeddings -> Annoy index, PCA projection and int8 re-ranking vectors.

Writer for ``edge/index.py`` (FORMAT.md §4.4, §5.2-§5.3). Deterministic: the same
vectors, one Annoy build thread and a fixed seed give byte-identical output.

Example::

    built = build_index(vectors, n_trees=8, seed=42, ann_dim=64, refine_dim=256)
    built.annoy_bytes, built.projection_bytes, built.vecs_bytes

Why a projection: a 384-d float32 Annoy item costs 1,548 bytes, three times a
500-character chunk of text. PCA to 256 coordinates kept SciFact nDCG@10 (exact
search 0.6556 -> 0.6577 with int8 rows), and Annoy over the first 64 coordinates
with 8 trees proposes 200 candidates that the int8 rows re-rank (0.6525 through
Annoy), for 370 + 256 bytes per chunk. ``bench/INDEX.md`` has the full table.

Source: FORMAT.md §4.4; annoy (Spotify); Jégou et al., TPAMI 2011 (re-ranking).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
from annoy import AnnoyIndex

from edge.index import Projection

#: Below this many chunks the builder keeps the full embeddings (PCA needs samples).
MIN_CHUNKS_FOR_PROJECTION = 2048
DEFAULT_ANN_DIM = 64
DEFAULT_REFINE_DIM = 256
DEFAULT_N_CANDIDATES = 200
#: (n_trees, search_k) without and with projection, chosen on SciFact (bench/INDEX.md).
DEFAULT_TREES_FULL, DEFAULT_SEARCH_K_FULL = 16, 4000
DEFAULT_TREES_PROJECTED, DEFAULT_SEARCH_K_PROJECTED = 8, 8000
_BLOCK_ROWS = 65536


@dataclass(frozen=True)
class BuiltIndex:
    """The index sections' plaintexts.

    Attributes:
        annoy_bytes: the Annoy file (INDX plaintext).
        projection: the PCA projection, or ``None``.
        vecs_bytes: int8 [n_items, refine_dim] row-major (VECS plaintext), ``b""`` without projection.
        dim: Annoy item dimension.
    """

    annoy_bytes: bytes
    projection: Projection | None
    vecs_bytes: bytes
    dim: int

    @property
    def projection_bytes(self) -> bytes:
        """The PROJ plaintext (empty without projection)."""
        return b"" if self.projection is None else self.projection.to_bytes()


def fit_projection(vectors: np.ndarray, dim_out: int) -> Projection:
    """Return the PCA projection of ``vectors`` to ``dim_out`` coordinates, float16-exact axes.

    Args:
        vectors: float32 [n_items, dim_in], n_items >= 2.
        dim_out: 1..dim_in.

    Returns:
        ``Projection`` with mean float32 [dim_in], axes float32 [dim_out, dim_in] (values
        exactly representable in float16, sign fixed so each axis's largest entry is
        positive) and unit ``scale`` (set by ``quantize_rows``).

    Source: FORMAT.md §5.2 (PCA: eigenvectors of the covariance, largest eigenvalue first).
    """
    n_items, dim_in = vectors.shape
    if not 1 <= dim_out <= dim_in or n_items < 2:
        raise ValueError(f"cannot project {n_items} x {dim_in} vectors to {dim_out} coordinates")
    mean = np.zeros(dim_in, dtype=np.float64)
    for start in range(0, n_items, _BLOCK_ROWS):
        mean += vectors[start:start + _BLOCK_ROWS].sum(axis=0, dtype=np.float64)
    mean /= n_items
    cov = np.zeros((dim_in, dim_in), dtype=np.float64)
    for start in range(0, n_items, _BLOCK_ROWS):
        block = vectors[start:start + _BLOCK_ROWS].astype(np.float64) - mean
        cov += block.T @ block
    _, eigvecs = np.linalg.eigh(cov)  # ascending eigenvalues
    axes = eigvecs[:, ::-1][:, :dim_out].T.copy()
    signs = np.sign(axes[np.arange(dim_out), np.argmax(np.abs(axes), axis=1)])
    axes *= np.where(signs == 0, 1.0, signs)[:, None]
    return Projection(mean.astype(np.float32), axes.astype(np.float16).astype(np.float32),
                      np.ones(dim_out, dtype=np.float32))


def quantize_rows(projected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (int8 [n, d] rows, float32 [d] scales) with ``rows * scale ~= projected``.

    Symmetric per-coordinate scalar quantisation to -127..127 (FORMAT.md §5.3).
    """
    peak = np.abs(projected).max(axis=0)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    rows = np.clip(np.rint(projected / scale), -127, 127).astype(np.int8)
    return rows, scale


def build_annoy_index(vectors: np.ndarray, *, n_trees: int, seed: int, metric: str = "angular") -> bytes:
    """Build an Annoy index over ``vectors`` and return the file bytes.

    Args:
        vectors: float32 [n_items, dim]; item ``i`` is chunk ``i``.
        n_trees: number of random-projection trees (more: better recall, bigger file).
        seed: Annoy's random seed.
        metric: ``"angular"`` (the only one FORMAT 1.0 allows).

    Returns:
        The Annoy file, ``n_nodes * (12 + 4 * dim)`` bytes.
    """
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(f"vectors must be [n_items >= 1, dim], got {vectors.shape}")
    n_items, dim = vectors.shape
    index = AnnoyIndex(dim, metric)
    index.set_seed(seed)
    for item in range(n_items):
        index.add_item(item, np.asarray(vectors[item], dtype=np.float32).tolist())
    index.build(n_trees, n_jobs=1)
    with tempfile.TemporaryDirectory(prefix="edge-index-") as tmp:
        path = os.path.join(tmp, "index.ann")
        index.save(path)
        index.unload()
        with open(path, "rb") as handle:
            return handle.read()


def build_index(vectors: np.ndarray, *, n_trees: int, seed: int, ann_dim: int | None = None,
                refine_dim: int | None = None) -> BuiltIndex:
    """Build the index sections for chunk embeddings.

    Args:
        vectors: float32 [n_items, model_dim], unit norm; row ``i`` is chunk ``i``.
        n_trees: Annoy trees.
        seed: Annoy seed.
        ann_dim: Annoy dimension with projection; ``None`` with ``refine_dim`` ``None``
            means no projection (Annoy over the full embeddings).
        refine_dim: PCA coordinates kept for re-ranking (VECS); ``ann_dim <= refine_dim``.

    Returns:
        ``BuiltIndex``.
    """
    if (ann_dim is None) != (refine_dim is None):
        raise ValueError("give both ann_dim and refine_dim, or neither")
    if refine_dim is None:
        return BuiltIndex(build_annoy_index(vectors, n_trees=n_trees, seed=seed), None, b"", vectors.shape[1])
    if not 1 <= ann_dim <= refine_dim <= vectors.shape[1]:
        raise ValueError(f"need 1 <= ann_dim {ann_dim} <= refine_dim {refine_dim} <= {vectors.shape[1]}")
    projection = fit_projection(vectors, refine_dim)
    projected = np.empty((vectors.shape[0], refine_dim), dtype=np.float32)
    for start in range(0, vectors.shape[0], _BLOCK_ROWS):
        projected[start:start + _BLOCK_ROWS] = projection.project(vectors[start:start + _BLOCK_ROWS])
    rows, scale = quantize_rows(projected)
    projection = Projection(projection.mean, projection.axes, scale)
    annoy_bytes = build_annoy_index(projected[:, :ann_dim], n_trees=n_trees, seed=seed)
    return BuiltIndex(annoy_bytes, projection, rows.tobytes(), ann_dim)
