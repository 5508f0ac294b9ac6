"""MemoryBudget: a byte ledger every component reserves from before it allocates.

This first version accounts for the large allocations the runtime makes itself
(the decrypted index, the decoded-frame cache); the device-store issue extends
it to the model session and per-query buffers. Sizes are bytes.

Example::

    budget = MemoryBudget(parse_size("64MiB"))
    with budget.reserve("index", 12 * MiB):
        ...                       # BudgetExceededError if it would not fit
    budget.report()               # {"limit_bytes": ..., "reserved": {...}}

Source: FORMAT.md §11 (what is allocated at open).
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from collections.abc import Iterator

from .errors import BudgetExceededError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Return the byte count of a size such as ``"64MiB"``, ``"512M"`` or ``"1048576"``.

    Raises:
        ValueError: unparsable text or unknown unit.
    """
    match = _SIZE.fullmatch(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 64MiB, 512MB or a byte count")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_mib(n_bytes: int) -> str:
    """Return ``n_bytes`` as ``"12.3 MiB"``."""
    return f"{n_bytes / 1024**2:.1f} MiB"


class MemoryBudget:
    """A fixed limit in bytes and named reservations against it. Thread-safe.

    Args:
        limit_bytes: the budget; ``None`` means unlimited (reservations are still tracked).
    """

    def __init__(self, limit_bytes: int | None = None) -> None:
        if limit_bytes is not None and limit_bytes <= 0:
            raise ValueError("limit_bytes must be positive")
        self.limit_bytes = limit_bytes
        self._reserved: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def reserved_bytes(self) -> int:
        """Sum of all current reservations, in bytes."""
        return sum(self._reserved.values())

    @property
    def available_bytes(self) -> int | None:
        """Bytes left, or ``None`` when unlimited."""
        return None if self.limit_bytes is None else self.limit_bytes - self.reserved_bytes

    def acquire(self, name: str, n_bytes: int) -> None:
        """Reserve ``n_bytes`` under ``name`` (adds to an existing reservation).

        Raises:
            BudgetExceededError: the reservation would exceed the limit.
        """
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        with self._lock:
            available = self.available_bytes
            if available is not None and n_bytes > available:
                raise BudgetExceededError(
                    f"{name} needs {format_mib(n_bytes)}, budget has {format_mib(available)} left "
                    f"of {format_mib(self.limit_bytes or 0)}",
                    requested_bytes=n_bytes, available_bytes=available,
                )
            self._reserved[name] = self._reserved.get(name, 0) + n_bytes

    def release(self, name: str, n_bytes: int | None = None) -> None:
        """Release ``n_bytes`` (default: all) of reservation ``name``."""
        with self._lock:
            held = self._reserved.get(name, 0)
            left = 0 if n_bytes is None else max(0, held - n_bytes)
            if left:
                self._reserved[name] = left
            else:
                self._reserved.pop(name, None)

    @contextmanager
    def reserve(self, name: str, n_bytes: int) -> Iterator[None]:
        """Reserve for the duration of a ``with`` block."""
        self.acquire(name, n_bytes)
        try:
            yield
        finally:
            self.release(name, n_bytes)

    def report(self) -> dict[str, object]:
        """Return the limit and current reservations, in bytes."""
        with self._lock:
            return {"limit_bytes": self.limit_bytes, "reserved_bytes": dict(self._reserved),
                    "total_reserved_bytes": sum(self._reserved.values())}
