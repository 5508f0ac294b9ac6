"""Benchmark: delta capsules (FORMAT.md §4.7) against full builds: size, build time, search latency.

Builds a base capsule v1 from the first ``--max-docs`` BEIR SciFact abstracts (one ``.txt`` per
document, title then text: ``bench_hybrid.write_corpus``; 4,260 documents give about 10,000
chunks), with fixed keys, seeds and issue times, and one embedding cache shared by the builds.
A changed document is the previous text with one sentence appended (deterministic, seeded choice).

1. Delta size curve: for each ``--fractions`` share of the documents changed, a delta over v1
   (``firmware_tools.delta.read_base`` + ``build_capsule(base=...)``) and the full capsule of the
   same documents (no base). Each of the two builds starts from a copy of the cache as v1 left it,
   so both embed the changed chunks once. Reported: delta bytes / full bytes, the delta's
   ``section_bytes``, the fixed cost (a least-squares intercept of delta bytes over delta chunks),
   build seconds (``read_base`` counted in the delta's), and that the opened delta (v1 + delta)
   serves as many live chunks as the full capsule, and (``--curve-queries``) the search latency of
   v1 + delta against the full capsule, as in 2 (the cost of tombstones: a segment fetches its
   ranking past its tombstoned chunks). ``--what-if-projection false`` (default) also
   builds each delta with ``projection=False`` (a full 384-dimension Annoy index, what a delta
   under 2048 chunks got before deltas reused their base's projection); ``true`` forces
   ``projection=True``; ``off`` skips it. A what-if column, not the builder's default.
2. Search latency: ``--chain`` deltas (v2 over v1, v3 over v2 with v1 as segment file, ...), each
   changing ``--chain-fraction`` of the documents, then the compacted equivalent (a full build of
   the last version's documents). Both are opened; ``--queries`` SciFact test queries run at k=10
   per mode, A and B alternated per query (the order flipped every query), every segment's frame
   cache cleared before each search, after 10 warm-up queries. Reported: p50/p95 ms, the
   segmented/compacted ratio, median stage timings, and overlap@10 of the hits (by document and
   character span: global chunk ids differ between the two) as information, and each side's dense
   recall@10 against exact cosine top-10 over the same live chunks (vectors from the embedding
   cache, queries embedded by ``QueryEmbedder``), and the share of hits from the deltas'
   documents against that share in the exact top-10 (a segment whose scores are on another scale
   is over- or under-represented).

Usage::

    nice -n 10 python bench/bench_delta.py [--data ../shared/data/scifact] [--max-docs 4260] \\
        [--fractions 0.001,0.01,0.05,0.1,0.25,0.5] [--chain 4] [--chain-fraction 0.01] \\
        [--queries 200] [--curve-queries 100] [--workers 2] [--what-if-projection false|true|off] \\
        [--workdir DIR] [--out bench/results/delta.json]

Prints one JSON object (and writes ``--out``) with the figures and the machine. Not a test; the
machine is shared and noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_hybrid import write_corpus  # noqa: E402
from bench_scifact import load_scifact, machine  # noqa: E402

ISSUED_AT = datetime(2026, 11, 1, tzinfo=timezone.utc)
EXPIRES_AT = datetime(2036, 11, 1, tzinfo=timezone.utc)
NAME = "scifact"
MODES = ("hybrid", "dense")


def wait_for_tests(max_s: float = 300.0, poll_s: float = 30.0) -> float:
    """Wait while a test run (a ``pytest`` process) shares the machine: poll, at most ``max_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True, check=False).stdout.split()
        if not [pid for pid in found if int(pid) != os.getpid()]:
            break
        print(f"a test run is active ({len(found)} processes); waiting {poll_s:.0f} s", file=sys.stderr)
        time.sleep(poll_s)
    return round(time.monotonic() - t0, 1)


def code_state() -> str:
    """SHA-256 of ``git diff HEAD`` over edge/ and firmware_tools/: which uncommitted code was measured."""
    import hashlib

    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "edge", "firmware_tools"],
                          capture_output=True, check=False).stdout
    return hashlib.sha256(diff).hexdigest()[:16] if diff else "none"


def keys():
    """Fixed publisher (Ed25519) and device (X25519) keys, as tests/conftest.py ``_write_keys``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    seed = bytes(range(32))
    return Ed25519PrivateKey.from_private_bytes(seed), X25519PrivateKey.from_private_bytes(bytes(reversed(seed)))


def choose(names: list[str], fraction: float, label: str) -> list[str]:
    """A seeded sample of ``fraction`` of the documents (at least one)."""
    n = max(1, round(fraction * len(names)))
    return sorted(random.Random(f"bench-delta/{label}").sample(names, n))


def make_version(previous: Path, out: Path, names: list[str], changed: list[str], tag: str) -> None:
    """``out`` = ``previous`` with one sentence appended to each ``changed`` document (others hard-linked)."""
    out.mkdir(parents=True)
    changed_set = set(changed)
    for name in names:
        if name in changed_set:
            text = (previous / name).read_text(encoding="utf-8").rstrip("\n")
            (out / name).write_text(f"{text} Revised in {tag}: the authors corrected the legend of figure 2 "
                                    f"and the reported confidence interval.\n", encoding="utf-8")
        else:
            os.link(previous / name, out / name)


def exact_dense_top(docs_dir: Path, cache_path: Path, queries: list[str], k: int = 10) -> list[list[tuple]]:
    """Exact cosine top-``k`` over every chunk of ``docs_dir`` (the builder's chunking; vectors from
    the embedding cache), as ``(document, char_start, char_end)`` keys: the dense reference."""
    import numpy as np

    from edge.embedder import QueryEmbedder, find_model_dir
    from firmware_tools.build import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS
    from firmware_tools.chunking import TokenizerOffsets, chunk_documents
    from firmware_tools.documents import iter_documents
    from firmware_tools.embedding import EmbeddingCache

    embedder = QueryEmbedder.open(find_model_dir(), family="onnx", n_threads=1)
    offsets = TokenizerOffsets.from_file(embedder.model_path.parent / "tokenizer.json")
    docs = list(iter_documents([docs_dir]))
    chunks = list(chunk_documents(iter(docs), token_offsets=offsets, token_offsets_batch=offsets.batch,
                                  max_tokens=DEFAULT_MAX_TOKENS, overlap_tokens=DEFAULT_OVERLAP_TOKENS))
    cache = EmbeddingCache(cache_path, embedder.sha256, embedder.dim)
    try:
        vectors = cache.get_many([c.text for c in chunks])
    finally:
        cache.close()
    if any(v is None for v in vectors):
        raise RuntimeError("the embedding cache lacks chunks of the reference version")
    matrix = np.stack(vectors).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    keys = [(docs[c.doc_index].name, c.char_start, c.char_end) for c in chunks]
    out = []
    for q in queries:
        vector = np.asarray(embedder.embed([q])[0], dtype=np.float32)
        scores = matrix @ (vector / np.linalg.norm(vector))
        top = np.argsort(-scores, kind="stable")[:k]
        out.append([keys[i] for i in top])
    return out


def pct(values, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def ab_search(sides: dict, texts: list[str], modes=MODES) -> dict:
    """Run every query on every side at k=10 per mode, the side order flipped each time, each
    segment's frame cache cleared first, after 10 warm-up queries: per mode and side the
    milliseconds, stage timings and hit keys ``(document, char_start, char_end)``."""
    for q in texts[:10]:
        for c in sides.values():
            c.search(q, k=10)
    run = {key: {mode: {side: [] for side in sides} for mode in modes} for key in ("ms", "stages", "hits")}
    names = list(sides)
    turn = 0
    for q in texts:
        for mode in modes:
            order = names if turn % 2 == 0 else names[::-1]
            turn += 1
            for side in order:
                c = sides[side]
                for part in c.parts:  # Capsule.clear_cache clears only its own segment's frames
                    part.clear_cache()
                t1 = time.perf_counter()
                result = c.search(q, k=10, mode=mode)
                run["ms"][mode][side].append((time.perf_counter() - t1) * 1e3)
                tm = result.timings
                run["stages"][mode][side].append((tm.embed_ms, tm.ann_ms, tm.lexical_ms, tm.n_frames_decoded))
                run["hits"][mode][side].append([(h.document, h.char_start, h.char_end) for h in result])
    return run


def summarize(run: dict, a: str = "segmented", b: str = "compacted") -> dict:
    """Per mode: each side's p50/p95/mean and median stage timings, the a/b ratios, overlap@10."""
    out = {}
    for mode, by_side in run["ms"].items():
        entry = {}
        for side, v in by_side.items():
            st = run["stages"][mode][side]
            entry[side] = {"p50_ms": round(pct(v, 0.5), 2), "p95_ms": round(pct(v, 0.95), 2),
                           "mean_ms": round(statistics.fmean(v), 2),
                           "median_embed_ms": round(statistics.median(s[0] for s in st), 2),
                           "median_ann_ms": round(statistics.median(s[1] for s in st), 2),
                           "median_lexical_ms": round(statistics.median(s[2] for s in st), 2),
                           "frames_per_query": round(statistics.fmean(s[3] for s in st), 2)}
        entry[f"p50_ratio_{a}_to_{b}"] = round(entry[a]["p50_ms"] / entry[b]["p50_ms"], 3)
        entry[f"p95_ratio_{a}_to_{b}"] = round(entry[a]["p95_ms"] / entry[b]["p95_ms"], 3)
        x_all, y_all = run["hits"][mode][a], run["hits"][mode][b]
        entry["overlap_at_10"] = round(statistics.fmean(len(set(x) & set(y)) / max(len(y), 1)
                                                        for x, y in zip(x_all, y_all)), 4)
        entry["identical_top10_share"] = round(sum(x == y for x, y in zip(x_all, y_all)) / len(x_all), 4)
        entry["identical_top1_share"] = round(sum(x[:1] == y[:1] for x, y in zip(x_all, y_all)) / len(x_all), 4)
        out[mode] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--max-docs", type=int, default=4260, help="first N documents (0: all 5,183)")
    parser.add_argument("--fractions", default="0.001,0.01,0.05,0.1,0.25,0.5")
    parser.add_argument("--chain", type=int, default=4, help="deltas chained over v1 for the latency part (0: skip)")
    parser.add_argument("--chain-fraction", type=float, default=0.01)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--curve-queries", type=int, default=100,
                        help="queries per mode for v1 + each curve delta vs its full build (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--what-if-projection", choices=("false", "true", "off"), default="false",
                        help="also build each curve delta with projection=False/True (off: skip)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a running test suite")
    parser.add_argument("--workdir", default=None, help="kept if given; default: a temporary folder, removed")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "delta.json"))
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]

    waited_s = 0.0 if args.no_wait else wait_for_tests()

    from edge import open_capsule
    from edge.capsule import OpenOptions
    from firmware_tools.build import build_capsule
    from firmware_tools.delta import read_base

    publisher, device = keys()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-delta-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache.sqlite"
    t_all = time.perf_counter()

    def build(inputs: Path, out: Path, *, version: int, label: str, cache_path: Path, base=None, projection=None):
        t0 = time.perf_counter()
        result = build_capsule([inputs], out, signing_key=publisher, recipients=[device.public_key()],
                               issued_at=ISSUED_AT + timedelta(days=version - 1), expires_at=EXPIRES_AT,
                               version=version, seed=f"bench-delta/{label}".encode(), n_threads=args.workers,
                               embedding_cache=cache_path, name=NAME, base=base,
                               projection=projection)
        return result, time.perf_counter() - t0

    def open_version(path: Path, segments=()):
        return open_capsule(path, trusted_keys=[publisher.public_key()], identities=[device],
                            options=OpenOptions(segment_files=tuple(segments)))

    def base_of(path: Path, segments=()):
        t0 = time.perf_counter()
        base = read_base(path, signing_key=publisher, identities=[device], segment_files=list(segments))
        return base, time.perf_counter() - t0

    _, queries, _ = load_scifact(Path(args.data))
    texts = [queries[q] for q in sorted(queries)][:args.queries]

    # v1: the base, which also fills the embedding cache
    v1_dir = work / "docs-v1"
    if v1_dir.exists():
        shutil.rmtree(v1_dir)
    n_docs = write_corpus(Path(args.data), v1_dir, args.max_docs)
    names = sorted(p.name for p in v1_dir.iterdir())
    cache.unlink(missing_ok=True)
    v1_path = work / "v1.capsule"
    v1, v1_s = build(v1_dir, v1_path, version=1, label="v1", cache_path=cache)
    cache_v1 = work / "cache-v1.sqlite"
    shutil.copyfile(cache, cache_v1)
    print(f"v1: {n_docs} documents, {v1.n_chunks} chunks, {v1.file_bytes} bytes, {v1_s:.1f} s "
          f"({v1.n_embedded} embedded)", file=sys.stderr)

    # 1. the size curve
    curve = []
    for fraction in fractions:
        label = f"curve-{fraction:g}"
        changed = choose(names, fraction, label)
        vdir = work / f"docs-{label}"
        if vdir.exists():
            shutil.rmtree(vdir)
        make_version(v1_dir, vdir, names, changed, "v2")
        shutil.copyfile(cache_v1, work / "cache-run.sqlite")
        base, read_base_s = base_of(v1_path)
        delta, delta_s = build(vdir, work / f"{label}-delta.capsule", version=2, label=f"{label}-delta",
                               cache_path=work / "cache-run.sqlite", base=base)
        shutil.copyfile(cache_v1, work / "cache-run.sqlite")
        full, full_s = build(vdir, work / f"{label}-full.capsule", version=2, label=f"{label}-full",
                             cache_path=work / "cache-run.sqlite")
        tombstoned = sum(b - a for a, b in base.tombstones_for(changed))
        with open_version(delta.path, [v1_path]) as opened:
            live = opened.n_live_chunks
        point = {
            "fraction": fraction, "changed_documents": len(changed),
            "delta_bytes": delta.file_bytes, "full_bytes": full.file_bytes,
            "delta_to_full": round(delta.file_bytes / full.file_bytes, 4),
            "delta_chunks": delta.n_chunks, "full_chunks": full.n_chunks, "tombstoned_chunks": tombstoned,
            "delta_live_chunks_opened": live, "live_matches_full": live == full.n_chunks,
            "delta_section_bytes": delta.section_bytes,
            "delta_container_overhead_bytes": delta.file_bytes - sum(delta.section_bytes.values()),
            "full_section_bytes": full.section_bytes,
            "delta_build_s": round(delta_s + read_base_s, 2), "delta_read_base_s": round(read_base_s, 2),
            "full_build_s": round(full_s, 2),
            "delta_to_full_build_s": round((delta_s + read_base_s) / full_s, 3),
            "delta_stage_s": {k: round(v, 2) for k, v in delta.stage_s.items()},
            "full_stage_s": {k: round(v, 2) for k, v in full.stage_s.items()},
            "delta_embedded": delta.n_embedded, "full_embedded": full.n_embedded,
        }
        if args.what_if_projection != "off":
            shutil.copyfile(cache_v1, work / "cache-run.sqlite")
            base, read_base_s = base_of(v1_path)
            try:
                alt, alt_s = build(vdir, work / f"{label}-delta-whatif.capsule", version=2,
                                   label=f"{label}-delta-whatif", cache_path=work / "cache-run.sqlite", base=base,
                                   projection=args.what_if_projection == "true")
                with open_version(alt.path, [v1_path]) as opened:
                    alt_live = opened.n_live_chunks
                point["what_if_delta"] = {
                    "projection": args.what_if_projection == "true",
                    "bytes": alt.file_bytes, "delta_to_full": round(alt.file_bytes / full.file_bytes, 4),
                    "section_bytes": alt.section_bytes, "build_s": round(alt_s + read_base_s, 2),
                    "live_matches_full": alt_live == full.n_chunks}
            except Exception as exc:  # noqa: BLE001 - a what-if: record why it does not build
                point["what_if_delta"] = {"projection": args.what_if_projection == "true",
                                          "error": f"{type(exc).__name__}: {exc}"}
        if args.curve_queries > 0:
            with open_version(delta.path, [v1_path]) as d, open_version(full.path) as f:
                summary = summarize(ab_search({"delta": d, "full": f}, texts[:args.curve_queries]), "delta", "full")
            point["latency"] = {mode: {"delta_p50_ms": e["delta"]["p50_ms"], "full_p50_ms": e["full"]["p50_ms"],
                                       "p50_ratio": e["p50_ratio_delta_to_full"],
                                       "p95_ratio": e["p95_ratio_delta_to_full"],
                                       "delta_median_ann_ms": e["delta"]["median_ann_ms"],
                                       "full_median_ann_ms": e["full"]["median_ann_ms"],
                                       "delta_median_lexical_ms": e["delta"]["median_lexical_ms"],
                                       "full_median_lexical_ms": e["full"]["median_lexical_ms"],
                                       "overlap_at_10": e["overlap_at_10"]} for mode, e in summary.items()}
        curve.append(point)
        print(f"{label}: delta {delta.file_bytes} B / full {full.file_bytes} B = {point['delta_to_full']:.4f}; "
              f"build {point['delta_build_s']} s vs {full_s:.1f} s; live {live} vs {full.n_chunks}", file=sys.stderr)
    (work / "cache-run.sqlite").unlink(missing_ok=True)

    fixed = None

    def projected(point: dict) -> bool:
        return point["delta_section_bytes"].get("PROJ", 0) > 16

    smallest = min(curve, key=lambda p: p["delta_chunks"]) if curve else None
    flat = [p for p in curve if projected(p) == projected(smallest)] if curve else []  # one index kind
    if len(flat) >= 2:
        xs = [p["delta_chunks"] for p in flat]
        ys = [p["delta_bytes"] for p in flat]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        fixed = {"fit_over_fractions": [p["fraction"] for p in flat], "projected": projected(smallest),
                 "intercept_bytes": round(my - slope * mx), "bytes_per_chunk": round(slope, 1),
                 "full_bytes_per_chunk": round(curve[0]["full_bytes"] / curve[0]["full_chunks"], 1),
                 "smallest_delta": {"fraction": smallest["fraction"], "chunks": smallest["delta_chunks"],
                                    "bytes": smallest["delta_bytes"],
                                    "section_bytes": dict(sorted(smallest["delta_section_bytes"].items(),
                                                                 key=lambda kv: -kv[1]))}}

    # 2. latency over base + chain of deltas vs the compacted capsule
    latency = None
    if args.chain > 0:
        chain = []
        prev_dir, prev_path, segments = v1_dir, v1_path, []
        version = 1
        for step in range(args.chain):
            version = step + 2
            label = f"chain-v{version}"
            changed = choose(names, args.chain_fraction, label)
            vdir = work / f"docs-{label}"
            if vdir.exists():
                shutil.rmtree(vdir)
            make_version(prev_dir, vdir, names, changed, f"v{version}")
            base, read_base_s = base_of(prev_path, segments)
            result, build_s = build(vdir, work / f"{label}.capsule", version=version, label=label,
                                    cache_path=cache, base=base)
            chain.append({"version": version, "changed_documents": len(changed), "chunks": result.n_chunks,
                          "projected": result.section_bytes.get("PROJ", 0) > 16,
                          "bytes": result.file_bytes, "build_s": round(build_s + read_base_s, 2)})
            segments.append(prev_path)
            prev_dir, prev_path = vdir, result.path
        compact, compact_s = build(prev_dir, work / "compacted.capsule", version=version, label="compacted",
                                   cache_path=cache)

        t0 = time.perf_counter()
        seg = open_version(prev_path, segments)
        seg_open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        com = open_version(compact.path)
        com_open_s = time.perf_counter() - t0
        try:
            run = ab_search({"segmented": seg, "compacted": com}, texts)
            modes_out = summarize(run)
            exact = exact_dense_top(prev_dir, cache, texts)
            # documents whose live copy is in a delta segment (changed since v1)
            delta_docs = {n for n in names if (prev_dir / n).read_bytes() != (v1_dir / n).read_bytes()}
            for mode, entry in modes_out.items():
                for side in ("segmented", "compacted"):
                    entry[side]["share_of_hits_from_delta_documents"] = round(statistics.fmean(
                        sum(key[0] in delta_docs for key in x) / max(len(x), 1) for x in run["hits"][mode][side]), 4)
                if mode == "dense":
                    entry["exact_share_from_delta_documents"] = round(statistics.fmean(
                        sum(key[0] in delta_docs for key in y) / len(y) for y in exact), 4)
                    for side in ("segmented", "compacted"):
                        entry[side]["recall_at_10_vs_exact"] = round(statistics.fmean(
                            len(set(x) & set(y)) / len(y) for x, y in zip(run["hits"][mode][side], exact)), 4)
            latency = {
                "chain": chain, "segments": len(seg.parts), "segmented_n_chunks": seg.n_chunks,
                "segmented_live_chunks": seg.n_live_chunks, "tombstoned_chunks": seg.n_chunks - seg.n_live_chunks,
                "compacted_chunks": compact.n_chunks,
                "compacted_bytes": compact.file_bytes, "compacted_build_s": round(compact_s, 2),
                "segmented_total_bytes": v1.file_bytes + sum(c["bytes"] for c in chain),
                "open_s": {"segmented": round(seg_open_s, 2), "compacted": round(com_open_s, 2)},
                "queries": len(texts), "k": 10, "modes": modes_out,
            }
        finally:
            seg.close()
            com.close()

    report = {
        "benchmark": "delta", "machine": machine(),
        "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip(),
        "uncommitted_diff_sha256": code_state(),
        "command": "nice -n 10 .venv/bin/python " + " ".join(sys.argv),
        "waited_for_tests_s": waited_s, "workers": args.workers,
        "base": {"documents": n_docs, "chunks": v1.n_chunks, "bytes": v1.file_bytes, "build_s": round(v1_s, 2),
                 "embedded": v1.n_embedded, "section_bytes": v1.section_bytes},
        "change": "one sentence appended to each changed document (seeded choice)",
        "targets": {"delta_to_full_at_1pct": 0.05, "delta_to_full_at_10pct": 0.15, "latency_ratio": 1.3},
        "curve": curve, "fixed_cost": fixed, "latency": latency,
        "wall_s": round(time.perf_counter() - t_all, 1),
        "note": "each curve build starts from a copy of the embedding cache as v1 left it (both embed the changed "
                "chunks); delta build seconds include read_base; latency: warm, one query-embedding thread, every "
                "segment's frame cache cleared before each search, sides alternated per query",
    }
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
