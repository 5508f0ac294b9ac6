"""Capsule rules: parse the manifest's ``rules`` object and enforce each rule.

This module owns the meaning of the rules of FORMAT.md §4.2 (``devices``, ``operations``,
``query_limits``, ``rate_limit``, ``purge_on_expiry``, ``min_runtime``) and the per-use checks
that run before every search, read and export. It does no file IO and reads no clock: callers
pass the trusted time ``at`` (FORMAT.md §13.2) and a ``UseLog`` that remembers uses (in memory
here; the device store keeps one on disk so that separate processes share a rate limit).

Example::

    rules = parse_rules(manifest.rules)               # CapsuleFormatError if malformed
    rules.check_device(device_keyids={keyid(k.public_key())}, hardware_id="kiosk-7")
    rules.check_runtime(__version__)                  # RuleViolationError if too old
    policy = UsePolicy(manifest, rules, log=MemoryUseLog())
    policy.before_use("search", at=now, k=5)          # before returning any text

Source: FORMAT.md §4.2 (rules), §13.3 (rate log).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from .errors import (
    CapsuleFormatError,
    ExpiredCapsuleError,
    NotYetValidError,
    RateLimitedError,
    RuleViolationError,
)
from .manifest import KNOWN_RULES, Manifest, format_time

log = logging.getLogger(__name__)

#: Operations a capsule can allow (FORMAT.md §4.2 ``operations``).
OPERATIONS = ("export", "read", "search")
MAX_LIST_ITEMS = 1024
MAX_K_LIMIT = 1024
#: The most results one search may ask for when a capsule sets no ``query_limits.max_k`` and
#: does not allow ``export`` (FORMAT.md §4.2): otherwise ``k = n_chunks`` is an export.
DEFAULT_MAX_K_WITHOUT_EXPORT = 50
MAX_QUERIES_LIMIT = 10000
MAX_WINDOW_S = 31 * 24 * 3600
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HARDWARE_ID = re.compile(r"[\x21-\x7e]{1,128}")
_VERSION = re.compile(r"(\d{1,5})\.(\d{1,5})\.(\d{1,5})")

assert KNOWN_RULES == {"devices", "operations", "query_limits", "rate_limit", "purge_on_expiry", "min_runtime"}


@dataclass(frozen=True)
class RateLimit:
    """At most ``max_queries`` uses in any ``window_s`` seconds (FORMAT.md §4.2)."""

    max_queries: int
    window_s: int


@dataclass(frozen=True)
class Rules:
    """The known rules of one capsule, checked; ``None`` means the rule is absent.

    Attributes:
        device_keyids: X25519 key ids (hex64) allowed to use the capsule, or ``None``.
        hardware_ids: hardware ids allowed, or ``None``.
        allowed_operations: subset of ``OPERATIONS`` (all three when the rule is absent).
        max_k: largest number of results one search may ask for, or ``None`` (then
            ``DEFAULT_MAX_K_WITHOUT_EXPORT`` applies unless export is allowed).
        rate_limit: ``RateLimit`` or ``None``.
        purge_on_expiry: the store deletes the capsule and its cached key once expired.
        min_runtime: ``(major, minor, patch)`` the runtime must be at least, or ``None``.
        ignored_optional: names of unknown rules marked optional (ignored).
    """

    device_keyids: frozenset[str] | None = None
    hardware_ids: frozenset[str] | None = None
    allowed_operations: frozenset[str] = frozenset(OPERATIONS)
    max_k: int | None = None
    rate_limit: RateLimit | None = None
    purge_on_expiry: bool = False
    min_runtime: tuple[int, int, int] | None = None
    ignored_optional: tuple[str, ...] = ()

    def check_device(self, *, device_keyids: Iterable[str], hardware_id: str | None) -> None:
        """Raise unless this device matches every non-empty list of the ``devices`` rule.

        Args:
            device_keyids: key ids (hex64) of the device's X25519 identities.
            hardware_id: the device's hardware id, or ``None`` when unknown (never matches).

        Raises:
            RuleViolationError: the device key or hardware id is not listed.

        Source: FORMAT.md §4.2 ``devices``.
        """
        if self.device_keyids is not None:
            mine = set(device_keyids)
            if not mine & self.device_keyids:
                shown = ", ".join(sorted(k[:16] for k in mine)) or "none given"
                raise RuleViolationError(
                    f"capsule is restricted to {len(self.device_keyids)} device key(s); this device's "
                    f"key id(s): {shown}")
        if self.hardware_ids is not None and hardware_id not in self.hardware_ids:
            raise RuleViolationError(
                f"capsule is restricted to {len(self.hardware_ids)} hardware id(s); this device's is "
                f"{hardware_id if hardware_id is not None else 'unknown'}")

    def check_runtime(self, runtime_version: str) -> None:
        """Raise if the capsule needs a newer runtime than ``runtime_version``.

        Raises:
            RuleViolationError: ``runtime_version`` is lower than ``min_runtime``.
            ValueError: ``runtime_version`` does not start with MAJOR.MINOR.PATCH.

        Source: FORMAT.md §4.2 ``min_runtime``.
        """
        if self.min_runtime is None:
            return
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", runtime_version)
        if match is None:
            raise ValueError(f"runtime version {runtime_version!r} is not MAJOR.MINOR.PATCH")
        mine = tuple(int(part) for part in match.groups())
        if mine < self.min_runtime:
            need = ".".join(str(part) for part in self.min_runtime)
            raise RuleViolationError(f"capsule needs runtime {need} or newer, this is {runtime_version}")

    def check_operation(self, operation: str, *, k: int | None = None) -> None:
        """Raise if ``operation`` (with ``k`` results, for search) is not allowed.

        Raises:
            RuleViolationError: the operation is not allowed, or ``k > max_k`` (without
                ``max_k``: ``k > DEFAULT_MAX_K_WITHOUT_EXPORT`` when export is not allowed).
            ValueError: unknown operation name.

        Source: FORMAT.md §4.2 ``operations``, ``query_limits``.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        if operation not in self.allowed_operations:
            raise RuleViolationError(
                f"operation {operation!r} is not allowed by this capsule's rules "
                f"(allowed: {', '.join(sorted(self.allowed_operations))})")
        limit = self.max_k
        if limit is None and "export" not in self.allowed_operations:
            limit = DEFAULT_MAX_K_WITHOUT_EXPORT
        if operation == "search" and limit is not None and k is not None and k > limit:
            why = "" if self.max_k is not None else " (the default when its rules do not allow export)"
            raise RuleViolationError(f"search asks for {k} results, this capsule allows at most {limit}{why}")


class _Params:
    """One rule's parameter object, read key by key; unknown keys refused at ``done()``."""

    def __init__(self, name: str, body: dict[str, Any]) -> None:
        self.name = name
        self.body = body
        self.seen = {"optional"}

    def get(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.body:
            raise CapsuleFormatError(f"manifest.rules.{self.name}.{key} is missing")
        return self.body[key]

    def int(self, key: str, low: int, high: int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CapsuleFormatError(f"manifest.rules.{self.name}.{key} must be an integer in {low}..{high}")
        return value

    def sorted_list(self, key: str, pattern: re.Pattern[str], low: int, high: int) -> list[str]:
        value = self.get(key)
        if (not isinstance(value, list) or not low <= len(value) <= high
                or not all(isinstance(v, str) and pattern.fullmatch(v) for v in value)):
            raise CapsuleFormatError(
                f"manifest.rules.{self.name}.{key} must be a list of {low}..{high} well-formed strings")
        if value != sorted(set(value)):
            raise CapsuleFormatError(f"manifest.rules.{self.name}.{key} must be sorted without duplicates")
        return value

    def done(self) -> None:
        extra = sorted(set(self.body) - self.seen)
        if extra:
            raise CapsuleFormatError(f"manifest.rules.{self.name} has unknown key(s) {', '.join(extra)}")


def parse_rules(raw: dict[str, dict[str, Any]]) -> Rules:
    """Check the parameters of every known rule and return them as ``Rules``.

    Unknown rules are not judged here (``Manifest.check_rules`` refuses unknown required ones);
    unknown optional ones are listed in ``ignored_optional``.

    Args:
        raw: ``Manifest.rules`` (rule name -> parameter object with ``"optional"``).

    Raises:
        CapsuleFormatError: a known rule has a missing, unknown or out-of-range parameter.

    Source: FORMAT.md §4.2.
    """
    kwargs: dict[str, Any] = {}
    ignored = []
    for name in sorted(raw):
        body = raw[name]
        if name not in KNOWN_RULES:
            if body.get("optional") is True:
                ignored.append(name)
            continue
        p = _Params(name, body)
        if name == "devices":
            keyids = p.sorted_list("keyids", _HEX64, 0, MAX_LIST_ITEMS)
            hardware_ids = p.sorted_list("hardware_ids", _HARDWARE_ID, 0, MAX_LIST_ITEMS)
            if not keyids and not hardware_ids:
                raise CapsuleFormatError("manifest.rules.devices lists neither keyids nor hardware_ids")
            kwargs["device_keyids"] = frozenset(keyids) if keyids else None
            kwargs["hardware_ids"] = frozenset(hardware_ids) if hardware_ids else None
        elif name == "operations":
            allow = p.sorted_list("allow", re.compile("|".join(OPERATIONS)), 1, len(OPERATIONS))
            kwargs["allowed_operations"] = frozenset(allow)
        elif name == "query_limits":
            kwargs["max_k"] = p.int("max_k", 1, MAX_K_LIMIT)
        elif name == "rate_limit":
            kwargs["rate_limit"] = RateLimit(p.int("max_queries", 1, MAX_QUERIES_LIMIT),
                                             p.int("window_s", 1, MAX_WINDOW_S))
        elif name == "purge_on_expiry":
            kwargs["purge_on_expiry"] = True
        elif name == "min_runtime":
            version = p.get("version")
            match = _VERSION.fullmatch(version) if isinstance(version, str) else None
            parts = tuple(int(x) for x in match.groups()) if match else ()
            if not parts or max(parts) > 65535:
                raise CapsuleFormatError("manifest.rules.min_runtime.version must be MAJOR.MINOR.PATCH, each 0..65535")
            kwargs["min_runtime"] = parts
        p.done()
    return Rules(ignored_optional=tuple(ignored), **kwargs)


# ---------------------------------------------------------------------------
# Validity at the trusted time, rate log and per-use policy


def check_validity_at(manifest: Manifest, *, now: datetime, at: datetime) -> None:
    """Raise unless ``not_before <= at < expires_at``; name the floor when ``at`` is not ``now``.

    Args:
        manifest: the verified manifest.
        now: the wall-clock reading (timezone-aware).
        at: the trusted time ``max(now, floor)`` (FORMAT.md §13.2).

    Raises:
        ExpiredCapsuleError: ``at >= expires_at``.
        NotYetValidError: ``at < not_before``.

    Source: FORMAT.md §4.1, §13.2.
    """
    try:
        manifest.check_validity(at)
    except ExpiredCapsuleError:
        if at == now:
            raise
        raise ExpiredCapsuleError(
            f"capsule expired at {format_time(manifest.expires_at)} (clock {format_time(now)}, "
            f"trusted time floor {format_time(at)})", expires_at=manifest.expires_at, now=at) from None
    except NotYetValidError:
        if at == now:
            raise
        raise NotYetValidError(
            f"capsule is not valid before {format_time(manifest.not_before)} (clock {format_time(now)}, "
            f"trusted time floor {format_time(at)})", not_before=manifest.not_before, now=at) from None



def admit_use(times: list[datetime], limit: RateLimit, at: datetime) -> list[datetime]:
    """Return the use times to keep after admitting one more use at ``at``.

    Times after ``at`` (recorded before a clock went back) count as inside the window.

    Args:
        times: earlier use times, any order.
        limit: the capsule's rate limit.
        at: the trusted time of this use.

    Returns:
        At most ``limit.max_queries`` times, ascending, ending with ``at``.

    Raises:
        RateLimitedError: ``max_queries`` uses already fall inside the window.

    Source: FORMAT.md §4.2 ``rate_limit``, §13.3.
    """
    window = timedelta(seconds=limit.window_s)
    recent = sorted(t for t in times if t > at - window)
    if len(recent) >= limit.max_queries:
        retry_s = max(1, math.ceil((recent[-limit.max_queries] + window - at).total_seconds()))
        raise RateLimitedError(
            f"query rate limit reached: {len(recent)} queries in the last {limit.window_s} s, limit "
            f"{limit.max_queries} per {limit.window_s} s; retry in {retry_s} s", retry_after_s=retry_s)
    return (recent + [at])[-limit.max_queries:]


class UseLog(Protocol):
    """Remembers capsule uses for rate limits; the device store's version persists them."""

    def record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        """Admit one use at ``at`` or raise ``RateLimitedError``."""


@dataclass
class MemoryUseLog:
    """A ``UseLog`` in memory: the rate holds for the lifetime of one process."""

    times: dict[str, list[datetime]] = field(default_factory=dict)

    def record_use(self, capsule_id: str, limit: RateLimit, at: datetime) -> None:
        """Admit one use at ``at`` or raise ``RateLimitedError`` (see ``admit_use``)."""
        self.times[capsule_id] = admit_use(self.times.get(capsule_id, []), limit, at)


class UsePolicy:
    """The checks that run before each search, read or export of an opened capsule.

    Args:
        manifest: the verified manifest (validity window, capsule id).
        rules: its parsed rules.
        log: where uses are counted for ``rate_limit``.
        trusted_time: records a wall-clock reading in the device's floor and returns the
            trusted time (FORMAT.md §13.2); identity when opened without device state.
        on_expired: called with the error whenever a use finds the capsule expired (the
            device store purges capsules with ``purge_on_expiry`` there).
    """

    def __init__(self, manifest: Manifest, rules: Rules, *, log: UseLog,
                 trusted_time: Callable[[datetime], datetime] = lambda now: now,
                 on_expired: Callable[[ExpiredCapsuleError], None] | None = None) -> None:
        self.manifest = manifest
        self.rules = rules
        self._log = log
        self._trusted_time = trusted_time
        self._on_expired = on_expired

    def before_use(self, operation: str, *, at: datetime, k: int | None = None) -> None:
        """Raise unless ``operation`` may run now; count it towards the rate limit.

        Args:
            operation: ``"search"``, ``"read"`` or ``"export"``.
            at: the wall-clock time of the use (timezone-aware).
            k: results asked for (search only).

        Raises:
            ExpiredCapsuleError, NotYetValidError: outside the validity window at the trusted time.
            RuleViolationError: the rules forbid the operation or ``k``.
            RateLimitedError: the rate limit is reached.

        Source: FORMAT.md §4.2, §11 (use level).
        """
        trusted = self._trusted_time(at)
        try:
            check_validity_at(self.manifest, now=at, at=trusted)
        except (ExpiredCapsuleError, NotYetValidError) as exc:
            log.warning("refused %s on capsule %s v%d: %s", operation, self.manifest.name,
                        self.manifest.version, exc)
            if isinstance(exc, ExpiredCapsuleError) and self._on_expired is not None:
                self._on_expired(exc)
            raise
        try:
            self.rules.check_operation(operation, k=k)
            if self.rules.rate_limit is not None:
                self._log.record_use(self.manifest.capsule_id, self.rules.rate_limit, trusted)
        except RuleViolationError as exc:
            log.warning("refused %s on capsule %s v%d at %s: %s", operation, self.manifest.name,
                        self.manifest.version, format_time(trusted), exc)
            raise


__all__ = ["OPERATIONS", "RateLimit", "Rules", "parse_rules", "check_validity_at", "admit_use", "UseLog", "MemoryUseLog", "UsePolicy"]
