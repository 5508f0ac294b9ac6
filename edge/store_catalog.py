"""The store's catalogue (``catalog.json``): installed entries by name, version records by capsule id.

One canonical-JSON file that ``Store`` replaces atomically; its rename is the single switch that
makes an install, a removal or a purge visible. Parsing is strict: unknown or missing fields,
unsafe object names and malformed records are ``StoreError``.

Source: FORMAT.md §13.1 (version records), §13.4 (purge).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime

from .clock import format_time, parse_time
from .errors import CapsuleError, StoreError
from .manifest import canonical_json, parse_canonical_json
from .trust import VersionRecord

__all__ = ["STORE_FORMAT", "Entry", "Catalog", "parse_store_time"]

STORE_FORMAT = "edge-store/1"
OBJECT_NAME = re.compile(r"[0-9a-f]{32}-v[0-9]{1,16}-[0-9a-f]{12}")
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX64 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
#: Most past versions a store keeps per capsule (``StoreSettings.keep_versions`` - 1).
MAX_HISTORY = 63


def parse_store_time(text: object, what: str) -> datetime:
    """Parse a ``YYYY-MM-DDTHH:MM:SSZ`` time from store file ``what``; ``StoreError`` if it is not one."""
    if not isinstance(text, str):
        raise StoreError(f"store file {what} is damaged: bad time")
    try:
        return parse_time(text)
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
        history: past versions the store keeps for reading (``Store.open(..., version=)``),
            newest first, each an ``Entry`` of its own object (FORMAT.md §13.6).
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
    history: tuple["Entry", ...] = ()

    @property
    def object_names(self) -> list[str]:
        """The objects this entry references: its own, then its past versions'."""
        return [self.object_name, *(past.object_name for past in self.history)]

    def status(self, at: datetime) -> str:
        """Return ``"ok"``, ``"expired"`` or ``"not-yet-valid"`` at trusted time ``at``."""
        if at >= self.expires_at:
            return "expired"
        if at < self.not_before:
            return "not-yet-valid"
        return "ok"

    def to_json(self) -> dict[str, object]:
        """Return the catalogue's JSON object for this entry (times as ``YYYY-MM-DDTHH:MM:SSZ``)."""
        out = asdict(replace(self, history=()))
        del out["name"], out["history"]
        for key in ("installed_at", "not_before", "expires_at"):
            out[key] = format_time(out[key])
        if self.history:
            out["history"] = [past.to_json() for past in self.history]
        return out

    @classmethod
    def from_json(cls, name: str, obj: object) -> "Entry":
        """Parse one catalogue entry.

        Raises:
            StoreError: a missing or malformed field, or an unsafe object name.
        """
        fields = {"capsule_id", "version", "object_name", "file_sha256", "manifest_sha256", "file_bytes",
                  "installed_at", "not_before", "expires_at", "purge_on_expiry", "content_key"}
        if not isinstance(obj, dict) or set(obj) - {"history"} != fields or not NAME.fullmatch(name):
            raise StoreError(f"store catalogue entry {name!r} is damaged")
        history = obj.get("history", [])
        if not isinstance(history, list) or len(history) > MAX_HISTORY or not all(
                isinstance(past, dict) and "history" not in past for past in history):
            raise StoreError(f"store catalogue entry {name!r} has a damaged history")
        if (not isinstance(obj["object_name"], str) or not OBJECT_NAME.fullmatch(obj["object_name"])
                or not isinstance(obj["capsule_id"], str) or not HEX32.fullmatch(obj["capsule_id"])
                or not isinstance(obj["version"], int) or not isinstance(obj["file_bytes"], int)):
            raise StoreError(f"store catalogue entry {name!r} is damaged")
        return cls(name=name, capsule_id=obj["capsule_id"], version=obj["version"], object_name=obj["object_name"],
                   file_sha256=str(obj["file_sha256"]), manifest_sha256=str(obj["manifest_sha256"]),
                   file_bytes=obj["file_bytes"], installed_at=parse_store_time(obj["installed_at"], "catalog.json"),
                   not_before=parse_store_time(obj["not_before"], "catalog.json"),
                   expires_at=parse_store_time(obj["expires_at"], "catalog.json"),
                   purge_on_expiry=bool(obj["purge_on_expiry"]), content_key=bool(obj["content_key"]),
                   history=tuple(cls.from_json(name, past) for past in history))


@dataclass
class Catalog:
    """The parsed catalogue: ``entries`` by name, ``versions`` (``VersionRecord``) by capsule id."""

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
    def from_bytes(cls, data: bytes) -> "Catalog":
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
            if (not HEX32.fullmatch(cid) or not isinstance(rec, dict)
                    or set(rec) - {"signers"} != {"version", "manifest_sha256"}
                    or not isinstance(rec["version"], int) or not isinstance(rec["manifest_sha256"], str)):
                raise StoreError("store file catalog.json has a damaged version record")
            signers = rec.get("signers", [])
            if (not isinstance(signers, list) or len(signers) > 64
                    or not all(isinstance(k, str) and HEX64.fullmatch(k) for k in signers)):
                raise StoreError("store file catalog.json has a damaged version record")
            versions[cid] = VersionRecord(rec["version"], rec["manifest_sha256"], frozenset(signers))
        return cls({name: Entry.from_json(name, e) for name, e in obj["entries"].items()}, versions)
