"""Write root-signed trust documents: delegations, rotation, revocation, thresholds.

Writer for ``edge/trust.py`` (FORMAT.md §12). The operator's root key (offline, kept apart from
any build machine) signs a document that delegates capsule signing to publisher keys, each
until its own expiry; later versions rotate, renew or revoke keys. The result is parsed back
with the runtime's own parser before it is returned.

Example::

    doc = write_trust_document(root_signing_keys=[root], publishers=[Delegate(pub, "press-2027", until)],
                               version=1, issued_at=now)
    doc2 = next_trust_document(doc, root_signing_keys=[root], add=[Delegate(new_pub, "press-2028", until2)],
                               revoke=[keyid(pub)], issued_at=later)

Source: FORMAT.md §12; TUF specification §4.3 (root metadata), §5.3.4 (root rotation).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import TrustError
from edge.keys import keyid, raw_public_bytes
from edge.manifest import canonical_json, format_time, parse_canonical_json
from edge.trust import TRUST_TYPE, parse_trust_document, trust_signed_message
from firmware_tools.errors import BuildError


@dataclass(frozen=True)
class Delegate:
    """A publisher key to delegate to, with a label and the delegation's expiry."""

    public_key: Ed25519PublicKey
    name: str
    expires_at: datetime


def _key_json(key: Ed25519PublicKey) -> dict[str, str]:
    return {"keyid": keyid(key), "public_key": base64.b64encode(raw_public_bytes(key)).decode("ascii")}


def sign_trust_document(signed: dict, root_signing_keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """Return the canonical document ``{"signatures": ..., "signed": signed}`` signed by each root key.

    Raises:
        BuildError: the result does not parse as a trust document (a writer bug or bad input).
    """
    message = trust_signed_message(signed)
    sigs = sorted(({"keyid": keyid(k.public_key()), "sig": base64.b64encode(k.sign(message)).decode("ascii")}
                   for k in root_signing_keys), key=lambda s: s["keyid"])
    data = canonical_json({"signatures": sigs, "signed": signed})
    try:
        parse_trust_document(data)
    except TrustError as exc:
        raise BuildError(f"the trust document written would not verify: {exc}") from None
    return data


def write_trust_document(*, root_signing_keys: Sequence[Ed25519PrivateKey], publishers: Sequence[Delegate],
                         version: int, issued_at: datetime, threshold: int = 1,
                         revoked: Sequence[str] = (), root_public_keys: Sequence[Ed25519PublicKey] | None = None,
                         root_threshold: int = 1) -> bytes:
    """Return a new signed trust document.

    Args:
        root_signing_keys: root private keys that sign it (at least ``root_threshold`` of the root).
        publishers: delegations, each with its own expiry.
        version: document version, >= 1; devices refuse to go back to a lower one.
        issued_at: timezone-aware signing time (raises devices' time floor).
        threshold: distinct publisher signatures each capsule needs.
        revoked: key ids (hex64) never to trust.
        root_public_keys: the root keys the document names (default: the signers' public keys);
            different from the signers for a root rotation, whose document both sign.
        root_threshold: root signatures the next version needs.

    Raises:
        BuildError: inconsistent input (a key both delegated and revoked, thresholds out of range):
            the document would not verify.

    Source: FORMAT.md §12.
    """
    roots = list(root_public_keys) if root_public_keys is not None else [k.public_key() for k in root_signing_keys]
    signed = {
        "type": TRUST_TYPE,
        "version": version,
        "issued_at": format_time(issued_at),
        "root": {"keys": sorted((_key_json(k) for k in roots), key=lambda e: e["keyid"]),
                 "threshold": root_threshold},
        "publishers": sorted(({**_key_json(d.public_key), "name": d.name, "expires_at": format_time(d.expires_at)}
                              for d in publishers), key=lambda e: e["keyid"]),
        "threshold": threshold,
        "revoked": sorted(set(revoked)),
    }
    return sign_trust_document(signed, root_signing_keys)


def next_trust_document(previous: bytes, *, root_signing_keys: Sequence[Ed25519PrivateKey], issued_at: datetime,
                        add: Sequence[Delegate] = (), revoke: Sequence[str] = (), threshold: int | None = None,
                        root_public_keys: Sequence[Ed25519PublicKey] | None = None,
                        root_threshold: int | None = None) -> bytes:
    """Return the next version of ``previous`` with delegations added or renewed and keys revoked.

    Args:
        previous: the current document's bytes.
        root_signing_keys: root keys that sign; for a root rotation both the current root's
            threshold and the new root's threshold of keys.
        issued_at: timezone-aware signing time.
        add: delegations to add, or to renew (same key, new expiry).
        revoke: key ids to revoke; their delegations are dropped.
        threshold, root_public_keys, root_threshold: new values, or ``None`` to keep.

    Raises:
        BuildError: ``previous`` is not a trust document, or the result would not verify
            (an inconsistent threshold, say).
    """
    try:
        doc, _ = parse_trust_document(previous)
    except TrustError as exc:
        raise BuildError(f"the previous trust document does not parse: {exc}") from None
    signed = parse_canonical_json(previous, what="trust document")["signed"]
    publishers = {p["keyid"]: p for p in signed["publishers"]}
    for d in add:
        publishers[keyid(d.public_key)] = {**_key_json(d.public_key), "name": d.name,
                                           "expires_at": format_time(d.expires_at)}
    revoked = set(signed["revoked"]) | set(revoke)
    for kid in revoke:
        publishers.pop(kid, None)
    root = signed["root"]
    if root_public_keys is not None:
        root = {"keys": sorted((_key_json(k) for k in root_public_keys), key=lambda e: e["keyid"]),
                "threshold": root["threshold"]}
    if root_threshold is not None:
        root = {**root, "threshold": root_threshold}
    new = {"type": TRUST_TYPE, "version": doc.version + 1, "issued_at": format_time(issued_at), "root": root,
           "publishers": sorted(publishers.values(), key=lambda e: e["keyid"]),
           "threshold": doc.threshold if threshold is None else threshold, "revoked": sorted(revoked)}
    return sign_trust_document(new, root_signing_keys)


__all__ = ["Delegate", "write_trust_document", "next_trust_document", "sign_trust_document"]
