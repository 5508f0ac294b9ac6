"""The device store: capsules installed atomically, and the device's trust state on disk.

This module owns the store directory and its lock: listing, removing, opening by name,
purging expired capsules. Its parts: the install transaction (``store_install``), the catalogue
(``store_catalog``), the persistent ``DeviceState`` of FORMAT.md §13 (``store_state``: trusted
time floor, rate log, trust document; version records go with the catalogue) and dir-fd file
I/O (``store_files``). It does not parse capsules itself: it calls ``verify_capsule`` and
``open_capsule`` on the copy it made.

Layout (every file is written to a temporary name, fsynced and renamed; directories are fsynced)::

    <store>/
      STORE                       "edge-store/1": marks the directory as a store
      lock                        flock(2) target: install, remove, purge and trust updates serialise here
      catalog.json                installed entries by name + version records by capsule id, one file
      clock.json (+ .lock)        the trusted time floor
      trust.json                  the installed trust document, exact bytes
      uses/<capsule_id>.json      the rate-limit log of one capsule (+ .lock)
      objects/<capsule_id>-v<version>-<sha256[:12]>/
        capsule                   the verified capsule file, mode 0444
        content.key               its 32-byte content key, mode 0400 (passphrase installs only)
      tmp/                        staging directories; emptied whenever a writer takes the lock

An install copies the capsule into ``tmp/<random>/``, verifies that copy fully (every section
digest, every frame, the rules, the version record), fsyncs it, renames the directory into
``objects/`` and then replaces ``catalog.json``, which is the one step that makes the new
version visible and records its version. A process killed at any point leaves either the old
catalogue (the previous version keeps serving) or the new one; leftovers in ``tmp/`` and
unreferenced objects are deleted by the next writer. Nothing in the store is followed through a
symbolic link.

Example::

    store = Store(default_store_dir())
    store.install(Path("/media/usb/manual.capsule"), identities=[device_key])
    with store.open("manual", identities=[device_key]) as capsule:
        hits = capsule.search("how do I reset it?")
    store.remove("manual")            # the version record stays: v1 cannot come back after v2

Install checkpoints: every state change of an install is a numbered checkpoint, logged at
``-vv``. The crash suite kills a real install at each one by setting ``Store._checkpoint_observer``
in its own process (``tests/kill_at_checkpoint.py``); the shipped runtime has no switch for it.

Source: FORMAT.md §13; TUF specification §5 (rollback, freeze, endless data).

Size: ~780 lines because ``Store`` is the one holder of the store lock: every public operation
takes the lock and drives the parts named above in a fixed order, and that lock discipline is
easiest to review in one class; the parts themselves live in their own modules.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._files import check_safe_directory
from .budget import MemoryBudget
from .capsule import Capsule, Identity, OpenOptions, _InstalledObject, _open_capsule
from .capsule_set import CapsuleSet
from .clock import format_time, utc_now
from .embedder import QueryEmbedder
from .errors import EdgeError, ExpiredCapsuleError, StoreError, TrustError
from .keys import ContentKey
from .store_catalog import HEX32, HEX64, STORE_FORMAT, Catalog, Entry
from .store_files import open_subdir, read_file, remove_tree, write_file
from .store_install import (DOCUMENTS_TABLE_FILE, INDEX_FILE, LEXICAL_DIR, MAX_CAPSULE_BYTES, SEGMENTS_DIR,
                            Checkpoints, install_locked)
from .store_bundle import bundle_members, is_bundle
from .store_settings import SETTINGS_FILE, StoreSettings, objects_bytes, read_settings
from .store_state import load_device_state
from .trust import TrustRoot, VersionRecord

if TYPE_CHECKING:
    from .store_sync import SyncOutcome

log = logging.getLogger(__name__)

STORE_ENV = "EDGE_STORE_DIR"
SYSTEM_STORE_DIR = "/var/lib/edge-capsules"
#: Sections verified at install that opens do not hash again (they can be gigabytes).
INSTALL_VERIFIED_SECTIONS = frozenset({"INDX", "VECS"})
#: Temporary files older than this are leftovers of a killed write and are deleted.
STALE_TEMP_S = 600
#: errno values that mean "this file system or directory cannot be written".
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def default_store_dir() -> Path:
    """Return the store directory: ``$EDGE_STORE_DIR``, else the system or the user default.

    Returns:
        ``$EDGE_STORE_DIR`` when set; ``/var/lib/edge-capsules`` for root; otherwise
        ``$XDG_DATA_HOME/edge-capsules`` (``~/.local/share/edge-capsules``).
    """
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path(SYSTEM_STORE_DIR)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "edge-capsules"



class Store:
    """A device store directory; see the module docstring for its layout.

    Args:
        path: the store directory; ``None`` uses ``default_store_dir()``. Created when missing.
        hardware_id: this device's hardware id for the ``devices`` rule (FORMAT.md §4.2).

    Raises:
        StoreError: the directory cannot be created or opened, is not a store, holds a
            symbolic link where a store file or directory should be, or it or a directory
            above it is owned by another user or writable by group or others
            (``edge._files.check_safe_directory``).
    """

    #: Test hook: called with (checkpoint number, description) at each install checkpoint.
    _checkpoint_observer: Callable[[int, str], None] | None = None

    def __init__(self, path: str | os.PathLike[str] | None = None, *, hardware_id: str | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_dir()
        self.read_only = False
        try:
            self.path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS or not self.path.is_dir():
                raise StoreError(f"cannot use store directory {self.path}: {exc.strerror}") from None
        # the version records, time floor and trust live here: no other local user may change them
        check_safe_directory(self.path, what="store directory", error=StoreError)
        try:
            self._root_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot use store directory {self.path}: {exc.strerror}") from None
        if os.fstatvfs(self._root_fd).f_flag & os.ST_RDONLY or not os.access(self.path, os.W_OK):
            # A Pi with a read-only root: the store serves what it holds; the floor, rate log
            # and purges are not written (FORMAT.md §13: the state cannot move forward).
            self.read_only = True
            log.warning("device store %s is read-only: installs, removals, the trusted time floor and purges "
                        "are not written; capsules with a rate_limit rule are refused", self.path)
        try:
            self._init_layout()
            self._objects_fd = open_subdir(self._root_fd, "objects")
            self._tmp_fd = open_subdir(self._root_fd, "tmp")
            self._uses_fd = open_subdir(self._root_fd, "uses")
            self.state, self._persistence = load_device_state(self, hardware_id=hardware_id)
        except BaseException:
            self.close()
            raise

    # -- low-level file helpers -------------------------------------------------
    def _init_layout(self) -> None:
        marker = read_file(self._root_fd, "STORE", missing_ok=True)
        if marker is None and self.read_only:
            raise StoreError(f"{self.path} is read-only and not an edge store (no STORE file)")
        if marker is None:
            layout = {"lock", "objects", "tmp", "uses", "catalog.json"}
            if any(name not in layout and not name.startswith(".") for name in os.listdir(self._root_fd)):
                raise StoreError(f"{self.path} is not empty and not an edge store (no STORE file)")
            with self._lock():
                for name in ("objects", "tmp", "uses"):
                    try:
                        os.mkdir(name, 0o755, dir_fd=self._root_fd)
                    except FileExistsError:
                        pass
                if read_file(self._root_fd, "catalog.json", missing_ok=True) is None:
                    write_file(self._root_fd, "catalog.json", Catalog({}, {}).to_bytes())
                write_file(self._root_fd, "STORE", (STORE_FORMAT + "\n").encode())
            log.info("created device store %s", self.path)
        elif marker != (STORE_FORMAT + "\n").encode():
            raise StoreError(f"{self.path} is a store of another format ({marker[:32]!r})")

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"cannot {what}: the device store {self.path} is on a read-only file system")

    @contextmanager
    def _lock(self, name: str = "lock", dir_fd: int | None = None) -> Iterator[None]:
        self._check_writable("change the store")
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self._root_fd if dir_fd is None else dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot lock store file {name}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """Hold the store lock; first delete staging leftovers and unreferenced objects."""
        with self._lock():
            self._sweep()
            yield

    def _sweep(self) -> None:
        for name in os.listdir(self._tmp_fd):
            remove_tree(self._tmp_fd, name)
        now_s = utc_now().timestamp()
        for dir_fd in (self._root_fd, self._uses_fd):  # temporary files of writes killed half-way
            for name in os.listdir(dir_fd):
                if name.startswith(".") and name.endswith(".tmp"):
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if now_s - info.st_mtime > STALE_TEMP_S:  # never a write still in progress
                        os.unlink(name, dir_fd=dir_fd)
        referenced = {name for e in self._read_catalog().entries.values() for name in e.object_names}
        for name in os.listdir(self._objects_fd):
            if name not in referenced:
                log.info("removing unreferenced store object %s", name)
                remove_tree(self._objects_fd, name)

    def _read_catalog(self) -> Catalog:
        data = read_file(self._root_fd, "catalog.json", missing_ok=True)
        if data is None:
            return Catalog({}, {})
        return Catalog.from_bytes(data)

    # -- public API -------------------------------------------------------------
    def list(self, *, now: datetime | None = None) -> list[Entry]:
        """Return the installed capsules by name, after purging expired ones that ask for it.

        Raises:
            StoreError: the catalogue is damaged or unreadable.

        Source: FORMAT.md §13.4.
        """
        now = utc_now(now)
        self.state.observe(now)
        self._purge_expired(now=now)
        return sorted(self._read_catalog().entries.values(), key=lambda e: e.name)

    def get(self, name: str) -> Entry:
        """Return the entry installed under ``name``.

        Raises:
            StoreError: nothing is installed under that name.
        """
        entry = self._read_catalog().entries.get(name)
        if entry is None:
            raise StoreError(f"no capsule named {name!r} is installed in {self.path}")
        return entry

    def capsule_path(self, entry: Entry) -> Path:
        """Return the path of an installed entry's capsule file."""
        return self.path / "objects" / entry.object_name / "capsule"

    def install(self, capsule_path: str | os.PathLike[str], *, identities: Sequence[Identity],
                trusted_keys: Sequence[Ed25519PublicKey] = (), threshold: int = 1, now: datetime | None = None,
                model_search_path: Sequence[Path] | None = None) -> Entry:
        """Verify a capsule fully and install it atomically; return its entry.

        The file is copied first and the copy is what gets verified and installed, so a
        capsule that changes on its medium during the install cannot slip through.

        Args:
            capsule_path: the capsule file (a regular file; a FIFO or device is refused).
            identities: device keys and/or passphrase; with only a passphrase opening the
                capsule, its content key is cached beside it (mode 0400) so later queries need
                no passphrase.
            trusted_keys: the publisher keys provisioned on this device; empty to use the
                installed trust document. Refused (``TrustError``) when a trust document is
                installed: it is then the device's only trust, and other keys would bypass its
                revocations, delegation expiries and threshold.
            threshold: distinct trusted signatures required.
            now: wall-clock time; ``None`` reads the clock once.
            model_search_path: where the model is looked up (see ``find_model_dir``).

        The device state (floor, version record with the signing key ids) moves only when the
        install succeeds; the copy is judged with a read-only view of it.

        Returns:
            The new catalogue ``Entry``.

        Raises:
            CapsuleError: any check of ``verify_capsule(full=True)`` fails, including
                ``RollbackError`` for an older version than this device accepted.
            TrustError: ``trusted_keys`` given although a trust document is installed, or the
                capsule id belongs to other keys (FORMAT.md §13.1: a version record keeps its
                signers, and a later version must be signed by one of them).
            ModelError: the capsule's model is not installed.
            StoreError: not a regular file, the name is taken by another capsule id, the
                disk is full or the store is unsafe; nothing is changed.

        Source: FORMAT.md §13.
        """
        now = utc_now(now)
        if is_bundle(capsule_path):
            return self._install_bundle(Path(capsule_path), identities=identities, trusted_keys=trusted_keys,
                                        threshold=threshold, now=now, model_search_path=model_search_path)
        crash = Checkpoints(self._checkpoint_observer)
        with self._writer():
            crash("store locked")
            self._persistence.reload()
            if trusted_keys and self.state.root is not None:
                raise TrustError(f"this device has a trust document (version {self.state.root.version}): capsules "
                                 "are installed only under the keys it delegates, not ad-hoc keys (--trust)")
            staging = f"install-{os.getpid()}-{os.urandom(6).hex()}"
            try:
                entry = install_locked(self, Path(capsule_path), staging, crash, identities=identities,
                                       trusted_keys=trusted_keys, threshold=threshold, now=now,
                                       model_search_path=model_search_path)
            except OSError as exc:
                raise StoreError(f"install of {capsule_path} failed, nothing changed: "
                                 f"{exc.strerror or exc}") from None
            finally:
                try:
                    remove_tree(self._tmp_fd, staging)
                except OSError:
                    pass
            crash("install finished")
        log.info("installed capsule %s v%d (%s) as object %s", entry.name, entry.version, entry.capsule_id,
                 entry.object_name)
        return entry

    def _install_bundle(self, path: Path, **kwargs) -> Entry:
        """Install each capsule of a bundle in order, skipping those the store holds (FORMAT.md §13.7).

        Each member is one ``install`` (verified and switched atomically on its own): a failure stops
        there and leaves the last version installed serving. Returns the last member's entry.
        """
        import hashlib
        import shutil
        import tempfile

        from .container import ContainerFile
        from .store_install import held_segments

        work = Path(tempfile.mkdtemp(prefix="edge-bundle-"))
        entry = None
        try:
            for member in bundle_members(path, work, max_member_bytes=MAX_CAPSULE_BYTES):
                with ContainerFile(member) as cf:
                    digest = hashlib.sha256(cf.read("MANI")).hexdigest()
                if digest in held_segments(self):
                    log.info("bundle %s: %s is installed already", path, member.name)
                    continue
                entry = self.install(member, **kwargs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if entry is None:  # every member was here: report what is installed
            entry = self._entry_for_digest(digest)
        return entry

    def _entry_for_digest(self, digest: str) -> Entry:
        for entry in self._read_catalog().entries.values():
            if entry.manifest_sha256 == digest:
                return entry
        raise StoreError(f"the bundle's newest capsule ({digest[:12]}) is held only as an earlier segment of "
                         "a newer version")

    def _installed_object(self, capsule_path: str | os.PathLike[str], entry: Entry | None = None) -> _InstalledObject:
        """Return what was verified at install about a capsule file of this store.

        Every byte of an installed capsule was verified at install (``verify_capsule``,
        ``full=True``) and its object is read-only, so the large index sections are not hashed
        again at each open (``verified_sections``); an unencrypted index extracted at install
        is mapped from its own file (``index_path``). The small sections are still hashed,
        and frames are still authenticated one by one. The catalogue entry's manifest digest
        is pinned: a file swapped into the object directory
        (another capsule, another version, even validly signed) is refused at open.

        ``entry``: the catalogue entry of ``capsule_path`` when the caller has it (no catalogue read).

        Raises:
            StoreError: ``capsule_path`` is not the capsule of an installed entry.
        """
        path = Path(capsule_path)
        if entry is None:
            entry = next((e for current in self._read_catalog().entries.values() for e in (current, *current.history)
                          if e.object_name == path.parent.name), None)
        if entry is None:
            raise StoreError(f"{path} is not the capsule of any installed entry of {self.path}")
        index: Path | None = path.with_name(INDEX_FILE)
        try:
            if not stat.S_ISREG(os.stat(index, follow_symlinks=False).st_mode):
                index = None
        except FileNotFoundError:
            index = None
        # the catalogue pins the manifest installed under the name: a validly signed file
        # swapped into the object is refused before it moves any device state; its earlier
        # segments open only under the digests that manifest pins (FORMAT.md §13.5)
        segments = {}
        directory = path.parent / SEGMENTS_DIR
        if directory.is_dir() and not directory.is_symlink():
            for file in directory.glob("*.capsule"):
                digest = file.name.removesuffix(".capsule")
                annoy, table = file.with_suffix(".annoy"), file.with_suffix(".table")
                segments[digest] = (file, _InstalledObject(
                    digest, INSTALL_VERIFIED_SECTIONS, annoy if annoy.is_file() and not annoy.is_symlink() else None,
                    documents_table=table if table.is_file() and not table.is_symlink() else None))
        lexical: Path | None = path.with_name(LEXICAL_DIR)
        if not (lexical.is_dir() and not lexical.is_symlink()):
            lexical = None
        # objects installed before 2026-12-08 have none: their DOCS is parsed at each open
        table: Path | None = path.with_name(DOCUMENTS_TABLE_FILE)
        if not (table.is_file() and not table.is_symlink()):
            table = None
        return _InstalledObject(entry.manifest_sha256, INSTALL_VERIFIED_SECTIONS, index, segments=segments,
                                lexical_dir=lexical, documents_table=table)

    def sync(self, directory: str | os.PathLike[str], *, identities: Sequence[Identity],
             trusted_keys: Sequence[Ed25519PublicKey] = (), now: datetime | None = None,
             progress: Callable[["SyncOutcome"], None] | None = None) -> list["SyncOutcome"]:
        """Install every capsule under ``directory`` (a mounted stick) that is newer than the
        installed one; judge the others (older, foreign, expired) one by one.

        Returns one ``edge.store_sync.SyncOutcome`` per file; ``outcome == "failed"`` marks a
        real error (a damaged file, no key for this device). See ``edge.store_sync``.

        Raises:
            StoreError: ``directory`` cannot be read, or the store is read-only.
        """
        from .store_sync import sync_directory

        return sync_directory(self, directory, identities=identities, trusted_keys=trusted_keys, now=now,
                              progress=progress)

    def record_version(self, capsule_id: str, version: int, manifest_sha256: str,
                       signers: Sequence[str] = ()) -> None:
        """Provision a version record: refuse versions of ``capsule_id`` below ``version`` from now on.

        Only raises a record, never lowers one (an operator provisioning a device, or a test
        setting up device state). ``signers`` (hex64 key ids) own the id from now on; empty
        binds it to nobody until the next install (the operator's way to move an id whose
        key was lost or revoked).

        Raises:
            StoreError: the store already holds a higher version record for that id.
            ValueError: malformed id or digest.
        """
        if not HEX32.fullmatch(capsule_id) or not re.fullmatch(r"[0-9a-f]{64}", manifest_sha256) or version < 1:
            raise ValueError("capsule_id must be 32 hex, manifest_sha256 64 hex, version >= 1")
        with self._writer():
            catalog = self._read_catalog()
            current = catalog.versions.get(capsule_id)
            if current is not None and current.version > version:
                raise StoreError(f"capsule {capsule_id} has version record {current.version} already, "
                                 f"higher than {version}")
            if not all(HEX64.fullmatch(k) for k in signers):
                raise ValueError("signers must be hex64 key ids")
            catalog.versions[capsule_id] = VersionRecord(version, manifest_sha256, frozenset(signers))
            write_file(self._root_fd, "catalog.json", catalog.to_bytes())
            self._persistence.reload()

    def remove(self, name: str, *, now: datetime | None = None) -> Entry:
        """Remove an installed capsule and its cached key; keep its version record.

        On a full file system the new catalogue cannot be written: the object's files are
        deleted first to make room, then the catalogue is written. A crash between the two
        leaves an entry whose file is gone; opening it is a ``StoreError`` and a repeated
        ``remove`` finishes. Removing is always possible, so space can always be freed.

        Raises:
            StoreError: nothing is installed under ``name``, or the catalogue cannot be
                written even after the object was deleted.
        """
        self.state.observe(utc_now(now))
        with self._writer():
            catalog = self._read_catalog()
            entry = catalog.entries.pop(name, None)
            if entry is None:
                raise StoreError(f"no capsule named {name!r} is installed in {self.path}")
            try:
                write_file(self._root_fd, "catalog.json", catalog.to_bytes())
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreError(f"cannot remove {name!r}: writing catalog.json failed: {exc.strerror}") from None
                log.warning("store %s is full: deleting the files of %s before writing the catalogue", self.path, name)
                for object_name in entry.object_names:
                    remove_tree(self._objects_fd, object_name)
                try:
                    write_file(self._root_fd, "catalog.json", catalog.to_bytes())
                except OSError as again:
                    raise StoreError(f"cannot remove {name!r}: its files are deleted, but catalog.json cannot be "
                                     f"written: {again.strerror}") from None
            for object_name in entry.object_names:
                remove_tree(self._objects_fd, object_name)
            remove_tree(self._uses_fd, f"{entry.capsule_id}.json")
        log.info("removed capsule %s v%d (%s); its version record stays", entry.name, entry.version, entry.capsule_id)
        return entry

    def _purge_expired(self, *, now: datetime | None, only_capsule_id: str | None = None) -> list[Entry]:
        at = self.state.trusted_time(utc_now(now))

        def due(entries: dict[str, Entry]) -> list[Entry]:
            return [e for e in entries.values() if e.purge_on_expiry and at >= e.expires_at
                    and (only_capsule_id is None or e.capsule_id == only_capsule_id)]

        if not due(self._read_catalog().entries):
            return []
        if self.read_only:
            log.warning("cannot purge expired capsules from the read-only store %s", self.path)
            return []
        purged = []
        with self._writer():
            catalog = self._read_catalog()
            for entry in due(catalog.entries):
                del catalog.entries[entry.name]
                write_file(self._root_fd, "catalog.json", catalog.to_bytes())
                for object_name in entry.object_names:  # past versions go with it: they expired before it
                    remove_tree(self._objects_fd, object_name)
                remove_tree(self._uses_fd, f"{entry.capsule_id}.json")
                log.warning("purged expired capsule %s v%d (%s): expired at %s, trusted time %s; deleted its "
                            "file%s", entry.name, entry.version, entry.capsule_id, format_time(entry.expires_at),
                            format_time(at), " and cached content key" if entry.content_key else "")
                purged.append(entry)
        return purged

    def resolve(self, name: str, *, now: datetime | None = None) -> tuple[Path, list[ContentKey]]:
        """Return an installed capsule's file and its cached content key (if any), after a purge sweep.

        For callers that open capsules themselves (``open`` and ``open_set`` do it all); pass
        ``options=OpenOptions(device=store.state)`` to ``open_capsule``.

        Raises:
            StoreError: nothing is installed under ``name``, or its object is a symbolic link.
            ExpiredCapsuleError: the capsule expired and was purged (its rules say so).
        """
        _, path, keys = self._resolve(name, now=now)
        return path, keys

    def _resolve(self, name: str, *, now: datetime | None) -> tuple[Entry, Path, list[ContentKey]]:
        """``resolve``, also returning the catalogue entry it read."""
        now = utc_now(now)
        self.state.observe(now)
        purged = {e.name: e for e in self._purge_expired(now=now)}
        if name in purged:
            entry = purged[name]
            at = self.state.trusted_time(now)
            raise ExpiredCapsuleError(
                f"capsule expired at {format_time(entry.expires_at)} (trusted time {format_time(at)}); "
                "it was purged from the store", expires_at=entry.expires_at, now=at)
        entry = self.get(name)
        keys = self._cached_keys(entry)
        path = self.capsule_path(entry)
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise StoreError(f"capsule {name!r} was removed while it was being opened") from None
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"store file {path} is not a regular file; refusing to open it")
        return entry, path, keys

    def _cached_keys(self, entry: Entry) -> list[ContentKey]:
        """The content keys cached in ``entry``'s object: its own (``content.key``) and one per
        earlier segment (``segments/SHA.key``), each bound to its manifest digest."""
        keys: list[ContentKey] = []
        object_fd = open_subdir(self._objects_fd, entry.object_name)  # refuses a symlinked object
        try:
            if not entry.content_key:
                return keys
            keys.append(ContentKey(entry.capsule_id, read_file(object_fd, "content.key", limit=32),
                                   entry.manifest_sha256))
            if SEGMENTS_DIR not in os.listdir(object_fd):
                return keys
            segments_fd = open_subdir(object_fd, SEGMENTS_DIR)  # refuses a symlink
            try:
                for file in sorted(os.listdir(segments_fd)):
                    digest = file.removesuffix(".key")
                    if file.endswith(".key") and HEX64.fullmatch(digest):
                        keys.append(ContentKey(entry.capsule_id, read_file(segments_fd, file, limit=32), digest))
            finally:
                os.close(segments_fd)
        finally:
            os.close(object_fd)
        return keys

    def open(self, name: str, *, identities: Sequence[Identity] = (), trusted_keys: Sequence[Ed25519PublicKey] = (),
             budget: MemoryBudget | None = None, now: datetime | None = None, options: OpenOptions | None = None,
             inspect_only: bool = False, embedders: Mapping[str, QueryEmbedder] | None = None,
             version: int | None = None) -> Capsule:
        """Open an installed capsule by name, with the device state and any cached content key.

        Args:
            name: the installed name.
            identities: device keys or passphrase (not needed when a content key is cached).
            trusted_keys: publisher keys; empty to use the installed trust document. With a
                trust document installed, keys given here are ad-hoc: the capsule opens with
                ``state.inspection_view()`` and moves no device state.
            budget, now: as for ``open_capsule``.
            options: as for ``open_capsule``; its ``device`` is replaced by this store's state.
            inspect_only: open with ``state.inspection_view()`` (the caller's keys are ad-hoc).
            embedders: open ``QueryEmbedder``s by model SHA-256 to share (a long-running service
                keeps one model session per model); the capsule then reserves no ``model``.
            version: open this past version the store keeps (``history``), to read and search as
                that version would answer; ``None`` is the installed one. Its own validity window
                and rules apply (an expired past version stays closed); it is pinned by the digest
                recorded when it was installed, so the rollback check, which protects installs,
                does not refuse it (FORMAT.md §13.6).

        Raises:
            StoreError: nothing is installed under ``name``, or the store keeps no such version.
            ExpiredCapsuleError: the capsule expired (it is purged first if its rules say so).
            Everything ``open_capsule`` raises.
        """
        now = utc_now(now)
        entry, path, keys = self._resolve(name, now=now)
        installed = self._installed_object(path, entry)
        if version is not None and version != entry.version:
            past = next((e for e in entry.history if e.version == version), None)
            if past is None:
                kept = ", ".join(f"v{e.version}" for e in (entry, *entry.history))
                raise StoreError(f"{name} v{version} is not kept on this device (it keeps {kept}; "
                                 "see edge history)")
            path = self.capsule_path(past)
            installed = replace(self._installed_object(path, past), past_version=True)
            keys = self._cached_keys(past)
        return _open_capsule(path, trusted_keys=trusted_keys, identities=[*identities, *keys], budget=budget, now=now,
                             options=self._with_state(options, trusted_keys, inspect_only),
                             installed=installed, embedders=embedders)

    def history(self, name: str) -> list[Entry]:
        """The versions of ``name`` this store keeps, newest (the installed one) first.

        Raises:
            StoreError: nothing is installed under ``name``.
        """
        entry = self.get(name)
        return [replace(entry, history=()), *entry.history]

    @property
    def settings(self) -> StoreSettings:
        """How many versions per capsule the store keeps, and its byte quota (``settings.json``)."""
        return read_settings(self._root_fd)

    def configure(self, *, keep_versions: int | None = None, quota_bytes: int | None | bool = False) -> StoreSettings:
        """Change the store's settings; return the new ones. Takes effect at the next install.

        Args:
            keep_versions: versions kept per capsule, 1 (the installed one only) .. 64.
            quota_bytes: most bytes the store's objects may take (``None``: no quota; ``False``:
                unchanged). Past versions are dropped, oldest first, to stay inside it; an install
                that does not fit even then is refused.

        Raises:
            ValueError: a value outside its range.
            StoreError: the store is read-only.
        """
        self._check_writable("configure")
        with self._writer():
            current = read_settings(self._root_fd)
            new = StoreSettings(keep_versions if keep_versions is not None else current.keep_versions,
                                current.quota_bytes if quota_bytes is False else quota_bytes)
            write_file(self._root_fd, SETTINGS_FILE, new.to_bytes())
        return new

    def used_bytes(self) -> int:
        """Bytes the store's objects take on disk (each file once, however many hard links name it)."""
        return objects_bytes(self.path / "objects")

    def reload_state(self) -> None:
        """Re-read the trust document and version records that another process (``edge install``,
        ``edge trust``) may have changed since this store was opened.

        Raises:
            StoreError: a state file is damaged.
        """
        self._persistence.reload()

    def catalog_stamp(self) -> tuple[int, int, int]:
        """Return ``(inode, mtime ns, size)`` of ``catalog.json``: it changes with every install,
        removal and purge (each is an atomic rename), so a service can tell when to look again.

        Raises:
            StoreError: the catalogue cannot be examined.
        """
        return self._stamp("catalog.json")

    def trust_stamp(self) -> tuple[int, int, int]:
        """Return ``(inode, mtime ns, size)`` of ``trust.json`` (zeros when none is installed): it
        changes with every ``install_trust``, after which what is served must be judged again.

        Raises:
            StoreError: the file cannot be examined.
        """
        return self._stamp("trust.json")

    def _stamp(self, name: str) -> tuple[int, int, int]:
        try:
            info = os.stat(name, dir_fd=self._root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return (0, 0, 0)
        except OSError as exc:
            raise StoreError(f"cannot examine store file {name}: {exc.strerror}") from None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _with_state(self, options: OpenOptions | None, trusted_keys: Sequence[Ed25519PublicKey],
                    inspect_only: bool) -> OpenOptions:
        """``options`` with this store's state, or a read-only view of it for ad-hoc keys."""
        ad_hoc = inspect_only or (bool(trusted_keys) and self.state.root is not None)
        return replace(options or OpenOptions(), device=self.state.inspection_view() if ad_hoc else self.state)

    def open_set(self, targets: Sequence[str | os.PathLike[str]], *, identities: Sequence[Identity] = (),
                 trusted_keys: Sequence[Ed25519PublicKey] = (), budget: MemoryBudget | None = None,
                 now: datetime | None = None, options: OpenOptions | None = None,
                 inspect_only: bool = False, skip_invalid: bool = False) -> CapsuleSet:
        """Open several capsules to search together: installed names (``str``) and files (``Path``).

        A name opens as ``open`` does; a path opens by path (read with preads, every section
        and sample hashed), judged with this store's state too. One budget, one model session
        per model, one clock reading.

        Args:
            targets: installed names and capsule files, at least one; order breaks score ties.
            identities, trusted_keys, budget, now, options, inspect_only: as for ``open``.
            skip_invalid: leave out targets that are expired or not yet valid (listed in the
                set's ``skipped`` by name or path) while at least one other opens.

        Raises:
            ValueError: no targets.
            As ``open``, for the first target that fails; the ones opened before it are closed.
        """
        now = utc_now(now)
        options = self._with_state(options, trusted_keys, inspect_only)
        opens: list[tuple[Path, _InstalledObject | None]] = []
        cached: list[ContentKey] = []
        labels: list[str] = []
        skipped: dict[str, EdgeError] = {}
        for target in targets:
            if isinstance(target, str):
                try:
                    entry, path, keys = self._resolve(target, now=now)
                except ExpiredCapsuleError as exc:
                    if not skip_invalid:
                        raise
                    skipped[target] = exc
                    continue
                opens.append((path, self._installed_object(path, entry)))
                cached += keys
                labels.append(target)
            else:
                opens.append((Path(target), None))
                labels.append(str(target))
        if not opens and skipped:
            raise next(iter(skipped.values()))
        capsules = CapsuleSet._open(opens, trusted_keys=trusted_keys, identities=[*identities, *cached],
                                    budget=budget, now=now, options=options, skip_invalid=skip_invalid, labels=labels)
        capsules.skipped = {**skipped, **capsules.skipped}
        return capsules

    def flush_floor(self) -> None:
        """Write the trusted time floor now (it is otherwise written once it moved 60 s: flash wear).

        Raises:
            StoreError: the store cannot be locked.
        """
        self._persistence.flush_floor()

    def install_trust(self, data: bytes, *, root_keys: Sequence[Ed25519PublicKey] = (),
                      now: datetime | None = None) -> TrustRoot:
        """Install a trust document (first install with ``root_keys``, else an update).

        Raises:
            TrustError: see ``edge.trust.verify_trust_document``.
        """
        with self._writer():
            self._persistence.reload()
            return self.state.install_trust(data, root_keys=root_keys, now=utc_now(now))

    def close(self) -> None:
        """Close the store's directory descriptors."""
        for attr in ("_uses_fd", "_tmp_fd", "_objects_fd", "_root_fd"):
            fd = getattr(self, attr, None)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Store", "Entry", "default_store_dir", "STORE_ENV"]
