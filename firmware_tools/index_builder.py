"""Chunk embeddings -> Annoy index bytes (writer for ``edge/index.py``).

Deterministic: one build thread and a fixed seed give byte-identical output.

Example::

    data = build_annoy_index(vectors, n_trees=16, seed=42)   # bytes, n_nodes * (12 + 4*dim)

Source: FORMAT.md §4.4; annoy (Spotify).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from annoy import AnnoyIndex


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
    for item, vector in enumerate(np.asarray(vectors, dtype=np.float32)):
        index.add_item(item, vector.tolist())
    index.build(n_trees, n_jobs=1)
    with tempfile.TemporaryDirectory(prefix="edge-index-") as tmp:
        path = os.path.join(tmp, "index.ann")
        index.save(path)
        index.unload()
        with open(path, "rb") as handle:
            return handle.read()
