"""Chunk embeddings -> Annoy index, PCA projection and int8 re-ranking vectors.

Writer for ``edge/index.py`` (FORMAT.md §4.4, §5.2-§5.3). Deterministic: the same
vectors, one Annoy build thread and a fixed seed give byte-identical output.

Example::

    built = build_index(vectors, n_trees=8, seed=42, work_dir=tmp, ann_dim=64, refine_dim=256)
    built.index_path, built.projection_bytes, built.vecs_path
    codes = build_index(vectors, n_trees=0, seed=0, work_dir=tmp2, ann_dim=128, refine_dim=256,
                        index_format="binary-codes")

Why a projection: a 384-d float32 Annoy item costs 1,548 bytes, three times a
500-character chunk of text. PCA to 256 coordinates kept SciFact nDCG@10 (exact
search 0.6556 -> 0.6577 with int8 rows), and Annoy over the first 64 coordinates
with 8 trees proposes 200 candidates that the int8 rows re-rank (0.6525 through
Annoy), for 370 + 256 bytes per chunk. ``bench/INDEX.md`` has the full table.

With ``index_format="binary-codes"`` (FORMAT.md §4.4.1) the INDX plaintext is instead the sign
bits of each chunk's first ``ann_dim`` int8 VECS coordinates, word-major: 16 bytes per chunk at
128 bits, scanned exhaustively at query time; SciFact nDCG@10 0.6548 with 400 candidates against
Annoy's 0.6561, for 4% of Annoy's bytes (``bench/INDEX_SIZE.md``).

Source: FORMAT.md §4.4; annoy (Spotify); Jégou et al., TPAMI 2011 (re-ranking); Charikar, STOC
2002 (sign bits of projections as a similarity hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from edge.index import Projection, binary_codes

#: Below this many chunks the builder keeps the full embeddings (PCA needs samples).
MIN_CHUNKS_FOR_PROJECTION = 2048
DEFAULT_ANN_DIM = 64
DEFAULT_REFINE_DIM = 256
DEFAULT_N_CANDIDATES = 200
#: ``binary-codes`` defaults: 128-bit codes, 400 candidates re-ranked (bench/INDEX_SIZE.md).
DEFAULT_CODE_BITS = 128
DEFAULT_N_CANDIDATES_CODES = 400
#: (n_trees, search_k) without and with projection, chosen on SciFact (bench/INDEX.md).
DEFAULT_TREES_FULL, DEFAULT_SEARCH_K_FULL = 16, 4000
DEFAULT_TREES_PROJECTED, DEFAULT_SEARCH_K_PROJECTED = 8, 8000
#: Eigenvalues below this fraction of the largest are the covariance's null space (fewer chunks than
#: coordinates): their axes are completed deterministically instead (``_complete_orthonormal``).
_NULL_EIGENVALUE = 1e-9
#: Largest |projected coordinate| that is rounding noise (measured ~2e-6 on a null-space axis; unit
#: embeddings' real coordinates peak at about 0.01-1).
_NOISE_PEAK = 1e-4
#: Rows per block of the projection passes: bounds their memory. The PCA's mean and covariance are
#: summed block by block, so the block size is part of what makes a build reproducible.
_BLOCK_ROWS = 16384


@dataclass(frozen=True)
class BuiltIndex:
    """The index sections' plaintexts, as files in the build's work folder.

    Attributes:
        index_path: the INDX plaintext: the Annoy file, or the binary codes.
        projection: the PCA projection, or ``None``.
        vecs_path: int8 [n_items, refine_dim] row-major (VECS plaintext); ``None`` without projection.
        dim: Annoy item dimension, or bits per binary code.
        format: ``"annoy"`` or ``"binary-codes"`` (the manifest's ``index.format``).
    """

    index_path: Path
    projection: Projection | None
    vecs_path: Path | None
    dim: int
    format: str = "annoy"

    @property
    def projection_bytes(self) -> bytes:
        """The PROJ plaintext (empty without projection)."""
        return b"" if self.projection is None else self.projection.to_bytes()

    @property
    def index_bytes(self) -> bytes:
        """The whole INDX plaintext (for small indexes and tests)."""
        return self.index_path.read_bytes()

    @property
    def vecs_bytes(self) -> bytes:
        """The whole VECS plaintext (for small indexes and tests)."""
        return b"" if self.vecs_path is None else self.vecs_path.read_bytes()


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
        block = np.array(vectors[start:start + _BLOCK_ROWS], dtype=np.float64)  # one float64 copy
        block -= mean
        cov += block.T @ block
        del block  # before the next block's copy: one block in memory at a time
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending eigenvalues
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    rank = int(np.count_nonzero(eigvals > _NULL_EIGENVALUE * max(float(eigvals[0]), 1e-300)))
    axes = eigvecs[:, :min(rank, dim_out)].T.copy()
    if len(axes) < dim_out:
        axes = _complete_orthonormal(axes, dim_out)
    signs = np.sign(axes[np.arange(dim_out), np.argmax(np.abs(axes), axis=1)])
    axes *= np.where(signs == 0, 1.0, signs)[:, None]
    axes16 = axes.astype(np.float16)
    completed = axes16[rank:]
    completed[completed == 0] = 0  # -0.0 (a residual of the completion) is stored as +0.0: one byte pattern
    return Projection(mean.astype(np.float32), axes16.astype(np.float32), np.ones(dim_out, dtype=np.float32))


def _complete_orthonormal(axes: np.ndarray, n_axes: int) -> np.ndarray:
    """Extend orthonormal rows ``axes`` [r, dim] to ``n_axes`` rows with standard basis vectors,
    taken in index order, each orthogonalised (Gram-Schmidt, twice) against the rows so far and
    kept when at least half of it remains.

    Fewer chunks than projected coordinates leave the covariance with a null space, and LAPACK
    returns an arbitrary basis of it that differs per BLAS kernel (measured: the test vectors'
    6-chunk, 64-coordinate capsule changed with ``OPENBLAS_CORETYPE``), so a build would not be
    reproducible. These axes carry no variance; any fixed basis of them serves.
    """
    dim = axes.shape[1]
    rows = list(axes)
    for i in range(dim):
        if len(rows) == n_axes:
            break
        v = np.zeros(dim, dtype=np.float64)
        v[i] = 1.0
        for _ in range(2):
            for row in rows:
                v -= float(np.dot(row, v)) * row
        norm = float(np.sqrt(np.dot(v, v)))
        if norm >= 0.5:
            rows.append(v / norm)
    return np.array(rows)


def project_for_build(projection: Projection, vectors: np.ndarray) -> np.ndarray:
    """Return ``(vectors - mean) @ axes.T`` as float32 [n, dim_out], computed in float64.

    The runtime's float32 ``Projection.project`` goes through whichever SGEMM kernel OpenBLAS
    picks for the CPU (Haswell, SkylakeX, Zen, NEON), and those round differently in the last
    bit, which then moves the quantization scale, the int8 rows and the Annoy trees. Computing in
    float64 and rounding once to float32 gives the same float32 on every kernel unless a value
    lies within float64 rounding noise of a float32 rounding boundary (about 2^-28 per value).
    Measured: the test vectors regenerate byte-identically with OPENBLAS_CORETYPE=Prescott,
    Haswell, SkylakeX and Zen (tests/vectors/README.md).
    """
    centred = np.array(vectors, dtype=np.float64)  # a copy, centred in place: one float64 array
    centred -= projection.mean.astype(np.float64)
    return (centred @ projection.axes.astype(np.float64).T).astype(np.float32)


def quantization_scale(peak: np.ndarray) -> np.ndarray:
    """Return float32 per-coordinate steps for symmetric int8 (-127..127) given max |value|.

    A coordinate whose peak is at most ``_NOISE_PEAK`` (a null-space axis of a covariance with
    fewer chunks than coordinates: rounding noise, which differs per BLAS kernel) gets step 1, so
    its rows quantise to 0 and the step does not depend on the noise.
    """
    return np.where(peak > _NOISE_PEAK, peak / 127.0, 1.0).astype(np.float32)


def quantize_rows(projected: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Return int8 rows with ``rows * scale ~= projected`` (FORMAT.md §5.3)."""
    return np.clip(np.rint(projected / scale), -127, 127).astype(np.int8)


def _new_annoy(dim: int, seed: int, on_disk_path: Path) -> AnnoyIndex:
    index = AnnoyIndex(dim, "angular")
    index.set_seed(seed)
    index.on_disk_build(str(on_disk_path))  # nodes live in the file, not in the builder's heap
    return index


def build_annoy_index(vectors: np.ndarray, *, n_trees: int, seed: int, path: Path) -> Path:
    """Build an Annoy index over ``vectors`` into ``path`` (built on disk) and return it.

    Args:
        vectors: float32 [n_items, dim] (a memmap is fine); item ``i`` is chunk ``i``.
        n_trees: number of random-projection trees (more: better recall, bigger file).
        seed: Annoy's random seed.
        path: the file to write; ``n_nodes * (12 + 4 * dim)`` bytes when done.
    """
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(f"vectors must be [n_items >= 1, dim], got {vectors.shape}")
    index = _new_annoy(vectors.shape[1], seed, path)
    for start in range(0, vectors.shape[0], _BLOCK_ROWS):
        block = np.asarray(vectors[start:start + _BLOCK_ROWS], dtype=np.float32)
        for offset, row in enumerate(block):
            index.add_item(start + offset, row.tolist())
    index.build(n_trees, n_jobs=1)
    index.unload()
    return path


def build_index(vectors: np.ndarray, *, n_trees: int, seed: int, work_dir: Path, ann_dim: int | None = None,
                refine_dim: int | None = None, projection: Projection | None = None,
                index_format: str = "annoy") -> BuiltIndex:
    """Build the index sections for chunk embeddings, streaming over ``vectors`` in blocks.

    Args:
        vectors: float32 [n_items, model_dim], unit norm (a memmap is fine); row ``i`` is chunk ``i``.
        n_trees: Annoy trees.
        seed: Annoy seed.
        work_dir: folder for the Annoy and VECS files.
        ann_dim: Annoy dimension with projection, or bits per code for ``binary-codes`` (a
            multiple of 64); ``None`` with ``refine_dim`` ``None`` means no projection (Annoy
            over the full embeddings).
        refine_dim: PCA coordinates kept for re-ranking (VECS); ``ann_dim <= refine_dim``.
        projection: use this projection's mean and axes instead of fitting them (a delta segment
            projects into its base's space, so scores compare across segments: FORMAT.md §4.7);
            ``refine_dim`` must be its ``dim_out``. The int8 scale is this build's own.
        index_format: ``"annoy"``, or ``"binary-codes"`` (needs the projection; ``n_trees`` and
            ``seed`` are unused): the codes are ``binary_codes`` of the int8 rows, written
            word-major (FORMAT.md §4.4.1), ``n_items * ann_dim / 8`` bytes held in memory.

    Returns:
        ``BuiltIndex``. Memory: Annoy builds on disk; the projection passes hold one block of
        ``_BLOCK_ROWS`` (16,384) rows at a time, about 50 MB in float64, whatever the chunk count
        (measured on 200,000 random unit vectors: peak RssAnon 163 MiB above the process's start,
        against 567 MiB with 65,536-row blocks and out-of-place arithmetic before 2026-12-07).
    """
    work_dir = Path(work_dir)
    annoy_path = work_dir / "index.annoy"
    if (ann_dim is None) != (refine_dim is None):
        raise ValueError("give both ann_dim and refine_dim, or neither")
    if index_format not in ("annoy", "binary-codes"):
        raise ValueError(f"index_format must be annoy or binary-codes, not {index_format!r}")
    codes = index_format == "binary-codes"
    if codes and (refine_dim is None or ann_dim % 64):
        raise ValueError("binary codes need the projection and a multiple of 64 bits")
    if refine_dim is None:
        build_annoy_index(vectors, n_trees=n_trees, seed=seed, path=annoy_path)
        return BuiltIndex(annoy_path, None, None, vectors.shape[1])
    n_items = vectors.shape[0]
    if not 1 <= ann_dim <= refine_dim <= vectors.shape[1]:
        raise ValueError(f"need 1 <= ann_dim {ann_dim} <= refine_dim {refine_dim} <= {vectors.shape[1]}")
    if projection is None:
        projection = fit_projection(vectors, refine_dim)
    elif projection.axes.shape != (refine_dim, vectors.shape[1]):
        raise ValueError(f"the given projection maps {projection.axes.shape[1]} -> {projection.axes.shape[0]}, "
                         f"not {vectors.shape[1]} -> {refine_dim}")
    peak = np.zeros(refine_dim, dtype=np.float32)
    for start in range(0, n_items, _BLOCK_ROWS):
        peak = np.maximum(peak, np.abs(project_for_build(projection, vectors[start:start + _BLOCK_ROWS])).max(axis=0))
    projection = Projection(projection.mean, projection.axes, quantization_scale(peak))
    index = None if codes else _new_annoy(ann_dim, seed, annoy_path)
    words = np.empty((ann_dim // 64, n_items), dtype="<u8") if codes else None
    vecs_path = work_dir / "vecs.int8"
    with open(vecs_path, "wb") as vecs_out:
        for start in range(0, n_items, _BLOCK_ROWS):
            projected = project_for_build(projection, vectors[start:start + _BLOCK_ROWS])
            rows = quantize_rows(projected, projection.scale)
            vecs_out.write(rows.tobytes())
            if codes:
                words[:, start:start + len(rows)] = binary_codes(rows, ann_dim).T
                continue
            for offset, row in enumerate(projected[:, :ann_dim]):
                index.add_item(start + offset, row.tolist())
    if codes:
        codes_path = work_dir / "index.codes"
        codes_path.write_bytes(words.tobytes())
        return BuiltIndex(codes_path, projection, vecs_path, ann_dim, "binary-codes")
    index.build(n_trees, n_jobs=1)
    index.unload()
    return BuiltIndex(annoy_path, projection, vecs_path, ann_dim)
