"""Open a capsule (verify everything first), search it, and read chunks from frames.

``open_capsule`` is the only way to get a ``Capsule``; it returns one only after
the header, signatures, manifest, validity window, rules, model, key unwrap and
section digests have all checked out (FORMAT.md §11). Text only ever comes out of
a frame whose AEAD verified. Nothing is written to disk: the index is decrypted
into a memfd. A capsule opened by path is read with bounded preads
(``edge.container``): small sections are read once and parsed from the copy that
was hashed, an unencrypted index is hashed while it is copied, and each video
sample is read when its frame is decoded, so a file that shrinks or changes under
an open capsule gives a typed error, not SIGBUS. Only device-store objects, which
the runtime owns, are memory-mapped.

Example::

    capsule = open_capsule("manual.capsule", trusted_keys=[load_public_key("pub.pem")],
                           identities=[load_identity("device.key")])
    for hit in capsule.search("how do I reset the unit?", k=5):
        print(f"{hit.score:.3f} {hit.document}:{hit.char_start} {hit.text[:60]}")
    capsule.close()

Source: FORMAT.md §11 (open order), §5-§6 (frames).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import format as fmt
from .budget import (
    FRAME_DECODER_BASE_BYTES,
    LITERT_SESSION_BYTES,
    MODEL_SESSION_BYTES,
    QUERY_BASE_BYTES,
    MemoryBudget,
    format_mib,
)
from .container import BLOCK_BYTES, ContainerFile
from .embedder import QueryEmbedder, check_engine, find_model_dir
from .errors import BudgetExceededError, CapsuleError, CapsuleFormatError, IntegrityError, ModelError
from .frames import FrameReader
from .index import Projection, VectorIndex
from ._version import __version__
from .keys import ContentKey, Passphrase, keyid
from .clock import format_time, utc_now
from .manifest import Manifest, parse_canonical_json, parse_manifest, parse_signatures
from .rules import MemoryUseLog, Rules, UsePolicy, check_validity_at, parse_rules
from .sealed import (
    ChunkRecord,
    ContentKeys,
    JSON_PARSE_PEAK_FACTOR,
    MAX_DOCS_WINDOW_BYTES,
    decompress_bounded,
    docs_plaintext_limit,
    derive_keys,
    iter_open_stream,
    open_frame,
    open_stream,
    stream_plaintext_bytes,
    unwrap_content_key,
    zstd_content_size,
    zstd_decompressor,
)
from .trust import DeviceState, verify_manifest_with_root
from .verify import verify_signatures

log = logging.getLogger(__name__)

Identity = X25519PrivateKey | Passphrase | ContentKey
DEFAULT_FRAME_CACHE_BYTES = 1 << 20


@dataclass(frozen=True)
class Hit:
    """One search result or read chunk.

    Attributes:
        chunk_id: 0-based chunk id (= Annoy item id).
        score: cosine similarity to the query in [-1, 1] (1.0 for ``read_chunk``).
        document: source document name as given to the builder.
        char_start, char_end: position of the chunk in the document text, in code points.
        frame_index, slot_index: where the chunk's text was read from in the MP4.
        text: the chunk text, read from its frame and authenticated.
        capsule: name of the capsule it came from (manifest ``name``).
    """

    chunk_id: int
    score: float
    document: str
    char_start: int
    char_end: int
    frame_index: int
    slot_index: int
    text: str
    capsule: str = ""

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict of all fields."""
        return {"capsule": self.capsule, "chunk_id": self.chunk_id, "score": round(self.score, 6),
                "document": self.document,
                "char_start": self.char_start, "char_end": self.char_end,
                "frame_index": self.frame_index, "slot_index": self.slot_index, "text": self.text}


@dataclass
class StageTimings:
    """Milliseconds spent per query stage in the last ``search`` call."""

    embed_ms: float = 0.0
    ann_ms: float = 0.0
    frame_decode_ms: float = 0.0
    qr_decode_ms: float = 0.0
    decrypt_ms: float = 0.0
    n_frames_decoded: int = 0


@dataclass(frozen=True)
class Document:
    """A source document as recorded in the DOCS section (FORMAT.md §8).

    Attributes:
        name: the document's name as given to the builder (relative path).
        n_bytes: the source file's size in bytes.
        media_type: e.g. ``text/plain``, ``application/pdf``.
    """

    name: str
    n_bytes: int
    media_type: str



def _check_sha256(data: bytes, manifest: Manifest, tag: str) -> bytes:
    """Return ``data`` (section ``tag`` as read) if its SHA-256 is the manifest's."""
    _compare_digest(hashlib.sha256(data).hexdigest(), manifest, tag)
    return data


def _compare_digest(actual: str, manifest: Manifest, tag: str) -> None:
    expected = manifest.sections[tag].sha256
    if actual != expected:
        raise IntegrityError(f"{tag} section sha256 is {actual[:16]}…, manifest says {expected[:16]}…")


def _read_section(cf: ContainerFile, manifest: Manifest, tag: str, verified_sections: Collection[str]) -> bytes:
    """Read section ``tag`` once and check that very copy against the manifest (unless the store
    verified this file at install); what is parsed is what was hashed."""
    data = cf.read(tag)
    return data if tag in verified_sections else _check_sha256(data, manifest, tag)


def _hashed_blocks(cf: ContainerFile, manifest: Manifest, tag: str) -> Iterator[bytes]:
    """Yield section ``tag`` in blocks while hashing them; after the last block, raise
    ``IntegrityError`` unless the digest is the manifest's. The consumer must not use the bytes
    before the generator is exhausted (``VectorIndex.from_segments`` writes them all first)."""
    hasher = hashlib.sha256()
    for block in cf.iter_blocks(tag):
        hasher.update(block)
        yield block
    _compare_digest(hasher.hexdigest(), manifest, tag)


def _hash_video(cf: ContainerFile, manifest: Manifest, frames: fmt.FrameTable) -> np.ndarray:
    """Hash ``VIDE`` against the manifest and return each sample's SHA-256 from the same bytes.

    One sequential pass of bounded preads (``container.BLOCK_BYTES``, at least one sample, so a
    sample spans at most two blocks). The per-sample digests, uint8 [n_frames, 32], let the
    frame reader authenticate every sample it reads later, one at a time: the bytes FFmpeg
    decodes are bytes the signed manifest pins, even if the file changes after the open.

    Raises:
        IntegrityError: the section's SHA-256 is not the manifest's, or the file shrank.

    Source: FORMAT.md §5 (frame table); issue 9 ("authenticate every sample before decoding it").
    FORMAT-v2.md §3 pins these digests in FTAB instead, which removes this pass.
    """
    offsets = frames.sample_offsets.astype(np.int64)
    ends = offsets + frames.sample_bytes.astype(np.int64)
    order = np.argsort(ends, kind="stable")
    digests = np.empty((frames.n_frames, 32), dtype=np.uint8)
    section = hashlib.sha256()
    previous, previous_start, start, k = b"", 0, 0, 0
    for block in cf.iter_blocks("VIDE"):
        section.update(block)
        block_end = start + len(block)
        while k < order.shape[0] and ends[order[k]] <= block_end:
            i = int(order[k])
            a, b = int(offsets[i]), int(ends[i])
            if a >= start:
                sample = block[a - start:b - start]
            elif a >= previous_start:  # spans the two blocks (a sample is <= one block)
                sample = previous[a - previous_start:] + block[:b - start]
            else:  # overlapping samples: read this one again, it is hashed like the rest
                sample = cf.read_at(cf.sections["VIDE"].offset + a, b - a, what="VIDE section")
            digests[i] = np.frombuffer(hashlib.sha256(sample).digest(), dtype=np.uint8)
            k += 1
        previous, previous_start, start = block, start, block_end
    _compare_digest(section.hexdigest(), manifest, "VIDE")
    return digests


def _read_verified_manifest(cf: ContainerFile, trusted_keys: Sequence[Ed25519PublicKey], threshold: int,
                            device: DeviceState | None = None, at: datetime | None = None,
                            expected_manifest_sha256: str | None = None) -> Manifest:
    mani = cf.read("MANI")
    if expected_manifest_sha256 is not None and hashlib.sha256(mani).hexdigest() != expected_manifest_sha256:
        # before any signature check, so a swapped file moves no device state
        raise IntegrityError(f"{cf.path} holds another manifest than the one installed under its name "
                             "(the file was replaced after install)")
    signatures = parse_signatures(cf.read("SIGS"))
    if trusted_keys:
        verify_signatures(mani, signatures, trusted_keys, threshold=threshold)
    elif device is not None and device.root is not None:
        verify_manifest_with_root(mani, signatures, device.root, at, threshold=threshold)
    else:
        raise ValueError("no trusted keys given, and the device has no trust document")
    manifest = parse_manifest(mani)
    for tag, digest in manifest.sections.items():
        actual = cf.sections[tag].length
        if actual != digest.length:
            raise IntegrityError(f"{tag} section is {actual} bytes, manifest says {digest.length}")
    if cf.sections["FTAB"].length != manifest.video.n_frames * fmt.FRAME_ENTRY_BYTES:
        raise CapsuleFormatError(
            f"frame table is {cf.sections['FTAB'].length} bytes, manifest says {manifest.video.n_frames} frames"
        )
    return manifest


def _check_trust(cf: ContainerFile, *, trusted_keys: Sequence[Ed25519PublicKey], threshold: int,
                 device: DeviceState | None, now: datetime, identities: Sequence[Identity],
                 device_rules: bool = True, expected_manifest_sha256: str | None = None) -> tuple[Manifest, Rules]:
    """Signatures, version record, time floor, validity window and open-level rules (FORMAT.md §11)."""
    if device is not None:
        device.observe(now)
    at = device.trusted_time(now) if device is not None else now
    manifest = _read_verified_manifest(cf, trusted_keys, threshold, device, at, expected_manifest_sha256)
    if device is not None:
        device.observe(now, manifest.issued_at)
        at = device.trusted_time(now)
        device.check_version(manifest)
    check_validity_at(manifest, now=now, at=at)
    manifest.check_rules()
    rules = parse_rules(manifest.rules)
    if device_rules:
        rules.check_device(device_keyids=[keyid(i.public_key()) for i in identities if isinstance(i, X25519PrivateKey)],
                           hardware_id=device.hardware_id if device is not None else None)
        rules.check_runtime(__version__)
    return manifest, rules


class Capsule:
    """A verified, opened capsule. Create with ``open_capsule``; close when done.

    Attributes:
        manifest: the verified manifest.
        documents: source documents (decrypted DOCS).
        decoder_name: the video decoder in use (``h264_v4l2m2m``/``hevc_v4l2m2m`` or ``h264``/``hevc``).
        embedder_engine: the model family and engine embedding queries.
        budget: the memory budget the capsule's allocations are charged to.
        memory_plan: bytes reserved in ``budget`` for this capsule, by component.
        last_timings: per-stage milliseconds of the last ``search``.
    """

    def __init__(self, *, cf: ContainerFile, manifest: Manifest, keys: ContentKeys, documents: list[Document],
                 frames: fmt.FrameTable, index: VectorIndex, reader: FrameReader, embedder: QueryEmbedder,
                 owns_embedder: bool, budget: MemoryBudget, memory_plan: dict[str, int], reservation_prefix: str,
                 frame_cache_bytes: int, verified_at: datetime, decompressor,
                 policy: UsePolicy | None = None) -> None:
        self._cf = cf
        self.manifest = manifest
        self._keys = keys
        self.documents = documents
        self._frames = frames
        self._index = index
        self._reader = reader
        self._embedder = embedder
        self._owns_embedder = owns_embedder
        self.budget = budget
        self.memory_plan = memory_plan
        self._prefix = reservation_prefix
        self.verified_at = verified_at
        self._decompressor = decompressor
        self._cache: OrderedDict[int, list[ChunkRecord]] = OrderedDict()
        self._cache_sizes: dict[int, int] = {}
        self._cache_limit = frame_cache_bytes
        self._closed = False
        self.last_timings = StageTimings()
        self._policy = policy if policy is not None else UsePolicy(manifest, parse_rules(manifest.rules),
                                                                   log=MemoryUseLog())
        self._ranked: set[int] = set()

    @property
    def rules(self) -> Rules:
        """The capsule's parsed rules (FORMAT.md §4.2)."""
        return self._policy.rules

    @property
    def decoder_name(self) -> str:
        """Name of the video decoder in use."""
        return self._reader.decoder_name

    @property
    def embedder_engine(self) -> str:
        """Model family and inference engine in use, e.g. ``"tflite (ai-edge-litert 2.3.0)"``."""
        return f"{self._embedder.family} ({self._embedder.engine})"

    @property
    def path(self) -> Path:
        """Path of the capsule file."""
        return self._cf.path

    @property
    def embedder(self) -> QueryEmbedder:
        """The query embedder (shared when several capsules use one model)."""
        return self._embedder

    def __enter__(self) -> "Capsule":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _frame_records(self, frame_index: int, timings: StageTimings) -> list[ChunkRecord]:
        cached = self._cache.get(frame_index)
        if cached is not None:
            self._cache.move_to_end(frame_index)
            return cached
        t0 = time.perf_counter()
        luma = self._reader.decode_frame(frame_index)
        t1 = time.perf_counter()
        payload = self._reader.decode_qr(luma, frame_index)
        t2 = time.perf_counter()
        first = int(self._frames.first_chunk_ids[frame_index])
        records = open_frame(self._keys.payload, payload, manifest=self.manifest, frame_index=frame_index,
                             first_chunk_id=first, n_slots=self._frames.n_slots(frame_index),
                             decompressor=self._decompressor)
        t3 = time.perf_counter()
        timings.frame_decode_ms += (t1 - t0) * 1e3
        timings.qr_decode_ms += (t2 - t1) * 1e3
        timings.decrypt_ms += (t3 - t2) * 1e3
        timings.n_frames_decoded += 1
        # The cache's whole size is reserved at open; entries are evicted to stay inside it.
        size = sum(len(r.text) * 4 + 64 for r in records)  # upper bound of str storage
        if size <= self._cache_limit:
            while self._cache and sum(self._cache_sizes.values()) + size > self._cache_limit:
                old, _ = self._cache.popitem(last=False)
                self._cache_sizes.pop(old)
            self._cache[frame_index] = records
            self._cache_sizes[frame_index] = size
        return records

    def clear_cache(self) -> None:
        """Drop the decrypted frames kept for reuse (their reservation stays)."""
        self._cache.clear()
        self._cache_sizes.clear()

    def _hit(self, chunk_id: int, score: float, timings: StageTimings) -> Hit:
        frame_index, slot, _ = self._frames.locate(chunk_id)
        record = self._frame_records(frame_index, timings)[slot]
        return Hit(chunk_id, score, self.documents[record.doc_index].name, record.char_start, record.char_end,
                   frame_index, slot, record.text, self.manifest.name)

    def rank(self, embedding, k: int, *, search_k: int = -1,
             now: datetime | None = None) -> tuple[list[int], list[float]]:
        """Return the ``k`` best chunk ids and scores for a query embedding; reads no frame.

        A rank is one search use of the capsule: the validity window and the rules
        (``operations``, ``query_limits``, ``rate_limit``) are checked first, and only the ids it
        returns can then be read with ``read_hits``.

        Args:
            embedding: float32 [model.dim] from ``self.embedder`` (unit norm).
            k: results wanted, >= 1 (capped at ``n_chunks``).
            search_k: Annoy nodes to inspect; -1 uses the manifest's recommendation.
            now: timezone-aware time of the query; ``None`` reads the clock once.

        Returns:
            ``(chunk_ids, scores)``, score (cosine similarity) descending.

        Raises:
            ExpiredCapsuleError, NotYetValidError, RuleViolationError, RateLimitedError: as for
                ``search``.
            RuntimeError: the capsule is closed.
        """
        self._check_open()
        self._policy.before_use("search", at=utc_now(now), k=k)
        return self._rank(embedding, k, search_k)

    def _rank(self, embedding, k: int, search_k: int) -> tuple[list[int], list[float]]:
        ids, scores = self._index.search(embedding, min(k, self.manifest.n_chunks), search_k=search_k)
        self._ranked = {int(i) for i in ids}
        return ids, scores

    def read_hits(self, chunk_ids, scores, timings: StageTimings | None = None) -> list[Hit]:
        """Return ``Hit``s for ranked chunk ids, each text read from its frame and authenticated.

        Raises:
            FrameDecodeError, DecryptionError, CapsuleFormatError: as for ``search``.
            ValueError: an id the last ``rank`` did not return (reading by id is ``read_chunk``,
                which the rules govern separately).
            RuntimeError: the capsule is closed.
        """
        self._check_open()
        stray = [int(i) for i in chunk_ids if int(i) not in self._ranked]
        if stray:
            raise ValueError(f"chunk(s) {stray[:5]} were not returned by the last rank; use read_chunk")
        timings = timings if timings is not None else StageTimings()
        return [self._hit(int(i), float(score), timings) for i, score in zip(chunk_ids, scores)]

    def search(self, query: str, k: int = 5, *, search_k: int = -1, now: datetime | None = None) -> list[Hit]:
        """Return the ``k`` chunks nearest to ``query``, best first.

        Args:
            query: UTF-8 text; truncated to ``manifest.model.max_tokens`` tokens.
            k: number of hits, ``1 <= k``; capped at ``manifest.n_chunks``.
            search_k: Annoy nodes to inspect; -1 uses the manifest's ``index.search_k``.
            now: timezone-aware time of the query; ``None`` reads the clock once.

        Returns:
            Up to k ``Hit``s, score (cosine similarity) descending; every text was read
            from its frame and authenticated.

        Raises:
            ExpiredCapsuleError, NotYetValidError: outside the validity window at the trusted time.
            RuleViolationError: the rules forbid searching, or more than ``query_limits.max_k`` results.
            RateLimitedError: the ``rate_limit`` rule allows no query now.
            FrameDecodeError: a hit's frame cannot be decoded.
            DecryptionError: a hit's frame fails authentication (the MP4 was altered).
            CapsuleFormatError: a frame's plaintext is malformed.
            ModelError: the embedder's output has the wrong shape.
            ValueError: ``k < 1`` or an empty query.
            RuntimeError: the capsule is closed.

        Source: FORMAT.md §4.4-§6.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be non-empty text")
        if k < 1:
            raise ValueError("k must be >= 1")
        self._check_open()
        self._policy.before_use("search", at=utc_now(now), k=k)
        timings = StageTimings()
        t0 = time.perf_counter()
        vector = self._embedder.embed([query])[0]
        t1 = time.perf_counter()
        ids, scores = self._rank(vector, k, search_k)
        t2 = time.perf_counter()
        timings.embed_ms = (t1 - t0) * 1e3
        timings.ann_ms = (t2 - t1) * 1e3
        hits = self.read_hits(ids, scores, timings)
        self.last_timings = timings
        return hits

    def read_chunk(self, chunk_id: int, *, now: datetime | None = None) -> Hit:
        """Return chunk ``chunk_id`` read from its frame (score 1.0).

        Raises:
            ValueError: ``chunk_id`` outside ``0..n_chunks-1``.
            ExpiredCapsuleError, NotYetValidError, RuleViolationError, RateLimitedError: the
                validity window or the rules forbid reading now (FORMAT.md §4.2).
            FrameDecodeError, DecryptionError, CapsuleFormatError: as for ``search``.
        """
        self._check_open()
        if not 0 <= chunk_id < self.manifest.n_chunks:
            raise ValueError(f"chunk id {chunk_id} outside 0..{self.manifest.n_chunks - 1}")
        self._policy.before_use("read", at=utc_now(now))
        return self._hit(chunk_id, 1.0, StageTimings())

    def export(self, *, now: datetime | None = None) -> Iterator[Hit]:
        """Yield every chunk in id order, each read from its frame (score 1.0).

        The rules are checked once, before the first chunk; the export counts as one query.

        Raises:
            ExpiredCapsuleError, NotYetValidError, RuleViolationError, RateLimitedError: the
                validity window or the rules forbid exporting now (FORMAT.md §4.2).
            FrameDecodeError, DecryptionError, CapsuleFormatError: as for ``search``.
            RuntimeError: the capsule is closed.
        """
        self._check_open()
        self._policy.before_use("export", at=utc_now(now))
        timings = StageTimings()
        for chunk_id in range(self.manifest.n_chunks):
            yield self._hit(chunk_id, 1.0, timings)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("capsule is closed")

    def info(self) -> dict[str, object]:
        """Return a JSON-ready summary of the verified manifest and runtime state."""
        m = self.manifest
        return {
            "name": m.name, "capsule_id": m.capsule_id, "version": m.version,
            "publisher": {"keyid": m.publisher_keyid, "name": m.publisher_name},
            "issued_at": format_time(m.issued_at),
            "not_before": format_time(m.not_before),
            "expires_at": format_time(m.expires_at),
            "n_chunks": m.n_chunks, "n_documents": m.n_documents, "n_frames": m.video.n_frames,
            "model": {"name": m.model.name, "family": m.model.family, "sha256": m.model.sha256,
                      "dim": m.model.dim},
            "embedder": {"family": self._embedder.family, "engine": self._embedder.engine,
                         "threads": self._embedder.n_threads, "model_path": str(self._embedder.model_path)},
            "index": {"dim": m.index.dim, "n_trees": m.index.n_trees, "search_k": m.index.search_k,
                      "n_candidates": m.index.n_candidates,
                      "projection": None if m.index.projection is None else
                      {"method": m.index.projection.method, "dim_in": m.index.projection.dim_in,
                       "dim_out": m.index.projection.dim_out},
                      "encryption": m.index.encryption, "bytes": self._index.n_bytes,
                      "mapped_from": "file" if self._index.file_backed else "memory"},
            "video": {"codec": m.video.codec, "profile": m.video.profile, "size": f"{m.video.width}x{m.video.height}",
                      "crf": m.video.crf, "qr": f"v{m.video.qr_version}-{m.video.qr_ec_level}"},
            "rules": m.rules,
            "sections": {tag: {"length": s.length, "sha256": s.sha256} for tag, s in m.sections.items()},
            "file_bytes": self._cf.header.file_bytes,
            "decoder": self.decoder_name,
            "decoder_is_hardware": self._reader.is_hardware,
            "memory": {"plan_bytes": dict(self.memory_plan), **self.budget.report()},
        }

    def close(self) -> None:
        """Release the index, decoder, cache, file mapping and every reservation. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._index.close()
        self._reader.close()
        self._cache.clear()
        self._cf.close()
        for name in self.memory_plan:
            self.budget.release(self._prefix + name)


_open_counter = itertools.count(1)


def _import_runtime_libraries() -> None:
    """Import what queries need, so that the ``runtime`` reservation measures it."""
    import annoy  # noqa: F401  (pyflakes: imported for its memory, not used)
    import av  # noqa: F401
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # a runtime with only LiteRT: check_engine() says what the capsule needs
        pass
    import zxingcpp  # noqa: F401


def memory_plan(manifest: Manifest, *, section_lengths: dict[str, int], frame_cache_bytes: int,
                include_model: bool, index_from_file: bool = False) -> dict[str, int]:
    """Return the bytes a capsule will hold once open, by component (see ``edge.budget``).

    Args:
        manifest: the verified manifest.
        section_lengths: length of each section in the file.
        frame_cache_bytes: the decrypted-frame cache limit.
        include_model: whether this capsule loads its own model session.
        index_from_file: the capsule is a device-store object the runtime owns: its Annoy
            plaintext and unencrypted VECS are mapped from files (not held in memory).

    Returns:
        Bytes per component; every value >= 0.

    Source: edge/budget.py (what each component costs, measured).
    """
    info = manifest.index
    if info.encryption == "none":
        index_bytes = section_lengths["INDX"]
        # used in place from the mapping of a store object; copied when opened by path
        vecs_bytes = 0 if index_from_file else info.vecs_plaintext_bytes
    else:
        index_bytes = stream_plaintext_bytes(section_lengths["INDX"])
        vecs_bytes = info.vecs_plaintext_bytes
    projection = info.projection
    dim_out = projection.dim_out if projection else 0
    plan = {
        "model": (LITERT_SESSION_BYTES if manifest.model.family == "tflite" else MODEL_SESSION_BYTES)
        if include_model else 0,
        "index": 0 if index_from_file else index_bytes,
        "vecs": vecs_bytes,
        "projection": 4 * (projection.dim_in * projection.dim_out + projection.dim_in + projection.dim_out)
        if projection else 0,
        # parsed JSON while reading (~1 KiB per entry) outlives nothing but is the peak
        "documents": 1024 * manifest.n_documents + 4 * stream_plaintext_bytes(section_lengths["DOCS"]),
        "frame_table": 3 * section_lengths["FTAB"],
        # per-sample SHA-256 kept when opened by path (_hash_video)
        "sample_digests": 0 if index_from_file else 32 * manifest.video.n_frames,
        "dictionary": 2 * manifest.dictionary_bytes + (512 << 10),
        "frame_decoder": FRAME_DECODER_BASE_BYTES + 3 * manifest.video.width * manifest.video.height
        + 2 * manifest.max_plaintext_bytes,  # decompress_bounded: output + its checking pass
        "frame_cache": frame_cache_bytes,
        "query": QUERY_BASE_BYTES + 8 * max(info.n_candidates, 1) * max(dim_out, 1),
    }
    return plan


@dataclass(frozen=True)
class OpenOptions:
    """How ``open_capsule`` and ``verify_capsule`` open a capsule, beyond keys, budget and time.

    Attributes:
        threshold: distinct trusted signatures required (the trust document's when higher), >= 1.
        device: the device's state (trust document, time floor, version records, hardware id,
            rate log; FORMAT.md §13); ``None`` judges validity at ``now`` and keeps the rate in
            memory. A device store passes its own (``Store.open``).
        model_search_path: directories holding model folders (see ``find_model_dir``).
        n_threads: onnxruntime intra-op threads for query embedding, >= 1.
        prefer_hardware_decoder: try ``h264_v4l2m2m``/``hevc_v4l2m2m`` before software decoding.
        frame_cache_bytes: bytes of decrypted frames to keep (an LRU cache), reserved at open, >= 0.

    Raises:
        ValueError: ``threshold`` or ``n_threads`` below 1, or ``frame_cache_bytes`` negative.
    """

    threshold: int = 1
    device: DeviceState | None = None
    model_search_path: Sequence[Path] | None = None
    n_threads: int = 1
    prefer_hardware_decoder: bool = True
    frame_cache_bytes: int = DEFAULT_FRAME_CACHE_BYTES

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.n_threads < 1 or self.frame_cache_bytes < 0:
            raise ValueError(f"OpenOptions: threshold ({self.threshold}) and n_threads ({self.n_threads}) must be "
                             f">= 1, frame_cache_bytes ({self.frame_cache_bytes}) >= 0")


@dataclass(frozen=True)
class _InstalledObject:
    """What a device store verified at install; the store builds it (``Store._installed_object``).

    Attributes:
        manifest_sha256: SHA-256 (hex) of the MANI bytes the catalogue recorded: any other
            manifest is refused before its signatures are checked, so a swapped file moves no
            device state.
        verified_sections: sections hashed at install against that manifest; not hashed again.
        index_path: the verified, unencrypted Annoy plaintext extracted at install, mapped
            file-backed; ``None`` for an encrypted index.
    """

    manifest_sha256: str
    verified_sections: frozenset[str]
    index_path: Path | None = None


def open_capsule(
    path: str | os.PathLike[str],
    *,
    trusted_keys: Sequence[Ed25519PublicKey],
    identities: Sequence[Identity],
    budget: MemoryBudget | None = None,
    now: datetime | None = None,
    options: OpenOptions | None = None,
) -> Capsule:
    """Verify and open a capsule; return it only if every open-level check passes.

    Args:
        path: the capsule file.
        trusted_keys: Ed25519 publisher keys this device trusts; empty to use the keys that
            ``options.device.root`` delegates (FORMAT.md §12).
        identities: X25519 device keys, passphrases or a cached ``ContentKey`` to unwrap the
            content key; X25519 keys also identify the device for the ``devices`` rule.
        budget: memory budget to charge; ``None`` is unlimited (still reported). The whole
            plan (``memory_plan``) is reserved before anything is mapped or allocated.
        now: timezone-aware time to judge validity; ``None`` reads the clock once.
        options: threshold, device state, model path, threads, decoder and frame cache
            (``OpenOptions``); ``None`` is ``OpenOptions()``.

    Returns:
        An open ``Capsule``.

    Raises:
        CapsuleFormatError: bad magic, version, table, manifest, limits, malformed rule.
        IntegrityError: truncated/extended file, section length or sha256 mismatch; for a
            store object, a manifest other than the installed one or an index file beside an
            encrypted index.
        SignatureError: too few valid trusted (delegated, unexpired, unrevoked) signatures.
        RollbackError: older than the version the device accepted, or the same version with
            another manifest.
        ExpiredCapsuleError, NotYetValidError: outside the validity window at the trusted time.
        RuleViolationError: a required rule this runtime lacks, a device not on the allow-list,
            or a runtime older than ``min_runtime``.
        ModelError: no engine for the manifest's model family is installed, or its
            model is not installed or does not load.
        DecryptionError: no identity opens the capsule, or a section fails authentication.
        BudgetExceededError: the plan does not fit the budget (nothing was mapped), or the
            process alone exceeds it.

    Source: FORMAT.md §11; edge/budget.py.
    """
    return _open_capsule(path, trusted_keys=trusted_keys, identities=identities, budget=budget, now=now,
                         options=options if options is not None else OpenOptions())


def _open_capsule(path: str | os.PathLike[str], *, trusted_keys: Sequence[Ed25519PublicKey],
                  identities: Sequence[Identity], budget: MemoryBudget | None, now: datetime | None,
                  options: OpenOptions, installed: _InstalledObject | None = None,
                  embedders: Mapping[str, QueryEmbedder] | None = None) -> Capsule:
    """``open_capsule`` with the internals of a device store and a capsule set.

    ``installed``: the object is a store's, verified at install (mapped, manifest pinned,
    large sections not hashed again). ``embedders``: open ``QueryEmbedder``s by model sha256
    to share (several capsules, one model session); when none matches, the capsule opens
    its own and reserves ``model`` for it.
    """
    threshold, device, n_threads = options.threshold, options.device, options.n_threads
    model_search_path, frame_cache_bytes = options.model_search_path, options.frame_cache_bytes
    prefer_hardware_decoder = options.prefer_hardware_decoder
    verified_sections: Collection[str] = installed.verified_sections if installed else ()
    index_path = installed.index_path if installed else None
    expected_manifest_sha256 = installed.manifest_sha256 if installed else None
    now = utc_now(now)
    budget = budget if budget is not None else MemoryBudget(None)
    _import_runtime_libraries()
    budget.charge_runtime()
    # A device-store object (verified at install, owned by the runtime's user) may be mapped;
    # anything else is read with bounded preads, never through a mapping that can fault.
    owned_file = installed is not None
    cf = ContainerFile(path, mapping=owned_file)
    prefix = ""
    plan: dict[str, int] = {}
    index = None
    own_embedder = None
    try:
        manifest, rules = _check_trust(cf, trusted_keys=trusted_keys, threshold=threshold, device=device, now=now,
                                       identities=identities, expected_manifest_sha256=expected_manifest_sha256)
        check_engine(manifest.model.family)
        embedder = (embedders or {}).get(manifest.model.sha256)
        if embedder is None:
            model_dir = find_model_dir(manifest.model.sha256, model_search_path, family=manifest.model.family)
        if index_path is not None and manifest.index.encryption != "none":
            raise IntegrityError(f"index file {index_path} was given for a capsule whose index is encrypted "
                                 "(a file planted beside it?); refusing both")
        prefix = f"{manifest.name}#{next(_open_counter)}/"
        plan = memory_plan(manifest, section_lengths={t: e.length for t, e in cf.sections.items()},
                           frame_cache_bytes=frame_cache_bytes, include_model=embedder is None,
                           index_from_file=owned_file)
        budget.acquire_all({prefix + name: n for name, n in plan.items()}, what=f"capsule {manifest.name}")
        content_key = _unwrap_within_budget(manifest, identities, budget, prefix)
        keys = derive_keys(content_key, manifest.capsule_id_bytes)
        # Small sections are read once and parsed from the copy that was hashed.
        small = {tag: _read_section(cf, manifest, tag, verified_sections) for tag in ("DOCS", "FTAB", "ZDIC", "PROJ")}
        for tag in ("VECS", "INDX"):
            # Encrypted: hashed here, then read again through the AEAD. Plain and opened by path:
            # hashed while copied (_open_index), so what Annoy reads is what was hashed.
            if tag not in verified_sections and (manifest.index.encryption != "none" or owned_file):
                _compare_digest(cf.sha256(tag), manifest, tag)
        documents = _read_documents(open_stream(keys.section("DOCS"), small["DOCS"]), manifest,
                                    budget=budget, reservation=prefix + "documents_inflate")
        frames = fmt.FrameTable.from_bytes(small["FTAB"], n_frames=manifest.video.n_frames,
                                           n_chunks=manifest.n_chunks, video_bytes=cf.sections["VIDE"].length)
        decompressor = _read_dictionary(small["ZDIC"], keys, manifest)
        index = _open_index(cf, keys, manifest, small["PROJ"], index_path)
        if embedder is None:
            embedder = own_embedder = QueryEmbedder.open(model_dir, family=manifest.model.family,
                                                         expected_sha256=manifest.model.sha256,
                                                         n_threads=n_threads, max_tokens=manifest.model.max_tokens)
        if embedder.dim != manifest.model.dim:
            raise ModelError(f"model gives {embedder.dim}-d embeddings, capsule needs {manifest.model.dim}")
        # Opened by path, every sample is authenticated before a decoder sees it: VIDE is hashed
        # here and each sample is compared with its digest when it is read (FrameReader).
        sample_sha256 = None if owned_file else _hash_video(cf, manifest, frames)
        reader = FrameReader(cf.mapped_section("VIDE") if owned_file else cf.section("VIDE"),
                             extradata=manifest.video.extradata,
                             sample_offsets=frames.sample_offsets, sample_sizes=frames.sample_bytes,
                             codec=manifest.video.codec, prefer_hardware=prefer_hardware_decoder,
                             width=manifest.video.width, height=manifest.video.height, sample_sha256=sample_sha256)
    except BaseException as exc:
        if isinstance(exc, CapsuleError):
            log.warning("refused capsule %s: %s", cf.path, exc)
        if index is not None:
            index.close()
        for name in plan:
            budget.release(prefix + name)
        cf.close()
        raise
    log.info("opened capsule %s v%d (%d chunks, decoder %s, %s reserved)", manifest.name, manifest.version,
             manifest.n_chunks, reader.decoder_name, format_mib(sum(plan.values())))
    if device is not None:
        policy = UsePolicy(manifest, rules, log=device, trusted_time=device.advance,
                           on_expired=lambda exc: device.capsule_expired(manifest, exc))
    else:
        policy = UsePolicy(manifest, rules, log=MemoryUseLog())
    return Capsule(cf=cf, manifest=manifest, keys=keys, documents=documents, frames=frames, index=index,
                   reader=reader, embedder=embedder, owns_embedder=own_embedder is not None, budget=budget,
                   memory_plan=plan, reservation_prefix=prefix, frame_cache_bytes=frame_cache_bytes,
                   verified_at=now, decompressor=decompressor, policy=policy)


def _unwrap_within_budget(manifest: Manifest, identities: Sequence[Identity], budget: MemoryBudget,
                          prefix: str) -> bytes:
    """Unwrap the content key; scrypt's memory (128 * r * N bytes) is reserved while it runs."""
    scrypt_bytes = max((128 * 8 * (1 << s.log_n) for s in manifest.recipients if s.type == "scrypt"), default=0)
    if not any(isinstance(i, Passphrase) for i in identities):
        scrypt_bytes = 0
    with budget.reserve(prefix + "scrypt", scrypt_bytes):
        return unwrap_content_key(manifest, identities)


def _read_dictionary(section: bytes, keys: ContentKeys, manifest: Manifest):
    """Return the frame decompressor, with the ZDIC dictionary when there is one (FORMAT.md §5.4)."""
    if stream_plaintext_bytes(len(section)) != manifest.dictionary_bytes:
        raise CapsuleFormatError(f"dictionary section holds {stream_plaintext_bytes(len(section))} bytes, "
                                 f"manifest says {manifest.dictionary_bytes}")
    try:
        return zstd_decompressor(open_stream(keys.section("ZDIC"), section))
    except CapsuleError:
        raise
    except Exception as exc:  # noqa: BLE001 - zstd refuses a malformed dictionary in its own way
        raise CapsuleFormatError(f"dictionary is not a zstd dictionary ({type(exc).__name__})") from None


def _open_index(cf: ContainerFile, keys: ContentKeys, manifest: Manifest, proj_section: bytes,
                index_path: Path | None) -> VectorIndex:
    """Decrypt PROJ, VECS and INDX (lengths checked before anything is allocated); load the index.

    The bytes are already reserved by ``open_capsule``'s plan, so the index reserves nothing.
    An unencrypted index is copied into the index's memfd, and unencrypted VECS into memory,
    while they are hashed, unless ``cf`` is a mapped store object (then VECS is used in place
    and ``index_path`` is the store's extracted, verified copy).
    """
    info = manifest.index
    unreserved = MemoryBudget(None)
    expected_proj = 0 if info.projection is None else info.projection.plaintext_bytes
    if stream_plaintext_bytes(len(proj_section)) != expected_proj:
        raise CapsuleFormatError(f"projection section holds {stream_plaintext_bytes(len(proj_section))} bytes, "
                                 f"manifest needs {expected_proj}")
    projection = Projection.from_bytes(open_stream(keys.section("PROJ"), proj_section), info=info)
    vecs_length = cf.sections["VECS"].length
    index_length = cf.sections["INDX"].length
    if info.encryption == "none":
        if vecs_length != info.vecs_plaintext_bytes:
            raise CapsuleFormatError(f"re-ranking vectors are {vecs_length} bytes, "
                                     f"manifest needs {info.vecs_plaintext_bytes}")
        if index_path is not None and os.stat(index_path).st_size != index_length:
            raise IntegrityError(f"index file {index_path} is {os.stat(index_path).st_size} bytes, "
                                 f"manifest says {index_length}")
        if cf.is_mapped:
            vecs = {"vecs_view": cf.mapped_section("VECS")} if info.projection is not None else {}
            segments: Iterable[bytes] = [] if index_path is not None else cf.iter_blocks("INDX")
        else:
            vecs = {"vecs_segments": _hashed_blocks(cf, manifest, "VECS")} if info.projection is not None else {}
            segments = _hashed_blocks(cf, manifest, "INDX")
            if info.projection is None:
                _compare_digest(cf.sha256("VECS"), manifest, "VECS")  # empty
        return VectorIndex.from_segments(segments, n_bytes=index_length, info=info, budget=unreserved,
                                         projection=projection, index_path=index_path, **vecs)
    if stream_plaintext_bytes(vecs_length) != info.vecs_plaintext_bytes:
        raise CapsuleFormatError(f"re-ranking vectors are {stream_plaintext_bytes(vecs_length)} bytes, "
                                 f"manifest needs {info.vecs_plaintext_bytes}")
    vecs_section = cf.section("VECS")
    if info.projection is None:
        open_stream(keys.section("VECS"), vecs_section)  # authenticate the empty section
        vecs = {}
    else:
        vecs = {"vecs_segments": iter_open_stream(keys.section("VECS"), vecs_section)}
    return VectorIndex.from_segments(iter_open_stream(keys.section("INDX"), cf.section("INDX")),
                                     n_bytes=stream_plaintext_bytes(index_length), info=info, budget=unreserved,
                                     projection=projection, **vecs)


def _read_documents(sealed_plaintext: bytes, manifest: Manifest, *, budget: MemoryBudget,
                    reservation: str) -> list[Document]:
    """Inflate and parse DOCS; the size its zstd header declares, bounded by ``n_documents``, is
    charged (``JSON_PARSE_PEAK_FACTOR`` times) to ``budget`` before anything is inflated."""
    limit = docs_plaintext_limit(manifest.n_documents, fmt.MAX_DOCS_PLAINTEXT_BYTES)
    declared = zstd_content_size(sealed_plaintext, limit, what="document list")
    with budget.reserve(reservation, JSON_PARSE_PEAK_FACTOR * declared):
        plaintext = decompress_bounded(sealed_plaintext, declared,
                                       zstd_decompressor(max_window_bytes=MAX_DOCS_WINDOW_BYTES),
                                       what="document list", require_content_size=True)
        try:
            obj = parse_canonical_json(plaintext, what="document list")
        except MemoryError:
            raise BudgetExceededError(f"parsing the {declared}-byte document list ran out of memory",
                                      requested_bytes=JSON_PARSE_PEAK_FACTOR * declared, available_bytes=0) from None
        del plaintext
    if not isinstance(obj, dict) or set(obj) != {"documents"} or not isinstance(obj["documents"], list):
        raise CapsuleFormatError("document list must be {\"documents\": [...]}")
    docs = []
    for n, item in enumerate(obj["documents"]):
        if (not isinstance(item, dict) or set(item) != {"name", "bytes", "media_type"}
                or not isinstance(item["name"], str) or not isinstance(item["bytes"], int)
                or isinstance(item["bytes"], bool) or not isinstance(item["media_type"], str)):
            raise CapsuleFormatError(f"document {n} entry is malformed")
        docs.append(Document(item["name"], item["bytes"], item["media_type"]))
    if len(docs) != manifest.n_documents:
        raise CapsuleFormatError(f"document list has {len(docs)} entries, manifest says {manifest.n_documents}")
    return docs


@dataclass
class VerifyReport:
    """What ``verify_capsule`` checked.

    Attributes:
        manifest: the verified manifest.
        full: whether the MP4 was hashed (and frames decoded, when an identity was given).
        n_frames_checked: frames decoded and authenticated (0 without identities).
        n_chunks_checked: chunk records read from those frames.
    """

    manifest: Manifest
    full: bool
    n_frames_checked: int = 0
    n_chunks_checked: int = 0
    notes: list[str] = field(default_factory=list)


def verify_capsule(
    path: str | os.PathLike[str],
    *,
    trusted_keys: Sequence[Ed25519PublicKey],
    identities: Sequence[Identity] = (),
    now: datetime | None = None,
    full: bool = True,
    progress: Callable[[int, int], None] | None = None,
    options: OpenOptions | None = None,
    device_rules: bool = True,
) -> VerifyReport:
    """Check a capsule without searching it; return what was checked.

    Without identities it checks everything a key is not needed for: header, table,
    signatures, manifest, validity, rules and every section digest (``full``). With
    identities it also opens the capsule and, when ``full``, decodes every frame and
    authenticates every payload.

    Args:
        path, trusted_keys, identities, now: as for ``open_capsule``.
        full: also hash ``VIDE`` and, with identities, decode and authenticate every frame.
        progress: optional callable ``progress(n_frames_done, n_frames)``.
        options: as for ``open_capsule`` (threshold, device, model path); the decoder is
            software and the frame cache off whatever they say.
        device_rules: ``False`` skips the rules that bind a capsule to a device (``devices``,
            ``min_runtime``): for the publisher's self-check after a build, never on a device.

    Raises:
        Everything ``open_capsule`` raises, plus ``FrameDecodeError``/``DecryptionError``
        for a frame that does not decode or authenticate (``full`` with identities).

    Source: FORMAT.md §11 (full verify).
    """
    now = utc_now(now)
    options = options if options is not None else OpenOptions()
    threshold, device = options.threshold, options.device
    if not device_rules and identities:
        raise ValueError("device_rules=False is for a publisher's self-check, without identities")
    if not identities:
        cf = ContainerFile(path)
        try:
            manifest, _ = _check_trust(cf, trusted_keys=trusted_keys, threshold=threshold, device=device, now=now,
                                       identities=identities, device_rules=device_rules)
            for tag in fmt.HASHED_SECTIONS if full else fmt.HASHED_SECTIONS[:-1]:
                _compare_digest(cf.sha256(tag), manifest, tag)
            return VerifyReport(manifest, full, notes=["no identity given: frames not decrypted"])
        except CapsuleError as exc:
            log.warning("refused capsule %s: %s", cf.path, exc)
            raise
        finally:
            cf.close()
    capsule = open_capsule(path, trusted_keys=trusted_keys, identities=identities, now=now,
                           options=replace(options, prefer_hardware_decoder=False, frame_cache_bytes=0))
    try:
        report = VerifyReport(capsule.manifest, full)
        if full:
            if capsule._cf.is_mapped:  # a store object; opened by path, VIDE was hashed at open
                _compare_digest(capsule._cf.sha256("VIDE"), capsule.manifest, "VIDE")
            timings = StageTimings()
            n_frames = capsule._frames.n_frames
            for frame_index in range(n_frames):
                report.n_chunks_checked += len(capsule._frame_records(frame_index, timings))
                report.n_frames_checked += 1
                if progress is not None:
                    progress(frame_index + 1, n_frames)
            if report.n_chunks_checked != capsule.manifest.n_chunks:
                raise IntegrityError(
                    f"frames hold {report.n_chunks_checked} chunks, manifest says {capsule.manifest.n_chunks}"
                )
        return report
    except CapsuleError as exc:
        log.warning("refused capsule %s: %s", capsule.path, exc)
        raise
    finally:
        capsule.close()


__all__ = ["Capsule", "Document", "Hit", "OpenOptions", "StageTimings", "VerifyReport", "open_capsule",
           "verify_capsule"]
