"""A long-running process that serves the capsules of a device store (``edge serve``).

``CapsuleService`` keeps the installed capsules open, one model session per model, inside one
memory budget, and follows the store: before each request it looks at the catalogue (one
``stat``), and when an ``edge install``, ``edge remove`` or a purge changed it, it opens the new
versions and closes what is gone. A replaced capsule is switched between two requests, never
inside one, so no result mixes versions and no request fails during the switch.

Thread safety: a ``CapsuleService`` is **not** thread-safe, and neither are ``Capsule`` and
``CapsuleSet`` (their frame cache, decoder, SQLite connection and rate log are per object).
Every call must come from one thread; ``edge.server`` runs them all on a single worker thread
(a ``ThreadPoolExecutor`` with one worker) and queues requests in front of it. On a 2-4 core
board one query already keeps a core busy (embedding, frame decode), so serialising costs
little throughput and bounds memory: one query's arrays at a time.

Source: FORMAT.md §13 (device store), README "Device service".
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .budget import MemoryBudget
from .capsule import Capsule, Identity, OpenOptions
from .capsule_set import CapsuleSet
from .clock import format_time, utc_now
from .errors import EdgeError, ExpiredCapsuleError, NotYetValidError, QueryError, StoreError
from .hits import Hit
from .retrieval import SearchResult
from .store import Store
from .store_catalog import Entry

__all__ = ["CapsuleService", "CapsuleStatus", "ServiceSearch", "NoCapsuleError", "UnknownCapsuleError"]

log = logging.getLogger(__name__)

#: Seconds between looks at the store's entries when the catalogue did not change (expiry and
#: purge-on-expiry happen with time, not with a write).
EXPIRY_CHECK_S = 30.0


class NoCapsuleError(StoreError):
    """No capsule is installed (or none is valid now) to answer from."""


class UnknownCapsuleError(StoreError):
    """A request names a capsule that is not installed."""


@dataclass(frozen=True)
class CapsuleStatus:
    """One installed capsule as the service sees it.

    Attributes:
        name, version, capsule_id: from the store's catalogue.
        status: ``"ok"`` (open and served), ``"expired"``, ``"not-yet-valid"`` or ``"error"``
            (it failed to open; ``error`` says why, in one line).
        expires_at, not_before: UTC.
        days_left: whole days until expiry at the trusted time (0 when expired).
        n_chunks: chunks in the capsule (0 unless open).
        error: why it could not be opened, or ``""``.
    """

    name: str
    version: int
    capsule_id: str
    status: str
    expires_at: datetime
    not_before: datetime
    days_left: int
    n_chunks: int = 0
    error: str = ""

    def to_json(self) -> dict[str, object]:
        """JSON-ready, times as ``YYYY-MM-DDTHH:MM:SSZ``."""
        return {"name": self.name, "version": self.version, "capsule_id": self.capsule_id, "status": self.status,
                "expires_at": format_time(self.expires_at), "not_before": format_time(self.not_before),
                "days_left": self.days_left, "n_chunks": self.n_chunks, "error": self.error}


@dataclass(frozen=True)
class ServiceSearch:
    """What one search of the service returned.

    Attributes:
        result: the ``SearchResult`` (hits carry ``capsule``).
        capsules: ``{name: version}`` of the capsules searched.
        skipped: ``{name: status}`` of installed capsules left out (expired, not yet valid, failed).
        elapsed_ms: wall time of the search, milliseconds.
    """

    result: SearchResult
    capsules: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0


@dataclass
class _Open:
    entry: Entry
    capsule: Capsule


class CapsuleService:
    """The store's capsules, open and kept in step with the store. One thread only (see module).

    Args:
        store: the device store (kept open; the service does not close it).
        identities: device keys or passphrase for capsules without a cached content key.
        trusted_keys: publisher keys; empty uses the store's trust document or provisioned keys
            as ``Store.open`` does.
        budget: one budget for every capsule and model session (``None``: unlimited).
        options: as for ``open_capsule`` (threads, frame cache).

    Raises (from every method that touches the store): ``StoreError`` when the catalogue is
    damaged or unreadable.
    """

    def __init__(self, store: Store, *, identities: Sequence[Identity] = (),
                 trusted_keys: Sequence[Ed25519PublicKey] = (), budget: MemoryBudget | None = None,
                 options: OpenOptions | None = None) -> None:
        self.store = store
        self.identities = list(identities)
        self.trusted_keys = list(trusted_keys)
        self.budget = budget if budget is not None else MemoryBudget(None)
        self.options = options or OpenOptions()
        self._open: dict[str, _Open] = {}
        self._failed: dict[str, tuple[str, str]] = {}  # name -> (object name, one-line error)
        self._entries: dict[str, Entry] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._trust_stamp: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self._embedders: dict[str, object] = {}  # model sha256 -> QueryEmbedder in use
        self.generation = 0  # bumped whenever the set of open capsules changes

    # -- following the store ----------------------------------------------------------------
    def refresh(self, *, now: datetime | None = None, force: bool = False) -> bool:
        """Follow the store: open new or replaced capsules, close removed, expired and purged ones.

        Cheap when nothing changed (one ``stat`` of the catalogue); the entries are re-read when
        the catalogue changed, every ``EXPIRY_CHECK_S`` seconds, or with ``force``.

        Returns:
            Whether the set of open capsules changed.
        """
        stamp = self.store.catalog_stamp()
        trust = self.store.trust_stamp()
        monotonic = time.monotonic()
        if (not force and stamp == self._stamp and trust == self._trust_stamp
                and monotonic - self._checked_at < EXPIRY_CHECK_S):
            return False
        now = utc_now(now)
        trust_changed = self._trust_stamp is not None and trust != self._trust_stamp
        if stamp != self._stamp or trust != self._trust_stamp:
            self.store.reload_state()
        self._trust_stamp = trust
        entries = {e.name: e for e in self.store.list(now=now)}  # purges what asks for it
        self._stamp, self._checked_at, self._entries = self.store.catalog_stamp(), monotonic, entries
        at = self.store.state.trusted_time(now)
        changed = False
        for name in list(self._open):
            held = self._open[name]
            entry = entries.get(name)
            if entry is None or entry.status(at) != "ok":
                log.info("capsule %s v%d %s: no longer served", name, held.entry.version,
                         "removed" if entry is None else entry.status(at))
                self._close(name)
                changed = True
        if trust_changed:
            # A new trust document (a revoked or rotated publisher key, another threshold): every
            # capsule is judged again; one it refuses stops being served.
            log.info("the device's trust document changed: verifying the served capsules again")
            self._failed.clear()
        for name, entry in entries.items():
            if entry.status(at) != "ok":
                continue
            held = self._open.get(name)
            if held is not None and held.entry.object_name == entry.object_name and not trust_changed:
                continue
            failed = self._failed.get(name)
            if failed is not None and failed[0] == entry.object_name:
                continue  # it failed to open already; retried when its object changes
            changed |= self._switch(name, entry, now, keep_old_on_failure=not trust_changed)
        if changed:
            self.generation += 1
        return changed

    def _switch(self, name: str, entry: Entry, now: datetime, *, keep_old_on_failure: bool = True) -> bool:
        """Open ``entry`` and serve it under ``name`` instead of the version open now, if any.

        When the new one fails to open, the old one goes on being served, unless
        ``keep_old_on_failure`` is false (the trust changed: the old one would fail the same way)."""
        closed_old = False
        try:
            try:
                capsule = self._open_entry(name, now)
            except EdgeError as exc:
                if name not in self._open or exc.expect != "over-budget":
                    raise
                self._close(name)  # both versions do not fit: the old one makes room
                closed_old = True
                capsule = self._open_entry(name, now)
        except EdgeError as exc:
            self._failed[name] = (entry.object_name, str(exc))
            log.error("capsule %s v%d cannot be served: %s", name, entry.version, exc)
            if not keep_old_on_failure and name in self._open:
                self._close(name)
                closed_old = True
            return closed_old
        self._failed.pop(name, None)
        if name in self._open:
            self._close(name)
        self._open[name] = _Open(entry, capsule)
        log.info("serving capsule %s v%d (%s)", name, entry.version, entry.capsule_id)
        return True

    def _open_entry(self, name: str, now: datetime) -> Capsule:
        capsule = self.store.open(name, identities=self.identities, trusted_keys=self.trusted_keys,
                                  budget=self.budget, now=now, options=self.options, embedders=self._embedders)
        self._embedders.setdefault(capsule.manifest.model.sha256, capsule.embedder)
        return capsule

    def _close(self, name: str) -> None:
        held = self._open.pop(name)
        capsule = held.capsule
        sha = capsule.manifest.model.sha256
        if any(o.capsule.manifest.model.sha256 == sha for o in self._open.values()):
            # The session lives on for the others: its reservation moves to the service.
            self.budget.transfer(capsule._prefix + "model", f"service/model/{sha[:16]}")
        else:
            self._embedders.pop(sha, None)
            self.budget.release(f"service/model/{sha[:16]}")
        capsule.close()

    def close(self) -> None:
        """Close every capsule (the store stays open). Idempotent."""
        for name in list(self._open):
            self._close(name)

    # -- what is served ---------------------------------------------------------------------
    def statuses(self, *, now: datetime | None = None) -> list[CapsuleStatus]:
        """Return every installed capsule with its status, by name."""
        self.refresh(now=now)
        at = self.store.state.trusted_time(utc_now(now))
        out = []
        for name, entry in sorted(self._entries.items()):
            held = self._open.get(name)
            status = entry.status(at)
            error = ""
            if status == "ok" and held is None:
                status, error = "error", self._failed.get(name, ("", "not opened"))[1]
            days = max(0, int((entry.expires_at - at).total_seconds() // 86400))
            out.append(CapsuleStatus(name, entry.version, entry.capsule_id, status, entry.expires_at,
                                     entry.not_before, days, held.capsule.n_live_chunks if held else 0, error))
        return out

    def _select(self, names: Sequence[str] | None, at: datetime, *, exact: bool = False
                ) -> tuple[list[_Open], dict[str, str]]:
        """The open capsules a request asks for (glob patterns, or names with ``exact``;
        ``None``: all), and those it asked for that are installed but not served, with their status.

        Raises:
            NoCapsuleError: nothing is installed (or matched).
            UnknownCapsuleError: a name matches no installed capsule.
            ExpiredCapsuleError, NotYetValidError: every capsule asked for is expired (not yet valid).
        """
        if not self._entries:
            raise NoCapsuleError("no capsule is installed")
        patterns = list(names) if names else ["*"]
        wanted = []
        for pattern in patterns:
            matched = ([pattern] if pattern in self._entries else []) if exact else \
                [n for n in sorted(self._entries) if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise UnknownCapsuleError(f"no capsule named {pattern!r} is installed")
            wanted += [n for n in matched if n not in wanted]
        chosen = [self._open[n] for n in wanted if n in self._open]
        skipped = {}
        for n in wanted:
            if n not in self._open:
                status = self._entries[n].status(at)
                skipped[n] = "error" if status == "ok" else status
        if not chosen:
            statuses = set(skipped.values())
            first = next(iter(skipped))
            entry = self._entries[first]
            if statuses == {"expired"}:
                raise ExpiredCapsuleError(f"capsule {first} expired at {format_time(entry.expires_at)}",
                                          expires_at=entry.expires_at, now=at)
            if statuses == {"not-yet-valid"}:
                raise NotYetValidError(f"capsule {first} is not valid before {format_time(entry.not_before)}",
                                       not_before=entry.not_before, now=at)
            raise NoCapsuleError(f"no capsule can be served: {first}: {self._failed.get(first, ('', skipped[first]))[1]}")
        return chosen, skipped

    def search(self, query: str, k: int = 5, *, mode: str | None = None, capsules: Sequence[str] | None = None,
               documents: Sequence[str] | None = None, now: datetime | None = None,
               version: int | None = None) -> ServiceSearch:
        """Search the served capsules (``CapsuleSet.search``), leaving out the ones not valid now.

        Args:
            query, k, mode, documents: as for ``CapsuleSet.search``.
            capsules: installed names or ``fnmatch`` patterns (``None``: every capsule).
            now: time of the request (``None``: the clock).
            version: answer as this past version of the one capsule named in ``capsules`` would
                (``Store.open(version=)``: its own rules and expiry apply); opened for this
                request only, sharing the served model session.

        Returns:
            A ``ServiceSearch``; ``skipped`` names the capsules asked for and not searched.

        Raises:
            NoCapsuleError, UnknownCapsuleError: see ``_select``.
            ExpiredCapsuleError, NotYetValidError: every capsule asked for is outside its window.
            Everything ``CapsuleSet.search`` raises (``QueryError``, ``RuleViolationError``,
            ``RateLimitedError``, frame and integrity errors).
        """
        started = time.perf_counter()
        self.refresh(now=now)
        now = utc_now(now)
        if version is not None:
            return self._search_past(query, k, mode=mode, capsules=capsules, documents=documents, now=now,
                                     version=version, started=started)
        chosen, skipped = self._select(capsules, self.store.state.trusted_time(now))
        view = CapsuleSet([o.capsule for o in chosen], self.budget)  # a view: never closed here
        try:
            result = view.search(query, k=k, mode=mode, documents=documents, now=now)
        except (ExpiredCapsuleError, NotYetValidError):
            # One expired between two looks at the store: look again, search the rest once.
            if not self.refresh(now=now, force=True):
                raise
            return self.search(query, k, mode=mode, capsules=capsules, documents=documents, now=now)
        return ServiceSearch(result, {o.entry.name: o.entry.version for o in chosen}, skipped,
                             (time.perf_counter() - started) * 1e3)

    def _search_past(self, query: str, k: int, *, mode: str | None, capsules: Sequence[str] | None,
                     documents: Sequence[str] | None, now: datetime, version: int, started: float) -> ServiceSearch:
        if not capsules or len(capsules) != 1 or any(c in capsules[0] for c in "*?["):
            raise QueryError("version= answers as a past version of one capsule: name it with capsule=")
        name = capsules[0]
        if name not in self._entries:
            raise UnknownCapsuleError(f"no capsule named {name!r} is installed")
        try:
            past = self.store.open(name, identities=self.identities, trusted_keys=self.trusted_keys,
                                   budget=self.budget, now=now, options=self.options, embedders=self._embedders,
                                   version=version)
        except StoreError as exc:
            raise UnknownCapsuleError(str(exc)) from None
        with past:
            result = CapsuleSet([past], self.budget).search(query, k=k, mode=mode, documents=documents, now=now)
        return ServiceSearch(result, {name: version}, {}, (time.perf_counter() - started) * 1e3)

    def read(self, name: str, chunk_id: int, *, now: datetime | None = None) -> Hit:
        """Return one chunk of a served capsule (``Capsule.read``: the rules apply).

        Raises:
            UnknownCapsuleError, NoCapsuleError, ExpiredCapsuleError, NotYetValidError: as ``search``.
            QueryError: ``chunk_id`` out of range.
            RuleViolationError: the rules forbid reading.
        """
        self.refresh(now=now)
        chosen, _ = self._select([name], self.store.state.trusted_time(utc_now(now)), exact=True)
        capsule = chosen[0].capsule
        if not 0 <= chunk_id < capsule.n_chunks:
            raise QueryError(f"chunk {chunk_id} is out of range: capsule {name} has {capsule.n_chunks} chunks")
        try:
            return capsule.read(chunk_id, now=now)
        except ValueError as exc:  # removed by a later version's tombstone
            raise QueryError(str(exc)) from None

    @property
    def served(self) -> dict[str, Capsule]:
        """The open capsules by name (read-only use, from the service's thread)."""
        return {name: held.capsule for name, held in self._open.items()}
