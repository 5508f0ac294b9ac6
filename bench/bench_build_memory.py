"""Benchmark: the builder's peak memory against the number of chunks (issue 15, "builder memory
bounded at 1M chunks").

A 1M-chunk first build embeds for hours on this machine kind, so the embedding is taken out of
the measurement, not faked: SciFact's abstracts (BEIR, 5,183 documents, 12,102 chunks) are
embedded once, for real, into an embedding cache (``build_capsule(embedding_cache=)``), and the
scaled corpora are that corpus copied R times into folders ``copy-000/``, ``copy-001/``, … Every
copy's chunks have the same texts, so the cache answers them all; everything else runs as in
any build and scales with the chunk count: chunking, the record spool, the lexical index
(tantivy-7, ``ident-v2``), packing, sealing, the QR frames, the H.264 encode and its frame
check, PCA, the Annoy build, signing and the self-check.

Each scale is built in a fresh child process (``python bench/bench_build_memory.py --child``)
with 2 embedding workers, as ``firmware-tools build`` would run; it reports its own peak RSS
(``ru_maxrss``; ``VmHWM``) and its worker processes' largest (``RUSAGE_CHILDREN``), the stage
times and the capsule's sections. The figure to read is how the coordinator's peak grows per
chunk; the 1M projection is a straight line through the measured points, not a measurement.

What repetition changes: the corpus has 1/R of the distinct terms of a real corpus of the same
size (the lexical index is smaller than a real one's, its postings as long), and Annoy sees
R identical copies of each vector. Chunk records, frames, video, vectors and document metadata
are as large as a real corpus's.

Usage::

    python bench/bench_build_memory.py [--copies 1,4,16] [--out bench/results/build-memory.json]

Not a test; figures depend on the machine (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from bench_scifact import machine  # noqa: E402

MIB = 1 << 20


class _MemorySampler:
    """Read this process's ``RssAnon``/``RssFile``/``RssShmem`` every ``interval_s`` and keep each
    one's peak with the build stage it happened in (anonymous memory is what the builder holds;
    file-backed pages, such as the mapped vectors and Annoy's on-disk nodes, are page cache the
    kernel can evict, although ``ru_maxrss`` counts them)."""

    def __init__(self, interval_s: float = 0.1) -> None:
        import threading

        self.stage = "start"
        self.peaks = {key: (0, "") for key in ("RssAnon", "RssFile", "RssShmem")}
        self.anon_by_stage: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.sample()

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peaks and int(value.split()[0]) > self.peaks[key][0]:
                self.peaks[key] = (int(value.split()[0]), self.stage)
            if key == "RssAnon":
                self.anon_by_stage[self.stage] = max(self.anon_by_stage.get(self.stage, 0), int(value.split()[0]))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {f"coordinator_peak_{key[3:].lower()}_mib": round(kib / 1024, 1) for key, (kib, _) in self.peaks.items()} | {
            f"coordinator_peak_{key[3:].lower()}_stage": stage for key, (_, stage) in self.peaks.items()} | {
            "coordinator_peak_anon_mib_by_stage": {k: round(v / 1024, 1) for k, v in self.anon_by_stage.items()}}


def build_once(docs: Path, out: Path, cache: Path, workers: int) -> dict:
    """Build ``docs`` into ``out`` with the embedding cache; return figures (in this process)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from firmware_tools.build import build_capsule

    sampler = _MemorySampler()

    def progress(stage: str, done: int, total: int | None) -> None:
        sampler.stage = stage

    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    result = build_capsule([docs], out, signing_key=Ed25519PrivateKey.generate(),
                           recipients=[X25519PrivateKey.generate().public_key()], issued_at=now,
                           expires_at=now + timedelta(days=30), version=1, seed=b"bench-build-memory",
                           n_threads=workers, embedding_cache=cache, progress=progress)
    wall = time.perf_counter() - t0
    peaks = sampler.stop()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {
        "chunks": result.n_chunks, "chunks_embedded": result.n_embedded, "build_wall_s": round(wall, 1),
        "stage_s": {k: round(v, 2) for k, v in result.stage_s.items()},
        "capsule_bytes": out.stat().st_size,
        "coordinator_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "coordinator_vmhwm_mib": round(int(status["VmHWM"].split()[0]) / 1024, 1),
        "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        **peaks,
    }


def child(args: argparse.Namespace) -> int:
    print(json.dumps(build_once(Path(args.docs), Path(args.out), Path(args.cache), args.workers)))
    return 0


def make_copies(single: Path, root: Path, copies: int) -> Path:
    """``root/copy-NNN/`` for NNN < copies, each a folder of hard links to ``single``'s files."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(copies):
        folder = root / f"copy-{n:03d}"
        if folder.exists():
            continue
        folder.mkdir()
        for path in single.iterdir():
            os.link(path, folder / path.name)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--copies", default="1,4,16", help="comma-separated copy counts (default 1,4,16)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="keep corpora, cache and capsules here (default: temp)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "build-memory.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--docs", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-build-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    single = work / "scifact-docs"
    if not single.exists():
        write_corpus(Path(args.data), single)
    cache = work / "embeddings.sqlite"
    started = time.perf_counter()
    rows = []
    for copies in [int(c) for c in args.copies.split(",")]:
        docs = make_copies(single, work / f"corpus-x{copies}", copies)
        out = work / f"x{copies}.capsule"
        out.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, __file__, "--child", "--docs", str(docs), "--out", str(out),
                               "--cache", str(cache), "--workers", str(args.workers)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return 1
        row = {"copies": copies, **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        rows.append(row)
        out.unlink()

    measured = [r for r in rows if r["chunks_embedded"] == 0] or rows
    fit = None
    if len(measured) >= 2:
        import numpy as np

        x = np.array([r["chunks"] for r in measured], dtype=float)
        fit = {"points": "builds whose every chunk came from the embedding cache"}
        for key in ("coordinator_peak_rss_mib", "coordinator_peak_anon_mib", "coordinator_peak_file_mib"):
            if all(key in r for r in measured):
                y = np.array([r[key] for r in measured], dtype=float)
                slope, intercept = np.polyfit(x, y, 1)
                fit[key] = {"mib_per_1000_chunks": round(1000 * slope, 2), "intercept_mib": round(intercept, 1),
                            "projected_mib_at_1m_chunks": round(intercept + slope * 1_000_000)}
    report = {
        "benchmark": "build_memory", "machine": machine(),
        "git": os.popen(f"git -C {ROOT} rev-parse HEAD").read().strip(), "workers": args.workers,
        "rows": rows, "linear_fit": fit, "wall_s": round(time.perf_counter() - started, 1),
        "command": "python bench/bench_build_memory.py " + " ".join(a for a in sys.argv[1:]),
        "note": "a row with chunks_embedded > 0 embedded them for real (an empty cache: the first row of a "
                "fresh --workdir) and is left out of the fit; the others read every embedding from the cache. "
                "Peak RSS by ru_maxrss of a fresh process per row; RssAnon/RssFile peaks sampled every 0.1 s.",
    }
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
