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
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from ._files import sealed_memfd
from .budget import MemoryBudget
from .errors import CapsuleFormatError, IntegrityError
from .manifest import IndexInfo

log = logging.getLogger(__name__)

#: Annoy's ``search_k`` and ``n`` are C ``int`` (annoymodule.cc ``PyArg_ParseTuple("Oi|ii")``).
ANNOY_INT_MAX = (1 << 31) - 1
#: Bytes of index read per step while checking its structure.
_CHECK_BLOCK_BYTES = 1 << 20
#: IEEE-754 binary32 exponent bits: all set means inf or NaN.
_F32_EXPONENT = 0x7F800000


def check_annoy_structure(read, *, n_bytes: int, info: IndexInfo) -> int:
    """Check an angular Annoy file node by node, so that Annoy cannot leave it; return the root count.

    Annoy 1.17.3 trusts its file completely (annoylib.h ``load``, ``_get_all_nns``): a child
    index out of range is an out-of-bounds read (SIGSEGV), a bad item id comes back to the
    caller, a negative count or a cycle makes a search read past a node or never end. The
    layout (``Angular::Node<int32_t, float>``) is ``node_bytes = 12 + 4 * dim`` bytes per node:
    int32 ``n_descendants``, then a union of int32 ``children[2]`` with float ``norm``, then
    float ``v[dim]``; ``K = dim + 2`` int32 fit from ``children`` to the end of the node.
    Node ``i`` is a *split* when ``n_descendants > K`` (children[0..1] are node indices, ``v`` the
    hyperplane), a *bucket* when ``n_descendants <= K`` (children[0..n_descendants) are item ids),
    and an *item* when ``i < n_items`` (``v`` is its vector). ``load`` takes the roots as the last
    run of nodes whose ``n_descendants`` equals the last node's, which becomes ``n_items``, and
    drops the run's first node when it has the same ``children[0]`` as the last (the original of
    the last tree's root, which ``build`` copies to the end). This checks all of that:

    - every ``n_descendants`` is in ``1..n_items``; items have 1; the last node has ``n_items``;
    - bucket item ids are in ``[0, n_items)``;
    - split children are node indices below the split's own index (Annoy writes children
      before parents, so no cycle is possible), and no node other than an item is the child of
      two splits, nor is any root candidate (a node with ``n_descendants == n_items``) a child:
      every search visits each node at most once;
    - the roots Annoy will find number ``n_trees`` (``n_items > K``; with ``n_items <= K`` every
      tree is one bucket and Annoy also keeps the originals, so up to ``2 * n_trees + 1``);
    - item vectors, item norms and split hyperplanes are finite.

    Args:
        read: ``read(offset, size) -> bytes``, the exact bytes Annoy will map (e.g. ``os.pread``
            on its file descriptor); a short read is refused.
        n_bytes: index length, a whole number of nodes (checked by the caller).
        info: the manifest's index parameters (``dim``, ``n_items``, ``n_trees``).

    Returns:
        The number of roots Annoy's ``load`` will find.

    Raises:
        CapsuleFormatError: the first structural defect, in one line with the node index.

    Cost: one pass in 1 MiB blocks, vectorised with NumPy; transient memory 2 bytes per node
    plus the block. Measured on the build machine kind (x86_64, 2 shared cores, random unit
    vectors, 100,000 items): 8 trees at dim 64 (the projected default; 35.9 MB, 134,024 nodes)
    33-40 ms; 16 trees at dim 384 (full embeddings; 174.2 MB, 112,544 nodes) 64-70 ms, against
    under 1 ms for Annoy's ``load`` alone.

    Source: annoy 1.17.3 src/annoylib.h (``Angular::Node``, ``load``, ``_make_tree``,
    ``_get_all_nns``); FORMAT.md §4.4.
    """
    dim, n, n_trees = info.dim, info.n_items, info.n_trees
    node_bytes = info.node_bytes
    width = node_bytes // 4
    k_max = dim + 2
    n_nodes = n_bytes // node_bytes
    if n_nodes * node_bytes != n_bytes or n_nodes <= n:
        raise CapsuleFormatError(f"index holds {n_nodes} annoy nodes, needs more than {n} items")
    is_root_count = np.zeros(n_nodes, dtype=bool)  # n_descendants == n_items
    referenced = np.zeros(n_nodes, dtype=bool)     # non-item nodes some split points at
    step = max(1, _CHECK_BLOCK_BYTES // node_bytes)
    float_cols = np.r_[3:width]

    def fail(i: int, what: str) -> None:
        raise CapsuleFormatError(f"annoy node {i} of {n_nodes} {what}")

    def nonfinite(values: np.ndarray) -> np.ndarray:
        return ((values & _F32_EXPONENT) == _F32_EXPONENT).any(axis=1)

    def mark(targets: np.ndarray) -> None:
        targets = targets[targets >= n]
        if not targets.size:
            return
        ordered = np.sort(targets)
        twice = ordered[1:] == ordered[:-1]
        if twice.any() or referenced[ordered].any():
            dup = ordered[1:][twice][0] if twice.any() else ordered[referenced[ordered]][0]
            fail(int(dup), "is the child of two split nodes")
        referenced[ordered] = True

    for start in range(0, n_nodes, step):
        count = min(step, n_nodes - start)
        block = read(start * node_bytes, count * node_bytes)
        if len(block) != count * node_bytes:
            raise CapsuleFormatError(f"index read returned {len(block)} bytes at node {start}, "
                                     f"expected {count * node_bytes}")
        a = np.frombuffer(block, dtype="<i4").reshape(count, width)
        idx = np.arange(start, start + count)
        nd = a[:, 0]
        bad = (nd < 1) | (nd > n)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            fail(start + i, f"has n_descendants {int(nd[i])}, not in 1..{n}")
        is_root_count[start:start + count] = nd == n
        items = idx < n
        if items.any():
            it = a[items]
            wrong = it[:, 0] != 1
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                fail(start + i, f"is an item with n_descendants {int(it[i, 0])}, not 1")
            vals = np.concatenate([it[:, 1:2], it[:, 3:]], axis=1)
            worse = nonfinite(vals)
            if worse.any():
                fail(start + int(np.flatnonzero(worse)[0]), "holds a non-finite item vector")
        inner = ~items
        buckets = inner & (nd <= k_max)
        if buckets.any():
            rows = a[buckets]
            used = np.arange(k_max) < rows[:, :1]
            ids = rows[:, 1:1 + k_max]
            out = used & ((ids < 0) | (ids >= n))
            if out.any():
                r, c = np.argwhere(out)[0]
                fail(int(idx[buckets][r]), f"lists item id {int(ids[r, c])}, not in 0..{n - 1}")
        splits = inner & (nd > k_max)
        if splits.any():
            rows = a[splits]
            where = idx[splits]
            worse = nonfinite(rows[:, float_cols])
            if worse.any():
                fail(int(where[np.flatnonzero(worse)[0]]), "holds a non-finite hyperplane")
            live = rows[:, 0] != n  # root candidates are checked once the roots are known
            children = rows[live, 1:3]
            parents = where[live]
            out = (children < 0) | (children >= parents[:, None])
            if out.any():
                r, c = np.argwhere(out)[0]
                fail(int(parents[r]), f"has child {int(children[r, c])}, not in 0..{int(parents[r]) - 1}")
            mark(children.ravel())

    if not is_root_count[-1]:
        tail = np.frombuffer(read((n_nodes - 1) * node_bytes, 4), dtype="<i4")[0]
        fail(n_nodes - 1, f"(the last) has n_descendants {int(tail)}, manifest n_items is {n}")
    others = np.flatnonzero(~is_root_count)
    first_root = int(others[-1]) + 1 if others.size else 0
    n_roots = n_nodes - first_root
    limit = n_trees if n > k_max else 2 * n_trees + 1
    if n_roots > limit + 1:
        raise CapsuleFormatError(f"index has {n_roots} annoy root nodes, manifest n_trees is {n_trees}")

    def node(i: int) -> np.ndarray:
        raw = read(i * node_bytes, node_bytes)
        if len(raw) != node_bytes:
            raise CapsuleFormatError(f"index read returned {len(raw)} bytes at node {i}, expected {node_bytes}")
        return np.frombuffer(raw, dtype="<i4")

    roots = list(range(n_nodes - 1, first_root - 1, -1))
    if len(roots) > 1 and node(roots[0])[1] == node(roots[-1])[1]:
        roots.pop()
    if len(roots) != n_trees if n > k_max else len(roots) > limit:
        raise CapsuleFormatError(f"index has {len(roots)} annoy roots, manifest n_trees is {n_trees}")
    if n > k_max:
        kids = []
        for r in roots:
            c = node(r)[1:3]
            if ((c < 0) | (c >= r)).any():
                fail(r, f"(a root) has child {int(c[(c < 0) | (c >= r)][0])}, not in 0..{r - 1}")
            kids.append(c)
        mark(np.concatenate(kids))
    hit = referenced & is_root_count
    if hit.any():
        fail(int(np.flatnonzero(hit)[0]), f"has n_descendants {n} like a root and is a child of a split node")
    return len(roots)


#: Largest re-ranking scale a reader accepts (FORMAT.md §5.2). The writer's scale is the largest
#: |coordinate| of a projected unit embedding over 127, at most about 2/127; 1 leaves a wide
#: margin while 127 * scale and sums of its squares stay far from float32 overflow.
MAX_REFINE_SCALE = 1.0


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
        if (scale <= 0).any() or (scale > MAX_REFINE_SCALE).any():
            raise CapsuleFormatError(f"projection holds a re-ranking scale <= 0 or > {MAX_REFINE_SCALE:g}")
        if (np.abs(mean) > 1).any() or (np.abs(axes) > 1).any():
            raise CapsuleFormatError("projection holds a mean or axis coordinate outside [-1, 1]")
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


#: Peak bytes per re-ranked value: the int8 gather and its float32 copy (the plan's ``query`` part).
RERANK_BYTES_PER_VALUE = 5
#: Candidates re-ranked per block: the rows in flight stay ``5 * 128 * dim_out`` bytes (160 kB at 256-d).
RERANK_BLOCK = 128


def rerank_peak_bytes(n_candidates: int, dim_out: int) -> int:
    """Bytes ``rerank`` holds at once for ``n_candidates`` rows of ``dim_out`` coordinates."""
    return RERANK_BYTES_PER_VALUE * min(max(n_candidates, 1), RERANK_BLOCK) * max(dim_out, 1)


def rerank(ids: np.ndarray, vecs: np.ndarray, scale: np.ndarray, z: np.ndarray, k: int
           ) -> tuple[list[int], list[float]]:
    """Score candidates by cosine with their dequantised VECS rows; return the ``k`` best.

    Args:
        ids: int64 [n_candidates], chunk ids (each ``< len(vecs)``).
        vecs: int8 [n_items, dim_out], the VECS rows.
        scale: float32 [dim_out], the dequantisation steps (PROJ ``scale``).
        z: float32 [dim_out], the projected query.
        k: results wanted.

    Returns:
        ``(ids, scores)``: at most ``k``, cosine descending, ties by chunk id ascending
        (FORMAT.md §4.4, "With projection").
    """
    z_norm = max(float(np.sqrt(np.einsum("i,i->", z, z))), 1e-12)
    scores = np.zeros(len(ids), dtype=np.float32)
    for start in range(0, len(ids), RERANK_BLOCK):  # rows in blocks: rerank_peak_bytes
        rows = vecs[ids[start:start + RERANK_BLOCK]].astype(np.float32)  # an int8 gather, one float32 copy
        rows *= scale
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows)) * z_norm
        np.divide(np.einsum("ij,j->i", rows, z), norms, out=scores[start:start + RERANK_BLOCK], where=norms > 0)
    order = np.lexsort((ids, -scores))[:k]
    return [int(i) for i in ids[order]], [float(s) for s in scores[order]]


def score_projected(embedding: np.ndarray, chunk_ids: list[int], k: int, *, vecs: np.ndarray,
                    projection: Projection) -> tuple[list[int], list[float]]:
    """Score ``chunk_ids`` by their VECS rows against the query ``embedding`` (float32 [dim_in]);
    return the ``k`` best as ``rerank`` does.

    Raises:
        ValueError: a chunk id outside ``0..len(vecs) - 1``.
    """
    if not chunk_ids:
        return [], []
    ids = np.asarray(chunk_ids, dtype=np.int64)
    if ids.min() < 0 or ids.max() >= len(vecs):
        raise ValueError(f"chunk ids must be in 0..{len(vecs) - 1}")
    return rerank(ids, vecs, projection.scale, projection.project_query(embedding), k)


def _load_vecs(info: IndexInfo, vecs_segments: Iterable[bytes] | None, vecs_view: memoryview | None
               ) -> np.ndarray | None:
    """The VECS rows, int8 [n_items, dim_out]: ``vecs_view`` in place, or ``vecs_segments`` copied
    into anonymous memory (the caller has reserved ``info.vecs_plaintext_bytes``).

    Raises:
        CapsuleFormatError: the rows are not exactly ``info.vecs_plaintext_bytes`` bytes.
    """
    vecs_bytes = info.vecs_plaintext_bytes
    if vecs_view is not None:
        if len(vecs_view) != vecs_bytes:
            raise CapsuleFormatError(f"re-ranking vectors are {len(vecs_view)} bytes, manifest needs {vecs_bytes}")
        vecs = np.frombuffer(vecs_view, dtype=np.int8)
    elif vecs_segments is not None:
        vecs = _read_exactly(vecs_segments, vecs_bytes, np.int8, what="re-ranking vectors")
    else:
        return None
    return vecs.reshape(info.n_items, info.projection.dim_out)


def _read_exactly(segments: Iterable[bytes], n_bytes: int, dtype, *, what: str) -> np.ndarray:
    """Copy ``segments`` into a new array of exactly ``n_bytes`` bytes; refuse more or fewer."""
    out = np.empty(n_bytes, dtype=np.uint8)
    filled = 0
    for piece in segments:
        if filled + len(piece) > n_bytes:
            raise CapsuleFormatError(f"{what} exceed the {n_bytes} bytes the manifest gives")
        out[filled:filled + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        filled += len(piece)
    if filled != n_bytes:
        raise CapsuleFormatError(f"{what} are {filled} bytes, manifest needs {n_bytes}")
    return out.view(dtype)


def binary_codes(rows: np.ndarray, n_bits: int) -> np.ndarray:
    """Return the binary codes of projected rows: uint64 [n, n_bits / 64], little-endian words.

    Bit ``b`` (least significant first) of word ``w`` is 1 exactly when coordinate ``64 w + b``
    of the row is > 0 (FORMAT.md §4.4.1). Used by the writer on the int8 VECS rows and by the
    reader on the projected query, so both sides take signs the same way.

    Args:
        rows: [n, >= n_bits] (any real dtype), or [>= n_bits] for one row.
        n_bits: a positive multiple of 64.
    """
    if n_bits <= 0 or n_bits % 64:
        raise ValueError(f"binary codes are whole 64-bit words, not {n_bits} bits")
    signs = np.asarray(rows)[..., :n_bits] > 0
    return np.packbits(signs, axis=-1, bitorder="little").view("<u8")


#: Set bits of every byte value: the popcount where NumPy has no ``bitwise_count`` (before 2.0;
#: ``pyproject.toml`` allows 1.26 for the tflite-runtime fallback).
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount_into(words: np.ndarray, out: np.ndarray) -> None:
    """Write the set bits of each uint64 of ``words`` into ``out`` (uint8, same length).

    ``np.bitwise_count`` (NumPy >= 2.0, a POPCNT / NEON ``cnt`` loop) where there is one, else a
    byte table: the same integers either way.
    """
    if _HAS_BITWISE_COUNT:
        np.bitwise_count(words, out=out)
    else:
        np.sum(_POPCOUNT8[words.view(np.uint8).reshape(-1, 8)], axis=1, dtype=np.uint8, out=out)


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


class BinaryCodeIndex:
    """A ``binary-codes`` index: an exhaustive Hamming scan proposes candidates, VECS re-ranks them.

    The codes are the sign bits of each chunk's first ``info.dim`` projected coordinates,
    stored word-major (FORMAT.md §4.4.1), so the scan streams ``n_items * dim / 8`` bytes in
    order: 0.32 ms for 100,000 chunks of 128 bits here (AMD EPYC, one thread,
    ``bench/results/code-scan.json``), against ~1 ms for Annoy's random node reads, and nothing
    but NumPy arithmetic ever touches the bytes. The
    ``n_candidates`` nearest in Hamming distance (ties: lower chunk id) are re-ranked by their int8
    rows as with Annoy (``rerank``). Study and figures: ``bench/INDEX_SIZE.md``.

    Create with ``from_segments``. ``search`` is safe from several threads: the scan's scratch
    arrays (``scratch_bytes``: one distance byte per item and a block of words, planned as part
    of the index) are used under a lock.
    """

    #: Items per block of the scan: its word and per-word distance scratch stay 72 kB, in L2.
    SCAN_BLOCK_ITEMS = 8192

    @classmethod
    def scratch_bytes(cls, n_items: int) -> int:
        """Bytes of the scan's scratch for ``n_items``: a uint8 distance per item, plus one
        uint64 word and one uint8 word distance per item of a block."""
        return n_items + 9 * min(n_items, cls.SCAN_BLOCK_ITEMS)

    def __init__(self, codes: np.ndarray, info: IndexInfo, budget: MemoryBudget, projection: Projection,
                 vecs: np.ndarray, reserved: dict[str, int], file_backed: bool) -> None:
        self._codes = codes  # uint64 [n_words, n_items]
        self.info = info
        self.n_bytes = info.codes_plaintext_bytes
        self._budget = budget
        self.projection = projection
        self._vecs = vecs
        self._reserved = reserved
        self.file_backed = file_backed
        block = min(info.n_items, self.SCAN_BLOCK_ITEMS)
        self._word = np.empty(block, dtype=np.uint64)
        self._word_distance = np.empty(block, dtype=np.uint8)
        self._distance = np.empty(info.n_items, dtype=np.uint8)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_segments(cls, segments: Iterable[bytes] | None, *, info: IndexInfo, budget: MemoryBudget,
                      projection: Projection, vecs_segments: Iterable[bytes] | None = None,
                      vecs_view: memoryview | None = None, codes_view: memoryview | None = None,
                      name_prefix: str = "") -> "BinaryCodeIndex":
        """Load verified codes and VECS rows.

        Args:
            segments: the INDX plaintext in pieces, ``info.codes_plaintext_bytes`` in all, copied
                into anonymous memory after it is reserved as ``index``; or ``None`` with
                ``codes_view``.
            codes_view: instead, the unencrypted INDX section itself, used in place (file-backed,
                not reserved); 8-byte aligned.
            vecs_segments, vecs_view: the VECS rows, as for ``VectorIndex.from_segments``.
            info, budget, projection, name_prefix: as for ``VectorIndex.from_segments``.

        Raises:
            CapsuleFormatError: the codes or rows are not exactly the manifest's length.
            BudgetExceededError: they do not fit the budget.
        """
        if info.format != "binary-codes" or info.projection is None or projection is None:
            raise ValueError("a binary-codes index needs its manifest's projection")
        if (segments is None) == (codes_view is None) or (vecs_segments is None) == (vecs_view is None):
            raise ValueError("give the codes as segments or a view, and the rows as segments or a view")
        codes_bytes = info.codes_plaintext_bytes
        if codes_view is not None and len(codes_view) != codes_bytes:
            raise CapsuleFormatError(f"binary codes are {len(codes_view)} bytes, manifest needs {codes_bytes}")
        scratch = cls.scratch_bytes(info.n_items)
        reserved = {f"{name_prefix}index": scratch + (codes_bytes if codes_view is None else 0),
                    f"{name_prefix}projection": projection.n_bytes}
        if vecs_segments is not None:
            reserved[f"{name_prefix}vecs"] = info.vecs_plaintext_bytes
        budget.acquire_all(reserved, what=f"{name_prefix or 'capsule '}index")
        try:
            vecs = _load_vecs(info, vecs_segments, vecs_view)
            if codes_view is not None:
                codes = np.frombuffer(codes_view, dtype="<u8")
            else:
                codes = _read_exactly(segments, codes_bytes, "<u8", what="binary codes")
            codes = codes.reshape(info.dim // 64, info.n_items)
        except BaseException:
            for name, size in reserved.items():
                budget.release(name, size)
            raise
        log.debug("binary codes loaded: %d items, %d bits, %s", info.n_items, info.dim,
                  "mapped" if codes_view is not None else "in memory")
        return cls(codes, info, budget, projection, vecs, reserved, file_backed=codes_view is not None)

    def candidates(self, z: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` chunk ids nearest to the projected query ``z`` in Hamming distance.

        Args:
            z: float32 [dim_out], the projected query.
            n: 1..n_items.

        Returns:
            int64 [n], in no particular order: every id whose distance is below the ``n``-th
            smallest, then the lowest ids at that distance. Integer arithmetic only, so the
            same on every CPU.
        """
        query = binary_codes(z, self.info.dim)
        with self._lock:
            if self._closed:
                raise ValueError("the index is closed")
            distance, n_items, n_words = self._distance, self.info.n_items, self._codes.shape[0]
            for start in range(0, n_items, self.SCAN_BLOCK_ITEMS):
                end = min(start + self.SCAN_BLOCK_ITEMS, n_items)
                word, word_distance = self._word[:end - start], self._word_distance[:end - start]
                block_distance = distance[start:end]
                for w in range(n_words):
                    np.bitwise_xor(self._codes[w, start:end], query[w], out=word)
                    popcount_into(word, word_distance if w else block_distance)
                    if w:
                        np.add(block_distance, word_distance, out=block_distance)
            histogram = np.bincount(distance, minlength=self.info.dim + 1)
            cutoff = int(np.searchsorted(np.cumsum(histogram), n))  # smallest d with count(<= d) >= n
            below = np.flatnonzero(distance < cutoff)
            at_cutoff = np.flatnonzero(distance == cutoff)[: n - len(below)]
        return np.concatenate([below, at_cutoff]).astype(np.int64, copy=False)

    def search(self, embedding: np.ndarray, k: int, *, search_k: int = -1) -> tuple[list[int], list[float]]:
        """Return the ``k`` best chunk ids and their cosine similarities, best first.

        As ``VectorIndex.search``; ``search_k`` (Annoy's) is ignored: the scan sees every code.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        if embedding.shape != (self.info.projection.dim_in,):
            raise ValueError(f"query embedding has shape {embedding.shape}, expected ({self.info.projection.dim_in},)")
        if not np.isfinite(embedding).all():
            raise ValueError("query embedding holds non-finite values")
        z = self.projection.project_query(embedding)
        ids = self.candidates(z, min(max(self.info.n_candidates, k), self.info.n_items))
        return rerank(ids, self._vecs, self.projection.scale, z, k)

    def score_items(self, embedding: np.ndarray, chunk_ids: list[int], k: int) -> tuple[list[int], list[float]]:
        """Score ``chunk_ids`` exhaustively against a query; return the ``k`` best, as ``search``."""
        return score_projected(embedding, chunk_ids, k, vecs=self._vecs, projection=self.projection)

    def item_vector(self, chunk_id: int) -> np.ndarray:
        """Return chunk ``chunk_id``'s dequantised VECS row, float32 [dim_out]."""
        if not 0 <= chunk_id < self.info.n_items:
            raise ValueError(f"chunk id {chunk_id} is not in 0..{self.info.n_items - 1}")
        return self._vecs[chunk_id].astype(np.float32) * self.projection.scale

    def close(self) -> None:
        """Drop the codes and rows and free their budget reservations."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._codes = self._vecs = None
            for name, size in self._reserved.items():
                self._budget.release(name, size)


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

        The Annoy bytes are checked with ``check_annoy_structure`` before Annoy sees them: in
        the memfd case after the memfd is sealed (``F_SEAL_WRITE``), so the bytes checked are
        the bytes Annoy maps. An ``index_path`` file is read through ``pread`` for the check; the
        caller must make sure nobody can write it afterwards (a device store's objects).

        Raises:
            CapsuleFormatError: ``n_bytes`` is not a whole number of nodes, the Annoy structure
                fails ``check_annoy_structure``, or ``vecs`` has the wrong shape.
            IntegrityError: Annoy sees a different item or root count than was checked (the
                file changed between the check and the load).
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
            vecs = _load_vecs(info, vecs_segments, vecs_view)
            if index_path is not None:
                fd = os.open(index_path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                # From here on the bytes checked are the bytes Annoy maps: nobody can change them.
                fd = sealed_memfd("edge-capsule-index", segments, n_bytes=n_bytes, what="index")
            n_roots = check_annoy_structure(lambda offset, size: os.pread(fd, size, offset), n_bytes=n_bytes,
                                            info=info)
            annoy = AnnoyIndex(info.dim, info.metric)
            if not annoy.load(f"/proc/self/fd/{fd}", prefault=False):
                raise CapsuleFormatError("annoy could not load the index")
            if annoy.get_n_items() != info.n_items or annoy.get_n_trees() != n_roots:
                raise IntegrityError(f"index has {annoy.get_n_items()} items and {annoy.get_n_trees()} roots "
                                     f"after load, checked {info.n_items} and {n_roots}")
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
        if not np.isfinite(embedding).all():
            raise ValueError("query embedding holds non-finite values")
        if self.projection is None:
            ids, distances = self._annoy_search(embedding, k, search_k)
            return ids, [1.0 - d * d / 2.0 for d in distances]
        z = self.projection.project_query(embedding)
        candidates, _ = self._annoy_search(z[: self.info.dim], max(self.info.n_candidates, k), search_k)
        if not candidates:
            return [], []
        return rerank(np.asarray(candidates, dtype=np.int64), self._vecs, self.projection.scale, z, k)

    def _annoy_search(self, vector: np.ndarray, n: int, search_k: int) -> tuple[list[int], list[float]]:
        """Annoy's ``n`` nearest ids and distances; ``n`` and ``search_k`` capped to a C int,
        and every id checked to be an item (Annoy returns what its file says)."""
        n = min(n, self.info.n_items)
        if search_k < 0:
            search_k = max(self.info.search_k, n * self.info.n_trees)
        ids, distances = self._annoy.get_nns_by_vector(vector.tolist(), n, search_k=min(search_k, ANNOY_INT_MAX),
                                                       include_distances=True)
        if len(ids) > n:
            raise CapsuleFormatError(f"annoy returned {len(ids)} ids, {n} asked for")
        stray = [i for i in ids if not 0 <= i < self.info.n_items]
        if stray:
            raise CapsuleFormatError(f"annoy returned id {stray[0]}, not in 0..{self.info.n_items - 1}")
        if not np.isfinite(distances).all():
            raise CapsuleFormatError("annoy returned a non-finite distance")
        return ids, distances

    def score_items(self, embedding: np.ndarray, chunk_ids: list[int], k: int) -> tuple[list[int], list[float]]:
        """Score ``chunk_ids`` exhaustively against a query; return the ``k`` best, as ``search``.

        Cosine similarity with each chunk's stored vector (``item_vector``), in the projected
        space when the capsule has a projection. Cost: one dot product per id.
        """
        if not chunk_ids:
            return [], []
        if self.projection is not None:  # the int8 rows, re-ranked in bounded blocks as search's candidates
            return score_projected(embedding, chunk_ids, k, vecs=self._vecs, projection=self.projection)
        query = embedding
        rows = np.stack([self.item_vector(c) for c in chunk_ids])
        norms = np.linalg.norm(rows, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
        scores = np.divide(rows @ query.astype(np.float32), norms, out=np.zeros(len(chunk_ids), dtype=np.float32),
                           where=norms > 0)
        ids = np.asarray(chunk_ids, dtype=np.int64)
        order = np.lexsort((ids, -scores))[:k]
        return [int(i) for i in ids[order]], [float(s) for s in scores[order]]

    def item_vector(self, chunk_id: int) -> np.ndarray:
        """Return chunk ``chunk_id``'s vector as stored: float32 [dim_out] (dequantised VECS row)
        with a projection, else the Annoy item, float32 [dim]."""
        if not 0 <= chunk_id < self.info.n_items:
            raise ValueError(f"chunk id {chunk_id} is not in 0..{self.info.n_items - 1}")
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
