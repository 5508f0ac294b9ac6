"""A verified, opened capsule: search, read one chunk, export (what ``open_capsule`` returns).

``Capsule`` holds what the open path verified and reserved: the manifest, the decrypted
documents, frame table and index, the frame reader and the query embedder. Every use checks
the validity window and the per-use rules at its trusted time first (``UsePolicy``); text only
ever comes out of a frame whose sample digest and AEAD verified.

Source: FORMAT.md §4.2 (rules at use), §5-§6 (frames), §11 (use level).

Size: ~760 lines because ``Capsule`` is one object: search, read, export and the frame check
share its frame cache, its budget reservations and the use-policy check at trusted time, and a
delta's tombstone filtering runs inside its ranking. Its value types live in ``edge.hits`` and
the chunk-range arithmetic in ``edge.chunk_ranges``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path


from . import format as fmt
from .budget import MemoryBudget
from .container import ContainerFile
from .embedder import QueryEmbedder
from .errors import FrameDecodeError, IntegrityError, QueryError
from .frames import FrameReader
from .hits import Candidate, Document, DocumentTable, Hit, StageTimings
from .chunk_ranges import complement, in_ranges, intersect, merge_ranked, overlaps
from .clock import format_time, utc_now
from .index import VectorIndex
from .lexical import NORMALISER_V2, LexicalEngine, LexicalQuery
from .retrieval import SEARCH_MODES, SearchResult, as_valid_text, fuse, mark
from .manifest import Manifest, lexical_summary
from .rules import MemoryUseLog, Rules, UsePolicy, parse_rules
from .sealed import ChunkRecord, ContentKeys, open_frame
from .verification import _compare_digest

log = logging.getLogger("edge.capsule")

#: A document filter selecting at most this many chunks is scored exhaustively (dense mode).
EXHAUSTIVE_FILTER_CHUNKS = 4096
#: Otherwise the ANN fetches this many times the hits wanted, then filters.
FILTER_OVERFETCH = 20
#: Past tombstones a segment's ranking fetches this much more than its dead share predicts.
TOMBSTONE_OVERFETCH = 1.5
#: Frames of the best lexical hits a hybrid search reads on the helper thread while this thread
#: embeds the query (``Capsule._prefetch_frames``): the time is otherwise idle there, and the
#: fused top hits usually hold the lexical ranking's first ones. Their records are held until
#: the hits are read, at most 2 x 256 KiB (64 KiB of plaintext as str) inside the per-query
#: headroom (``edge.budget.QUERY_BASE_BYTES``), then go to the byte-bounded frame cache.
PREFETCH_FRAMES = 2


class _FramePrefetch:
    """One hybrid search's speculative frame reads on the helper thread: which frames it took,
    what they gave, and the flag that stops it once the real reads begin."""

    __slots__ = ("stop", "lock", "claimed", "outcomes", "task")

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.claimed: set[int] = set()
        #: frame index -> (records or None, error or None, [decode, QR, open] ms)
        self.outcomes: dict[int, tuple[list[ChunkRecord] | None, BaseException | None, list[float]]] = {}
        self.task = None

    def halt(self) -> frozenset[int]:
        """Stop taking frames; return the frames taken (read, or being read now)."""
        with self.lock:
            self.stop.set()
            return frozenset(self.claimed)


class Capsule:
    """A verified, opened capsule. Create with ``open_capsule``; close when done.

    Attributes:
        manifest: the verified manifest.
        decoder_name: the video decoder in use (``h264_v4l2m2m``/``hevc_v4l2m2m`` or ``h264``/``hevc``).
        embedder_engine: the model family and engine embedding queries.
        budget: the memory budget the capsule's allocations are charged to.
        memory_plan: bytes reserved in ``budget`` for this capsule, by component.
        last_timings: per-stage milliseconds of the last ``search``.
    """

    def __init__(self, *, cf: ContainerFile, manifest: Manifest, keys: ContentKeys, documents: DocumentTable,
                 frames: fmt.FrameTable, index: VectorIndex, lexical: LexicalEngine | None, reader: FrameReader, embedder: QueryEmbedder,
                 owns_embedder: bool, budget: MemoryBudget, memory_plan: dict[str, int], reservation_prefix: str,
                 frame_cache_bytes: int, verified_at: datetime, decompressor,
                 policy: UsePolicy | None = None) -> None:
        self._cf = cf
        self.manifest = manifest
        self._keys = keys
        self._documents = documents
        self._frames = frames
        self._index = index
        self._lexical = lexical
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
        self._pool = None  # the helper thread, started by the first multi-frame read or hybrid query
        self._twin_reader: FrameReader | None = None  # the helper's own decoder (FrameReader.twin)
        self._twin_failed = False
        self._prefetch: _FramePrefetch | None = None  # the running hybrid search's frame reads ahead
        self._open_lock = threading.Lock()  # one zstd decompressor: one payload opens at a time
        #: global id of this capsule's first chunk in its version (0 unless it is a segment)
        self.chunk_base = 0
        self._segments: tuple[Capsule, ...] = ()  # earlier segments of this version, oldest first
        self._live: list[tuple[int, int]] | None = None  # local live ranges; None: every chunk
        self._n_dead = 0

    def _attach_segments(self, segments: Sequence["Capsule"]) -> None:
        """Make this capsule the newest segment of a version over ``segments`` (FORMAT.md §4.7).

        Assigns each part its global chunk base and applies the manifest's tombstones: a
        tombstoned chunk is never a candidate, never read and never exported.
        """
        info = self.manifest.segments
        self._segments = tuple(segments)
        base = 0
        for part in self._segments:
            part.chunk_base = base
            dead = [(max(lo, base) - base, min(hi, base + part.manifest.n_chunks) - base)
                    for lo, hi in info.tombstones if lo < base + part.manifest.n_chunks and hi > base]
            part._n_dead = sum(hi - lo for lo, hi in dead)
            part._live = complement(dead, part.manifest.n_chunks) if dead else None
            base += part.manifest.n_chunks
        self.chunk_base = base

    @property
    def projection(self):
        """The PCA projection of this capsule's (newest segment's) index (``edge.index.Projection``), or ``None``."""
        return self._index.projection

    @property
    def parts(self) -> tuple["Capsule", ...]:
        """The segments of this version, oldest first, ending with this capsule (one for a plain capsule)."""
        return (*self._segments, self)

    @property
    def n_chunks(self) -> int:
        """Chunk ids of this version: ``0..n_chunks-1`` over all segments, tombstoned ones included."""
        return self.chunk_base + self.manifest.n_chunks

    @property
    def n_live_chunks(self) -> int:
        """Chunks this version serves (``n_chunks`` minus its tombstones)."""
        return sum(part.manifest.n_chunks - part._n_dead for part in self.parts)

    def _part_of(self, chunk_id: int) -> tuple["Capsule", int]:
        """The segment holding global ``chunk_id`` and the id inside it; ``ValueError`` for a
        removed (tombstoned) or unknown id."""
        if not 0 <= chunk_id < self.n_chunks:
            raise ValueError(f"chunk id {chunk_id} outside 0..{self.n_chunks - 1}")
        for part in self.parts:
            local = chunk_id - part.chunk_base
            if local < part.manifest.n_chunks:
                if part._live is not None and not in_ranges(part._live, local):
                    raise ValueError(f"chunk id {chunk_id} was removed by version {self.manifest.version}")
                return part, local
        raise AssertionError("unreachable")

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
        records, (decode_ms, qr_ms, open_ms) = self._read_frame(self._reader, frame_index)
        timings.frame_decode_ms += decode_ms
        timings.qr_decode_ms += qr_ms
        timings.decrypt_ms += open_ms
        timings.n_frames_decoded += 1
        self._cache_put(frame_index, records)
        return records

    def _read_frame(self, reader: FrameReader, frame_index: int
                    ) -> tuple[list[ChunkRecord], tuple[float, float, float]]:
        """Read one frame whole with ``reader``: H.264 decode, QR read, authentication and
        inflation; return its records and the milliseconds of those three stages."""
        t0 = time.perf_counter()
        luma = reader.decode_frame(frame_index)
        t1 = time.perf_counter()
        payload = reader.decode_qr(luma, frame_index)
        t2 = time.perf_counter()
        records = self._open_payload(payload, frame_index)
        return records, ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3)

    def _open_payload(self, payload: bytes, frame_index: int) -> list[ChunkRecord]:
        first = int(self._frames.first_chunk_ids[frame_index])
        with self._open_lock:
            return open_frame(self._keys.payload, payload, manifest=self.manifest, frame_index=frame_index,
                              first_chunk_id=first, n_slots=self._frames.n_slots(frame_index),
                              decompressor=self._decompressor)

    def _cache_put(self, frame_index: int, records: list[ChunkRecord]) -> None:
        # The cache's whole size is reserved at open; entries are evicted to stay inside it.
        size = sum(len(r.text) * 4 + 64 for r in records)  # upper bound of str storage
        if size <= self._cache_limit:
            while self._cache and sum(self._cache_sizes.values()) + size > self._cache_limit:
                old, _ = self._cache.popitem(last=False)
                self._cache_sizes.pop(old)
            self._cache[frame_index] = records
            self._cache_sizes[frame_index] = size

    def _helper(self):
        """The capsule's one helper thread (started on first use; stopped by ``close``)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-capsule")
        return self._pool

    def _read_frames(self, frame_indexes: Sequence[int], timings: StageTimings) -> dict[int, list[ChunkRecord]]:
        """Decode, read and open the frames of ``frame_indexes`` that are not cached, on two threads.

        This thread and the capsule's helper thread each take the next frame not yet taken and
        read it whole (H.264 decode, QR read, authentication and inflation), each with a decoder
        of its own (``FrameReader.twin``): PyAV and zxing-cpp release the GIL while they work, so
        two frames decode at once on two cores. Payloads open one at a time (one zstd
        decompressor). Each frame is read, checked and opened exactly as ``_frame_records`` does.
        Both threads are finished before this returns or raises. Without a second decoder (it
        cannot be opened), the frames are read on this thread only. A single missing frame is left
        to ``_hit``, which reads it on this thread.

        A hybrid search's prefetch (``_prefetch_frames``) is stopped first and its frames are
        not read again: what it read for these frames is used (its errors raised in the same
        order), what it read for others is dropped, and its work is counted in ``timings``.

        Returns:
            ``{frame_index: records}`` for the frames read now (also put in the cache if it fits).

        Raises:
            FrameDecodeError, DecryptionError, CapsuleFormatError, IntegrityError: as ``search``,
            for the first frame (in order) that fails.
        """
        prefetch, self._prefetch = self._prefetch, None
        taken = prefetch.halt() if prefetch is not None else frozenset()
        wanted = [f for f in dict.fromkeys(frame_indexes) if f not in self._cache]
        outcomes: dict[int, tuple[list[ChunkRecord] | None, BaseException | None]] = {}
        try:
            self._read_missing([f for f in wanted if f not in taken], timings, outcomes)
        finally:
            if prefetch is not None and prefetch.task is not None:
                prefetch.task.result()  # its frame in flight is done (it never raises)
        if prefetch is not None:
            for frame_index, (records, error, stage_ms) in prefetch.outcomes.items():
                timings.frame_decode_ms += stage_ms[0]
                timings.qr_decode_ms += stage_ms[1]
                timings.decrypt_ms += stage_ms[2]
                if frame_index in wanted:
                    outcomes[frame_index] = (records, error)
                elif error is None:  # read ahead for a hit that did not make the top k: not cached,
                    timings.n_frames_decoded += 1  # so that it evicts no frame a hit reads next
        out: dict[int, list[ChunkRecord]] = {}
        for frame_index in wanted:
            if frame_index not in outcomes:
                continue
            records, error = outcomes[frame_index]
            if error is not None:
                raise error
            timings.n_frames_decoded += 1
            out[frame_index] = records
            self._cache_put(frame_index, records)
        return out

    def _read_missing(self, missing: list[int], timings: StageTimings,
                      outcomes: dict[int, tuple[list[ChunkRecord] | None, BaseException | None]]) -> None:
        """Read ``missing`` (frame indexes) on this thread and the helper; each frame's records or
        error go to ``outcomes`` (``_read_frames`` raises them in order). Nothing is read for
        fewer than 2 frames."""
        if len(missing) < 2:
            return
        twin = self._twin()
        queue = list(reversed(missing))
        take = threading.Lock()

        def work(reader: FrameReader, stage_ms: list[float]) -> None:
            while True:
                with take:
                    if not queue:
                        return
                    frame_index = queue.pop()
                try:
                    records, spent = self._read_frame(reader, frame_index)
                    outcomes[frame_index] = (records, None)
                    for stage, ms in enumerate(spent):
                        stage_ms[stage] += ms
                except Exception as exc:  # noqa: BLE001 - raised by _read_frames, in frame order
                    outcomes[frame_index] = (None, exc)

        here, there = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        helper = self._pool.submit(work, twin, there) if twin is not None else None
        try:
            work(self._reader, here)
        finally:
            if helper is not None:
                helper.result()  # the helper is done with the twin and the decompressor
        timings.frame_decode_ms += here[0] + there[0]
        timings.qr_decode_ms += here[1] + there[1]
        timings.decrypt_ms += here[2] + there[2]

    def _prefetch_frames(self, prefetch: _FramePrefetch, chunk_ids: Sequence[int]) -> None:
        """On the helper thread: read the frames of ``chunk_ids`` (local ids, best first), at most
        ``PREFETCH_FRAMES`` not cached, with the twin decoder, until ``prefetch.stop``. Records
        and errors go to ``prefetch.outcomes``; nothing is raised here (``_read_frames`` raises
        the error of a failed frame a hit needs, in frame order). It stops at the first error."""
        frames = [f for f in dict.fromkeys(self._frames.locate(c)[0] for c in chunk_ids) if f not in self._cache]
        for frame_index in frames[:PREFETCH_FRAMES]:
            with prefetch.lock:
                if prefetch.stop.is_set():
                    return
                prefetch.claimed.add(frame_index)
            try:
                records, spent = self._read_frame(self._twin_reader, frame_index)
                prefetch.outcomes[frame_index] = (records, None, list(spent))
            except Exception as exc:  # noqa: BLE001 - raised by _read_frames if a hit needs this frame
                prefetch.outcomes[frame_index] = (None, exc, [0.0, 0.0, 0.0])
                return

    def _twin(self) -> FrameReader | None:
        """The helper thread's decoder, opened on first use; ``None`` if it cannot be opened."""
        if self._twin_reader is None and not self._twin_failed:
            self._helper()
            try:
                self._twin_reader = self._reader.twin()
            except FrameDecodeError as exc:
                self._twin_failed = True
                log.warning("a second video decoder cannot be opened (%s); frames are read on one thread", exc)
        return self._twin_reader

    def clear_cache(self) -> None:
        """Drop the decrypted frames kept for reuse, in every segment (their reservation stays)."""
        for part in self.parts:
            part._cache.clear()
            part._cache_sizes.clear()

    def _hit(self, chunk_id: int, score: float, timings: StageTimings,
             fresh: dict[int, list[ChunkRecord]] | None = None) -> Hit:
        frame_index, slot, _ = self._frames.locate(chunk_id)
        records = (fresh or {}).get(frame_index)
        record = (records if records is not None else self._frame_records(frame_index, timings))[slot]
        documents = self._documents
        return Hit(self.chunk_base + chunk_id, score, documents.name(record.doc_index), record.char_start,
                   record.char_end, frame_index, slot, record.text, self.manifest.name,
                   heading_path=documents.heading_path(record.doc_index, record.char_start))

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
        ids, scores = self._dense_over_parts(embedding, min(k, self.n_live_chunks), search_k, None)
        for part in self.parts:
            part._ranked = {i - part.chunk_base for i in ids if part.chunk_base <= i < part.chunk_base + part.manifest.n_chunks}
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
        located = []
        for i in chunk_ids:
            try:
                part, local = self._part_of(int(i))
            except ValueError:
                part, local = None, -1
            if part is None or local not in part._ranked:
                raise ValueError(f"chunk(s) {[int(i)]} were not returned by the last rank; use read")
            located.append((part, local))
        timings = timings if timings is not None else StageTimings()
        fresh = {id(part): part._read_frames([part._frames.locate(lc)[0] for p, lc in located if p is part], timings)
                 for part in self.parts}
        return [part._hit(local, float(score), timings, fresh[id(part)])
                for (part, local), score in zip(located, scores)]

    def documents(self, *, now: datetime | None = None) -> list[Document]:
        """Return the source documents (decrypted DOCS): names, titles, chunk counts, headings.

        Names and headings are the publisher's text, so the rules govern this like ``read``.

        Raises:
            ExpiredCapsuleError, NotYetValidError, RuleViolationError, RateLimitedError: the
                validity window or the rules forbid reading now (FORMAT.md §4.2).
            RuntimeError: the capsule is closed.
        """
        self._check_open()
        self._policy.before_use("read", at=utc_now(now))
        return self._version_documents()

    def _version_documents(self) -> list[Document]:
        """Documents of every segment with a live chunk, ``first_chunk_id`` global."""
        out = []
        for part in self.parts:
            for doc in part._documents:
                if part._live is not None and doc.n_chunks and not overlaps(part._live, doc.first_chunk_id,
                                                                              doc.first_chunk_id + doc.n_chunks):
                    continue
                out.append(doc if not part.chunk_base else replace(doc, first_chunk_id=doc.first_chunk_id + part.chunk_base))
        return out

    @property
    def has_lexical(self) -> bool:
        """Whether the capsule (every segment of it) carries a lexical index (``lexical`` and ``hybrid`` modes)."""
        return all(part._lexical is not None for part in self.parts)

    @property
    def default_mode(self) -> str:
        """``"hybrid"`` with a lexical index, else ``"dense"``."""
        return "hybrid" if self.has_lexical else "dense"

    def document_ranges(self, patterns: Sequence[str] | None) -> list[tuple[int, int]] | None:
        """Return the ``[first, end)`` chunk-id ranges of the documents whose names match any of
        the ``fnmatch`` glob ``patterns`` (``None`` for no restriction)."""
        if patterns is None:
            return None
        if isinstance(patterns, str):
            patterns = [patterns]
        documents = self._documents
        return [(int(documents.first_chunk_ids[i]), int(documents.first_chunk_ids[i] + documents.n_chunks[i]))
                for i, name in enumerate(documents.iter_names())
                if documents.n_chunks[i] and any(fnmatch.fnmatchcase(name, p) for p in patterns)]

    def search(self, query: str, k: int = 5, *, mode: str | None = None, documents: Sequence[str] | None = None,
               search_k: int = -1, now: datetime | None = None) -> SearchResult:
        """Return the ``k`` best chunks for ``query``, best first.

        Modes (``edge.retrieval``): ``"dense"`` ranks by the cosine similarity of embeddings;
        ``"lexical"`` by BM25 over identifier-aware terms (``edge.lexical``); ``"hybrid"`` fuses
        both by reciprocal rank fusion with the manifest's ``lexical.fusion`` parameters. In the
        lexical and hybrid modes every chunk holding all of the query's identifiers (``E-4021``,
        ``22P02``, ``max_wal_senders``) comes before any chunk that does not.

        Args:
            query: text; truncated to ``manifest.model.max_tokens`` tokens for the embedding and
                to ``edge.lexical.MAX_QUERY_TERMS`` terms for BM25. Never parsed as syntax.
            k: number of hits, ``1 <= k``; capped at ``manifest.n_chunks``.
            mode: ``"hybrid"``, ``"dense"``, ``"lexical"``, or ``None`` for ``default_mode``.
            documents: ``fnmatch`` glob patterns; only chunks of documents whose name matches one
                are returned (``None``: all).
            search_k: Annoy nodes to inspect; -1 uses the manifest's ``index.search_k``.
            now: timezone-aware time of the query; ``None`` reads the clock once.

        Returns:
            A ``SearchResult`` (a sequence of up to k ``Hit``s, plus ``exact_match``); every text
            was read from its frame and authenticated.

        Raises:
            ExpiredCapsuleError, NotYetValidError: outside the validity window at the trusted time.
            RuleViolationError: the rules forbid searching, or more than ``query_limits.max_k`` results.
            RateLimitedError: the ``rate_limit`` rule allows no query now.
            FrameDecodeError: a hit's frame cannot be decoded.
            DecryptionError: a hit's frame fails authentication (the MP4 was altered).
            CapsuleFormatError: a frame's plaintext is malformed.
            ModelError: the embedder's output has the wrong shape.
            QueryError: an empty query, ``k < 1``, an unknown mode, or ``lexical``/``hybrid``
                on a capsule without a lexical index.
            RuntimeError: the capsule is closed.

        Source: FORMAT.md §4.4-§6; Cormack et al., SIGIR 2009 (RRF).
        """
        mode = self._check_query(query, k, mode)
        query = as_valid_text(query)
        self._check_open()
        self._policy.before_use("search", at=utc_now(now), k=k)
        timings = StageTimings()
        lexical_query = LexicalQuery.parse(query)
        embed = None if mode == "lexical" else (lambda: self._embedder.embed([query])[0])
        candidates, exact_match = self._candidates(lexical_query, embed, k, mode, documents, search_k, timings)
        hits = read_grouped(candidates, lexical_query, timings)
        self.last_timings = timings
        return SearchResult(tuple(hits), mode=mode, identifiers=lexical_query.identifier_terms,
                            exact_match=exact_match, timings=timings)

    def _candidates(self, lexical_query: LexicalQuery, vector, k: int, mode: str, documents: Sequence[str] | None,
                    search_k: int, timings: StageTimings) -> tuple[list[Candidate], bool | None]:
        """Rank without reading frames: the best ``k`` candidates and ``exact_match``; marks
        them as readable by ``_read_candidates`` (rules were checked by the caller).

        Every segment of the version ranks in its own indexes, tombstoned chunks left out, and the
        rankings are merged by score before fusion (cosine similarities of one model are comparable
        across segments; BM25 is per segment, so merging it is approximate, as in ``CapsuleSet``).

        ``vector``: the query embedding, or a function returning it (then, in hybrid mode, the
        lexical ranking runs on the helper thread while it embeds), or ``None`` (lexical mode)."""
        parts = self.parts
        ranges = [part._filter_ranges(documents) for part in parts]
        k = min(k, self.n_live_chunks)
        fusion = self.manifest.lexical.fusion if self.manifest.lexical is not None else None
        depth = max(k, fusion.depth) if fusion is not None and mode == "hybrid" else k
        dense: tuple[list[int], list[float]] = ([], [])
        lexical: tuple[list[int], list[float]] = ([], [])
        exact: list[int] = []

        def rank_lexically():
            t0 = time.perf_counter()
            ranked = [part._lexical_ranking(lexical_query, depth, r) for part, r in zip(parts, ranges)]
            found = merge_ranked([found for found, _ in ranked], depth)
            holding = [c for _, chunk_ids in ranked for c in chunk_ids]
            return found, holding, (time.perf_counter() - t0) * 1e3

        pending = None
        if self._prefetch is not None:  # left by a search that stopped before reading its hits
            self._prefetch.halt()
            self._prefetch = None
        if mode == "hybrid" and callable(vector):
            # The lexical engine (BM25) and onnxruntime (the embedding) both release the GIL: rank
            # lexically on the helper thread while the query is embedded here. The engine is used by
            # one thread at a time: this one waits for the result before anything else touches it.
            # Then the helper reads ahead the frames of the best lexical hits (``_prefetch_frames``).
            from concurrent.futures import Future

            pending = Future()
            prefetch = _FramePrefetch() if len(parts) == 1 and self._twin() is not None else None
            exact_first = len(lexical_query.groups) <= fusion.exact_first_max_tokens

            def rank_then_prefetch():
                try:
                    result = rank_lexically()
                except BaseException as exc:  # noqa: BLE001 - raised on this thread by pending.result()
                    pending.set_exception(exc)
                    return
                pending.set_result(result)
                if prefetch is not None:
                    (found, _), holding, _ = result
                    self._prefetch_frames(prefetch, [*holding, *found] if exact_first else found)

            task = self._helper().submit(rank_then_prefetch)
            if prefetch is not None:
                prefetch.task = task
                self._prefetch = prefetch
        if mode in ("dense", "hybrid"):
            if callable(vector):
                t0 = time.perf_counter()
                try:
                    vector = vector()
                except BaseException:
                    if pending is not None:
                        pending.exception()  # wait: the helper must be done with the connection
                    raise
                timings.embed_ms += (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            dense = self._dense_over_parts(vector, depth, search_k, ranges)
            timings.ann_ms += (time.perf_counter() - t0) * 1e3
        if mode in ("lexical", "hybrid"):
            lexical, exact, lexical_ms = pending.result() if pending is not None else rank_lexically()
            timings.lexical_ms += lexical_ms
        dense_score = dict(zip(*dense))
        lexical_score = dict(zip(*lexical))
        if mode == "dense":
            order = [(c, s, False) for c, s in zip(*dense)][:k]
        elif mode == "lexical":
            exact_set = set(exact)
            ranked = sorted(set(lexical[0]) | exact_set,
                            key=lambda c: (c not in exact_set, -lexical_score.get(c, 0.0), c))
            order = [(c, lexical_score.get(c, 0.0), c in exact_set) for c in ranked][:k]
        else:
            exact_first = len(lexical_query.groups) <= fusion.exact_first_max_tokens
            order = [(f.chunk_id, f.score, f.exact) for f in fuse(dense[0], lexical[0], exact=set(exact),
                                                                   fusion=fusion, exact_first=exact_first,
                                                                   dense_scores=dense[1])][:k]
        candidates = []
        for part in parts:
            part._ranked = set()
        for c, s, e in order:
            part, local = self._part_of(c)
            part._ranked.add(local)
            candidates.append(Candidate(c, s, e, dense_score.get(c), lexical_score.get(c), part))
        has_identifiers = bool(lexical_query.identifiers) and mode != "dense"
        return candidates, bool(exact) if has_identifiers else None

    def _filter_ranges(self, documents: Sequence[str] | None) -> list[tuple[int, int]] | None:
        """Local chunk ranges a document filter leaves (live ones only), or ``None`` without a filter."""
        ranges = self.document_ranges(documents)
        if ranges is None or self._live is None:
            return ranges
        return intersect(ranges, self._live)

    def _dense_over_parts(self, vector, n: int, search_k: int,
                          ranges: Sequence[list[tuple[int, int]] | None] | None) -> tuple[list[int], list[float]]:
        """The dense ranking of every segment (global ids), merged by cosine similarity."""
        parts = self.parts
        ranges = ranges if ranges is not None else [None] * len(parts)
        return merge_ranked([part._dense_local(vector, n, search_k, r) for part, r in zip(parts, ranges)], n)

    def _dense_local(self, vector, n: int, search_k: int, ranges: list[tuple[int, int]] | None
                     ) -> tuple[list[int], list[float]]:
        """This segment's dense ranking in global ids; tombstoned chunks are fetched past, then dropped."""
        if ranges is not None or self._live is None:
            ids, scores = self._dense(vector, n, search_k, ranges)
        else:
            ids, scores = self._past_tombstones(lambda m: self._index.search(vector, m, search_k=search_k), n)
        return [self.chunk_base + int(c) for c in ids], list(scores)

    def _past_tombstones(self, rank: Callable[[int], tuple[list[int], list[float]]], n: int
                         ) -> tuple[list[int], list[float]]:
        """The best ``n`` live results of ``rank(m)`` (a ranking of ``m`` local ids): it asks for as
        many more as the dead share of this segment predicts, and doubles until ``n`` live ones are
        in or the segment is exhausted, so the cost grows with the share removed, not its count."""
        total = self.manifest.n_chunks
        live = max(1, total - self._n_dead)
        m = min(total, int(n * total / live * TOMBSTONE_OVERFETCH) + 8)
        while True:
            found, scores = rank(m)
            keep = [(c, s) for c, s in zip(found, scores) if in_ranges(self._live, c)]
            if len(keep) >= n or m >= total or len(found) < m:
                keep = keep[:n]
                return [c for c, _ in keep], [s for _, s in keep]
            m = min(total, 2 * m)

    def _lexical_ranking(self, query: LexicalQuery, depth: int, ranges: list[tuple[int, int]] | None
                         ) -> tuple[tuple[list[int], list[float]], list[int]]:
        """This segment's BM25 ranking and exact identifier matches, in global ids."""
        limit = max(depth, 100)
        if ranges is not None or self._live is None:
            found_ids, found_scores = self._lexical.search(query, depth, chunk_ranges=ranges)
            holding = self._lexical.exact_matches(query, limit=limit, chunk_ranges=ranges)
        else:
            def exact(m: int) -> tuple[list[int], list[float]]:
                ids = self._lexical.exact_matches(query, limit=m)
                return ids, [0.0] * len(ids)

            found_ids, found_scores = self._past_tombstones(lambda m: self._lexical.search(query, m), depth)
            holding, _ = self._past_tombstones(exact, limit)
        base = self.chunk_base
        return ([base + c for c in found_ids], list(found_scores)), [base + c for c in holding]

    def _read_candidates(self, candidates: Sequence[Candidate], lexical_query: LexicalQuery,
                         timings: StageTimings) -> list[Hit]:
        """Read ranked candidates from their frames and mark the query's terms in them."""
        hits = []
        base = self.chunk_base
        stray = [c.chunk_id for c in candidates if c.chunk_id - base not in self._ranked]
        if stray:
            raise ValueError(f"chunk {stray[0]} was not returned by the last rank; use read")
        fresh = self._read_frames([self._frames.locate(c.chunk_id - base)[0] for c in candidates], timings)
        stemmed = self.manifest.lexical is not None and self.manifest.lexical.normaliser == NORMALISER_V2
        memo: dict = {}  # what each distinct term matched, for all of this search's hits
        for cand in candidates:
            hit = self._hit(cand.chunk_id - base, cand.score, timings, fresh)
            t0 = time.perf_counter()
            terms, spans, answer = mark(hit.text, lexical_query, stemmed=stemmed, memo=memo)
            timings.highlight_ms += (time.perf_counter() - t0) * 1e3
            matched = tuple(name for name, score in (("dense", cand.dense_score), ("lexical", cand.lexical_score))
                            if score is not None)
            hits.append(replace(hit, matched=matched, matched_terms=terms, highlights=spans, answer=answer,
                                dense_score=cand.dense_score, lexical_score=cand.lexical_score, exact=cand.exact))
        return hits

    def _check_query(self, query: str, k: int, mode: str | None) -> str:
        if not isinstance(query, str) or not query.strip():
            raise QueryError("query must be non-empty text")
        if "\x00" in query:
            raise QueryError("query holds a NUL character")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise QueryError(f"k must be an integer >= 1, got {k!r}")
        mode = self.default_mode if mode is None else mode
        if mode not in SEARCH_MODES:
            raise QueryError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        if mode != "dense" and not self.has_lexical:
            raise QueryError(f"capsule {self.manifest.name} has no lexical index: use mode 'dense'")
        return mode

    def _dense(self, vector, n: int, search_k: int, ranges: list[tuple[int, int]] | None
               ) -> tuple[list[int], list[float]]:
        """Dense ranking, restricted to ``ranges``: scored exhaustively when they hold at most
        ``EXHAUSTIVE_FILTER_CHUNKS`` chunks, else the ANN's ``FILTER_OVERFETCH * n`` filtered."""
        if ranges is None:
            return self._index.search(vector, n, search_k=search_k)
        ids = [c for lo, hi in ranges for c in range(lo, hi)]
        if len(ids) <= EXHAUSTIVE_FILTER_CHUNKS:
            return self._index.score_items(vector, ids, n)
        found, scores = self._index.search(vector, min(self.manifest.n_chunks, FILTER_OVERFETCH * n),
                                           search_k=search_k)
        keep = [(c, s) for c, s in zip(found, scores) if any(lo <= c < hi for lo, hi in ranges)][:n]
        return [c for c, _ in keep], [s for _, s in keep]

    def read(self, chunk_id: int, *, now: datetime | None = None) -> Hit:
        """Return chunk ``chunk_id`` read from its frame (score 1.0).

        Raises:
            ValueError: ``chunk_id`` outside ``0..n_chunks-1``, or removed by a tombstone.
            ExpiredCapsuleError, NotYetValidError, RuleViolationError, RateLimitedError: the
                validity window or the rules forbid reading now (FORMAT.md §4.2).
            FrameDecodeError, DecryptionError, CapsuleFormatError: as for ``search``.
        """
        self._check_open()
        part, local = self._part_of(chunk_id)
        self._policy.before_use("read", at=utc_now(now))
        return part._hit(local, 1.0, StageTimings())

    def check_frames(self, progress: Callable[[int, int], None] | None = None, *,
                     skip_store_segments: bool = False) -> tuple[int, int]:
        """Decode and authenticate every frame, as full verification does; return (frames, chunks).

        A mapped store object also has its ``VIDE`` section hashed again first (opened by path,
        it was hashed at open). Uses no rule and counts no use: it returns no text.

        Args:
            progress: optional ``progress(n_frames_done, n_frames)``.
            skip_store_segments: leave out the earlier segments opened from a device store's
                objects (decoded and authenticated when they were installed, read-only since):
                a store installing a delta checks the new segment's frames (FORMAT.md §13.5).

        Raises:
            IntegrityError: ``VIDE`` differs from the manifest, a sample changed, or the frames
                hold another number of chunks than the manifest says.
            FrameDecodeError, DecryptionError: a frame does not decode or authenticate.
        """
        parts = [p for p in self.parts if p is self or not (skip_store_segments and p._cf.is_mapped)]
        total_frames = sum(part._frames.n_frames for part in parts)
        n_frames = n_chunks = 0
        for part in parts:
            if part._cf.is_mapped:
                _compare_digest(part._cf.sha256("VIDE"), part.manifest, "VIDE")
            timings = StageTimings()
            part_chunks = 0
            for frame_index in range(part._frames.n_frames):
                part_chunks += len(part._frame_records(frame_index, timings))
                n_frames += 1
                if progress is not None:
                    progress(n_frames, total_frames)
            if part_chunks != part.manifest.n_chunks:
                raise IntegrityError(f"frames hold {part_chunks} chunks, manifest says {part.manifest.n_chunks}")
            n_chunks += part_chunks
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
        for part in self.parts:
            for start, end in part._live if part._live is not None else [(0, part.manifest.n_chunks)]:
                for chunk_id in range(start, end):
                    yield part._hit(chunk_id, 1.0, timings)

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
            "n_chunks": self.n_live_chunks, "n_documents": len(self._version_documents()),
            "n_frames": sum(part.manifest.video.n_frames for part in self.parts),
            "segments": [{"version": part.manifest.version, "chunk_base": part.chunk_base,
                          "n_chunks": part.manifest.n_chunks, "n_removed": part._n_dead,
                          "file_bytes": part._cf.header.file_bytes} for part in self.parts],
            "model": {"name": m.model.name, "family": m.model.family, "sha256": m.model.sha256,
                      "dim": m.model.dim, "max_tokens": m.model.max_tokens},
            "embedder": {"family": self._embedder.family, "engine": self._embedder.engine,
                         "threads": self._embedder.n_threads, "model_path": str(self._embedder.model_path)},
            "index": {"format": m.index.format, "dim": m.index.dim,
                      **({"n_trees": m.index.n_trees, "search_k": m.index.search_k}
                         if m.index.format == "annoy" else {}),
                      "n_candidates": m.index.n_candidates,
                      "projection": None if m.index.projection is None else
                      {"method": m.index.projection.method, "dim_in": m.index.projection.dim_in,
                       "dim_out": m.index.projection.dim_out},
                      "encryption": m.index.encryption, "bytes": self._index.n_bytes,
                      "mapped_from": "file" if self._index.file_backed else "memory"},
            "lexical": lexical_summary(m.lexical),
            "video": {"codec": m.video.codec, "profile": m.video.profile, "size": f"{m.video.width}x{m.video.height}",
                      "crf": m.video.crf, "qr": f"v{m.video.qr_version}-{m.video.qr_ec_level}"},
            "rules": m.rules,
            "sections": {tag: {"length": s.length, "sha256": s.sha256} for tag, s in m.sections.items()},
            "file_bytes": sum(part._cf.header.file_bytes for part in self.parts),
            "decoder": self.decoder_name,
            "decoder_is_hardware": self._reader.is_hardware,
            "memory": {"plan_bytes": dict(self.memory_plan), **self.budget.report()},
        }

    def close(self) -> None:
        """Release the index, decoder, cache, file mapping and every reservation. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for segment in self._segments:
            segment.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._index.close()
        if self._lexical is not None:
            self._lexical.close()
        if self._twin_reader is not None:
            self._twin_reader.close()
        self._reader.close()
        self._cache.clear()
        self._cf.close()
        for name in self.memory_plan:
            self.budget.release(self._prefix + name)


def read_grouped(candidates: Sequence[Candidate], lexical_query: LexicalQuery, timings: StageTimings) -> list[Hit]:
    """Read candidates of several capsules or segments, in their order: one read per capsule, so
    each one's frames are read overlapped (``Capsule._read_frames``)."""
    groups: dict[int, list[Candidate]] = {}
    for cand in candidates:
        groups.setdefault(id(cand.capsule), []).append(cand)
    read: dict[int, Hit] = {}
    for mine in groups.values():
        read.update(zip(map(id, mine), mine[0].capsule._read_candidates(mine, lexical_query, timings)))
    return [read[id(cand)] for cand in candidates]
