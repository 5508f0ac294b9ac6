"""Benchmark: build a capsule from BEIR SciFact and query it through the edge runtime.

Prints one JSON object: build throughput, capsule bytes per section and per raw text byte,
MP4 bytes per payload byte, query latency p50/p95 per stage, peak RSS of a fresh query
process, nDCG@10 / recall@10 on the 300 test queries (through the capsule, and with exact
search over the same int8 embeddings for reference), and the fraction of hits whose text read
back from the frames is byte-equal to its source chunk.

Usage::

    python bench/bench_scifact.py [--data ../shared/data/scifact] [--out bench/results/scifact.json]

Not a test: figures depend on the machine; the JSON records which one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    governor = ""
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        governor = "unavailable"
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu, "nproc": os.cpu_count(),
            "python": platform.python_version(), "cpu_governor": governor}


def load_scifact(data: Path):
    corpus = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = {}
    for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return corpus, {q: queries[q] for q in qrels}, qrels


def ndcg_at_10(ranked: list[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_10(ranked: list[str], relevant: dict[str, int]) -> float:
    return len(set(ranked[:10]) & set(relevant)) / len(relevant)


def doc_ranking(chunk_ids_scores, chunk_doc: list[str]) -> list[str]:
    """Max-score per document over chunk hits, best first (the usual chunk->doc aggregation)."""
    best: dict[str, float] = {}
    for cid, score in chunk_ids_scores:
        doc = chunk_doc[cid]
        best[doc] = max(best.get(doc, -2.0), score)
    return [d for d, _ in sorted(best.items(), key=lambda kv: -kv[1])]


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


QUERY_PROCESS = r"""
import json, sys, time, resource
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from datetime import datetime, timezone
from edge import open_capsule, load_public_key, load_identity
capsule = open_capsule(sys.argv[2], trusted_keys=[load_public_key(sys.argv[3])],
                       identities=[load_identity(sys.argv[4])], now=datetime(2026, 11, 22, tzinfo=timezone.utc))
queries = json.loads(sys.argv[5])
first = None
for q in queries:
    capsule.search(q, k=10)
    if first is None:
        first = time.perf_counter() - t0
rollup = {}
for line in open("/proc/self/smaps_rollup"):
    parts = line.split()
    if len(parts) >= 3 and parts[0].endswith(":"):
        rollup[parts[0][:-1]] = int(parts[1]) * 1024
status = {l.split(":")[0]: l.split(":")[1].strip() for l in open("/proc/self/status")}
print(json.dumps({"cold_start_to_first_answer_s": first,
                  "peak_rss_bytes": int(status["VmHWM"].split()[0]) * 1024,
                  "rss_bytes": rollup.get("Rss"), "anon_bytes": rollup.get("Anonymous"),
                  "file_backed_bytes": rollup.get("Rss", 0) - rollup.get("Anonymous", 0) - rollup.get("Shmem", 0),
                  "shmem_bytes": rollup.get("Shmem"),
                  "budget_report": capsule.budget.report()}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the capsule here (default: temp dir)")
    parser.add_argument("--max-docs", type=int, default=0, help="use only the first N documents (0: all)")
    parser.add_argument("--n-threads", type=int, default=2, help="build worker processes (default 2)")
    parser.add_argument("--projection", choices=("auto", "on", "off"), default="auto",
                        help="index kind: PCA projection + int8 re-ranking (on), full embeddings (off), or the "
                             "builder's choice (auto; on from 2,048 chunks)")
    parser.add_argument("--embedding-cache", type=Path, default=None,
                        help="reuse chunk embeddings from this SQLite file (default: WORKDIR/embeddings.sqlite; "
                             "a warm cache makes the build figures those of a rebuild)")
    args = parser.parse_args(argv)

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge import open_capsule
    from firmware_tools.build import build_capsule
    from firmware_tools.chunking import TokenizerOffsets, chunk_documents
    from firmware_tools.documents import iter_documents
    from firmware_tools.keys import private_key_pem, public_key_pem, write_private_file

    corpus, queries, qrels = load_scifact(args.data)
    if args.max_docs:
        corpus = corpus[: args.max_docs]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scifact-"))
    docs_dir = work / "docs"
    docs_dir.mkdir(parents=True, exist_ok=True)
    for doc in corpus:
        text = (doc.get("title", "").strip() + "\n\n" + doc["text"].strip()).strip()
        (docs_dir / f"{doc['_id']}.txt").write_text(text + "\n", encoding="utf-8")

    publisher = Ed25519PrivateKey.from_private_bytes(bytes(32))
    device = X25519PrivateKey.from_private_bytes(bytes(31) + b"\x01")
    (work / "publisher.pub").write_bytes(public_key_pem(publisher))
    if not (work / "device.key").exists():
        write_private_file(work / "device.key", private_key_pem(device))

    capsule_path = work / f"scifact-{args.projection}.capsule"
    cache_path = args.embedding_cache or work / "embeddings.sqlite"
    t = time.perf_counter()
    result = build_capsule([docs_dir], capsule_path, signing_key=publisher, recipients=[device.public_key()],
                           issued_at=NOW - timedelta(days=1), expires_at=NOW + timedelta(days=365),
                           seed=b"bench", n_threads=args.n_threads, embedding_cache=cache_path,
                           projection={"auto": None, "on": True, "off": False}[args.projection])
    build_s = time.perf_counter() - t
    from firmware_tools.embedding import EmbeddingCache

    docs = list(iter_documents([docs_dir]))
    offsets = TokenizerOffsets.from_file(ROOT / "models" / "all-MiniLM-L6-v2" / "tokenizer.json")
    with open_capsule(capsule_path, trusted_keys=[publisher.public_key()], identities=[device], now=NOW) as capsule:
        chunks = list(chunk_documents(docs, token_offsets=offsets, token_offsets_batch=offsets.batch,
                                      max_tokens=capsule.manifest.chunk_max_tokens,
                                      overlap_tokens=capsule.manifest.chunk_overlap_tokens))
        chunk_doc = [docs[c.doc_index].name[: -len(".txt")] for c in chunks]
        qids = sorted(queries, key=int)
        for qid in qids[:20]:  # warm-up
            capsule.search(queries[qid], k=10)
        stages = {"embed_ms": [], "ann_ms": [], "frame_decode_ms": [], "qr_decode_ms": [], "decrypt_ms": []}
        per_frame = {"frame_decode_ms": [], "qr_decode_ms": [], "decrypt_ms": []}
        totals, ndcgs, recalls, exact_ndcgs, exact_recalls = [], [], [], [], []
        n_hits = n_exact = 0
        k_chunks = 30
        # exact-search reference: the same int8-model embeddings, full 384-d, brute force
        cache = EmbeddingCache(cache_path, capsule._embedder.sha256, capsule._embedder.dim)
        vectors = np.stack(cache.get_many([c.text for c in chunks]))
        cache.close()
        for qid in qids:
            capsule.clear_cache()
            t0 = time.perf_counter()
            hits = capsule.search(queries[qid], k=10)
            totals.append((time.perf_counter() - t0) * 1e3)
            tm = capsule.last_timings
            for key in stages:
                stages[key].append(getattr(tm, key))
            for key in per_frame:
                if tm.n_frames_decoded:
                    per_frame[key].append(getattr(tm, key) / tm.n_frames_decoded)
            for hit in hits:
                n_hits += 1
                n_exact += hit.text.encode() == chunks[hit.chunk_id].text.encode()
            deep = capsule.search(queries[qid], k=k_chunks)
            ranked = doc_ranking([(h.chunk_id, h.score) for h in deep], chunk_doc)
            ndcgs.append(ndcg_at_10(ranked, qrels[qid]))
            recalls.append(recall_at_10(ranked, qrels[qid]))
            qv = capsule._embedder.embed([queries[qid]])[0]
            scores = vectors @ qv
            top = np.argsort(-scores)[:k_chunks]
            exact_ranked = doc_ranking([(int(i), float(scores[i])) for i in top], chunk_doc)
            exact_ndcgs.append(ndcg_at_10(exact_ranked, qrels[qid]))
            exact_recalls.append(recall_at_10(exact_ranked, qrels[qid]))
        info = capsule.info()

    proc = subprocess.run([sys.executable, "-c", QUERY_PROCESS, str(ROOT), str(capsule_path),
                           str(work / "publisher.pub"), str(work / "device.key"),
                           json.dumps([queries[q] for q in qids[:50]])],
                          capture_output=True, text=True, check=True)
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])

    raw = result.raw_text_bytes
    out = {
        "benchmark": "scifact capsule build + query",
        "machine": machine(),
        "data": {"documents": len(corpus), "test_queries": len(qids), "raw_text_bytes": raw},
        "build": {"seconds": round(build_s, 2), "chunks": result.n_chunks, "frames": result.n_frames,
                  "chunks_per_s": round(result.n_chunks / build_s, 1), "workers": args.n_threads,
                  "chunks_embedded": result.n_embedded,
                  "chunks_from_embedding_cache": result.n_chunks - result.n_embedded,
                  "embedding_chunks_per_s": round(result.n_embedded / result.stage_s["read_chunk_embed"], 1)
                  if result.n_embedded else None,
                  "chunks_per_s_after_read_chunk_embed": round(
                      result.n_chunks / (build_s - result.stage_s["read_chunk_embed"]), 1),
                  "stage_s": {k: round(v, 2) for k, v in result.stage_s.items()}},
        "size": {"capsule_bytes": result.file_bytes, "capsule_per_raw_text": round(result.file_bytes / raw, 3),
                 "section_bytes": result.section_bytes,
                 "section_per_raw_text": {k: round(v / raw, 3) for k, v in result.section_bytes.items()},
                 "payload_bytes": result.payload_bytes,
                 "payload_per_raw_text": round(result.payload_bytes / raw, 3),
                 "mp4_bytes_per_payload_byte": round(result.section_bytes["VIDE"] / result.payload_bytes, 3)},
        "query_ms_warm_1_thread_k10": {
            "total_p50": round(percentile(totals, 50), 2), "total_p95": round(percentile(totals, 95), 2),
            **{f"{k[:-3]}_p50": round(percentile(v, 50), 3) for k, v in stages.items()},
            **{f"{k[:-3]}_p95": round(percentile(v, 95), 3) for k, v in stages.items()},
            **{f"{k[:-3]}_per_frame_p50": round(percentile(v, 50), 3) for k, v in per_frame.items()},
            "note": "frame cache cleared before each query; every hit's frame is decoded",
        },
        "fresh_query_process": fresh,
        "memory_plan_covers_anonymous_memory": fresh["budget_report"]["total_reserved_bytes"]
        >= fresh["budget_report"]["measured"]["anon_bytes"],
        "quality": {"ndcg@10": round(float(np.mean(ndcgs)), 4), "recall@10": round(float(np.mean(recalls)), 4),
                    "exact_search_same_embeddings_ndcg@10": round(float(np.mean(exact_ndcgs)), 4),
                    "exact_search_same_embeddings_recall@10": round(float(np.mean(exact_recalls)), 4),
                    "chunk_to_doc": f"max chunk score per document over the top {k_chunks} chunks"},
        "byte_exact_fraction": n_exact / n_hits,
        "n_hits_checked": n_hits,
        "decoder": info["decoder"],
        "index": info["index"],
        "projection": args.projection,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
