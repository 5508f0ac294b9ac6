"""The capsule container read with bounded ``pread`` calls: header, section table, bounds, padding.

This is the bottom layer of the open path: it knows where each section lies and reads exactly
those bytes, and nothing about keys, signatures or what a section means. It never maps a
capsule that it was handed by path: a file on a USB stick can shrink (stick pulled, file
truncated by another process) and a read through a mapping then raises SIGBUS, which kills the
process. A short ``pread`` instead becomes ``IntegrityError`` naming the section. Only a file the
runtime owns (a device-store object, verified at install, in a directory only the service user
can write) may be mapped, by asking for ``mapping=True``.

The file descriptor opened first is the one read until ``close``: replacing the file by path
after the open changes nothing this object reads. A change in place (a same-size write by
another process) is not prevented; callers authenticate what they read (section digests, AEAD)
after reading it into memory, and never read the same bytes twice for one decision.

Example::

    with ContainerFile("manual.capsule") as container:
        manifest_bytes = container.read("MANI")          # bytes, exactly the section
        for block in container.iter_blocks("VIDE"):      # bounded pieces, in order
            ...

Source: FORMAT.md §2 (header), §3 (section table), §10 (limits).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from . import format as fmt
from .errors import CapsuleFormatError, IntegrityError

#: Bytes per ``pread`` when a section is hashed or streamed.
BLOCK_BYTES = 1 << 20
#: Sections read at random through the mapping, advised ``MADV_RANDOM`` (no read-around): a query
#: reads ~8 scattered frames and a few hundred scattered 256-byte VECS rows, and the kernel's
#: default read-around of 128 kB per fault filled a memory cgroup's page cache with neighbours
#: nobody asked for, evicting the libraries' code (installed 97k capsule in 128 MiB: p50 173-184 ms
#: -> 20 ms; VECS alone: 75-140 ms). Without a cgroup a cold page cache pays ~1.4 ms per query
#: (15.8 against 14.4 ms p50): read-around had prefetched frames later queries hit.
RANDOM_ACCESS_SECTIONS = ("VECS", "VIDE")


class SectionReader:
    """A read-only, sliceable window onto one section, read with ``pread`` on demand.

    ``len(reader)`` is the section length; ``reader[a:b]`` returns ``bytes`` (step 1 only) and
    raises ``IntegrityError`` when the file is shorter than the table says (it shrank after open).
    Streaming decryption (``edge.sealed.iter_open_stream``) and the frame reader slice it as they
    would slice a ``memoryview``, without the whole section ever being in memory.
    """

    def __init__(self, container: "ContainerFile", tag: str) -> None:
        self._container = container
        self.tag = tag
        entry = container.sections[tag]
        self._offset = entry.offset
        self._length = entry.length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: slice) -> bytes:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a section reader takes contiguous slices only")
        start, stop, _ = key.indices(self._length)
        if stop <= start:
            return b""
        return self._container.read_at(self._offset + start, stop - start, what=f"{self.tag} section")


class ContainerFile:
    """An open capsule file: its checked header and section table, read by ``pread``.

    Args:
        path: the capsule file. It MUST be a regular file; a FIFO, device or directory is refused
            before anything is read (opening is non-blocking, so a FIFO cannot hang the open).
        mapping: also map the file read-only, for ``mapped_section``: only for files the runtime
            owns (device-store objects). ``False`` for anything handed in by path.

    Raises:
        CapsuleFormatError: not a regular file, shorter than a header, bad header, table or
            padding (FORMAT.md §2-§3); the message names the path or the field.
        IntegrityError: the file is shorter than its own header says (truncated, or shrinking).

    Attributes:
        path: as given. header: ``format.Header``. sections: tag -> ``format.SectionEntry``.
        file_bytes: the file's size at open (the header's ``file_bytes``).
    """

    def __init__(self, path: str | os.PathLike[str], *, mapping: bool = False) -> None:
        self.path = Path(path)
        self._fd = -1
        self._mm: mmap.mmap | None = None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise CapsuleFormatError(f"cannot open capsule {self.path}: {exc.strerror}") from None
        self._fd = fd
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CapsuleFormatError(f"capsule {self.path} is not a regular file")
            size = info.st_size
            if size < fmt.HEADER_BYTES:
                raise CapsuleFormatError(
                    f"file is {size} bytes, shorter than the {fmt.HEADER_BYTES}-byte capsule header"
                )
            self.header = fmt.parse_header(self.read_at(0, fmt.HEADER_BYTES, what="header"), file_bytes=size)
            self.file_bytes = size
            table = self.read_at(fmt.HEADER_BYTES, self.header.table_bytes, what="section table")
            self.sections = fmt.parse_section_table(table, self.header)
            for start, end in fmt.padding_ranges(self.sections, self.header):
                if any(self.read_at(start, end - start, what="padding")):
                    raise CapsuleFormatError(f"padding bytes {start}..{end} are not zero")
            if mapping:
                self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                if hasattr(mmap, "MADV_RANDOM"):
                    for tag in RANDOM_ACCESS_SECTIONS:
                        entry = self.sections.get(tag)
                        if entry is not None and entry.length and entry.offset % mmap.PAGESIZE == 0:
                            self._mm.madvise(mmap.MADV_RANDOM, entry.offset, entry.length)
        except BaseException:
            self.close()
            raise

    def read_at(self, offset: int, n_bytes: int, *, what: str = "capsule") -> bytes:
        """Return exactly ``n_bytes`` from ``offset`` (one or more ``pread`` calls).

        Raises:
            IntegrityError: the file ended first (it shrank after it was opened).
            RuntimeError: the container is closed.
        """
        if self._fd < 0:
            raise RuntimeError("capsule file is closed")
        if n_bytes <= 0:
            return b""
        data = os.pread(self._fd, n_bytes, offset)
        if len(data) < n_bytes:
            parts = [data]
            got = len(data)
            while got < n_bytes:
                more = os.pread(self._fd, n_bytes - got, offset + got)
                if not more:
                    raise IntegrityError(f"capsule file {self.path} ended at byte {offset + got} while reading the "
                                         f"{what} ({n_bytes} bytes from {offset}): it shrank after it was opened")
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def read(self, tag: str) -> bytes:
        """Return the whole section ``tag`` (for sections bounded small by FORMAT.md §10)."""
        entry = self.sections[tag]
        return self.read_at(entry.offset, entry.length, what=f"{tag} section")

    def section(self, tag: str) -> SectionReader:
        """Return a lazily read, sliceable view of section ``tag`` (see ``SectionReader``)."""
        return SectionReader(self, tag)

    def iter_blocks(self, tag: str, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
        """Yield section ``tag`` in pieces of at most ``block_bytes``, in order."""
        entry = self.sections[tag]
        for start in range(0, entry.length, block_bytes):
            yield self.read_at(entry.offset + start, min(block_bytes, entry.length - start), what=f"{tag} section")

    def sha256(self, tag: str) -> str:
        """Return the lowercase hex SHA-256 of section ``tag``, read in blocks."""
        hasher = hashlib.sha256()
        for block in self.iter_blocks(tag):
            hasher.update(block)
        return hasher.hexdigest()

    def mapped_section(self, tag: str) -> memoryview:
        """Return section ``tag`` as a read-only view of the file mapping.

        Raises:
            RuntimeError: the container was opened without ``mapping=True``.
        """
        if self._mm is None:
            raise RuntimeError("this capsule file is read by pread only; open it with mapping=True to map it")
        entry = self.sections[tag]
        return memoryview(self._mm)[entry.offset: entry.end]

    @property
    def is_mapped(self) -> bool:
        """Whether ``mapped_section`` may be used."""
        return self._mm is not None

    def close(self) -> None:
        """Close the file (and its mapping); idempotent."""
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view; the GC closes the mapping later
                pass
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ContainerFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BLOCK_BYTES", "ContainerFile", "SectionReader"]
