"""Edge Capsules runtime: open, verify and search signed, encrypted knowledge capsules offline.

Example::

    from edge import open_capsule, load_public_key, load_identity

    with open_capsule("manual.capsule", trusted_keys=[load_public_key("publisher.pub")],
                      identities=[load_identity("device.key")]) as capsule:
        for hit in capsule.search("how do I reset the unit?", k=5):
            print(hit.score, hit.document, hit.text)

See ``edge/FORMAT.md`` for the file format. This package never imports ``firmware_tools``.
"""

import os as _os

# OpenBLAS (under NumPy) reserves a large buffer per thread at import: 40 MiB of private
# memory more with 2 cores, for matrix products far too small to gain from threads. The
# runtime's own arithmetic is one query at a time, so keep it to one thread unless the
# caller chose otherwise. Effective only if NumPy is not imported yet.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .budget import MemoryBudget  # noqa: E402
from .capsule import Capsule, Hit, OpenOptions, open_capsule, verify_capsule  # noqa: E402
from .capsule_set import CapsuleSet  # noqa: E402
from .errors import (  # noqa: E402
    BudgetExceededError,
    CapsuleError,
    CapsuleFormatError,
    DecryptionError,
    DeltaBaseError,
    EdgeError,
    ExpiredCapsuleError,
    FrameDecodeError,
    IntegrityError,
    KeyFileError,
    ModelError,
    NotYetValidError,
    QueryError,
    RateLimitedError,
    RollbackError,
    RuleViolationError,
    SignatureError,
    StoreError,
    TrustError,
)
from .retrieval import SEARCH_MODES, SearchResult  # noqa: E402
from .keys import Passphrase, load_identity, load_public_key  # noqa: E402
from .store import Store  # noqa: E402
from .trust import DeviceState  # noqa: E402

from ._version import __version__ as __version__  # noqa: E402  (re-exported: edge.__version__)

__all__ = [
    "open_capsule", "verify_capsule", "OpenOptions", "Capsule", "CapsuleSet", "Hit", "SearchResult", "SEARCH_MODES", "MemoryBudget", "Store", "DeviceState",
    "load_public_key", "load_identity", "Passphrase",
    "EdgeError", "CapsuleError", "CapsuleFormatError", "IntegrityError", "SignatureError", "DecryptionError",
    "ExpiredCapsuleError", "NotYetValidError", "RuleViolationError", "BudgetExceededError", "ModelError",
    "FrameDecodeError", "RollbackError", "DeltaBaseError", "RateLimitedError", "TrustError", "StoreError", "KeyFileError",
    "QueryError",
]
