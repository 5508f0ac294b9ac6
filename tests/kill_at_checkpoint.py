"""Run the ``edge`` CLI and SIGKILL this process at install checkpoint N (the crash suite's hook).

Usage: ``python tests/kill_at_checkpoint.py N edge-args...``. ``N`` = 0 kills nowhere. The
runtime itself has no way to do this: the hook is set here, in the test's own process.
"""

from __future__ import annotations

import os
import signal
import sys

from edge.cli import main
from edge.store import Store


def kill_at(n: int):
    def observe(checkpoint: int, what: str) -> None:
        if checkpoint == n:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return observe


if __name__ == "__main__":
    Store._checkpoint_observer = staticmethod(kill_at(int(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))
