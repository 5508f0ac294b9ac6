"""The install transaction of a device store: copy, verify the copy, stage, switch.

``install_locked`` runs with the store's lock held (``Store.install``). It copies the capsule
into a private staging directory under ``tmp/``, verifies **the copy** fully (signature,
validity, rules, version record and owner, every section digest, every frame), extracts an
unencrypted index, caches a passphrase capsule's content key, renames the staging directory
into ``objects/`` and replaces ``catalog.json``: that rename is the one step that makes the new
version visible. Every state change is a numbered checkpoint (``Checkpoints``), logged at
``-vv``; the crash suite kills a real install at each one.

Source: FORMAT.md §13; TUF specification §5 (endless data: the copy is bounded and hashed).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from datetime import datetime
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .capsule import Identity, OpenOptions, verify_capsule
from .errors import CapsuleError, DeltaBaseError, StoreError, TrustError
from .keys import Passphrase
from .manifest import Manifest, parse_signatures
from .rules import parse_rules
from .sealed import unwrap_content_key
from .store_catalog import Catalog, Entry
from .store_files import copy_hashed, open_subdir, remove_tree, write_file
from .store_settings import objects_bytes
from .trust import manifest_sha256, trusted_signers

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Checkpoints", "install_locked", "INDEX_FILE", "LEXICAL_DIR", "MAX_CAPSULE_BYTES"]

log = logging.getLogger(__name__)

#: An unencrypted index is extracted at install to this file beside the capsule.
INDEX_FILE = "index.annoy"
#: The files of an unencrypted ``tantivy-7`` LEXI, extracted at install beside the capsule.
LEXICAL_DIR = "lexical"
MAX_CAPSULE_BYTES = 1 << 40


class Checkpoints:
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


def install_locked(store: "Store", source: Path, staging: str, crash: Callable[[str], None], *,
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
        os.mkdir(staging, 0o700, dir_fd=store._tmp_fd)
        crash("staging directory created")
        stage_fd = open_subdir(store._tmp_fd, staging)
        try:
            dst = os.open("capsule", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=stage_fd)
            try:
                crash("capsule file created")
                copy_hashed(lambda n: os.read(src, n), dst, info.st_size, hasher,
                             shrank=f"{source} shrank while it was being copied",
                             after_block=lambda done: crash(f"capsule copy: {done} of {info.st_size} bytes written"))
                os.fsync(dst)
                crash("capsule file synced")
                os.fchmod(dst, 0o444)
            finally:
                os.close(dst)
            crash("capsule file closed read-only")
            copy_path = store.path / "tmp" / staging / "capsule"
            # a delta's earlier segments are the installed ones it pins (FORMAT.md §13.5): every segment
            # this store holds is offered; the pinned ones open as the store objects they are
            held = held_segments(store)
            try:
                # judged with the device's floor and records, moved only once the install succeeds
                manifest, documents_table = _verify_copy(
                    copy_path, trusted_keys=trusted_keys, identities=identities, now=now,
                    options=OpenOptions(threshold=threshold, model_search_path=model_search_path,
                                        device=store.state.inspection_view()), held=held)
                signers = _signers(store, copy_path, trusted_keys, now)
                store.state.check_version(manifest)
                store.state.check_owner(manifest, signers)
            except (CapsuleError, TrustError) as exc:
                log.warning("refused to install %s: %s", source, exc)
                raise
            crash("copy verified")
            if manifest.index.encryption == "none":
                if manifest.index.format == "annoy":  # binary codes are mapped in place, like VECS
                    _extract_index(copy_path, manifest, stage_fd)
                    crash("index extracted")
                if manifest.lexical is not None and manifest.lexical.format == "tantivy-7":
                    _extract_lexical(copy_path, manifest, stage_fd)
                    crash("lexical index extracted")
            if documents_table is not None:
                _write_new_file(stage_fd, DOCUMENTS_TABLE_FILE, documents_table)
                crash("document table written")
            if manifest.segments is not None:
                _link_segments(manifest, held, stage_fd)
                crash("segments linked")
            catalog = store._read_catalog()
            if manifest.segments is not None:
                _check_delta_base(manifest, catalog)
            taken = catalog.entries.get(manifest.name)
            if taken is not None and taken.capsule_id != manifest.capsule_id:
                raise StoreError(f"name {manifest.name!r} is taken by capsule {taken.capsule_id}; "
                                 "remove it first")
            content_key = _content_key_to_cache(manifest, identities)
            if content_key is not None and manifest.segments is not None:
                missing = [p.version for p in manifest.segments.base if held[p.manifest_sha256][2] is None]
                if missing:  # the earlier segments were installed with a device key: nothing to carry
                    raise StoreError(f"{manifest.name} v{manifest.version} opens only with a passphrase, but the store "
                                     f"holds no cached key for its segment(s) v{missing[0]}: install it with the key "
                                     "the earlier versions were installed with")
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
    history = _kept_history(store, catalog, manifest, object_name, store.path / "tmp" / staging)
    crash("quota checked")
    try:
        os.rename(staging, object_name, src_dir_fd=store._tmp_fd, dst_dir_fd=store._objects_fd)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise
        existing = os.stat(object_name, dir_fd=store._objects_fd, follow_symlinks=False)
        if not stat.S_ISDIR(existing.st_mode):
            raise StoreError(f"store path objects/{object_name} is a symbolic link or not a directory; "
                             "refusing to use it") from None
        # the same file is installed already (a re-install): keep the existing object
    crash("object renamed into place")
    os.fsync(store._objects_fd)
    crash("objects directory synced")
    store.state.observe(now, manifest.issued_at)
    store.state.accept_version(manifest, signers)
    rules = parse_rules(manifest.rules)
    entry = Entry(name=manifest.name, capsule_id=manifest.capsule_id, version=manifest.version,
                  object_name=object_name, file_sha256=file_sha256, manifest_sha256=manifest_sha256(manifest),
                  file_bytes=info.st_size, installed_at=now.replace(microsecond=0),
                  not_before=manifest.not_before, expires_at=manifest.expires_at,
                  purge_on_expiry=rules.purge_on_expiry,
                  content_key=content_key is not None, history=history)
    entries = {n: e for n, e in catalog.entries.items() if e.capsule_id != manifest.capsule_id}
    entries[manifest.name] = entry
    versions = dict(catalog.versions)
    versions[manifest.capsule_id] = store.state.version_record(manifest.capsule_id)
    write_file(store._root_fd, "catalog.json", Catalog(entries, versions).to_bytes(), checkpoint=crash)
    crash("catalogue replaced")
    kept = set(entry.object_names)
    for old in catalog.entries.values():
        if old.capsule_id == manifest.capsule_id:
            for old_object in old.object_names:
                if old_object not in kept:
                    remove_tree(store._objects_fd, old_object)
                    crash("previous version removed")
    store._persistence.flush_floor(crash)
    crash("floor saved")
    return entry

def _verify_copy(copy_path: Path, *, trusted_keys: Sequence[Ed25519PublicKey], identities: Sequence[Identity],
                 now: datetime, options: OpenOptions,
                 held: dict[str, tuple[Path, Path | None, Path | None, Path | None]]) -> tuple[Manifest, bytes | None]:
    """Verify the staged copy in full (``verify_capsule(full=True)``) as one version with the segments
    the store holds; return its manifest and, when it was opened with a key, its parsed document
    list as the store keeps it (``DOCUMENTS_TABLE_FILE``: ``table_columns_to_bytes``, sealed by
    ``seal_store_table``), so that an open need not parse DOCS again.

    A held segment was verified in full when it was installed and is a read-only store object
    since: it opens as one (sections pinned by its manifest, index digests not hashed again) and
    its frames are not decoded again, so a delta costs the work of its own segment, not of the
    whole version. Without identities, as ``verify_capsule``: every digest, no frames.
    """
    from .capsule import _InstalledObject, _open_capsule
    from .store import INSTALL_VERIFIED_SECTIONS

    if not identities:
        return verify_capsule(copy_path, trusted_keys=trusted_keys, identities=(), now=now, full=True,
                              options=options).manifest, None
    objects = {digest: (capsule, _InstalledObject(digest, INSTALL_VERIFIED_SECTIONS, index, documents_table=table))
               for digest, (capsule, index, _key, table) in held.items()}
    capsule = _open_capsule(copy_path, trusted_keys=trusted_keys, identities=identities, budget=None, now=now,
                            options=replace(options, prefer_hardware_decoder=False, frame_cache_bytes=0),
                            held_segments=objects)
    try:
        capsule.check_frames(skip_store_segments=True)
        from .hits import table_columns_to_bytes
        from .sealed import seal_store_table

        return capsule.manifest, seal_store_table(table_columns_to_bytes(capsule._documents), capsule._keys,
                                                  capsule.manifest)
    finally:
        capsule.close()


def _kept_history(store: "Store", catalog: Catalog, manifest: Manifest, object_name: str,
                  staged: Path) -> tuple[Entry, ...]:
    """The past versions kept beside the new one: at most ``keep_versions - 1``, newest first, fewer
    (oldest dropped first) when the store's quota needs the room.

    Raises:
        StoreError: the new object does not fit the quota even with no past version kept; nothing
            was changed (the staged object is removed by the caller).
    """
    settings = store.settings
    current = next((e for e in catalog.entries.values() if e.capsule_id == manifest.capsule_id), None)
    if current is None:
        history: list[Entry] = []
    elif current.object_name == object_name:  # a re-install of the installed file
        history = list(current.history)
    else:
        history = [replace(current, history=()), *current.history][:settings.keep_versions - 1]
    if settings.quota_bytes is None:
        return tuple(history)
    objects = store.path / "objects"
    others = [objects / name for e in catalog.entries.values() if e.capsule_id != manifest.capsule_id
              for name in e.object_names]
    reinstall = [objects / object_name] if current is not None and current.object_name == object_name else []
    while True:
        total = objects_bytes(*others, *reinstall, *(objects / e.object_name for e in history), staged)
        if total <= settings.quota_bytes:
            return tuple(history)
        if not history:
            raise StoreError(f"installing {manifest.name} v{manifest.version} would take the store to {total} bytes, "
                             f"past its quota of {settings.quota_bytes}; nothing changed (remove a capsule, or "
                             "raise the quota with edge settings --quota)")
        dropped = history.pop()
        log.info("dropping %s v%d from the history to stay inside the store quota", dropped.name, dropped.version)


#: Folder of an object holding the earlier segments of its version (FORMAT.md §13.5).
SEGMENTS_DIR = "segments"
#: A passphrase capsule's cached content key in its object (FORMAT.md §13.4); ``segments/SHA.key`` per segment.
CONTENT_KEY_FILE = "content.key"
#: The installed capsule's parsed document list, authenticated (FORMAT.md §13.8): what an open reads
#: instead of inflating and parsing DOCS.
DOCUMENTS_TABLE_FILE = "documents.table"


def _write_new_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to a new file ``name`` in ``dir_fd``, synced, then read-only (0444)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)


def held_segments(store: "Store") -> dict[str, tuple[Path, Path | None, Path | None, Path | None]]:
    """Every segment file the store holds: manifest sha256 -> (capsule file, extracted index or
    ``None``, cached content key or ``None``, stored document table or ``None``).

    The head of each installed entry (``objects/NAME/capsule``) and the earlier segments beside it
    (``objects/NAME/segments/SHA256.capsule``). Nothing here is trusted by name: a segment opens
    only under the digest a verified manifest pins.
    """
    held: dict[str, tuple[Path, Path | None, Path | None, Path | None]] = {}

    def present(path: Path) -> Path | None:
        return path if path.is_file() and not path.is_symlink() else None

    for entry in store._read_catalog().entries.values():
        directory = store.path / "objects" / entry.object_name
        held[entry.manifest_sha256] = (directory / "capsule", present(directory / INDEX_FILE),
                                       present(directory / CONTENT_KEY_FILE) if entry.content_key else None,
                                       present(directory / DOCUMENTS_TABLE_FILE))
        segments = directory / SEGMENTS_DIR
        if segments.is_dir() and not segments.is_symlink():
            for path in sorted(segments.glob("*.capsule")):
                digest = path.name.removesuffix(".capsule")
                if len(digest) == 64 and present(path):
                    held.setdefault(digest, (path, present(path.with_suffix(".annoy")),
                                             present(path.with_suffix(".key")), present(path.with_suffix(".table"))))
    return held


def _check_delta_base(manifest: Manifest, catalog: Catalog) -> None:
    """A delta applies to exactly the installed version it names as its newest earlier segment."""
    newest = manifest.segments.base[-1]
    current = next((e for e in catalog.entries.values() if e.capsule_id == manifest.capsule_id), None)
    if current is None or current.manifest_sha256 != newest.manifest_sha256:
        has = f"v{current.version}" if current is not None else "no version"
        raise DeltaBaseError(f"{manifest.name} v{manifest.version} is an update over v{newest.version} (manifest "
                             f"{newest.manifest_sha256[:12]}); this device has {has} of it"
                             + (" (the update was installed already)" if current is not None
                                and current.manifest_sha256 == manifest_sha256(manifest) else ""),
                             base_version=newest.version, installed_version=None if current is None else current.version)


def _link_segments(manifest: Manifest, held: dict[str, tuple[Path, Path | None, Path | None, Path | None]],
                   stage_fd: int) -> None:
    """Give the new object its earlier segments: hard links to the held, read-only files (copies
    where the file system refuses links), named by the manifest digest each one is pinned by: the
    capsule, and its extracted index, cached content key and stored document table if it has them."""
    os.mkdir(SEGMENTS_DIR, 0o755, dir_fd=stage_fd)
    segments_fd = open_subdir(stage_fd, SEGMENTS_DIR)
    try:
        for pin in manifest.segments.base:
            if pin.manifest_sha256 not in held:  # verified without a key: the segments were not opened
                raise DeltaBaseError(f"{manifest.name} v{manifest.version} is an update over v{pin.version}, which "
                                     "this device does not hold", base_version=manifest.segments.base[-1].version)
            capsule, index, key, table = held[pin.manifest_sha256]
            for source, name in ((capsule, f"{pin.manifest_sha256}.capsule"),
                                 (index, f"{pin.manifest_sha256}.annoy"), (key, f"{pin.manifest_sha256}.key"),
                                 (table, f"{pin.manifest_sha256}.table")):
                if source is None:
                    continue
                try:
                    os.link(source, name, dst_dir_fd=segments_fd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                    _copy_file(source, segments_fd, name, mode=0o400 if name.endswith(".key") else 0o444)
        os.fsync(segments_fd)
    finally:
        os.close(segments_fd)


def _copy_file(source: Path, dir_fd: int, name: str, *, mode: int) -> None:
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(src).st_size
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            copy_hashed(lambda n: os.read(src, n), dst, size, hashlib.sha256(), shrank=f"{source} shrank while copied")
            os.fsync(dst)
            os.fchmod(dst, mode)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _signers(store: "Store", copy_path: Path, trusted_keys: Sequence[Ed25519PublicKey], now: datetime) -> list[str]:
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
                           root=store.state.root, at=store.state.trusted_time(now))

def _seek_section(capsule, tag: str):
    """Position the verified copy ``capsule`` (a binary file) at section ``tag``; return its
    table entry."""
    from . import format as fmt

    header = fmt.parse_header(capsule.read(fmt.HEADER_BYTES), file_bytes=os.fstat(capsule.fileno()).st_size)
    entry = fmt.parse_section_table(capsule.read(header.table_bytes), header)[tag]
    capsule.seek(entry.offset)
    return entry


def _extract_index(copy_path: Path, manifest: Manifest, stage_fd: int) -> None:
    """Write the verified copy's unencrypted INDX section to ``index.annoy`` (0444) beside it.

    Annoy maps a whole file from its first byte, so an index inside the capsule can only be
    read by copying it into memory; a file of its own is mapped file-backed (evictable
    pages, nothing charged to the memory budget). Hashed again while copied.
    """
    with open(copy_path, "rb") as capsule:
        entry = _seek_section(capsule, "INDX")
        fd = os.open(INDEX_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=stage_fd)
        try:
            hasher = hashlib.sha256()
            copy_hashed(capsule.read, fd, entry.length, hasher,
                         shrank=f"{copy_path} shrank while its index was extracted")
            if hasher.hexdigest() != manifest.sections["INDX"].sha256:
                raise StoreError("the index changed while it was extracted")
            os.fsync(fd)
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)


def _extract_lexical(copy_path: Path, manifest: Manifest, stage_fd: int) -> None:
    """Write the verified copy's unencrypted ``tantivy-7`` LEXI, unpacked, to ``lexical/``
    (files 0444) beside it.

    An open then lets tantivy map these files (page cache, nothing but tantivy's own overhead
    charged to the memory budget) instead of inflating the section into memfds. The section is
    hashed again while read, inflated within its declared size and checked as at every open
    (archive table, ``meta.json``, footers, CRC-32, empty doc stores); an open checks the
    files again before tantivy sees them (``TantivyLexicalIndex.open_extracted``).
    """
    from .lexical_tantivy import MAX_WINDOW_BYTES, check_files, parse_archive
    from .sealed import decompress_bounded, zstd_decompressor

    info = manifest.lexical
    with open(copy_path, "rb") as capsule:
        entry = _seek_section(capsule, "LEXI")
        section = capsule.read(entry.length)
    if len(section) != entry.length or hashlib.sha256(section).hexdigest() != manifest.sections["LEXI"].sha256:
        raise StoreError("the lexical index changed while it was extracted")
    archive = decompress_bounded(section, info.plaintext_bytes, zstd_decompressor(max_window_bytes=MAX_WINDOW_BYTES),
                                 what="lexical index", require_content_size=True)
    del section
    files = parse_archive(archive)
    check_files(files, n_chunks=manifest.n_chunks)
    os.mkdir(LEXICAL_DIR, 0o700, dir_fd=stage_fd)
    lexical_fd = os.open(LEXICAL_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stage_fd)
    try:
        for name, data in files.items():
            _write_new_file(lexical_fd, name, data)
        os.fsync(lexical_fd)
    finally:
        os.close(lexical_fd)


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
