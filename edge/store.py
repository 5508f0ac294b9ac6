"""The device store: capsules installed atomically, and the device's trust state on disk.

This module owns the store directory: installing a capsule (copy, full verification of the
copy, atomic switch), listing, removing, opening by name, purging expired capsules, and the
persistent ``DeviceState`` of FORMAT.md §13 (version records, trusted time floor, rate log,
trust document). It does not parse capsules itself: it calls ``verify_capsule`` and
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
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ._files import atomic_write, check_safe_directory, write_all
from .budget import MemoryBudget
from .capsule import Capsule, Identity, OpenOptions, _InstalledObject, _open_capsule, verify_capsule
from .capsule_set import CapsuleSet
from .errors import CapsuleError, EdgeError, ExpiredCapsuleError, RuleViolationError, StoreError, TrustError
from .keys import ContentKey, Passphrase
from .clock import format_time, utc_now
from .manifest import Manifest, canonical_json, parse_canonical_json, parse_signatures
from .rules import RateLimit, admit_use, parse_rules
from .sealed import unwrap_content_key
from .trust import (DeviceState, TrustRoot, VersionRecord, manifest_sha256, parse_trust_document,
                    trusted_signers)

log = logging.getLogger(__name__)

STORE_FORMAT = "edge-store/1"
STORE_ENV = "EDGE_STORE_DIR"
SYSTEM_STORE_DIR = "/var/lib/edge-capsules"
#: The floor is written when it has advanced this far past the stored value (flash wear).
FLOOR_WRITE_STEP_S = 60
COPY_BLOCK_BYTES = 1 << 20
#: An unencrypted index is extracted at install to this file beside the capsule.
INDEX_FILE = "index.annoy"
#: Sections verified at install that opens do not hash again (they can be gigabytes).
INSTALL_VERIFIED_SECTIONS = frozenset({"INDX", "VECS"})
#: Temporary files older than this are leftovers of a killed write and are deleted.
STALE_TEMP_S = 600
MAX_STATE_FILE_BYTES = 64 << 20
MAX_CAPSULE_BYTES = 1 << 40
_OBJECT_NAME = re.compile(r"[0-9a-f]{32}-v[0-9]{1,16}-[0-9a-f]{12}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
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


def _copy_hashed(read: Callable[[int], bytes], dst_fd: int, n_bytes: int, hasher: hashlib._Hash, *,
                 shrank: str, after_block: Callable[[int], None] | None = None) -> None:
    """Copy exactly ``n_bytes`` from ``read`` to ``dst_fd`` in ``COPY_BLOCK_BYTES`` blocks, hashing them.

    Raises:
        StoreError: ``read`` ran dry first (message ``shrank``).
    """
    remaining = n_bytes
    while remaining > 0:
        block = read(min(remaining, COPY_BLOCK_BYTES))
        if not block:
            raise StoreError(shrank)
        hasher.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(dst_fd, view):]
        remaining -= len(block)
        if after_block is not None:
            after_block(n_bytes - remaining)



def _parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise StoreError(f"store file {what} is damaged: bad time")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise StoreError(f"store file {what} is damaged: bad time {text!r}") from None


@dataclass(frozen=True)
class Entry:
    """One installed capsule, as the catalogue records it.

    Attributes:
        name: the capsule's name (unique in the store).
        capsule_id, version: identity of the installed capsule.
        object_name: its directory under ``objects/``.
        file_sha256, manifest_sha256: digests of the installed file and its MANI (hex).
        file_bytes: size of the capsule file.
        installed_at, not_before, expires_at: UTC times.
        purge_on_expiry: the capsule's rules ask for deletion once expired.
        content_key: a content key is cached beside it (passphrase installs).
    """

    name: str
    capsule_id: str
    version: int
    object_name: str
    file_sha256: str
    manifest_sha256: str
    file_bytes: int
    installed_at: datetime
    not_before: datetime
    expires_at: datetime
    purge_on_expiry: bool
    content_key: bool

    def status(self, at: datetime) -> str:
        """Return ``"ok"``, ``"expired"`` or ``"not-yet-valid"`` at trusted time ``at``."""
        if at >= self.expires_at:
            return "expired"
        if at < self.not_before:
            return "not-yet-valid"
        return "ok"

    def to_json(self) -> dict[str, object]:
        """Return the catalogue's JSON object for this entry (times as ``YYYY-MM-DDTHH:MM:SSZ``)."""
        out = asdict(self)
        del out["name"]
        for key in ("installed_at", "not_before", "expires_at"):
            out[key] = format_time(out[key])
        return out

    @classmethod
    def from_json(cls, name: str, obj: object) -> "Entry":
        """Parse one catalogue entry.

        Raises:
            StoreError: a missing or malformed field, or an unsafe object name.
        """
        fields = {"capsule_id", "version", "object_name", "file_sha256", "manifest_sha256", "file_bytes",
                  "installed_at", "not_before", "expires_at", "purge_on_expiry", "content_key"}
        if not isinstance(obj, dict) or set(obj) != fields or not _NAME.fullmatch(name):
            raise StoreError(f"store catalogue entry {name!r} is damaged")
        if (not isinstance(obj["object_name"], str) or not _OBJECT_NAME.fullmatch(obj["object_name"])
                or not isinstance(obj["capsule_id"], str) or not _HEX32.fullmatch(obj["capsule_id"])
                or not isinstance(obj["version"], int) or not isinstance(obj["file_bytes"], int)):
            raise StoreError(f"store catalogue entry {name!r} is damaged")
        return cls(name=name, capsule_id=obj["capsule_id"], version=obj["version"], object_name=obj["object_name"],
                   file_sha256=str(obj["file_sha256"]), manifest_sha256=str(obj["manifest_sha256"]),
                   file_bytes=obj["file_bytes"], installed_at=_parse_time(obj["installed_at"], "catalog.json"),
                   not_before=_parse_time(obj["not_before"], "catalog.json"),
                   expires_at=_parse_time(obj["expires_at"], "catalog.json"),
                   purge_on_expiry=bool(obj["purge_on_expiry"]), content_key=bool(obj["content_key"]))


@dataclass
class _Catalog:
    entries: dict[str, Entry]
    versions: dict[str, VersionRecord]

    def to_bytes(self) -> bytes:
        return canonical_json({
            "format": STORE_FORMAT,
            "entries": {name: e.to_json() for name, e in self.entries.items()},
            "versions": {cid: {"version": r.version, "manifest_sha256": r.manifest_sha256,
                               **({"signers": sorted(r.signers)} if r.signers else {})}
                         for cid, r in self.versions.items()},
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> "_Catalog":
        try:
            obj = parse_canonical_json(data, what="store catalogue")
        except CapsuleError as exc:
            raise StoreError(f"store file catalog.json is damaged: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != {"format", "entries", "versions"} or obj["format"] != STORE_FORMAT:
            raise StoreError("store file catalog.json is damaged or of another store format")
        if not isinstance(obj["entries"], dict) or not isinstance(obj["versions"], dict):
            raise StoreError("store file catalog.json is damaged")
        versions = {}
        for cid, rec in obj["versions"].items():
            if (not _HEX32.fullmatch(cid) or not isinstance(rec, dict)
                    or set(rec) - {"signers"} != {"version", "manifest_sha256"}
                    or not isinstance(rec["version"], int) or not isinstance(rec["manifest_sha256"], str)):
                raise StoreError("store file catalog.json has a damaged version record")
            signers = rec.get("signers", [])
            if (not isinstance(signers, list) or len(signers) > 64
                    or not all(isinstance(k, str) and _HEX64.fullmatch(k) for k in signers)):
                raise StoreError("store file catalog.json has a damaged version record")
            versions[cid] = VersionRecord(rec["version"], rec["manifest_sha256"], frozenset(signers))
        return cls({name: Entry.from_json(name, e) for name, e in obj["entries"].items()}, versions)


class _Checkpoints:
    """Counts the state changes of one install; logs each at ``-vv`` and tells ``observer``.

    The observer is ``Store._checkpoint_observer``: ``None`` in the runtime. The crash suite
    (``tests/kill_at_checkpoint.py``) sets it in its own process to SIGKILL itself at one
    checkpoint; nothing the runtime reads (environment, files) can.
    """

    def __init__(self, observer: Callable[[int, str], None] | None) -> None:
        self.n = 0
        self.observer = observer

    def __call__(self, what: str) -> None:
        self.n += 1
        log.debug("install checkpoint %d: %s", self.n, what)
        if self.observer is not None:
            self.observer(self.n, what)


class StoreState(DeviceState):
    """The ``DeviceState`` of a store, kept on disk (FORMAT.md §13).

    Created by ``Store``; loads the trust document, floor and version records when made, and
    writes the floor, trust document and rate log as they change. Version records are written
    by ``Store.install`` together with the catalogue.
    """

    def __init__(self, store: "Store", *, hardware_id: str | None) -> None:
        catalog = store._read_catalog()
        root = None
        raw_trust = store._read_file(store._root_fd, "trust.json", missing_ok=True)
        if raw_trust is not None:
            try:
                root, _ = parse_trust_document(raw_trust)
            except EdgeError as exc:
                raise StoreError(f"store file trust.json is damaged: {exc}") from None
        floor = store._read_floor()
        super().__init__(root=root, floor_at=floor, hardware_id=hardware_id, versions=catalog.versions)
        self._store = store
        self._stored_floor = floor

    def _floor_advanced(self, old: datetime | None, new: datetime) -> None:
        if self._stored_floor is None or (new - self._stored_floor).total_seconds() >= FLOOR_WRITE_STEP_S:
            self.flush_floor()

    def flush_floor(self, crash: Callable[[str], None] | None = None) -> None:
        """Write the floor now (it is otherwise written once it moved ``FLOOR_WRITE_STEP_S``)."""
        if self.floor_at is not None:
            self._stored_floor = self._store._raise_floor(self.floor_at, crash)

    def _save_root(self, doc: TrustRoot) -> None:
        self._store._write_atomic(self._store._root_fd, "trust.json", doc.raw)

    def reload(self) -> None:
        """Re-read the trust document and version records (another process may have changed them)."""
        raw_trust = self._store._read_file(self._store._root_fd, "trust.json", missing_ok=True)
        if raw_trust is not None and (self._root is None or raw_trust != self._root.raw):
            try:
                self._root, _ = parse_trust_document(raw_trust)
            except EdgeError as exc:
                raise StoreError(f"store file trust.json is damaged: {exc}") from None
        self._versions = dict(self._store._read_catalog().versions)

    def record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        """Admit one use at trusted time ``at`` across processes, or raise ``RateLimitedError``."""
        self._store._record_use(capsule_id, limit, at)

    def capsule_expired(self, manifest: Manifest, exc: Exception) -> None:
        """Purge the installed capsule if its rules ask for it (FORMAT.md §13.4)."""
        self._store._purge_expired(now=getattr(exc, "now", None), only_capsule_id=manifest.capsule_id)


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
            self._objects_fd = self._subdir("objects")
            self._tmp_fd = self._subdir("tmp")
            self._uses_fd = self._subdir("uses")
            self.state = StoreState(self, hardware_id=hardware_id)
        except BaseException:
            self.close()
            raise

    # -- low-level file helpers -------------------------------------------------
    def _init_layout(self) -> None:
        marker = self._read_file(self._root_fd, "STORE", missing_ok=True)
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
                if self._read_file(self._root_fd, "catalog.json", missing_ok=True) is None:
                    self._write_atomic(self._root_fd, "catalog.json", _Catalog({}, {}).to_bytes())
                self._write_atomic(self._root_fd, "STORE", (STORE_FORMAT + "\n").encode())
            log.info("created device store %s", self.path)
        elif marker != (STORE_FORMAT + "\n").encode():
            raise StoreError(f"{self.path} is a store of another format ({marker[:32]!r})")

    def _subdir(self, name: str, parent_fd: int | None = None) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=self._root_fd if parent_fd is None else parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(f"store path {name} is a symbolic link or not a directory; refusing to use it") from None
            raise StoreError(f"cannot open store directory {name}: {exc.strerror}") from None

    def _read_file(self, dir_fd: int, name: str, *, missing_ok: bool = False,
                   limit: int = MAX_STATE_FILE_BYTES) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise StoreError(f"store file {name} is missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(f"store file {name} is a symbolic link; refusing to read it") from None
            raise StoreError(f"cannot read store file {name}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StoreError(f"store file {name} is not a regular file")
            if info.st_size > limit:
                raise StoreError(f"store file {name} is {info.st_size} bytes, limit is {limit}")
            chunks = []
            remaining = info.st_size
            while remaining > 0:
                block = os.read(fd, min(remaining, COPY_BLOCK_BYTES))
                if not block:
                    break
                chunks.append(block)
                remaining -= len(block)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write_atomic(self, dir_fd: int, name: str, data: bytes, *, mode: int = 0o644,
                      crash: Callable[[str], None] | None = None) -> None:
        with atomic_write(dir_fd, name, mode=mode, **({"checkpoint": crash} if crash else {})) as (fd, _):
            write_all(fd, data)

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
            self._remove_tree(self._tmp_fd, name)
        now_s = utc_now().timestamp()
        for dir_fd in (self._root_fd, self._uses_fd):  # temporary files of writes killed half-way
            for name in os.listdir(dir_fd):
                if name.startswith(".") and name.endswith(".tmp"):
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if now_s - info.st_mtime > STALE_TEMP_S:  # never a write still in progress
                        os.unlink(name, dir_fd=dir_fd)
        referenced = {e.object_name for e in self._read_catalog().entries.values()}
        for name in os.listdir(self._objects_fd):
            if name not in referenced:
                log.info("removing unreferenced store object %s", name)
                self._remove_tree(self._objects_fd, name)

    def _remove_tree(self, dir_fd: int, name: str) -> None:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # does not follow symlinks (shutil.rmtree.avoids_symlink_attacks)
        else:
            os.unlink(name, dir_fd=dir_fd)
        os.fsync(dir_fd)

    def _read_catalog(self) -> _Catalog:
        data = self._read_file(self._root_fd, "catalog.json", missing_ok=True)
        if data is None:
            return _Catalog({}, {})
        return _Catalog.from_bytes(data)

    def _read_floor(self) -> datetime | None:
        data = self._read_file(self._root_fd, "clock.json", missing_ok=True)
        if data is None:
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            raise StoreError("store file clock.json is damaged") from None
        if not isinstance(obj, dict) or set(obj) != {"floor"}:
            raise StoreError("store file clock.json is damaged")
        return _parse_time(obj["floor"], "clock.json")

    def _raise_floor(self, floor_at: datetime, crash: Callable[[str], None] | None = None) -> datetime:
        if self.read_only:
            return floor_at  # kept in memory for this process only
        with self._lock("clock.json.lock"):
            stored = self._read_floor()
            if stored is not None and stored >= floor_at:
                return stored
            self._write_atomic(self._root_fd, "clock.json", canonical_json({"floor": format_time(floor_at)}),
                               crash=crash)
            return floor_at

    def _record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        if self.read_only:  # fail closed: a count kept per process would let a kiosk query forever
            raise RuleViolationError(f"capsule {capsule_id} has a rate_limit rule ({limit.max_queries} per "
                                     f"{limit.window_s} s) that cannot be enforced: the device store {self.path} "
                                     "is read-only, so uses cannot be counted across processes")
        name = f"{capsule_id}.json"
        with self._lock(f"{capsule_id}.lock", self._uses_fd):
            data = self._read_file(self._uses_fd, name, missing_ok=True)
            times = []
            if data is not None:
                try:
                    times = [_parse_time(t, name) for t in json.loads(data)["times"]]
                except (ValueError, KeyError, TypeError):
                    raise StoreError(f"store file uses/{name} is damaged") from None
            kept = admit_use(times, limit, at)
            self._write_atomic(self._uses_fd, name, canonical_json({"times": [format_time(t) for t in kept]}))

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
        crash = _Checkpoints(self._checkpoint_observer)
        with self._writer():
            crash("store locked")
            self.state.reload()
            if trusted_keys and self.state.root is not None:
                raise TrustError(f"this device has a trust document (version {self.state.root.version}): capsules "
                                 "are installed only under the keys it delegates, not ad-hoc keys (--trust)")
            staging = f"install-{os.getpid()}-{os.urandom(6).hex()}"
            try:
                entry = self._install_locked(Path(capsule_path), staging, crash, identities=identities,
                                             trusted_keys=trusted_keys, threshold=threshold, now=now,
                                             model_search_path=model_search_path)
            except OSError as exc:
                raise StoreError(f"install of {capsule_path} failed, nothing changed: "
                                 f"{exc.strerror or exc}") from None
            finally:
                try:
                    self._remove_tree(self._tmp_fd, staging)
                except OSError:
                    pass
            crash("install finished")
        log.info("installed capsule %s v%d (%s) as object %s", entry.name, entry.version, entry.capsule_id,
                 entry.object_name)
        return entry

    def _install_locked(self, source: Path, staging: str, crash: Callable[[str], None], *,
                        identities: Sequence[Identity], trusted_keys: Sequence[Ed25519PublicKey], threshold: int,
                        now: datetime, model_search_path: Sequence[Path] | None) -> Entry:
        try:
            src = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise StoreError(f"cannot read {source}: {exc.strerror}") from None
        hasher = hashlib.sha256()
        try:
            info = os.fstat(src)
            if not stat.S_ISREG(info.st_mode):
                raise StoreError(f"{source} is not a regular file; refusing to install from it")
            if info.st_size > MAX_CAPSULE_BYTES:
                raise StoreError(f"{source} is {info.st_size} bytes, limit is {MAX_CAPSULE_BYTES}")
            crash("source opened and checked")
            os.mkdir(staging, 0o700, dir_fd=self._tmp_fd)
            crash("staging directory created")
            stage_fd = self._subdir(staging, self._tmp_fd)
            try:
                dst = os.open("capsule", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=stage_fd)
                try:
                    crash("capsule file created")
                    _copy_hashed(lambda n: os.read(src, n), dst, info.st_size, hasher,
                                 shrank=f"{source} shrank while it was being copied",
                                 after_block=lambda done: crash(f"capsule copy: {done} of {info.st_size} bytes written"))
                    os.fsync(dst)
                    crash("capsule file synced")
                    os.fchmod(dst, 0o444)
                finally:
                    os.close(dst)
                crash("capsule file closed read-only")
                copy_path = self.path / "tmp" / staging / "capsule"
                try:
                    # judged with the device's floor and records, moved only once the install succeeds
                    report = verify_capsule(copy_path, trusted_keys=trusted_keys, identities=identities, now=now,
                                            full=True, options=OpenOptions(threshold=threshold,
                                                                           model_search_path=model_search_path,
                                                                           device=self.state.inspection_view()))
                    manifest = report.manifest
                    signers = self._signers(copy_path, trusted_keys, now)
                    self.state.check_version(manifest)
                    self.state.check_owner(manifest, signers)
                except (CapsuleError, TrustError) as exc:
                    log.warning("refused to install %s: %s", source, exc)
                    raise
                crash("copy verified")
                if manifest.index.encryption == "none":
                    self._extract_index(copy_path, manifest, stage_fd)
                    crash("index extracted")
                catalog = self._read_catalog()
                taken = catalog.entries.get(manifest.name)
                if taken is not None and taken.capsule_id != manifest.capsule_id:
                    raise StoreError(f"name {manifest.name!r} is taken by capsule {taken.capsule_id}; "
                                     "remove it first")
                content_key = self._content_key_to_cache(manifest, identities)
                if content_key is not None:
                    fd = os.open("content.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o400, dir_fd=stage_fd)
                    try:
                        os.write(fd, content_key)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    crash("content key written")
                os.fsync(stage_fd)
                crash("staging directory synced")
            finally:
                os.close(stage_fd)
        finally:
            os.close(src)
        file_sha256 = hasher.hexdigest()
        object_name = f"{manifest.capsule_id}-v{manifest.version}-{file_sha256[:12]}"
        try:
            os.rename(staging, object_name, src_dir_fd=self._tmp_fd, dst_dir_fd=self._objects_fd)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            existing = os.stat(object_name, dir_fd=self._objects_fd, follow_symlinks=False)
            if not stat.S_ISDIR(existing.st_mode):
                raise StoreError(f"store path objects/{object_name} is a symbolic link or not a directory; "
                                 "refusing to use it") from None
            # the same file is installed already (a re-install): keep the existing object
        crash("object renamed into place")
        os.fsync(self._objects_fd)
        crash("objects directory synced")
        self.state.observe(now, manifest.issued_at)
        self.state.accept_version(manifest, signers)
        rules = parse_rules(manifest.rules)
        entry = Entry(name=manifest.name, capsule_id=manifest.capsule_id, version=manifest.version,
                      object_name=object_name, file_sha256=file_sha256, manifest_sha256=manifest_sha256(manifest),
                      file_bytes=info.st_size, installed_at=now.replace(microsecond=0),
                      not_before=manifest.not_before, expires_at=manifest.expires_at,
                      purge_on_expiry=rules.purge_on_expiry,
                      content_key=content_key is not None)
        entries = {n: e for n, e in catalog.entries.items() if e.capsule_id != manifest.capsule_id}
        entries[manifest.name] = entry
        versions = dict(catalog.versions)
        versions[manifest.capsule_id] = self.state.version_record(manifest.capsule_id)
        self._write_atomic(self._root_fd, "catalog.json", _Catalog(entries, versions).to_bytes(), crash=crash)
        crash("catalogue replaced")
        for old in catalog.entries.values():
            if old.capsule_id == manifest.capsule_id and old.object_name != object_name:
                self._remove_tree(self._objects_fd, old.object_name)
                crash("previous version removed")
        self.state.flush_floor(crash)
        crash("floor saved")
        return entry

    def _signers(self, copy_path: Path, trusted_keys: Sequence[Ed25519PublicKey], now: datetime) -> list[str]:
        """Return the key ids whose signatures on the verified copy verify against the device's trust."""
        from . import format as fmt

        with open(copy_path, "rb") as capsule:
            header = fmt.parse_header(capsule.read(fmt.HEADER_BYTES), file_bytes=os.fstat(capsule.fileno()).st_size)
            table = fmt.parse_section_table(capsule.read(header.table_bytes), header)
            parts = {}
            for tag in ("MANI", "SIGS"):
                capsule.seek(table[tag].offset)
                parts[tag] = capsule.read(table[tag].length)
        return trusted_signers(parts["MANI"], parse_signatures(parts["SIGS"]), trusted_keys=trusted_keys,
                               root=self.state.root, at=self.state.trusted_time(now))

    @staticmethod
    def _extract_index(copy_path: Path, manifest: Manifest, stage_fd: int) -> None:
        """Write the verified copy's unencrypted INDX section to ``index.annoy`` (0444) beside it.

        Annoy maps a whole file from its first byte, so an index inside the capsule can only be
        read by copying it into memory; a file of its own is mapped file-backed (evictable
        pages, nothing charged to the memory budget). Hashed again while copied.
        """
        from . import format as fmt

        with open(copy_path, "rb") as capsule:
            header = fmt.parse_header(capsule.read(fmt.HEADER_BYTES), file_bytes=os.fstat(capsule.fileno()).st_size)
            entry = fmt.parse_section_table(capsule.read(header.table_bytes), header)["INDX"]
            capsule.seek(entry.offset)
            fd = os.open(INDEX_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=stage_fd)
            try:
                hasher = hashlib.sha256()
                _copy_hashed(capsule.read, fd, entry.length, hasher,
                             shrank=f"{copy_path} shrank while its index was extracted")
                if hasher.hexdigest() != manifest.sections["INDX"].sha256:
                    raise StoreError("the index changed while it was extracted")
                os.fsync(fd)
                os.fchmod(fd, 0o444)
            finally:
                os.close(fd)

    def _installed_object(self, capsule_path: str | os.PathLike[str]) -> _InstalledObject:
        """Return what was verified at install about a capsule file of this store.

        Every byte of an installed capsule was verified at install (``verify_capsule``,
        ``full=True``) and its object is read-only, so the large index sections are not hashed
        again at each open (``verified_sections``); an unencrypted index extracted at install
        is mapped from its own file (``index_path``). The small sections are still hashed,
        and frames are still authenticated one by one. The catalogue entry's manifest digest
        is pinned: a file swapped into the object directory
        (another capsule, another version, even validly signed) is refused at open.

        Raises:
            StoreError: ``capsule_path`` is not the capsule of an installed entry.
        """
        path = Path(capsule_path)
        entry = next((e for e in self._read_catalog().entries.values() if e.object_name == path.parent.name), None)
        if entry is None:
            raise StoreError(f"{path} is not the capsule of any installed entry of {self.path}")
        index: Path | None = path.with_name(INDEX_FILE)
        try:
            if not stat.S_ISREG(os.stat(index, follow_symlinks=False).st_mode):
                index = None
        except FileNotFoundError:
            index = None
        # the catalogue pins the manifest installed under the name: a validly signed file
        # swapped into the object is refused before it moves any device state
        return _InstalledObject(entry.manifest_sha256, INSTALL_VERIFIED_SECTIONS, index)

    @staticmethod
    def _content_key_to_cache(manifest: Manifest, identities: Sequence[Identity]) -> bytes | None:
        devices = [i for i in identities if isinstance(i, X25519PrivateKey)]
        if devices:
            try:
                unwrap_content_key(manifest, devices)
                return None  # the device key opens it: nothing to cache
            except CapsuleError:
                pass
        others = [i for i in identities if isinstance(i, Passphrase)]
        return unwrap_content_key(manifest, others) if others else None

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
        if not _HEX32.fullmatch(capsule_id) or not re.fullmatch(r"[0-9a-f]{64}", manifest_sha256) or version < 1:
            raise ValueError("capsule_id must be 32 hex, manifest_sha256 64 hex, version >= 1")
        with self._writer():
            catalog = self._read_catalog()
            current = catalog.versions.get(capsule_id)
            if current is not None and current.version > version:
                raise StoreError(f"capsule {capsule_id} has version record {current.version} already, "
                                 f"higher than {version}")
            if not all(_HEX64.fullmatch(k) for k in signers):
                raise ValueError("signers must be hex64 key ids")
            catalog.versions[capsule_id] = VersionRecord(version, manifest_sha256, frozenset(signers))
            self._write_atomic(self._root_fd, "catalog.json", catalog.to_bytes())
            self.state.reload()

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
                self._write_atomic(self._root_fd, "catalog.json", catalog.to_bytes())
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreError(f"cannot remove {name!r}: writing catalog.json failed: {exc.strerror}") from None
                log.warning("store %s is full: deleting the files of %s before writing the catalogue", self.path, name)
                self._remove_tree(self._objects_fd, entry.object_name)
                try:
                    self._write_atomic(self._root_fd, "catalog.json", catalog.to_bytes())
                except OSError as again:
                    raise StoreError(f"cannot remove {name!r}: its files are deleted, but catalog.json cannot be "
                                     f"written: {again.strerror}") from None
            self._remove_tree(self._objects_fd, entry.object_name)
            self._remove_tree(self._uses_fd, f"{entry.capsule_id}.json")
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
                self._write_atomic(self._root_fd, "catalog.json", catalog.to_bytes())
                self._remove_tree(self._objects_fd, entry.object_name)
                self._remove_tree(self._uses_fd, f"{entry.capsule_id}.json")
                log.warning("purged expired capsule %s v%d (%s): expired at %s, trusted time %s; deleted its "
                            "file%s", entry.name, entry.version, entry.capsule_id, format_time(entry.expires_at),
                            format_time(at), " and cached content key" if entry.content_key else "")
                purged.append(entry)
        return purged

    def resolve(self, name: str, *, now: datetime | None = None) -> tuple[Path, list[ContentKey]]:
        """Return an installed capsule's file and its cached content key (if any), after a purge sweep.

        For callers that open capsules themselves (``edge search`` over several capsules);
        pass ``device=store.state`` to ``open_capsule``.

        Raises:
            StoreError: nothing is installed under ``name``, or its object is a symbolic link.
            ExpiredCapsuleError: the capsule expired and was purged (its rules say so).
        """
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
        keys: list[ContentKey] = []
        object_fd = self._subdir(entry.object_name, self._objects_fd)  # refuses a symlinked object
        try:
            if entry.content_key:
                keys.append(ContentKey(entry.capsule_id, self._read_file(object_fd, "content.key", limit=32)))
        finally:
            os.close(object_fd)
        path = self.capsule_path(entry)
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise StoreError(f"capsule {name!r} was removed while it was being opened") from None
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"store file {path} is not a regular file; refusing to open it")
        return path, keys

    def open(self, name: str, *, identities: Sequence[Identity] = (), trusted_keys: Sequence[Ed25519PublicKey] = (),
             budget: MemoryBudget | None = None, now: datetime | None = None, options: OpenOptions | None = None,
             inspect_only: bool = False) -> Capsule:
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

        Raises:
            StoreError: nothing is installed under ``name``.
            ExpiredCapsuleError: the capsule expired (it is purged first if its rules say so).
            Everything ``open_capsule`` raises.
        """
        now = utc_now(now)
        path, keys = self.resolve(name, now=now)
        return _open_capsule(path, trusted_keys=trusted_keys, identities=[*identities, *keys], budget=budget, now=now,
                             options=self._with_state(options, trusted_keys, inspect_only),
                             installed=self._installed_object(path))

    def _with_state(self, options: OpenOptions | None, trusted_keys: Sequence[Ed25519PublicKey],
                    inspect_only: bool) -> OpenOptions:
        """``options`` with this store's state, or a read-only view of it for ad-hoc keys."""
        ad_hoc = inspect_only or (bool(trusted_keys) and self.state.root is not None)
        return replace(options or OpenOptions(), device=self.state.inspection_view() if ad_hoc else self.state)

    def open_set(self, targets: Sequence[str | os.PathLike[str]], *, identities: Sequence[Identity] = (),
                 trusted_keys: Sequence[Ed25519PublicKey] = (), budget: MemoryBudget | None = None,
                 now: datetime | None = None, options: OpenOptions | None = None,
                 inspect_only: bool = False) -> CapsuleSet:
        """Open several capsules to search together: installed names (``str``) and files (``Path``).

        A name opens as ``open`` does; a path opens by path (read with preads, every section
        and sample hashed), judged with this store's state too. One budget, one model session
        per model, one clock reading.

        Args:
            targets: installed names and capsule files, at least one; order breaks score ties.
            identities, trusted_keys, budget, now, options, inspect_only: as for ``open``.

        Raises:
            ValueError: no targets.
            As ``open``, for the first target that fails; the ones opened before it are closed.
        """
        now = utc_now(now)
        options = self._with_state(options, trusted_keys, inspect_only)
        opens: list[tuple[Path, _InstalledObject | None]] = []
        cached: list[ContentKey] = []
        for target in targets:
            if isinstance(target, str):
                path, keys = self.resolve(target, now=now)
                opens.append((path, self._installed_object(path)))
                cached += keys
            else:
                opens.append((Path(target), None))
        return CapsuleSet._open(opens, trusted_keys=trusted_keys, identities=[*identities, *cached], budget=budget,
                                now=now, options=options)

    def install_trust(self, data: bytes, *, root_keys: Sequence[Ed25519PublicKey] = (),
                      now: datetime | None = None) -> TrustRoot:
        """Install a trust document (first install with ``root_keys``, else an update).

        Raises:
            TrustError: see ``edge.trust.verify_trust_document``.
        """
        with self._writer():
            self.state.reload()
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


__all__ = ["Store", "StoreState", "Entry", "default_store_dir", "STORE_ENV"]
