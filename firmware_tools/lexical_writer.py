"""Write the lexical index (LEXI plaintext) of either engine over the chunks.

The writer side of ``edge.lexical`` (FORMAT.md §5.5-§5.6), with the same terms as the reader:

- ``TantivyLexicalWriter`` (``tantivy-7``, the default): a tantivy index over the ``ident-v2``
  terms (field ``heading``: the heading path's terms; ``text``: the chunk's terms, every variant
  and the heading's variants; ``chunk``: the chunk id, a fast field), written by one indexing
  thread so that the bytes depend only on the chunks; its segments renamed by content (tantivy
  names them by random UUIDs) and packed into the archive of §5.6, compressed as one zstd frame.
- ``SqliteLexicalWriter`` (``sqlite-fts5``, for fleets whose runtimes read format 1.1 only): the
  FTS5 database of ``edge.lexical_sqlite``, rows in chunk order (rowid = chunk id), then FTS5
  ``optimize`` and ``VACUUM`` so the file is as small as FTS5 makes it.

Neither holds the chunk text: postings, lengths and the vocabulary only; the text stays only in
the frames.

Example::

    with lexical_writer("tantivy-7", work / "lexi") as lexi:
        for chunk in chunks:
            lexi.add(chunk.chunk_id, chunk.text, heading_path=chunk.heading_path)
    info = lexi.finish()          # {"plaintext_bytes": ..., "n_rows": ...}; LEXI is lexi.path

Source: FORMAT.md §5.5-§5.6; https://sqlite.org/fts5.html (contentless tables, optimize);
tantivy 0.27 (``IndexWriter``, ``meta.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import zstandard

from edge import lexical, lexical_sqlite, lexical_tantivy

from .errors import BuildError

__all__ = ["PAGE_BYTES", "SqliteLexicalWriter", "TantivyLexicalWriter", "lexical_writer", "pack_archive",
           "pack_tantivy_directory"]

#: SQLite page size of a LEXI database (SQLite's default).
PAGE_BYTES = 4096
#: Page size of a database that would be under ``SMALL_DATABASE_BYTES`` with 4 KiB pages.
SMALL_PAGE_BYTES = 512
SMALL_DATABASE_BYTES = 256 << 10


class SqliteLexicalWriter:
    """Collects chunks into a new ``sqlite-fts5`` LEXI database file at ``path`` (which must not exist)."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            raise BuildError(f"{path} exists; the lexical index is written to a new file")
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")
        self._conn.execute("PRAGMA journal_mode = DELETE")
        self._conn.execute(f"PRAGMA application_id = {lexical_sqlite.APPLICATION_ID}")
        self._conn.execute(f"PRAGMA user_version = {lexical_sqlite.LAYOUT_VERSION}")
        self._conn.execute("BEGIN")
        for statement in lexical_sqlite.SCHEMA:
            self._conn.execute(statement)
        self.n_rows = 0
        self._finished: dict[str, int] | None = None

    def add(self, chunk_id: int, text: str, *, heading_path: Sequence[str] = ()) -> None:
        """Index one chunk; ids must be consecutive from 0.

        Args:
            chunk_id: the chunk's id (the FTS5 rowid).
            text: the chunk text.
            heading_path: titles of the enclosing headings, outermost first.

        Raises:
            BuildError: ``chunk_id`` is not the next id.
        """
        if chunk_id != self.n_rows:
            raise BuildError(f"lexical index got chunk {chunk_id}, expected {self.n_rows}")
        heading_terms, heading_variants = lexical.index_terms(" \u203a ".join(heading_path))
        body, variants = lexical.index_terms(text)
        self._conn.execute("INSERT INTO lexi(rowid, heading, body, variants) VALUES (?, ?, ?, ?)",
                           (chunk_id, heading_terms, body, " ".join(filter(None, (variants, heading_variants)))))
        self.n_rows += 1

    def finish(self) -> dict[str, int]:
        """Merge, vacuum and close the database; return its ``plaintext_bytes``, ``n_rows``, ``page_bytes``."""
        if self._finished is None:
            self._conn.execute("INSERT INTO lexi(lexi) VALUES ('optimize')")
            self._conn.execute("COMMIT")
            self._conn.execute("VACUUM")
            page_bytes = PAGE_BYTES
            if self.path.stat().st_size < SMALL_DATABASE_BYTES:
                # a small capsule's index is mostly per-page overhead: 512-byte pages shrink it
                page_bytes = SMALL_PAGE_BYTES
                self._conn.execute(f"PRAGMA page_size = {page_bytes}")
                self._conn.execute("VACUUM")
            self._conn.close()
            self._finished = {"plaintext_bytes": self.path.stat().st_size, "n_rows": self.n_rows,
                              "page_bytes": page_bytes}
        return self._finished

    def close(self) -> None:
        """Close without finishing (an aborted build); the file is left for the caller to remove."""
        if self._finished is None:
            self._conn.close()
            self._finished = {}

    def __enter__(self) -> "SqliteLexicalWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.close()


#: tantivy's indexing memory: one segment per this many bytes of postings in the making (a
#: SciFact build, 12k chunks, needs about 60 MB: one segment).
TANTIVY_HEAP_BYTES = 512 << 20
#: zstd level of the LEXI archive (tantivy's files are bit-packed already: level 19 takes a
#: third off the term dictionary and doc store, bench/LEXICAL_ENGINES.md).
TANTIVY_ZSTD_LEVEL = 19


def _v2_terms(terms: str) -> str:
    return " ".join(lexical.v2_term(t) for t in terms.split())


class TantivyLexicalWriter:
    """Collects chunks into a ``tantivy-7`` LEXI (FORMAT.md §5.6) written to ``path``.

    ``path`` must not exist; the index is built in ``path`` + ``.d`` (removed by ``finish``
    and ``close``), and ``finish`` writes the compressed archive to ``path``.
    """

    def __init__(self, path: Path) -> None:
        import tantivy

        if path.exists():
            raise BuildError(f"{path} exists; the lexical index is written to a new file")
        self.path = path
        self._dir = path.with_name(path.name + ".d")
        self._dir.mkdir(mode=0o700)
        builder = tantivy.SchemaBuilder()
        for field in lexical_tantivy.FIELDS:
            builder.add_text_field(field, tokenizer_name="whitespace", index_option="freq")
        builder.add_unsigned_field("chunk", fast=True)
        self._index = tantivy.Index(builder.build(), path=str(self._dir), reuse=False)
        # one thread: documents get ids in order and segments flush at the same points every build
        self._writer = self._index.writer(heap_size=TANTIVY_HEAP_BYTES, num_threads=1)
        self.n_rows = 0
        self._finished: dict[str, int] | None = None

    def add(self, chunk_id: int, text: str, *, heading_path: Sequence[str] = ()) -> None:
        """Index one chunk; ids must be consecutive from 0.

        Args:
            chunk_id: the chunk's id (the ``chunk`` fast field).
            text: the chunk text.
            heading_path: titles of the enclosing headings, outermost first.

        Raises:
            BuildError: ``chunk_id`` is not the next id.
        """
        import tantivy

        if chunk_id != self.n_rows:
            raise BuildError(f"lexical index got chunk {chunk_id}, expected {self.n_rows}")
        heading_terms, heading_variants = lexical.index_terms(" \u203a ".join(heading_path))
        body, variants = lexical.index_terms(text)
        doc = tantivy.Document()
        doc.add_text("heading", _v2_terms(heading_terms))
        doc.add_text("text", _v2_terms(" ".join(filter(None, (body, variants, heading_variants)))))
        doc.add_unsigned("chunk", chunk_id)
        self._writer.add_document(doc)
        self.n_rows += 1

    def finish(self) -> dict[str, int]:
        """Commit, pack the segments into the archive, compress it to ``path``; return the
        archive's ``plaintext_bytes`` and ``n_rows``.

        Raises:
            BuildError: no chunk was added, or tantivy wrote something this writer does not know.
        """
        if self._finished is not None:
            return self._finished
        if self.n_rows == 0:
            raise BuildError("the lexical index needs at least one chunk")
        self._writer.commit()
        self._writer.wait_merging_threads()
        self._writer = self._index = None
        archive = pack_tantivy_directory(self._dir)
        lexical_tantivy.parse_archive(archive)  # the reader's own checks, before it ships
        compressor = zstandard.ZstdCompressor(level=TANTIVY_ZSTD_LEVEL, write_content_size=True)
        with open(self.path, "xb") as out:
            out.write(compressor.compress(archive))
        shutil.rmtree(self._dir)
        self._finished = {"plaintext_bytes": len(archive), "n_rows": self.n_rows}
        return self._finished

    def close(self) -> None:
        """Give up (an aborted build): drop the writer and remove the index folder."""
        if self._finished is None:
            self._writer = self._index = None
            shutil.rmtree(self._dir, ignore_errors=True)
            self._finished = {}

    def __enter__(self) -> "TantivyLexicalWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.close()


def pack_tantivy_directory(folder: Path) -> bytes:
    """Return the LEXI archive (FORMAT.md §5.6) of a committed tantivy index in ``folder``.

    Each segment is renamed by content: its id becomes the first 16 bytes of the SHA-256 of its
    files (in ``SEGMENT_FILE_EXTENSIONS`` order), and segments are listed by that id, so the
    archive depends only on the indexed documents (tantivy's own ids are random UUIDs).
    ``meta.json`` is rewritten as compact JSON with sorted keys, and each ``.store`` file is
    replaced by ``edge.lexical_tantivy.EMPTY_DOC_STORE`` (the index stores no field).

    Raises:
        BuildError: a segment file is missing, a file is not one a segment has, or deletes.
    """
    meta = json.loads((folder / "meta.json").read_text())
    renamed: dict[str, dict] = {}
    contents: dict[str, bytes] = {}
    known = {"meta.json", ".managed.json", ".tantivy-meta.lock", ".tantivy-writer.lock"}
    for seg in meta["segments"]:
        stem = seg["segment_id"].replace("-", "")
        if seg.get("deletes") is not None:
            raise BuildError("the lexical index has deletes")
        try:
            files = [(folder / f"{stem}.{ext}").read_bytes() for ext in lexical_tantivy.SEGMENT_FILE_EXTENSIONS]
        except FileNotFoundError as exc:
            raise BuildError(f"tantivy left no {Path(exc.filename).name}") from None
        store = lexical_tantivy.SEGMENT_FILE_EXTENSIONS.index("store")
        files[store] = _empty_doc_store(files[store])
        digest = hashlib.sha256()
        for data in files:
            digest.update(hashlib.sha256(data).digest())
        new = digest.hexdigest()[:32]
        renamed[new] = {**seg, "segment_id": f"{new[:8]}-{new[8:12]}-{new[12:16]}-{new[16:20]}-{new[20:]}"}
        contents.update({f"{new}.{ext}": data for ext, data in zip(lexical_tantivy.SEGMENT_FILE_EXTENSIONS, files)})
        known.update(f"{stem}.{ext}" for ext in lexical_tantivy.SEGMENT_FILE_EXTENSIONS)
    stray = sorted(set(os.listdir(folder)) - known)
    if stray:
        raise BuildError(f"tantivy wrote a file this writer does not know: {stray[0]}")
    meta["segments"] = [renamed[k] for k in sorted(renamed)]
    files = {"meta.json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()}
    files.update(sorted(contents.items()))
    return pack_archive(files)


def _empty_doc_store(written: bytes) -> bytes:
    """``EMPTY_DOC_STORE`` with the footer tantivy gave ``written`` (its version object), the
    CRC-32 computed over the new body. The index stores no field, so nothing is lost.

    Raises:
        BuildError: ``written`` has no footer this writer can read.
    """
    import zlib

    try:
        footer_bytes, magic = struct.unpack("<II", written[-8:])
        footer = json.loads(written[len(written) - 8 - footer_bytes:-8])
        version = footer["version"]
    except (struct.error, ValueError, KeyError, TypeError):
        raise BuildError("tantivy wrote a doc store without a footer this writer reads") from None
    if magic != lexical_tantivy.FOOTER_MAGIC:
        raise BuildError("tantivy wrote a doc store without its footer magic")
    body = lexical_tantivy.EMPTY_DOC_STORE
    encoded = json.dumps({"version": version, "crc": zlib.crc32(body)}, separators=(",", ":")).encode()
    return body + encoded + struct.pack("<II", len(encoded), magic)


def pack_archive(files: dict[str, bytes]) -> bytes:
    """Return the LEXI archive (FORMAT.md §5.6) of ``files`` in the order given (``meta.json``
    first); the reader's ``edge.lexical_tantivy.parse_archive`` is its inverse.

    Raises:
        BuildError: a name that is not ASCII or longer than the table's 48 bytes.
    """
    table_end = lexical_tantivy.ARCHIVE_HEADER.size + len(files) * lexical_tantivy.ARCHIVE_ENTRY.size
    out = bytearray(lexical_tantivy.ARCHIVE_HEADER.pack(lexical_tantivy.ARCHIVE_MAGIC, len(files), 0))
    offset = table_end
    for name, data in files.items():
        raw = name.encode("ascii", errors="replace")
        if len(raw) > 48 or not name.isascii():
            raise BuildError(f"lexical file name {name!r} does not fit the archive table")
        out += lexical_tantivy.ARCHIVE_ENTRY.pack(raw, offset, len(data))
        offset += len(data)
    for data in files.values():
        out += data
    return bytes(out)


def lexical_writer(engine: str, path: Path) -> SqliteLexicalWriter | TantivyLexicalWriter:
    """The writer of ``engine`` (``"tantivy-7"`` or ``"sqlite-fts5"``) at a new ``path``.

    Raises:
        BuildError: an unknown engine, or ``path`` exists.
    """
    if engine == lexical_tantivy.FORMAT:
        return TantivyLexicalWriter(path)
    if engine == lexical_sqlite.FORMAT:
        return SqliteLexicalWriter(path)
    raise BuildError(f"unknown lexical engine {engine!r}: choose tantivy-7 or sqlite-fts5")
