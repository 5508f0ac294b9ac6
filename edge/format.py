"""Capsule container layout: magic, header, section table, limits.

This module owns the byte layout of FORMAT.md §2, §3, §5 and §10: constants and pure
parsers/serialisers over ``bytes``. It does no file IO and knows nothing about
cryptography; callers pass the bytes they read.

Example::

    header = parse_header(first_64_bytes, file_bytes=os.path.getsize(path))
    table = parse_section_table(table_bytes, header)
    mani = table["MANI"]            # SectionEntry(tag, offset, length)
    frames = FrameTable.from_bytes(ftab_bytes, n_frames=..., n_chunks=..., video_bytes=...)

Source: FORMAT.md §2 (header), §3 (section table), §5 (frame table), §10 (limits).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .errors import CapsuleFormatError, IntegrityError

MAGIC = b"\x89ECP\r\n\x1a\n"
FORMAT_MAJOR = 1
#: The newest minor version this runtime reads (1.4: hybrid fusion may put a confident dense
#: answer first, ``lexical.fusion.dense_first_margin``, FORMAT.md §4.6). A writer gives each
#: capsule the minor version of what it holds (``format_minor_for``), so an older runtime reads
#: every capsule that needs nothing newer.
FORMAT_MINOR = 4
#: The minor version of a capsule with an Annoy index and a ``tantivy-7`` lexical index (1.2).
TANTIVY_FORMAT_MINOR = 2
#: The minor version of a capsule whose dense index is ``binary-codes`` (1.3).
BINARY_CODES_FORMAT_MINOR = 3
#: The minor version of a capsule whose fusion has a ``dense_first_margin`` (1.4), whatever its
#: dense index.
DENSE_FIRST_FORMAT_MINOR = 4
#: The oldest minor version this runtime reads (1.1: the first with a lexical index).
OLDEST_FORMAT_MINOR = 1
#: The minor version a capsule whose lexical index is ``sqlite-fts5`` is written as, so that
#: runtimes of 1.1 still read it.
FTS5_FORMAT_MINOR = 1
HEADER_BYTES = 64


def format_minor_for(index_format: str, lexical_format: str | None, *, dense_first: bool = False) -> int:
    """The header minor version a capsule with these index formats carries (FORMAT.md §2).

    With ``dense_first`` (the manifest's ``lexical.fusion`` has a ``dense_first_margin``): 4.
    Otherwise ``binary-codes`` (any lexical format but ``sqlite-fts5``): 3; ``sqlite-fts5``: 1;
    otherwise 2.

    Raises:
        ValueError: ``binary-codes`` or ``dense_first`` with ``sqlite-fts5`` (1.1 readers cannot
            read them, and 1.3 and 1.4 capsules carry ``tantivy-7``), or ``dense_first`` without
            a lexical index. A writer never makes these; a reader refuses them.
    """
    if dense_first:
        if lexical_format != "tantivy-7":
            raise ValueError("a fusion with dense_first_margin goes with the tantivy-7 lexical index (format 1.4), "
                             f"not {lexical_format or 'no lexical index'}")
        return DENSE_FIRST_FORMAT_MINOR
    if index_format == "binary-codes":
        if lexical_format == "sqlite-fts5":
            raise ValueError("a binary-codes index goes with the tantivy-7 lexical index, not sqlite-fts5")
        return BINARY_CODES_FORMAT_MINOR
    return FTS5_FORMAT_MINOR if lexical_format == "sqlite-fts5" else TANTIVY_FORMAT_MINOR
SECTION_ENTRY_BYTES = 32
MAX_SECTIONS = 16

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Version 1.1 section order; each tag exactly once.
SECTION_ORDER = ("MANI", "SIGS", "DOCS", "FTAB", "ZDIC", "PROJ", "VECS", "INDX", "LEXI", "VIDE")
#: Sections whose length and sha256 the manifest records.
HASHED_SECTIONS = ("DOCS", "FTAB", "ZDIC", "PROJ", "VECS", "INDX", "LEXI", "VIDE")
#: Alignment of each section's first byte (FORMAT.md §3).
SECTION_ALIGN = {"MANI": 8, "SIGS": 8, "DOCS": 8, "FTAB": 8, "ZDIC": 8, "PROJ": 8, "VECS": 4096, "INDX": 4096,
                 "LEXI": 4096, "VIDE": 4096}
#: (min, max) length of each section in bytes (FORMAT.md §10).
SECTION_LIMITS = {
    "MANI": (1, 4 * MiB),
    "SIGS": (1, 64 * KiB),
    "DOCS": (17, 64 * MiB),
    "FTAB": (16, 256 * MiB),
    "ZDIC": (16, 1 * MiB + 32),
    "PROJ": (16, 64 * MiB),
    "VECS": (0, 64 * GiB),
    "INDX": (1, 16 * GiB),
    "LEXI": (0, 4 * GiB + 4 * MiB),
    "VIDE": (1, 64 * GiB),
}
#: Largest decompressed DOCS plaintext (FORMAT.md §8, §10).
MAX_DOCS_PLAINTEXT_BYTES = 64 * MiB
#: Largest ZDIC dictionary (FORMAT.md §5.4).
MAX_DICTIONARY_BYTES = 1 * MiB
FRAME_ENTRY_BYTES = 16
MAX_FRAMES = 1 << 24
MAX_SAMPLE_BYTES = 1 * MiB

_HEADER = struct.Struct("<8sHHIIIQ32s")
_ENTRY = struct.Struct("<4sIQQQ")
assert _HEADER.size == HEADER_BYTES and _ENTRY.size == SECTION_ENTRY_BYTES


@dataclass(frozen=True)
class Header:
    """The fixed 64-byte header (FORMAT.md §2)."""

    format_major: int
    format_minor: int
    n_sections: int
    file_bytes: int

    @property
    def table_bytes(self) -> int:
        """Length of the section table that follows the header, in bytes."""
        return self.n_sections * SECTION_ENTRY_BYTES

    def to_bytes(self) -> bytes:
        """Serialise the header to exactly 64 bytes."""
        return _HEADER.pack(
            MAGIC, self.format_major, self.format_minor, HEADER_BYTES,
            self.n_sections, SECTION_ENTRY_BYTES, self.file_bytes, bytes(32),
        )


@dataclass(frozen=True)
class SectionEntry:
    """One section-table row: where a section lies in the file (FORMAT.md §3)."""

    tag: str
    offset: int
    length: int

    @property
    def end(self) -> int:
        """File offset one past the section's last byte."""
        return self.offset + self.length

    def to_bytes(self) -> bytes:
        """Serialise the entry to exactly 32 bytes."""
        return _ENTRY.pack(self.tag.encode("ascii"), 0, self.offset, self.length, 0)


def align_up(value: int, alignment: int) -> int:
    """Return ``value`` rounded up to a multiple of ``alignment``."""
    return (value + alignment - 1) // alignment * alignment


def parse_header(data: bytes, *, file_bytes: int) -> Header:
    """Parse and check the 64-byte header.

    Args:
        data: the first bytes of the file (at most 64 are read).
        file_bytes: the actual length of the capsule file.

    Returns:
        The checked ``Header``.

    Raises:
        CapsuleFormatError: short file, bad magic, unknown version, bad constants,
            non-zero reserved bytes or a section count outside 1..16.
        IntegrityError: the file's length differs from ``header.file_bytes``.

    Source: FORMAT.md §2.
    """
    if len(data) < HEADER_BYTES:
        raise CapsuleFormatError(
            f"file is {len(data)} bytes, shorter than the {HEADER_BYTES}-byte capsule header"
        )
    magic, major, minor, header_bytes, n_sections, entry_bytes, declared, reserved = (
        _HEADER.unpack_from(data, 0)
    )
    if magic != MAGIC:
        raise CapsuleFormatError(f"bad magic {magic.hex()}: not an edge capsule")
    if major != FORMAT_MAJOR:
        raise CapsuleFormatError(
            f"capsule format version {major}.{minor} is not supported (this runtime reads {FORMAT_MAJOR}.x)"
        )
    if minor > FORMAT_MINOR:
        raise CapsuleFormatError(
            f"capsule format version {major}.{minor} is newer than this runtime ({FORMAT_MAJOR}.{FORMAT_MINOR})"
        )
    if minor < OLDEST_FORMAT_MINOR:
        raise CapsuleFormatError(
            f"capsule format version {major}.{minor} has no lexical index and is not read by this runtime "
            f"({FORMAT_MAJOR}.{OLDEST_FORMAT_MINOR}-{FORMAT_MAJOR}.{FORMAT_MINOR}): rebuild it with firmware-tools 0.2 "
            "or later"
        )
    if header_bytes != HEADER_BYTES or entry_bytes != SECTION_ENTRY_BYTES:
        raise CapsuleFormatError(
            f"header says {header_bytes}-byte header and {entry_bytes}-byte entries, "
            f"expected {HEADER_BYTES} and {SECTION_ENTRY_BYTES}"
        )
    if reserved != bytes(32):
        raise CapsuleFormatError("header reserved bytes are not zero")
    if not 1 <= n_sections <= MAX_SECTIONS:
        raise CapsuleFormatError(f"header says {n_sections} sections, limit is 1..{MAX_SECTIONS}")
    if declared != file_bytes:
        raise IntegrityError(
            f"capsule file is {file_bytes} bytes, header says {declared}"
            + (" (truncated)" if file_bytes < declared else "")
        )
    return Header(major, minor, n_sections, declared)


def parse_section_table(data: bytes, header: Header) -> dict[str, SectionEntry]:
    """Parse and check the section table against FORMAT.md §3 and §10.

    Args:
        data: exactly ``header.table_bytes`` bytes following the header.
        header: the checked header.

    Returns:
        Entries by tag, in file order.

    Raises:
        CapsuleFormatError: unknown, duplicate or misordered tags, non-zero flags or
            reserved fields, lengths outside §10's limits, misaligned or overlapping
            sections, or a last section that does not end at ``file_bytes``.

    Source: FORMAT.md §3.
    """
    if len(data) != header.table_bytes:
        raise CapsuleFormatError(
            f"section table is {len(data)} bytes, header says {header.table_bytes}"
        )
    entries: dict[str, SectionEntry] = {}
    cursor = HEADER_BYTES + header.table_bytes
    for i in range(header.n_sections):
        raw_tag, flags, offset, length, reserved = _ENTRY.unpack_from(data, i * SECTION_ENTRY_BYTES)
        try:
            tag = raw_tag.decode("ascii")
        except UnicodeDecodeError:
            raise CapsuleFormatError(f"section {i} has a non-ASCII tag {raw_tag.hex()}") from None
        if tag not in SECTION_LIMITS:
            raise CapsuleFormatError(f"section {i} has unknown tag {tag!r}")
        if tag in entries:
            raise CapsuleFormatError(f"section {tag} appears twice")
        if i >= len(SECTION_ORDER) or SECTION_ORDER[i] != tag:
            raise CapsuleFormatError(
                f"section {i} is {tag}, expected {SECTION_ORDER[i] if i < len(SECTION_ORDER) else 'none'}"
            )
        if flags or reserved:
            raise CapsuleFormatError(f"section {tag} has non-zero flags or reserved bytes")
        low, high = SECTION_LIMITS[tag]
        if not low <= length <= high:
            raise CapsuleFormatError(f"section {tag} is {length} bytes, limit is {low}..{high}")
        expected_offset = align_up(cursor, SECTION_ALIGN[tag])
        if offset != expected_offset:
            raise CapsuleFormatError(
                f"section {tag} starts at byte {offset}, expected {expected_offset}"
            )
        if offset + length > header.file_bytes:
            raise CapsuleFormatError(
                f"section {tag} ends at byte {offset + length}, past the end of the "
                f"{header.file_bytes}-byte file"
            )
        entries[tag] = SectionEntry(tag, offset, length)
        cursor = offset + length
    missing = [t for t in SECTION_ORDER if t not in entries]
    if missing:
        raise CapsuleFormatError(f"capsule lacks section(s) {', '.join(missing)}")
    if cursor != header.file_bytes:
        raise CapsuleFormatError(
            f"last section ends at byte {cursor}, file is {header.file_bytes} bytes"
        )
    return entries


def padding_ranges(entries: dict[str, SectionEntry], header: Header) -> list[tuple[int, int]]:
    """Return the ``(start, end)`` byte ranges of alignment padding between sections.

    These are the only bytes no digest covers; readers check that they are zero.

    Source: FORMAT.md §3.
    """
    ranges = []
    cursor = HEADER_BYTES + header.table_bytes
    for entry in entries.values():
        if entry.offset > cursor:
            ranges.append((cursor, entry.offset))
        cursor = entry.end
    return ranges


def layout_sections(lengths: dict[str, int], *, format_minor: int = FORMAT_MINOR) -> tuple[Header, list[SectionEntry]]:
    """Place sections of the given lengths; return the header and table entries.

    Args:
        lengths: section length in bytes for every tag of ``SECTION_ORDER``.
        format_minor: the header's minor version (``FTS5_FORMAT_MINOR`` for a capsule whose
            lexical index is ``sqlite-fts5``).

    Returns:
        ``(header, entries)`` in file order, offsets aligned per FORMAT.md §3.
    """
    cursor = HEADER_BYTES + len(SECTION_ORDER) * SECTION_ENTRY_BYTES
    entries = []
    for tag in SECTION_ORDER:
        offset = align_up(cursor, SECTION_ALIGN[tag])
        entries.append(SectionEntry(tag, offset, lengths[tag]))
        cursor = offset + lengths[tag]
    return Header(FORMAT_MAJOR, format_minor, len(entries), cursor), entries


_FTAB_DTYPE = np.dtype([("sample_offset", "<u8"), ("sample_bytes", "<u4"), ("first_chunk_id", "<u4")])
assert _FTAB_DTYPE.itemsize == FRAME_ENTRY_BYTES


@dataclass(frozen=True)
class FrameTable:
    """Where each frame's sample lies in the MP4 and which chunks it holds.

    Attributes:
        sample_offsets: uint64 [n_frames], byte offset of each sample inside VIDE.
        sample_bytes: uint32 [n_frames], byte length of each sample.
        first_chunk_ids: uint32 [n_frames], strictly increasing, first is 0.
        n_chunks: total number of chunks in the capsule.

    Source: FORMAT.md §5.
    """

    sample_offsets: np.ndarray
    sample_bytes: np.ndarray
    first_chunk_ids: np.ndarray
    n_chunks: int

    @property
    def n_frames(self) -> int:
        """Number of frames (= number of MP4 samples)."""
        return int(self.sample_offsets.shape[0])

    @classmethod
    def from_bytes(cls, data: bytes, *, n_frames: int, n_chunks: int, video_bytes: int) -> "FrameTable":
        """Parse and check FTAB.

        Args:
            data: the FTAB section, ``16 * n_frames`` bytes.
            n_frames: ``video.n_frames`` from the manifest.
            n_chunks: ``n_chunks`` from the manifest.
            video_bytes: length of VIDE; every sample must lie inside it.

        Raises:
            CapsuleFormatError: wrong length, a sample outside VIDE or of a size
                outside 1..1 MiB, or chunk ids not strictly increasing from 0.

        Source: FORMAT.md §5.
        """
        if not 1 <= n_frames <= MAX_FRAMES:
            raise CapsuleFormatError(f"manifest says {n_frames} frames, limit is 1..{MAX_FRAMES}")
        if len(data) != n_frames * FRAME_ENTRY_BYTES:
            raise CapsuleFormatError(
                f"frame table is {len(data)} bytes, {n_frames} frames need {n_frames * FRAME_ENTRY_BYTES}"
            )
        table = np.frombuffer(data, dtype=_FTAB_DTYPE)
        offsets = table["sample_offset"].copy()
        sizes = table["sample_bytes"].copy()
        firsts = table["first_chunk_id"].copy()
        if sizes.min() < 1 or sizes.max() > MAX_SAMPLE_BYTES:
            raise CapsuleFormatError(f"a frame sample size is outside 1..{MAX_SAMPLE_BYTES} bytes")
        ends = offsets.astype(np.uint64) + sizes.astype(np.uint64)
        if int(offsets.max()) >= video_bytes or int(ends.max()) > video_bytes:
            bad = int(np.argmax(ends > video_bytes)) if int(ends.max()) > video_bytes else int(np.argmax(offsets >= video_bytes))
            raise CapsuleFormatError(f"frame {bad} sample lies outside the {video_bytes}-byte video")
        if firsts[0] != 0:
            raise CapsuleFormatError(f"frame 0 starts at chunk {int(firsts[0])}, expected 0")
        if n_frames > 1 and not bool(np.all(np.diff(firsts.astype(np.int64)) > 0)):
            raise CapsuleFormatError("frame table chunk ids do not strictly increase")
        if int(firsts[-1]) >= n_chunks:
            raise CapsuleFormatError(
                f"last frame starts at chunk {int(firsts[-1])}, capsule has {n_chunks} chunks"
            )
        return cls(offsets, sizes, firsts, n_chunks)

    def to_bytes(self) -> bytes:
        """Serialise to FTAB bytes (16 per frame)."""
        table = np.empty(self.n_frames, dtype=_FTAB_DTYPE)
        table["sample_offset"] = self.sample_offsets
        table["sample_bytes"] = self.sample_bytes
        table["first_chunk_id"] = self.first_chunk_ids
        return table.tobytes()

    def locate(self, chunk_id: int) -> tuple[int, int, int]:
        """Return ``(frame_index, slot_index, n_slots)`` holding ``chunk_id``.

        Raises:
            ValueError: ``chunk_id`` outside ``0..n_chunks-1`` (a caller mistake).
        """
        if not 0 <= chunk_id < self.n_chunks:
            raise ValueError(f"chunk id {chunk_id} outside 0..{self.n_chunks - 1}")
        frame_index = int(np.searchsorted(self.first_chunk_ids, chunk_id, side="right")) - 1
        return frame_index, chunk_id - int(self.first_chunk_ids[frame_index]), self.n_slots(frame_index)

    def n_slots(self, frame_index: int) -> int:
        """Return how many chunks frame ``frame_index`` holds."""
        first = int(self.first_chunk_ids[frame_index])
        nxt = int(self.first_chunk_ids[frame_index + 1]) if frame_index + 1 < self.n_frames else self.n_chunks
        return nxt - first
