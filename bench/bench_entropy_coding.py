"""Benchmark: query latency and capsule size of CABAC against CAVLC frames (``--entropy-coding``).

Builds the same documents twice with the same keys, seed and embedding cache, once per H.264
entropy coder (``firmware-tools build --entropy-coding cabac|cavlc``): chunks, vectors and indexes
are identical, only the video differs. Then fresh processes alternate between the two capsules for
``--rounds`` rounds: each opens one, warms up on 20 SciFact queries and times 200 more at k=10
(frame cache cleared before each, so every hit's frame is decoded), dense and hybrid; with
``--one-core`` the same again pinned to CPU 0 (``taskset``). Also checks that both capsules return
the same hits, text included.

Usage::

    python bench/bench_entropy_coding.py --docs DOCS_DIR --work /tmp/bench-entropy \\
        [--embedding-cache embed.sqlite] [--rounds 5] [--one-core 3] [--out bench/results/entropy-coding.json]

Prints one JSON object (and writes ``--out``): per coder the capsule and video bytes, per mode the
p50/p95 of every round and their medians, decode ms per frame, and the CAVLC/CABAC ratios, with
the machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_scifact import machine  # noqa: E402

CODERS = ("cabac", "cavlc")

PROBE = r"""
import hashlib, json, sys, time
from edge import open_capsule, load_public_key, load_identity
capsule, pub, key, queries_file, mode, k = sys.argv[1:7]
k = int(k)
queries = [json.loads(line)["text"] for line in open(queries_file)][:220]
with open_capsule(capsule, trusted_keys=[load_public_key(pub)], identities=[load_identity(key)]) as c:
    for q in queries[:20]:
        c.search(q, k=k, mode=mode)
    times, decode_ms, qr_ms, frames, answers = [], 0.0, 0.0, 0, hashlib.sha256()
    for q in queries[20:]:
        c.clear_cache()
        t = time.perf_counter()
        result = c.search(q, k=k, mode=mode)
        times.append((time.perf_counter() - t) * 1e3)
        decode_ms += result.timings.frame_decode_ms
        qr_ms += result.timings.qr_decode_ms
        frames += result.timings.n_frames_decoded
        for hit in result:
            answers.update(f"{hit.chunk_id}\0{hit.text}\0".encode())
times.sort()
print(json.dumps({"p50": times[len(times) // 2], "p95": times[int(len(times) * 0.95)],
                  "frames_per_query": frames / (len(queries) - 20),
                  "decode_ms_per_frame": decode_ms / max(frames, 1), "qr_ms_per_frame": qr_ms / max(frames, 1),
                  "answers_sha256": answers.hexdigest()}))
"""


def make_keys(work: Path) -> Path:
    """A publisher and a device key pair in ``work/keys`` (made once); return that folder."""
    keys = work / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for kind in ("publisher", "device"):
        if not (keys / f"{kind}.key").exists():
            subprocess.run([sys.executable, "-m", "firmware_tools", "keygen", "--kind", kind, "-o",
                            str(keys / f"{kind}.key")], check=True, cwd=ROOT, capture_output=True)
    return keys


def build(docs: Path, out: Path, keys: Path, cache: Path | None, options: list[str]) -> dict:
    """``firmware-tools build`` with the benchmarks' fixed keys, dates and seed, plus ``options``."""
    command = [sys.executable, "-m", "firmware_tools", "build", str(docs), "-o", str(out), "--signing-key",
               str(keys / "publisher.key"), "--recipient", str(keys / "device.pub"), "--expires", "2027-06-30",
               "--issued-at", "2026-12-07", "--seed", "00", *options, "-q", "--json"]
    if cache is not None:
        command += ["--embedding-cache", str(cache)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({' '.join(options)}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def probe(capsule: Path, keys: Path, queries: Path, mode: str, pin: bool, k: int = 10) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = ([*(["taskset", "-c", "0"] if pin else []), sys.executable, "-c", PROBE, str(capsule),
                str(keys / "publisher.pub"), str(keys / "device.key"), str(queries), mode, str(k)])
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed on {capsule}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, required=True, help="documents to build (e.g. SciFact's abstracts)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the keys and the two capsules")
    parser.add_argument("--embedding-cache", type=Path)
    parser.add_argument("--queries", type=Path, default=ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one-core", type=int, default=3, metavar="ROUNDS", help="dense rounds pinned to CPU 0")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "entropy-coding.json")
    args = parser.parse_args()

    keys = make_keys(args.work)
    built = {coder: build(args.docs, args.work / f"{coder}.capsule", keys, args.embedding_cache,
                          ["--entropy-coding", coder])
             for coder in CODERS}
    runs: dict[str, dict[str, list[dict]]] = {coder: {} for coder in CODERS}
    plan = [(mode, False, args.rounds) for mode in ("dense", "hybrid")] + [("dense 1 core", True, args.one_core)]
    for mode, pin, rounds in plan:
        for number in range(rounds):
            for coder in CODERS if number % 2 == 0 else CODERS[::-1]:
                result = probe(args.work / f"{coder}.capsule", keys, args.queries, mode.split()[0], pin)
                runs[coder].setdefault(mode, []).append(result)
                print(f"{mode} round {number + 1} {coder}: p50 {result['p50']:.2f} ms", file=sys.stderr)

    summary: dict[str, dict] = {}
    for coder in CODERS:
        entry: dict[str, object] = {"capsule_bytes": built[coder]["file_bytes"],
                                    "video_bytes": built[coder]["section_bytes"]["VIDE"],
                                    "capsule_per_text": built[coder]["size_ratio"]}
        for mode, results in runs[coder].items():
            entry[mode] = {"p50_rounds_ms": [round(r["p50"], 2) for r in results],
                           "p95_rounds_ms": [round(r["p95"], 2) for r in results],
                           "p50_median_ms": round(statistics.median(r["p50"] for r in results), 2),
                           "p95_median_ms": round(statistics.median(r["p95"] for r in results), 2),
                           "decode_ms_per_frame": round(statistics.median(r["decode_ms_per_frame"] for r in results), 3)}
        summary[coder] = entry
    ratios = {mode: round(summary["cavlc"][mode]["p50_median_ms"] / summary["cabac"][mode]["p50_median_ms"], 3)
              for mode, _, _ in plan if mode in summary["cavlc"]}
    same_hits = all(a["answers_sha256"] == b["answers_sha256"] for mode in runs["cabac"]
                    for a, b in zip(runs["cabac"][mode], runs["cavlc"][mode]))
    report = {"benchmark": "entropy_coding", "machine": machine(), "docs": str(args.docs),
              "chunks": built["cabac"]["chunks"], "frames": built["cabac"]["frames"], "k": 10, "queries": 200,
              "note": "same chunks, vectors and indexes; fresh process per round, coders alternated; frame cache "
                      "cleared before each query", "coders": summary,
              "p50_ratio_cavlc_to_cabac": ratios,
              "video_bytes_ratio": round(summary["cavlc"]["video_bytes"] / summary["cabac"]["video_bytes"], 3),
              "same_hits": same_hits}
    text = json.dumps(report, indent=2)
    print(text)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
