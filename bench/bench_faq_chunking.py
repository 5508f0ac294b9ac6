"""Benchmark: Python FAQ retrieval with chunks cut at headings vs without (issue 10).

The corpus is examples/python-faq/docs: the Python 3.11.2 FAQ sources (reStructuredText
saved as ``.txt``). Each file is copied to a temporary ``.rst`` so ``read_document`` finds its
section titles. Three ways of chunking and embedding the same documents are compared:

- ``no-headings``: today's chunks (chunk_documents on the texts: no headings);
- ``headings``: chunks cut at headings (chunk_documents on the Documents), chunk text embedded;
- ``headings+path``: the same chunks, each embedded as ``" › ".join(heading_path)`` + a blank
  line + its text (one way a builder could use the path; the capsule does not do this today).

Retrieval is exact cosine search over the chunk embeddings of the runtime's own model
(``edge.embedder.QueryEmbedder``, int8 ONNX, batch 1, one thread), not a capsule: the
figures isolate chunking from the ANN index, the projection and the frames.

Question sets:

- ``faq175``: all 175 question headings of the FAQ with their answer lines
  (``faq_pairs.jsonl`` of the shared ``python-docs`` set). A hit is relevant when its span
  holds the first character of the answer (``start``), or overlaps the answer's lines
  (``overlap``).
- ``faq14``: the 14 committed questions of examples/python-faq/questions.jsonl; relevant when
  the chunk text contains the answer snippet (as tests/e2e does).

The questions are the FAQ's own headings and the heading text is part of the chunk text
(rst markup is kept), so these figures measure how well a chunk keeps its heading with its
answer, not paraphrase retrieval.

Usage::

    python bench/bench_faq_chunking.py --pairs ../shared/data/python-docs/faq_pairs.jsonl \
        [--max-tokens 200 --overlap-tokens 32] [--out bench/results/faq-chunking.json]

Prints one JSON object: recall@5 and MRR@10 per variant and question set, chunk counts and
the machine. Not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.embedder import QueryEmbedder, find_model_dir  # noqa: E402
from firmware_tools.chunking import TokenizerOffsets, _heading_block_end, chunk_documents  # noqa: E402
from firmware_tools.documents import iter_documents, normalize_text  # noqa: E402

PATH_SEPARATOR = " \u203a "


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        governor = "unavailable"
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "nproc": os.cpu_count(), "python": platform.python_version(), "cpu_governor": governor}


def line_span(raw_lines: list[str], text: str, first: int, last: int) -> tuple[int, int] | None:
    """Return the [start, end) offsets in normalised ``text`` of 1-based raw lines first..last."""
    found = [n for n in range(first, last + 1) if raw_lines[n - 1].strip()]
    if not found:
        return None

    def offset(n: int) -> int:
        line = raw_lines[n - 1]
        norm = normalize_text("\n".join(raw_lines[: n - 1]) + "\n" + line.rstrip())
        pos = len(norm) - len(line.strip())
        assert text[pos : pos + len(line.strip())] == line.strip(), (n, line)
        return pos

    return offset(found[0]), offset(found[-1]) + len(raw_lines[found[-1] - 1].strip())


def metrics(ranked: list[list[int]], relevant: list[set[int]]) -> dict:
    recall5, rr10 = [], []
    for order, rel in zip(ranked, relevant, strict=True):
        recall5.append(1.0 if any(c in rel for c in order[:5]) else 0.0)
        rank = next((i + 1 for i, c in enumerate(order[:10]) if c in rel), None)
        rr10.append(1.0 / rank if rank else 0.0)
    return {"recall@5": round(float(np.mean(recall5)), 4), "mrr@10": round(float(np.mean(rr10)), 4),
            "n_queries": len(ranked)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, default=ROOT / "examples" / "python-faq" / "docs")
    parser.add_argument("--questions", type=Path, default=ROOT / "examples" / "python-faq" / "questions.jsonl")
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/python-docs/faq_pairs.jsonl"),
                        help="faq_pairs.jsonl of the shared python-docs set (175 questions)")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--overlap-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    model_dir = find_model_dir()
    embedder = QueryEmbedder.open(model_dir, n_threads=1)
    offsets = TokenizerOffsets.from_file(model_dir / "tokenizer.json")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted(args.docs.glob("*.txt")):
            shutil.copyfile(source, Path(tmp) / (source.stem + ".rst"))
        docs = list(iter_documents([Path(tmp)]))
    names = [d.name for d in docs]
    sizes = dict(max_tokens=args.max_tokens, overlap_tokens=args.overlap_tokens)
    chunkings = {
        "no-headings": list(chunk_documents([d.text for d in docs], token_offsets=offsets, **sizes)),
        "headings": list(chunk_documents(docs, token_offsets=offsets, **sizes)),
    }

    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        for t in missing:
            cache[t] = embedder.embed([t])[0]
        return np.stack([cache[t] for t in texts])

    variants = {
        "no-headings": (chunkings["no-headings"], [c.text for c in chunkings["no-headings"]]),
        "headings": (chunkings["headings"], [c.text for c in chunkings["headings"]]),
        "headings+path": (chunkings["headings"],
                          [(PATH_SEPARATOR.join(c.heading_path) + "\n\n" + c.text) if c.heading_path
                           else c.text for c in chunkings["headings"]]),
    }

    # Question sets: (question, doc_index, start, end) and (question, snippet, doc_index).
    pairs = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines()]
    faq175 = []
    for p in pairs:
        doc_index = names.index(p["file"].removesuffix(".rst.txt") + ".rst")
        raw_lines = (args.docs / (p["file"].removesuffix(".rst.txt") + ".txt")).read_text(
            encoding="utf-8").split("\n")
        span = line_span(raw_lines, docs[doc_index].text, *p["answer_lines"])
        faq175.append((p["question"], doc_index, *span))
    faq14 = [json.loads(line) for line in args.questions.read_text(encoding="utf-8").splitlines()]

    queries = [q for q, *_ in faq175] + [q["question"] for q in faq14]
    query_vectors = embed(queries)
    results: dict = {}
    for variant, (chunks, texts) in variants.items():
        vectors = embed(texts)
        scores = query_vectors @ vectors.T
        ranked = [list(np.argsort(-row, kind="stable")[:10]) for row in scores]
        start_rel, overlap_rel = [], []
        for question, doc_index, start, end in faq175:
            start_rel.append({i for i, c in enumerate(chunks)
                              if c.doc_index == doc_index and c.char_start <= start < c.char_end})
            overlap_rel.append({i for i, c in enumerate(chunks)
                                if c.doc_index == doc_index and c.char_start < end and start < c.char_end})
        snippet_rel = [{i for i, c in enumerate(chunks)
                        if names[c.doc_index] == q["file"].replace(".txt", ".rst") and q["answer_snippet"] in c.text}
                       for q in faq14]
        n175 = len(faq175)
        heading_only = 0
        if variant != "no-headings":
            for doc_index, doc in enumerate(docs):
                bounds = [h.char_start for h in doc.headings[1:]] + [len(doc.text)]
                blocks = {(h.char_start, _heading_block_end(doc.text, h.char_start, end))
                          for h, end in zip(doc.headings, bounds, strict=True)}
                heading_only += sum(1 for c in chunks if c.doc_index == doc_index
                                    and (c.char_start, c.char_end) in blocks)
        results[variant] = {
            "n_chunks": len(chunks),
            "mean_tokens": round(float(np.mean([c.n_tokens for c in chunks])), 1),
            "n_heading_only_chunks": heading_only,
            "faq175_answer_start": metrics(ranked[:n175], start_rel),
            "faq175_answer_overlap": metrics(ranked[:n175], overlap_rel),
            "faq14_snippet": metrics(ranked[n175:], snippet_rel),
        }
    report = {
        "benchmark": "bench_faq_chunking",
        "corpus": {"docs": str(args.docs.relative_to(ROOT) if args.docs.is_relative_to(ROOT) else args.docs),
                   "n_documents": len(docs), "n_headings": sum(len(d.headings) for d in docs)},
        "chunking": sizes,
        "model": {"dir": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
                  "family": "onnx", "search": "exact cosine, no index"},
        "results": results,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
