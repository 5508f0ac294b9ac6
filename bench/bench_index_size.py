"""Benchmark: capsule index bytes against SciFact quality through the capsule (issue 12, "Smaller
index sections at the same quality").

For a small grid of index parameters (projection on; ``refine_dim``, ``n_trees``, ``ann_dim``;
search_k / n_candidates at their defaults) a SciFact capsule is built with
``firmware_tools.build.build_capsule`` and queried through ``edge.open_capsule(...).search``:

* INDX, VECS, PROJ and total capsule bytes, capsule / raw text;
* nDCG@10 and recall@10 on the 300 SciFact test queries, modes dense and hybrid, documents ranked
  by the first occurrence of their chunks in the top 30 hits (bench_hybrid.py ``mode_quality``);
* dense warm latency at k=10 (frame cache cleared before each query, 20 warm-up queries, 300
  queries), as bench_hybrid.py ``latency``.

Builds use an embedding cache (no chunk is embedded when it already holds SciFact) and a fixed
seed; keys are generated fresh per run (they change no byte count).

``--grid codes`` compares the ``binary-codes`` index (FORMAT.md §4.4.1: bits per code, refine_dim,
n_candidates) with Annoy's default row, in one run.

Usage::

    python bench/bench_index_size.py --docs DIR_OF_SCIFACT_TXT --cache EMBEDDINGS.sqlite \
        [--scifact ../shared/data/scifact] [--out bench/results/index-size.json] [--grid annoy|codes]

Not a test: figures depend on the machine; the JSON records which one. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_hybrid import K_CHUNKS, chunk_documents_of, doc_order, git, load_beir  # noqa: E402
from bench_scifact import NOW, machine, ndcg_at_10, percentile, recall_at_10  # noqa: E402

MODES = ("dense", "hybrid")


def grid(kind: str = "annoy") -> list[dict]:
    from firmware_tools.build import DEFAULT_ANN_DIM, DEFAULT_REFINE_DIM, DEFAULT_TREES_PROJECTED
    from firmware_tools.index_builder import DEFAULT_CODE_BITS, DEFAULT_N_CANDIDATES_CODES
    annoy_default = {"index_format": "annoy", "ann_dim": DEFAULT_ANN_DIM, "refine_dim": DEFAULT_REFINE_DIM,
                     "n_trees": DEFAULT_TREES_PROJECTED}
    if kind == "codes":
        codes = [{"index_format": "binary-codes", "ann_dim": DEFAULT_CODE_BITS, "refine_dim": DEFAULT_REFINE_DIM,
                  "n_candidates": DEFAULT_N_CANDIDATES_CODES}]
        for bits, refine_dim, n_candidates in ((128, 256, 200), (256, 256, 400), (128, 192, 400)):
            codes.append({"index_format": "binary-codes", "ann_dim": bits, "refine_dim": refine_dim,
                          "n_candidates": n_candidates})
        return [annoy_default, *codes]
    rows = [annoy_default]
    for n_trees in (8, 4):
        for refine_dim in (256, 192, 128):
            rows.append({"index_format": "annoy", "ann_dim": 64, "refine_dim": refine_dim, "n_trees": n_trees})
    rows.append({"index_format": "annoy", "ann_dim": 48, "refine_dim": 256, "n_trees": 8})
    out: list[dict] = []
    for r in rows:
        if r not in out:
            out.append(r)
    return out


def wait_for_pytest(max_s: float = 600.0, poll_s: float = 10.0) -> float:
    t = time.perf_counter()
    while time.perf_counter() - t < max_s:
        if subprocess.run(["pgrep", "-f", "pytest"], capture_output=True).returncode != 0:
            break
        time.sleep(poll_s)
    return round(time.perf_counter() - t, 1)


def quality(capsule, queries, qrels, chunk_doc) -> dict:
    out = {}
    for mode in MODES:
        ndcg, rec = [], []
        for qid in sorted(queries):
            res = capsule.search(queries[qid], k=K_CHUNKS, mode=mode)
            ranked = doc_order([h.chunk_id for h in res], chunk_doc)
            ndcg.append(ndcg_at_10(ranked, qrels[qid]))
            rec.append(recall_at_10(ranked, qrels[qid]))
        out[mode] = {"ndcg@10": round(float(np.mean(ndcg)), 4), "recall@10": round(float(np.mean(rec)), 4),
                     "_ndcg": float(np.mean(ndcg))}
    return out


def dense_latency(capsule, queries: list[str]) -> dict:
    for q in queries[:20]:
        capsule.search(q, k=10, mode="dense")
    totals, ann = [], []
    for q in queries:
        capsule.clear_cache()
        t0 = time.perf_counter()
        res = capsule.search(q, k=10, mode="dense")
        totals.append((time.perf_counter() - t0) * 1e3)
        ann.append(res.timings.ann_ms)
    return {"total_p50": round(percentile(totals, 50), 2), "total_p95": round(percentile(totals, 95), 2),
            "ann_p50": round(percentile(ann, 50), 3), "ann_p95": round(percentile(ann, 95), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, required=True, help="SciFact documents as .txt (bench_hybrid write_corpus)")
    parser.add_argument("--cache", type=Path, required=True, help="embedding cache (sqlite)")
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "index-size.json")
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--grid", choices=("annoy", "codes"), default="annoy",
                        help="annoy: Annoy parameters; codes: binary-codes settings against Annoy's default")
    args = parser.parse_args(argv)

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge import open_capsule
    from firmware_tools import build as fb

    waited = wait_for_pytest()
    publisher, device = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-index-size-"))
    work.mkdir(parents=True, exist_ok=True)
    test_q, test_rel = load_beir(args.scifact, "test")
    latency_queries = [test_q[q] for q in sorted(test_q, key=int)]
    out: dict = {
        "benchmark": "index bytes vs SciFact quality through the capsule (issue 12)",
        "machine": machine(),
        "git": {"commit": git("rev-parse", "HEAD"),
                "dirty_files": git("status", "--porcelain", "--untracked-files=no").splitlines()},
        "command": " ".join(["python", "bench/bench_index_size.py", *(sys.argv[1:] if argv is None else argv)]),
        "defaults": {"ann_dim": fb.DEFAULT_ANN_DIM, "refine_dim": fb.DEFAULT_REFINE_DIM,
                     "n_trees": fb.DEFAULT_TREES_PROJECTED, "search_k": fb.DEFAULT_SEARCH_K_PROJECTED,
                     "n_candidates": fb.DEFAULT_N_CANDIDATES, "index_seed": fb.DEFAULT_INDEX_SEED},
        "method": (f"projection on; search_k and n_candidates at their defaults; seed=b'bench'; "
                   f"{args.n_threads} build workers; quality: search(q, k={K_CHUNKS}, mode) on the "
                   f"{len(test_q)} test queries, documents by first chunk in hit order, nDCG@10 / recall@10; "
                   "latency: dense, k=10, frame cache cleared per query, 20 warm-up, one query at a time"),
        "waited_for_pytest_s": waited,
        "rows": [],
    }
    t_all = time.perf_counter()
    for p in grid(args.grid):
        tag = (f"a{p['ann_dim']}-r{p['refine_dim']}-t{p['n_trees']}" if p["index_format"] == "annoy"
               else f"b{p['ann_dim']}-r{p['refine_dim']}-c{p['n_candidates']}")
        path = work / f"{tag}.capsule"
        t = time.perf_counter()
        built = fb.build_capsule([args.docs], path, signing_key=publisher, recipients=[device.public_key()],
                                 issued_at=NOW - timedelta(days=1), expires_at=NOW + timedelta(days=365),
                                 seed=b"bench", n_threads=args.n_threads, embedding_cache=args.cache,
                                 projection=True, index_format=p["index_format"], ann_dim=p["ann_dim"],
                                 refine_dim=p["refine_dim"], n_trees=p.get("n_trees"),
                                 n_candidates=p.get("n_candidates"))
        build_s = time.perf_counter() - t
        sec = dict(built.section_bytes)
        raw = built.raw_text_bytes
        with open_capsule(path, trusted_keys=[publisher.public_key()], identities=[device], now=NOW) as capsule:
            t = time.perf_counter()
            q = quality(capsule, test_q, test_rel, chunk_documents_of(capsule))
            quality_s = time.perf_counter() - t
            lat = dense_latency(capsule, latency_queries)
        index_bytes = sec.get("INDX", 0) + sec.get("VECS", 0) + sec.get("PROJ", 0)
        row = {**p, "tag": tag, "chunks": built.n_chunks, "n_embedded": built.n_embedded,
               "INDX": sec.get("INDX", 0), "VECS": sec.get("VECS", 0), "PROJ": sec.get("PROJ", 0),
               "index_bytes": index_bytes, "capsule_bytes": built.file_bytes, "raw_text_bytes": raw,
               "capsule_per_raw_text": round(built.file_bytes / raw, 4),
               "index_per_raw_text": round(index_bytes / raw, 4), "section_bytes": sec,
               **{f"{m}_{k}": q[m][k] for m in MODES for k in ("ndcg@10", "recall@10")},
               "_hybrid_ndcg": q["hybrid"]["_ndcg"], "dense_latency_k10_ms": lat,
               "seconds": {"build": round(build_s, 1), "quality": round(quality_s, 1)}}
        out["rows"].append(row)
        path.unlink()
        print(json.dumps({k: row[k] for k in ("tag", "index_bytes", "capsule_bytes", "capsule_per_raw_text",
                                              "dense_ndcg@10", "hybrid_ndcg@10", "hybrid_recall@10")}
                         | {"p50": lat["total_p50"], "s": row["seconds"]}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    base = out["rows"][0]
    tol = 0.002
    for r in out["rows"]:
        r["index_bytes_saved"] = base["index_bytes"] - r["index_bytes"]
        r["hybrid_ndcg_minus_default"] = round(r["_hybrid_ndcg"] - base["_hybrid_ndcg"], 4)
        r["dense_ndcg_minus_default"] = round(r["dense_ndcg@10"] - base["dense_ndcg@10"], 4)
        r["smaller_and_no_worse_hybrid"] = (r is not base and r["index_bytes"] < base["index_bytes"]
                                            and r["_hybrid_ndcg"] >= base["_hybrid_ndcg"] - tol)
    for r in out["rows"]:
        r.pop("_hybrid_ndcg")
    out["criterion"] = f"index bytes below the default and hybrid nDCG@10 >= default - {tol} (unrounded)"
    out["smaller_and_no_worse_hybrid"] = [r["tag"] for r in out["rows"] if r["smaller_and_no_worse_hybrid"]]
    out["seconds_total"] = round(time.perf_counter() - t_all, 1)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"smaller_and_no_worse_hybrid": out["smaller_and_no_worse_hybrid"],
                      "seconds_total": out["seconds_total"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
