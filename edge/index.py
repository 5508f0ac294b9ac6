"""VectorIndex: a capsule's Annoy index, projection and re-ranking vectors.

Annoy files have no header and Annoy can only load a whole file, so the runtime
writes the verified (and, by default, decrypted) index into an anonymous
``memfd`` and lets Annoy map that. Nothing is written to disk. The manifest
supplies dim, metric and item count, which are checked before ``load``.

With a projection (FORMAT.md §4.4) a query is projected with PCA, Annoy proposes
``n_candidates`` chunks from the first ``dim`` coordinates, and the int8
re-ranking vectors (``VECS``) score the candidates exactly; without one, Annoy
ranks on the model's own embeddings. This module owns that arithmetic; it does
not decrypt (callers pass verified plaintext) and reads no files.

Example::

    projection = Projection.from_bytes(proj_plaintext, info=manifest.index)
    index = VectorIndex.from_segments(segments, n_bytes=n, info=manifest.index, budget=budget,
                                      projection=projection, vecs=vecs)
    ids, scores = index.search(query_embedding, k=5)

Source: FORMAT.md §4.4, §5.2-§5.3; annoy (Spotify) README.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .budget import MemoryBudget
from .errors import CapsuleFormatError, IntegrityError
from .manifest import IndexInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Projection:
    """The PCA projection of FORMAT.md §5.2, widened to float32.

    Attributes:
        mean: float32 [dim_in], the corpus mean embedding.
        axes: float32 [dim_out, dim_in], orthonormal principal axes, largest variance first
            (stored as float16; widening is exact).
        scale: float32 [dim_out], > 0: VECS coordinate ``j`` is ``int8 * scale[j]``.
    """

    mean: np.ndarray
    axes: np.ndarray
    scale: np.ndarray

    @property
    def n_bytes(self) -> int:
        """Bytes of memory the widened arrays hold."""
        return self.mean.nbytes + self.axes.nbytes + self.scale.nbytes

    @classmethod
    def from_bytes(cls, plaintext: bytes, *, info: IndexInfo) -> "Projection | None":
        """Parse the PROJ plaintext; return ``None`` when the capsule has no projection.

        Raises:
            CapsuleFormatError: the length differs from what ``info`` fixes, a non-empty
                plaintext without projection, or a non-finite or non-positive value.

        Source: FORMAT.md §5.2.
        """
        if info.projection is None:
            if plaintext:
                raise CapsuleFormatError(f"projection section holds {len(plaintext)} bytes, manifest has none")
            return None
        p = info.projection
        if len(plaintext) != p.plaintext_bytes:
            raise CapsuleFormatError(
                f"projection section holds {len(plaintext)} bytes, a {p.dim_out}x{p.dim_in} projection "
                f"needs {p.plaintext_bytes}"
            )
        mean_end = 4 * p.dim_in
        axes_end = mean_end + 2 * p.dim_out * p.dim_in
        mean = np.frombuffer(plaintext, dtype="<f4", count=p.dim_in).astype(np.float32)
        axes = np.frombuffer(plaintext, dtype="<f2", count=p.dim_out * p.dim_in, offset=mean_end)
        axes = axes.astype(np.float32).reshape(p.dim_out, p.dim_in)
        scale = np.frombuffer(plaintext, dtype="<f4", count=p.dim_out, offset=axes_end).astype(np.float32)
        if not (np.isfinite(mean).all() and np.isfinite(axes).all() and np.isfinite(scale).all()):
            raise CapsuleFormatError("projection holds non-finite values")
        if (scale <= 0).any():
            raise CapsuleFormatError("projection holds a re-ranking scale <= 0")
        return cls(mean, axes, scale)

    def to_bytes(self) -> bytes:
        """Serialise to the PROJ plaintext (writer side); ``axes`` must be float16-exact."""
        return (self.mean.astype("<f4").tobytes() + self.axes.astype("<f2").tobytes()
                + self.scale.astype("<f4").tobytes())

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Return ``(vectors - mean) @ axes.T``: float32 [n, dim_out] for float32 [n, dim_in] (BLAS)."""
        return (np.asarray(vectors, dtype=np.float32) - self.mean) @ self.axes.T

    def project_query(self, vector: np.ndarray) -> np.ndarray:
        """Return one projected query, float32 [dim_out] for float32 [dim_in], without BLAS.

        The first BLAS call makes OpenBLAS reserve a 32 MiB buffer (private memory that
        ``RLIMIT_DATA`` counts); one matrix-vector product of this size does not need it.
        """
        return np.einsum("ij,j->i", self.axes, np.asarray(vector, dtype=np.float32) - self.mean)


class VectorIndex:
    """Annoy index in a memfd, optional projection and int8 re-ranking vectors.

    Create with ``from_segments``; every byte held is reserved in the ``MemoryBudget``
    first (``index`` for the memfd, ``projection`` and ``vecs`` for the rest).
    """

    def __init__(self, annoy: AnnoyIndex, fd: int, n_bytes: int, info: IndexInfo, budget: MemoryBudget,
                 projection: Projection | None, vecs: np.ndarray | None, reserved: dict[str, int],
                 file_backed: bool = False) -> None:
        self._annoy = annoy
        self._fd = fd
        self.n_bytes = n_bytes
        self.info = info
        self._budget = budget
        self.projection = projection
        self._vecs = vecs
        self._reserved = reserved
        self.file_backed = file_backed

    @classmethod
    def from_segments(cls, segments: Iterable[bytes], *, n_bytes: int, info: IndexInfo, budget: MemoryBudget,
                      projection: Projection | None = None, vecs_segments: Iterable[bytes] | None = None,
                      vecs_view: memoryview | None = None, name_prefix: str = "",
                      index_path: Path | None = None) -> "VectorIndex":
        """Write verified index bytes into a memfd and load Annoy over it.

        Args:
            segments: the plaintext Annoy file in pieces (e.g. STREAM segments), ``n_bytes`` in all.
            n_bytes: plaintext index length, checked against the Annoy node size first.
            info: the manifest's index parameters.
            budget: reservations are made here before anything is written.
            projection: from ``Projection.from_bytes``; required iff ``info.projection``.
            vecs_segments: the decrypted VECS plaintext in pieces (int8 [n_items, dim_out],
                row-major), copied into anonymous memory after it is reserved as ``vecs``.
            vecs_view: instead, the unencrypted VECS section itself (``encryption: none``):
                used in place, file-backed, not reserved.
            name_prefix: prefixes the reservation names (several capsules share a budget).
            index_path: instead of ``segments``, a file holding exactly the verified Annoy
                plaintext (a device store extracts unencrypted indexes): Annoy maps it
                file-backed and nothing is reserved for it.

        Raises:
            CapsuleFormatError: ``n_bytes`` is not a whole number of nodes, or ``vecs`` has
                the wrong shape.
            IntegrityError: Annoy sees a different item count than the manifest.
            BudgetExceededError: the index does not fit the budget.
        """
        has_vecs = vecs_segments is not None or vecs_view is not None
        if (projection is None) != (info.projection is None) or has_vecs != (info.projection is not None):
            raise ValueError("projection and vecs are required exactly when the manifest has a projection")
        vecs_bytes = info.vecs_plaintext_bytes
        if vecs_view is not None and len(vecs_view) != vecs_bytes:
            raise CapsuleFormatError(f"re-ranking vectors are {len(vecs_view)} bytes, manifest needs {vecs_bytes}")
        if index_path is not None:
            n_bytes = os.stat(index_path).st_size
        if n_bytes == 0 or n_bytes % info.node_bytes:
            raise CapsuleFormatError(
                f"index is {n_bytes} bytes, not a whole number of {info.node_bytes}-byte annoy nodes"
            )
        if n_bytes // info.node_bytes < info.n_items:
            raise CapsuleFormatError(f"index holds {n_bytes // info.node_bytes} nodes, fewer than {info.n_items} items")
        reserved = {} if index_path is not None else {f"{name_prefix}index": n_bytes}
        if projection is not None:
            reserved[f"{name_prefix}projection"] = projection.n_bytes
            if vecs_segments is not None:
                reserved[f"{name_prefix}vecs"] = vecs_bytes
        acquired: list[tuple[str, int]] = []
        fd = -1
        vecs = None
        try:
            budget.acquire_all(reserved, what=f"{name_prefix or 'capsule '}index")
            acquired = list(reserved.items())
            if vecs_view is not None:
                vecs = np.frombuffer(vecs_view, dtype=np.int8)
            elif vecs_segments is not None:
                vecs = np.empty(vecs_bytes, dtype=np.int8)
                filled = 0
                for piece in vecs_segments:
                    if filled + len(piece) > vecs_bytes:
                        raise CapsuleFormatError(f"re-ranking vectors exceed the {vecs_bytes} bytes the manifest gives")
                    vecs[filled:filled + len(piece)] = np.frombuffer(piece, dtype=np.int8)
                    filled += len(piece)
                if filled != vecs_bytes:
                    raise CapsuleFormatError(f"re-ranking vectors are {filled} bytes, manifest needs {vecs_bytes}")
            if vecs is not None:
                vecs = vecs.reshape(info.n_items, info.projection.dim_out)
            if index_path is not None:
                fd = os.open(index_path, os.O_RDONLY | os.O_CLOEXEC)
            else:
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
            for name, size in acquired:
                budget.release(name, size)
            raise
        log.debug("index loaded: %d items, %d trees, %d bytes %s, projection %s", info.n_items,
                  annoy.get_n_trees(), n_bytes, "mapped from storage" if index_path else "in a memfd",
                  info.projection)
        return cls(annoy, fd, n_bytes, info, budget, projection, vecs, reserved, file_backed=index_path is not None)

    def search(self, embedding: np.ndarray, k: int, *, search_k: int = -1) -> tuple[list[int], list[float]]:
        """Return the ``k`` best chunk ids and their cosine similarities, best first.

        Args:
            embedding: float32 [model.dim], unit norm (the query embedding).
            k: number of results, >= 1.
            search_k: Annoy nodes to inspect; -1 uses ``max(manifest search_k, n * n_trees)``
                for ``n`` requested Annoy results.

        Returns:
            ``(ids, scores)``: scores are cosine similarities in [-1, 1], descending, ties by
            id; in the projected space when the capsule has a projection (FORMAT.md §4.4).

        Raises:
            ValueError: ``k < 1`` or a wrongly shaped embedding (caller mistakes).
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        dim_in = self.info.dim if self.projection is None else self.info.projection.dim_in
        if embedding.shape != (dim_in,):
            raise ValueError(f"query embedding has shape {embedding.shape}, expected ({dim_in},)")
        if self.projection is None:
            ids, distances = self._annoy_search(embedding, k, search_k)
            return ids, [1.0 - d * d / 2.0 for d in distances]
        z = self.projection.project_query(embedding)
        candidates, _ = self._annoy_search(z[: self.info.dim], max(self.info.n_candidates, k), search_k)
        if not candidates:
            return [], []
        ids = np.asarray(candidates, dtype=np.int64)
        rows = self._vecs[ids].astype(np.float32) * self.projection.scale
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows)) * max(float(np.sqrt(np.einsum("i,i->", z, z))), 1e-12)
        scores = np.divide(np.einsum("ij,j->i", rows, z), norms, out=np.zeros(len(ids), dtype=np.float32),
                           where=norms > 0)
        order = np.lexsort((ids, -scores))[:k]
        return [int(i) for i in ids[order]], [float(s) for s in scores[order]]

    def _annoy_search(self, vector: np.ndarray, n: int, search_k: int) -> tuple[list[int], list[float]]:
        if search_k < 0:
            search_k = max(self.info.search_k, n * self.info.n_trees)
        return self._annoy.get_nns_by_vector(vector.tolist(), n, search_k=search_k, include_distances=True)

    def item_vector(self, chunk_id: int) -> np.ndarray:
        """Return chunk ``chunk_id``'s vector as stored: float32 [dim_out] (dequantised VECS row)
        with a projection, else the Annoy item, float32 [dim]."""
        if self.projection is None:
            return np.asarray(self._annoy.get_item_vector(chunk_id), dtype=np.float32)
        return self._vecs[chunk_id].astype(np.float32) * self.projection.scale

    def close(self) -> None:
        """Unload the index and free its memfd and budget reservations."""
        if self._fd >= 0:
            self._annoy.unload()
            os.close(self._fd)
            self._fd = -1
            self._vecs = None
            for name, size in self._reserved.items():
                self._budget.release(name, size)
