"""Benchmark: hybrid retrieval (dense + lexical BM25, fused by RRF) through real capsules (issue 10).

Builds capsules with ``firmware_tools.build.build_capsule`` and queries them through
``edge.open_capsule`` / ``Capsule.search(mode=...)``:

1. SciFact (BEIR): nDCG@10 and recall@10 on the 300 test queries, modes dense, lexical, hybrid.
2. Fusion sweep on SciFact's train split (a development set apart from test): each query's
   dense ranking (``Capsule.rank``, the ANN path ``search`` uses, no frames read), its BM25
   ranking and its exact-identifier set (``LexicalIndex.search`` / ``exact_matches``, the calls
   ``search`` makes) are taken once per depth, then fused offline with ``edge.retrieval.fuse``
   over a grid of RRF k, dense:lexical weights and depth. The best train setting is then scored
   on test, next to the default (``firmware_tools.build.DEFAULT_FUSION``). The offline default
   on test is checked against ``search(mode="hybrid")`` (same figure expected).
3. PostgreSQL exact identifiers (bench/data/pg-identifiers): top-1 / top-5 per kind and mode
   (relevant: ``definition in " ".join(hit.text.split())``, as SOURCE.md and
   tests/e2e/test_hybrid.py); absent identifiers (the 20 shipped plus 50 generated here and
   checked absent from the pages): share with ``exact_match is False`` and share for which
   lexical mode returns no hit.
4. Python FAQ (../shared/data/python-docs/beir): recall@1, recall@5, MRR@10, nDCG@10 per mode.
5. Warm query latency at k=10 per mode over the SciFact test queries (frame cache cleared
   before each query, as bench_scifact.py), per stage, and the lexical stage's share.
6. Capsule bytes per section, LEXI ÷ raw text, for the three capsules.
7. ``--sweep-only``: a joint fusion sweep (``joint_sweep``) choosing one hybrid default for all three
   sets on development splits (SciFact train; a SHA-256 half of the FAQ and of pg-identifiers) by
   ``JOINT_CRITERION``, reported on the held-out halves; output ``bench/results/fusion-sweep.json``.
8. ``--conditional-sweep``: the same data and criterion, with dense:lexical weights conditioned on the
   query (has an identifier / length; ``conditional_sweep``); output ``bench/results/fusion-conditional.json``.

Document rankings: a query asks for 30 chunks; documents are ranked by their first chunk in the
hit order (for dense this is bench_scifact.py's max-score aggregation; for lexical and hybrid it
keeps exact-identifier chunks first, as ``search`` orders them).

Usage::

    python bench/bench_hybrid.py [--scifact ../shared/data/scifact] [--out bench/results/hybrid.json]
    python bench/bench_hybrid.py --sweep-only --workdir DIR [--sweep-out bench/results/fusion-sweep.json]
    python bench/bench_hybrid.py --conditional-sweep --workdir DIR

Not a test: figures depend on the machine; the JSON records which one. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import re
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

from bench_scifact import NOW, machine, ndcg_at_10, percentile, recall_at_10  # noqa: E402

MODES = ("dense", "lexical", "hybrid")
K_CHUNKS = 30  # chunks asked for per query, aggregated to documents
SWEEP_K = (10, 20, 40, 60, 100)
SWEEP_WEIGHTS = ((1, 1), (1, 2), (2, 1), (1, 1.5), (1.5, 1))
SWEEP_DEPTH = (20, 50, 100)
PG = ROOT / "bench" / "data" / "pg-identifiers"


# ---------------------------------------------------------------------------------------- helpers

def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def keys():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    return (Ed25519PrivateKey.from_private_bytes(bytes(32)),
            X25519PrivateKey.from_private_bytes(bytes(31) + b"\x01"))


def build(inputs: Path, out: Path, *, n_threads: int, cache: Path):
    from firmware_tools.build import build_capsule
    publisher, device = keys()
    t = time.perf_counter()
    result = build_capsule([inputs], out, signing_key=publisher, recipients=[device.public_key()],
                           issued_at=NOW - timedelta(days=1), expires_at=NOW + timedelta(days=365),
                           seed=b"bench", n_threads=n_threads, embedding_cache=cache)
    return result, time.perf_counter() - t


def open_built(path: Path):
    from edge import open_capsule
    publisher, device = keys()
    return open_capsule(path, trusted_keys=[publisher.public_key()], identities=[device], now=NOW)


def chunk_documents_of(capsule) -> list[str]:
    """Chunk id -> document name, from the capsule's DOCS (``Capsule.documents``)."""
    out = [""] * capsule.manifest.n_chunks
    for d in capsule.documents():
        for c in range(d.first_chunk_id, d.first_chunk_id + d.n_chunks):
            out[c] = d.name
    return out


def doc_order(chunk_ids, chunk_doc: list[str], strip: str = ".txt") -> list[str]:
    """Documents in order of their first chunk in ``chunk_ids``."""
    seen: dict[str, None] = {}
    for c in chunk_ids:
        seen.setdefault(chunk_doc[c][: -len(strip)] if strip else chunk_doc[c], None)
    return list(seen)


def size_report(result, capsule) -> dict:
    raw = result.raw_text_bytes
    sections = dict(result.section_bytes)
    lexi = sections.get("LEXI", 0)
    return {"raw_text_bytes": raw, "capsule_bytes": result.file_bytes, "chunks": result.n_chunks,
            "documents": result.n_documents, "section_bytes": sections,
            "section_per_raw_text": {k: round(v / raw, 4) for k, v in sections.items()},
            "lexi_bytes": lexi, "lexi_per_raw_text": round(lexi / raw, 4),
            "lexi_plaintext_bytes": capsule.manifest.lexical.plaintext_bytes,
            "lexi_share_of_capsule": round(lexi / result.file_bytes, 4),
            "lexi_per_indx": round(lexi / sections["INDX"], 4) if sections.get("INDX") else None}


def load_beir(data: Path, split: str):
    queries = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = {}
    for line in (data / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, {})[did] = int(score)
    return {q: queries[q] for q in qrels}, qrels


def write_corpus(data: Path, out: Path, max_docs: int = 0) -> int:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for doc in map(json.loads, (data / "corpus.jsonl").open()):
        if max_docs and n >= max_docs:
            break
        text = (doc.get("title", "").strip() + "\n\n" + doc["text"].strip()).strip()
        (out / f"{doc['_id']}.txt").write_text(text + "\n", encoding="utf-8")
        n += 1
    return n


def mode_quality(capsule, queries, qrels, chunk_doc) -> dict:
    out = {}
    for mode in MODES:
        ndcg, rec, r1, r5, rr = [], [], [], [], []
        for qid in sorted(queries):
            res = capsule.search(queries[qid], k=K_CHUNKS, mode=mode)
            ranked = doc_order([h.chunk_id for h in res], chunk_doc)
            rel = qrels[qid]
            ndcg.append(ndcg_at_10(ranked, rel))
            rec.append(recall_at_10(ranked, rel))
            r1.append(len(set(ranked[:1]) & set(rel)) / len(rel))
            r5.append(len(set(ranked[:5]) & set(rel)) / len(rel))
            rank = next((i + 1 for i, d in enumerate(ranked[:10]) if d in rel), None)
            rr.append(1.0 / rank if rank else 0.0)
        out[mode] = {"ndcg@10": round(float(np.mean(ndcg)), 4), "recall@10": round(float(np.mean(rec)), 4),
                     "recall@1": round(float(np.mean(r1)), 4), "recall@5": round(float(np.mean(r5)), 4),
                     "mrr@10": round(float(np.mean(rr)), 4), "n_queries": len(ndcg)}
    return out


# ------------------------------------------------------------------------------------ fusion sweep

def rankings(capsule, queries: dict[str, str]) -> dict[str, dict]:
    """Per query: dense ids per depth, BM25 ids (depth 100) and the exact-identifier ids."""
    from edge.lexical import LexicalQuery
    from edge.retrieval import as_valid_text
    lexi = capsule._lexical  # the calls Capsule._candidates makes (no public ranking-only API)
    out = {}
    for qid, text in queries.items():
        vector = capsule.embedder.embed([text])[0]
        dense = {d: capsule.rank(vector, d)[0] for d in SWEEP_DEPTH}
        lq = LexicalQuery.parse(as_valid_text(text))
        lexical = lexi.search(lq, max(SWEEP_DEPTH))[0]
        exact = lexi.exact_matches(lq, limit=max(max(SWEEP_DEPTH), 100))  # search: max(depth, 100)
        out[qid] = {"dense": dense, "lexical": lexical, "exact": set(exact)}
    return out


def fused_quality(ranks, qrels, chunk_doc, *, k: int, dense_weight, lexical_weight, depth: int,
                  exact_first: bool = True) -> dict:
    from edge.manifest import FusionInfo
    from edge.retrieval import fuse
    fusion = FusionInfo("rrf", k, dense_weight, lexical_weight, depth)  # floats allowed by fuse itself
    ndcg, rec = [], []
    for qid, r in ranks.items():
        order = fuse(r["dense"][depth], r["lexical"][:depth], exact=r["exact"] if exact_first else set(),
                     fusion=fusion)
        ranked = doc_order([f.chunk_id for f in order[:K_CHUNKS]], chunk_doc)
        ndcg.append(ndcg_at_10(ranked, qrels[qid]))
        rec.append(recall_at_10(ranked, qrels[qid]))
    return {"ndcg@10": round(float(np.mean(ndcg)), 4), "recall@10": round(float(np.mean(rec)), 4),
            "_ndcg": float(np.mean(ndcg))}


def single_quality(ranks, qrels, chunk_doc, which: str, depth: int = 100) -> float:
    vals = []
    for qid, r in ranks.items():
        ids = r["dense"][depth] if which == "dense" else r["lexical"][:depth]
        vals.append(ndcg_at_10(doc_order(ids[:K_CHUNKS], chunk_doc), qrels[qid]))
    return round(float(np.mean(vals)), 4)


def sweep(capsule, scifact: Path, chunk_doc, default: dict, search_hybrid_test: float) -> dict:
    train_q, train_rel = load_beir(scifact, "train")
    test_q, test_rel = load_beir(scifact, "test")
    t = time.perf_counter()
    train_r = rankings(capsule, train_q)
    test_r = rankings(capsule, test_q)
    rank_s = time.perf_counter() - t
    grid = []
    for k in SWEEP_K:
        for wd, wl in SWEEP_WEIGHTS:
            for depth in SWEEP_DEPTH:
                q = fused_quality(train_r, train_rel, chunk_doc, k=k, dense_weight=wd, lexical_weight=wl, depth=depth)
                grid.append({"k": k, "dense_weight": wd, "lexical_weight": wl, "depth": depth,
                             "train_ndcg@10": q["ndcg@10"], "_ndcg": q["_ndcg"]})
    best = max(grid, key=lambda g: g["_ndcg"])  # first of equals in grid order
    dflt = dict(k=default["k"], dense_weight=default["dense_weight"], lexical_weight=default["lexical_weight"],
                depth=default["depth"])
    best_p = {key: best[key] for key in ("k", "dense_weight", "lexical_weight", "depth")}
    res = {}
    for name, p in (("best", best_p), ("default", dflt)):
        tr = fused_quality(train_r, train_rel, chunk_doc, **p)
        te = fused_quality(test_r, test_rel, chunk_doc, **p)
        res[name] = {**p, "train_ndcg@10": tr["ndcg@10"], "train_recall@10": tr["recall@10"],
                     "test_ndcg@10": te["ndcg@10"], "test_recall@10": te["recall@10"]}
    without_exact = {}
    for name, p in (("best", best_p), ("default", dflt)):
        without_exact[name] = {
            "train_ndcg@10": fused_quality(train_r, train_rel, chunk_doc, **p, exact_first=False)["ndcg@10"],
            "test_ndcg@10": fused_quality(test_r, test_rel, chunk_doc, **p, exact_first=False)["ndcg@10"]}
    ranked_grid = sorted(grid, key=lambda g: -g["_ndcg"])
    for g in grid:
        g.pop("_ndcg")
    return {
        "train_queries": len(train_q), "test_queries": len(test_q),
        "method": "rankings taken once per query (Capsule.rank per depth; LexicalIndex.search depth 100, "
                  "prefixes for smaller depths; exact_matches limit 100), fused offline with edge.retrieval.fuse; "
                  "top 30 fused chunks -> documents by first chunk. Non-integer weights (1.5) are passed to fuse "
                  "as floats; in a manifest (integer weights) 1:1.5 is 2:3. search() fuses max(k, depth) per "
                  "ranking, so at k=30 depth 20 would run as 30; the grid fuses exactly `depth`.",
        "rankings_seconds": round(rank_s, 1),
        "grid": grid,
        "top5_train": [{key: g[key] for key in ("k", "dense_weight", "lexical_weight", "depth", "train_ndcg@10")}
                       for g in ranked_grid[:5]],
        "best": res["best"], "default": res["default"],
        "best_minus_default": {"train_ndcg@10": round(res["best"]["train_ndcg@10"] - res["default"]["train_ndcg@10"], 4),
                               "test_ndcg@10": round(res["best"]["test_ndcg@10"] - res["default"]["test_ndcg@10"], 4)},
        "single_retriever_ndcg@10": {
            "note": "one ranking alone (depth 100, top 30 chunks), no exact-first reordering",
            "train": {"dense": single_quality(train_r, train_rel, chunk_doc, "dense"),
                      "lexical_bm25": single_quality(train_r, train_rel, chunk_doc, "lexical")},
            "test": {"dense": single_quality(test_r, test_rel, chunk_doc, "dense"),
                     "lexical_bm25": single_quality(test_r, test_rel, chunk_doc, "lexical")}},
        "fused_without_exact_first": without_exact,
        "check_offline_default_test_vs_search_hybrid": {"offline": res["default"]["test_ndcg@10"],
                                                        "search": search_hybrid_test},
    }


# ------------------------------------------------------------------------------ joint fusion sweep

JOINT_K = (5, 10, 20, 40, 60)
JOINT_WEIGHTS = ((1, 1), (2, 1), (3, 1), (3, 2), (1, 2))
JOINT_DEPTH = (20, 50, 100)
JOINT_EXACT = ("on", "off", "short")  # exact-first always / never / only for queries of <= SHORT_TOKENS tokens
SHORT_TOKENS = 3
PG_IDENTIFIER_KINDS = ("sqlstate", "sqlstate-lower", "condition", "guc")
JOINT_CRITERION = (
    "maximise on the dev splits the mean of (SciFact nDCG@10 - dense), (FAQ nDCG@10 - dense) and "
    "(pg identifier-kinds top-1 - dense), dense being dense-only retrieval on the same dev split; "
    "subject to FAQ nDCG@10 >= dense FAQ nDCG@10 - 0.01 and pg identifier-kinds top-5 >= 0.99; ties "
    "(to 1e-9) go to the first in grid order (k, weights, depth, exact as listed). Sensitivity "
    "('strict_faq'): the same with FAQ nDCG@10 >= dense (no tolerance). Fixed before any test figure "
    "was looked at.")


def split_of(qid: str) -> str:
    """Deterministic dev/test half of a query id: parity of the first byte of SHA-256(id)."""
    import hashlib
    return "dev" if hashlib.sha256(qid.encode("utf-8")).digest()[0] % 2 == 0 else "test"


def joint_rankings(capsule, queries: dict[str, str], k_hits: int) -> dict[str, dict]:
    """Per query, each ranking once: dense ids and cosines per fused depth (``Capsule.rank``), BM25
    ids per fused depth and the exact-identifier ids (``LexicalIndex.search`` / ``exact_matches``),
    with ``search``'s rule that a ranking is fused to ``max(k, depth)``; plus dense alone at ``k_hits``."""
    from edge.lexical import LexicalQuery
    from edge.retrieval import as_valid_text
    lexi = capsule._lexical  # the calls Capsule._candidates makes (no public ranking-only API)
    depths = sorted({max(k_hits, d) for d in JOINT_DEPTH})
    out = {}
    for qid, text in queries.items():
        vector = capsule.embedder.embed([text])[0]
        lq = LexicalQuery.parse(as_valid_text(text))
        dense = {d: capsule.rank(vector, d) for d in depths}
        out[qid] = {"dense": {d: ids for d, (ids, _) in dense.items()},
                    "dense_scores": {d: [float(x) for x in scores] for d, (_, scores) in dense.items()},
                    "dense_alone": capsule.rank(vector, k_hits)[0],
                    "lexical": {d: lexi.search(lq, d)[0] for d in depths},
                    "lexical_alone": lexi.search(lq, k_hits)[0],
                    "exact": set(lexi.exact_matches(lq, limit=100)),  # search: max(depth, 100), depth <= 100
                    "tokens": len(lq.groups), "identifiers": len(lq.identifiers)}
    return out


def joint_order(r: dict, setting: dict, k_hits: int) -> list[int]:
    from edge.manifest import FusionInfo
    from edge.retrieval import fuse
    if setting["exact"] == "dense":
        return list(r["dense_alone"])
    if setting["exact"] == "lexical":  # lexical mode: exact first, then BM25 order
        return sorted(set(r["lexical_alone"]) | r["exact"],
                      key=lambda c: (c not in r["exact"], r["lexical_alone"].index(c) if c in r["lexical_alone"]
                                     else 1 << 30, c))[:k_hits]
    depth = max(k_hits, setting["depth"])
    use_exact = setting["exact"] == "on" or (setting["exact"] == "short" and r["tokens"] <= SHORT_TOKENS)
    if "condition" in setting:  # conditional weights (conditional_sweep): lookup-like queries vs the rest
        wd, wl = setting["weights_lookup"] if is_lookup(r, setting["condition"]) else setting["weights_other"]
    else:
        wd, wl = setting["dense_weight"], setting["lexical_weight"]
    fusion = FusionInfo("rrf", setting["k"], wd, wl, depth, dense_first_margin=setting.get("dense_first_margin", 0))
    return [f.chunk_id for f in fuse(r["dense"][depth], r["lexical"][depth],
                                     exact=r["exact"] if use_exact else set(), fusion=fusion,
                                     dense_scores=r["dense_scores"][depth])[:k_hits]]


def beir_metrics(ranks: dict, qrels: dict, chunk_doc: list[str], setting: dict, qids) -> dict:
    ndcg, rec10, r1, rr = [], [], [], []
    for qid in qids:
        ranked = doc_order(joint_order(ranks[qid], setting, K_CHUNKS), chunk_doc)
        rel = qrels[qid]
        ndcg.append(ndcg_at_10(ranked, rel))
        rec10.append(recall_at_10(ranked, rel))
        r1.append(len(set(ranked[:1]) & set(rel)) / len(rel))
        rank = next((i + 1 for i, d in enumerate(ranked[:10]) if d in rel), None)
        rr.append(1.0 / rank if rank else 0.0)
    return {"ndcg@10": float(np.mean(ndcg)), "recall@10": float(np.mean(rec10)), "recall@1": float(np.mean(r1)),
            "mrr@10": float(np.mean(rr)), "n": len(ndcg)}


def pg_metrics(ranks: dict, relevant: dict, kinds: dict, setting: dict, qids) -> dict:
    out: dict[str, list] = {}
    for qid in qids:
        order = joint_order(ranks[qid], setting, 5)
        hit1, hit5 = bool(order) and order[0] in relevant[qid], any(c in relevant[qid] for c in order)
        groups = [kinds[qid]] + (["identifier kinds"] if kinds[qid] in PG_IDENTIFIER_KINDS else [])
        for g in groups:
            out.setdefault(g, []).append((hit1, hit5))
    return {g: {"top1": float(np.mean([a for a, _ in v])), "top5": float(np.mean([b for _, b in v])), "n": len(v)}
            for g, v in out.items()}


def rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


def best_of(rows: list[dict]) -> dict | None:
    """The row with the highest ``objective``; the first of equal ones (grid order breaks ties)."""
    best = None
    for g in rows:
        if best is None or g["objective"] > best["objective"] + 1e-9:
            best = g
    return best


def joint_data(work: Path, scifact: Path, faq: Path, n_threads: int) -> tuple[dict, float]:
    """The three sets' rankings (``joint_rankings``), relevance and dev/test splits, and the seconds
    taken; capsules in ``work`` are reused, else built."""
    cache = work / "embeddings.sqlite"

    def capsule_at(name: str, inputs: Path) -> Path:
        path = work / name
        if not path.exists():  # rebuilt (the embedding cache makes it fast)
            build(inputs, path, n_threads=n_threads, cache=cache)
        return path

    data: dict[str, dict] = {}
    t = time.perf_counter()
    if not (work / "scifact.capsule").exists():
        write_corpus(scifact, work / "scifact-docs")
    with open_built(capsule_at("scifact.capsule", work / "scifact-docs")) as capsule:
        chunk_doc = chunk_documents_of(capsule)
        train_q, train_rel = load_beir(scifact, "train")
        test_q, test_rel = load_beir(scifact, "test")
        ranks = joint_rankings(capsule, {**train_q, **test_q}, K_CHUNKS)
        data["scifact"] = {"ranks": ranks, "qrels": {**train_rel, **test_rel}, "chunk_doc": chunk_doc,
                           "split": {"dev": sorted(train_q), "test": sorted(test_q)}}
    if not (work / "python-faq.capsule").exists():
        write_corpus(faq, work / "faq-docs")
    with open_built(capsule_at("python-faq.capsule", work / "faq-docs")) as capsule:
        faq_q, faq_rel = load_beir(faq, "test")
        data["faq"] = {"ranks": joint_rankings(capsule, faq_q, K_CHUNKS), "qrels": faq_rel,
                       "chunk_doc": chunk_documents_of(capsule),
                       "split": {s: sorted(q for q in faq_q if split_of(q) == s) for s in ("dev", "test")}}
    with open_built(capsule_at("pg-identifiers.capsule", PG / "docs")) as capsule:
        records = [json.loads(line) for line in (PG / "queries.jsonl").read_text().splitlines()]
        present = [r for r in records if r["kind"] != "absent"]
        texts = [" ".join(h.text.split()) for h in capsule.export()]
        relevant = {r["id"]: {c for c, t in enumerate(texts) if r["definition"] in t} for r in present}
        data["pg"] = {"ranks": joint_rankings(capsule, {r["id"]: r["query"] for r in present}, 5),
                      "relevant": relevant, "kinds": {r["id"]: r["kind"] for r in present},
                      "split": {**{s: sorted(r["id"] for r in present if split_of(r["id"]) == s)
                                   for s in ("dev", "test")}, "all": [r["id"] for r in present]}}
    return data, time.perf_counter() - t


def joint_evaluate(data: dict, setting: dict, split: str) -> dict:
    """Metrics of ``setting`` on one split ("dev", "test"; "all": SciFact test, whole FAQ and pg)."""
    sf, fq, pg = data["scifact"], data["faq"], data["pg"]
    scifact_split = sf["split"][split] if split != "all" else sf["split"]["test"]  # "all": the 300 test
    return {"scifact": beir_metrics(sf["ranks"], sf["qrels"], sf["chunk_doc"], setting, scifact_split),
            "faq": beir_metrics(fq["ranks"], fq["qrels"], fq["chunk_doc"], setting,
                                fq["split"][split] if split != "all" else sorted(fq["qrels"])),
            "pg": pg_metrics(pg["ranks"], pg["relevant"], pg["kinds"], setting, pg["split"][split])}


def joint_summary(m: dict) -> dict:
    ident = m["pg"]["identifier kinds"]
    return {"scifact_ndcg@10": m["scifact"]["ndcg@10"], "faq_ndcg@10": m["faq"]["ndcg@10"],
            "faq_recall@1": m["faq"]["recall@1"], "pg_top1": ident["top1"], "pg_top5": ident["top5"],
            "pg_guc_top1": m["pg"]["guc"]["top1"]}


def joint_sweep(work: Path, scifact: Path, faq: Path, n_threads: int, default: dict) -> dict:
    """One fusion default for SciFact, Python FAQ and pg-identifiers, chosen on dev, reported on test."""
    t_all = time.perf_counter()
    data, rank_s = joint_data(work, scifact, faq, n_threads)

    def evaluate(setting: dict, split: str) -> dict:
        return joint_evaluate(data, setting, split)

    summary = joint_summary

    dense_s = {"exact": "dense"}
    lexical_s = {"exact": "lexical"}
    dflt = {"k": default["k"], "dense_weight": default["dense_weight"], "lexical_weight": default["lexical_weight"],
            "depth": default["depth"], "exact": "on"}
    dense_dev = summary(evaluate(dense_s, "dev"))
    t = time.perf_counter()
    grid = []
    for k in JOINT_K:
        for wd, wl in JOINT_WEIGHTS:
            for depth in JOINT_DEPTH:
                for exact in JOINT_EXACT:
                    s = {"k": k, "dense_weight": wd, "lexical_weight": wl, "depth": depth, "exact": exact}
                    dev = summary(evaluate(s, "dev"))
                    objective = np.mean([dev["scifact_ndcg@10"] - dense_dev["scifact_ndcg@10"],
                                         dev["faq_ndcg@10"] - dense_dev["faq_ndcg@10"],
                                         dev["pg_top1"] - dense_dev["pg_top1"]])
                    feasible = (dev["faq_ndcg@10"] >= dense_dev["faq_ndcg@10"] - 0.01 and dev["pg_top5"] >= 0.99)
                    grid.append({**s, "dev": dev, "objective": float(objective), "feasible": bool(feasible)})
    grid_s = time.perf_counter() - t

    setting_keys = ("k", "dense_weight", "lexical_weight", "depth", "exact")
    feasible = [g for g in grid if g["feasible"]]
    chosen = best_of(feasible) if feasible else best_of(grid)
    per_exact = {e: best_of([g for g in feasible if g["exact"] == e]) for e in JOINT_EXACT}
    # sensitivity (declared with the criterion): FAQ with no tolerance, dev nDCG@10 >= dense
    strict = best_of([g for g in feasible if g["dev"]["faq_ndcg@10"] >= dense_dev["faq_ndcg@10"]])
    dflt_row = next(g for g in grid if all(g[key] == dflt[key] for key in setting_keys))
    # test figures: computed only now, after the choice above
    report = {}
    named = {"chosen": {key: chosen[key] for key in setting_keys}, "default": dflt, "dense": dense_s,
             "lexical": lexical_s}
    for e, row in per_exact.items():
        if row is not None:
            named[f"best_exact_{e}"] = {key: row[key] for key in setting_keys}
    if strict is not None:
        named["strict_faq"] = {key: strict[key] for key in setting_keys}
    for name, s in named.items():
        dev_full, test_full = evaluate(s, "dev"), evaluate(s, "test")
        report[name] = {"setting": s, "dev": summary(dev_full), "test": summary(test_full),
                        "dev_detail": dev_full, "test_detail": test_full}
    checks = {"default_offline_full_sets": summary(evaluate(dflt, "all")),
              "dense_offline_full_sets": summary(evaluate(dense_s, "all")),
              "search_figures_in_hybrid_json": "SciFact test hybrid nDCG@10 0.6650, dense 0.6561; FAQ hybrid "
                                               "nDCG@10 0.7857 recall@1 0.6629, dense 0.8601 / 0.7543; pg identifier "
                                               "kinds hybrid 0.922 / 0.996, dense 0.400 / 0.732"}
    top = sorted(feasible, key=lambda g: -g["objective"])[:10]
    return rounded({
        "benchmark": "joint fusion sweep: one hybrid default for SciFact, Python FAQ and pg-identifiers (issue 10)",
        "machine": machine(),
        "git": {"commit": git("rev-parse", "HEAD"),
                "dirty_files": git("status", "--porcelain", "--untracked-files=no").splitlines()},
        "default_fusion": dict(default),
        "criterion": JOINT_CRITERION,
        "splits": {"scifact": {"dev": "BEIR train (809 queries)", "test": "BEIR test (300 queries)"},
                   "faq": {"rule": "sha256(query id)[0] even -> dev, odd -> test",
                           **{s: len(data["faq"]["split"][s]) for s in ("dev", "test")}},
                   "pg": {"rule": "sha256(query id)[0] even -> dev, odd -> test (absent queries excluded)",
                          **{s: len(data["pg"]["split"][s]) for s in ("dev", "test")},
                          "identifier_kinds": {s: sum(data["pg"]["kinds"][q] in PG_IDENTIFIER_KINDS
                                                      for q in data["pg"]["split"][s]) for s in ("dev", "test")}}},
        "method": "each ranking taken once per query and fused depth (Capsule.rank; LexicalIndex.search; "
                  "exact_matches limit 100), fused offline with edge.retrieval.fuse. As search() does, a ranking "
                  "is fused to max(k, depth): SciFact and FAQ ask for 30 chunks (so depth 20 runs as 30), "
                  "pg-identifiers for 5. exact 'on' = exact-identifier chunks first (search today), 'off' = "
                  "fuse(exact=set()), 'short' = exact-first only when LexicalQuery.parse(q) has <= 3 token "
                  "groups (distinct tokens; .terms would also count compact forms). SciFact/FAQ: top 30 chunks "
                  "-> documents by first chunk; pg: top 5 chunks, relevant = definition in whitespace-normalised "
                  "chunk text. 'dense' = Capsule.rank at k (search(mode='dense')).",
        "grid_axes": {"rrf_k": JOINT_K, "weights_dense_lexical": JOINT_WEIGHTS, "depth": JOINT_DEPTH,
                      "exact": JOINT_EXACT},
        "dense_dev": dense_dev,
        "n_settings": len(grid), "n_feasible": len(feasible),
        "chosen": report["chosen"]["setting"], "default_dev_row": dflt_row,
        "top10_feasible_dev": top,
        "report": report,
        "checks": checks,
        "seconds": {"rankings": round(rank_s, 1), "grid": round(grid_s, 1),
                    "total": round(time.perf_counter() - t_all, 1)},
        "grid": grid,
    })


# ------------------------------------------------------------------------------- dense-first sweep

#: ``lexical.fusion.dense_first_margin`` values tried (thousandths of cosine; 0 = off).
DENSE_FIRST_MARGINS = (0, 40, 60, 80, 100, 120, 140, 160, 200)


def dense_first_sweep(work: Path, scifact: Path, faq: Path, n_threads: int, default: dict) -> dict:
    """The shipped fusion (``default``: k, weights, depth, exact-first for <= 3 tokens) with each
    ``dense_first_margin`` of ``DENSE_FIRST_MARGINS``; chosen on dev by the joint sweep's criterion
    (``JOINT_CRITERION``), test figures computed only for the chosen margin and for 0."""
    t_all = time.perf_counter()
    data, rank_s = joint_data(work, scifact, faq, n_threads)
    base = {"k": default["k"], "dense_weight": default["dense_weight"], "lexical_weight": default["lexical_weight"],
            "depth": default["depth"], "exact": "short"}
    dense_dev = joint_summary(joint_evaluate(data, {"exact": "dense"}, "dev"))
    rows = []
    for margin in DENSE_FIRST_MARGINS:
        dev = joint_summary(joint_evaluate(data, {**base, "dense_first_margin": margin}, "dev"))
        objective = np.mean([dev[key] - dense_dev[key] for key in ("scifact_ndcg@10", "faq_ndcg@10", "pg_top1")])
        feasible = dev["faq_ndcg@10"] >= dense_dev["faq_ndcg@10"] - 0.01 and dev["pg_top5"] >= 0.99
        rows.append({"dense_first_margin": margin, "dev": dev, "objective": float(objective),
                     "feasible": bool(feasible)})
    feasible = [g for g in rows if g["feasible"]]
    chosen = best_of(feasible) if feasible else best_of(rows)
    report = {}
    for name, margin in (("chosen", chosen["dense_first_margin"]), ("off", 0)):
        s = {**base, "dense_first_margin": margin}
        report[name] = {"setting": s, **{split: joint_summary(joint_evaluate(data, s, split))
                                         for split in ("dev", "test", "all")}}
    report["dense"] = {"setting": {"exact": "dense"},
                       **{split: joint_summary(joint_evaluate(data, {"exact": "dense"}, split))
                          for split in ("dev", "test", "all")}}
    # paired bootstrap (10,000 resamples of the queries, fixed seed) of hybrid - dense nDCG@10 per query
    paired = {}
    rng = np.random.default_rng(20261208)
    for name, split in (("faq", "test"), ("faq", "all"), ("scifact", "test")):
        d = data[name]
        qids = d["split"]["test"] if split == "test" else sorted(d["qrels"])
        chosen_s = {**base, "dense_first_margin": chosen["dense_first_margin"]}
        diff = np.array([ndcg_at_10(doc_order(joint_order(d["ranks"][q], chosen_s, K_CHUNKS), d["chunk_doc"]),
                                    d["qrels"][q]) -
                         ndcg_at_10(doc_order(joint_order(d["ranks"][q], {"exact": "dense"}, K_CHUNKS), d["chunk_doc"]),
                                    d["qrels"][q]) for q in qids])
        means = diff[rng.integers(0, len(diff), (10_000, len(diff)))].mean(axis=1)
        paired[f"{name}_{split}"] = {"n": len(diff), "mean": float(diff.mean()),
                                     "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
                                     "better": int((diff > 1e-12).sum()), "worse": int((diff < -1e-12).sum())}
    promoted = {}
    for name in ("scifact", "faq"):
        d = data[name]
        promoted[name] = {split: sum(1 for q in d["split"][split] if len(d["ranks"][q]["dense_scores"][30]) > 1 and
                                     d["ranks"][q]["dense_scores"][30][0] - d["ranks"][q]["dense_scores"][30][1]
                                     >= chosen["dense_first_margin"] / 1000)
                          for split in ("dev", "test")}
    return rounded({
        "benchmark": "dense-first sweep: lexical.fusion.dense_first_margin over the shipped fusion (issue 10)",
        "machine": machine(),
        "git": {"commit": git("rev-parse", "HEAD"),
                "dirty_files": git("status", "--porcelain", "--untracked-files=no").splitlines()},
        "default_fusion": dict(default), "criterion": JOINT_CRITERION,
        "rule": "when no exact identifier match went first, the dense ranking's first chunk goes first if its "
                "cosine leads the second's by >= margin / 1000 (edge.retrieval.fuse)",
        "margins": DENSE_FIRST_MARGINS, "dense_dev": dense_dev, "rows": rows,
        "chosen_margin": chosen["dense_first_margin"], "report": report,
        "queries_with_that_lead": promoted,
        "hybrid_minus_dense_ndcg@10_paired_bootstrap": paired,
        "seconds": {"rankings": round(rank_s, 1), "total": round(time.perf_counter() - t_all, 1)},
    })


# --------------------------------------------------------------------------- conditional fusion sweep

#: Which queries count as lookups (fused with ``weights_lookup``; the rest with ``weights_other``).
#: The first three are the grid the criterion chooses from; the fourth is a sensitivity.
COND_CONDITIONS = ("has-identifier", "long-query", "identifier-or-short", "identifier-or-under-6")
COND_PRIMARY = COND_CONDITIONS[:3]
LONG_TOKENS = 6
COND_K = (5, 10)
COND_DEPTH = 20
COND_WEIGHTS_OTHER = ((1, 1), (3, 2), (2, 1), (3, 1), (1, 0))  # dense:lexical, queries not lookups
COND_WEIGHTS_LOOKUP = ((1, 1), (3, 2))
COND_DESCRIPTION = {
    "has-identifier": "lookup = LexicalQuery.parse(q).identifiers non-empty",
    "long-query": f"lookup = fewer than {LONG_TOKENS} token groups (queries of >= {LONG_TOKENS} tokens get "
                  "weights_other)",
    "identifier-or-short": f"lookup = identifiers non-empty or <= {SHORT_TOKENS} token groups (the exact-first "
                           "short rule)",
    "identifier-or-under-6": f"lookup = identifiers non-empty or < {LONG_TOKENS} token groups (sensitivity)"}


def is_lookup(r: dict, condition: str) -> bool:
    if condition == "has-identifier":
        return r["identifiers"] > 0
    if condition == "long-query":
        return r["tokens"] < LONG_TOKENS
    if condition == "identifier-or-short":
        return r["identifiers"] > 0 or r["tokens"] <= SHORT_TOKENS
    if condition == "identifier-or-under-6":
        return r["identifiers"] > 0 or r["tokens"] < LONG_TOKENS
    raise ValueError(condition)


def conditional_sweep(work: Path, scifact: Path, faq: Path, n_threads: int, default: dict) -> dict:
    """Fusion weights conditioned on the query (identifier / length), chosen on dev by
    ``JOINT_CRITERION`` as the joint sweep, reported on the held-out halves."""
    t_all = time.perf_counter()
    data, rank_s = joint_data(work, scifact, faq, n_threads)
    splits = {"scifact": data["scifact"]["split"], "faq": data["faq"]["split"],
              "pg": {s: data["pg"]["split"][s] for s in ("dev", "test")}}
    counts = {}
    for name, sp in splits.items():
        ranks = data[name]["ranks"]
        counts[name] = {}
        for split, qids in sp.items():
            if name == "pg":  # the criterion's pg figures are the identifier kinds only
                qids_ident = [q for q in qids if data["pg"]["kinds"][q] in PG_IDENTIFIER_KINDS]
            else:
                qids_ident = qids
            counts[name][split] = {"queries": len(qids_ident),
                                   **{c: sum(is_lookup(ranks[q], c) for q in qids_ident) for c in COND_CONDITIONS},
                                   f"tokens>={LONG_TOKENS}": sum(ranks[q]["tokens"] >= LONG_TOKENS for q in qids_ident),
                                   f"tokens<={SHORT_TOKENS}": sum(ranks[q]["tokens"] <= SHORT_TOKENS for q in qids_ident)}
            if name == "pg":
                counts[name][split]["all_kinds"] = {
                    "queries": len(qids), **{c: sum(is_lookup(ranks[q], c) for q in qids) for c in COND_CONDITIONS}}
    dense_s = {"exact": "dense"}
    dense_dev = joint_summary(joint_evaluate(data, dense_s, "dev"))

    def row_of(s: dict) -> dict:
        dev = joint_summary(joint_evaluate(data, s, "dev"))
        objective = np.mean([dev["scifact_ndcg@10"] - dense_dev["scifact_ndcg@10"],
                             dev["faq_ndcg@10"] - dense_dev["faq_ndcg@10"],
                             dev["pg_top1"] - dense_dev["pg_top1"]])
        feasible = dev["faq_ndcg@10"] >= dense_dev["faq_ndcg@10"] - 0.01 and dev["pg_top5"] >= 0.99
        return {**s, "dev": dev, "objective": float(objective), "feasible": bool(feasible),
                "strict_feasible": bool(feasible and dev["faq_ndcg@10"] >= dense_dev["faq_ndcg@10"])}

    t = time.perf_counter()
    grid = [row_of({"condition": c, "k": k, "depth": COND_DEPTH, "exact": "short",
                    "weights_lookup": list(wl), "weights_other": list(wo)})
            for c in COND_CONDITIONS for k in COND_K for wl in COND_WEIGHTS_LOOKUP for wo in COND_WEIGHTS_OTHER]
    grid_s = time.perf_counter() - t

    keys = ("condition", "k", "depth", "exact", "weights_lookup", "weights_other")
    primary = [g for g in grid if g["condition"] in COND_PRIMARY]
    picks = {"chosen": best_of([g for g in primary if g["feasible"]]),
             "strict_faq": best_of([g for g in primary if g["strict_feasible"]]),
             "chosen_with_sensitivity_condition": best_of([g for g in grid if g["feasible"]]),
             "strict_faq_with_sensitivity_condition": best_of([g for g in grid if g["strict_feasible"]])}
    for c in COND_CONDITIONS:
        picks[f"best_{c}"] = best_of([g for g in grid if g["condition"] == c and g["feasible"]])
        picks[f"strict_best_{c}"] = best_of([g for g in grid if g["condition"] == c and g["strict_feasible"]])
    # test figures: computed only now, after the choices above
    named = {"dense": dense_s,
             "default": {"k": default["k"], "dense_weight": default["dense_weight"],
                         "lexical_weight": default["lexical_weight"], "depth": default["depth"], "exact": "short"},
             "unconditional_k5_3:2_d20_short": {"k": 5, "dense_weight": 3, "lexical_weight": 2, "depth": 20,
                                                "exact": "short"}}
    named.update({n: {key: g[key] for key in keys} for n, g in picks.items() if g is not None})
    report = {}
    for name, s in named.items():
        dev_full, test_full = joint_evaluate(data, s, "dev"), joint_evaluate(data, s, "test")
        report[name] = {"setting": s, "dev": joint_summary(dev_full), "test": joint_summary(test_full),
                        "pg_kinds_test": {kd: v["top1"] for kd, v in test_full["pg"].items()},
                        "pg_kinds_dev": {kd: v["top1"] for kd, v in dev_full["pg"].items()}}
    # diagnostic, after the choice: nDCG@10 per query group (unconditional settings), dev and test
    groups = {"identifier": lambda r: r["identifiers"] > 0, "no-identifier": lambda r: r["identifiers"] == 0,
              f"tokens>={LONG_TOKENS}": lambda r: r["tokens"] >= LONG_TOKENS,
              f"tokens<{LONG_TOKENS}": lambda r: r["tokens"] < LONG_TOKENS}
    plain = {"dense": dense_s, **{f"k5 {wd}:{wl}": {"k": 5, "dense_weight": wd, "lexical_weight": wl, "depth": 20,
                                                    "exact": "short"} for wd, wl in COND_WEIGHTS_OTHER}}
    by_group = {}
    for name in ("scifact", "faq"):
        d = data[name]
        for split in ("dev", "test"):
            for gname, pred in groups.items():
                qids = [q for q in d["split"][split] if pred(d["ranks"][q])]
                by_group.setdefault(name, {}).setdefault(split, {})[gname] = {
                    "n": len(qids), **{sn: beir_metrics(d["ranks"], d["qrels"], d["chunk_doc"], st, qids)["ndcg@10"]
                                       if qids else None for sn, st in plain.items()}}
    return rounded({
        "benchmark": "conditional fusion sweep: hybrid weights by query condition (identifier / length), "
                     "SciFact, Python FAQ, pg-identifiers (issue 10)",
        "machine": machine(),
        "git": {"commit": git("rev-parse", "HEAD"),
                "dirty_files": git("status", "--porcelain", "--untracked-files=no").splitlines()},
        "default_fusion": dict(default),
        "criterion": JOINT_CRITERION + " Chosen among the primary conditions " + ", ".join(COND_PRIMARY) +
                     "; grid order condition, k, weights_lookup, weights_other.",
        "conditions": COND_DESCRIPTION,
        "method": "as the joint sweep (same rankings, splits, offline fuse at max(k, depth)); exact-first only for "
                  f"queries of <= {SHORT_TOKENS} token groups; a query classed as lookup by the condition is fused "
                  "with weights_lookup (dense:lexical), others with weights_other. 1:0 = lexical weight 0 "
                  "(dense order; exact-first still applies to short queries). Counts: queries per split "
                  "classed as lookup (pg: identifier kinds, all present kinds under all_kinds).",
        "counts": counts,
        "dense_dev": dense_dev,
        "grid_axes": {"condition": COND_CONDITIONS, "rrf_k": COND_K, "depth": COND_DEPTH,
                      "weights_lookup": COND_WEIGHTS_LOOKUP, "weights_other": COND_WEIGHTS_OTHER},
        "n_settings": len(grid), "n_feasible_primary": sum(g["feasible"] for g in primary),
        "n_strict_feasible_primary": sum(g["strict_feasible"] for g in primary),
        "chosen": report.get("chosen", {}).get("setting"),
        "report": report,
        "ndcg_by_query_group": {"note": "post hoc (after the choice): nDCG@10 of unconditional settings (k=5, "
                                        "depth 20, exact-first short) on each query group", **by_group},
        "seconds": {"rankings": round(rank_s, 1), "grid": round(grid_s, 1),
                    "total": round(time.perf_counter() - t_all, 1)},
        "grid": grid,
    })


# ------------------------------------------------------------------------------------ pg identifiers

def alnum_lower(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


GUC_HEADS = ("max_wal", "enable", "log", "autovacuum", "wal", "track", "default", "ssl", "idle", "checkpoint",
             "vacuum", "archive", "recovery", "hot_standby", "max_parallel")
GUC_TAILS = ("frobnicators", "quux_limit", "blorp_timeout", "zindex_scan", "snarf_delay", "wibble_size",
             "florp_workers", "gronk_interval", "plugh_level", "xyzzy_mode", "spork_buffers", "grault_target")


def absent_identifiers(texts: list[str], n_codes: int = 25, n_names: int = 25, seed: int = 20261204) -> list[dict]:
    """SQLSTATE-shaped codes and parameter-shaped names that occur in no page (checked as
    make_queries.py does: case-insensitive substring, as is and with non-alphanumerics removed)."""
    lowered = [t.lower() for t in texts]
    squeezed = [alnum_lower(t) for t in texts]

    def absent(ident: str) -> bool:
        return not any(ident.lower() in t for t in lowered) and not any(alnum_lower(ident) in t for t in squeezed)

    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[str] = set()
    alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    classes = ("22", "42", "08", "23", "25", "40", "53", "54", "55", "57", "58", "XX", "HV", "P0", "F0", "72")
    while len(out) < n_codes:
        code = rng.choice(classes) + rng.choice(alnum) + "".join(rng.choice("0123456789ABCDEFZ") for _ in range(2))
        if code not in seen and any(c.isalpha() for c in code[2:]) and absent(code):
            seen.add(code)
            out.append({"query": code, "shape": "sqlstate"})
    while len(out) < n_codes + n_names:
        name = f"{rng.choice(GUC_HEADS)}_{rng.choice(GUC_TAILS)}"
        if name not in seen and absent(name):
            seen.add(name)
            out.append({"query": name, "shape": "parameter"})
    return out


def pg_benchmark(capsule) -> dict:
    from firmware_tools.documents import iter_documents
    records = [json.loads(line) for line in (PG / "queries.jsonl").read_text().splitlines()]
    present = [r for r in records if r["kind"] != "absent"]
    kinds = list(dict.fromkeys(r["kind"] for r in present))
    per_kind: dict[str, dict] = {}
    groups = {"identifiers (sqlstate, sqlstate-lower, condition, guc)": {"sqlstate", "sqlstate-lower", "condition", "guc"},
              "all 590 with a definition": set(kinds)}
    group_counts = {g: {m: [0, 0, 0] for m in MODES} for g in groups}
    misses: dict[str, list] = {m: [] for m in MODES}
    hybrid_misses: list[dict] = []
    chunk_texts = [" ".join(h.text.split()) for h in capsule.export()]
    answerable = {r["id"]: any(r["definition"] in t for t in chunk_texts) for r in present}
    for kind in kinds:
        rows = [r for r in present if r["kind"] == kind]
        per_kind[kind] = {"n": len(rows)}
        for mode in MODES:
            t1 = t5 = ex = 0
            for r in rows:
                res = capsule.search(r["query"], k=5, mode=mode)
                rel = [r["definition"] in " ".join(h.text.split()) for h in res]
                t1 += bool(rel[:1] and rel[0])
                t5 += any(rel)
                ex += res.exact_match is True
                if not (rel[:1] and rel[0]) and kind in ("sqlstate", "sqlstate-lower", "condition", "guc"):
                    misses[mode].append(r["query"])
                    if mode == "hybrid":
                        top = res[0] if len(res) else None
                        hybrid_misses.append({
                            "query": r["query"], "kind": kind, "answerable": answerable[r["id"]],
                            "relevant_rank_in_5": next((i + 1 for i, x in enumerate(rel) if x), None),
                            "top1_document": top.document if top else None,
                            "top1_heading": top.heading_path[-1] if top and top.heading_path else None,
                            "top1_exact": top.exact if top else None,
                            "n_hits_exact_in_5": sum(h.exact for h in res)})
                for g, members in groups.items():
                    if kind in members:
                        c = group_counts[g][mode]
                        c[0] += bool(rel[:1] and rel[0])
                        c[1] += any(rel)
                        c[2] += 1
            per_kind[kind][mode] = {"top1": round(t1 / len(rows), 4), "top5": round(t5 / len(rows), 4),
                                    "exact_match_true": round(ex / len(rows), 4)}
    summary = {g: {m: {"top1": round(c[0] / c[2], 4), "top5": round(c[1] / c[2], 4), "n": c[2]}
                   for m, c in by_mode.items()} for g, by_mode in group_counts.items()}

    texts = [" ".join(d.text.split()) for d in iter_documents([PG / "docs"])]
    generated = absent_identifiers(texts)
    shipped = [{"query": r["query"], "shape": "shipped"} for r in records if r["kind"] == "absent"]
    absent_rows = shipped + generated
    absent_out = {}
    for label, rows in (("shipped_20", shipped), ("generated_50", generated), ("all", absent_rows)):
        stats = {}
        for mode in ("hybrid", "lexical"):
            ex_false = no_hit = any_exact_hit = 0
            for r in rows:
                res = capsule.search(r["query"], k=5, mode=mode)
                ex_false += res.exact_match is False
                no_hit += len(res) == 0
                any_exact_hit += any(h.exact for h in res)
            stats[mode] = {"exact_match_false": round(ex_false / len(rows), 4),
                           "no_hit": round(no_hit / len(rows), 4),
                           "a_hit_marked_exact": round(any_exact_hit / len(rows), 4)}
        absent_out[label] = {"n": len(rows), **stats}
    ceiling = {kind: round(sum(answerable[r["id"]] for r in present if r["kind"] == kind)
                           / sum(1 for r in present if r["kind"] == kind), 4) for kind in kinds}
    return {"queries": len(records), "per_kind": per_kind, "summary": summary,
            "answerable_share_per_kind": ceiling,
            "hybrid_top1_misses_identifier_kinds": hybrid_misses,
            "top1_miss_counts_identifier_kinds": {m: len(v) for m, v in misses.items()},
            "absent": absent_out, "generated_absent_identifiers": [r["query"] for r in generated],
            "relevance": "definition in ' '.join(hit.text.split()) (SOURCE.md; tests/e2e/test_hybrid.py), k=5"}


# ------------------------------------------------------------------------------------ latency

def latency(capsule, queries: list[str]) -> dict:
    out = {}
    for mode in MODES:
        for q in queries[:20]:  # warm-up
            capsule.search(q, k=10, mode=mode)
        totals, stages = [], {"embed_ms": [], "ann_ms": [], "lexical_ms": [], "frame_decode_ms": [],
                              "qr_decode_ms": [], "decrypt_ms": []}
        for q in queries:
            capsule.clear_cache()
            t0 = time.perf_counter()
            res = capsule.search(q, k=10, mode=mode)
            totals.append((time.perf_counter() - t0) * 1e3)
            for key in stages:
                stages[key].append(getattr(res.timings, key))
        lex = np.asarray(stages["lexical_ms"])
        tot = np.asarray(totals)
        rank_ms = np.asarray(stages["embed_ms"]) + np.asarray(stages["ann_ms"]) + lex
        out[mode] = {"total_p50": round(percentile(totals, 50), 2), "total_p95": round(percentile(totals, 95), 2),
                     **{f"{k[:-3]}_p50": round(percentile(v, 50), 3) for k, v in stages.items()},
                     **{f"{k[:-3]}_p95": round(percentile(v, 95), 3) for k, v in stages.items()},
                     "rank_only_p50": round(percentile(list(rank_ms), 50), 3),
                     "rank_only_p95": round(percentile(list(rank_ms), 95), 3),
                     "lexical_share_of_total_mean": round(float(lex.sum() / tot.sum()), 4),
                     "lexical_share_of_total_p50": round(float(np.median(lex / tot)), 4)}
    out["hybrid_minus_dense_total_p50_ms"] = round(out["hybrid"]["total_p50"] - out["dense"]["total_p50"], 2)
    out["note"] = ("k=10, one query at a time, frame cache cleared before each query (every hit's frame is "
                   "decoded), 20 warm-up queries per mode; rank_only = embed + ann + lexical (no frame reads)")
    return out


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--faq", type=Path, default=ROOT.parent / "shared" / "data" / "python-docs" / "beir")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hybrid.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep capsules here (default: temp dir)")
    parser.add_argument("--n-threads", type=int, default=2, help="build worker processes (default 2)")
    parser.add_argument("--max-docs", type=int, default=0, help="smoke runs: first N SciFact documents (0: all)")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the joint fusion sweep (capsules in --workdir are reused, else built)")
    parser.add_argument("--sweep-out", type=Path, default=ROOT / "bench" / "results" / "fusion-sweep.json")
    parser.add_argument("--conditional-sweep", action="store_true",
                        help="only the conditional fusion sweep (weights by query identifier / length)")
    parser.add_argument("--conditional-out", type=Path,
                        default=ROOT / "bench" / "results" / "fusion-conditional.json")
    parser.add_argument("--dense-first-sweep", action="store_true",
                        help="only the dense-first margin sweep over the shipped fusion")
    parser.add_argument("--dense-first-out", type=Path,
                        default=ROOT / "bench" / "results" / "fusion-dense-first.json")
    args = parser.parse_args(argv)

    from firmware_tools.build import DEFAULT_DENSE_FIRST_MARGIN, DEFAULT_FUSION

    if args.dense_first_sweep:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
        work.mkdir(parents=True, exist_ok=True)
        result = dense_first_sweep(work, args.scifact, args.faq, args.n_threads, DEFAULT_FUSION)
        result["command"] = " ".join(["python", "bench/bench_hybrid.py", *(sys.argv[1:] if argv is None else argv)])
        print(json.dumps({k: result[k] for k in ("chosen_margin", "report", "queries_with_that_lead",
                                                  "hybrid_minus_dense_ndcg@10_paired_bootstrap", "seconds")}, indent=2))
        args.dense_first_out.parent.mkdir(parents=True, exist_ok=True)
        args.dense_first_out.write_text(json.dumps(result, indent=2) + "\n")
        return 0

    if args.conditional_sweep:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
        work.mkdir(parents=True, exist_ok=True)
        result = conditional_sweep(work, args.scifact, args.faq, args.n_threads, DEFAULT_FUSION)
        result["command"] = " ".join(["python", "bench/bench_hybrid.py", *(sys.argv[1:] if argv is None else argv)])
        print(json.dumps({k: result[k] for k in ("counts", "chosen", "dense_dev", "seconds")}, indent=2))
        args.conditional_out.parent.mkdir(parents=True, exist_ok=True)
        args.conditional_out.write_text(json.dumps(result, indent=2) + "\n")
        return 0

    if args.sweep_only:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
        work.mkdir(parents=True, exist_ok=True)
        result = joint_sweep(work, args.scifact, args.faq, args.n_threads, DEFAULT_FUSION)
        result["command"] = " ".join(["python", "bench/bench_hybrid.py", *(sys.argv[1:] if argv is None else argv)])
        text = json.dumps(result, indent=2)
        print(json.dumps({k: result[k] for k in ("criterion", "chosen", "dense_dev", "seconds")}, indent=2))
        args.sweep_out.parent.mkdir(parents=True, exist_ok=True)
        args.sweep_out.write_text(text + "\n")
        return 0

    t_all = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "embeddings.sqlite"
    seconds: dict[str, float] = {}
    out: dict = {
        "benchmark": "hybrid retrieval (dense, lexical, hybrid) through capsules (issue 10)",
        "machine": machine(),
        "git": {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain", "--untracked-files=no")
                .splitlines()},
        "command": " ".join(["python", "bench/bench_hybrid.py", *(sys.argv[1:] if argv is None else argv)]),
        "default_fusion": {**DEFAULT_FUSION, "dense_first_margin": DEFAULT_DENSE_FIRST_MARGIN},
        "k_chunks_per_query": K_CHUNKS,
    }

    # 1, 2, 5, 6: SciFact
    t = time.perf_counter()
    n_docs = write_corpus(args.scifact, work / "scifact-docs", args.max_docs)
    built, build_s = build(work / "scifact-docs", work / "scifact.capsule", n_threads=args.n_threads, cache=cache)
    seconds["scifact_build"] = round(build_s, 1)
    with open_built(built.path) as capsule:
        chunk_doc = chunk_documents_of(capsule)
        test_q, test_rel = load_beir(args.scifact, "test")
        t = time.perf_counter()
        quality = mode_quality(capsule, test_q, test_rel, chunk_doc)
        seconds["scifact_quality"] = round(time.perf_counter() - t, 1)
        out["scifact"] = {"documents": n_docs, "chunks": built.n_chunks, "test_queries": len(test_q),
                          "target_hybrid_ndcg@10": 0.70,
                          "target_met": quality["hybrid"]["ndcg@10"] >= 0.70,
                          **{m: {"ndcg@10": quality[m]["ndcg@10"], "recall@10": quality[m]["recall@10"]}
                             for m in MODES}}
        t = time.perf_counter()
        out["fusion_sweep"] = sweep(capsule, args.scifact, chunk_doc, DEFAULT_FUSION, quality["hybrid"]["ndcg@10"])
        seconds["fusion_sweep"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        out["latency_scifact_ms"] = latency(capsule, [test_q[q] for q in sorted(test_q, key=int)])
        seconds["latency"] = round(time.perf_counter() - t, 1)
        sizes = {"scifact": size_report(built, capsule)}

    # 3: PostgreSQL identifiers
    built, build_s = build(PG / "docs", work / "pg-identifiers.capsule", n_threads=args.n_threads, cache=cache)
    seconds["pg_build"] = round(build_s, 1)
    with open_built(built.path) as capsule:
        t = time.perf_counter()
        out["pg_identifiers"] = {"chunks": built.n_chunks, "documents": built.n_documents,
                                 "targets": {"top1": 0.95, "top5": 1.0}, **pg_benchmark(capsule)}
        seconds["pg_queries"] = round(time.perf_counter() - t, 1)
        sizes["pg_identifiers"] = size_report(built, capsule)

    # 4: Python FAQ (BEIR form)
    n_faq = write_corpus(args.faq, work / "faq-docs")
    built, build_s = build(work / "faq-docs", work / "python-faq.capsule", n_threads=args.n_threads, cache=cache)
    seconds["faq_build"] = round(build_s, 1)
    with open_built(built.path) as capsule:
        faq_q, faq_rel = load_beir(args.faq, "test")
        faq = mode_quality(capsule, faq_q, faq_rel, chunk_documents_of(capsule))
        out["python_faq"] = {"documents": n_faq, "chunks": built.n_chunks, "queries": len(faq_q),
                             **{m: {k: faq[m][k] for k in ("recall@1", "recall@5", "mrr@10", "ndcg@10")}
                                for m in MODES}}
        sizes["python_faq"] = size_report(built, capsule)

    out["size"] = sizes
    seconds["total"] = round(time.perf_counter() - t_all, 1)
    out["seconds"] = seconds
    out["workdir"] = str(work)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
