"""Benchmark: the binary-code candidate stage (``edge.index.BinaryCodeIndex.candidates``) against N.

The scan is linear in the number of chunks, so this prices it where the capsules of issue 12 are
(SciFact's 12k, 100k, 250k) and at 1M: random 128-bit codes (the scan's cost does not depend on
their values, only the histogram's cut-off does, a little), 400 candidates, one thread, the
runtime's own code and scratch arrays. Reports p50/p95 in ms per query and the bytes the codes
and scratch take.

Usage::

    python bench/bench_code_scan.py [--n 12102 100000 250000 1000000] [--queries 200] [--out FILE]

Not a test: figures depend on the machine; the JSON records which one. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scifact import machine, percentile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[12102, 100_000, 250_000, 1_000_000])
    parser.add_argument("--bits", type=int, default=128)
    parser.add_argument("--candidates", type=int, default=400)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from edge.budget import MemoryBudget
    from edge.index import BinaryCodeIndex, Projection
    from edge.manifest import IndexInfo, ProjectionInfo

    rng = np.random.default_rng(0)
    dim_out = max(args.bits, 256)
    rows = []
    for n in args.n:
        info = IndexInfo(dim=args.bits, metric="hamming", n_items=n, n_trees=0, seed=0, search_k=0,
                         n_candidates=args.candidates, projection=ProjectionInfo("pca", 384, dim_out),
                         encryption="none", format="binary-codes")
        codes = rng.integers(0, 1 << 63, size=n * args.bits // 64, dtype=np.uint64).tobytes()
        projection = Projection(np.zeros(384, np.float32), np.eye(dim_out, 384, dtype=np.float32),
                                np.ones(dim_out, np.float32))
        index = BinaryCodeIndex.from_segments(None, codes_view=memoryview(codes), info=info, budget=MemoryBudget(None),
                                              projection=projection, vecs_view=memoryview(bytes(n * dim_out)))
        queries = rng.normal(size=(args.queries + 10, dim_out)).astype(np.float32)
        for z in queries[:10]:
            index.candidates(z, args.candidates)
        ms = []
        for z in queries[10:]:
            t = time.perf_counter()
            index.candidates(z, args.candidates)
            ms.append((time.perf_counter() - t) * 1e3)
        rows.append({"n_items": n, "bits": args.bits, "candidates": args.candidates,
                     "p50_ms": round(percentile(ms, 50), 3), "p95_ms": round(percentile(ms, 95), 3),
                     "codes_bytes": len(codes), "scratch_bytes": BinaryCodeIndex.scratch_bytes(n)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        index.close()
    report = {"benchmark": "binary-code scan (edge.index.BinaryCodeIndex.candidates), one thread",
              "machine": machine(), "command": " ".join(["python", "bench/bench_code_scan.py", *(argv or sys.argv[1:])]),
              "rows": rows}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
