"""The store's settings (``settings.json``): versions kept per capsule and the byte quota.

Canonical JSON ``{"format": "edge-store-settings/1", "keep_versions": 1..64, "quota_bytes": int|null}``,
replaced atomically by ``Store.configure``. A store without the file keeps one version (the
installed one) and has no quota. Parsing is strict: anything else is ``StoreError``.

Source: FORMAT.md §13.6 (history and quota).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CapsuleError, StoreError
from .manifest import canonical_json, parse_canonical_json
from .store_catalog import MAX_HISTORY
from .store_files import read_file

__all__ = ["SETTINGS_FILE", "StoreSettings", "read_settings", "objects_bytes"]

SETTINGS_FILE = "settings.json"
SETTINGS_FORMAT = "edge-store-settings/1"
#: Most versions kept per capsule: the installed one and ``MAX_HISTORY`` past ones.
MAX_KEEP_VERSIONS = MAX_HISTORY + 1
#: Largest quota accepted (1 PiB): a bound, not a recommendation.
MAX_QUOTA_BYTES = 1 << 50


@dataclass(frozen=True)
class StoreSettings:
    """Attributes:
        keep_versions: versions kept per capsule, the installed one included (1: no history).
        quota_bytes: most bytes the objects may take on disk, or ``None`` for no quota.

    Raises:
        ValueError: a value outside its range.
    """

    keep_versions: int = 1
    quota_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.keep_versions, int) or not 1 <= self.keep_versions <= MAX_KEEP_VERSIONS:
            raise ValueError(f"keep_versions must be 1..{MAX_KEEP_VERSIONS}, got {self.keep_versions!r}")
        if self.quota_bytes is not None and (not isinstance(self.quota_bytes, int)
                                             or not 1 <= self.quota_bytes <= MAX_QUOTA_BYTES):
            raise ValueError(f"quota_bytes must be 1..{MAX_QUOTA_BYTES} or None, got {self.quota_bytes!r}")

    def to_bytes(self) -> bytes:
        return canonical_json({"format": SETTINGS_FORMAT, "keep_versions": self.keep_versions,
                               "quota_bytes": self.quota_bytes})


def read_settings(root_fd: int) -> StoreSettings:
    """Read ``settings.json`` from the store directory ``root_fd`` (defaults when it is absent).

    Raises:
        StoreError: the file is damaged.
    """
    data = read_file(root_fd, SETTINGS_FILE, missing_ok=True, limit=4096)
    if data is None:
        return StoreSettings()
    try:
        obj = parse_canonical_json(data, what="store settings")
        if not isinstance(obj, dict) or set(obj) != {"format", "keep_versions", "quota_bytes"} \
                or obj["format"] != SETTINGS_FORMAT or isinstance(obj["keep_versions"], bool):
            raise ValueError("unknown fields or format")
        return StoreSettings(obj["keep_versions"], obj["quota_bytes"])
    except (CapsuleError, ValueError) as exc:
        raise StoreError(f"store file {SETTINGS_FILE} is damaged: {exc}") from None


def objects_bytes(*directories: Path) -> int:
    """Bytes the regular files under ``directories`` take, each inode once (hard links share one).

    Symbolic links are not followed. Sizes are ``st_size`` (the file's length), not blocks.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory in directories:
        for root, dirs, files in os.walk(directory, followlinks=False):
            for name in files:
                info = os.stat(os.path.join(root, name), follow_symlinks=False)
                key = (info.st_dev, info.st_ino)
                if key not in seen and not os.path.islink(os.path.join(root, name)):
                    seen.add(key)
                    total += info.st_size
    return total
