"""Device trust: the root-signed trust document, and what a device remembers between uses.

This module owns FORMAT.md §12 (trust document: root keys, delegations to publisher keys with
their own expiry, revocation, the k-of-n threshold, root rotation) and §13 (device state:
version records against rollback, the trusted time floor, the rate-limit log). ``DeviceState``
keeps that state in memory; ``edge.store`` subclasses it to keep it on disk. No file IO and no
clock here: callers pass bytes and the wall-clock reading ``now``.

Example::

    device = DeviceState(hardware_id="kiosk-7")
    device.install_trust(Path("trust.json").read_bytes(), root_keys=[root_pub])   # first install
    capsule = open_capsule(path, identities=[device_key], device=device)          # keys from the root
    device.trusted_time(now)      # max(now, floor): a clock set back never revives a capsule

Source: FORMAT.md §12-§13; TUF specification §5.3 (root rotation, rollback), §5.2 (fixed start
time); Uptane Standard §5.4 and Deployment Best Practices "Secure source of time".
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Sequence
from typing import Protocol
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import manifest as _m
from .errors import CapsuleFormatError, RollbackError, RuleViolationError, SignatureError, TrustError
from .keys import keyid
from .manifest import Manifest, SignatureEntry, canonical_json, format_time, parse_canonical_json
from .rules import RateLimit, admit_use
from .verify import signed_message, valid_signers, verify_signatures

log = logging.getLogger(__name__)

TRUST_TYPE = "edge-trust/1"
TRUST_CONTEXT = b"edge-capsule/v1/trust\x00"
MAX_TRUST_BYTES = 1 << 20
MAX_ROOT_KEYS = 16
MAX_PUBLISHERS = 256
MAX_REVOKED = 4096
MAX_THRESHOLD = 16


@dataclass(frozen=True)
class Delegation:
    """The root's delegation of capsule signing to one publisher key (FORMAT.md §12).

    Attributes:
        keyid: SHA-256 of the raw public key, hex64.
        public_key: the Ed25519 public key.
        name: a human label for the key.
        expires_at: the delegation ends here (judged at the trusted time).
    """

    keyid: str
    public_key: Ed25519PublicKey
    name: str
    expires_at: datetime


@dataclass(frozen=True)
class TrustRoot:
    """A verified trust document (FORMAT.md §12). Exists only after its root signatures checked.

    Attributes:
        version: document version; a device never goes back to a lower one.
        issued_at: when the root signed it (raises the time floor).
        root_keys: root key id -> Ed25519 public key.
        root_threshold: root signatures the next version needs.
        publishers: publisher key id -> ``Delegation``.
        threshold: distinct valid publisher signatures a capsule needs.
        revoked: key ids never trusted.
        raw: the exact document bytes.
    """

    version: int
    issued_at: datetime
    root_keys: dict[str, Ed25519PublicKey]
    root_threshold: int
    publishers: dict[str, Delegation]
    threshold: int
    revoked: frozenset[str]
    raw: bytes

    def signing_keys(self, at: datetime) -> list[Ed25519PublicKey]:
        """Return the publisher keys trusted at ``at``: delegated, not expired, not revoked."""
        return [d.public_key for d in self.publishers.values() if at < d.expires_at and d.keyid not in self.revoked]

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready summary (no signatures)."""
        return {"version": self.version, "issued_at": format_time(self.issued_at),
                "root": {"keyids": sorted(self.root_keys), "threshold": self.root_threshold},
                "publishers": [{"keyid": d.keyid, "name": d.name, "expires_at": format_time(d.expires_at)}
                               for d in self.publishers.values()],
                "threshold": self.threshold, "revoked": sorted(self.revoked)}


def trust_signed_message(signed: dict) -> bytes:
    """Return the bytes a trust-document signature covers: context + canonical ``signed``."""
    return TRUST_CONTEXT + canonical_json(signed)


def _public_key(value: object, path: str) -> tuple[str, Ed25519PublicKey]:
    entry = _m._Obj(value, path)
    kid = entry.str("keyid", _m._HEX64, 64)
    raw = entry.b64("public_key", 32)
    entry.done()
    try:
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise CapsuleFormatError(f"{path}.public_key is not an Ed25519 public key") from None
    if keyid(key) != kid:
        raise CapsuleFormatError(f"{path}.keyid is not the SHA-256 of its public key")
    return kid, key


def _sorted_unique(keyids: list[str], what: str) -> None:
    if keyids != sorted(set(keyids)):
        raise CapsuleFormatError(f"{what} must be sorted by key id without duplicates")


def parse_trust_document(data: bytes) -> tuple[TrustRoot, tuple[SignatureEntry, ...]]:
    """Parse a trust document's structure; signatures are NOT checked here.

    Raises:
        TrustError: not canonical JSON, a missing, unknown or malformed field, unsorted lists,
            a key id that is not its key's SHA-256, or a key both delegated and revoked.

    Source: FORMAT.md §12.
    """
    if len(data) > MAX_TRUST_BYTES:
        raise TrustError(f"trust document is {len(data)} bytes, limit is {MAX_TRUST_BYTES}")
    try:
        top = _m._Obj(parse_canonical_json(data, what="trust document"), "trust")
        sigs = []
        for n, raw in enumerate(top.list("signatures", 1, MAX_THRESHOLD)):
            e = _m._Obj(raw, f"trust.signatures[{n}]")
            sigs.append(SignatureEntry(e.str("keyid", _m._HEX64, 64), e.b64("sig", 64)))
            e.done()
        if len({s.keyid for s in sigs}) != len(sigs):
            raise CapsuleFormatError("trust.signatures lists a key twice")
        signed = top.obj("signed")
        if signed.str("type") != TRUST_TYPE:
            raise CapsuleFormatError(f"trust.signed.type is not {TRUST_TYPE!r}")
        version = signed.int("version", 1)
        issued_at = signed.time("issued_at")
        root = signed.obj("root")
        root_entries = [_public_key(v, f"trust.signed.root.keys[{n}]")
                        for n, v in enumerate(root.list("keys", 1, MAX_ROOT_KEYS))]
        _sorted_unique([kid for kid, _ in root_entries], "trust.signed.root.keys")
        root_keys = dict(root_entries)
        root_threshold = root.int("threshold", 1, len(root_keys))
        root.done()
        publishers: dict[str, Delegation] = {}
        for n, v in enumerate(signed.list("publishers", 0, MAX_PUBLISHERS)):
            p = _m._Obj(v, f"trust.signed.publishers[{n}]")
            kid, key = _public_key({"keyid": p.get("keyid"), "public_key": p.get("public_key")},
                                   f"trust.signed.publishers[{n}]")
            if kid in publishers:
                raise CapsuleFormatError("trust.signed.publishers lists a key twice")
            publishers[kid] = Delegation(kid, key, p.str("name", max_len=128), p.time("expires_at"))
            p.done()
        _sorted_unique(list(publishers), "trust.signed.publishers")
        threshold = signed.int("threshold", 1, MAX_THRESHOLD)
        revoked = signed.list("revoked", 0, MAX_REVOKED)
        if not all(isinstance(r, str) and _m._HEX64.fullmatch(r) for r in revoked):
            raise CapsuleFormatError("trust.signed.revoked must hold hex64 key ids")
        _sorted_unique(revoked, "trust.signed.revoked")
        signed.done()
        top.done()
    except CapsuleFormatError as exc:
        raise TrustError(f"trust document is malformed: {exc}") from None
    if set(revoked) & set(publishers):
        raise TrustError("trust document both delegates and revokes key(s) "
                         + ", ".join(k[:16] for k in sorted(set(revoked) & set(publishers))))
    if set(root_keys) & set(publishers):
        raise TrustError("trust document delegates capsule signing to a root key")
    return (TrustRoot(version, issued_at, root_keys, root_threshold, publishers, threshold, frozenset(revoked),
                      bytes(data)), tuple(sigs))


def _count_root_signatures(doc: TrustRoot, sigs: Sequence[SignatureEntry], keys: dict[str, Ed25519PublicKey]) -> int:
    signed = parse_canonical_json(doc.raw, what="trust document")["signed"]
    return len(valid_signers(sigs, keys, trust_signed_message(signed), what="trust document root signature"))


def verify_trust_document(data: bytes, *, root_keys: Sequence[Ed25519PublicKey] = (),
                          current: TrustRoot | None = None) -> TrustRoot:
    """Return the trust document in ``data`` if the device may install it.

    Args:
        data: the document bytes.
        root_keys: first install only: the root public keys the operator provisions; the
            document's root must be exactly these keys.
        current: the installed document, for an update (then ``root_keys`` must be empty).

    Returns:
        The verified ``TrustRoot``.

    Raises:
        TrustError: malformed; on first install, a root that differs from ``root_keys`` or too
            few root signatures; on update, a lower version, the same version with other bytes,
            too few signatures by the installed root, or (root rotation) by the new root.
        ValueError: neither or both of ``root_keys`` and ``current`` given.

    Source: FORMAT.md §12; TUF specification §5.3.4 (root rotation).
    """
    if (current is None) == (not root_keys):
        raise ValueError("give root_keys for a first install, or the current document for an update")
    doc, sigs = parse_trust_document(data)
    if current is None:
        provisioned = {keyid(k): k for k in root_keys}
        if set(provisioned) != set(doc.root_keys):
            raise TrustError(f"trust document's root keys ({', '.join(k[:16] for k in sorted(doc.root_keys))}) are "
                             f"not the {len(provisioned)} provisioned root key(s) "
                             f"({', '.join(k[:16] for k in sorted(provisioned))})")
        n_valid = _count_root_signatures(doc, sigs, provisioned)
        if n_valid < doc.root_threshold:
            raise TrustError(f"trust document signed by {n_valid}/{doc.root_threshold} root keys")
        return doc
    if doc.version < current.version:
        raise TrustError(f"trust document version {doc.version} is older than the installed version {current.version}")
    if doc.version == current.version:
        if doc.raw != current.raw:
            raise TrustError(f"trust document version {doc.version} differs from the installed document of "
                             "the same version")
        return current
    n_old = _count_root_signatures(doc, sigs, current.root_keys)
    if n_old < current.root_threshold:
        raise TrustError(f"trust document version {doc.version} signed by {n_old}/{current.root_threshold} "
                         "keys of the installed root")
    if set(doc.root_keys) != set(current.root_keys) or doc.root_threshold != current.root_threshold:
        n_new = _count_root_signatures(doc, sigs, doc.root_keys)
        if n_new < doc.root_threshold:
            raise TrustError(f"trust document version {doc.version} rotates the root but is signed by "
                             f"{n_new}/{doc.root_threshold} of its new root keys")
    return doc


def verify_manifest_with_root(manifest_bytes: bytes, signatures: Sequence[SignatureEntry], root: TrustRoot,
                              at: datetime, *, threshold: int = 1) -> list[str]:
    """Check a manifest's signatures against the keys the root delegates at ``at``.

    Args:
        manifest_bytes: the exact MANI bytes.
        signatures: parsed SIGS entries.
        root: the device's verified trust document.
        at: the trusted time (FORMAT.md §13.2) at which delegations are judged.
        threshold: the caller's minimum; the document's threshold applies when higher.

    Returns:
        Key ids whose signatures verified.

    Raises:
        SignatureError: fewer valid signatures by delegated, unexpired, unrevoked keys than
            the threshold; the message counts signatures ignored for revocation or expiry.

    Source: FORMAT.md §9, §12.
    """
    need = max(threshold, root.threshold)
    n_revoked = n_expired = 0
    for entry in signatures:
        if entry.keyid in root.revoked:
            n_revoked += 1
            log.warning("ignoring signature by revoked key %s", entry.keyid[:16])
        elif entry.keyid in root.publishers and at >= root.publishers[entry.keyid].expires_at:
            n_expired += 1
            log.warning("ignoring signature by key %s: its delegation expired at %s (trusted time %s)",
                        entry.keyid[:16], format_time(root.publishers[entry.keyid].expires_at), format_time(at))
    ignored = "".join([f"; {n_revoked} by a revoked key" if n_revoked else "",
                       f"; {n_expired} by a key whose delegation expired" if n_expired else ""])
    keys = root.signing_keys(at)
    if not keys:
        raise SignatureError(f"manifest signed by 0/{need} trusted keys: the trust document (version "
                             f"{root.version}) delegates no key valid at {format_time(at)}{ignored}")
    try:
        return verify_signatures(manifest_bytes, signatures, keys, threshold=need)
    except SignatureError as exc:
        raise SignatureError(f"{exc}{ignored}") from None


@dataclass(frozen=True)
class VersionRecord:
    """The highest version of one capsule id a device accepted (FORMAT.md §13.1).

    Attributes:
        version: that version.
        manifest_sha256: SHA-256 (hex) of its MANI.
        signers: key ids (hex64) of the trusted keys whose signatures on it verified: they own
            the capsule id (a later version needs a signature by one of them). Empty for a
            record provisioned without signers, or written by a store before signers were
            kept; such a record binds nothing until the next accepted version.
    """

    version: int
    manifest_sha256: str
    signers: frozenset[str] = frozenset()


class StatePersistence(Protocol):
    """Where a ``DeviceState`` keeps what it remembers; ``edge.store_state`` keeps it on disk.

    The state calls these after it changed in memory; each may raise to refuse the change
    (a full or read-only disk, a rate limit counted across processes).
    """

    def floor_advanced(self, floor_at: datetime) -> None:
        """The trusted time floor rose to ``floor_at`` (write it, or batch the writes)."""

    def save_trust(self, doc: TrustRoot) -> None:
        """A newer trust document was verified: keep its exact bytes (``doc.raw``)."""

    def record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        """Admit one use at trusted time ``at`` across processes, or raise ``RateLimitedError``."""

    def capsule_expired(self, manifest: Manifest, exc: Exception) -> None:
        """A use found the capsule expired (purge it if its rules say so, FORMAT.md §13.4)."""


class DeviceState:
    """What a device remembers between uses (FORMAT.md §13).

    Held in memory; with a ``persistence`` (``edge.store_state.StorePersistence``, which a
    ``Store`` gives its state) every change is also kept on disk. Without one, tests use it as
    a simulator. The state only moves forward: the floor never decreases, version records only
    rise, a trust document is only replaced by a newer one.

    Only verification against the device's own trust (its trust document, else the publisher
    keys provisioned on it) may move this state. A caller verifying with other ("ad-hoc")
    keys passes ``inspection_view()`` instead: it judges with the same floor, records and
    hardware id, and forgets whatever moves in it.

    Args:
        root: the installed trust document, or ``None`` (callers then pass publisher keys).
        floor_at: the trusted time floor, or ``None``.
        hardware_id: this device's hardware id for the ``devices`` rule, or ``None``.
        versions: capsule id -> ``VersionRecord``.
        inspect_only: a view for ad-hoc keys (see ``inspection_view``).
        persistence: where changes are kept (``StatePersistence``); ``None``: memory only.
    """

    def __init__(self, *, root: TrustRoot | None = None, floor_at: datetime | None = None,
                 hardware_id: str | None = None, versions: dict[str, VersionRecord] | None = None,
                 inspect_only: bool = False, persistence: StatePersistence | None = None) -> None:
        self._root = root
        self._floor_at = floor_at
        self.hardware_id = hardware_id
        self._versions = dict(versions or {})
        self._uses: dict[str, list[datetime]] = {}
        self.inspect_only = inspect_only
        self._persistence = persistence

    def refresh(self, *, root: TrustRoot | None, versions: dict[str, VersionRecord]) -> None:
        """Take the trust document and version records read again from disk (another process wrote them)."""
        if root is not None:
            self._root = root
        self._versions = dict(versions)

    def inspection_view(self) -> "DeviceState":
        """Return an in-memory copy that judges like this state and never changes it.

        For verification with ad-hoc publisher keys (``edge verify --trust KEY``): the copy
        holds the same trust document, floor, version records and hardware id, so a capsule
        this device would refuse as expired or rolled back is still refused; the floor it
        advances and the versions it sees are forgotten with it; ``accept_version`` raises
        ``ValueError``; a capsule with a ``rate_limit`` rule is refused (``RuleViolationError``),
        because a count that is not kept would let the limit be bypassed, and a count that
        is kept would let a self-signed capsule spend a genuine capsule's queries.
        """
        return DeviceState(root=self._root, floor_at=self._floor_at, hardware_id=self.hardware_id,
                           versions=dict(self._versions), inspect_only=True)

    # -- time -----------------------------------------------------------------
    @property
    def floor_at(self) -> datetime | None:
        """The trusted time floor, or ``None`` before any observation."""
        return self._floor_at

    def trusted_time(self, now: datetime) -> datetime:
        """Return ``max(now, floor)`` (FORMAT.md §13.2)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now if self._floor_at is None or now >= self._floor_at else self._floor_at

    def observe(self, now: datetime, issued_at: datetime | None = None) -> None:
        """Raise the floor to the wall-clock reading ``now`` and a verified ``issued_at``.

        Call with ``issued_at`` only after its signature verified.

        Source: FORMAT.md §13.2.
        """
        candidates = [t for t in (self._floor_at, now, issued_at) if t is not None]
        new = max(candidates)
        if self._floor_at is None or new > self._floor_at:
            self._floor_at = new
            if self._persistence is not None:
                self._persistence.floor_advanced(new)

    def advance(self, now: datetime) -> datetime:
        """Record the wall-clock reading ``now`` in the floor and return the trusted time."""
        self.observe(now)
        return self.trusted_time(now)

    # -- trust ------------------------------------------------------------------
    @property
    def root(self) -> TrustRoot | None:
        """The installed trust document, or ``None``."""
        return self._root

    def install_trust(self, data: bytes, *, root_keys: Sequence[Ed25519PublicKey] = (),
                      now: datetime | None = None) -> TrustRoot:
        """Verify and install a trust document; raise the floor to its ``issued_at``.

        Args:
            data: the document bytes.
            root_keys: the provisioned root keys (first install only).
            now: the wall-clock reading, recorded in the floor when given.

        Raises:
            TrustError: see ``verify_trust_document``.
            ValueError: ``root_keys`` given when a document is installed already, or missing
                on first install.

        Source: FORMAT.md §12.
        """
        if self.inspect_only:
            raise ValueError("an inspection view of the device state cannot install a trust document")
        if self._root is not None and root_keys:
            raise ValueError("a trust document is installed already; an update takes no root keys")
        try:
            doc = verify_trust_document(data, root_keys=root_keys, current=self._root)
        except TrustError as exc:
            log.warning("refused trust document: %s", exc)
            raise
        if doc is not self._root:
            if self._persistence is not None:
                self._persistence.save_trust(doc)
            self._root = doc
            log.info("installed trust document version %d (%d publisher key(s), threshold %d)", doc.version,
                     len(doc.publishers), doc.threshold)
        if now is not None:
            self.observe(now, doc.issued_at)
        else:
            self.observe(doc.issued_at)
        return doc

    # -- versions ---------------------------------------------------------------
    def version_record(self, capsule_id: str) -> VersionRecord | None:
        """Return the highest version this device accepted for ``capsule_id``, or ``None``."""
        return self._versions.get(capsule_id)

    def check_version(self, manifest: Manifest) -> None:
        """Raise if ``manifest`` is older than, or conflicts with, the accepted version.

        Raises:
            RollbackError: a lower version, or the same version with another manifest.

        Source: FORMAT.md §13.1.
        """
        record = self.version_record(manifest.capsule_id)
        if record is None:
            return
        if manifest.version < record.version:
            raise RollbackError(
                f"capsule {manifest.name} ({manifest.capsule_id}) version {manifest.version} is older than "
                f"version {record.version} accepted on this device",
                capsule_id=manifest.capsule_id, version=manifest.version, accepted_version=record.version)
        if manifest.version == record.version and manifest_sha256(manifest) != record.manifest_sha256:
            raise RollbackError(
                f"capsule {manifest.name} ({manifest.capsule_id}) version {manifest.version} differs from the "
                f"version {record.version} accepted on this device (manifest sha256 {manifest_sha256(manifest)[:16]}…, "
                f"accepted {record.manifest_sha256[:16]}…)",
                capsule_id=manifest.capsule_id, version=manifest.version, accepted_version=record.version)

    def check_owner(self, manifest: Manifest, signers: Collection[str]) -> None:
        """Raise unless a key that owns ``manifest``'s capsule id signed it (FORMAT.md §13.1).

        The capsule id namespace belongs to the keys (or delegations) that signed the version
        this device accepted: ``signers``, the key ids whose signatures on ``manifest``
        verified against the device's trust, must include one of the record's signers. A
        publisher moving an id to a new key signs one version with the old and the new key.

        Raises:
            TrustError: the record names signers and none of them signed this manifest.
        """
        record = self.version_record(manifest.capsule_id)
        if record is None or not record.signers or record.signers & set(signers):
            return
        raise TrustError(
            f"capsule {manifest.name} ({manifest.capsule_id}) version {manifest.version} is signed by key(s) "
            f"{', '.join(k[:16] for k in sorted(signers)) or 'none'}, but this device's version {record.version} of "
            f"that capsule id was signed by {', '.join(k[:16] for k in sorted(record.signers))}: the id belongs to "
            "them (a new key must co-sign with an owner once)")

    def accept_version(self, manifest: Manifest, signers: Collection[str] = ()) -> bool:
        """Record ``manifest``'s version when it is the highest; return whether it changed.

        Args:
            manifest: a manifest verified against the device's own trust.
            signers: key ids whose signatures on it verified; stored in the record as the
                owners of the capsule id (``check_owner``).

        Raises:
            RollbackError: see ``check_version``.
            TrustError: see ``check_owner``.
            ValueError: this is an ``inspection_view``.
        """
        if self.inspect_only:
            raise ValueError("an inspection view of the device state cannot accept a version")
        self.check_version(manifest)
        self.check_owner(manifest, signers)
        record = self.version_record(manifest.capsule_id)
        if record is not None and record.version == manifest.version:
            return False
        self._versions[manifest.capsule_id] = VersionRecord(manifest.version, manifest_sha256(manifest),
                                                            frozenset(signers))
        return True

    def capsule_expired(self, manifest: Manifest, exc: Exception) -> None:
        """A use found ``manifest``'s capsule expired: tell the persistence (a store purges it if its rules say so)."""
        if self._persistence is not None and not self.inspect_only:
            self._persistence.capsule_expired(manifest, exc)

    # -- uses -------------------------------------------------------------------
    def record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        """Admit one use of ``capsule_id`` at trusted time ``at`` or raise ``RateLimitedError``.

        Raises:
            RateLimitedError: the limit is reached.
            RuleViolationError: this is an ``inspection_view`` (the use could not be counted).
        """
        if self.inspect_only:
            raise RuleViolationError(f"capsule {capsule_id} has a rate_limit rule ({limit.max_queries} per "
                                     f"{limit.window_s} s) that is only counted for capsules verified with this "
                                     "device's own trust, not with ad-hoc keys (--trust)")
        if self._persistence is not None:
            self._persistence.record_use(capsule_id, limit, at)
        else:
            self._uses[capsule_id] = admit_use(self._uses.get(capsule_id, []), limit, at)


def trusted_signers(manifest_bytes: bytes, signatures: Sequence[SignatureEntry], *,
                    trusted_keys: Sequence[Ed25519PublicKey], root: TrustRoot | None, at: datetime) -> list[str]:
    """Return the key ids whose signatures on ``manifest_bytes`` verify against the device's trust.

    Args:
        manifest_bytes: the exact MANI bytes.
        signatures: parsed SIGS entries.
        trusted_keys: the provisioned publisher keys; empty to use ``root``.
        root: the trust document: its keys delegated, unexpired and unrevoked at ``at``.
        at: the trusted time.

    Returns:
        Sorted key ids (hex64); empty when none verifies. Thresholds are not checked here
        (``verify_signatures`` / ``verify_manifest_with_root`` do that).
    """
    keys = list(trusted_keys) if trusted_keys else root.signing_keys(at) if root is not None else []
    return sorted(valid_signers(signatures, {keyid(k): k for k in keys}, signed_message(manifest_bytes)))


def manifest_sha256(manifest: Manifest) -> str:
    """Return the SHA-256 (hex) of the manifest's exact bytes, as version records keep it."""
    return hashlib.sha256(manifest.raw).hexdigest()


__all__ = ["TRUST_TYPE", "TRUST_CONTEXT", "Delegation", "TrustRoot", "trust_signed_message", "parse_trust_document",
           "verify_trust_document", "verify_manifest_with_root", "VersionRecord", "DeviceState", "StatePersistence", "trusted_signers",
           "manifest_sha256"]
