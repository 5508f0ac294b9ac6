"""Study: binary codes (sign bits of the PCA projection) as the ANN stage, against today's index.

Issue 12 asks for smaller index sections at the same quality and names "binary codes with int8
rescoring, which Annoy's ``hamming`` metric supports". This study measures that before any format
change. It opens a SciFact capsule built with today's defaults (PCA to 256-d, int8 ``VECS``,
Annoy over the first 64 coordinates, 8 trees, 200 candidates re-ranked) and, for the 300 test
queries, ranks chunks with:

- ``default``: the capsule's own ``VectorIndex.search`` (what the runtime does);
- ``exact``: every chunk's int8 vector scored (the ceiling of any candidate stage);
- ``hamming-B-exhaustive-C``: the sign bits of the first B projected coordinates, every chunk's
  Hamming distance, the C nearest re-ranked by their int8 vectors;
- ``annoy-hamming-B-tT-C``: the same codes in an Annoy ``hamming`` index of T trees, C
  candidates (search_k = C x T, as the runtime sets it) re-ranked alike.

Quality is nDCG@10 / recall@10 over documents, ranked by the first occurrence of their chunks in
the top 30, as in ``bench_hybrid.py``. Index bytes: the Annoy file (the INDX section's plaintext),
or B/8 bytes per chunk for exhaustive codes. ``VECS`` and ``PROJ`` are unchanged in every row.

Usage::

    python bench/bench_binary_codes.py --capsule SCIFACT.capsule [--out bench/results/binary-codes.json]

(the capsule as ``bench_hybrid.py`` or ``bench_min_budget.py`` builds it, with their fixed keys).
Not a test; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_hybrid import K_CHUNKS, chunk_documents_of, doc_order, load_beir, open_built  # noqa: E402
from bench_scifact import machine, ndcg_at_10, recall_at_10  # noqa: E402


def quality(rankings: list[list[int]], qids: list[str], qrels: dict, chunk_doc: list[str]) -> dict:
    ndcg = [ndcg_at_10(doc_order(r, chunk_doc), qrels[q]) for r, q in zip(rankings, qids)]
    rec = [recall_at_10(doc_order(r, chunk_doc), qrels[q]) for r, q in zip(rankings, qids)]
    return {"ndcg@10": round(float(np.mean(ndcg)), 4), "recall@10": round(float(np.mean(rec)), 4)}


def rerank(candidates: np.ndarray, rows: np.ndarray, z: np.ndarray, k: int) -> list[int]:
    """The ``k`` best of ``candidates`` by cosine of their dequantised rows with ``z``."""
    vecs = rows[candidates]
    scores = (vecs @ z) / np.maximum(np.linalg.norm(vecs, axis=1) * np.linalg.norm(z), 1e-12)
    order = np.lexsort((candidates, -scores))[:k]
    return [int(i) for i in candidates[order]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capsule", type=Path, required=True)
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from annoy import AnnoyIndex

    t_start = time.perf_counter()
    queries, qrels = load_beir(args.scifact, "test")
    qids = sorted(queries)
    with open_built(args.capsule) as capsule:
        chunk_doc = chunk_documents_of(capsule)
        index = capsule._index
        projection = index.projection
        rows = index._vecs.astype(np.float32) * projection.scale  # [n, 256] dequantised
        embeddings = [capsule._embedder.embed([queries[q]])[0] for q in qids]
        default = [index.search(e, K_CHUNKS)[0] for e in embeddings]
        info = index.info
        indx_bytes = capsule._cf.sections["INDX"].length
        n_chunks = capsule.manifest.n_chunks
    zs = [projection.project_query(e) for e in embeddings]
    results = [{"variant": "default", "index_bytes": indx_bytes, **quality(default, qids, qrels, chunk_doc),
                "ann": f"annoy angular {info.dim}-d, {info.n_trees} trees, {info.n_candidates} candidates"}]
    exact = [rerank(np.arange(n_chunks), rows, z, K_CHUNKS) for z in zs]
    results.append({"variant": "exact", "index_bytes": 0, **quality(exact, qids, qrels, chunk_doc)})
    for bits in (64, 128, 256):
        codes = np.packbits(rows[:, :bits] > 0, axis=1)  # [n, bits/8]
        for n_candidates in (200, 400):
            ranked, ms = [], []
            for z in zs:
                t = time.perf_counter()
                q = np.packbits(z[:bits] > 0)
                distance = np.bitwise_count(codes ^ q).sum(axis=1)
                candidates = np.argpartition(distance, n_candidates)[:n_candidates]
                ms.append((time.perf_counter() - t) * 1e3)
                ranked.append(rerank(candidates, rows, z, K_CHUNKS))
            results.append({"variant": f"hamming-{bits}-exhaustive-{n_candidates}", "index_bytes": n_chunks * bits // 8,
                            "candidate_ms_mean": round(float(np.mean(ms)), 3),
                            **quality(ranked, qids, qrels, chunk_doc)})
        for n_trees in (8, 16):
            annoy = AnnoyIndex(bits, "hamming")
            annoy.set_seed(1)
            sign = (rows[:, :bits] > 0).astype(np.int8)
            for i in range(n_chunks):
                annoy.add_item(i, sign[i].tolist())
            annoy.build(n_trees, n_jobs=1)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "codes.annoy"
                annoy.save(str(path))
                size = path.stat().st_size
            for n_candidates in (200, 400):
                ranked, ms = [], []
                for z in zs:
                    t = time.perf_counter()
                    ids = annoy.get_nns_by_vector((z[:bits] > 0).astype(np.int8).tolist(), n_candidates,
                                                  search_k=n_candidates * n_trees)
                    ms.append((time.perf_counter() - t) * 1e3)
                    ranked.append(rerank(np.asarray(ids, dtype=np.int64), rows, z, K_CHUNKS))
                results.append({"variant": f"annoy-hamming-{bits}-t{n_trees}-{n_candidates}", "index_bytes": size,
                                "candidate_ms_mean": round(float(np.mean(ms)), 3),
                                **quality(ranked, qids, qrels, chunk_doc)})
            print(f"{bits} bits, {n_trees} trees done", file=sys.stderr)
    report = {"benchmark": "binary_codes", "machine": machine(), "capsule": str(args.capsule), "chunks": n_chunks,
              "queries": len(qids), "seconds": round(time.perf_counter() - t_start, 1), "rows": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
