"""Append-only spool files for the streaming build: records, payloads, vectors.

A build of hundreds of thousands of chunks must not hold them all in memory.
Each spool is a temporary file plus an in-memory offset table (8 bytes per item);
items are read back by index or slice, in order or not. Spool files hold plaintext: they are
created with mode 0600, and the builder keeps them in a private folder (``build._private_work_dir``).

Example::

    spool = ByteSpool(work / "records")
    spool.append(b"...")
    spool.close_writing()
    spool[0], spool[1:3], len(spool)
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def open_private(path: Path):
    """Create (or truncate) ``path`` for writing with mode 0600; return a binary file object."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


class ByteSpool:
    """Variable-length byte items in one file; ``Sequence[bytes]``-like once written.

    Args:
        path: the file to create (truncated).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._out = open_private(self.path)
        self._offsets = array("Q", [0])
        self._in = None

    def append(self, item: bytes) -> int:
        """Append ``item``; return its index."""
        self._out.write(item)
        self._offsets.append(self._offsets[-1] + len(item))
        return len(self._offsets) - 2

    def close_writing(self) -> None:
        """Finish writing; items can be read from now on."""
        if self._out is not None:
            self._out.close()
            self._out = None

    @property
    def n_bytes(self) -> int:
        """Total bytes of all items."""
        return self._offsets[-1]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _read(self, start: int, end: int) -> bytes:
        if self._out is not None:
            self._out.flush()
        if self._in is None:
            self._in = open(self.path, "rb")
        self._in.seek(start)
        return self._in.read(end - start)

    def __getitem__(self, key: int | slice) -> bytes | list[bytes]:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if stop <= start:
                return []
            blob = self._read(self._offsets[start], self._offsets[stop])
            base = self._offsets[start]
            return [blob[self._offsets[i] - base:self._offsets[i + 1] - base] for i in range(start, stop)]
        index = key + len(self) if key < 0 else key
        if not 0 <= index < len(self):
            raise IndexError(f"item {key} of {len(self)}")
        return self._read(self._offsets[index], self._offsets[index + 1])

    def __iter__(self) -> Iterator[bytes]:
        block = 4096
        for start in range(0, len(self), block):
            yield from self[start:start + block]

    def close(self) -> None:
        """Close the file handles (the file stays until its directory is removed)."""
        self.close_writing()
        if self._in is not None:
            self._in.close()
            self._in = None


class VectorSpool:
    """float32 rows of a fixed width appended to a file; read back as a read-only memmap."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._out = open_private(self.path)
        self.n_rows = 0

    def append(self, rows: np.ndarray) -> None:
        """Append float32 [n, dim] rows."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows must be [n, {self.dim}], got {rows.shape}")
        self._out.write(rows.tobytes())
        self.n_rows += rows.shape[0]

    def array(self) -> np.ndarray:
        """Finish writing; return float32 [n_rows, dim] mapped from the file (pages evictable)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.n_rows == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.n_rows, self.dim))


def file_segments(path: Path, block_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Yield a file's bytes in blocks."""
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            yield block


def write_blocks(path: Path, blocks) -> int:
    """Write an iterable of byte blocks to ``path`` (mode 0600); return the byte count."""
    n = 0
    with open_private(path) as out:
        for block in blocks:
            out.write(block)
            n += len(block)
        out.flush()
        os.fsync(out.fileno())
    return n
