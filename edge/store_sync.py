"""``Store.sync``: install what a mounted USB stick carries that is newer than what is installed.

Each ``*.capsule`` file found under the folder is judged on its own, and one bad file never
stops the others:

- ``installed``: newer than the installed version of its name (or a new name): installed with
  the full check of ``Store.install``;
- ``up-to-date``: the same version is installed; ``older``: a newer one is installed, or the
  device accepted a newer one before (rollback record);
- ``foreign``: not signed by a key this device trusts (another publisher's stick);
- ``expired`` / ``not-yet-valid``: outside its validity window now;
- ``failed``: it should have been installed and could not be (damaged, truncated, a frame that
  does not authenticate, no key for this device, the store refused it). Only these make
  ``edge sync`` exit non-zero.

The walk is bounded (``MAX_DEPTH`` folders deep, ``MAX_FILES`` capsule files), follows no
symbolic links and reads only regular files. The quick check (signature, validity, rules,
version) reads the header, table and manifest; only files that pass it are installed.

Source: FORMAT.md §13 (install, version records).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .capsule import Identity, OpenOptions, verify_capsule
from .clock import utc_now
from .errors import (
    EdgeError, ExpiredCapsuleError, NotYetValidError, RollbackError, SignatureError, StoreError, TrustError,
)

if TYPE_CHECKING:
    from .store import Store

__all__ = ["SyncOutcome", "find_capsule_files", "sync_directory", "MAX_DEPTH", "MAX_FILES"]

#: Folders below the given one that are searched for capsules.
MAX_DEPTH = 3
#: Capsule files judged in one sync at most (the rest are reported as not examined).
MAX_FILES = 256
#: Outcomes that are a real error (``edge sync`` exits 1).
FAILED = "failed"


@dataclass(frozen=True)
class SyncOutcome:
    """What happened to one file.

    Attributes:
        path: the file.
        outcome: ``installed``, ``up-to-date``, ``older``, ``foreign``, ``expired``,
            ``not-yet-valid`` or ``failed``.
        name, version: from its verified manifest (``""``/0 when it could not be read).
        message: one line: what was installed, or why not.
        expect: the error's ``expect`` word (FORMAT.md §11) when one was raised, else ``""``.
    """

    path: Path
    outcome: str
    name: str = ""
    version: int = 0
    message: str = ""
    expect: str = ""

    @property
    def failed(self) -> bool:
        """Whether this is a real error."""
        return self.outcome == FAILED

    def to_json(self) -> dict[str, object]:
        """JSON-ready."""
        return {"path": str(self.path), "outcome": self.outcome, "name": self.name, "version": self.version,
                "message": self.message, "expect": self.expect}


def find_capsule_files(directory: str | os.PathLike[str]) -> tuple[list[Path], int]:
    """Return the regular ``*.capsule`` files under ``directory`` (sorted; at most
    ``MAX_FILES``, ``MAX_DEPTH`` folders deep, symbolic links not followed) and how many more
    were left out.

    Raises:
        StoreError: ``directory`` is not a folder that can be read.
    """
    root = Path(directory)
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise StoreError(f"{root} is not a folder")
    except OSError as exc:
        raise StoreError(f"cannot read {root}: {exc.strerror}") from None
    found: list[Path] = []
    left_out = 0

    def walk(folder: Path, depth: int) -> None:
        nonlocal left_out
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return  # an unreadable folder on a stick holds nothing for us
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth < MAX_DEPTH and not entry.name.startswith("."):
                    walk(Path(entry.path), depth + 1)
            elif entry.name.endswith(".capsule") and not entry.name.startswith(".") \
                    and entry.is_file(follow_symlinks=False):
                if len(found) < MAX_FILES:
                    found.append(Path(entry.path))
                else:
                    left_out += 1

    walk(root, 0)
    return found, left_out


def judge_and_install(store: "Store", path: Path, *, identities: Sequence[Identity],
                      trusted_keys: Sequence[Ed25519PublicKey], now: datetime) -> SyncOutcome:
    """Quick-check one file against the device and the store, and install it when it is newer."""
    options = OpenOptions(device=store.state.inspection_view())
    try:
        manifest = verify_capsule(path, trusted_keys=trusted_keys, now=now, full=False, options=options).manifest
    except (SignatureError, TrustError) as exc:
        return SyncOutcome(path, "foreign", message=str(exc), expect=exc.expect)
    except ExpiredCapsuleError as exc:
        return SyncOutcome(path, "expired", message=str(exc), expect=exc.expect)
    except NotYetValidError as exc:
        return SyncOutcome(path, "not-yet-valid", message=str(exc), expect=exc.expect)
    except RollbackError as exc:
        return SyncOutcome(path, "older", message=str(exc), expect=exc.expect)
    except EdgeError as exc:
        return SyncOutcome(path, FAILED, message=str(exc), expect=exc.expect)
    name, version = manifest.name, manifest.version
    installed = {e.name: e for e in store.list(now=now)}.get(name)
    if installed is not None and installed.capsule_id == manifest.capsule_id:
        if installed.version == version:
            return SyncOutcome(path, "up-to-date", name, version, f"{name} v{version} is installed already")
        if installed.version > version:
            return SyncOutcome(path, "older", name, version, f"{name} v{installed.version} is installed, newer than v{version}")
    try:
        entry = store.install(path, identities=identities, trusted_keys=trusted_keys, now=now)
    except RollbackError as exc:
        return SyncOutcome(path, "older", name, version, str(exc), exc.expect)
    except EdgeError as exc:
        return SyncOutcome(path, FAILED, name, version, str(exc), exc.expect)
    previous = f" (was v{installed.version})" if installed is not None else ""
    return SyncOutcome(path, "installed", entry.name, entry.version, f"installed {entry.name} v{entry.version}{previous}")


def sync_directory(store: "Store", directory: str | os.PathLike[str], *, identities: Sequence[Identity],
                   trusted_keys: Sequence[Ed25519PublicKey] = (), now: datetime | None = None,
                   progress: Callable[[SyncOutcome], None] | None = None) -> list[SyncOutcome]:
    """Judge every capsule file under ``directory``; install the newer ones. See the module.

    Args:
        store: the device store.
        directory: the mounted stick (or any folder).
        identities, trusted_keys: as for ``Store.install``.
        now: one clock reading for every file (``None``: the clock).
        progress: called with each outcome as it is decided.

    Returns:
        One ``SyncOutcome`` per file, in path order.

    Raises:
        StoreError: ``directory`` cannot be read, or the store itself is unusable (read-only).
    """
    store._check_writable("sync capsules")
    now = utc_now(now)
    files, left_out = find_capsule_files(directory)
    outcomes = []
    for path in files:
        outcome = judge_and_install(store, path, identities=identities, trusted_keys=trusted_keys, now=now)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    if left_out:
        extra = SyncOutcome(Path(directory), FAILED, message=f"{left_out} more capsule files were not examined "
                                                              f"(at most {MAX_FILES} per sync)")
        outcomes.append(extra)
        if progress is not None:
            progress(extra)
    return outcomes
