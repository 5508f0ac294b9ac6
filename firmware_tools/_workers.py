"""Worker processes for the builder: a ``spawn`` pool, or none where one cannot start.

``spawn`` (not ``fork``): the parent may hold encoder, BLAS, onnxruntime or tqdm threads.
Spawned workers re-import ``__main__``; when it is not a file (``python - < script``) they
would die at start-up, so callers do the work in-process instead. A pool whose workers die
later raises ``BrokenProcessPool``; callers finish in-process, and results never depend on
whether a pool ran.

Workers die with their parent: each one sets ``PR_SET_PDEATHSIG`` to SIGKILL (Linux prctl(2))
before anything else, then checks that its parent is still the process that started it (the
parent may have died before the prctl). Without this a SIGKILLed build left its workers (about
115 MB each) sleeping forever on a queue whose write end they hold themselves. Linux sends the
signal when the *thread* that forked the worker exits; the pools here start their workers from
the calling thread (``submit``), which is the build's main thread. Elsewhere (macOS) workers
still exit when the pool shuts down normally.

On a Dask cluster (``--cluster``) the same task functions run on the cluster's workers instead
(``cluster_map``): results in order, a bounded number in flight, and a task that fails or that
no worker finishes in ``TASK_TIMEOUT_S`` runs in this process, so the output never depends on
where a task ran. ``connect_cluster`` is the one place a build connects.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger(__name__)

#: Seconds to connect to a Dask scheduler, and the longest one cluster task may take.
CONNECT_TIMEOUT_S = 20
TASK_TIMEOUT_S = 900


def spawn_pool(n_workers: int, initializer: Callable[..., None] | None = None,
               initargs: tuple = ()) -> ProcessPoolExecutor | None:
    """Return a pool of ``n_workers`` spawned processes, or ``None`` where they cannot start."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        log.debug("no worker processes: __main__ %r cannot be re-imported", main_file)
        return None
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(), initializer, initargs))


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies; exit now if it already has.

    Linux only (prctl(2) ``PR_SET_PDEATHSIG``); elsewhere it only checks the parent.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def _init_worker(parent_pid: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def ordered_map(fn: Callable, tasks: Iterable, *, n_workers: int, max_in_flight: int | None = None,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                cluster=None) -> Iterator:
    """Yield ``fn(task)`` for each task, in order, computed in worker processes when possible.

    Args:
        fn: a module-level function (it is pickled to the workers).
        tasks: picklable task arguments, consumed lazily.
        n_workers: worker processes; 0 runs every task in this process.
        max_in_flight: tasks submitted at once (default ``3 * n_workers``), so a long stream
            of tasks never sits in memory whole.
        initializer, initargs: run once per worker (or once here, without workers). Not with
            ``cluster``: a task for a cluster carries what it needs.
        cluster: a ``distributed.Client``: run the tasks on its workers (``cluster_map``);
            ``n_workers`` is then ignored.

    Without a pool (``n_workers`` 0, or ``__main__`` not importable) or when the pool breaks,
    the remaining tasks run here; results are the same either way.
    """
    if cluster is not None:
        if initializer is not None:
            raise ValueError("cluster tasks carry their own state: no initializer")
        yield from cluster_map(cluster, fn, tasks, max_in_flight=max_in_flight)
        return
    tasks = iter(tasks)
    pool = spawn_pool(n_workers, initializer, initargs) if n_workers > 0 else None
    if pool is not None:
        limit = max_in_flight or 3 * n_workers
        pending: collections.deque = collections.deque()
        broken = None
        try:
            while True:
                while len(pending) < limit:
                    task = next(tasks, _DONE)
                    if task is _DONE:
                        break
                    try:
                        future = pool.submit(fn, task)
                    except BrokenProcessPool as exc:  # a worker died since the last result
                        broken = exc
                        tasks = _chain([t for _, t in pending], [task], tasks)
                        break
                    pending.append((future, task))
                if broken is not None:
                    break
                if not pending:
                    return
                future, task = pending.popleft()
                try:
                    result = future.result()
                except BrokenProcessPool as exc:
                    broken = exc
                    # every task not yet returned, in order: this one, those in flight, the rest
                    tasks = _chain([task], [t for _, t in pending], tasks)
                    break
                yield result
            pending.clear()
            log.warning("worker processes stopped (%s); finishing in this process", broken)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if initializer is not None:
        initializer(*initargs)
    for task in tasks:
        yield fn(task)


_DONE = object()


def connect_cluster(address: str):
    """Return a ``distributed.Client`` connected to the scheduler at ``address``.

    Args:
        address: ``tcp://HOST:PORT`` or ``tls://HOST:PORT`` (TLS from Dask's own configuration:
            ``distributed.comm.tls.*``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``).

    Raises:
        BuildError: ``distributed`` is not installed, or the scheduler cannot be reached within
            ``CONNECT_TIMEOUT_S`` seconds.
    """
    from .errors import BuildError

    try:
        from distributed import Client
    except ImportError:
        raise BuildError("--cluster needs Dask distributed: pip install '.[tools,cluster]'") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise BuildError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    n_workers = len(client.scheduler_info().get("workers", {}))
    log.info("building on the Dask cluster at %s (%d workers)", address, n_workers)
    return client


def cluster_workers(client) -> int:
    """The workers the scheduler knows now (at least 1, so callers can size batches)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def cluster_map(client, fn: Callable, tasks: Iterable, *, max_in_flight: int | None = None) -> Iterator:
    """Yield ``fn(task)`` for each task, in order, each computed on a worker of ``client``.

    At most ``max_in_flight`` tasks (default 3 per worker) are submitted at once, so a long stream
    never sits in the coordinator's memory whole. A task whose worker dies is run again on another
    worker by the scheduler (Dask's ``allowed_failures``); one that raises, or that has not
    finished after ``TASK_TIMEOUT_S`` seconds (no worker left), runs in this process instead, with a
    warning: the results are the same wherever a task ran. Once the client refuses a submission
    (the scheduler is gone or the client closed), every task left runs in this process, with
    one warning.
    """
    limit = max_in_flight or 3 * cluster_workers(client)
    tasks = iter(tasks)
    pending: collections.deque = collections.deque()
    refused = False  # the client cannot submit any more (scheduler gone, client closed)
    try:
        while True:
            while len(pending) < limit:
                task = next(tasks, _DONE)
                if task is _DONE:
                    break
                future = None
                if not refused:
                    try:
                        future = client.submit(fn, task, pure=False)
                    except Exception as exc:  # noqa: BLE001 - a lost cluster falls back to this process
                        refused = True
                        log.warning("the cluster takes no more tasks (%s: %s); running the rest in this process",
                                    type(exc).__name__, exc)
                pending.append((future, task))
            if not pending:
                return
            future, task = pending.popleft()
            if future is None:
                yield fn(task)
                continue
            try:
                result = future.result(timeout=TASK_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - every failure falls back to this process
                log.warning("a cluster task (%s) failed (%s); running it in this process",
                            getattr(fn, "__name__", fn), exc)
                result = fn(task)
            yield result
    finally:
        for future, _ in pending:
            if future is not None:
                future.cancel()


def _chain(*iterables: Iterable) -> Iterator:
    for iterable in iterables:
        yield from iterable
