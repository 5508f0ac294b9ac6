"""Bundles: a version that spans segments, carried as one file (FORMAT.md §13.7).

A delta needs the version it updates (FORMAT.md §4.7), so a device that has nothing, or an older
version, needs every segment. A bundle is one uncompressed POSIX tar (ustar) of the version's
segment capsules, oldest first, named ``NNN-vVERSION.capsule``; ``firmware-tools bundle`` writes
it. ``Store.install`` of a bundle installs each member in order, skipping the ones the store holds
already, so the device ends with exactly the files (and the answers) of a device that took each
version as it came.

The tar headers are read by Python's ``tarfile`` in streaming mode with every size and count
bounded here first; the members are capsules, authenticated by the install of each, as any file.

Source: FORMAT.md §13.7; POSIX.1-1988 ustar.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreError

__all__ = ["BUNDLE_SUFFIX", "MAX_BUNDLE_MEMBERS", "is_bundle", "bundle_members"]

BUNDLE_SUFFIX = ".bundle"
#: One base and at most 63 deltas (FORMAT.md §4.7: ``segments.base`` holds at most 63 pins).
MAX_BUNDLE_MEMBERS = 64
MEMBER_NAME = re.compile(r"[0-9]{3}-v[0-9]{1,16}\.capsule")
_COPY_BYTES = 1 << 20


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file holding a tar (the ``ustar`` magic at byte 257).

    Opened non-blocking and checked to be a regular file before anything is read, so a FIFO or a
    device given as a capsule can neither hang nor feed this (the install then refuses it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.pread(fd, 265, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    return len(head) == 265 and head[257:262] == b"ustar"


def bundle_members(path: str | os.PathLike[str], work_dir: Path, *, max_member_bytes: int) -> Iterator[Path]:
    """Copy each member of the bundle ``path`` into ``work_dir`` and yield its file, in bundle order.

    Each file is removed again when the next one is asked for (and when the iteration ends).

    Raises:
        StoreError: not a readable tar; a member that is not a regular file, is misnamed, out of
            order, larger than ``max_member_bytes``, or one too many; the bundle is empty.
    """
    count = 0
    previous = ""
    current: Path | None = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # the file checked is the file read
    except OSError as exc:
        raise StoreError(f"cannot read bundle {path}: {exc.strerror}") from None
    stream = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"{path} is not a regular file; refusing to install from it")
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                count += 1
                if count > MAX_BUNDLE_MEMBERS:
                    raise StoreError(f"bundle {path} holds more than {MAX_BUNDLE_MEMBERS} capsules")
                if not member.isreg() or not MEMBER_NAME.fullmatch(member.name):
                    raise StoreError(f"bundle {path}: member {member.name[:80]!r} is not a capsule file "
                                     "named NNN-vVERSION.capsule")
                if member.name <= previous:
                    raise StoreError(f"bundle {path}: member {member.name} is out of order")
                if not 0 < member.size <= max_member_bytes:
                    raise StoreError(f"bundle {path}: member {member.name} is {member.size} bytes, limit "
                                     f"{max_member_bytes}")
                previous = member.name
                source = archive.extractfile(member)
                if current is not None:
                    current.unlink(missing_ok=True)
                current = work_dir / member.name
                with open(current, "xb") as out:
                    remaining = member.size
                    while remaining:
                        block = source.read(min(_COPY_BYTES, remaining))
                        if not block:
                            raise StoreError(f"bundle {path} ends inside member {member.name} (truncated)")
                        out.write(block)
                        remaining -= len(block)
                os.chmod(current, 0o444)
                yield current
    except (tarfile.TarError, EOFError) as exc:
        raise StoreError(f"bundle {path} is not a readable tar: {exc}") from None
    finally:
        stream.close()
        if current is not None:
            current.unlink(missing_ok=True)
    if count == 0:
        raise StoreError(f"bundle {path} holds no capsule")
