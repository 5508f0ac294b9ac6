"""Embed chunk texts with the runtime's own model, on every core (builder side).

Each worker process opens ``edge.embedder.QueryEmbedder`` with one onnxruntime
thread and embeds texts one at a time (batch size 1), exactly as the device embeds
a query: the int8 model quantizes activations per tensor, so batching would shift
each vector with its batch-mates. Results come back in input order and are the
same whatever the number of workers.

Measured (x86_64 AMD EPYC, 2 vCPUs, no AVX-512/VNNI; 369 SciFact chunks of 150
tokens on average): 25.8 chunks/s on one thread at batch 1; one process with two
onnxruntime threads was no faster; batching 8 or 32 was slower (15-16 chunks/s).

Example::

    vectors = embed_texts(model_dir, ["first chunk", "second chunk"], n_workers=2)
    vectors.shape   # (2, 384), float32, unit rows

Source: models/all-MiniLM-L6-v2/MODEL.md (quantization).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from edge.embedder import QueryEmbedder

from ._workers import spawn_pool

log = logging.getLogger(__name__)

#: Texts per task sent to a worker; small enough for smooth progress, big enough to amortise IPC.
TASK_TEXTS = 64
#: Below this many texts a worker pool costs more (start-up ~1 s each) than it saves.
MIN_TEXTS_FOR_POOL = 256

_worker_embedder: QueryEmbedder | None = None


def _init_worker(model_dir: str) -> None:
    global _worker_embedder
    _worker_embedder = QueryEmbedder.open(Path(model_dir), n_threads=1)


def _embed_task(texts: list[str]) -> np.ndarray:
    assert _worker_embedder is not None
    return _worker_embedder.embed(texts)


def embed_texts(model_dir: Path, texts: Sequence[str], *, n_workers: int = 1,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Return one unit-norm embedding per text, in input order.

    Args:
        model_dir: the model folder (``model.int8.onnx`` + ``tokenizer.json``).
        texts: chunk texts.
        n_workers: worker processes, one onnxruntime thread each; 1 embeds in this process.
        progress: called with the number of texts embedded so far.

    Returns:
        float32 [len(texts), dim], rows of L2 norm 1.

    Raises:
        ModelError: the model does not load or returns a wrong shape.
    """
    report = progress or (lambda done: None)
    tasks = [list(texts[i:i + TASK_TEXTS]) for i in range(0, len(texts), TASK_TEXTS)]
    parts: list[np.ndarray] = []
    pool = spawn_pool(n_workers, _init_worker, (str(model_dir),)) \
        if n_workers > 1 and len(texts) >= MIN_TEXTS_FOR_POOL else None
    if pool is not None:
        try:
            with pool:
                for part in pool.map(_embed_task, tasks):
                    parts.append(part)
                    report(sum(p.shape[0] for p in parts))
        except BrokenProcessPool as exc:
            # Same vectors either way: finish in this process rather than fail the build.
            log.warning("embedding workers stopped (%s); embedding in this process", exc)
    if len(parts) < len(tasks):
        embedder = QueryEmbedder.open(Path(model_dir), n_threads=1)
        for task in tasks[len(parts):]:
            parts.append(embedder.embed(task))
            report(sum(p.shape[0] for p in parts))
    if not parts:
        return np.empty((0, QueryEmbedder.open(Path(model_dir), n_threads=1).dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
