"""A verified, opened capsule: search, read one chunk, export (what ``open_capsule`` returns).

``Capsule`` holds what the open path verified and reserved: the manifest, the decrypted
documents, frame table and index, the frame reader and the query embedder. Every use checks
the validity window and the per-use rules at its trusted time first (``UsePolicy``); text only
ever comes out of a frame whose sample digest and AEAD verified.

Source: FORMAT.md §4.2 (rules at use), §5-§6 (frames), §11 (use level).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


from . import format as fmt
from .budget import MemoryBudget
from .container import ContainerFile
from .embedder import QueryEmbedder
from .errors import IntegrityError
from .frames import FrameReader
from .clock import format_time, utc_now
from .index import VectorIndex
from .manifest import Manifest
from .rules import MemoryUseLog, Rules, UsePolicy, parse_rules
from .sealed import ChunkRecord, ContentKeys, open_frame
from .verification import _compare_digest

log = logging.getLogger("edge.capsule")


@dataclass(frozen=True)
class Hit:
    """One search result or read chunk.

    Attributes:
        chunk_id: 0-based chunk id (= Annoy item id).
        score: cosine similarity to the query in [-1, 1] (1.0 for ``read``).
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
            ValueError: an id the last ``rank`` did not return (reading by id is ``read``,
                which the rules govern separately).
            RuntimeError: the capsule is closed.
        """
        self._check_open()
        stray = [int(i) for i in chunk_ids if int(i) not in self._ranked]
        if stray:
            raise ValueError(f"chunk(s) {stray[:5]} were not returned by the last rank; use read")
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

    def read(self, chunk_id: int, *, now: datetime | None = None) -> Hit:
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

    def check_frames(self, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Decode and authenticate every frame, as full verification does; return (frames, chunks).

        A mapped store object also has its ``VIDE`` section hashed again first (opened by path,
        it was hashed at open). Uses no rule and counts no use: it returns no text.

        Args:
            progress: optional ``progress(n_frames_done, n_frames)``.

        Raises:
            IntegrityError: ``VIDE`` differs from the manifest, a sample changed, or the frames
                hold another number of chunks than the manifest says.
            FrameDecodeError, DecryptionError: a frame does not decode or authenticate.
        """
        if self._cf.is_mapped:
            _compare_digest(self._cf.sha256("VIDE"), self.manifest, "VIDE")
        timings = StageTimings()
        n_frames, n_chunks = self._frames.n_frames, 0
        for frame_index in range(n_frames):
            n_chunks += len(self._frame_records(frame_index, timings))
            if progress is not None:
                progress(frame_index + 1, n_frames)
        if n_chunks != self.manifest.n_chunks:
            raise IntegrityError(f"frames hold {n_chunks} chunks, manifest says {self.manifest.n_chunks}")
        return n_frames, n_chunks

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
