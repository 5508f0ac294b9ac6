"""Benchmark: the builder's sentence rule vs library sentence splitters and a library chunker (issue 14).

The chunker (``firmware_tools.chunking``) cuts text into *sentences* with one regular
expression (rule 1 of its docstring: paragraph breaks, and ``.``/``!``/``?``/``…`` followed by
whitespace and a character that is not lower case), then packs sentences into chunks of at most
``--max-tokens`` MiniLM tokens with ``--overlap-tokens`` of overlap. This benchmark swaps that
one step for well-kept libraries and measures retrieval on two real sets:

- ``regex``: the builder's own rule (what ships);
- ``pysbd``: pySBD 0.3 (Sadvilkar & Neumann, "PySBD: Pragmatic Sentence Boundary
  Disambiguation", NLP-OSS 2020; Golden Rules), ``Segmenter(language="en", clean=False,
  char_span=True)``;
- ``blingfire``: Microsoft BlingFire 0.1 ``text_to_sentences_and_offsets``;
- ``text-splitter``: semantic-text-splitter 0.33 (``TextSplitter.from_huggingface_tokenizer``
  on the model's own ``tokenizer.json``, capacity ``--max-tokens``, overlap
  ``--overlap-tokens``): a whole chunker, not a sentence splitter, so it replaces packing too
  and knows nothing of headings.

For the three sentence splitters every paragraph break still cuts (as the builder does), the
library splits inside each paragraph, and each sentence start it reports becomes a cut; the rest
of the chunker (headings, long-sentence cuts, packing, overlap) is unchanged, so the
difference is the sentence boundaries alone.

Retrieval is exact cosine search over int8 ONNX embeddings (chunks: the builder's
``ChunkEmbedder``; queries: the runtime's ``QueryEmbedder``), not a capsule: the figures
isolate chunking from the ANN index, the projection and the frames.

- **Python FAQ** (examples/python-faq/docs, the 175 question headings of the shared
  ``python-docs`` ``faq_pairs.jsonl``): recall@5 and MRR@10, a chunk relevant when it holds the
  first character of the answer, as in ``bench_faq_chunking.py`` (chunked with headings, as the
  builder does for ``.rst``).
- **BEIR SciFact** (shared ``scifact``: 5,183 abstracts, 300 test queries): document-level
  nDCG@10 and recall@10, a document scored by its best chunk.

Usage::

    python bench/bench_sentence_splitter.py [--out bench/results/sentence-splitter.json]

Needs the bench extra (pysbd, blingfire, semantic-text-splitter). Prints one JSON object with
the figures, chunk counts, split time per variant and the machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_faq_chunking import line_span, machine, metrics  # noqa: E402
from bench_scifact import load_scifact, ndcg_at_10, recall_at_10  # noqa: E402

import firmware_tools.chunking as chunking  # noqa: E402
from edge.embedder import QueryEmbedder, find_model_dir  # noqa: E402
from firmware_tools.chunking import Chunk, TokenizerOffsets, chunk_documents  # noqa: E402
from firmware_tools.documents import iter_documents  # noqa: E402
from firmware_tools.embedding import ChunkEmbedder  # noqa: E402

PARAGRAPH_RE = re.compile(r"\n\s*\n")


def _stripped(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    spans = []
    cuts = sorted(set(cuts) | {0, len(text)})
    for start, end in zip(cuts, cuts[1:]):
        piece = text[start:end]
        if piece.strip():
            spans.append((start + len(piece) - len(piece.lstrip()), end - (len(piece) - len(piece.rstrip()))))
    return spans


def paragraph_splitter(sentence_starts: Callable[[str], list[int]]) -> Callable[[str], list[tuple[int, int]]]:
    """Turn a library's sentence starts into the chunker's ``_sentence_spans`` contract."""

    def spans(text: str) -> list[tuple[int, int]]:
        cuts = [0]
        bounds = [0] + [p for m in PARAGRAPH_RE.finditer(text) for p in (m.start(), m.end())] + [len(text)]
        for start, end in zip(bounds[::2], bounds[1::2]):
            cuts += [start, end] + [start + s for s in sentence_starts(text[start:end])]
        return _stripped(text, cuts)

    return spans


def splitters() -> dict[str, Callable[[str], list[tuple[int, int]]] | None]:
    import blingfire
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
    return {
        "regex": None,
        "pysbd": paragraph_splitter(lambda t: [s.start for s in segmenter.segment(t)] if t.strip() else []),
        "blingfire": paragraph_splitter(
            lambda t: [s for s, _ in blingfire.text_to_sentences_and_offsets(t)[1]] if t.strip() else []),
    }


def chunk_with(variant: str, docs, offsets: TokenizerOffsets, tokenizer_path: Path, sizes: dict) -> list[Chunk]:
    """Chunks of ``docs`` (Documents) under one variant; ``text-splitter`` replaces the chunker."""
    if variant == "text-splitter":
        from semantic_text_splitter import TextSplitter
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_truncation()  # all-MiniLM-L6-v2's tokenizer.json truncates at 128 tokens
        tokenizer.no_padding()
        splitter = TextSplitter.from_huggingface_tokenizer(
            tokenizer, capacity=sizes["max_tokens"], overlap=sizes["overlap_tokens"])
        chunks = []
        for doc_index, doc in enumerate(docs):
            for offset, text in splitter.chunk_indices(doc.text):
                assert doc.text[offset : offset + len(text)] == text, "text-splitter offsets are not str offsets"
                chunks.append(Chunk(chunk_id=len(chunks), doc_index=doc_index, char_start=offset,
                                    char_end=offset + len(text), text=text, n_tokens=len(offsets(text))))
        return chunks
    replacement = splitters()[variant]
    original = chunking._sentence_spans
    if replacement is not None:
        chunking._sentence_spans = replacement
    try:
        return list(chunk_documents(docs, token_offsets=offsets, **sizes))
    finally:
        chunking._sentence_spans = original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faq-docs", type=Path, default=ROOT / "examples" / "python-faq" / "docs")
    parser.add_argument("--pairs", type=Path, default=ROOT.parent / "shared" / "data" / "python-docs" / "faq_pairs.jsonl")
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--max-tokens", type=int, default=chunking.DEFAULT_MAX_TOKENS)
    parser.add_argument("--overlap-tokens", type=int, default=chunking.DEFAULT_OVERLAP_TOKENS)
    parser.add_argument("--n-workers", type=int, default=2, help="embedding worker processes (default 2)")
    parser.add_argument("--variants", default="regex,pysbd,blingfire,text-splitter")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    sizes = dict(max_tokens=args.max_tokens, overlap_tokens=args.overlap_tokens)

    model_dir = find_model_dir()
    tokenizer_path = model_dir / "tokenizer.json"
    offsets = TokenizerOffsets.from_file(tokenizer_path)
    query_embedder = QueryEmbedder.open(model_dir, n_threads=1)
    cache: dict[str, np.ndarray] = {}
    t_start = time.perf_counter()

    with ChunkEmbedder(model_dir, n_workers=args.n_workers) as chunk_embedder:

        def embed_chunks(texts: list[str]) -> np.ndarray:
            missing = [t for t in dict.fromkeys(texts) if t not in cache]
            if missing:
                cache.update(zip(missing, chunk_embedder.embed(missing), strict=True))
            return np.stack([cache[t] for t in texts])

        results: dict = {v: {} for v in variants}

        # Python FAQ, with headings (.rst).
        with tempfile.TemporaryDirectory() as tmp:
            for source in sorted(args.faq_docs.glob("*.txt")):
                shutil.copyfile(source, Path(tmp) / (source.stem + ".rst"))
            faq_docs = list(iter_documents([Path(tmp)]))
        names = [d.name for d in faq_docs]
        faq175 = []
        for line in args.pairs.read_text(encoding="utf-8").splitlines():
            pair = json.loads(line)
            stem = pair["file"].removesuffix(".rst.txt")
            raw_lines = (args.faq_docs / (stem + ".txt")).read_text(encoding="utf-8").split("\n")
            faq175.append((pair["question"], names.index(stem + ".rst"),
                           *line_span(raw_lines, faq_docs[names.index(stem + ".rst")].text, *pair["answer_lines"])))
        faq_queries = query_embedder.embed([q for q, *_ in faq175])
        for variant in variants:
            t = time.perf_counter()
            chunks = chunk_with(variant, faq_docs, offsets, tokenizer_path, sizes)
            split_s = time.perf_counter() - t
            scores = faq_queries @ embed_chunks([c.text for c in chunks]).T
            ranked = [list(np.argsort(-row, kind="stable")[:10]) for row in scores]
            start_rel = [{i for i, c in enumerate(chunks) if c.doc_index == d and c.char_start <= s < c.char_end}
                         for _, d, s, _ in faq175]
            results[variant]["faq175"] = {**_sizes(chunks), "chunk_s": round(split_s, 2),
                                          **metrics(ranked, start_rel)}
            print(f"faq {variant}: {results[variant]['faq175']}", file=sys.stderr)

        # BEIR SciFact, plain text (title, blank line, abstract), as bench_scifact.py builds it.
        corpus, queries, qrels = load_scifact(args.scifact)
        with tempfile.TemporaryDirectory() as tmp:
            for doc in corpus:
                text = (doc.get("title", "").strip() + "\n\n" + doc["text"].strip()).strip()
                (Path(tmp) / f"{doc['_id']}.txt").write_text(text + "\n", encoding="utf-8")
            sci_docs = list(iter_documents([Path(tmp)]))
        doc_ids = [d.name.removesuffix(".txt") for d in sci_docs]
        qids = sorted(queries, key=int)
        sci_queries = query_embedder.embed([queries[q] for q in qids])
        for variant in variants:
            t = time.perf_counter()
            chunks = chunk_with(variant, sci_docs, offsets, tokenizer_path, sizes)
            split_s = time.perf_counter() - t
            scores = sci_queries @ embed_chunks([c.text for c in chunks]).T
            chunk_doc = np.array([c.doc_index for c in chunks])
            ndcgs, recalls = [], []
            for qid, row in zip(qids, scores, strict=True):
                best = np.full(len(sci_docs), -2.0, dtype=np.float32)
                np.maximum.at(best, chunk_doc, row)
                ranked = [doc_ids[i] for i in np.argsort(-best, kind="stable")[:10]]
                ndcgs.append(ndcg_at_10(ranked, qrels[qid]))
                recalls.append(recall_at_10(ranked, qrels[qid]))
            results[variant]["scifact"] = {
                **_sizes(chunks), "chunk_s": round(split_s, 2),
                "mean_chunks_per_doc": round(len(chunks) / len(sci_docs), 3),
                "ndcg@10": round(float(np.mean(ndcgs)), 4), "recall@10": round(float(np.mean(recalls)), 4),
                "n_queries": len(qids)}
            print(f"scifact {variant}: {results[variant]['scifact']}", file=sys.stderr)

    report = {
        "benchmark": "bench_sentence_splitter",
        "chunking": sizes,
        "model": {"dir": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
                  "family": "onnx", "search": "exact cosine, no index"},
        "libraries": _versions(),
        "results": results,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "machine": machine(),
    }
    assert all(math.isfinite(r["scifact"]["ndcg@10"]) for r in results.values() if "scifact" in r)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def _sizes(chunks: list[Chunk]) -> dict:
    tokens = [c.n_tokens for c in chunks]
    return {"n_chunks": len(chunks), "mean_tokens": round(float(np.mean(tokens)), 1), "max_tokens_seen": max(tokens)}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("pysbd", "blingfire", "semantic-text-splitter", "tokenizers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    raise SystemExit(main())
