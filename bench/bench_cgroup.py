"""Benchmark: an installed capsule's queries inside memory cgroups that cap RSS and page cache.

Issue 12 asks that the installed 250k capsule keep its p50 within 2x of the uncapped figure in a
128 MiB cgroup, page cache included. This runs any installed capsule that way: for each model-weights
setting and each limit (and once uncapped), the page cache is dropped (``/proc/sys/vm/drop_caches``:
the kernel charges a page to the cgroup of the process that first touches it, so pages cached by an
earlier run would be charged to nobody), then a fresh process joins the cgroup, opens the capsule
from the store, warms up on 20 SciFact queries and times 200 more at k=10 (frame cache cleared
before each). The probe limits malloc to one arena as the ``edge`` program does
(``edge._process.single_malloc_arena``). Needs root (cgroups, drop_caches); ``bench_scale.MemoryCgroup`` makes the cgroup.

Usage::

    sudo python bench/bench_cgroup.py --store DIR --name NAME [--limits 128 100] [--weights packed mapped]
        [--out bench/results/cgroup.json]

The store must hold NAME, installed with ``bench_hybrid.keys()`` (``bench_min_budget.py --installed``
does that). Prints one JSON object (and writes ``--out``): per setting the time to the first answer,
query p50/p95 (ms), RSS split, and the cgroup's peak charge and limit hits, with the machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import MemoryCgroup  # noqa: E402
from bench_scifact import machine  # noqa: E402

PROBE = r"""
import json, re, resource, sys, time
sys.path.insert(0, sys.argv[1] + "/bench")
from bench_hybrid import keys
from bench_scifact import NOW
from edge import _process
from edge.capsule import OpenOptions
from edge.store import Store
if hasattr(_process, "single_malloc_arena"):  # as the edge program does, where the revision has it
    _process.single_malloc_arena()
store, name, weights, queries_file = sys.argv[2:6]
publisher, device = keys()
queries = [json.loads(line)["text"] for line in open(queries_file)][:220]
started = time.perf_counter()
with Store(store).open(name, identities=[device], trusted_keys=[publisher.public_key()], now=NOW,
                       options=OpenOptions(model_weights=weights)) as capsule:
    capsule.search(queries[0], k=10)
    first = time.perf_counter() - started
    for q in queries[1:20]:
        capsule.search(q, k=10)
    times, faults = [], []
    stages = {s: [] for s in ("embed_ms", "ann_ms", "lexical_ms", "frame_decode_ms", "qr_decode_ms", "decrypt_ms")}
    for q in queries[20:]:
        capsule.clear_cache()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        t = time.perf_counter()
        result = capsule.search(q, k=10)
        times.append((time.perf_counter() - t) * 1e3)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_majflt - before)
        for stage, values in stages.items():
            values.append(getattr(result.timings, stage))
times.sort()
median = lambda values: round(sorted(values)[len(values) // 2], 2)
status = open("/proc/self/status").read()
mib = lambda key: round(int(re.search(key + r":\s+(\d+)", status).group(1)) / 1024, 1)
print(json.dumps({"first_answer_s": round(first, 3), "p50_ms": round(times[len(times) // 2], 2),
                  "p95_ms": round(times[int(len(times) * 0.95)], 2), "rss_mib": mib("VmRSS"),
                  "anon_mib": mib("RssAnon"), "file_mib": mib("RssFile"),
                  "major_faults_per_query_p50": median(faults),
                  "stages_p50_ms": {stage: median(values) for stage, values in stages.items()}}))
"""


def run(store: Path, name: str, weights: str, limit_mib: int | None, queries: Path) -> dict:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("1")
    cgroup = MemoryCgroup(limit_mib << 20) if limit_mib else None
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(store), name, weights, str(queries)],
                              capture_output=True, text=True, env=env, timeout=3600,
                              preexec_fn=cgroup.enter if cgroup else None)
        result = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                  else {"error": proc.stderr.strip()[-400:]})
        if cgroup:
            result["cgroup"] = cgroup.report()
    finally:
        if cgroup:
            cgroup.remove()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the installed capsule's name")
    parser.add_argument("--limits", type=int, nargs="+", default=[128, 100], metavar="MIB")
    parser.add_argument("--weights", nargs="+", default=["packed", "mapped"], choices=("packed", "mapped"))
    parser.add_argument("--queries", type=Path, default=ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cgroup.json")
    parser.add_argument("--no-uncapped", action="store_true", help="skip the uncapped runs")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for weights in args.weights:
        for limit in ([] if args.no_uncapped else [None]) + args.limits:
            key = f"{weights}/{limit or 'uncapped'}"
            results[key] = run(args.store, args.name, weights, limit, args.queries)
            print(key, json.dumps(results[key]), file=sys.stderr)
    ratios = {f"{w}/{limit}": round(results[f"{w}/{limit}"]["p50_ms"] / results[f"{w}/uncapped"]["p50_ms"], 1)
              for w in args.weights for limit in args.limits
              if "p50_ms" in results[f"{w}/{limit}"] and "p50_ms" in results[f"{w}/uncapped"]}
    report = {"benchmark": "cgroup", "machine": machine(), "store": str(args.store), "capsule": args.name,
              "note": "page cache dropped before each fresh process; cgroup caps anonymous memory and page "
                      "cache together; 200 queries at k=10 after 20 warm-up, frame cache cleared per query",
              "results": results, "p50_ratio_to_uncapped": ratios}
    text = json.dumps(report, indent=2)
    print(text)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
