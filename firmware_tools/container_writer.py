"""The one container writer: header, section table, zero padding and section bytes, streamed.

The writer side of ``edge.container`` (FORMAT.md §2-§3). Sections come as ``(length, blocks)``:
the length fixes the layout (``edge.format.layout_sections``) before a byte is written, and the
blocks are written as they come, so a section of gigabytes is never held in memory. Used by
the build (``build.py``), co-signing (``cosign.py``) and the test vectors.

Example::

    with open(path, "wb") as out:
        write_container(out, {"MANI": section_bytes(mani), "VIDE": (video_bytes, file_segments(mp4)), ...})

Source: FORMAT.md §2 (header), §3 (section table, alignment, zero padding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import BinaryIO

from edge import format as fmt

from .errors import BuildError

__all__ = ["SectionSource", "section_bytes", "write_container", "container_bytes"]

#: A section to write: its length in bytes and the blocks that make it up, in order.
SectionSource = tuple[int, Iterable[bytes]]


def section_bytes(data: bytes) -> SectionSource:
    """A section held in memory, as a ``SectionSource``."""
    return len(data), (data,)


def write_container(out: BinaryIO, sections: Mapping[str, SectionSource], *, check_limits: bool = True,
                    format_minor: int = fmt.TANTIVY_FORMAT_MINOR) -> int:
    """Write a capsule container with ``sections`` (every tag of ``SECTION_ORDER``) to ``out``.

    Args:
        out: a binary file positioned at 0 (``tell()`` is used to place the padding).
        sections: ``(length, blocks)`` for each tag; the blocks must add up to the length.
        check_limits: refuse lengths outside FORMAT.md §10; ``False`` only for test vectors
            that must be malformed.
        format_minor: the header's minor version, ``fmt.format_minor_for`` the manifest's index
            and lexical formats (FORMAT.md §1-§2).

    Returns:
        Bytes written (the header's ``file_bytes``).

    Raises:
        BuildError: a length is outside the format's limits (FORMAT.md §10; nothing is written
            then), a section's blocks do not add up to its declared length, or the file does not
            end where the layout says.
    """
    for tag in fmt.SECTION_ORDER if check_limits else ():
        low, high = fmt.SECTION_LIMITS[tag]
        if not low <= sections[tag][0] <= high:
            raise BuildError(f"section {tag} is {sections[tag][0]} bytes, the format allows {low}..{high}")
    header, entries = fmt.layout_sections({tag: sections[tag][0] for tag in fmt.SECTION_ORDER},
                                          format_minor=format_minor)
    out.write(header.to_bytes())
    for entry in entries:
        out.write(entry.to_bytes())
    for entry in entries:
        out.write(bytes(entry.offset - out.tell()))
        written = 0
        for block in sections[entry.tag][1]:
            out.write(block)
            written += len(block)
        if written != entry.length:
            raise BuildError(f"section {entry.tag} gave {written} bytes, its length is {entry.length}")
    if out.tell() != header.file_bytes:
        raise BuildError(f"wrote {out.tell()} bytes, layout says {header.file_bytes}")
    return header.file_bytes


def container_bytes(sections: Mapping[str, bytes], *, check_limits: bool = True,
                    format_minor: int = fmt.TANTIVY_FORMAT_MINOR) -> bytes:
    """Return the container for in-memory ``sections`` (small capsules, test vectors)."""
    import io

    buffer = io.BytesIO()
    write_container(buffer, {tag: section_bytes(data) for tag, data in sections.items()}, check_limits=check_limits,
                    format_minor=format_minor)
    return buffer.getvalue()
