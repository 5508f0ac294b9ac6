"""Benchmark: warm query latency of this checkout against a baseline revision, interleaved.

This machine kind is noisy (a shared 2-vCPU VM), so two revisions measured minutes apart differ
by more than most changes do. This script checks the baseline out into a temporary git worktree
and runs the same probe in fresh processes, alternating baseline and current for ``--rounds``
rounds, so both see the same noise; it reports each side's median of round p50s and the ratio.

The probe opens one capsule (``open_capsule``, default budget), warms up on 10 queries, then runs
``--queries`` SciFact queries at k=10 per mode, clearing the decrypted-frame cache before each so
every hit's frame is decoded, on one embedding thread.

Usage::

    python bench/bench_query_path.py --capsule SCIFACT.capsule --trust PUB.pub --identity DEV.key \\
        --baseline 0114964 [--rounds 5] [--queries 200] [--out bench/results/query-path.json]

Prints one JSON object (and writes ``--out``): per revision and mode the p50 and p95 of every
round, their medians, frames per query, the current/baseline ratio, and the machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_scifact import machine  # noqa: E402

PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from edge import open_capsule, load_public_key, load_identity
capsule, trust, identity, queries_file, n, modes = sys.argv[2:8]
queries = [json.loads(line)["text"] for line in open(queries_file)][:int(n)]
out = {}
with open_capsule(capsule, trusted_keys=[load_public_key(trust)], identities=[load_identity(identity)]) as c:
    for q in queries[:10]:
        c.search(q, k=10)
    for mode in modes.split(","):
        times, frames = [], []
        for q in queries:
            c.clear_cache()
            t0 = time.perf_counter()
            result = c.search(q, k=10, mode=mode)
            times.append((time.perf_counter() - t0) * 1e3)
            frames.append(result.timings.n_frames_decoded)
        times.sort()
        out[mode] = {"p50": times[len(times) // 2], "p95": times[int(len(times) * 0.95)],
                     "frames_per_query": sum(frames) / len(frames)}
print(json.dumps(out))
"""


def run_probe(tree: Path, args) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(tree),
               EDGE_STORE_DIR=str(Path(args.workdir) / "store"))
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tree), args.capsule, args.trust, args.identity,
                           args.queries_file, str(args.queries), args.modes], capture_output=True, text=True,
                          env=env, cwd=tree, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed in {tree}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capsule", required=True)
    parser.add_argument("--trust", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. a commit id)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--modes", default="dense,hybrid")
    parser.add_argument("--queries-file", default=str(ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl"))
    parser.add_argument("--workdir", default=tempfile.mkdtemp(prefix="bench-query-path-"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "query-path.json"))
    args = parser.parse_args()

    baseline_tree = Path(args.workdir) / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline_tree), args.baseline],
                   check=True)
    try:
        rounds: dict[str, list[dict]] = {"baseline": [], "current": []}
        for number in range(args.rounds):
            for side, tree in (("baseline", baseline_tree), ("current", ROOT)) if number % 2 == 0 else \
                    (("current", ROOT), ("baseline", baseline_tree)):
                rounds[side].append(run_probe(tree, args))
                print(f"round {number + 1} {side}: {json.dumps(rounds[side][-1])}", file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)], check=False)

    summary: dict[str, dict] = {}
    for mode in args.modes.split(","):
        entry = {}
        for side in ("baseline", "current"):
            p50s = [r[mode]["p50"] for r in rounds[side]]
            p95s = [r[mode]["p95"] for r in rounds[side]]
            entry[side] = {"p50_rounds_ms": [round(v, 2) for v in p50s], "p95_rounds_ms": [round(v, 2) for v in p95s],
                           "p50_median_ms": round(statistics.median(p50s), 2),
                           "p95_median_ms": round(statistics.median(p95s), 2),
                           "frames_per_query": round(rounds[side][0][mode]["frames_per_query"], 2)}
        entry["p50_ratio_current_to_baseline"] = round(entry["current"]["p50_median_ms"]
                                                       / entry["baseline"]["p50_median_ms"], 3)
        summary[mode] = entry
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"benchmark": "query_path", "machine": machine(), "current": head, "baseline": args.baseline,
              "capsule": args.capsule, "queries": args.queries, "k": 10, "rounds": args.rounds,
              "note": "warm, one embedding thread, frame cache cleared before each query; fresh process per round, "
                      "revisions alternated", "modes": summary}
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
