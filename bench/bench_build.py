"""Benchmark: a first build (no embedding cache) on this machine, against the model's own throughput.

Builds a capsule from BEIR SciFact's abstracts (one ``.txt`` per document, title then text:
``bench_hybrid.write_corpus``) with ``build_capsule`` and ``n_threads`` worker processes,
then embeds the same chunk texts with ``ChunkEmbedder`` alone (the same worker count, warmed up:
"the model's own throughput" that issue 15 measures the build against). Prints one JSON object:
chunks/s of the whole build and of each stage, the stages after embedding together, the embedding
stage as a share of the isolated throughput, and the machine.

Usage::

    python bench/bench_build.py [--data ../shared/data/scifact] [--max-docs 0] [--workers 2] \\
        [--out bench/results/build.json]

Not a test; the machine is shared and noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_hybrid import write_corpus  # noqa: E402
from bench_scifact import machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--max-docs", type=int, default=0, help="first N documents (0: all 5,183)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "build.json"))
    args = parser.parse_args()

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from firmware_tools.build import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS, build_capsule
    from firmware_tools.chunking import TokenizerOffsets, chunk_documents
    from firmware_tools.documents import iter_documents
    from firmware_tools.embedding import ChunkEmbedder

    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    docs = work / "docs"
    n_docs = write_corpus(Path(args.data), docs, args.max_docs)
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    result = build_capsule([docs], work / "out.capsule", signing_key=Ed25519PrivateKey.generate(),
                           recipients=[X25519PrivateKey.generate().public_key()], issued_at=now,
                           expires_at=now + timedelta(days=30), version=1, seed=b"bench-build",
                           n_threads=args.workers, embedding_cache=None)
    wall = time.perf_counter() - t0
    n = result.n_chunks
    after = {k: v for k, v in result.stage_s.items() if k != "read_chunk_embed"}

    model_dir = ROOT / "models" / "all-MiniLM-L6-v2"
    offsets = TokenizerOffsets.from_file(model_dir / "tokenizer.json")
    texts = [c.text for c in chunk_documents(iter_documents([docs]), token_offsets=offsets,
                                             token_offsets_batch=offsets.batch, max_tokens=DEFAULT_MAX_TOKENS,
                                             overlap_tokens=DEFAULT_OVERLAP_TOKENS)]
    with ChunkEmbedder(model_dir, n_workers=args.workers) as embedder:
        embedder.embed(texts[:256])  # spawn the workers and load the model: not timed
        t1 = time.perf_counter()
        embedder.embed(texts)
        isolated_s = time.perf_counter() - t1

    report = {
        "benchmark": "build", "machine": machine(), "documents": n_docs, "chunks": n, "workers": args.workers,
        "git": os.popen(f"git -C {ROOT} rev-parse HEAD").read().strip(),
        "build_wall_s": round(wall, 1), "build_chunks_per_s": round(n / wall, 1),
        "stage_s": {k: round(v, 2) for k, v in result.stage_s.items()},
        "embedding_stage_chunks_per_s": round(n / result.stage_s["read_chunk_embed"], 1),
        "after_embedding_s": round(sum(after.values()), 2),
        "after_embedding_chunks_per_s": round(n / sum(after.values()), 1),
        "isolated_embedder_chunks_per_s": round(len(texts) / isolated_s, 1),
        "embedding_stage_share_of_isolated": round((n / result.stage_s["read_chunk_embed"]) / (len(texts) / isolated_s), 3),
        "note": "first build, no embedding cache; the embedding stage also reads, chunks and indexes (BM25) in the "
                "main process while the workers embed; the isolated figure is ChunkEmbedder alone, warmed up",
    }
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
