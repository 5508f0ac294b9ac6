"""The verifier layer of the open path: bytes + trust + time -> a verified manifest and rules.

Reads only the header, table, MANI and SIGS (``edge.container``), checks signatures against the
trusted keys or the device's trust document, then the device state (time floor, version
record), the validity window and the open-level rules; and hashes sections against the
verified manifest. Nothing is allocated here beyond the manifest and the bytes hashed; the
budget plan, key unwrap and decoders come after, in ``edge.capsule``.

Source: FORMAT.md §3 (section digests), §9 (signatures), §11 (open order), §13 (device state).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import format as fmt
from .container import ContainerFile
from .errors import CapsuleFormatError, IntegrityError
from ._version import __version__
from .keys import Identity, keyid
from .manifest import Manifest, parse_manifest, parse_signatures
from .rules import Rules, check_validity_at, parse_rules
from .trust import DeviceState, verify_manifest_with_root
from .verify import verify_signatures

__all__ = ["verify_manifest"]


def _check_sha256(data: bytes, manifest: Manifest, tag: str) -> bytes:
    """Return ``data`` (section ``tag`` as read) if its SHA-256 is the manifest's."""
    _compare_digest(hashlib.sha256(data).hexdigest(), manifest, tag)
    return data


def _compare_digest(actual: str, manifest: Manifest, tag: str) -> None:
    expected = manifest.sections[tag].sha256
    if actual != expected:
        raise IntegrityError(f"{tag} section sha256 is {actual[:16]}…, manifest says {expected[:16]}…")


def _read_section(cf: ContainerFile, manifest: Manifest, tag: str, verified_sections: Collection[str]) -> bytes:
    """Read section ``tag`` once and check that very copy against the manifest (unless the store
    verified this file at install); what is parsed is what was hashed."""
    data = cf.read(tag)
    return data if tag in verified_sections else _check_sha256(data, manifest, tag)


def _hashed_blocks(cf: ContainerFile, manifest: Manifest, tag: str) -> Iterator[bytes]:
    """Yield section ``tag`` in blocks while hashing them; after the last block, raise
    ``IntegrityError`` unless the digest is the manifest's. The consumer must not use the bytes
    before the generator is exhausted (``VectorIndex.from_segments`` writes them all first)."""
    hasher = hashlib.sha256()
    for block in cf.iter_blocks(tag):
        hasher.update(block)
        yield block
    _compare_digest(hasher.hexdigest(), manifest, tag)


def _hash_video(cf: ContainerFile, manifest: Manifest, frames: fmt.FrameTable) -> np.ndarray:
    """Hash ``VIDE`` against the manifest and return each sample's SHA-256 from the same bytes.

    One sequential pass of bounded preads (``container.BLOCK_BYTES``, at least one sample, so a
    sample spans at most two blocks). The per-sample digests, uint8 [n_frames, 32], let the
    frame reader authenticate every sample it reads later, one at a time: the bytes FFmpeg
    decodes are bytes the signed manifest pins, even if the file changes after the open.

    Raises:
        IntegrityError: the section's SHA-256 is not the manifest's, or the file shrank.

    Source: FORMAT.md §5 (frame table); issue 9 ("authenticate every sample before decoding it").
    FORMAT-v2.md §3 pins these digests in FTAB instead, which removes this pass.
    """
    offsets = frames.sample_offsets.astype(np.int64)
    ends = offsets + frames.sample_bytes.astype(np.int64)
    order = np.argsort(ends, kind="stable")
    digests = np.empty((frames.n_frames, 32), dtype=np.uint8)
    section = hashlib.sha256()
    previous, previous_start, start, k = b"", 0, 0, 0
    for block in cf.iter_blocks("VIDE"):
        section.update(block)
        block_end = start + len(block)
        while k < order.shape[0] and ends[order[k]] <= block_end:
            i = int(order[k])
            a, b = int(offsets[i]), int(ends[i])
            if a >= start:
                sample = block[a - start:b - start]
            elif a >= previous_start:  # spans the two blocks (a sample is <= one block)
                sample = previous[a - previous_start:] + block[:b - start]
            else:  # overlapping samples: read this one again, it is hashed like the rest
                sample = cf.read_at(cf.sections["VIDE"].offset + a, b - a, what="VIDE section")
            digests[i] = np.frombuffer(hashlib.sha256(sample).digest(), dtype=np.uint8)
            k += 1
        previous, previous_start, start = block, start, block_end
    _compare_digest(section.hexdigest(), manifest, "VIDE")
    return digests


def verify_manifest(mani: bytes, sigs: bytes, *, section_lengths: Mapping[str, int],
                    trusted_keys: Sequence[Ed25519PublicKey], identities: Sequence[Identity], now: datetime,
                    threshold: int = 1, device: DeviceState | None = None, device_rules: bool = True,
                    expected_manifest_sha256: str | None = None, where: str = "capsule",
                    segment_of: Manifest | None = None, check_version: bool = True) -> tuple[Manifest, Rules]:
    """Turn MANI and SIGS bytes, the trust and the time into a verified manifest and its rules.

    No capsule I/O and no allocation beyond the manifest: the caller read the bytes (and the
    section lengths from the table) and does everything else after. In order (FORMAT.md §11):
    the pinned manifest digest if given, signatures at the trusted time (trusted keys, else the
    device's trust document), manifest parse, section lengths vs. the manifest, the device's floor
    (``now`` and the verified ``issued_at``) and version record, the validity window, the
    open-level rules. The device state moves only after the signatures verified.

    Args:
        mani, sigs: the exact MANI and SIGS section bytes.
        section_lengths: length of every section by tag, from the section table.
        trusted_keys: publisher keys; empty to use ``device.root``.
        identities: the caller's identities (their X25519 keys are the device for ``devices``).
        now: the wall-clock reading (timezone-aware), read once by the caller.
        threshold, device: as ``OpenOptions``.
        device_rules: ``False`` skips ``devices`` and ``min_runtime`` (publisher self-check).
        expected_manifest_sha256: refuse any other manifest before its signatures (a store entry).
        where: how messages name the capsule (its path).
        segment_of: the verified manifest of the version this capsule is an earlier segment of
            (FORMAT.md §4.7). That manifest pins this one (``expected_manifest_sha256``, required
            then), so its signatures are not checked; nor are its validity window, rules or
            version, which the version's own manifest governs. It must be of the same lineage
            (capsule id, name) and model.
        check_version: ``False`` for a past version a store kept, opened to read under the
            digest it recorded (``expected_manifest_sha256``, required then): not a rollback.

    Returns:
        ``(manifest, rules)``.

    Raises:
        IntegrityError, CapsuleFormatError, SignatureError, TrustError, RollbackError,
        ExpiredCapsuleError, NotYetValidError, RuleViolationError: see FORMAT.md §11.
        ValueError: no trusted keys and no trust document.
    """
    if segment_of is not None:
        return _verify_segment_manifest(mani, section_lengths, segment_of, expected_manifest_sha256, where)
    if device is not None:
        device.observe(now)
    at = device.trusted_time(now) if device is not None else now
    if expected_manifest_sha256 is not None and hashlib.sha256(mani).hexdigest() != expected_manifest_sha256:
        # before any signature check, so a swapped file moves no device state
        raise IntegrityError(f"{where} holds another manifest than the one installed under its name "
                             "(the file was replaced after install)")
    signatures = parse_signatures(sigs)
    if trusted_keys:
        verify_signatures(mani, signatures, trusted_keys, threshold=threshold)
    elif device is not None and device.root is not None:
        verify_manifest_with_root(mani, signatures, device.root, at, threshold=threshold)
    else:
        raise ValueError("no trusted keys given, and the device has no trust document")
    manifest = parse_manifest(mani)
    _check_section_lengths(manifest, section_lengths)
    if device is not None:
        device.observe(now, manifest.issued_at)
        at = device.trusted_time(now)
        if check_version:
            device.check_version(manifest)
        elif expected_manifest_sha256 is None:
            raise ValueError("a past version is opened only under the manifest digest its store recorded")
    check_validity_at(manifest, now=now, at=at)
    manifest.check_rules()
    rules = parse_rules(manifest.rules)
    if device_rules:
        rules.check_device(device_keyids=[keyid(i.public_key()) for i in identities if isinstance(i, X25519PrivateKey)],
                           hardware_id=device.hardware_id if device is not None else None)
        rules.check_runtime(__version__)
    return manifest, rules


def _verify_segment_manifest(mani: bytes, section_lengths: Mapping[str, int], head: Manifest,
                             expected_manifest_sha256: str | None, where: str) -> tuple[Manifest, Rules]:
    """``verify_manifest`` for an earlier segment, authenticated by the pin in ``head``."""
    if expected_manifest_sha256 is None:
        raise ValueError("an earlier segment is opened only under the manifest digest its version pins")
    if hashlib.sha256(mani).hexdigest() != expected_manifest_sha256:
        raise IntegrityError(f"{where} holds another manifest than the segment that {head.name} v{head.version} "
                             "pins (a segment of another capsule or version?)")
    manifest = parse_manifest(mani)
    _check_section_lengths(manifest, section_lengths)
    for label, mine, theirs in (("capsule id", manifest.capsule_id, head.capsule_id), ("name", manifest.name, head.name),
                                ("model", manifest.model.sha256, head.model.sha256)):
        if mine != theirs:
            raise IntegrityError(f"segment {where} has {label} {mine}, its version {head.name} v{head.version} "
                                 f"has {theirs}")
    return manifest, parse_rules(head.rules)


def _check_section_lengths(manifest: Manifest, section_lengths: Mapping[str, int]) -> None:
    for tag, digest in manifest.sections.items():
        actual = section_lengths[tag]
        if actual != digest.length:
            raise IntegrityError(f"{tag} section is {actual} bytes, manifest says {digest.length}")
    if section_lengths["FTAB"] != manifest.video.n_frames * fmt.FRAME_ENTRY_BYTES:
        raise CapsuleFormatError(
            f"frame table is {section_lengths['FTAB']} bytes, manifest says {manifest.video.n_frames} frames"
        )


def _check_trust(cf: ContainerFile, *, trusted_keys: Sequence[Ed25519PublicKey], threshold: int,
                 device: DeviceState | None, now: datetime, identities: Sequence[Identity],
                 device_rules: bool = True, expected_manifest_sha256: str | None = None,
                 segment_of: Manifest | None = None, check_version: bool = True) -> tuple[Manifest, Rules]:
    """``verify_manifest`` over the MANI and SIGS of an open container (the only reads it makes)."""
    return verify_manifest(cf.read("MANI"), cf.read("SIGS"),
                           section_lengths={tag: e.length for tag, e in cf.sections.items()},
                           trusted_keys=trusted_keys, identities=identities, now=now, threshold=threshold,
                           device=device, device_rules=device_rules,
                           expected_manifest_sha256=expected_manifest_sha256, where=str(cf.path),
                           segment_of=segment_of, check_version=check_version)
