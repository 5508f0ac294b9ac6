"""Signature threshold over manifest bytes.

Pure checks over bytes: no files, no clock. ``verify_signatures`` is the first
thing the runtime does with a manifest, before parsing it.

Example::

    verify_signatures(mani_bytes, parse_signatures(sigs_bytes), trusted_keys, threshold=1)

Source: FORMAT.md §9 (Ed25519, RFC 8032; threshold counting as in TUF).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import SignatureError
from .keys import keyid
from .manifest import SignatureEntry

log = logging.getLogger(__name__)

SIGNATURE_CONTEXT = b"edge-capsule/v1/manifest\x00"


def signed_message(manifest_bytes: bytes) -> bytes:
    """Return the bytes each Ed25519 signature covers: context + manifest."""
    return SIGNATURE_CONTEXT + bytes(manifest_bytes)


def valid_signers(signatures: Sequence[SignatureEntry], keys_by_id: dict[str, Ed25519PublicKey], message: bytes,
                  *, what: str = "signature") -> list[str]:
    """Return the key ids in ``keys_by_id`` whose entry in ``signatures`` verifies over ``message``.

    Entries by unknown keys are skipped; a known key's bad signature is logged at WARNING
    (``what`` names it in the log line) and skipped.
    """
    valid = []
    for entry in signatures:
        key = keys_by_id.get(entry.keyid)
        if key is None:
            continue
        try:
            key.verify(entry.sig, message)
        except InvalidSignature:
            log.warning("%s by key %s does not verify", what, entry.keyid[:16])
            continue
        valid.append(entry.keyid)
    return valid


def verify_signatures(
    manifest_bytes: bytes,
    signatures: Sequence[SignatureEntry],
    trusted_keys: Sequence[Ed25519PublicKey],
    *,
    threshold: int = 1,
) -> list[str]:
    """Check that at least ``threshold`` distinct trusted keys signed the manifest.

    Args:
        manifest_bytes: the exact MANI section bytes.
        signatures: parsed SIGS entries; unknown signers are ignored.
        trusted_keys: Ed25519 public keys this device trusts.
        threshold: number of distinct valid trusted signatures required, >= 1.

    Returns:
        Key ids (hex) of the trusted keys whose signatures verified.

    Raises:
        SignatureError: fewer than ``threshold`` valid signatures by trusted keys.
        ValueError: ``threshold < 1`` or no trusted keys given.

    Source: FORMAT.md §9.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if not trusted_keys:
        raise ValueError("no trusted keys given")
    by_id = {keyid(k): k for k in trusted_keys}
    valid = valid_signers(signatures, by_id, signed_message(manifest_bytes))
    if len(valid) < threshold:
        raise SignatureError(
            f"manifest signed by {len(valid)}/{threshold} trusted keys "
            f"({len(signatures)} signature(s) present, {len(by_id)} key(s) trusted)"
        )
    return valid
