"""The runtime's one error tree.

Every failure a capsule, a model or the memory budget can cause surfaces as a
subclass of :class:`EdgeError`. Caller mistakes (wrong types, ``k < 1``) raise
``ValueError``/``TypeError`` instead: a bug is not a bad capsule.

Messages are lower case, carry the numbers, and never contain key material,
plaintext or the position where authentication failed.

Example::

    try:
        capsule = open_capsule(path, trusted_keys=keys, identities=[device_key])
    except CapsuleError as exc:
        print(f"edge: error: {exc}")

Source: FORMAT.md §11 (error classes and vector ``expect`` words).
"""

from __future__ import annotations

from datetime import datetime


class EdgeError(Exception):
    """Base of every error the runtime raises on purpose."""


class CapsuleError(EdgeError):
    """The capsule must not be used."""

    expect = "capsule"


class CapsuleFormatError(CapsuleError):
    """Bad magic, unknown version, malformed header, section table or manifest."""

    expect = "format"


class IntegrityError(CapsuleError):
    """A section's length or sha256 differs from what the signed manifest says."""

    expect = "integrity"


class SignatureError(CapsuleError):
    """Fewer valid signatures by trusted keys than the threshold requires."""

    expect = "signature"


class DecryptionError(CapsuleError):
    """Authenticated decryption failed, or no identity unwraps the content key.

    Always the same opaque message (compare Fernet's ``InvalidToken``).
    """

    expect = "decryption"


class ExpiredCapsuleError(CapsuleError):
    """``now >= expires_at``."""

    expect = "expired"

    def __init__(self, message: str, *, expires_at: datetime, now: datetime) -> None:
        super().__init__(message)
        self.expires_at = expires_at
        self.now = now


class NotYetValidError(CapsuleError):
    """``now < not_before``."""

    expect = "not-yet-valid"

    def __init__(self, message: str, *, not_before: datetime, now: datetime) -> None:
        super().__init__(message)
        self.not_before = not_before
        self.now = now


class RuleViolationError(CapsuleError):
    """The manifest's rules forbid this use, or name a rule this runtime lacks."""

    expect = "rule"


class RateLimitedError(RuleViolationError):
    """The capsule's ``rate_limit`` rule allows no more uses right now.

    Attributes:
        retry_after_s: seconds until the oldest counted use leaves the window.
    """

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RollbackError(CapsuleError):
    """An older version than the device accepted, or the same version with another manifest.

    Attributes:
        capsule_id: the capsule id (32 hex chars).
        version: the version offered.
        accepted_version: the highest version this device accepted for that id.
    """

    expect = "rollback"

    def __init__(self, message: str, *, capsule_id: str, version: int, accepted_version: int) -> None:
        super().__init__(message)
        self.capsule_id = capsule_id
        self.version = version
        self.accepted_version = accepted_version


class DeltaBaseError(CapsuleError):
    """A capsule built over earlier segments (a delta, FORMAT.md §4.7) whose base is not here:
    the device lacks the version it applies to, or has another one.

    Attributes:
        base_version: the version it needs (its newest earlier segment).
        installed_version: the version this device has, or ``None``.
    """

    expect = "delta-base"

    def __init__(self, message: str, *, base_version: int, installed_version: int | None = None) -> None:
        super().__init__(message)
        self.base_version = base_version
        self.installed_version = installed_version


class TrustError(EdgeError):
    """A trust document is malformed, not signed by the root, or older than the installed one."""

    expect = "trust"


class StoreError(EdgeError):
    """The device store cannot do what was asked (not installed, unsafe path, disk full, ...)."""

    expect = "store"


class QueryError(EdgeError, ValueError):
    """A search request is malformed: empty or NUL-holding query text, ``k < 1``, an unknown
    mode, or a lexical mode on a capsule without a lexical index. Also a ``ValueError``: it is
    the caller's request, not the capsule."""

    expect = "query"


class KeyFileError(EdgeError, ValueError):
    """A key, passphrase or trust file is missing, malformed, of the wrong type, too large, not a
    regular file, or too widely readable. Also a ``ValueError``: it is the caller's file."""

    expect = "key"


class BudgetExceededError(EdgeError):
    """The operation would exceed the memory budget."""

    expect = "over-budget"

    def __init__(self, message: str, *, requested_bytes: int, available_bytes: int) -> None:
        super().__init__(message)
        self.requested_bytes = requested_bytes
        self.available_bytes = available_bytes


class ModelError(EdgeError):
    """Model missing, hash mismatch, or unexpected input/output shape."""

    expect = "model"


class FrameDecodeError(CapsuleError):
    """A frame cannot be decoded, or its QR payload is malformed."""

    expect = "frame"


__all__ = [
    "EdgeError",
    "CapsuleError",
    "CapsuleFormatError",
    "IntegrityError",
    "SignatureError",
    "DecryptionError",
    "ExpiredCapsuleError",
    "NotYetValidError",
    "RuleViolationError",
    "RateLimitedError",
    "RollbackError",
    "TrustError",
    "StoreError",
    "KeyFileError",
    "BudgetExceededError",
    "ModelError",
    "FrameDecodeError",
]
