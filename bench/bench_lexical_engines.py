"""Benchmark: the lexical index engines, each through its own writer and the runtime's reader (issue 10).

Issue 10 asks for the lexical section to be measured engine by engine (index bytes ÷ text, RAM,
query time, aarch64 availability) and written down. This compares the two engines the runtime
reads, both through the code that ships:

- ``sqlite-fts5``: ``firmware_tools.lexical_writer.SqliteLexicalWriter`` →
  ``edge.lexical_sqlite.SqliteLexicalIndex`` (format 1.1, ``ident-v1`` terms);
- ``tantivy-7``: ``TantivyLexicalWriter`` → ``edge.lexical_tantivy.TantivyLexicalIndex``
  (format 1.2, ``ident-v2`` terms: stemmed), the default since 2026-12-07.

Corpus: the SciFact abstracts (BEIR, 5,183 documents) and the Python 3.11 documentation
(497 reStructuredText files) from ``../shared/data``, chunked by the builder's own chunker
(200/32 tokens), with their heading paths. For the **100k** scale the real chunks are repeated
until there are ``--scale`` of them (so every posting list is that many times longer: a scale
model of a bigger manual set, not new text). No embedding, no frames: only the lexical section.

Per engine and scale, in a fresh child process each (so RSS is the engine's):

- ``lexi_bytes``: the LEXI section as stored (the FTS5 database; tantivy's zstd frame), and
  ÷ the chunks' UTF-8 text (``per_raw_text``; overlap counted once per chunk, so this is a
  slight under-statement next to a capsule's documents-based ratio);
- build seconds per 1,000 chunks (the writer alone);
- ``open_ms``; RSS and RssAnon added by opening, and after ``--queries`` queries; the plan bytes
  the runtime reserves (``edge.lexical.lexical_plan_bytes`` and what stays after loading);
- query ms p50 / p95 of what ``Capsule.search`` asks the engine per query in hybrid mode: a
  ranking of depth 20 and the exact-identifier check (limit 100); queries are SciFact's test
  claims and the Python FAQ questions, interleaved;
- SciFact BM25 nDCG@10 at 12k (lexical ranking alone; documents by their best chunk).

Usage::

    python bench/bench_lexical_engines.py [--scale 100000] [--queries 300] [--out bench/results/lexical-engines.json]

Not a test: figures depend on the machine; the JSON records which one. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHARED = ROOT.parent / "shared" / "data"
ENGINES = ("sqlite-fts5", "tantivy-7")


def _status() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def corpus(work: Path) -> list[tuple[str, tuple[str, ...], str]]:
    """Chunks ``(text, heading_path, document)`` of SciFact and the Python docs (cached as
    ``chunks.json`` in ``work``); beside them ``meta.json``: the documents, the SciFact test
    queries and qrels, and the FAQ questions (small, for the measuring child)."""
    cache = work / "chunks.json"
    if cache.exists():
        return [(c[0], tuple(c[1]), c[2]) for c in json.loads(cache.read_text())]
    from firmware_tools.chunking import TokenizerOffsets, chunk_documents
    from firmware_tools.documents import iter_documents

    from bench_hybrid import load_beir, write_corpus

    offsets = TokenizerOffsets.from_file(ROOT / "models" / "all-MiniLM-L6-v2" / "tokenizer.json")
    write_corpus(SHARED / "scifact", work / "scifact-docs")
    docs = list(iter_documents([work / "scifact-docs", SHARED / "python-docs" / "rst"]))
    chunks = [(c.text, tuple(c.heading_path), docs[c.doc_index].name) for c in
              chunk_documents(docs, token_offsets=offsets, token_offsets_batch=offsets.batch)]
    test_q, test_rel = load_beir(SHARED / "scifact", "test")
    faq = [json.loads(line)["question"] for line in (SHARED / "python-docs" / "faq_pairs.jsonl").open()]
    cache.write_text(json.dumps(chunks))
    (work / "meta.json").write_text(json.dumps({"names": [Path(c[2]).name for c in chunks], "scifact": test_q,
                                                "qrels": test_rel, "faq": faq,
                                                "chunk_text_bytes": [len(c[0].encode()) for c in chunks]}))
    return chunks


def build_child(args) -> dict:
    """Write one engine's LEXI at one scale (``lexi-ENGINE-N`` in the work folder)."""
    from firmware_tools.lexical_writer import lexical_writer

    work = Path(args.work)
    chunks = corpus(work)
    n = args.child_scale or len(chunks)
    out_path = work / f"lexi-{args.child}-{n}"
    for p in (out_path, out_path.with_name(out_path.name + ".d")):
        subprocess.run(["rm", "-rf", str(p)], check=True)
    t = time.perf_counter()
    with lexical_writer(args.child, out_path) as writer:
        for i in range(n):
            text, heading, _ = chunks[i % len(chunks)]
            writer.add(i, text, heading_path=heading)
        meta = writer.finish()
    (work / f"{out_path.name}.json").write_text(json.dumps(meta))
    return {"build_s_per_1000_chunks": round((time.perf_counter() - t) / n * 1000, 3)}


def open_child(args) -> dict:
    """Open the LEXI ``build_child`` wrote, in a fresh process: memory, open time, query times."""
    import ctypes

    import numpy as np

    from edge.lexical import LexicalQuery, lexical_loading_bytes, lexical_plan_bytes, open_lexical_index
    from edge.manifest import LEXICAL_NORMALISERS, FusionInfo, LexicalInfo

    from bench_scifact import ndcg_at_10

    work = Path(args.work)
    data = json.loads((work / "meta.json").read_text())
    names, sizes = data["names"], data["chunk_text_bytes"]
    base_n = len(names)
    n = args.child_scale or base_n
    path = work / f"lexi-{args.child}-{n}"
    meta = json.loads((work / f"{path.name}.json").read_text())
    info = LexicalInfo(args.child, LEXICAL_NORMALISERS[args.child], meta["plaintext_bytes"], n,
                       meta.get("page_bytes", 0), FusionInfo("rrf", 5, 1, 1, 20))
    texts = [q for pair in zip(list(data["scifact"].values()), data["faq"]) for q in pair][:args.queries]
    parsed = [LexicalQuery.parse(q) for q in texts]
    scifact = [(qid, LexicalQuery.parse(text)) for qid, text in data["scifact"].items()]
    before = _status()
    t = time.perf_counter()
    section = path.read_bytes()
    lexi = open_lexical_index([section], info=info, n_chunks=n, section_bytes=len(section))
    open_ms = (time.perf_counter() - t) * 1000
    del section
    opened = _status()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = _status()
    for q in parsed[:20]:  # warm
        lexi.search(q, 20)
    times = []
    for q in parsed:
        t = time.perf_counter()
        lexi.search(q, 20)
        lexi.exact_matches(q, limit=100)
        times.append((time.perf_counter() - t) * 1000)
    after = _status()
    quality = None
    if n == base_n:
        ndcg = []
        for qid, query in scifact:
            ids, _ = lexi.search(query, 30)
            ranked = list(dict.fromkeys(names[c][:-4] for c in ids if names[c].endswith(".txt")))
            ndcg.append(ndcg_at_10(ranked, data["qrels"][qid]))
        quality = round(float(np.mean(ndcg)), 4)
    lexi.close()
    lexi_bytes = path.stat().st_size
    raw = sum(sizes[i % base_n] for i in range(n))
    plan = lexical_plan_bytes(info, lexi_bytes)
    mib = 2 ** 20
    return {
        "engine": args.child, "chunks": n, "repeats_of_real_chunks": round(n / base_n, 2), "chunk_text_bytes": raw,
        "lexi_bytes": lexi_bytes, "plaintext_bytes": meta["plaintext_bytes"], "per_raw_text": round(lexi_bytes / raw, 4),
        "open_ms": round(open_ms, 1),
        # tantivy's files live in memfds (shared memory): counted in RSS only where mapped and touched
        "memfd_mib": round(meta["plaintext_bytes"] / mib, 1) if args.child == "tantivy-7" else 0.0,
        "rss_open_mib": round(opened["VmRSS"] - before["VmRSS"], 1),
        "anon_open_mib": round(opened["RssAnon"] - before["RssAnon"], 1),
        "anon_open_after_malloc_trim_mib": round(trimmed["RssAnon"] - before["RssAnon"], 1),
        "rss_after_queries_mib": round(after["VmRSS"] - before["VmRSS"], 1),
        "anon_after_queries_mib": round(after["RssAnon"] - before["RssAnon"], 1),
        "shmem_after_queries_mib": round(after.get("RssShmem", 0) - before.get("RssShmem", 0), 1),
        "plan_mib": round(plan / mib, 1),
        "plan_after_load_mib": round((plan - lexical_loading_bytes(info, lexi_bytes)) / mib, 1),
        "queries": len(times),
        "query_ms_p50": round(float(np.percentile(times, 50)), 3),
        "query_ms_p95": round(float(np.percentile(times, 95)), 3),
        "scifact_bm25_ndcg@10": quality,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=100_000, help="chunks of the large run (default 100000)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lexical-engines.json")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--child-scale", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-step", choices=("build", "open"), default="open", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps((build_child if args.child_step == "build" else open_child)(args)))
        return 0
    from bench_scifact import machine

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-lexical-"))
    work.mkdir(parents=True, exist_ok=True)
    chunks = corpus(work)
    rows = []
    t0 = time.perf_counter()
    for scale in (0, args.scale):
        for engine in ENGINES:
            row = {}
            for step in ("build", "open"):
                proc = subprocess.run([sys.executable, __file__, "--child", engine, "--child-step", step,
                                       "--child-scale", str(scale), "--work", str(work), "--queries", str(args.queries)],
                                      capture_output=True, text=True, env={**os.environ, "RUST_BACKTRACE": "0"})
                if proc.returncode:
                    sys.stderr.write(proc.stderr)
                    return 1
                row.update(json.loads(proc.stdout.splitlines()[-1]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    import tantivy

    report = {
        "benchmark": "lexical_engines", "machine": machine(),
        "git": os.popen(f"git -C {ROOT} rev-parse HEAD").read().strip(),
        "real_chunks": len(chunks), "versions": {"tantivy": tantivy.__version__,
                                                 "sqlite": __import__("sqlite3").sqlite_version},
        "rows": rows, "wall_s": round(time.perf_counter() - t0, 1),
        "command": "python bench/bench_lexical_engines.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
