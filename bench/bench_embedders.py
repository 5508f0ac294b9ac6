"""Benchmark the two query-embedding engines: ONNX (onnxruntime) and LiteRT (ai-edge-litert).

Each engine runs in its own fresh process (so RSS is that engine's alone): open the model the
way the device does (``edge.embedder.QueryEmbedder.open``), embed 10 warm-up queries, then time
``embed([query])`` (tokenization included) for every query, ``--rounds`` times. Queries are
real: the questions of ``examples/python-faq/questions.jsonl`` and the 32 reference sentences
of ``models/all-MiniLM-L6-v2/reference_embeddings.npz`` (questions and answer paragraphs of the
Python and Debian FAQs). Prints one JSON object: machine info, then per engine latency p50/p95/
min in ms, tokens per query, VmRSS before import / after open / after the queries, and the
cosine between the two engines' vectors. Speed is never asserted anywhere.

Usage::

    PYTHONPATH=. python bench/bench_embedders.py                  # both engines, 1 thread
    PYTHONPATH=. python bench/bench_embedders.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    """Return the machine, CPU, governor and library versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        governor = "unknown (no cpufreq in this VM)"
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("onnxruntime", "ai-edge-litert", "tflite-runtime", "numpy", "tokenizers"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_model": cpu, "nproc": os.cpu_count(), "cpu_governor": governor,
            "loadavg_at_start": os.getloadavg(), "versions": versions}


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return -1


def queries() -> list[str]:
    """Return the real query texts: FAQ questions, then the reference sentences."""
    import numpy as np

    rows = (ROOT / "examples/python-faq/questions.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["question"] for line in rows if line.strip()]
    with np.load(ROOT / "models/all-MiniLM-L6-v2/reference_embeddings.npz", allow_pickle=False) as ref:
        texts += [str(t) for t in ref["sentences"]]
    return texts


def run_one(family: str, threads: int, rounds: int, vectors_path: Path) -> dict:
    """Measure one engine in this process; write its vectors to ``vectors_path`` (.npy)."""
    rss_start = _rss_bytes()
    import time

    import numpy as np

    from edge.embedder import QueryEmbedder, find_model_dir

    texts = queries()
    rss_imported = _rss_bytes()
    t0 = time.perf_counter()
    embedder = QueryEmbedder.open(find_model_dir(family=family), family=family, n_threads=threads)
    open_ms = (time.perf_counter() - t0) * 1e3
    rss_open = _rss_bytes()
    for text in texts[:10]:
        embedder.embed([text])
    times_ms = []
    for _ in range(rounds):
        for text in texts:
            start = time.perf_counter()
            embedder.embed([text])
            times_ms.append((time.perf_counter() - start) * 1e3)
    np.save(vectors_path, embedder.embed(texts))
    n_tokens = [min(embedder.token_count(t), embedder.max_tokens) for t in texts]
    short = [t for t, n in zip(texts, n_tokens) if n <= 32]
    short_ms = []
    for text in short:
        start = time.perf_counter()
        embedder.embed([text])
        short_ms.append((time.perf_counter() - start) * 1e3)
    return {
        "family": family, "engine": embedder.engine, "threads": threads, "n_queries": len(texts),
        "rounds": rounds, "tokens_median": float(np.median(n_tokens)), "tokens_max": int(max(n_tokens)),
        "latency_p50_ms": round(float(np.percentile(times_ms, 50)), 3),
        "latency_p95_ms": round(float(np.percentile(times_ms, 95)), 3),
        "latency_min_ms": round(float(min(times_ms)), 3),
        "latency_p50_ms_queries_le_32_tokens": round(float(np.median(short_ms)), 3) if short_ms else None,
        "open_ms": round(open_ms, 1),
        "rss_start_mib": round(rss_start / 2**20, 1), "rss_after_imports_mib": round(rss_imported / 2**20, 1),
        "rss_after_open_mib": round(rss_open / 2**20, 1), "rss_after_queries_mib": round(_rss_bytes() / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every engine in a subprocess; print one JSON object."""
    parser = argparse.ArgumentParser(prog="bench_embedders.py", description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="onnx,tflite", help="comma-separated: onnx, tflite")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one family here
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.threads, args.rounds, args.vectors)))
        return 0
    import tempfile

    import numpy as np

    out = {"bench": "embedders", "machine": machine_info(), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        vectors = {}
        for family in args.families.split(","):
            path = Path(tmp) / f"{family}.npy"
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.run([sys.executable, __file__, "--one", family, "--threads", str(args.threads),
                                   "--rounds", str(args.rounds), "--vectors", str(path)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                out["results"].append({"family": family, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            out["results"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            vectors[family] = np.load(path)
        if {"onnx", "tflite"} <= set(vectors):
            cos = (vectors["onnx"] * vectors["tflite"]).sum(axis=1)
            out["cos_onnx_vs_tflite"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                                         "n_texts": int(cos.shape[0])}
    out["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
