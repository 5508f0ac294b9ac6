"""Delta builds: what a new version needs of the version it updates (FORMAT.md §4.7).

A delta is a capsule built from only the documents that are new or changed since its base, with
a manifest ``segments`` object that pins every segment of the base by its manifest digest and
tombstones the base's chunks of every changed or removed document. A device that holds the base
installs the delta beside it; search fans out over the segments.

The builder reads the base with the runtime's own reader (signature by this publisher, every
section, the document list), so it needs an identity that opens the base: a device key that is
one of its recipients, or its passphrase.

Example::

    base = read_base(Path("v3.capsule"), signing_key=key, identities=[device_key])
    build(["docs/"], "v4.capsule", signing_key=key, recipients=[pub], expires_at=..., base=base)

Source: FORMAT.md §4.7 (segments, tombstones), §13.5 (installing a delta).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.capsule import OpenOptions, open_capsule
from edge.container import ContainerFile
from edge.errors import CapsuleError
from edge.index import Projection
from edge.keys import Identity
from edge.manifest import MAX_BASE_SEGMENTS, SegmentPin, parse_manifest

from .errors import BuildError

__all__ = ["BaseDocument", "BaseVersion", "read_base", "merge_ranges"]


@dataclass(frozen=True)
class BaseDocument:
    """A live document of the base version: its source digest and global chunk ids ``[start, end)``."""

    name: str
    sha256: str
    start: int
    end: int


@dataclass(frozen=True)
class BaseVersion:
    """The version a delta is built over.

    Attributes:
        path: the base capsule file (its newest segment).
        name, capsule_id, version: the lineage and the base's version; the delta keeps the first
            two and must have a higher version.
        model_sha256: the base's model; a delta must embed with the same one.
        pins: every segment of the base, oldest first (the delta's ``segments.base``).
        tombstones: the base's own tombstones (global chunk-id ranges), carried forward.
        documents: the base's live documents by name.
        n_chunks: global chunk ids in the base (the delta's first chunk id).
        projection: the PCA projection of the base's newest segment, or ``None``; a delta reuses
            it (its mean and axes), so its scores compare with the base's.
        ann_dim: the Annoy dimension, or bits per code, of that segment's index (with ``projection``).
        index_format: that segment's ``index.format``; a delta over a projected base keeps it.
        lexical_format: the base's lexical index format (``None``: it has none); a delta keeps
            it, since BM25 scores of two engines do not compare when segments are merged.
    """

    path: Path
    name: str
    capsule_id: str
    version: int
    model_sha256: str
    pins: tuple[SegmentPin, ...]
    tombstones: tuple[tuple[int, int], ...]
    documents: dict[str, BaseDocument]
    n_chunks: int
    projection: Projection | None = None
    ann_dim: int = 0
    index_format: str = "annoy"
    lexical_format: str | None = None

    def tombstones_for(self, replaced: Sequence[str]) -> tuple[tuple[int, int], ...]:
        """The delta's tombstones: the base's, plus every chunk of the documents ``replaced``."""
        ranges = list(self.tombstones) + [(self.documents[n].start, self.documents[n].end) for n in replaced
                                          if self.documents[n].end > self.documents[n].start]
        return merge_ranges(ranges)


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sort ``[start, end)`` ranges and join overlapping or touching ones (the manifest's form)."""
    out: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return tuple((a, b) for a, b in out)


def read_base(path: str | Path, *, signing_key: Ed25519PrivateKey, identities: Sequence[Identity],
              segment_files: Sequence[Path] = ()) -> BaseVersion:
    """Open the base capsule as a device would (signed by this publisher) and return what a delta needs.

    Args:
        path: the base: a full capsule, or a delta (then ``segment_files`` holds its earlier segments).
        signing_key: the publisher's key; the base must carry its signature.
        identities: a device key or passphrase that opens the base.
        segment_files: the files of the base's earlier segments, when it has some.

    Raises:
        BuildError: the base does not open (with the runtime's reason), was built before
            documents carried their digest, or already has the most segments a version may have.
    """
    path = Path(path)
    try:
        with ContainerFile(path) as cf:  # the signed validity window, to judge the base at its own time
            not_before = parse_manifest(cf.read("MANI")).not_before
        capsule = open_capsule(path, trusted_keys=[signing_key.public_key()], identities=identities, now=not_before,
                               options=OpenOptions(segment_files=tuple(segment_files), frame_cache_bytes=0))
    except CapsuleError as exc:
        raise BuildError(f"cannot read the base {path}: {exc}") from None
    with capsule:
        manifest = capsule.manifest
        documents = {}
        for doc in capsule.documents(now=not_before):
            if not doc.sha256:
                raise BuildError(f"the base {path} was built before documents carried their digest "
                                 "(firmware-tools 0.3): build this version in full")
            documents[doc.name] = BaseDocument(doc.name, doc.sha256, doc.first_chunk_id,
                                               doc.first_chunk_id + doc.n_chunks)
        pins = tuple(SegmentPin(part.manifest.version, hashlib.sha256(part.manifest.raw).hexdigest(),
                                part.manifest.n_chunks) for part in capsule.parts)
        tombstones = manifest.segments.tombstones if manifest.segments is not None else ()
        if len(pins) > MAX_BASE_SEGMENTS:
            raise BuildError(f"the base {path} already has {len(pins)} segments, the most a version may build on is "
                             f"{MAX_BASE_SEGMENTS}: compact it (build the next version in full)")
        return BaseVersion(path=path, name=manifest.name, capsule_id=manifest.capsule_id, version=manifest.version,
                           model_sha256=manifest.model.sha256, pins=pins, tombstones=tuple(tombstones),
                           documents=documents, n_chunks=capsule.n_chunks, projection=capsule.projection,
                           ann_dim=manifest.index.dim, index_format=manifest.index.format,
                           lexical_format=manifest.lexical.format if manifest.lexical is not None else None)
