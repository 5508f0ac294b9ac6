"""Header, section table and frame table parsing (FORMAT.md §2, §3, §5)."""

import numpy as np
import pytest

from edge import format as fmt
from edge.errors import CapsuleFormatError, IntegrityError

LENGTHS = {"MANI": 100, "SIGS": 50, "DOCS": 40, "FTAB": 32, "ZDIC": 16, "PROJ": 16, "VECS": 0, "INDX": 5000,
           "LEXI": 3000, "VIDE": 7000}


def _layout():
    header, entries = fmt.layout_sections(LENGTHS)
    table = b"".join(e.to_bytes() for e in entries)
    return header, entries, table


def test_layout_aligns_index_and_video_to_pages():
    header, entries, _ = _layout()
    by_tag = {e.tag: e for e in entries}
    assert all(by_tag[t].offset % 4096 == 0 for t in ("VECS", "INDX", "LEXI", "VIDE"))
    assert by_tag["MANI"].offset == 64 + 10 * 32
    assert header.file_bytes == by_tag["VIDE"].end


def test_header_round_trips():
    header, _, _ = _layout()
    assert fmt.parse_header(header.to_bytes(), file_bytes=header.file_bytes) == header


def test_header_rejects_bad_magic():
    header, _, _ = _layout()
    data = bytearray(header.to_bytes())
    data[1] ^= 0x20
    with pytest.raises(CapsuleFormatError, match="bad magic"):
        fmt.parse_header(bytes(data), file_bytes=header.file_bytes)


def test_header_rejects_unknown_major_version():
    header, _, _ = _layout()
    data = bytearray(header.to_bytes())
    data[8] = 2
    with pytest.raises(CapsuleFormatError, match=r"version 2\.\d is not supported"):
        fmt.parse_header(bytes(data), file_bytes=header.file_bytes)


def test_header_rejects_newer_minor_version():
    header, _, _ = _layout()
    data = bytearray(header.to_bytes())
    data[10] = fmt.FORMAT_MINOR + 1
    with pytest.raises(CapsuleFormatError, match="newer than this runtime"):
        fmt.parse_header(bytes(data), file_bytes=header.file_bytes)


@pytest.mark.parametrize("minor", [fmt.OLDEST_FORMAT_MINOR, fmt.FORMAT_MINOR])
def test_header_reads_1_1_and_1_2(minor):
    header, _, _ = _layout()
    data = bytearray(header.to_bytes())
    data[10] = minor
    assert fmt.parse_header(bytes(data), file_bytes=header.file_bytes).format_minor == minor


def test_header_refuses_version_1_0_without_a_lexical_index():
    header, _, _ = _layout()
    data = bytearray(header.to_bytes())
    data[10] = 0
    with pytest.raises(CapsuleFormatError, match=r"1\.0 has no lexical index .* rebuild it"):
        fmt.parse_header(bytes(data), file_bytes=header.file_bytes)


def test_header_rejects_truncated_file_with_numbers():
    header, _, _ = _layout()
    with pytest.raises(IntegrityError, match=rf"capsule file is 100 bytes, header says {header.file_bytes} \(truncated\)"):
        fmt.parse_header(header.to_bytes(), file_bytes=100)


def test_header_rejects_short_input():
    with pytest.raises(CapsuleFormatError, match="shorter than the 64-byte"):
        fmt.parse_header(b"\x89ECP", file_bytes=4)


def test_header_rejects_nonzero_reserved_and_section_count():
    header, _, _ = _layout()
    data = bytearray(header.to_bytes())
    data[40] = 1
    with pytest.raises(CapsuleFormatError, match="reserved"):
        fmt.parse_header(bytes(data), file_bytes=header.file_bytes)
    data = bytearray(header.to_bytes())
    data[16:20] = (1000).to_bytes(4, "little")
    with pytest.raises(CapsuleFormatError, match="1000 sections"):
        fmt.parse_header(bytes(data), file_bytes=header.file_bytes)


def test_section_table_round_trips():
    header, entries, table = _layout()
    parsed = fmt.parse_section_table(table, header)
    assert list(parsed) == list(fmt.SECTION_ORDER)
    assert [parsed[e.tag] for e in entries] == entries


@pytest.mark.parametrize("field_offset, value, message", [
    (8, 999, "starts at byte 999"),          # offset of MANI
    (16, 10 * 1024 * 1024, "limit is"),      # MANI length over 4 MiB
    (4, 1, "flags"),
    (0, int.from_bytes(b"XXXX", "little"), "unknown tag"),
])
def test_section_table_rejects_bad_first_entry(field_offset, value, message):
    header, _, table = _layout()
    data = bytearray(table)
    size = 4 if field_offset in (0, 4) else 8
    data[field_offset:field_offset + size] = value.to_bytes(size, "little")
    with pytest.raises(CapsuleFormatError, match=message):
        fmt.parse_section_table(bytes(data), header)


def test_section_table_rejects_swapped_order():
    header, entries, _ = _layout()
    swapped = [entries[1], entries[0]] + entries[2:]
    with pytest.raises(CapsuleFormatError, match="expected MANI"):
        fmt.parse_section_table(b"".join(e.to_bytes() for e in swapped), header)


def test_section_past_end_of_file_is_refused():
    lengths = dict(LENGTHS, VIDE=10**6)
    header, entries = fmt.layout_sections(lengths)
    small = fmt.Header(header.format_major, header.format_minor, header.n_sections, header.file_bytes - 10)
    with pytest.raises(CapsuleFormatError, match="past the end"):
        fmt.parse_section_table(b"".join(e.to_bytes() for e in entries), small)


def _frames(n_chunks=10):
    return fmt.FrameTable(np.array([0, 100, 250], np.uint64), np.array([100, 150, 80], np.uint32),
                          np.array([0, 4, 7], np.uint32), n_chunks)


def test_frame_table_round_trips_and_locates_chunks():
    table = _frames()
    parsed = fmt.FrameTable.from_bytes(table.to_bytes(), n_frames=3, n_chunks=10, video_bytes=330)
    assert parsed.locate(0) == (0, 0, 4)
    assert parsed.locate(5) == (1, 1, 3)
    assert parsed.locate(9) == (2, 2, 3)
    with pytest.raises(ValueError):
        parsed.locate(10)


def test_frame_table_rejects_sample_outside_video():
    with pytest.raises(CapsuleFormatError, match="outside the 300-byte video"):
        fmt.FrameTable.from_bytes(_frames().to_bytes(), n_frames=3, n_chunks=10, video_bytes=300)


def test_frame_table_rejects_non_increasing_chunks_and_wrong_length():
    bad = fmt.FrameTable(np.array([0, 100], np.uint64), np.array([100, 100], np.uint32),
                         np.array([0, 0], np.uint32), 5)
    with pytest.raises(CapsuleFormatError, match="strictly increase"):
        fmt.FrameTable.from_bytes(bad.to_bytes(), n_frames=2, n_chunks=5, video_bytes=1000)
    with pytest.raises(CapsuleFormatError, match="frame table is"):
        fmt.FrameTable.from_bytes(_frames().to_bytes()[:-1], n_frames=3, n_chunks=10, video_bytes=330)
    with pytest.raises(CapsuleFormatError, match="last frame starts at chunk 7"):
        fmt.FrameTable.from_bytes(_frames().to_bytes(), n_frames=3, n_chunks=7, video_bytes=330)
