"""Compaction: merge the segments of a version into one full capsule (FORMAT.md §4.7).

A version built by deltas spans several segments, each with its own indexes and frames; search
fans out over them. ``compact`` reads the version's live chunks (tombstoned ones are gone) with
the runtime's own reader and packs them again into a capsule without segments: the same chunks
(no re-chunking), the same document names, digests and headings, one index of each kind. With
the builder's embedding cache the chunks are not embedded again.

The compacted capsule is a new version (by default one above the version it compacts): a device
that holds the deltas accepts it as an update, and one that holds nothing installs it alone.

Example::

    compact("manual-v6.capsule", "manual-v7.capsule", signing_key=key, identities=[device_key],
            segment_files=["manual-v5.capsule", "manual-v4.capsule", "manual-v3.capsule"],
            recipients=[kiosk_pub], expires_at=expiry)

Source: FORMAT.md §4.7 (segments), §8 (DOCS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.capsule import OpenOptions, open_capsule
from edge.container import ContainerFile
from edge.errors import CapsuleError
from edge.keys import Identity
from edge.manifest import parse_manifest

from .errors import BuildError

__all__ = ["CompactedDocument", "compact"]


@dataclass(frozen=True)
class CompactedDocument:
    """A document of the version being compacted, as DOCS recorded it (FORMAT.md §8)."""

    name: str
    n_bytes: int
    media_type: str
    sha256: str
    headings: tuple[tuple[int, int, str], ...]


def compact(path: str | Path, output: str | Path, *, signing_key: Ed25519PrivateKey, identities: Sequence[Identity],
            segment_files: Sequence[Path] = (), expires_at: datetime, version: int | None = None, **build_options):
    """Write a full capsule holding the live chunks of the version ``path`` (with its segments).

    Args:
        path: the version to compact: a delta (give its earlier segments in ``segment_files``)
            or a full capsule.
        output: the capsule to write (atomically, as ``build_capsule``).
        signing_key: the publisher's key; the version must carry its signature.
        identities: a device key or passphrase that opens every segment.
        segment_files: the version's earlier segments, in any order.
        expires_at: the compacted capsule's expiry.
        version: its version; default one above the compacted version's.
        build_options: passed to ``build_capsule`` (``recipients``, ``passphrase``, ``rules``,
            ``embedding_cache``, ``n_threads``, ...); ``rules`` defaults to the version's rules,
            ``max_tokens``/``overlap_tokens`` to its chunking.

    Returns:
        The ``BuildResult``.

    Raises:
        BuildError: the version does not open (the runtime's reason is in the message), or the
            build fails.
        ValueError: ``version`` is not above the compacted one's.
    """
    from .build import build_capsule

    path = Path(path)
    try:
        with ContainerFile(path) as cf:
            not_before = parse_manifest(cf.read("MANI")).not_before
        capsule = open_capsule(path, trusted_keys=[signing_key.public_key()], identities=identities, now=not_before,
                               options=OpenOptions(segment_files=tuple(segment_files), frame_cache_bytes=0))
    except CapsuleError as exc:
        raise BuildError(f"cannot read the version to compact, {path}: {exc}") from None
    with capsule:
        manifest = capsule.manifest
        version = version if version is not None else manifest.version + 1
        if version <= manifest.version:
            raise ValueError(f"the compacted capsule needs a version above {manifest.version}, got {version}")
        documents = capsule.documents(now=not_before)
        chunks_of: dict[int, list] = {i: [] for i in range(len(documents))}
        starts = {doc.first_chunk_id: n for n, doc in enumerate(documents)}
        current = -1
        for hit in capsule.export(now=not_before):  # every live chunk, in global id order, from its frame
            current = starts.get(hit.chunk_id, current)
            chunks_of[current].append(hit)
        prechunked = [(CompactedDocument(doc.name, doc.n_bytes, doc.media_type, doc.sha256, doc.headings),
                       chunks_of[n]) for n, doc in enumerate(documents) if chunks_of[n]]
        options = {"rules": manifest.rules, "max_tokens": manifest.chunk_max_tokens,
                   "overlap_tokens": manifest.chunk_overlap_tokens, **build_options}
        return build_capsule([], output, signing_key=signing_key, expires_at=expires_at, version=version,
                             name=manifest.name, capsule_id=manifest.capsule_id, prechunked=prechunked, **options)
