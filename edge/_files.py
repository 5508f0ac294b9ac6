"""Files the runtime and the builder read from users and write for them: the one implementation.

Reading: a small file a user names (a key, a trust document, a passphrase), regular files only.
Writing: ``atomic_write`` is the project's only atomic-replace implementation (temporary file in
the same directory, fsync, rename, directory fsync), used by the device store, the builder,
co-signing and the model export. The store's install also renames a staged *directory* into
``objects/`` (``edge.store_install``): a move of a new name, never a replacement, so not this.

A path a user passes may be a FIFO (``open`` blocks for ever waiting for a writer), a character
device such as ``/dev/zero`` (``read_bytes`` reads until memory runs out), a directory, or a file
that grows while it is read. :func:`read_regular_file` opens without blocking, refuses anything
that is not a regular file, checks the size before reading and the bytes actually read after.
Capsules themselves are not read here (``edge.capsule`` maps them); this module only reads.

Example::

    data = read_regular_file("trust.json", max_bytes=1 << 20, what="trust document",
                             error=TrustError)
    key_pem = read_regular_file("device.key", max_bytes=16384, what="key file",
                                error=KeyFileError, private=True)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_READ_BLOCK_BYTES = 1 << 16


def read_regular_file(path: str | os.PathLike[str], *, max_bytes: int, what: str = "file",
                      error: type[Exception] = OSError, private: bool = False) -> bytes:
    """Return the bytes of the regular file ``path``, at most ``max_bytes`` of them.

    The file is opened ``O_RDONLY | O_NONBLOCK | O_CLOEXEC`` (a FIFO opens at once instead of
    waiting for a writer) and checked with ``fstat`` on that descriptor before any byte is read.

    Args:
        path: the file to read; symlinks are followed.
        max_bytes: the largest size accepted, checked on ``st_size`` before reading and on
            the bytes read (a file that grows past it while being read is refused too).
        what: how messages name the file, e.g. ``"key file"``.
        error: the exception class raised (called with one message string).
        private: also refuse a file readable or writable by group or others (mode & 0o077),
            as ssh does for private keys.

    Returns:
        The file's contents, ``len <= max_bytes``.

    Raises:
        error: the file cannot be opened or read, is not a regular file (FIFO, device,
            directory, socket), is larger than ``max_bytes``, or (``private``) is too open.
            The message names the path and gives the numbers.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{what} {path} is {info.st_size} bytes, limit is {max_bytes}")
        if private and info.st_mode & 0o077:
            raise error(f"{what} {path} has mode {stat.S_IMODE(info.st_mode):o}; make it 600 (chmod 600 {path})")
        blocks: list[bytes] = []
        n_read = 0
        while n_read <= max_bytes:
            try:
                block = os.read(fd, min(_READ_BLOCK_BYTES, max_bytes + 1 - n_read))
            except OSError as exc:
                raise error(f"cannot read {what} {path}: {exc.strerror}") from None
            if not block:
                break
            blocks.append(block)
            n_read += len(block)
        if n_read > max_bytes:
            raise error(f"{what} {path} grew past {max_bytes} bytes while being read")
        return b"".join(blocks)
    finally:
        os.close(fd)


def check_safe_directory(path: str | os.PathLike[str], *, what: str, error: type[Exception] = OSError) -> None:
    """Refuse a directory another local user could change, as ssh's ``StrictModes`` does.

    ``path`` and every directory above it must be owned by root or the effective user, and
    must not be writable by group or others, unless the sticky bit is set (``/tmp``: others
    cannot rename or delete what they do not own). Otherwise an unprivileged user could
    replace the device's state (version records, time floor, trust) or plant files in it.

    Args:
        path: an existing directory (resolved; symlinks in it are followed for the check).
        what: how messages name it, e.g. ``"store directory"``.
        error: the exception class raised (called with one message string).

    Raises:
        error: a directory on the way is owned by another user, or writable by group or
            others without the sticky bit. The message names it, its owner and mode, and the fix.

    Source: OpenSSH sshd_config(5) ``StrictModes``; issue 9 ("state under a directory only that
    user can write").
    """
    euid = os.geteuid()
    target = os.path.realpath(path)
    current = target
    while True:
        try:
            info = os.stat(current)
        except OSError as exc:
            raise error(f"cannot check {what} {target}: {current}: {exc.strerror}") from None
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, euid):
            raise error(f"{what} {target} is not safe: {current} is owned by uid {info.st_uid}, not by root "
                        f"or this user (uid {euid}); another user could replace the device state in it")
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise error(f"{what} {target} is not safe: {current} has mode {mode:o}, writable by group or others; "
                        f"run chmod go-w {current}")
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def _no_checkpoint(what: str) -> None:
    pass


@contextmanager
def atomic_write(dir_fd: int, name: str, *, mode: int = 0o644,
                 checkpoint: Callable[[str], None] = _no_checkpoint) -> Iterator[tuple[int, str]]:
    """Replace ``name`` in the directory ``dir_fd`` atomically with what the caller writes.

    Yields ``(fd, temporary_name)``: a new file ``.NAME.PID.RANDOM.tmp`` in the same directory,
    opened ``O_EXCL | O_NOFOLLOW`` with ``mode``. The caller writes through ``fd`` (or by
    name, through ``dir_fd``). On a normal exit the file is fsynced, renamed over ``name`` and
    the directory fsynced, so after a crash ``name`` is the old file or the new one, whole.
    On an exception the temporary file is removed and ``name`` is untouched.

    Args:
        dir_fd: an open directory descriptor.
        name: the file name in it (no slash).
        mode: permission bits of the new file (before the umask).
        checkpoint: called with ``"NAME: temporary file written"``, ``"... synced"`` and
            ``"... renamed into place"`` (the store's install checkpoints).

    Raises:
        OSError: creating, writing, syncing or renaming failed (ENOSPC on a full disk); the
            temporary file is gone.

    Source: the rename-over pattern of POSIX rename(2); directory fsync as in SQLite's
    journal commit.
    """
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    closed = False
    try:
        yield fd, tmp
        checkpoint(f"{name}: temporary file written")
        os.fsync(fd)
        os.close(fd)
        closed = True
        checkpoint(f"{name}: temporary file synced")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if not closed:
            os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    checkpoint(f"{name}: renamed into place")
    os.fsync(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def atomic_replace(path: str | os.PathLike[str], *, mode: int = 0o600) -> Iterator[Path]:
    """``atomic_write`` for a writer that needs a path: yields the temporary file's path.

    The builder writes a capsule to the yielded path, checks it, and on a normal exit it
    replaces ``path``; on an exception ``path`` is untouched and the temporary file removed.

    Raises:
        OSError: as ``atomic_write``, or the directory of ``path`` cannot be opened.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with atomic_write(dir_fd, target.name, mode=mode) as (_, tmp):
            yield parent / tmp
    finally:
        os.close(dir_fd)


__all__ = ["read_regular_file", "check_safe_directory", "atomic_write", "atomic_replace", "write_all"]


def sealed_memfd(name: str, blocks: Iterable[bytes], *, n_bytes: int, what: str) -> int:
    """Write ``blocks`` (``n_bytes`` in all) into a new memfd and seal it against any change.

    The memfd is sealed with ``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``, so the
    bytes a caller checks after this returns are the bytes a C library later reads or maps.

    Returns:
        The memfd (``O_CLOEXEC``); the caller closes it.

    Raises:
        CapsuleFormatError: the blocks add up to more or fewer than ``n_bytes``.
    """
    import fcntl

    from .errors import CapsuleFormatError

    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        written = 0
        for piece in blocks:
            if written + len(piece) > n_bytes:
                raise CapsuleFormatError(f"{what} exceeds the {n_bytes} bytes expected")
            write_all(fd, piece)
            written += len(piece)
        if written != n_bytes:
            raise CapsuleFormatError(f"{what} is {written} bytes, expected {n_bytes}")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd
