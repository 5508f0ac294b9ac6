"""Write a bundle: a version's segment capsules, oldest first, as one file (FORMAT.md §13.7).

A delta (FORMAT.md §4.7) installs only over the version it updates; a device with nothing, or
with an older version, needs every segment. ``write_bundle`` puts the newest segment and the
earlier ones it pins into one uncompressed ustar file, in order, with fixed metadata (mtime 0,
uid/gid 0, mode 0444), so the same files give the same bytes. ``edge install X.bundle`` installs
each in turn, skipping what the device holds.

Example::

    write_bundle("manual-v5.capsule", ["manual-v4.capsule", "manual-v3.capsule"], "manual-v5.bundle")
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Sequence
from pathlib import Path

from edge._files import atomic_replace
from edge.container import ContainerFile
from edge.errors import CapsuleError
from edge.manifest import parse_manifest

from .errors import BuildError

__all__ = ["write_bundle"]


def write_bundle(head: str | Path, segment_files: Sequence[str | Path], output: str | Path) -> list[str]:
    """Write the version of ``head`` (its earlier segments found among ``segment_files``) to ``output``.

    Returns:
        The member names, in order (``000-v3.capsule``, ``001-v4.capsule``, ...).

    Raises:
        BuildError: a file is not a capsule, or a segment ``head`` pins is not among the files.
    """
    head = Path(head)
    by_digest: dict[str, tuple[Path, int]] = {}
    try:
        for path in [head, *map(Path, segment_files)]:
            with ContainerFile(path) as cf:
                mani = cf.read("MANI")
            by_digest[hashlib.sha256(mani).hexdigest()] = (path, parse_manifest(mani).version)
        with ContainerFile(head) as cf:
            manifest = parse_manifest(cf.read("MANI"))
    except CapsuleError as exc:
        raise BuildError(f"cannot bundle: {exc}") from None
    order: list[tuple[Path, int]] = []
    for pin in (manifest.segments.base if manifest.segments is not None else ()):
        if pin.manifest_sha256 not in by_digest:
            raise BuildError(f"{head} pins its segment from v{pin.version} (manifest {pin.manifest_sha256[:12]}), "
                             "which is not among the files given (--segment)")
        order.append(by_digest[pin.manifest_sha256])
    order.append((head, manifest.version))
    names = [f"{n:03d}-v{version}.capsule" for n, (_, version) in enumerate(order)]
    with atomic_replace(Path(output), mode=0o644) as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for name, (path, _) in zip(names, order):
                info = tarfile.TarInfo(name)
                info.size = path.stat().st_size
                info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o444, 0, 0, 0, "", ""
                with open(path, "rb") as source:
                    archive.addfile(info, source)
    return names
