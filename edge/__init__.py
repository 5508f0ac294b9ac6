"""Edge Capsules runtime: open, verify and search signed, encrypted knowledge capsules offline.

Example::

    from edge import open_capsule, load_public_key, load_identity

    with open_capsule("manual.capsule", trusted_keys=[load_public_key("publisher.pub")],
                      identities=[load_identity("device.key")]) as capsule:
        for hit in capsule.search("how do I reset the unit?", k=5):
            print(hit.score, hit.document, hit.text)

See ``edge/FORMAT.md`` for the file format. This package never imports ``firmware_tools``.
"""

from .budget import MemoryBudget
from .capsule import Capsule, Hit, open_capsule, verify_capsule
from .errors import (
    BudgetExceededError,
    CapsuleError,
    CapsuleFormatError,
    DecryptionError,
    EdgeError,
    ExpiredCapsuleError,
    FrameDecodeError,
    IntegrityError,
    ModelError,
    NotYetValidError,
    RateLimitedError,
    RollbackError,
    RuleViolationError,
    SignatureError,
    StoreError,
    TrustError,
)
from .keys import Passphrase, load_identity, load_public_key
from .store import Store
from .trust import DeviceState

from ._version import __version__

__all__ = [
    "open_capsule", "verify_capsule", "Capsule", "Hit", "MemoryBudget", "Store", "DeviceState",
    "load_public_key", "load_identity", "Passphrase",
    "EdgeError", "CapsuleError", "CapsuleFormatError", "IntegrityError", "SignatureError", "DecryptionError",
    "ExpiredCapsuleError", "NotYetValidError", "RuleViolationError", "BudgetExceededError", "ModelError",
    "FrameDecodeError", "RollbackError", "RateLimitedError", "TrustError", "StoreError",
]
