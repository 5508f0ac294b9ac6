"""What a query returns and what a capsule lists: ``Hit``, ``Document``, ``StageTimings``, and the
unread ``Candidate`` that ``Capsule`` and ``CapsuleSet`` merge before reading frames.

Plain frozen value types with their JSON form (the CLI's and ``edge serve``'s output); no I/O.
The DOCS plaintext's two sides sit beside ``Document``: ``documents_to_bytes`` (the builder
writes it) and ``parse_documents`` (the reader checks it); an open capsule keeps the list as a
``DocumentTable``.

Source: FORMAT.md §8 (DOCS: documents and headings), §11 (use level: what a hit carries).
"""

from __future__ import annotations

import json
import re
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from itertools import repeat
from operator import eq, itemgetter
from typing import TYPE_CHECKING

import numpy as np

from .errors import CapsuleFormatError
from .manifest import MAX_INT, _reject_float, canonical_json, parse_canonical_json
from .sealed import JSON_PARSE_PEAK_FACTOR

_HEX64 = re.compile(r"[0-9a-f]{64}")

if TYPE_CHECKING:
    from .opened import Capsule


@dataclass(frozen=True)
class Hit:
    """One search result or read chunk.

    Attributes:
        chunk_id: 0-based chunk id (= Annoy item id).
        score: in ``dense`` mode the cosine similarity in [-1, 1]; in ``lexical`` mode BM25;
            in ``hybrid`` mode the RRF score (``edge.retrieval.fuse``); 1.0 for ``read``.
        document: source document name as given to the builder.
        char_start, char_end: position of the chunk in the document text, in code points.
        frame_index, slot_index: where the chunk's text was read from in the MP4.
        text: the chunk text, read from its frame and authenticated.
        capsule: name of the capsule it came from (manifest ``name``).
        heading_path: titles of the headings enclosing the chunk, outermost first (DOCS).
        matched: the retrievers that ranked it: ``"dense"``, ``"lexical"`` (search only).
        matched_terms: the query terms its text holds (folded; ``edge.lexical``).
        highlights: ``(start, end)`` spans in ``text`` (code points) of those terms.
        answer: span in ``text`` of the sentence holding the most matched terms, or ``None``.
        dense_score: cosine similarity when the dense retriever ranked it.
        lexical_score: BM25 (higher is better) when the lexical retriever ranked it.
        exact: it holds every identifier of the query (``SearchResult.exact_match``).
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
    heading_path: tuple[str, ...] = ()
    matched: tuple[str, ...] = ()
    matched_terms: tuple[str, ...] = ()
    highlights: tuple[tuple[int, int], ...] = ()
    answer: tuple[int, int] | None = None
    dense_score: float | None = None
    lexical_score: float | None = None
    exact: bool = False

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict of all fields."""
        return {"capsule": self.capsule, "chunk_id": self.chunk_id, "score": round(self.score, 6),
                "document": self.document, "heading_path": list(self.heading_path),
                "char_start": self.char_start, "char_end": self.char_end,
                "frame_index": self.frame_index, "slot_index": self.slot_index, "text": self.text,
                "matched": list(self.matched), "matched_terms": list(self.matched_terms),
                "highlights": [list(span) for span in self.highlights],
                "answer": None if self.answer is None else list(self.answer),
                "dense_score": None if self.dense_score is None else round(self.dense_score, 6),
                "lexical_score": None if self.lexical_score is None else round(self.lexical_score, 6),
                "exact": self.exact}


@dataclass(frozen=True)
class Candidate:
    """A ranked chunk not read yet: what ``Capsule`` and ``CapsuleSet`` merge before reading."""

    chunk_id: int
    score: float
    exact: bool
    dense_score: float | None
    lexical_score: float | None
    capsule: "Capsule"


@dataclass
class StageTimings:
    """Milliseconds spent per query stage in the last ``search`` call.

    Attributes:
        embed_ms: embedding the query.
        ann_ms: the dense index (scan or Annoy, and re-ranking).
        frame_decode_ms, qr_decode_ms, decrypt_ms: reading the hits' frames, summed over the
            two threads that read them (so they may add up to more than the wall time); in
            hybrid mode this includes the frames read ahead while the query was embedded.
        lexical_ms: BM25 and exact-identifier matching (on the helper thread while the query
            is embedded, in hybrid mode).
        highlight_ms: finding the query's terms and the answer span in the hits' text.
        n_frames_decoded: frames read (not served from the frame cache), including any a hybrid
            search read ahead for lexical hits that did not make the top k.
    """

    embed_ms: float = 0.0
    ann_ms: float = 0.0
    frame_decode_ms: float = 0.0
    qr_decode_ms: float = 0.0
    decrypt_ms: float = 0.0
    lexical_ms: float = 0.0
    highlight_ms: float = 0.0
    n_frames_decoded: int = 0


@dataclass(frozen=True, slots=True)
class Document:
    """A source document as recorded in the DOCS section (FORMAT.md §8).

    Attributes:
        name: the document's name as given to the builder (relative path).
        n_bytes: the source file's size in bytes.
        media_type: e.g. ``text/plain``, ``application/pdf``.
        n_chunks: its chunks; they are consecutive from ``first_chunk_id``.
        first_chunk_id: id of its first chunk.
        headings: ``(char_start, level, title)`` of its headings, by position (FORMAT.md §8).
        sha256: hex SHA-256 of the source file's bytes ("" in capsules built before 0.3); a
            delta build compares it to tell changed documents (FORMAT.md §4.7).
    """

    name: str
    n_bytes: int
    media_type: str
    n_chunks: int = 0
    first_chunk_id: int = 0
    headings: tuple[tuple[int, int, str], ...] = ()
    sha256: str = ""

    @property
    def title(self) -> str:
        """The first level-1 heading (else the first heading), or the name."""
        top = [h for h in self.headings if h[1] == 1] or list(self.headings)
        return top[0][2] if top else self.name

    def heading_path(self, char_start: int) -> tuple[str, ...]:
        """Titles of the headings enclosing position ``char_start``, outermost first (a heading
        of level L closes every open heading of level >= L)."""
        return _heading_path(self.headings, char_start)

    def to_json(self) -> dict[str, object]:
        """JSON-ready: name, title, media type, bytes, chunk count and first chunk id."""
        return {"name": self.name, "title": self.title, "media_type": self.media_type, "bytes": self.n_bytes,
                "n_chunks": self.n_chunks, "first_chunk_id": self.first_chunk_id}


#: Most headings one document may list in DOCS (FORMAT.md §8).
MAX_HEADINGS_PER_DOCUMENT = 100_000
#: Longest heading title in DOCS, in characters.
MAX_HEADING_CHARS = 200


def documents_to_bytes(documents: Sequence[Document]) -> bytes:
    """Return the DOCS plaintext for ``documents``, in chunk order (FORMAT.md §8).

    Canonical JSON ``{"documents": [{"name", "bytes", "media_type", "n_chunks", "headings",
    "sha256"}, ...]}``; ``first_chunk_id`` is not stored (each document's chunks follow the
    previous one's). The builder compresses and seals it; ``parse_documents`` reads it back.

    Raises:
        ValueError: a document breaks what ``parse_documents`` checks (negative counts, a heading
            out of order, a title empty or over ``MAX_HEADING_CHARS``, more than
            ``MAX_HEADINGS_PER_DOCUMENT`` headings, a ``sha256`` that is not "" or 64 lowercase hex
            digits).
    """
    entries = []
    for n, doc in enumerate(documents):
        if (doc.n_bytes < 0 or doc.n_chunks < 0 or not _is_sha256_field(doc.sha256)
                or len(doc.headings) > MAX_HEADINGS_PER_DOCUMENT):
            raise ValueError(f"document {n} ({doc.name!r}) cannot be written to DOCS")
        headings = [list(h) for h in doc.headings]
        _check_headings(headings, n, error=ValueError)
        entries.append({"name": doc.name, "bytes": doc.n_bytes, "media_type": doc.media_type,
                        "n_chunks": doc.n_chunks, "headings": headings, "sha256": doc.sha256})
    return canonical_json({"documents": entries})


def _heading_path(headings: Iterable[tuple[int, int, str]], char_start: int) -> tuple[str, ...]:
    stack: list[tuple[int, str]] = []
    for start, level, title in headings:
        if start > char_start:
            break
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
    return tuple(title for _, title in stack)


class DocumentTable(Sequence[Document]):
    """A capsule's document list as the runtime holds it: compact, ``Document`` made on demand.

    Names and heading titles are UTF-8 blobs with uint32 offsets; each distinct media type is
    stored once, with a uint32 index per document; byte counts are int64 (``n_bytes``), chunk
    counts and first chunk ids uint32 (``n_chunks``, ``first_chunk_ids``: a capsule has fewer
    than 2^31 chunks); SHA-256 digests 32 raw bytes each; heading positions int64 and levels
    uint8. A few large objects, none of them among the parse's small ones, and the very columns
    the parser filled. (Keeping the names as ``str`` pinned the JSON parse's freed pymalloc
    arenas: 41,464 documents then held 23 MiB of RssAnon for 5.8 MiB of objects.)
    ``table[i]`` returns the same ``Document`` that ``parse_documents`` gave. Held
    (``held_bytes``, spare room included; tracemalloc agrees): SciFact's 5,183 documents 0.37 MiB
    against 1.93 MiB as a list of ``Document``; 41,464 documents 3.23 MiB (int64 columns and a
    media type per document took 4.52). ``name`` and ``heading_path`` take a few microseconds.

    Args:
        documents: the parsed list (``parse_documents``), in chunk order.
    """

    __slots__ = ("n_bytes", "n_chunks", "first_chunk_ids", "_name_blob", "_name_end", "_media_blob", "_media_end",
                 "_media_index", "_sha256", "_has_sha256", "_heading_end", "_heading_starts", "_heading_levels",
                 "_title_blob", "_title_end", "_held")

    def __init__(self, documents: Sequence[Document]) -> None:
        builder = _TableBuilder(len(documents), sum(doc.n_chunks for doc in documents))
        builder.add_many([doc.name for doc in documents], [doc.n_bytes for doc in documents],
                         [doc.media_type for doc in documents], [doc.n_chunks for doc in documents],
                         [doc.headings for doc in documents], [doc.sha256 for doc in documents])
        builder.fill(self)

    def __len__(self) -> int:
        return len(self._name_end)

    def name(self, i: int) -> str:
        """Document ``i``'s name."""
        return _blob_item(self._name_blob, self._name_end, i)

    def iter_names(self) -> Iterator[str]:
        """Yield every document's name, in order (a document filter reads them all per query)."""
        text = self._name_blob.decode("utf-8")
        ascii_only = len(text) == len(self._name_blob)  # then byte offsets are character offsets
        start = 0
        for end in self._name_end.tolist():
            yield text[start:end] if ascii_only else self._name_blob[start:end].decode("utf-8")
            start = end

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError, negative indexes
        return Document(self.name(i), int(self.n_bytes[i]),
                        _blob_item(self._media_blob, self._media_end, int(self._media_index[i])),
                        n_chunks=int(self.n_chunks[i]), first_chunk_id=int(self.first_chunk_ids[i]),
                        headings=tuple(self.headings(i)),
                        sha256=self._sha256[32 * i:32 * i + 32].hex() if self._has_sha256[i] else "")

    def headings(self, i: int) -> Iterator[tuple[int, int, str]]:
        """Yield document ``i``'s headings ``(char_start, level, title)``, in order."""
        first = int(self._heading_end[i - 1]) if i else 0
        for h in range(first, int(self._heading_end[i])):
            start = int(self._title_end[h - 1]) if h else 0
            yield (int(self._heading_starts[h]), int(self._heading_levels[h]),
                   self._title_blob[start:int(self._title_end[h])].decode("utf-8"))

    def heading_path(self, i: int, char_start: int) -> tuple[str, ...]:
        """``Document.heading_path`` of document ``i``, without making the ``Document``."""
        return _heading_path(self.headings(i), char_start)

    def held_bytes(self) -> int:
        """Bytes this table holds: its columns as allocated (``sys.getsizeof``)."""
        return self._held


def _blob_item(blob: bytearray, ends: np.ndarray, i: int) -> str:
    return blob[int(ends[i - 1]) if i else 0:int(ends[i])].decode("utf-8")


#: Media types the builder interns (one copy, an index per document) before it stores the rest
#: as they come; a capsule has a handful. Bounds the interning dictionary to a few kB.
MAX_INTERNED_MEDIA_TYPES = 256
#: Bytes of the shortest canonical DOCS entry, ``{"bytes":0,"headings":[],"media_type":"",
#: "n_chunks":0,"name":""}``; a list of N documents is at least N times this long.
MIN_DOCS_ENTRY_BYTES = 64


class _TableBuilder:
    """Columns of a ``DocumentTable`` as they fill, no object per document: the per-document
    ones allocated once for the ``n_documents`` declared (the caller has checked that the list is
    long enough to hold that many), the blobs and heading columns growing."""

    def __init__(self, n_documents: int, n_chunks: int) -> None:
        self.size, self.chunks, self.max_chunks = 0, 0, n_chunks
        self.n_bytes = np.zeros(n_documents, np.int64)
        self.n_chunks, self.first_chunk_ids = np.zeros(n_documents, np.uint32), np.zeros(n_documents, np.uint32)
        self.name_blob, self.name_end = bytearray(), np.zeros(n_documents, np.uint32)
        self.media_blob, self.media_end, self.media_index = bytearray(), array("I"), np.zeros(n_documents, np.uint32)
        self.interned: dict[str, int] = {}
        self.has_sha256, self.sha256 = np.zeros(n_documents, np.bool_), bytearray(32 * n_documents)
        self.heading_end = np.zeros(n_documents, np.uint32)
        self.heading_starts, self.heading_levels = array("q"), bytearray()
        self.title_blob, self.title_end = bytearray(), array("I")

    def add_many(self, names: list[str], n_bytes: list[int], media_types: list[str], n_chunks: list[int],
                 headings: list[tuple[tuple[int, int, str], ...]], sha256s: list[str]) -> None:
        """Append documents given as equal-length columns of checked values (``_check_entries``).

        Raises:
            CapsuleFormatError: more documents or chunks than declared; nothing is written then.
        """
        at, end, total = self.size, self.size + len(names), sum(n_chunks)
        if self.chunks + total > self.max_chunks:
            raise CapsuleFormatError(f"documents hold over {self.max_chunks} chunks, manifest says {self.max_chunks}")
        if end > len(self.n_bytes):
            raise CapsuleFormatError(f"document list has over {len(self.n_bytes)} entries, manifest says "
                                     f"{len(self.n_bytes)}")
        # Column by column, in C where the common case allows (map, join, NumPy): 23.8 -> 15.4 ms
        # for SciFact x8's 41,464 documents (AMD EPYC, 2026-12-08).
        encoded = list(map(str.encode, names))  # UTF-8
        self.name_end[at:end] = len(self.name_blob) + np.cumsum(list(map(len, encoded)))
        self.name_blob += b"".join(encoded)
        self.n_bytes[at:end] = n_bytes
        counts = np.asarray(n_chunks, np.int64)
        self.n_chunks[at:end] = counts
        self.first_chunk_ids[at:end] = self.chunks + np.cumsum(counts) - counts
        self.chunks += total
        distinct = dict.fromkeys(media_types)  # in order of first use, as entry by entry
        if len(self.interned) + len(distinct) <= MAX_INTERNED_MEDIA_TYPES:  # each one is or becomes interned
            for media_type in distinct:
                distinct[media_type] = self._media_index(media_type)
            self.media_index[at:end] = list(map(distinct.__getitem__, media_types))
        else:
            self.media_index[at:end] = [self._media_index(media_type) for media_type in media_types]
        self.has_sha256[at:end] = list(map(bool, sha256s))
        self.sha256[32 * at:32 * end] = bytes.fromhex("".join(sha256s) if all(sha256s) else
                                                      "".join(sha256 or _NO_SHA256_HEX for sha256 in sha256s))
        before = len(self.heading_starts)
        if not any(headings):  # no document of the batch has headings
            self.heading_end[at:end] = before
            self.size = end
            return
        for entry_headings in headings:
            for start, level, title in entry_headings:
                self.heading_starts.append(start)
                self.heading_levels.append(level)
                self.title_blob += title.encode("utf-8")
                self.title_end.append(len(self.title_blob))
        self.heading_end[at:end] = before + np.cumsum([len(entry_headings) for entry_headings in headings])
        self.size = end

    def _media_index(self, media_type: str) -> int:
        index = self.interned.get(media_type)
        if index is None:
            self.media_blob += media_type.encode("utf-8")
            self.media_end.append(len(self.media_blob))
            index = len(self.media_end) - 1
            if len(self.interned) < MAX_INTERNED_MEDIA_TYPES:
                self.interned[media_type] = index
        return index

    def fill(self, table: "DocumentTable") -> None:
        """Hand the columns to ``table`` as they are (NumPy views of the growing arrays); nothing
        is copied, so building never holds the columns twice."""
        table.n_bytes, table.n_chunks, table.first_chunk_ids = self.n_bytes, self.n_chunks, self.first_chunk_ids
        table._name_blob, table._name_end = self.name_blob, self.name_end
        table._media_blob, table._media_index = self.media_blob, self.media_index
        table._media_end = np.frombuffer(self.media_end, dtype=np.uint32)
        table._has_sha256, table._sha256 = self.has_sha256, self.sha256
        table._heading_end = self.heading_end
        table._heading_starts = np.frombuffer(self.heading_starts, dtype=np.int64)
        table._heading_levels = np.frombuffer(self.heading_levels, dtype=np.uint8)
        table._title_blob, table._title_end = self.title_blob, np.frombuffer(self.title_end, dtype=np.uint32)
        columns = (self.n_bytes, self.n_chunks, self.first_chunk_ids, self.name_blob, self.name_end, self.media_blob,
                   self.media_end, self.media_index, self.has_sha256, self.sha256, self.heading_end,
                   self.heading_starts, self.heading_levels, self.title_blob, self.title_end)
        table._held = sum(sys.getsizeof(column) for column in columns)  # allocated, spare room included


#: A ``DocumentTable``'s columns as ``table_columns_to_bytes`` writes them: (attribute, dtype,
#: rows: "documents", "headings", "media" or "bytes" for a blob).
_TABLE_COLUMNS = (("n_bytes", np.int64, "documents"), ("n_chunks", np.uint32, "documents"),
                  ("first_chunk_ids", np.uint32, "documents"), ("_name_blob", np.uint8, "bytes"),
                  ("_name_end", np.uint32, "documents"), ("_media_blob", np.uint8, "bytes"),
                  ("_media_end", np.uint32, "media"), ("_media_index", np.uint32, "documents"),
                  ("_has_sha256", np.bool_, "documents"), ("_sha256", np.uint8, "digests"),
                  ("_heading_end", np.uint32, "documents"), ("_heading_starts", np.int64, "headings"),
                  ("_heading_levels", np.uint8, "headings"), ("_title_blob", np.uint8, "bytes"),
                  ("_title_end", np.uint32, "headings"))
_TABLE_MAGIC = b"EDGEDOC1"
_TABLE_HEADER = struct.Struct(f"<8s{2 + len(_TABLE_COLUMNS)}Q")


def table_columns_to_bytes(table: "DocumentTable") -> bytes:
    """A ``DocumentTable``'s columns as one byte string, for a device store to keep beside an
    installed capsule (``table_columns_from_bytes``; the store authenticates it, FORMAT.md §13.8):
    ``EDGEDOC1``, the document and heading counts and each column's length (uint64 LE), then the
    columns in ``_TABLE_COLUMNS`` order, little-endian."""
    columns = [np.asarray(getattr(table, name)).astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()
               if kind != "bytes" and kind != "digests" else bytes(getattr(table, name))
               for name, dtype, kind in _TABLE_COLUMNS]
    header = _TABLE_HEADER.pack(_TABLE_MAGIC, len(table), len(table._heading_starts), *map(len, columns))
    return header + b"".join(columns)


def table_columns_from_bytes(data: bytes | memoryview, *, n_documents: int, n_chunks: int) -> "DocumentTable":
    """The ``DocumentTable`` that ``table_columns_to_bytes`` wrote, every column copied out of
    ``data`` and checked: lengths, the manifest's document and chunk counts, first chunk ids,
    and offsets that stay inside their blobs (so no lookup can read past one). The caller has
    authenticated ``data`` first.

    Raises:
        CapsuleFormatError: the bytes are not such a table, or not one of ``n_documents``
            documents holding ``n_chunks`` chunks.
    """
    def bad(why: str) -> CapsuleFormatError:
        return CapsuleFormatError(f"stored document table: {why}")

    if len(data) < _TABLE_HEADER.size:
        raise bad("truncated header")
    magic, n, n_headings, *lengths = _TABLE_HEADER.unpack_from(data)
    if magic != _TABLE_MAGIC:
        raise bad("not a document table")
    if n != n_documents:
        raise bad(f"{n} documents, the manifest says {n_documents}")
    if _TABLE_HEADER.size + sum(lengths) != len(data):
        raise bad(f"{len(data)} bytes, its header says {_TABLE_HEADER.size + sum(lengths)}")
    table = DocumentTable.__new__(DocumentTable)
    at = _TABLE_HEADER.size
    for (name, dtype, kind), length in zip(_TABLE_COLUMNS, lengths):
        item = np.dtype(dtype).itemsize
        rows = {"documents": n, "headings": n_headings, "digests": 32 * n}.get(kind)
        if (rows is not None and length != rows * item) or length % item:
            raise bad(f"column {name.lstrip('_')} is {length} bytes")
        chunk = data[at:at + length]
        at += length
        if kind in ("bytes", "digests"):
            setattr(table, name, bytearray(chunk))
        else:
            setattr(table, name, np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype))
    for end, blob, rows in (("_name_end", "_name_blob", n), ("_title_end", "_title_blob", n_headings),
                            ("_media_end", "_media_blob", len(table._media_end)), ("_heading_end", None, n)):
        ends = getattr(table, end).astype(np.int64)
        limit = len(getattr(table, blob)) if blob else n_headings
        if rows and (np.any(np.diff(ends) < 0) or ends[0] < 0 or int(ends[-1]) != limit):
            raise bad(f"offsets {end.lstrip('_')} do not tile their {limit}")
        if not rows and limit:
            raise bad(f"{limit} bytes of {blob} with no row")
    if n and (len(table._media_end) == 0 or int(table._media_index.max()) >= len(table._media_end)):
        raise bad("a media type index points past the media types")
    counts = table.n_chunks.astype(np.int64)
    if int(counts.sum()) != n_chunks:
        raise bad(f"documents hold {int(counts.sum())} chunks, the manifest says {n_chunks}")
    if np.any(table.first_chunk_ids.astype(np.int64) != np.cumsum(counts) - counts):
        raise bad("first chunk ids do not follow the chunk counts")
    columns = [getattr(table, name) for name, _, _ in _TABLE_COLUMNS]
    table._held = sum(sys.getsizeof(column) for column in columns)
    return table


#: The canonical DOCS plaintext around its entries (FORMAT.md §8).
_DOCS_PREFIX, _DOCS_SUFFIX = b'{"documents":[', b"]}"
#: Between two entries of canonical DOCS: an entry is a flat object whose first member is
#: ``bytes`` and which holds no object, and inside a string a quote is always escaped, so in
#: canonical DOCS this sequence occurs exactly where one entry ends and the next begins.
_ENTRY_BOUNDARY = b'},{"bytes":'
#: An entry of at most this many bytes is parsed within ``DOCS_TABLE_BASE_BYTES``; a larger one
#: gets its own reservation of ``JSON_PARSE_PEAK_FACTOR`` times its length first.
DOCS_SMALL_ENTRY_BYTES = 64 << 10
#: Consecutive small entries are parsed together, up to this many bytes of JSON: a parse of this
#: size peaks at ``JSON_PARSE_PEAK_FACTOR`` times it, plus its text twice (as ``str``, 1-4 bytes
#: per character, and re-encoded), 1.25 MiB at most, within ``DOCS_TABLE_BASE_BYTES``. One
#: json.loads per batch instead of per entry: SciFact's 5,183 entries parse in 1/5 of the time.
DOCS_BATCH_BYTES = 32 << 10
#: Bytes ``parse_document_table`` needs beyond ``DOCS_TABLE_PEAK_FACTOR`` times the plaintext:
#: one small entry's parse at the worst JSON shape (32 x 64 KiB).
DOCS_TABLE_BASE_BYTES = 2 << 20
#: Times the DOCS plaintext that ``parse_document_table`` holds at most besides one batch's
#: parse: the plaintext itself (1x) and the columns, which the table keeps without a copy (at
#: most 1.5x the JSON they come from):
#:
#: - 61 bytes of per-document columns, allocated once, per entry of at least
#:   ``MIN_DOCS_ENTRY_BYTES``: n_bytes int64; chunk count, first chunk id, name end, media type
#:   index and heading end uint32; has-digest bool; the 32-byte digest;
#: - 13 bytes per heading of at least 10 bytes, 1.125x with the growing arrays' spare room;
#: - names, media types and titles their own length, 1.125x.
#:
#: The factor is that sum rounded up.
#: Measured peaks (tracemalloc, with the plaintext): SciFact's 5,183 documents 1.91x, a
#: 97k-chunk capsule's 41,464 documents 1.52x; parsed whole, the same lists peaked at 11.4x and
#: 8.4x.
DOCS_TABLE_PEAK_FACTOR = 3


def parse_document_table(plaintext: bytes, *, n_documents: int, n_chunks: int,
                         reserve_entry: Callable[[int], AbstractContextManager] | None = None) -> DocumentTable:
    """Parse and check a DOCS plaintext in batches of entries into a ``DocumentTable`` (FORMAT.md §8).

    The same checks as ``parse_documents``, with a bounded peak: the JSON parser sees at most
    ``DOCS_BATCH_BYTES`` of whole consecutive entries at a time, which must be their own canonical
    encoding (and the whole exactly ``{"documents":[entry,entry,...]}``), and they go into the
    table's columns before the next batch is parsed. The peak is ``DOCS_TABLE_PEAK_FACTOR`` times
    the plaintext plus ``DOCS_TABLE_BASE_BYTES``; an entry over ``DOCS_SMALL_ENTRY_BYTES`` is
    parsed alone inside ``reserve_entry(JSON_PARSE_PEAK_FACTOR * len(entry))`` (a budget
    reservation) when given. ``parse_document_table(b, ...)`` equals
    ``DocumentTable(parse_documents(b, ...))``, and refuses what it refuses. Time: 15.6 ms for
    SciFact's 5,183 entries (0.86 MB), 131 ms for 41,464 (7.2 MB), against 94 and 790 ms entry by
    entry (AMD EPYC, one core, 2026-12-08; 19.6 and 162 ms before the checks and the table's
    columns were filled a batch at a time in C).

    Raises:
        CapsuleFormatError: as ``parse_documents``.
        BudgetExceededError: from ``reserve_entry``, before a large entry is parsed.
        MemoryError: from the JSON parser.
    """
    if (len(plaintext) < len(_DOCS_PREFIX) + len(_DOCS_SUFFIX) or not plaintext.startswith(_DOCS_PREFIX)
            or not plaintext.endswith(_DOCS_SUFFIX)):
        raise CapsuleFormatError("document list must be {\"documents\": [...]} in canonical JSON")
    if n_documents * MIN_DOCS_ENTRY_BYTES > len(plaintext):
        raise CapsuleFormatError(f"document list of {len(plaintext)} bytes cannot hold the {n_documents} "
                                 f"entries the manifest says")
    builder = _TableBuilder(n_documents, n_chunks)
    start, end, n = len(_DOCS_PREFIX), len(plaintext) - len(_DOCS_SUFFIX), 0
    while start < end:
        cut = plaintext.find(_ENTRY_BOUNDARY, start, end)
        stop = end if cut < 0 else cut + 1
        if stop - start > DOCS_SMALL_ENTRY_BYTES:  # one large entry, parsed on its own reservation
            entry = plaintext[start:stop]
            with reserve_entry(JSON_PARSE_PEAK_FACTOR * len(entry)) if reserve_entry else nullcontext():
                items = [parse_canonical_json(entry, what=f"document {n} entry")]
            del entry
        else:
            stop = _batch_stop(plaintext, start, stop, end)
            items = _parse_entry_batch(plaintext[start:stop], n)
        builder.add_many(*_check_entries(items, n))  # refuses more documents or chunks than declared
        n += len(items)
        del items
        start = stop + 1 if stop < end else end
    if n != n_documents:
        raise CapsuleFormatError(f"document list has {n} entries, manifest says {n_documents}")
    if builder.chunks != n_chunks:
        raise CapsuleFormatError(f"documents hold {builder.chunks} chunks, manifest says {n_chunks}")
    table = DocumentTable.__new__(DocumentTable)
    builder.fill(table)
    return table


def _batch_stop(plaintext: bytes, start: int, stop: int, end: int) -> int:
    """Extend the batch ``plaintext[start:stop]`` (whole entries) by the entries after it while it
    stays within ``DOCS_BATCH_BYTES``; return its new end (a ``,`` before an entry, or ``end``)."""
    if end - start <= DOCS_BATCH_BYTES:
        return end
    cut = plaintext.rfind(_ENTRY_BOUNDARY, stop - 1, start + DOCS_BATCH_BYTES - 1 + len(_ENTRY_BOUNDARY))
    return max(stop, cut + 1)


def _parse_entry_batch(batch: bytes, first: int) -> list:
    """Parse whole consecutive DOCS entries ``batch`` (``entry,entry,...``: at most
    ``DOCS_BATCH_BYTES``, or one entry of at most ``DOCS_SMALL_ENTRY_BYTES``) as one JSON array
    and check that the array is its own canonical encoding.

    Equivalent to ``parse_canonical_json`` on each entry for every list ``_check_entry``
    accepts: an entry's members are its fixed ASCII names, so sorting by code point is RFC 8785's
    UTF-16 order; a duplicate member, an escaped character that need not be escaped or an
    escaped surrogate re-encodes differently and is refused; floats and NaN are refused while
    parsing, integers above 2^53 - 1 by ``_check_entry``.

    Raises:
        CapsuleFormatError: not UTF-8, not JSON, a float, or not in canonical form.
    """
    what = f"document {first} entry" if batch.find(_ENTRY_BOUNDARY) < 0 else f"document entries from {first}"
    try:
        text = "[" + batch.decode("utf-8", errors="strict") + "]"
        items = json.loads(text, parse_float=_reject_float, parse_constant=_reject_float)
    except CapsuleFormatError as exc:
        raise CapsuleFormatError(f"{what}: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CapsuleFormatError(f"{what} is not valid UTF-8 JSON ({type(exc).__name__})") from None
    try:
        again = json.dumps(items, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    except (TypeError, RecursionError):  # keys of mixed kinds cannot be sorted; too deep to re-encode
        raise CapsuleFormatError(f"{what} is not in canonical JSON form") from None
    if again != text or not items:
        raise CapsuleFormatError(f"{what} is not in canonical JSON form")
    return items


_ENTRY_KEYS = frozenset({"name", "bytes", "media_type", "n_chunks", "headings"})
_ENTRY_KEYS_SHA256 = _ENTRY_KEYS | {"sha256"}
_NAME, _BYTES, _MEDIA_TYPE, _N_CHUNKS, _SHA256, _HEADINGS = map(
    itemgetter, ("name", "bytes", "media_type", "n_chunks", "sha256", "headings"))
_NO_SHA256_HEX = "00" * 32


def _check_entries(items: list, first: int) -> tuple[list, list, list, list, list, list]:
    """``_check_entry`` for each of ``items`` (documents ``first``, ``first + 1``, ...), a column
    at a time: the columns ``(names, bytes, media_types, n_chunks, headings, sha256s)``.

    Raises:
        CapsuleFormatError: the first malformed entry, with ``_check_entry``'s message.
    """
    # Each check runs over a whole column in C (map, set, bytes.translate), not entry by entry
    # in Python: 46.8 -> 25.8 ms for SciFact x8's 41,464 entries (AMD EPYC, 2026-12-08). The
    # per-entry _check_entry below names the first bad entry.
    try:
        n = len(items)
        if set(map(type, items)) != {dict}:
            raise _Malformed
        keys = list(map(dict.keys, items))
        n_with_sha256 = sum(map(eq, keys, repeat(_ENTRY_KEYS_SHA256)))
        if n_with_sha256 + sum(map(eq, keys, repeat(_ENTRY_KEYS))) != n:
            raise _Malformed
        names = list(map(_NAME, items))
        n_bytes = list(map(_BYTES, items))
        media_types = list(map(_MEDIA_TYPE, items))
        n_chunks = list(map(_N_CHUNKS, items))
        sha256s = (list(map(_SHA256, items)) if n_with_sha256 == n else [""] * n if n_with_sha256 == 0
                   else [item.get("sha256", "") for item in items])
        if (set(map(type, names)) != {str} or set(map(type, media_types)) != {str}
                or set(map(type, n_bytes)) != {int} or set(map(type, n_chunks)) != {int}
                or min(n_bytes) < 0 or max(n_bytes) > MAX_INT or min(n_chunks) < 0 or max(n_chunks) > MAX_INT
                or set(map(type, sha256s)) != {str} or not set(map(len, sha256s)) <= {0, 64}
                or not _only_lowercase_hex("".join(sha256s))):  # so each is "" or 64 hex digits
            raise _Malformed
        all_headings = list(map(_HEADINGS, items))
        if set(map(type, all_headings)) == {list} and not any(all_headings):  # no document has headings
            headings = [()] * n
        else:
            headings = [_check_headings(value, first + i, error=CapsuleFormatError)
                        if type(value) is list and 0 < len(value) <= MAX_HEADINGS_PER_DOCUMENT
                        else _no_headings(value) for i, value in enumerate(all_headings)]
    except _Malformed:
        for i, item in enumerate(items):  # find the first bad entry and say what _check_entry says
            _check_entry(item, first + i)
        raise AssertionError("an entry failed the column checks but passes _check_entry") from None
    return names, n_bytes, media_types, n_chunks, headings, sha256s


def _only_lowercase_hex(text: str) -> bool:
    """Whether ``text`` holds only the digits 0-9 and a-f (deleting them, in C, leaves nothing)."""
    try:
        return not text.encode("ascii").translate(None, b"0123456789abcdef")
    except UnicodeEncodeError:
        return False


class _Malformed(Exception):
    """An entry failed ``_check_entries``' column checks (internal)."""


def _no_headings(value: object) -> tuple:
    if value != [] or type(value) is not list:
        raise _Malformed
    return ()


def _check_entry(item: object, n: int) -> tuple[str, int, str, int, tuple[tuple[int, int, str], ...], str]:
    """An entry's fields ``(name, bytes, media_type, n_chunks, headings, sha256)``, checked."""
    if (not isinstance(item, dict) or set(item) - {"sha256"} != {"name", "bytes", "media_type", "n_chunks", "headings"}
            or not isinstance(item.get("sha256", ""), str) or not _is_sha256_field(item.get("sha256", ""))
            or not isinstance(item["name"], str) or not _is_count(item["bytes"])
            or not isinstance(item["media_type"], str) or not _is_count(item["n_chunks"])
            or not isinstance(item["headings"], list) or len(item["headings"]) > MAX_HEADINGS_PER_DOCUMENT):
        raise CapsuleFormatError(f"document {n} entry is malformed")
    headings = _check_headings(item["headings"], n, error=CapsuleFormatError)
    return item["name"], item["bytes"], item["media_type"], item["n_chunks"], headings, item.get("sha256", "")


def parse_documents(plaintext: bytes, *, n_documents: int, n_chunks: int) -> list[Document]:
    """Parse and check a DOCS plaintext (FORMAT.md §8): the inverse of ``documents_to_bytes``.

    Args:
        plaintext: the inflated DOCS section (canonical JSON, UTF-8).
        n_documents, n_chunks: the manifest's counts, which the list must add up to.

    Returns:
        The documents in order, each with its ``first_chunk_id``.

    Raises:
        CapsuleFormatError: not canonical JSON, an entry with missing, extra or mistyped fields,
            malformed headings, or counts that differ from the manifest's.
        MemoryError: from the JSON parser (the caller charges the parse to its budget first).
    """
    obj = parse_canonical_json(plaintext, what="document list")
    if not isinstance(obj, dict) or set(obj) != {"documents"} or not isinstance(obj["documents"], list):
        raise CapsuleFormatError("document list must be {\"documents\": [...]}")
    docs = []
    first_chunk_id = 0
    for n, item in enumerate(obj["documents"]):
        name, n_bytes, media_type, n_doc_chunks, headings, sha256 = _check_entry(item, n)
        docs.append(Document(name, n_bytes, media_type, n_chunks=n_doc_chunks, first_chunk_id=first_chunk_id,
                             headings=headings, sha256=sha256))
        first_chunk_id += n_doc_chunks
    if len(docs) != n_documents:
        raise CapsuleFormatError(f"document list has {len(docs)} entries, manifest says {n_documents}")
    if first_chunk_id != n_chunks:
        raise CapsuleFormatError(f"documents hold {first_chunk_id} chunks, manifest says {n_chunks}")
    return docs


def _is_sha256_field(value: str) -> bool:
    """"" or 64 lowercase hex digits (FORMAT.md §8)."""
    return value == "" or _HEX64.fullmatch(value) is not None


def _is_count(value: object) -> bool:
    """An integer in canonical JSON's range ``[0, 2^53)`` (FORMAT.md §4), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _check_headings(items: list, n: int, *, error: type[Exception]) -> tuple[tuple[int, int, str], ...]:
    """``[[char_start, level, title], ...]``: char_start strictly increasing, level 1..6, title
    1..``MAX_HEADING_CHARS`` characters (FORMAT.md §8)."""
    out: list[tuple[int, int, str]] = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 3 or not _is_count(item[0]) or not _is_count(item[1])
                or not 1 <= item[1] <= 6 or not isinstance(item[2], str) or not 1 <= len(item[2]) <= MAX_HEADING_CHARS
                or (out and item[0] <= out[-1][0])):
            raise error(f"document {n} has a malformed heading")
        out.append((item[0], item[1], item[2]))
    return tuple(out)
