"""Process-wide hardening for the runtime: no core dumps of decrypted text or device keys.

A core dump of the runtime holds whatever was in memory: decrypted chunk text, content keys and
the raw X25519 device private key. ``harden_process()`` turns core dumps off for the calling
process before any of that is loaded (issue 9, "Secrets"):

- ``setrlimit(RLIMIT_CORE, (0, 0))``: no core file, and the process cannot raise the limit
  again (POSIX; where the platform has ``resource``).
- ``prctl(PR_SET_DUMPABLE, 0)`` (Linux prctl(2)): no core even through a ``core_pattern``
  pipe such as systemd-coredump (which ignores RLIMIT_CORE), no ptrace attach and no
  ``/proc/PID/mem`` or ``environ`` reads by other processes of the same user; ``/proc/PID/*``
  becomes owned by root. The kernel resets it when the process ``exec``\\ s a program.

The ``edge`` CLI calls it first thing; library users call it once at start-up::

    from edge._process import harden_process
    harden_process()

Root, or a process with ``CAP_SYS_PTRACE``, can still read the memory of a running process;
this stops dumps and same-user inspection, not a privileged attacker.
"""

from __future__ import annotations

import ctypes
import os
import logging
import sys

log = logging.getLogger(__name__)

#: linux/prctl.h
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def harden_process() -> dict[str, bool]:
    """Turn core dumps off for this process (and, on Linux, same-user ptrace and /proc reads).

    Safe to call more than once. Failures are logged, never raised: a platform without the
    call leaves the process as it was.

    Returns:
        ``{"core_limit_zero": bool, "not_dumpable": bool}``: which of the two took effect
        (``not_dumpable`` is ``False`` off Linux).
    """
    done = {"core_limit_zero": False, "not_dumpable": False}
    try:
        import resource
    except ImportError:  # not POSIX
        resource = None
    if resource is not None:
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            done["core_limit_zero"] = True
        except (ValueError, OSError) as exc:
            log.warning("setrlimit(RLIMIT_CORE, 0) failed: %s", exc)
    if sys.platform.startswith("linux"):
        if _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            done["not_dumpable"] = True
        else:
            log.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())
    return done


#: glibc malloc.h
M_ARENA_MAX = -8


def single_malloc_arena() -> bool:
    """Make every thread of this process allocate from glibc's main arena (``mallopt(M_ARENA_MAX, 1)``).

    Issue 12's memory lever "MALLOC_ARENA_MAX". Without it glibc gives each new thread an arena
    of its own, and what a thread frees stays in its arena. The model's session is built on a
    loading thread during an unlimited open (``QueryEmbedder.start_open``), and that arena then
    held 4.7-5.6 MiB more RssAnon after open and 100 queries (SciFact x20 installed, mapped
    weights: 68.9-69.8 against 63.5 MiB). With one arena the figures match the sequential open
    (63.2-63.9), and query p50 is unchanged (9.27 against 9.29 ms, SciFact, 4 alternated rounds).
    Call it before any thread starts; the ``edge`` program does.

    Returns:
        True if glibc accepted it; False elsewhere (not glibc, or not Linux), where nothing changes.

    Source: mallopt(3) (M_ARENA_MAX).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = _libc().mallopt
    except AttributeError:  # a libc without mallopt (musl)
        return False
    return mallopt(M_ARENA_MAX, 1) == 1


def quiet_rust_panics() -> None:
    """Make a Rust panic in a native library (tantivy, through pyo3) cost a message, not a backtrace.

    A signed but malformed lexical index can make tantivy panic; the runtime turns that into a
    one-line ``CapsuleFormatError``, but with ``RUST_BACKTRACE`` set Rust first symbolises a
    backtrace, which measured +52 MiB of RSS outside the memory budget (signed-malicious fuzz,
    ``tests/corruption/signed_mutations.py``). Rust reads the variable at the first panic, so
    this sets ``RUST_BACKTRACE=0`` for the process before any panic can happen.
    """
    os.environ["RUST_BACKTRACE"] = "0"


def is_dumpable() -> bool | None:
    """Return prctl(2) ``PR_GET_DUMPABLE`` for this process as a bool, or ``None`` off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


__all__ = ["harden_process", "is_dumpable"]
