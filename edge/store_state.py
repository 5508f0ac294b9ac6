"""The device state of a store, kept on disk: time floor, trust document, rate log (FORMAT.md §13).

``StorePersistence`` is the ``edge.trust.StatePersistence`` a ``Store`` gives its ``DeviceState``:
the state changes in memory, then calls it to keep the change. Version records are not here:
``Store.install`` writes them together with the catalogue, in the same rename.

Files (all in the store directory, written by ``edge._files.atomic_write``)::

    clock.json (+ clock.json.lock)   {"floor": time}: written once it moved FLOOR_WRITE_STEP_S
    trust.json                       the installed trust document, exact bytes
    uses/<capsule_id>.json (+ .lock) {"times": [...]}: the rate-limit log of one capsule

Source: FORMAT.md §13.2 (floor), §12 (trust), §4.2 (rate_limit).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from .clock import format_time
from .errors import EdgeError, RuleViolationError, StoreError
from .manifest import Manifest, canonical_json
from .rules import RateLimit, admit_use
from .store_catalog import parse_store_time
from .store_files import read_file, write_file
from .trust import DeviceState, TrustRoot, parse_trust_document

if TYPE_CHECKING:
    from .store import Store

__all__ = ["FLOOR_WRITE_STEP_S", "StorePersistence", "load_device_state"]

#: The floor is written when it has advanced this far past the stored value (flash wear).
FLOOR_WRITE_STEP_S = 60


def _read_trust(store: "Store") -> TrustRoot | None:
    raw = read_file(store._root_fd, "trust.json", missing_ok=True)
    if raw is None:
        return None
    try:
        return parse_trust_document(raw)[0]
    except EdgeError as exc:
        raise StoreError(f"store file trust.json is damaged: {exc}") from None


def load_device_state(store: "Store", *, hardware_id: str | None) -> tuple[DeviceState, "StorePersistence"]:
    """Read the store's trust document, floor and version records; return its state and persistence.

    Raises:
        StoreError: a state file is damaged.
    """
    persistence = StorePersistence(store)
    state = DeviceState(root=_read_trust(store), floor_at=persistence.stored_floor, hardware_id=hardware_id,
                        versions=store._read_catalog().versions, persistence=persistence)
    persistence.state = state
    return state, persistence


class StorePersistence:
    """Keeps a store's ``DeviceState`` on disk (``edge.trust.StatePersistence``).

    Attributes:
        stored_floor: the floor as last read from or written to ``clock.json``.
        state: the state it persists (set by ``load_device_state``).
    """

    def __init__(self, store: "Store") -> None:
        self._store = store
        self.stored_floor = self._read_floor()
        self.state: DeviceState | None = None

    def reload(self) -> None:
        """Re-read the trust document and version records (another process may have changed them)."""
        root = self.state.root
        raw = read_file(self._store._root_fd, "trust.json", missing_ok=True)
        if raw is not None and (root is None or raw != root.raw):
            root = _read_trust(self._store)
        self.state.refresh(root=root, versions=self._store._read_catalog().versions)

    def floor_advanced(self, floor_at: datetime) -> None:
        """Write the floor once it moved ``FLOOR_WRITE_STEP_S`` past the stored one (flash wear)."""
        if self.stored_floor is None or (floor_at - self.stored_floor).total_seconds() >= FLOOR_WRITE_STEP_S:
            self.flush_floor()

    def flush_floor(self, crash: Callable[[str], None] | None = None) -> None:
        """Write the state's floor now (never lowering the stored one)."""
        if self.state is not None and self.state.floor_at is not None:
            self.stored_floor = self._raise_floor(self.state.floor_at, crash)

    def save_trust(self, doc: TrustRoot) -> None:
        """Write a newly verified trust document's exact bytes to ``trust.json``."""
        write_file(self._store._root_fd, "trust.json", doc.raw)

    def capsule_expired(self, manifest: Manifest, exc: Exception) -> None:
        """Purge the installed capsule if its rules ask for it (FORMAT.md §13.4)."""
        self._store._purge_expired(now=getattr(exc, "now", None), only_capsule_id=manifest.capsule_id)

    def record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        """Admit one use at trusted time ``at`` across processes (flock on the log), or raise.

        Raises:
            RateLimitedError: the limit is reached.
            RuleViolationError: the store is read-only (a per-process count would let a kiosk,
                one process per query, query without limit: fail closed).
            StoreError: the log is damaged.
        """
        self._record_use(capsule_id, limit, at)

    def _read_floor(self) -> datetime | None:
        data = read_file(self._store._root_fd, "clock.json", missing_ok=True)
        if data is None:
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            raise StoreError("store file clock.json is damaged") from None
        if not isinstance(obj, dict) or set(obj) != {"floor"}:
            raise StoreError("store file clock.json is damaged")
        return parse_store_time(obj["floor"], "clock.json")

    def _raise_floor(self, floor_at: datetime, crash: Callable[[str], None] | None = None) -> datetime:
        if self._store.read_only:
            return floor_at  # kept in memory for this process only
        with self._store._lock("clock.json.lock"):
            stored = self._read_floor()
            if stored is not None and stored >= floor_at:
                return stored
            write_file(self._store._root_fd, "clock.json", canonical_json({"floor": format_time(floor_at)}),
                       checkpoint=crash)
            return floor_at

    def _record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        if self._store.read_only:  # fail closed: a count kept per process would let a kiosk query forever
            raise RuleViolationError(f"capsule {capsule_id} has a rate_limit rule ({limit.max_queries} per "
                                     f"{limit.window_s} s) that cannot be enforced: the device store {self._store.path} "
                                     "is read-only, so uses cannot be counted across processes")
        name = f"{capsule_id}.json"
        with self._store._lock(f"{capsule_id}.lock", self._store._uses_fd):
            data = read_file(self._store._uses_fd, name, missing_ok=True)
            times = []
            if data is not None:
                try:
                    times = [parse_store_time(t, name) for t in json.loads(data)["times"]]
                except (ValueError, KeyError, TypeError):
                    raise StoreError(f"store file uses/{name} is damaged") from None
            kept = admit_use(times, limit, at)
            write_file(self._store._uses_fd, name, canonical_json({"times": [format_time(t) for t in kept]}))
