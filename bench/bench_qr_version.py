"""Benchmark: query latency against capsule size for QR versions (``firmware-tools build --qr-version``).

Builds the same documents once per QR version with the same keys, seed and embedding cache: the
chunks, vectors and indexes are identical, only the frames differ (version 40 in 192x192 frames,
version 20 in 112x112, ...; ``firmware_tools.qr_video.with_qr_version``). Then fresh processes
alternate between the capsules for ``--rounds`` rounds (the order reversed every other round):
each opens one capsule, warms up on 20 SciFact queries and times 200 more at k=10 (``-k``), clearing the
decrypted-frame cache before each query so that every hit's frame is decoded, in dense and hybrid
mode; with ``--one-core`` rounds, dense again pinned to CPU 0 (``taskset``). Every capsule must
return the same hits, text included, and a full ``edge verify`` (every frame read) must pass.

Usage::

    python bench/bench_qr_version.py --docs DOCS_DIR --work /tmp/bench-qr-version \\
        [--embedding-cache embed.sqlite] [--versions 40,28,20] [--rounds 3] [--one-core 2] [-k 10] \\
        [--out bench/results/qr-version.json]

Prints one JSON object (and writes ``--out``): per version the capsule, video and frame counts,
the capsule's size over its text, per mode the p50/p95 of every round and their medians, frames
decoded per query and the H.264 and QR ms per frame, the p50 and size ratios to the first version,
and the machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_entropy_coding import build, make_keys, probe  # noqa: E402  (the same build and probe)
from bench_scifact import machine  # noqa: E402



def build_verified(docs: Path, out: Path, version: int, keys: Path, cache: Path | None) -> dict:
    """Build with ``--qr-version version``, then ``edge verify`` it with every frame read."""
    report = build(docs, out, keys, cache, ["--qr-version", str(version)])
    verify = subprocess.run([sys.executable, "-m", "edge", "verify", str(out), "--trust", str(keys / "publisher.pub"),
                             "--identity", str(keys / "device.key")], capture_output=True, text=True, cwd=ROOT,
                            check=False)
    if verify.returncode != 0:
        raise SystemExit(f"edge verify failed (version {version}):\n{verify.stderr[-2000:]}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, required=True, help="documents to build (e.g. SciFact's abstracts)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the keys and the capsules")
    parser.add_argument("--embedding-cache", type=Path)
    parser.add_argument("--versions", default="40,28,20", help="QR versions, the first is the reference")
    parser.add_argument("--queries", type=Path, default=ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--one-core", type=int, default=2, metavar="ROUNDS", help="dense rounds pinned to CPU 0")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "qr-version.json")
    args = parser.parse_args()
    versions = [int(v) for v in args.versions.split(",")]

    keys = make_keys(args.work)
    capsules = {v: args.work / f"qr-v{v}.capsule" for v in versions}
    built = {v: build_verified(args.docs, capsules[v], v, keys, args.embedding_cache) for v in versions}
    runs: dict[int, dict[str, list[dict]]] = {v: {} for v in versions}
    plan = [(mode, False, args.rounds) for mode in ("dense", "hybrid")] + [("dense 1 core", True, args.one_core)]
    for mode, pin, rounds in plan:
        for number in range(rounds):
            for version in versions if number % 2 == 0 else versions[::-1]:
                result = probe(capsules[version], keys, args.queries, mode.split()[0], pin, args.k)
                runs[version].setdefault(mode, []).append(result)
                print(f"{mode} round {number + 1} v{version}: p50 {result['p50']:.2f} ms", file=sys.stderr)

    summary: dict[str, dict] = {}
    for version in versions:
        entry: dict[str, object] = {"capsule_bytes": built[version]["file_bytes"],
                                    "video_bytes": built[version]["section_bytes"]["VIDE"],
                                    "frames": built[version]["frames"],
                                    "capsule_per_text": built[version]["size_ratio"]}
        for mode, results in runs[version].items():
            entry[mode] = {"p50_rounds_ms": [round(r["p50"], 2) for r in results],
                           "p95_rounds_ms": [round(r["p95"], 2) for r in results],
                           "p50_median_ms": round(statistics.median(r["p50"] for r in results), 2),
                           "p95_median_ms": round(statistics.median(r["p95"] for r in results), 2),
                           "frames_per_query": round(statistics.median(r["frames_per_query"] for r in results), 2),
                           "decode_ms_per_frame": round(statistics.median(r["decode_ms_per_frame"] for r in results), 3),
                           "qr_ms_per_frame": round(statistics.median(r["qr_ms_per_frame"] for r in results), 3)}
        summary[f"v{version}"] = entry
    first = summary[f"v{versions[0]}"]
    ratios = {f"v{v}": {"video_bytes": round(summary[f"v{v}"]["video_bytes"] / first["video_bytes"], 3),
                        **{f"p50 {mode}": round(summary[f"v{v}"][mode]["p50_median_ms"] / first[mode]["p50_median_ms"], 3)
                           for mode, _, rounds in plan if rounds}}
              for v in versions[1:]}
    same_hits = all(len({runs[v][mode][i]["answers_sha256"] for v in versions}) == 1
                    for mode in runs[versions[0]] for i in range(len(runs[versions[0]][mode])))
    report = {"benchmark": "qr_version", "machine": machine(), "docs": str(args.docs),
              "chunks": built[versions[0]]["chunks"], "k": args.k, "queries": 200,
              "note": "same chunks, vectors and indexes; every frame verified; fresh process per round, versions "
                      "alternated; frame cache cleared before each query",
              "versions": summary, "ratios_to_first": ratios, "same_hits": same_hits}
    text = json.dumps(report, indent=2)
    print(text)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
