"""VectorIndex: the Annoy index of a capsule, loaded from verified bytes.

Annoy files have no header and Annoy can only load a whole file, so the runtime
writes the verified (and, by default, decrypted) index into an anonymous
``memfd`` and lets Annoy map that. Nothing is written to disk. The manifest
supplies dim, metric and item count, which are checked before ``load``.

Example::

    index = VectorIndex.from_segments(segments, info=manifest.index, budget=budget)
    ids, distances = index.search(query_vector, k=5, search_k=manifest.index.search_k)

Source: FORMAT.md §4.4; annoy (Spotify) README.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import numpy as np
from annoy import AnnoyIndex

from .budget import MemoryBudget
from .errors import CapsuleFormatError, IntegrityError
from .manifest import IndexInfo

log = logging.getLogger(__name__)


class VectorIndex:
    """An Annoy angular index in a memfd, accounted against a ``MemoryBudget``."""

    def __init__(self, annoy: AnnoyIndex, fd: int, n_bytes: int, info: IndexInfo, budget: MemoryBudget) -> None:
        self._annoy = annoy
        self._fd = fd
        self.n_bytes = n_bytes
        self.info = info
        self._budget = budget

    @classmethod
    def from_segments(cls, segments: Iterable[bytes], *, n_bytes: int, info: IndexInfo,
                      budget: MemoryBudget) -> "VectorIndex":
        """Write verified index bytes into a memfd and load Annoy over it.

        Args:
            segments: the plaintext index in pieces (e.g. STREAM segments), ``n_bytes`` in all.
            n_bytes: plaintext index length, checked against the Annoy node size first.
            info: the manifest's index parameters.
            budget: ``n_bytes`` is reserved as ``"index"`` before anything is written.

        Raises:
            CapsuleFormatError: ``n_bytes`` is not a whole number of nodes.
            IntegrityError: Annoy sees a different item count than the manifest.
            BudgetExceededError: the index does not fit the budget.
        """
        if n_bytes == 0 or n_bytes % info.node_bytes:
            raise CapsuleFormatError(
                f"index is {n_bytes} bytes, not a whole number of {info.node_bytes}-byte annoy nodes"
            )
        if n_bytes // info.node_bytes < info.n_items:
            raise CapsuleFormatError(f"index holds {n_bytes // info.node_bytes} nodes, fewer than {info.n_items} items")
        budget.acquire("index", n_bytes)
        fd = -1
        try:
            fd = os.memfd_create("edge-capsule-index", os.MFD_CLOEXEC)
            written = 0
            for piece in segments:
                written += os.write(fd, piece)
            if written != n_bytes:
                raise CapsuleFormatError(f"index is {written} bytes, expected {n_bytes}")
            annoy = AnnoyIndex(info.dim, info.metric)
            if not annoy.load(f"/proc/self/fd/{fd}", prefault=False):
                raise CapsuleFormatError("annoy could not load the index")
            if annoy.get_n_items() != info.n_items:
                raise IntegrityError(f"index has {annoy.get_n_items()} items, manifest says {info.n_items}")
        except BaseException:
            if fd >= 0:
                os.close(fd)
            budget.release("index", n_bytes)
            raise
        log.debug("index loaded: %d items, %d trees, %d bytes in memfd", info.n_items, annoy.get_n_trees(), n_bytes)
        return cls(annoy, fd, n_bytes, info, budget)

    def search(self, vector: np.ndarray, k: int, *, search_k: int = -1) -> tuple[list[int], list[float]]:
        """Return the ``k`` nearest item ids and their angular distances, nearest first.

        Args:
            vector: float32 [dim], unit norm.
            k: number of neighbours, >= 1.
            search_k: nodes to inspect; -1 uses the manifest's recommendation.

        Returns:
            ``(ids, distances)``; Annoy's angular distance is ``sqrt(2 - 2 cos)``.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        if vector.shape != (self.info.dim,):
            raise ValueError(f"query vector has shape {vector.shape}, expected ({self.info.dim},)")
        if search_k < 0:
            search_k = max(self.info.search_k, k * self.info.n_trees)
        ids, distances = self._annoy.get_nns_by_vector(vector.tolist(), k, search_k=search_k, include_distances=True)
        return ids, distances

    def close(self) -> None:
        """Unload the index and free its memfd and budget reservation."""
        if self._fd >= 0:
            self._annoy.unload()
            os.close(self._fd)
            self._fd = -1
            self._budget.release("index", self.n_bytes)
