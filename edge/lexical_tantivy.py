"""The tantivy engine of the lexical index: LEXI format ``tantivy-7`` (FORMAT.md §5.6).

Capsules of format 1.2 carry their lexical index as a tantivy index (BM25, block-max WAND,
postings with term frequencies and no positions) over the ``ident-v2`` terms of
``edge.lexical``: about a third of the bytes of the SQLite FTS5 index it replaces and a tenth of
its query time (bench/LEXICAL_ENGINES.md). The section holds one zstd frame; inside it, a small
archive of the index's files (a table of names, offsets and lengths). This module owns that
archive, the checks made on it before tantivy sees a byte, and the queries.

Opening: the verified section is inflated within its declared size, the archive's table and
every file's tantivy footer (magic, length, index format version 7, CRC-32 of the body) and
``meta.json`` (exactly the schema and settings below, 1..``MAX_SEGMENTS`` segments whose
``max_doc`` add up to the chunk count, no deletes) are checked, then each file is written to a
sealed ``memfd`` (``edge._files.sealed_memfd``: nobody can change it afterwards). tantivy opens
files by path only (``MmapDirectory``), so a private temporary folder (mode 0700, under
``TMPDIR``, else ``/dev/shm``: ``_private_link_dir``) holds one symbolic link per file to ``/proc/self/fd/N`` while the searcher opens,
and is removed once it has mapped every file: no plaintext is ever named on a file system, and
a process killed later leaves nothing behind. The memfd pages are the
index's memory (charged to the budget as ``plaintext_bytes``); tantivy maps them.

tantivy is Rust: a signed but malformed index makes it raise ``ValueError`` or panic (pyo3's
``PanicException``, a ``BaseException``), never read out of bounds. Both become
``CapsuleFormatError`` at open and ``IntegrityError`` during a search; Rust prints a panic's
message on stderr. Measured: 800 signed mutations of SciFact and FAQ indexes (bytes flipped,
zeroed, cut; footers' CRC recomputed as a malicious signer would): no signal, no hang, no
allocation over 2 GiB (bench/LEXICAL_ENGINES.md).

Example::

    lexi = TantivyLexicalIndex.open(section_blocks, info=manifest.lexical, n_chunks=n)
    ids, scores = lexi.search(LexicalQuery.parse("E-4021 encoder"), 10)   # BM25, best first
    exact = lexi.exact_matches(LexicalQuery.parse("E-4021"), limit=100)   # ascending ids

Source: FORMAT.md §5.6; tantivy 0.27 (``src/directory/footer.rs``: the footer;
``src/index/index_meta.rs``: meta.json); Robertson & Zaragoza 2009 (BM25, k1 1.2, b 0.75).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._files import sealed_memfd
from .errors import CapsuleFormatError, EdgeError, IntegrityError
from .lexical import LexicalQuery, v2_term
from .manifest import LexicalInfo
from .sealed import decompress_bounded, zstd_decompressor

log = logging.getLogger(__name__)

__all__ = [
    "ARCHIVE_MAGIC", "FORMAT", "MAX_SEGMENTS", "SEGMENT_FILE_EXTENSIONS", "TantivyLexicalIndex", "expected_meta",
    "parse_archive", "tantivy_loading_bytes", "tantivy_plan_bytes",
]

#: The manifest's ``lexical.format`` for this engine (tantivy's index format version 7).
FORMAT = "tantivy-7"
#: tantivy's on-disk index format version that ``FORMAT`` names (every file's footer says it).
INDEX_FORMAT_VERSION = 7
#: First 8 bytes of the archive.
ARCHIVE_MAGIC = b"ELEXTAN1"
#: Archive header: magic, u32 file count, u32 zero.
ARCHIVE_HEADER = struct.Struct("<8sII")
#: One archive table entry (64 bytes): 48-byte NUL-padded ASCII name, u64 offset, u64 length.
ARCHIVE_ENTRY = struct.Struct("<48sQQ")
#: Most segments an index may have (the builder writes one per ~512 MB of indexing memory).
MAX_SEGMENTS = 64
#: The files of one segment, by extension, in archive order.
SEGMENT_FILE_EXTENSIONS = ("fast", "fieldnorm", "idx", "pos", "store", "term")
#: Largest ``meta.json`` accepted, bytes.
MAX_META_BYTES = 64 << 10
#: Largest footer JSON accepted, bytes (tantivy writes ~80).
MAX_FOOTER_BYTES = 1024
#: tantivy's footer magic number (``FOOTER_MAGIC_NUMBER``).
FOOTER_MAGIC = 1337
#: The body of every segment's ``.store`` file (before its tantivy footer): a doc store with no
#: block, which is all an index that stores no field needs. tantivy parses a store's skip index
#: and footer when it opens a searcher, and garbage there made it allocate terabytes and abort
#: the process (signed fuzz, family lexi-files seed 50170), so the writer replaces tantivy's
#: store with this one and the reader accepts no other (FORMAT.md §5.6). Layout: skip index of
#: no layer (VInt 0, ``0x80``), then tantivy's ``DocStoreFooter``: u32 doc store version 2,
#: u64 offset 0 of the skip index, u8 compressor id 1 (lz4), 15 zero bytes.
EMPTY_DOC_STORE = b"\x80" + struct.pack("<IQB", 2, 0, 1) + bytes(15)
#: zstd window accepted for the section (level 19 uses 8 MiB).
MAX_WINDOW_BYTES = 8 << 20
#: BM25 boost of a term found in a chunk's heading path over one found in its text.
HEADING_BOOST = 3.0
#: Anonymous memory an open tantivy index holds beyond its files (searcher, segment readers,
#: the meta-file watcher thread's stack), bytes: measured +1.3 MiB RssAnon after opening the
#: SciFact index and 200 queries (bench/LEXICAL_ENGINES.md); on 2026-12-07, opening it (0.65
#: MiB) and 600 searches plus exact-match lookups (0.13) grew RssAnon by 0.77 MiB for both
#: SciFact's index (memfd) and a 97k-chunk store's (mapped files), with tantivy 0.27.0; rounded up.
TANTIVY_OVERHEAD_BYTES = 2 << 20
#: Query-time fields: the heading path's terms, and the text's terms with every variant.
FIELDS = ("heading", "text")

_SEGMENT_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FOOTER_TAIL = struct.Struct("<II")


def _text_field(name: str) -> dict[str, Any]:
    return {"name": name, "type": "text", "options": {
        "indexing": {"record": "freq", "fieldnorms": True, "tokenizer": "whitespace"},
        "stored": False, "fast": False}}


def expected_meta() -> dict[str, Any]:
    """``meta.json`` without its ``segments`` and ``opstamp``: the schema and index settings a
    ``tantivy-7`` LEXI holds (FORMAT.md §5.6), as tantivy 0.27 writes them."""
    return {
        "index_settings": {"docstore_compression": "lz4", "docstore_blocksize": 16384},
        "schema": [_text_field("heading"), _text_field("text"),
                   {"name": "chunk", "type": "u64",
                    "options": {"indexed": False, "fieldnorms": False, "fast": True, "stored": False}}],
    }


def tantivy_plan_bytes(info: LexicalInfo, section_bytes: int) -> int:
    """Bytes an open ``tantivy-7`` LEXI holds at its peak: the collected section, the inflated
    archive twice (``decompress_bounded`` checks its output in a second pass), the memfds'
    copy, and ``TANTIVY_OVERHEAD_BYTES``. ``tantivy_loading_bytes`` of it is released once open."""
    return section_bytes + 2 * info.plaintext_bytes + TANTIVY_OVERHEAD_BYTES


def tantivy_loading_bytes(info: LexicalInfo, section_bytes: int) -> int:
    """Bytes of ``tantivy_plan_bytes`` that only loading needs (what is left: the memfds and
    ``TANTIVY_OVERHEAD_BYTES``)."""
    return section_bytes + info.plaintext_bytes


def parse_archive(archive: bytes | memoryview) -> dict[str, memoryview]:
    """Split a LEXI archive into its files, checking the table before anything is read by name.

    Layout (FORMAT.md §5.6): ``ARCHIVE_HEADER`` (magic ``ELEXTAN1``, file count 1..``1 + 6 *
    MAX_SEGMENTS``, zero), then one ``ARCHIVE_ENTRY`` per file (name, offset, length), then
    the files, each starting where the one before it ends, the first right after the table and
    the last ending at the archive's end. Names are ``meta.json`` (first, exactly once) or
    ``<32 lowercase hex>.<extension>``; no name twice.

    Returns:
        ``{name: bytes}`` views into ``archive``, in table order.

    Raises:
        CapsuleFormatError: naming the first rule the archive breaks.
    """
    view = memoryview(archive)
    if len(view) < ARCHIVE_HEADER.size:
        raise CapsuleFormatError(f"lexical archive is {len(view)} bytes, shorter than its header")
    magic, n_files, reserved = ARCHIVE_HEADER.unpack_from(view, 0)
    if magic != ARCHIVE_MAGIC or reserved != 0:
        raise CapsuleFormatError("lexical archive has a bad header (magic or reserved field)")
    if not 1 <= n_files <= 1 + len(SEGMENT_FILE_EXTENSIONS) * MAX_SEGMENTS:
        raise CapsuleFormatError(f"lexical archive lists {n_files} files")
    cursor = ARCHIVE_HEADER.size + n_files * ARCHIVE_ENTRY.size
    if cursor > len(view):
        raise CapsuleFormatError(f"lexical archive's table of {n_files} files passes its end")
    files: dict[str, memoryview] = {}
    for i in range(n_files):
        raw_name, offset, length = ARCHIVE_ENTRY.unpack_from(view, ARCHIVE_HEADER.size + i * ARCHIVE_ENTRY.size)
        name = raw_name.rstrip(b"\x00")
        if b"\x00" in name or not name.isascii():
            raise CapsuleFormatError(f"lexical archive entry {i} is malformed")
        text = name.decode("ascii")
        if (i == 0) != (text == "meta.json"):
            raise CapsuleFormatError("lexical archive must list meta.json first and once")
        if i and not re.fullmatch(r"[0-9a-f]{32}\.(" + "|".join(SEGMENT_FILE_EXTENSIONS) + ")", text):
            raise CapsuleFormatError(f"lexical archive holds an unexpected file {text!r}")
        if text in files:
            raise CapsuleFormatError(f"lexical archive lists {text} twice")
        if offset != cursor or length > len(view) - cursor:
            raise CapsuleFormatError(f"lexical archive's {text} is not where the table says "
                                     f"(offset {offset}, length {length})")
        files[text] = view[offset:offset + length]
        cursor += length
    if cursor != len(view):
        raise CapsuleFormatError(f"lexical archive has {len(view) - cursor} bytes after its last file")
    return files


def check_meta(meta_bytes: bytes | memoryview, *, n_chunks: int) -> list[str]:
    """Check ``meta.json`` against FORMAT.md §5.6; return the segments' file stems (hex ids).

    Raises:
        CapsuleFormatError: oversized, not JSON, another schema or settings, no segment or more
            than ``MAX_SEGMENTS``, a malformed or repeated segment id, deletes, or ``max_doc``
            that do not add up to ``n_chunks``.
    """
    if len(meta_bytes) > MAX_META_BYTES:
        raise CapsuleFormatError(f"lexical meta.json is {len(meta_bytes)} bytes (limit {MAX_META_BYTES})")
    try:
        meta = json.loads(bytes(meta_bytes).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CapsuleFormatError("lexical meta.json is not JSON") from None
    if not isinstance(meta, dict) or set(meta) - {"payload"} != {"index_settings", "segments", "schema", "opstamp"}:
        raise CapsuleFormatError("lexical meta.json does not have tantivy's keys")
    expected = expected_meta()
    if meta["schema"] != expected["schema"] or meta["index_settings"] != expected["index_settings"]:
        raise CapsuleFormatError(f"lexical index schema or settings differ from {FORMAT}'s")
    if meta.get("payload") is not None or type(meta["opstamp"]) is not int or meta["opstamp"] < 0:
        raise CapsuleFormatError("lexical meta.json has a payload or a bad opstamp")
    segments = meta["segments"]
    if not isinstance(segments, list) or not 1 <= len(segments) <= MAX_SEGMENTS:
        raise CapsuleFormatError(f"lexical index must have 1..{MAX_SEGMENTS} segments")
    stems, total = [], 0
    for seg in segments:
        if (not isinstance(seg, dict) or set(seg) != {"segment_id", "max_doc", "deletes"}
                or not isinstance(seg["segment_id"], str) or not _SEGMENT_ID_RE.fullmatch(seg["segment_id"])
                or type(seg["max_doc"]) is not int or seg["max_doc"] < 1 or seg["deletes"] is not None):
            raise CapsuleFormatError("lexical meta.json has a malformed segment (or one with deletes)")
        stems.append(seg["segment_id"].replace("-", ""))
        total += seg["max_doc"]
    if len(set(stems)) != len(stems):
        raise CapsuleFormatError("lexical meta.json lists a segment twice")
    if total != n_chunks:
        raise CapsuleFormatError(f"lexical index holds {total} documents, capsule has {n_chunks} chunks")
    return stems


def check_footer(name: str, data: bytes | memoryview) -> None:
    """Check a segment file's tantivy footer: magic, bounded length, JSON naming index format
    version ``INDEX_FORMAT_VERSION``, and the CRC-32 of the body; a ``.store`` file's body must
    be ``EMPTY_DOC_STORE``.

    Raises:
        CapsuleFormatError: naming the file and what is wrong.
    """
    if len(data) < _FOOTER_TAIL.size:
        raise CapsuleFormatError(f"lexical file {name} is too short for a footer")
    footer_bytes, magic = _FOOTER_TAIL.unpack_from(data, len(data) - _FOOTER_TAIL.size)
    if magic != FOOTER_MAGIC or footer_bytes > MAX_FOOTER_BYTES or footer_bytes + _FOOTER_TAIL.size > len(data):
        raise CapsuleFormatError(f"lexical file {name} has a bad footer")
    body_end = len(data) - _FOOTER_TAIL.size - footer_bytes
    try:
        footer = json.loads(bytes(data[body_end:len(data) - _FOOTER_TAIL.size]).decode("utf-8"))
        version, crc = footer["version"]["index_format_version"], footer["crc"]
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
        raise CapsuleFormatError(f"lexical file {name} has a footer that is not tantivy's") from None
    if version != INDEX_FORMAT_VERSION:
        raise CapsuleFormatError(f"lexical file {name} is tantivy index format {version}, "
                                 f"this runtime reads {INDEX_FORMAT_VERSION}")
    if crc != zlib.crc32(data[:body_end]):
        raise CapsuleFormatError(f"lexical file {name} fails its CRC-32")
    if name.endswith(".store") and (body_end != len(EMPTY_DOC_STORE) or bytes(data[:body_end]) != EMPTY_DOC_STORE):
        raise CapsuleFormatError(f"lexical file {name} is not the empty doc store this format requires")


def check_files(files: dict[str, bytes | memoryview], *, n_chunks: int) -> None:
    """``meta.json`` first, exactly the files it names (``SEGMENT_FILE_EXTENSIONS`` per
    segment), and every segment file's footer (``check_footer``).

    Raises:
        CapsuleFormatError: what ``check_meta`` and ``check_footer`` raise, or another file set.
    """
    if "meta.json" not in files:
        raise CapsuleFormatError("lexical index has no meta.json")
    stems = check_meta(files["meta.json"], n_chunks=n_chunks)
    wanted = {"meta.json"} | {f"{stem}.{ext}" for stem in stems for ext in SEGMENT_FILE_EXTENSIONS}
    if set(files) != wanted:
        missing = sorted(wanted - set(files)) or sorted(set(files) - wanted)
        raise CapsuleFormatError(f"lexical archive's files do not match meta.json ({missing[0]})")
    for name, data in files.items():
        if name != "meta.json":
            check_footer(name, data)


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError))


#: Where the links go when ``TMPDIR`` (and ``/tmp``, ``/var/tmp``) cannot take a folder: a container
#: run with ``--read-only`` still has ``/dev/shm``, a systemd service its ``$XDG_RUNTIME_DIR``.
LINK_DIR_FALLBACKS = ("/dev/shm",)


def _private_link_dir() -> str:
    """A new private folder (mode 0700) for the ``/proc/self/fd`` links: under ``TMPDIR`` (Python's
    ``tempfile`` search), else ``$XDG_RUNTIME_DIR`` or ``/dev/shm``. It only ever holds links.

    Raises:
        EdgeError: none of them can take a folder (a read-only root without a tmpfs anywhere).
    """
    try:
        return tempfile.mkdtemp(prefix="edge-lexi-")
    except OSError as exc:
        first = exc.strerror
    for directory in (os.environ.get("XDG_RUNTIME_DIR"), *LINK_DIR_FALLBACKS):
        if directory and os.path.isdir(directory):
            try:
                return tempfile.mkdtemp(prefix="edge-lexi-", dir=directory)
            except OSError:
                continue
    raise EdgeError(f"the lexical index needs a private temporary folder: TMPDIR, /tmp and /dev/shm are not "
                    f"writable ({first}); give the process a tmpfs (docker run --tmpfs /tmp)")


class TantivyLexicalIndex:
    """A verified ``tantivy-7`` LEXI, open read-only over sealed memfds; BM25 search over chunks.

    Create with ``open``. Not thread-safe: one query at a time (as ``Capsule``). tantivy
    releases the GIL while it searches, so a query's BM25 ranking can run beside its embedding.
    """

    def __init__(self, *, index: Any, searcher: Any, schema: Any, fds: list[int], info: LexicalInfo,
                 n_chunks: int) -> None:
        self._index, self._searcher, self._schema = index, searcher, schema
        self._fds = fds
        self.info = info
        self._n_chunks = n_chunks

    @classmethod
    def open(cls, blocks: Iterable[bytes], *, info: LexicalInfo, n_chunks: int,
             section_bytes: int) -> "TantivyLexicalIndex":
        """Inflate, check and open a verified LEXI section (FORMAT.md §5.6).

        The caller has authenticated the bytes (AEAD or section digest) and reserved
        ``tantivy_plan_bytes(info, section_bytes)``.

        Args:
            blocks: the section's plaintext (one zstd frame) in pieces, ``section_bytes`` in all.
            info: the manifest's ``lexical`` object (``plaintext_bytes``: the archive's length).
            n_chunks: the capsule's chunk count.
            section_bytes: the zstd frame's length.

        Raises:
            CapsuleFormatError: the bytes are not a ``tantivy-7`` LEXI as specified (the frame,
                the archive, meta.json, a footer, or tantivy refusing them).
            EdgeError: no private temporary folder can be made (``TMPDIR``, ``/tmp`` and ``/dev/shm`` not writable).
        """
        if info.n_rows != n_chunks:
            raise CapsuleFormatError(f"lexical index has {info.n_rows} rows, capsule has {n_chunks} chunks")
        compressed = bytearray()
        for piece in blocks:
            if len(compressed) + len(piece) > section_bytes:
                raise CapsuleFormatError(f"lexical section exceeds its {section_bytes} bytes")
            compressed += piece
        archive = decompress_bounded(compressed, info.plaintext_bytes,
                                     zstd_decompressor(max_window_bytes=MAX_WINDOW_BYTES), what="lexical index",
                                     require_content_size=True)
        del compressed
        if len(archive) != info.plaintext_bytes:
            raise CapsuleFormatError(f"lexical index is {len(archive)} bytes, manifest says {info.plaintext_bytes}")
        files = parse_archive(archive)
        check_files(files, n_chunks=n_chunks)
        named_fds: dict[str, int] = {}
        try:
            for name, data in files.items():
                named_fds[name] = sealed_memfd("edge-capsule-lexi", [data], n_bytes=len(data),
                                               what=f"lexical file {name}")
        except BaseException:
            for fd in named_fds.values():
                os.close(fd)
            raise
        del files, archive
        return cls._open_fds(named_fds, info=info, n_chunks=n_chunks)

    @classmethod
    def open_extracted(cls, folder: Path, *, info: LexicalInfo, n_chunks: int) -> "TantivyLexicalIndex":
        """Open the files of a plain LEXI that a device store extracted at install (FORMAT.md §13).

        Each file is opened once (no symbolic link followed, regular files only, all of them
        together no larger than the archive), checked through that descriptor exactly as the
        section's files are (``meta.json``, the file set, every footer and CRC-32, the empty doc
        stores), and tantivy then opens those descriptors: it maps the files themselves, page
        cache the kernel can evict, so only ``TANTIVY_OVERHEAD_BYTES`` is held in memory.

        Raises:
            IntegrityError: the folder or a file cannot be opened, is not a regular file, or the
                files are larger than the manifest's archive (changed after the install).
            CapsuleFormatError: the files are not a ``tantivy-7`` index as specified.
        """
        import mmap

        named_fds: dict[str, int] = {}
        sizes: dict[str, int] = {}
        maps: list[mmap.mmap] = []
        views: list[memoryview] = []
        try:
            try:
                dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise IntegrityError(f"extracted lexical index {folder} cannot be opened: {exc.strerror}") from None
            try:
                names = sorted(os.listdir(dir_fd))
                if len(names) > 1 + len(SEGMENT_FILE_EXTENSIONS) * MAX_SEGMENTS:
                    raise CapsuleFormatError(f"extracted lexical index {folder} holds {len(names)} files")
                total = 0
                for name in names:
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                    except OSError as exc:
                        raise IntegrityError(f"extracted lexical file {name} cannot be opened: {exc.strerror}") from None
                    named_fds[name] = fd
                    st = os.fstat(fd)
                    sizes[name] = st.st_size
                    total += st.st_size
                    if not stat.S_ISREG(st.st_mode) or total > info.plaintext_bytes:
                        raise IntegrityError(f"extracted lexical file {name} is not what the install wrote "
                                             "(not a regular file, or larger)")
            finally:
                os.close(dir_fd)
            files: dict[str, bytes | memoryview] = {}
            for name, fd in named_fds.items():
                size = sizes[name]
                if size == 0:
                    files[name] = b""
                else:
                    maps.append(mmap.mmap(fd, size, prot=mmap.PROT_READ))
                    views.append(memoryview(maps[-1]))
                    files[name] = views[-1]
            if "meta.json" in files:
                files = {"meta.json": files.pop("meta.json"), **files}
            check_files(files, n_chunks=n_chunks)
            del files
        except BaseException:
            for fd in named_fds.values():
                os.close(fd)
            raise
        finally:
            # The checks' own mappings (tantivy maps the files again through the descriptors).
            # One still exported (a traceback's frame holding a slice) is left to the collector.
            for view in views:
                try:
                    view.release()
                except BufferError:
                    pass
            for m in maps:
                try:
                    m.close()
                except BufferError:
                    pass
        return cls._open_fds(named_fds, info=info, n_chunks=n_chunks)

    @classmethod
    def _open_fds(cls, named_fds: dict[str, int], *, info: LexicalInfo, n_chunks: int) -> "TantivyLexicalIndex":
        """Open tantivy over checked files given as descriptors (memfds, or a store's files),
        through a private folder of ``/proc/self/fd`` links; owns ``named_fds`` from here on."""
        import tantivy

        fds = list(named_fds.values())
        link_dir = ""
        try:
            link_dir = _private_link_dir()
            for name, fd in named_fds.items():
                os.symlink(f"/proc/self/fd/{fd}", os.path.join(link_dir, name))
            stems = len({name.split(".")[0] for name in named_fds if name != "meta.json"})
            try:
                index = tantivy.Index.open(link_dir)
                index.config_reader(reload_policy="manual", num_warmers=0)
                searcher = index.searcher()
                schema = index.schema
                found = (searcher.num_docs, searcher.num_segments)
            except BaseException as exc:
                if _is_fatal(exc):
                    raise
                raise CapsuleFormatError(f"tantivy refuses the lexical index ({type(exc).__name__}: "
                                         f"{str(exc)[:120]})") from None
            if found != (n_chunks, stems):
                raise CapsuleFormatError(f"lexical index opens with {found[0]} documents in {found[1]} segments, "
                                         f"expected {n_chunks} in {stems}")
            # The searcher has mapped every file (its reload policy is manual), so the links
            # are no longer needed: removing them now means a process that is killed later
            # leaves nothing in TMPDIR.
            shutil.rmtree(link_dir, ignore_errors=True)
            link_dir = ""
        except BaseException:
            for fd in fds:
                os.close(fd)
            if link_dir:
                shutil.rmtree(link_dir, ignore_errors=True)
            raise
        log.debug("opened tantivy lexical index: %d chunks, %d segments, %d bytes", n_chunks, stems,
                  info.plaintext_bytes)
        return cls(index=index, searcher=searcher, schema=schema, fds=fds, info=info, n_chunks=n_chunks)

    # ---------------------------------------------------------------------------------- queries

    def _term(self, field: str, term: str) -> Any:
        import tantivy
        return tantivy.Query.term_query(self._schema, field, term, index_option="freq")

    def _filtered(self, query: Any, chunk_ranges: list[tuple[int, int]] | None) -> Any | None:
        """``query`` restricted to chunks in ``[first, last)`` ranges (scores unchanged); ``None``
        when the ranges are empty (nothing can match)."""
        import tantivy
        if chunk_ranges is None:
            return query
        ranges = [(tantivy.Occur.Should, tantivy.Query.range_query(
            self._schema, "chunk", tantivy.FieldType.Unsigned, first, last - 1)) for first, last in chunk_ranges
            if last > first]
        if not ranges:
            return None
        allowed = tantivy.Query.const_score_query(tantivy.Query.boolean_query(ranges), 0.0)
        return tantivy.Query.boolean_query([(tantivy.Occur.Must, query), (tantivy.Occur.Must, allowed)])

    def _run(self, query: Any, n: int, *, by_chunk: bool = False) -> list[tuple[float, int]]:
        """``(score, chunk id)`` of the best ``n`` documents (by score, or by ascending chunk id)."""
        import tantivy
        try:
            if by_chunk:
                hits = self._searcher.search(query, n, count=False, order_by_field="chunk", order=tantivy.Order.Asc).hits
            else:
                hits = self._searcher.search(query, n, count=False).hits
            chunk_ids = self._searcher.fast_field_values("chunk", [address for _, address in hits]) if hits else []
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            raise IntegrityError(f"lexical index failed while searching ({type(exc).__name__}: "
                                 f"{str(exc)[:120]})") from None
        out: list[tuple[float, int]] = []
        seen: set[int] = set()
        for (score, _), chunk_id in zip(hits, chunk_ids):
            if type(chunk_id) is not int or not 0 <= chunk_id < self._n_chunks:
                raise IntegrityError(f"lexical index returned chunk {chunk_id!r} of {self._n_chunks}")
            if chunk_id not in seen:
                seen.add(chunk_id)
                out.append((float(score), chunk_id))
        return out

    def search(self, query: LexicalQuery, n: int, *, chunk_ranges: list[tuple[int, int]] | None = None,
               ) -> tuple[list[int], list[float]]:
        """Return up to ``n`` chunk ids and BM25 scores (higher is better), best first.

        Every term of the query (each alternative, and the join of a spaced identifier) is
        searched in the heading path (boost ``HEADING_BOOST``) and in the text, in their
        ``ident-v2`` form; tantivy's block-max WAND skips what cannot reach the top ``n``.
        ``chunk_ranges``: only chunks in these ``[first, last)`` ranges.

        Raises:
            IntegrityError: tantivy fails while reading the (verified) index.
        """
        import tantivy
        if not query.groups or n < 1:
            return [], []
        terms = dict.fromkeys(v2_term(t) for t in query.terms_in_order())
        should = []
        for term in terms:
            should.append((tantivy.Occur.Should, tantivy.Query.boost_query(self._term("heading", term), HEADING_BOOST)))
            should.append((tantivy.Occur.Should, self._term("text", term)))
        ranked = self._filtered(tantivy.Query.boolean_query(should), chunk_ranges)
        if ranked is None:
            return [], []
        found = self._run(ranked, n)
        return [c for _, c in found], [s for s, _ in found]

    def exact_matches(self, query: LexicalQuery, *, limit: int,
                      chunk_ranges: list[tuple[int, int]] | None = None) -> list[int]:
        """Return ids (ascending, at most ``limit``) of chunks holding every identifier of the
        query (each as typed or in compact form, in the heading or the text), or the join of a
        spaced identifier; empty when the query has none or no chunk holds them.

        Raises:
            IntegrityError: tantivy fails while reading the (verified) index.
        """
        import tantivy
        if not query.identifiers or limit < 1:
            return []

        def anywhere(terms: Iterable[str]) -> Any:
            return tantivy.Query.boolean_query([(tantivy.Occur.Should, self._term(field, v2_term(t)))
                                                for t in terms for field in FIELDS])

        every = tantivy.Query.boolean_query([(tantivy.Occur.Must, anywhere(query.groups[i]))
                                             for i in query.identifiers])
        if query.joined:
            every = tantivy.Query.boolean_query([(tantivy.Occur.Should, every),
                                                 (tantivy.Occur.Should, anywhere([query.joined]))])
        holding = self._filtered(every, chunk_ranges)
        if holding is None:
            return []
        return sorted(c for _, c in self._run(holding, limit, by_chunk=True))

    def close(self) -> None:
        """Drop tantivy's index (its meta-file watcher thread ends within 0.5 s) and close the
        memfds."""
        if self._index is None:
            return
        self._searcher = self._index = self._schema = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
