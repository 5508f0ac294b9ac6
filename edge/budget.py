"""MemoryBudget: a byte ledger every component reserves from before it maps or allocates.

The budget bounds what costs RAM: the process's **resident anonymous memory** (``RssAnon``:
heap, the model session, decrypted sections) plus the in-memory copies the runtime makes itself
(a decrypted index in a ``memfd`` is shared memory, which ``RssAnon`` does not count but RAM
does). File-backed, read-only mappings (the capsule, the model weights, library code) are page
cache the kernel can evict: they are reported, not charged. Address space that is reserved but
never touched (malloc arenas, thread stacks, OpenBLAS and onnxruntime reservations) costs no
RAM and is not charged either; ``ADDRESS_SPACE_MARGIN_BYTES`` is how much of it there is, for
a caller that also sets the kernel's ``RLIMIT_DATA`` (``prlimit --data=budget+margin``).

What is reserved, and how each figure was measured (x86_64, CPython 3.11, onnxruntime 1.32,
``OPENBLAS_NUM_THREADS=1``; RssAnon and VmData from ``/proc/self/status`` in fresh processes):

=================  ==========================================================================
``runtime``        the process before any capsule: interpreter, NumPy, onnxruntime, PyAV,
                   zxing-cpp, tokenizers, cryptography, SQLite, all imported first. Measured
                   at the first open as the process's RssAnon (32.7 MiB here; VmData 75.5).
``model``          onnxruntime session and tokenizer, with the known-answer check and 200
                   queries: RssAnon +22.8 MiB (VmData +34.8) with the weights memory-mapped
                   and prepacked (``MODEL_SESSION_BYTES`` = 26 MiB), +13.5 MiB when they are
                   not prepacked (``MODEL_SESSION_MAPPED_BYTES`` = 16 MiB; a capsule opened
                   under a budget that cannot hold the packed session); plus what the
                   longest query the capsule allows (``model.max_tokens``) adds while it runs
                   (``model_query_peak_bytes``: 14 MiB at 256 tokens). For a ``tflite`` capsule
                   the LiteRT engine (``LITERT_SESSION_BYTES`` = 104 MiB, from VmRSS: measured
                   less carefully, so generous).
``index``          the Annoy file: its plaintext size when decrypted into memory, 0 when it
                   is mapped from storage (``encryption: none``).
``vecs``           int8 re-ranking vectors when decrypted into memory.
``projection``     the PCA projection widened to float32.
``lexical``        the LEXI database: its plaintext twice while loading (the collected
                   plaintext and SQLite's copy) plus SQLite's page cache; once loaded, once.
``frame_cache``    decrypted frames kept for reuse, sized in bytes.
``frame_decoder``  H.264 decoder contexts and picture buffers: 2 MiB + 3 bytes per pixel and
                   twice the largest payload, for each of the two decoders a query reads
                   frames with (a second 192x192 context measured +0.0 MiB RssAnon, four more
                   too, so the 2 MiB base is counted once).
``query``          per-query arrays: 2 MiB + candidates x re-ranking dim x 8 bytes.
=================  ==========================================================================

After 200 queries: a SciFact capsule (12,102 chunks, encrypted index) holds RssAnon 74.8 MiB
against 87.0 MiB reserved; the Python FAQ capsule (356 chunks) 58.7 against 68.6 (the lexical
and model figures are upper bounds). VmData is 137.8 MiB for SciFact: RssAnon (74.7 with the
helper thread that overlaps frame reads) + 63.1 MiB of untouched reservations.

Example::

    budget = MemoryBudget(parse_size("192MiB"))
    with budget.reserve("index", 12 * MiB):
        ...                       # BudgetExceededError if it would not fit
    budget.report()               # {"limit_bytes": ..., "reserved_bytes": {...}, "measured": {...}}

Source: FORMAT.md §4.4 (what a reader holds in memory); getrlimit(2) (RLIMIT_DATA); proc(5).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from .errors import BudgetExceededError

MiB = 1024 * 1024
#: onnxruntime session + tokenizer of the int8 MiniLM model: RssAnon grew 22.8 MiB (session,
#: known-answer check, 200 queries; weights memory-mapped), rounded up.
MODEL_SESSION_BYTES = 26 * MiB
#: The same session with its int8 weights left in the mapped weights file (onnxruntime's
#: ``session.disable_prepacking``): RssAnon grew 13.3-13.5 MiB (2026-12-07, onnxruntime 1.32.0,
#: the same 200 queries), rounded up. Queries take ~0.6-1.1 ms more (edge/embedder.py).
MODEL_SESSION_MAPPED_BYTES = 16 * MiB
#: RssAnon an onnxruntime session adds while it embeds a query of N tokens, over what a short
#: query costs, in MiB, for N up to the capsule's ``model.max_tokens`` (the two figures above
#: were measured with SciFact's 200 queries, 10-40 tokens). Activations grow with the square of
#: the length (attention), and glibc keeps most of them afterwards. Measured 2026-12-07
#: (onnxruntime 1.32.0, arena and memory pattern off, one thread, one malloc arena; mapped and
#: packed weights alike), RssAnon sampled every 0.2 ms while 5 queries of N tokens ran: 64 tokens
#: +0.6, 128 +2.1-4.0, 192 +7.0-8.0, 256 +12.0-12.6 MiB; the highest over any order of lengths
#: tried (rising by 16 or 64 tokens, 300 random lengths between short queries) was +12.8.
#: Rounded up with 1 MiB to spare: allocators and kernels differ by machine (not measured on aarch64).
MODEL_QUERY_PEAK_MIB_BY_TOKENS = ((64, 1.0), (128, 4.5), (192, 9.0), (256, 14.0))
#: Address space a process of this runtime reserves without touching it (VmData - RssAnon:
#: 63.1 MiB measured after opening SciFact and 200 queries with the capsule's helper thread,
#: whose malloc arena alone reserves ~9 MiB; 42.8 after the imports alone), with headroom for a
#: few more threads (--threads): what to add to a budget for the kernel's RLIMIT_DATA.
ADDRESS_SPACE_MARGIN_BYTES = 96 * MiB
#: The LiteRT engine and its model (``model.family`` ``tflite``): VmRSS grew by 101 MiB from
#: before ai-edge-litert 2.3.0 was imported to after ``QueryEmbedder.open`` (x86_64,
#: bench/bench_embedders.py); the 27 MB flatbuffer is mapped, XNNPACK repacks the weights.
#: What it charges, RssAnon, grew less (2026-12-07, one malloc arena): +69.6 MiB to after the
#: open and 200 SciFact queries, +76.2 MiB once queries of 64-256 tokens had run (peak), so the
#: longest query is inside this figure, unlike onnxruntime's (``model_query_peak_bytes``).
LITERT_SESSION_BYTES = 104 * MiB
#: Decoder context headroom; add 3 bytes per pixel of the frame size.
FRAME_DECODER_BASE_BYTES = 2 * MiB
#: Per-query headroom; add the re-ranked rows in flight (``edge.index.rerank_peak_bytes``: at most 128
#: candidates x re-ranking dim x 5 bytes).
QUERY_BASE_BYTES = 2 * MiB


def model_query_peak_bytes(max_tokens: int) -> int:
    """Bytes an onnxruntime session's RssAnon grows by while it embeds a ``max_tokens``-token query.

    Linear between the points of ``MODEL_QUERY_PEAK_MIB_BY_TOKENS``, its first figure below
    them, and scaled by the square of the length beyond them (the model takes up to 512).

    Raises:
        ValueError: ``max_tokens`` < 1.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    points = MODEL_QUERY_PEAK_MIB_BY_TOKENS
    if max_tokens <= points[0][0]:
        mib = points[0][1]
    elif max_tokens >= points[-1][0]:
        mib = points[-1][1] * (max_tokens / points[-1][0]) ** 2
    else:
        (n0, m0), (n1, m1) = next((a, b) for a, b in zip(points, points[1:]) if a[0] <= max_tokens <= b[0])
        mib = m0 + (m1 - m0) * (max_tokens - n0) / (n1 - n0)
    return int(mib * MiB + 0.5)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Return the byte count of a size such as ``"64MiB"``, ``"512M"`` or ``"1048576"``.

    ``k``/``M``/``G`` and ``kB``/``MB``/``GB`` are powers of 1000; ``KiB``/``MiB``/``GiB``
    powers of 1024.

    Raises:
        ValueError: unparsable text, unknown unit, or zero.
    """
    match = _SIZE.fullmatch(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 64MiB, 512MB or a byte count")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"size {text!r} must be more than 0 bytes")
    return value


def format_mib(n_bytes: int) -> str:
    """Return ``n_bytes`` as ``"12.3 MiB"``."""
    return f"{n_bytes / MiB:.1f} MiB"


@dataclass(frozen=True)
class ProcessMemory:
    """This process's memory as the kernel counts it, in bytes (``None`` where unknown).

    Attributes:
        data_bytes: VmData, what ``RLIMIT_DATA`` limits (private writable mappings).
        rss_bytes: VmRSS, resident pages.
        anon_bytes: RssAnon, resident anonymous pages.
        file_bytes: RssFile, resident file-backed pages (libraries, mapped capsule and model).
        shmem_bytes: RssShmem, resident shared memory (the memfd index).
        peak_rss_bytes: VmHWM, the highest VmRSS so far.
    """

    data_bytes: int | None = None
    rss_bytes: int | None = None
    anon_bytes: int | None = None
    file_bytes: int | None = None
    shmem_bytes: int | None = None
    peak_rss_bytes: int | None = None

    def to_json(self) -> dict[str, int | None]:
        """Return the fields as a dict."""
        return asdict(self)


_STATUS_FIELDS = {"VmData": "data_bytes", "VmRSS": "rss_bytes", "RssAnon": "anon_bytes",
                  "RssFile": "file_bytes", "RssShmem": "shmem_bytes", "VmHWM": "peak_rss_bytes"}


def read_process_memory() -> ProcessMemory:
    """Return this process's memory from ``/proc/self/status`` (all ``None`` off Linux).

    Source: proc(5).
    """
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in _STATUS_FIELDS:
                    values[_STATUS_FIELDS[key]] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return ProcessMemory()
    return ProcessMemory(**values)


def _describe(reservations: Mapping[str, int]) -> str:
    """Return "index 40.1 MiB, vecs 6.0 MiB, other 0.3 MiB" (largest first, names without prefix)."""
    big = sorted(((n, name.rsplit("/", 1)[-1]) for name, n in reservations.items() if n >= MiB // 10), reverse=True)
    rest = sum(n for n in reservations.values() if n < MiB // 10)
    parts = [f"{name} {format_mib(n)}" for n, name in big] + ([f"other {format_mib(rest)}"] if rest else [])
    return ", ".join(parts)


class MemoryBudget:
    """A fixed limit in bytes and named reservations against it. Thread-safe.

    Args:
        limit_bytes: the budget; ``None`` means unlimited (reservations are still tracked
            and reported).

    Raises:
        ValueError: ``limit_bytes`` is not positive.
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
            ValueError: ``n_bytes < 0``.
        """
        self.acquire_all({name: n_bytes})

    def acquire_all(self, reservations: Mapping[str, int], *, what: str | None = None) -> None:
        """Reserve several amounts at once, or none of them.

        Args:
            reservations: bytes per reservation name.
            what: names the whole request in the error message (e.g. "capsule manual").

        Raises:
            BudgetExceededError: the sum would exceed the limit; the message lists the parts.
            ValueError: a negative amount.
        """
        if any(n < 0 for n in reservations.values()):
            raise ValueError("reservations must be >= 0 bytes")
        total = sum(reservations.values())
        with self._lock:
            available = self.available_bytes
            if available is not None and total > available:
                label = what or next(iter(reservations), "reservation")
                detail = f" ({_describe(reservations)})" if len(reservations) > 1 else ""
                raise BudgetExceededError(
                    f"{label} needs {format_mib(total)}{detail}, budget has {format_mib(max(available, 0))} "
                    f"left of {format_mib(self.limit_bytes or 0)}",
                    requested_bytes=total, available_bytes=available,
                )
            for name, n in reservations.items():
                self._reserved[name] = self._reserved.get(name, 0) + n

    def release(self, name: str, n_bytes: int | None = None) -> None:
        """Release ``n_bytes`` (default: all) of reservation ``name``."""
        with self._lock:
            held = self._reserved.get(name, 0)
            left = 0 if n_bytes is None else max(0, held - n_bytes)
            if left:
                self._reserved[name] = left
            else:
                self._reserved.pop(name, None)

    def transfer(self, name: str, new_name: str) -> int:
        """Move reservation ``name`` (all of it) to ``new_name`` at once; return its bytes.

        For memory that outlives its first owner: a model session shared by capsules, kept
        when the capsule that opened it closes. Nothing is released in between, so the sum
        never drops below what is held.
        """
        with self._lock:
            n = self._reserved.pop(name, 0)
            if n:
                self._reserved[new_name] = self._reserved.get(new_name, 0) + n
            return n

    @contextmanager
    def reserve(self, name: str, n_bytes: int) -> Iterator[None]:
        """Reserve for the duration of a ``with`` block."""
        self.acquire(name, n_bytes)
        try:
            yield
        finally:
            self.release(name, n_bytes)

    def charge_runtime(self) -> None:
        """Reserve the process's current resident anonymous memory (RssAnon) as ``runtime``, once.

        Call after the runtime's libraries are imported and before any capsule allocates.
        Where ``/proc`` gives no RssAnon, VmData (larger) is charged instead.

        Raises:
            BudgetExceededError: the process alone already exceeds the budget (the budget is
                below this runtime's floor).
        """
        with self._lock:
            if "runtime" in self._reserved:
                return
        memory = read_process_memory()
        data = memory.anon_bytes if memory.anon_bytes is not None else (memory.data_bytes or 0)
        try:
            self.acquire("runtime", data)
        except BudgetExceededError as exc:
            raise BudgetExceededError(
                f"budget {format_mib(self.limit_bytes or 0)} is below this runtime's floor: the interpreter "
                f"and its libraries already hold {format_mib(data)}",
                requested_bytes=data, available_bytes=exc.available_bytes,
            ) from None

    def report(self) -> dict[str, object]:
        """Return the limit, current reservations and the measured process memory, in bytes."""
        with self._lock:
            reserved = dict(self._reserved)
        return {"limit_bytes": self.limit_bytes, "reserved_bytes": reserved,
                "total_reserved_bytes": sum(reserved.values()),
                "measured": read_process_memory().to_json()}
