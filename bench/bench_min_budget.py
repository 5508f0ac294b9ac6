"""The smallest memory budget that opens a capsule and answers, and what the process holds there.

For each capsule (the shipped Python FAQ, and SciFact when ``../shared/data/scifact`` is present)
and each model-weights setting (``packed``, ``auto``), bisects ``--ram-budget`` in fresh
processes: a probe opens the capsule under the budget with ``open_capsule`` and answers the first
20 SciFact queries (k=10, hybrid). 0.5 MiB above the smallest budget that works, a fresh process answers 200
queries and reports the plan, RssAnon, RssShmem and query p50. Then packed and mapped weights are
timed without a budget, alternated over fresh processes (warm, frame cache cleared before each
query), to price the memory they save.

Run (about 5 minutes with a warm embedding cache, 12 more to embed SciFact once)::

    .venv/bin/python bench/bench_min_budget.py --work /tmp/bench-min-budget \
        [--installed CAPSULE] [--check-budget 64] --out bench/results/min-budget.json

``--installed`` adds a capsule installed into a store (as a device opens it); ``--check-budget``
runs the 200 queries at exactly that budget too. Each 200-query run's hits are hashed and
compared with an unlimited-budget run's.

Not a test: figures depend on the machine; the JSON records which one. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_hybrid import build, keys, write_corpus  # noqa: E402
from bench_scifact import NOW, machine, percentile  # noqa: E402

MiB = 1 << 20
PROBE_QUERIES = 20
STEP_MIB = 0.5


def probe(capsule: Path, budget: str, weights: str, n_queries: int, queries: Path) -> dict:
    """Open ``capsule`` under ``budget`` ("none" for unlimited) and answer ``n_queries``; return
    the outcome, plan, measured memory and per-query milliseconds (in this process). A
    ``capsule`` of the form ``STORE_DIR::NAME`` is an installed capsule (``Store.open``)."""
    from edge import MemoryBudget, open_capsule
    from edge.budget import parse_size, read_process_memory
    from edge.capsule import OpenOptions
    from edge.errors import EdgeError
    from edge.store import Store

    publisher, device = keys()
    limit = None if budget == "none" else parse_size(budget)
    kwargs = dict(identities=[device], trusted_keys=[publisher.public_key()], now=NOW, budget=MemoryBudget(limit),
                  options=OpenOptions(model_weights=weights))
    try:
        store_dir, _, name = str(capsule).partition("::")
        with (Store(store_dir).open(name, **kwargs) if name else open_capsule(capsule, **kwargs)) as opened:
            # read after the open: the runtime is charged its RssAnon at the open, which must
            # not depend on how many queries this probe asks
            texts = [json.loads(line)["text"] for line in queries.read_text().splitlines()][:n_queries]
            times = []
            answers = hashlib.sha256()  # every hit's chunk, document and text, in order
            for text in texts:
                opened.clear_cache()
                t = time.perf_counter()
                hits = opened.search(text, k=10)
                times.append((time.perf_counter() - t) * 1000)
                if not hits:
                    return {"ok": False, "error": f"no hits for {text!r}"}
                for hit in hits:
                    answers.update(f"{hit.chunk_id}\0{hit.document}\0{hit.text}\0".encode())
            report = opened.budget.report()
            return {"ok": True, "plan_bytes": dict(opened.memory_plan), "engine": opened.embedder_engine,
                    "total_reserved_bytes": report["total_reserved_bytes"],
                    "measured": read_process_memory().to_json(), "query_ms": times,
                    "answers_sha256": answers.hexdigest()}
    except (EdgeError, MemoryError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def run_probe(capsule: Path, budget: str, weights: str, n_queries: int, queries: Path) -> dict:
    # as `edge` sets it before NumPy loads (this script imports NumPy first): OpenBLAS then
    # reserves a 32 MiB buffer, not 64, which VmData would count
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--probe", str(capsule), budget, weights, str(n_queries),
                          str(queries)], capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"ok": False, "error": out.stderr.strip()[-300:]}


def smallest_budget(capsule: Path, weights: str, queries: Path) -> float:
    """Smallest budget in MiB (``STEP_MIB`` resolution) under which the probe answers."""
    lo, hi = 32.0, 512.0
    while hi - lo > STEP_MIB:
        mid = (lo + hi) / 2
        if run_probe(capsule, f"{mid}MiB", weights, PROBE_QUERIES, queries)["ok"]:
            hi = mid
        else:
            lo = mid
    return hi


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        capsule, budget, weights, n, queries = sys.argv[2:7]
        print(json.dumps(probe(Path(capsule), budget, weights, int(n), Path(queries))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for capsules and the embedding cache")
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--rounds", type=int, default=3, help="alternated latency rounds per setting")
    parser.add_argument("--installed", type=Path, action="append", default=[], metavar="CAPSULE",
                        help="also a capsule installed into a store under --work (opened as a device opens it: "
                             "a plain index is mapped, not copied); built with this script's keys "
                             "(bench_hybrid.keys), e.g. by bench_build_memory.py; repeatable")
    parser.add_argument("--skip-builtin", action="store_true", help="only the --installed capsules")
    parser.add_argument("--check-budget", type=float, action="append", default=[], metavar="MIB",
                        help="also run 200 queries at exactly this --ram-budget, --rounds times (e.g. 64)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    queries = args.scifact / "queries.jsonl"
    if not queries.exists():
        parser.error(f"{queries} is missing: the probes ask SciFact's queries")
    cache = args.work / "embeddings.sqlite"
    capsules: dict[str, tuple[Path | None, Path]] = {}
    if not args.skip_builtin:
        capsules["python-faq"] = (ROOT / "examples" / "python-faq" / "docs", args.work / "python-faq.capsule")
        if not (args.work / "scifact-docs").exists():
            write_corpus(args.scifact, args.work / "scifact-docs")
        capsules["scifact"] = (args.work / "scifact-docs", args.work / "scifact.capsule")
    t0 = time.perf_counter()
    sizes: dict[str, int] = {}
    for path in args.installed:
        from edge.store import Store

        publisher, device = keys()
        store_dir = args.work / "store"
        entry = Store(store_dir).install(path, identities=[device], trusted_keys=[publisher.public_key()], now=NOW)
        capsules[f"installed {entry.name}"] = (None, Path(f"{store_dir}::{entry.name}"))
        sizes[f"installed {entry.name}"] = path.stat().st_size
    results: dict[str, dict] = {}
    for name, (inputs, path) in capsules.items():
        if inputs is not None and not path.exists():
            build(inputs, path, n_threads=2, cache=cache)
        row: dict[str, object] = {"capsule_bytes": sizes[name] if inputs is None else path.stat().st_size}
        at_answers = {}
        for weights in ("packed", "auto"):
            smallest = smallest_budget(path, weights, queries)
            # one step over: the runtime is charged its RssAnon at the open, which varies by a
            # few tens of kB from process to process, and the smallest budget has no slack
            at = run_probe(path, f"{smallest + STEP_MIB}MiB", weights, 200, queries)
            row[weights] = {
                "smallest_budget_mib": smallest,
                "engine": at.get("engine"),
                "plan_mib": {k: round(v / MiB, 2) for k, v in at.get("plan_bytes", {}).items()},
                "reserved_mib": round(at.get("total_reserved_bytes", 0) / MiB, 2),
                "after_200_queries": {k: round(v / MiB, 2) for k, v in at.get("measured", {}).items() if v},
                "budget_for_200_queries_mib": smallest + STEP_MIB,
                "ok_at_200": at["ok"],
            }
            at_answers[weights] = at.get("answers_sha256")
        p50 = {"packed": [], "mapped": []}
        unlimited_answers = {}
        for _ in range(args.rounds):
            for weights in ("packed", "mapped"):
                r = run_probe(path, "none", weights, 200, queries)
                p50[weights].append(round(percentile(r["query_ms"][20:], 50), 2))
                unlimited_answers[weights] = r.get("answers_sha256")
        for weights in ("packed", "auto"):  # the same 200 answers as without a budget, same weights
            used = "mapped" if "mapped" in str(row[weights]["engine"]) else "packed"
            row[weights]["answers_equal_unlimited"] = at_answers[weights] == unlimited_answers[used]
        for budget in args.check_budget:  # the figure itself, in fresh processes
            checks = [run_probe(path, f"{budget}MiB", "auto", 200, queries) for _ in range(args.rounds)]
            used = "mapped" if any("mapped" in str(c.get("engine")) for c in checks) else "packed"
            row[f"at_{budget}_mib"] = {"ok": [c["ok"] for c in checks],
                                       "answers_equal_unlimited": [c.get("answers_sha256") == unlimited_answers[used]
                                                                   for c in checks],
                                       "reserved_mib": [round(c.get("total_reserved_bytes", 0) / MiB, 2)
                                                        for c in checks],
                                       "error": next((c["error"] for c in checks if not c["ok"]), None)}
        row["unlimited_query_p50_ms"] = {w: {"rounds": v, "median": sorted(v)[len(v) // 2]} for w, v in p50.items()}
        results[name] = row
    report = {"benchmark": "min_budget", "machine": machine(), "seconds": round(time.perf_counter() - t0, 1),
              "note": "smallest --ram-budget (bisection, 0.5 MiB) that opens and answers 20 SciFact queries; "
                      "memory after 200 queries at that budget + 0.5 MiB; query p50 k=10 hybrid, frame cache cleared, "
                      "queries 21-200, fresh process per round; answers_equal_unlimited: the 200 queries' hits (chunk, "
                      "document, text) equal those without a budget, same model weights", "capsules": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
