"""Worker processes for the builder: a ``spawn`` pool, or none where one cannot start.

``spawn`` (not ``fork``): the parent may hold encoder, BLAS, onnxruntime or tqdm threads.
Spawned workers re-import ``__main__``; when it is not a file (``python - < script``) they
would die at start-up, so callers do the work in-process instead. A pool whose workers die
later raises ``BrokenProcessPool``; callers finish in-process, and results never depend on
whether a pool ran.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)


def spawn_pool(n_workers: int, initializer: Callable[..., None] | None = None,
               initargs: tuple = ()) -> ProcessPoolExecutor | None:
    """Return a pool of ``n_workers`` spawned processes, or ``None`` where they cannot start."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        log.debug("no worker processes: __main__ %r cannot be re-imported", main_file)
        return None
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)
