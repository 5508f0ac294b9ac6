"""Embed chunk texts with the runtime's own model, on every core (builder side).

Each worker process opens ``edge.embedder.QueryEmbedder`` with one onnxruntime
thread and embeds texts one at a time (batch size 1), exactly as the device embeds
a query: the int8 model quantizes activations per tensor, so batching would shift
each vector with its batch-mates. Results come back in input order and are the
same whatever the number of workers, and with or without the cache.

An optional cache (SQLite, keyed by SHA-256 of the model digest and the chunk
text) lets a rebuild embed only new or changed chunks: embedding is by far the
slowest build stage.

Measured (x86_64 AMD EPYC, 2 vCPUs, no AVX-512/VNNI; 369 SciFact chunks of 150
tokens on average): 25.8 chunks/s on one thread at batch 1; one process with two
onnxruntime threads was no faster; batching 8 or 32 was slower (15-16 chunks/s).
An fp32 export of the same model ran no faster than the int8 one on this CPU.

Example::

    with ChunkEmbedder(model_dir, n_workers=2, cache_path=Path("embed.sqlite")) as embedder:
        vectors = embedder.embed(["first chunk", "second chunk"])   # float32 [2, 384]

Source: models/all-MiniLM-L6-v2/MODEL.md (quantization).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from edge.embedder import QueryEmbedder

from . import _workers
from ._workers import cluster_workers, connect_cluster, spawn_pool

log = logging.getLogger(__name__)

#: Texts per task sent to a worker; small enough for smooth progress, big enough to amortise IPC.
TASK_TEXTS = 32
#: Below this many uncached texts in a call, embedding stays in this process (unless on a cluster).
MIN_TEXTS_FOR_POOL = 128

_worker_embedder: QueryEmbedder | None = None


def _init_worker(model_dir: str, family: str = "onnx", device: str = "cpu") -> None:
    global _worker_embedder
    _worker_embedder = QueryEmbedder.open(Path(model_dir), family=family, n_threads=1, device=device)


def _ready() -> bool:
    return _worker_embedder is not None


def _embed_on_cluster(model_dir: str, family: str, model_sha256: str, texts: list[str],
                      device: str = "cpu") -> np.ndarray:
    """One embedding task on a Dask worker: the model opens once per worker process and build
    device, and only if its digest is the coordinator's (vectors from another model would be
    silently wrong; a worker kept from an earlier build on another device opens it again)."""
    global _worker_embedder
    if _worker_embedder is None or _worker_embedder.sha256 != model_sha256 or _worker_embedder.device != device:
        _undo_dask_malloc_thresholds()
        _worker_embedder = QueryEmbedder.open(Path(model_dir), family=family, n_threads=1,
                                              expected_sha256=model_sha256, device=device)
    return _worker_embedder.embed(texts)


#: glibc's mallopt parameters (malloc.h) and the values a Dask worker gets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_TRIM_THRESHOLD_BYTES, _WORKER_MMAP_THRESHOLD_BYTES = 64 << 20, 32 << 20


def _undo_dask_malloc_thresholds() -> None:
    """Undo what a Dask nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` does to batch-1 embedding.

    The nanny starts each worker with that variable (``distributed.nanny.pre-spawn-environ``).
    Any explicit glibc threshold also freezes the mmap threshold at 128 KiB, so every activation
    buffer onnxruntime takes and frees per text becomes an mmap/munmap pair: a worker embedded at
    0.6-0.7x a plain process (bench/CLUSTER.md, "Finding"). Setting the trim threshold alone does
    not help; with the mmap threshold at 32 MiB too it runs at full speed (measured there). A
    worker then keeps up to 64 MiB of freed heap. Only on glibc, and only where the variable is set.
    """
    import os

    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _WORKER_MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _WORKER_TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: nothing set it to undo


class ClusterPool:
    """Embedding tasks on a Dask distributed cluster, with the interface ``ChunkEmbedder`` uses.

    The coordinator (this process) sends chunk texts and gets vectors back, in order; nothing else
    leaves it for embedding (no key, no other plaintext). Every worker must have this package and
    the model installed at ``model_dir`` (the digest is checked there). A task whose worker dies is
    run again on another worker by the scheduler (Dask's ``allowed_failures``); one that has not
    finished after ``TASK_TIMEOUT_S`` (no worker left) is embedded in this process instead, so a
    build never waits forever.

    Args:
        cluster: a connected ``distributed.Client`` (closed by the caller), or a scheduler address,
            ``tcp://HOST:PORT`` or ``tls://HOST:PORT``, to connect to (``_workers.connect_cluster``;
            closed by ``shutdown``).

    Raises:
        BuildError: ``distributed`` is not installed, or the scheduler cannot be reached.
    """

    def __init__(self, cluster, *, model_dir: Path, family: str, model_sha256: str, device: str = "cpu") -> None:
        self._owns_client = isinstance(cluster, str)
        self.client = connect_cluster(cluster) if self._owns_client else cluster
        self._args = (str(model_dir), family, model_sha256)
        self._device = device
        self.n_workers = cluster_workers(self.client)

    def submit(self, fn, *args):  # the local pool's warm-up call: Dask workers start on their own
        return None

    def map(self, fn, tasks):
        """Submit every task now; yield each result in order (``fn`` is ignored: the task is
        ``_embed_on_cluster``)."""
        futures = [self.client.submit(_embed_on_cluster, *self._args, task, self._device, pure=False) for task in tasks]

        def results():
            for future, task in zip(futures, tasks):
                try:
                    yield future.result(timeout=_workers.TASK_TIMEOUT_S)
                except Exception as exc:  # noqa: BLE001 - every failure falls back to this process
                    log.warning("a cluster embedding task failed (%s); embedding it in this process", exc)
                    yield None
        return results()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self._owns_client:
            self.client.close()


def _embed_task(texts: list[str]) -> np.ndarray:
    assert _worker_embedder is not None
    return _worker_embedder.embed(texts)


class EmbeddingCache:
    """Chunk vectors by SHA-256(model sha256 || text), in one SQLite file.

    A vector is only ever reused for the same model file (its digest is in the key), and one
    embedded on another ``device`` than the CPU only by a build on that device (its name follows
    the digest in the key: an accelerator's vectors differ from the CPU's within the model's
    tolerance, and a rebuild should not mix them).
    """

    def __init__(self, path: Path, model_sha256: str, dim: int, device: str = "cpu") -> None:
        self.path = Path(path)
        self._prefix = bytes.fromhex(model_sha256) + (b"" if device == "cpu" else b"/" + device.encode("ascii"))
        self._dim = dim
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")
        self.n_hits = 0

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(self._prefix + text.encode("utf-8")).digest()

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """Return the cached vector of each text, or ``None``."""
        out: list[np.ndarray | None] = []
        for text in texts:
            row = self._db.execute("SELECT vector FROM vectors WHERE key = ?", (self._key(text),)).fetchone()
            vector = None
            if row is not None and len(row[0]) == 4 * self._dim:
                vector = np.frombuffer(row[0], dtype=np.float32)
                self.n_hits += 1
            out.append(vector)
        return out

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors for texts (float32 [len(texts), dim])."""
        self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                             [(self._key(t), v.astype(np.float32).tobytes()) for t, v in zip(texts, vectors)])
        self._db.commit()

    def export_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Return every entry, sorted by key: keys uint8 [n, 32] and vectors float32 [n, dim]."""
        rows = self._db.execute("SELECT key, vector FROM vectors ORDER BY key").fetchall()
        keys = np.array([np.frombuffer(k, dtype=np.uint8) for k, _ in rows], dtype=np.uint8).reshape(-1, 32)
        vectors = np.array([np.frombuffer(v, dtype=np.float32) for _, v in rows], dtype=np.float32)
        return keys, vectors.reshape(-1, self._dim)

    def import_rows(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add entries made by ``export_rows`` (keys uint8 [n, 32], vectors float32 [n, dim])."""
        if keys.shape != (len(vectors), 32) or vectors.shape[1:] != (self._dim,):
            raise ValueError(f"expected keys [n, 32] and vectors [n, {self._dim}], got {keys.shape} and {vectors.shape}")
        self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                             [(k.tobytes(), v.astype(np.float32).tobytes()) for k, v in zip(keys, vectors)])
        self._db.commit()

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class ChunkEmbedder:
    """Embeds chunk texts in worker processes, optionally through an ``EmbeddingCache``.

    Args:
        model_dir: the model folder (``model.int8.onnx`` and/or ``model.int8.tflite``, ``tokenizer.json``).
        family: ``"onnx"`` or ``"tflite"``: which model file (and engine) embeds (FORMAT.md §4.3).
        n_workers: worker processes, one onnxruntime thread each; 1 embeds in this process.
        cache_path: SQLite cache file, created if missing; ``None`` for no cache.
        cluster: a Dask scheduler address or a connected ``distributed.Client``: embed on its
            workers (``ClusterPool``) instead of local processes; ``n_workers`` is then ignored.
        device: where onnxruntime runs the model, in every worker (``edge.embedder.EXECUTION_PROVIDERS``:
            ``cpu``, ``cuda``, ``openvino``, ``coreml``); checked here first, in this process.

    Raises:
        ModelError: the model does not load or returns a wrong shape, or ``device`` is not
            available (``QueryEmbedder.open``).
    """

    def __init__(self, model_dir: Path, *, family: str = "onnx", n_workers: int = 1,
                 cache_path: Path | None = None, cluster=None, device: str = "cpu") -> None:
        self.model_dir = Path(model_dir)
        self.family = family
        self.device = device
        self._local = QueryEmbedder.open(self.model_dir, family=family, n_threads=1, device=device)
        self.dim = self._local.dim
        self.n_workers = n_workers
        self._pool = None
        self._pool_failed = n_workers <= 1 and cluster is None
        self.cluster = cluster
        self.cache = EmbeddingCache(cache_path, self._local.sha256, self.dim, device) if cache_path else None
        self.n_embedded = 0

    def start(self) -> None:
        """Start the worker processes now, without waiting for them: they spawn and load the model
        while the caller reads and chunks the first documents. Idempotent; a no-op without workers."""
        if self._pool is None and self._ensure_pool():
            for _ in range(self.n_workers):
                self._pool.submit(_ready)  # makes the executor spawn every worker now

    def _ensure_pool(self) -> bool:
        """Whether worker processes are there to use (started on the first call)."""
        if self._pool is None and not self._pool_failed:
            if self.cluster is not None:
                self._pool = ClusterPool(self.cluster, model_dir=self.model_dir, family=self.family,
                                         model_sha256=self._local.sha256, device=self.device)
            else:
                self._pool = spawn_pool(self.n_workers, _init_worker, (str(self.model_dir), self.family,
                                                                       self.device))
            self._pool_failed = self._pool is None
        return self._pool is not None

    def __enter__(self) -> "ChunkEmbedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers and close the cache."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Return one unit-norm embedding per text, in input order: float32 [len(texts), dim].

        ``progress(n)`` is called as each group of ``n`` texts is done (cached ones first).
        """
        return self.submit(texts)(progress)

    def submit(self, texts: Sequence[str]) -> Callable[[Callable[[int], None] | None], np.ndarray]:
        """Start embedding ``texts`` in the workers and return ``finish(progress)``, which waits
        and returns what ``embed(texts, progress)`` would: the caller chunks the next block while
        the workers embed this one. Without workers the texts are embedded when ``finish`` is called.

        One block at a time: call ``finish`` before the next ``submit``.
        """
        texts = list(texts)
        cached = self.cache.get_many(texts) if self.cache is not None else [None] * len(texts)
        todo = [i for i, vector in enumerate(cached) if vector is None]
        todo_texts = [texts[i] for i in todo]
        tasks = [todo_texts[i:i + TASK_TEXTS] for i in range(0, len(todo_texts), TASK_TEXTS)]
        started = None
        if (len(todo_texts) >= MIN_TEXTS_FOR_POOL or (todo_texts and self.cluster)) and self._ensure_pool():
            started = self._pool.map(_embed_task, tasks)  # submits every task now

        def finish(progress: Callable[[int], None] | None = None) -> np.ndarray:
            report = progress or (lambda n: None)
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            for i, vector in enumerate(cached):
                if vector is not None:
                    out[i] = vector
            if len(todo) < len(texts):
                report(len(texts) - len(todo))
            if todo:
                parts = self._collect(started, tasks, report)
                fresh = np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)
                out[todo] = fresh
                self.n_embedded += len(todo)
                if self.cache is not None:
                    self.cache.put_many(todo_texts, fresh)
            return out

        return finish

    def _collect(self, started, tasks: list[list[str]], report: Callable[[int], None]) -> list[np.ndarray]:
        """Results of ``tasks`` in order: from the workers' ``started`` map while it lasts, the
        rest in this process (same vectors either way)."""
        parts: list[np.ndarray] = []
        if started is not None:
            try:
                for part, task in zip(started, tasks):
                    if part is None:  # a cluster task that could not run: this process embeds it
                        part = self._local.embed(task)
                    parts.append(part)
                    report(part.shape[0])
            except BrokenProcessPool as exc:
                log.warning("embedding workers stopped (%s); embedding in this process", exc)
                self._pool_failed = True
                self._pool = None
        for task in tasks[len(parts):]:
            parts.append(self._local.embed(task))
            report(len(task))
        return parts
