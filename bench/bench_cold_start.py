"""Benchmark: cold start to first answer, ``edge search`` in a fresh process, against a baseline.

Issue 12 asks for the time from launching ``edge search`` to its printed answer, and where it goes
(imports, model load, open). Each run here is a fresh interpreter that runs the CLI's ``main``
exactly as the ``edge`` script does (``search CAPSULE QUERY -k 10``: ``edge.cli.run`` where the
revision has it, else ``sys.exit(main())``), timed by the parent from spawn to the answer's first
byte on stdout and to exit. The page cache is warm (the capsule and libraries were read by earlier runs): a
device's first boot after power-on also reads from flash, which this VM cannot reproduce.

Both trees get their bytecode compiled first, as ``pip install`` does on a device (a checkout run
with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile changed modules on every start). The
baseline is checked out into a temporary git worktree; runs alternate baseline and current so
both see the same noise on this shared VM. Inside each run, the stages are timed by wrapping the
runtime's functions (where the revision has them): importing ``edge.cli``, the runtime libraries
(PyAV, onnxruntime, tokenizers, zxing-cpp, tantivy), the model (hash, session, tokenizer,
known-answer check), the document list, the vector index, the lexical index, and the search.

Usage::

    python bench/bench_cold_start.py --capsule CAP.capsule --trust PUB.pub --identity DEV.key \\
        --baseline 9bbe158 [--capsule CAP2 ...] [--runs 10] [--query TEXT] [--out bench/results/cold-start.json]

Prints one JSON object (and writes ``--out``): per capsule and revision the wall time of every run
(seconds), the median and minimum, the median time to the answer, the median of each stage (ms), the current/baseline ratio of the
medians, and the machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_scifact import machine  # noqa: E402

#: Runs in the fresh process: times the stages by wrapping functions that exist in the revision,
#: then runs the CLI as the ``edge`` script does. Stage times go to the file in argv[2].
PROBE = r"""
import time
START = time.perf_counter()
import functools, json, sys
sys.path.insert(0, sys.argv[1])
MARKS = sys.argv[2]
marks = {}
def add(label, since):
    marks[label] = marks.get(label, 0.0) + (time.perf_counter() - since) * 1e3
def timed(owner, name, label):
    f = getattr(owner, name, None) if owner is not None else None
    if f is None:
        return
    @functools.wraps(f)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            add(label, t)
    setattr(owner, name, wrapper)
from edge.cli import main
add("import edge.cli", START)
import edge.capsule as C, edge.embedder as E, edge.capsule_set as CS
timed(C, "_import_runtime_libraries", "runtime libraries")
timed(C, "_read_documents", "documents")
timed(C, "_read_stored_documents", "documents")  # an installed object with its stored table (2026-12-08)
timed(C, "_open_index", "vector index")
timed(C, "_open_lexical", "lexical index")
timed(CS.CapsuleSet, "search", "search")
open_model = E.QueryEmbedder.open.__func__
def open_model_timed(cls, *a, **k):
    t = time.perf_counter()
    try:
        return open_model(cls, *a, **k)
    finally:
        add("model", t)
E.QueryEmbedder.open = classmethod(open_model_timed)
# Where the model loads on a thread during the open (unlimited budget): the wait for that thread
# plus the tokenizer and known-answer check, all on the opening thread.
timed(getattr(E, "PendingEmbedder", None), "result", "model (join, tokenizer, check)")
import edge.cli as CLI
def main_timed(*args, **kwargs):
    try:
        return main(*args, **kwargs)
    finally:
        add("in process", START)
        open(MARKS, "w").write(json.dumps(marks))
CLI.main = main_timed
sys.argv = ["edge"] + sys.argv[3:]
if hasattr(CLI, "run"):  # the program's entry point where the revision has one (it exits at once)
    CLI.run()
sys.exit(CLI.main())
"""


def run_once(tree: Path, capsule: str, args, marks_path: Path) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(tree),
               EDGE_STORE_DIR=str(Path(args.workdir) / "store"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    store, _, name = capsule.partition("::")
    where = ["--store", store, name] if name else [capsule]
    command = [sys.executable, "-c", PROBE, str(tree), str(marks_path), "search", *where, args.query,
               "-k", "10", "--identity", args.identity, "--trust", args.trust]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tree)
    first = proc.stdout.read(1)  # the answer's first byte (the CLI prints it whole, then exits)
    answer = time.perf_counter() - started
    rest, stderr = proc.communicate(timeout=300)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not first:
        raise SystemExit(f"edge search failed in {tree} (exit {proc.returncode}):\n{stderr.decode()[-3000:]}")
    return {"wall_s": wall, "answer_s": answer, "stages_ms": json.loads(marks_path.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capsule", action="append", required=True,
                        help="capsule file, or STORE_DIR::NAME for an installed one (repeat for several)")
    parser.add_argument("--trust", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. a commit id)")
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per capsule and revision")
    parser.add_argument("--query", default="vitamin D deficiency and bone fractures")
    parser.add_argument("--workdir", default=tempfile.mkdtemp(prefix="bench-cold-start-"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cold-start.json"))
    args = parser.parse_args()

    workdir = Path(args.workdir)
    baseline_tree = workdir / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline_tree), args.baseline],
                   check=True)
    try:
        for tree in (baseline_tree, ROOT):
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "edge")], check=True,
                           stdout=subprocess.DEVNULL)
        results: dict[str, dict[str, list[dict]]] = {}
        for capsule in args.capsule:
            runs: dict[str, list[dict]] = {"baseline": [], "current": []}
            for side, tree in (("baseline", baseline_tree), ("current", ROOT)):
                run_once(tree, capsule, args, workdir / "marks.json")  # warm the page cache, not counted
            for number in range(args.runs):
                order = (("baseline", baseline_tree), ("current", ROOT))
                for side, tree in order if number % 2 == 0 else order[::-1]:
                    runs[side].append(run_once(tree, capsule, args, workdir / "marks.json"))
                print(f"{capsule} run {number + 1}: baseline {runs['baseline'][-1]['wall_s']:.3f} s, "
                      f"current {runs['current'][-1]['wall_s']:.3f} s", file=sys.stderr)
            results[capsule] = runs
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)], check=False)

    summary: dict[str, dict] = {}
    for capsule, runs in results.items():
        entry: dict[str, dict | float] = {}
        for side in ("baseline", "current"):
            walls = [run["wall_s"] for run in runs[side]]
            answers = [run["answer_s"] for run in runs[side]]
            stages = sorted({name for run in runs[side] for name in run["stages_ms"]})
            entry[side] = {"wall_runs_s": [round(w, 3) for w in walls], "wall_median_s": round(statistics.median(walls), 3),
                           "wall_min_s": round(min(walls), 3), "answer_median_s": round(statistics.median(answers), 3),
                           "stages_median_ms": {name: round(statistics.median(run["stages_ms"].get(name, 0.0)
                                                                            for run in runs[side]), 1)
                                                for name in stages}}
        entry["median_ratio_current_to_baseline"] = round(entry["current"]["wall_median_s"]
                                                          / entry["baseline"]["wall_median_s"], 3)
        summary[capsule] = entry
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"benchmark": "cold_start", "machine": machine(), "current": head, "baseline": args.baseline,
              "query": args.query, "k": 10, "runs": args.runs,
              "note": "fresh process per run, spawn to exit (wall) and to the answer's first byte on stdout "
                      "(answer), page cache warm, bytecode compiled; revisions "
                      "alternated; stages timed inside the process (model = hash, session, tokenizer, "
                      "known-answer check)", "capsules": summary}
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
