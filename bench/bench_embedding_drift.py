"""Cross-CPU drift of the int8 query model: embed fixed texts here, compare with another CPU's run.

onnxruntime's int8 kernels (MLAS) are chosen per instruction set at run time (SSE4, AVX2,
AVX-512 VNNI, AMX, NEON) and round differently, so the same model gives slightly different
vectors on different CPUs. This script measures how much.

    python bench/bench_embedding_drift.py embed --out here.npz
    qemu-x86_64 -cpu Haswell .venv/bin/python bench/bench_embedding_drift.py embed --out haswell.npz
    python bench/bench_embedding_drift.py compare here.npz haswell.npz

``embed`` embeds the 32 reference sentences of models/all-MiniLM-L6-v2/reference_embeddings.npz
and the chunk texts of the test vectors (tests/vectors/src/docs), one at a time on one thread as
the builder and the device do, and records the CPU flags the process saw. ``compare`` prints JSON:
per text set, mean/min cosine between the two runs, max |difference| per coordinate, and each
run's mean/min cosine to the fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "all-MiniLM-L6-v2"
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def _cpu() -> dict[str, object]:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    # Under qemu-user /proc/cpuinfo is the host's: the emulated CPU is what --label says.
    return {"machine": platform.machine(), "model": model, "isa": [f for f in ISA_FLAGS if f in flags]}


def _texts() -> dict[str, list[str]]:
    with np.load(MODEL_DIR / "reference_embeddings.npz") as ref:
        sentences = [str(s) for s in ref["sentences"]]
    sys.path.insert(0, str(ROOT))
    from firmware_tools.chunking import TokenizerOffsets, chunk_documents  # noqa: PLC0415
    from firmware_tools.documents import iter_documents  # noqa: PLC0415

    offsets = TokenizerOffsets.from_file(MODEL_DIR / "tokenizer.json")
    docs = iter_documents([ROOT / "tests" / "vectors" / "src" / "docs"])
    # the test vectors' chunking (tests/vectors/generate.py BUILD_OPTIONS)
    chunks = [c.text for c in chunk_documents(docs, token_offsets=offsets, token_offsets_batch=offsets.batch,
                                              max_tokens=48, overlap_tokens=8)]
    return {"reference_sentences": sentences, "vector_chunks": chunks}


def embed(args: argparse.Namespace) -> int:
    from edge.embedder import QueryEmbedder

    embedder = QueryEmbedder.open(MODEL_DIR, n_threads=1)
    out = {}
    for name, texts in _texts().items():
        out[name] = embedder.embed(texts)
        out[name + "_texts"] = np.array(texts)
    np.savez(args.out, cpu=json.dumps({**_cpu(), "label": args.label}), **out)
    print(f"wrote {args.out}")
    return 0


def compare(args: argparse.Namespace) -> int:
    a, b = np.load(args.a), np.load(args.b)
    with np.load(MODEL_DIR / "reference_embeddings.npz") as ref:
        fp32 = ref["embeddings"]
    report: dict[str, object] = {"a": json.loads(str(a["cpu"])), "b": json.loads(str(b["cpu"]))}
    for name in ("reference_sentences", "vector_chunks"):
        if list(a[name + "_texts"]) != list(b[name + "_texts"]):
            raise SystemExit(f"{name}: the two runs embedded different texts")
        va, vb = a[name].astype(np.float64), b[name].astype(np.float64)
        cos = np.sum(va * vb, axis=1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
        entry = {"n_texts": len(va), "identical_vectors": int(np.sum(np.all(va == vb, axis=1))),
                 "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                 "max_abs_diff": float(np.abs(va - vb).max())}
        if name == "reference_sentences":
            for label, v in (("a", va), ("b", vb)):
                c = np.sum(v * fp32, axis=1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(fp32, axis=1))
                entry[f"cos_to_fp32_{label}"] = {"mean": float(c.mean()), "min": float(c.min())}
        report[name] = entry
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("embed", help="embed the fixed texts on this CPU")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--label", default="native", help="what CPU this is (qemu-user cannot show it)")
    p.set_defaults(func=embed)
    p = sub.add_parser("compare", help="compare two embed runs")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.set_defaults(func=compare)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
