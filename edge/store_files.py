"""Store file I/O through directory descriptors: nothing is followed through a symbolic link.

Every store file is read with ``O_NOFOLLOW`` relative to an open directory descriptor, bounded
in size and required to be regular; every write is ``edge._files.atomic_write`` (the project's
one atomic-replace implementation). A directory is opened ``O_DIRECTORY | O_NOFOLLOW``.

Source: FORMAT.md §13 (device state on disk); openat(2).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Callable

from ._files import atomic_write, write_all
from .errors import StoreError

__all__ = ["DIR_FLAGS", "COPY_BLOCK_BYTES", "MAX_STATE_FILE_BYTES", "open_subdir", "read_file", "write_file",
           "remove_tree", "copy_hashed"]

COPY_BLOCK_BYTES = 1 << 20
MAX_STATE_FILE_BYTES = 64 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_subdir(parent_fd: int, name: str) -> int:
    """Open the directory ``name`` in ``parent_fd``; return its descriptor.

    Raises:
        StoreError: it is a symbolic link, not a directory, or cannot be opened.
    """
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError(f"store path {name} is a symbolic link or not a directory; refusing to use it") from None
        raise StoreError(f"cannot open store directory {name}: {exc.strerror}") from None


def read_file(dir_fd: int, name: str, *, missing_ok: bool = False,
              limit: int = MAX_STATE_FILE_BYTES) -> bytes | None:
    """Return the bytes of the regular file ``name`` in ``dir_fd`` (``None`` if missing and ``missing_ok``).

    Raises:
        StoreError: missing, a symbolic link, not a regular file, over ``limit`` bytes, unreadable.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise StoreError(f"store file {name} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"store file {name} is a symbolic link; refusing to read it") from None
        raise StoreError(f"cannot read store file {name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"store file {name} is not a regular file")
        if info.st_size > limit:
            raise StoreError(f"store file {name} is {info.st_size} bytes, limit is {limit}")
        chunks = []
        remaining = info.st_size
        while remaining > 0:
            block = os.read(fd, min(remaining, COPY_BLOCK_BYTES))
            if not block:
                break
            chunks.append(block)
            remaining -= len(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_file(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644,
               checkpoint: Callable[[str], None] | None = None) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data`` atomically (``edge._files.atomic_write``).

    Raises:
        OSError: the write failed (ENOSPC); ``name`` is unchanged.
    """
    with atomic_write(dir_fd, name, mode=mode, **({"checkpoint": checkpoint} if checkpoint else {})) as (fd, _):
        write_all(fd, data)


def remove_tree(dir_fd: int, name: str) -> None:
    """Delete the file or directory tree ``name`` in ``dir_fd`` (symlinks are not followed); fsync ``dir_fd``."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # does not follow symlinks (shutil.rmtree.avoids_symlink_attacks)
    else:
        os.unlink(name, dir_fd=dir_fd)
    os.fsync(dir_fd)


def copy_hashed(read: Callable[[int], bytes], dst_fd: int, n_bytes: int, hasher: "hashlib._Hash", *,
                 shrank: str, after_block: Callable[[int], None] | None = None) -> None:
    """Copy exactly ``n_bytes`` from ``read`` to ``dst_fd`` in ``COPY_BLOCK_BYTES`` blocks, hashing them.

    Raises:
        StoreError: ``read`` ran dry first (message ``shrank``).
    """
    remaining = n_bytes
    while remaining > 0:
        block = read(min(remaining, COPY_BLOCK_BYTES))
        if not block:
            raise StoreError(shrank)
        hasher.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(dst_fd, view):]
        remaining -= len(block)
        if after_block is not None:
            after_block(n_bytes - remaining)
