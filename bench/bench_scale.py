"""Benchmark: memory and latency from 10k to 250k chunks of real English text, and a 1M index.

Not a test. Steps (each writes JSON into WORKDIR; run them in order, or ``all``):

    python bench/bench_scale.py corpus  --workdir W   # Debian doc packages -> W/corpus/*.txt
    python bench/bench_scale.py build   --workdir W   # capsules of >=10k, >=100k, >=250k chunks
    python bench/bench_scale.py query   --workdir W   # fresh query processes: RSS, latency, cold start
    python bench/bench_scale.py index1m --workdir W   # index-only run at 1M items
    python bench/bench_scale.py pressure --workdir W  # 250k installed in 100/160/256 MiB memory cgroups
    python bench/bench_scale.py report  --workdir W   # JSON + markdown table + bench/scale.png

Corpus: Debian bookworm's ``linux-doc-6.1`` (reStructuredText sources), ``python3.11-doc``
(``_sources/*.rst.txt``), ``rust-doc`` (HTML: book, reference, std, alloc, nomicon, ...) and
``openjdk-17-doc`` (HTML javadoc of java.base, java.desktop, java.xml, ...), fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` (nothing installed); HTML is read with the
builder's own reader. Capsules use the builder's defaults except 128-token chunks with a
16-token overlap (about 410 bytes per chunk on this corpus, the size memvid's comparisons use)
and an unencrypted index, so that each capsule can be measured both ways: opened as a file (the
index is copied into memory, as an encrypted one is decrypted into memory; every section is
hashed) and installed in a device store (the index extracted at install and mapped from its own
file; the big sections verified at install, not at each open). The capsules share one embedding cache: the smaller ones are prefixes
of the largest's documents and embed nothing new.

The 1M run has no 1M-chunk corpus behind it (embedding 1M chunks takes about 6 hours on this
machine): it takes the real embeddings in the cache (one per distinct chunk text: 220,488 for the
250k capsule's 250,020 chunks, the javadoc repeats itself), fills 1M rows with them and copies
of them with Gaussian noise (sigma 0.02 per coordinate, renormalised), and builds the same
projected index (PCA 256, Annoy over 64, int8 re-ranking), so its memory and latency are those of
a real 1M index; its recall is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)
TARGETS = (10_000, 100_000, 250_000)
MAX_TOKENS, OVERLAP_TOKENS = 128, 16
PACKAGES = ("linux-doc-6.1", "python3.11-doc", "rust-doc", "openjdk-17-doc")
RUST_BOOKS = ("book", "reference", "std", "alloc", "nomicon", "rust-by-example", "edition-guide", "embedded-book",
              "rustc", "rustdoc", "unstable-book")
JAVA_MODULES = ("java.base", "java.desktop", "java.xml", "java.management", "java.sql", "jdk.compiler", "java.naming",
                "java.logging", "jdk.jfr", "java.net.http", "jdk.jshell", "java.rmi", "java.scripting")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu, "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


# -- corpus -------------------------------------------------------------------------------------


def cmd_corpus(work: Path) -> None:
    """Download the doc packages (apt-get download) and write one .txt per document."""
    import gzip

    from firmware_tools.documents import read_document

    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob("*.deb")):
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
    unpacked = work / "root"
    if not unpacked.exists():
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    doc = unpacked / "usr/share/doc"
    out = work / "corpus"
    n = total = 0

    def emit(group: str, rel: str, text: str) -> None:
        nonlocal n, total
        text = text.strip()
        if len(text) < 200:
            return
        path = out / group / (rel.replace("/", "__") + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        n += 1
        total += len(text.encode("utf-8"))

    for f in sorted((doc / "linux-doc-6.1/Documentation").rglob("*.rst.gz")):
        emit("linux", str(f.relative_to(doc / "linux-doc-6.1/Documentation"))[:-7],
             gzip.decompress(f.read_bytes()).decode("utf-8", "replace"))
    for f in sorted((doc / "python3.11/html/_sources").rglob("*.rst.txt")):
        emit("python", str(f.relative_to(doc / "python3.11/html/_sources"))[:-8], f.read_text("utf-8", "replace"))
    groups = [(doc / "rust-doc/html" / b, f"rust-{b}") for b in RUST_BOOKS]
    groups += [(doc / "openjdk-17-jre-headless/api" / m, m) for m in JAVA_MODULES]
    for base, group in groups:
        for f in sorted(base.rglob("*.html")):
            try:
                emit(group, str(f.relative_to(base))[:-5], read_document(f).text)
            except Exception:  # noqa: BLE001 - a page the HTML reader refuses is left out
                continue
    print(json.dumps({"documents": n, "text_bytes": total}))


# -- build --------------------------------------------------------------------------------------


def _doc_chunk_counts(work: Path) -> list[tuple[str, int]]:
    cache = work / "doc_chunks.json"
    if cache.exists():
        return [tuple(x) for x in json.loads(cache.read_text())]
    from firmware_tools.chunking import TokenizerOffsets
    from firmware_tools.chunking import chunk_documents
    from firmware_tools.documents import iter_documents

    offsets = TokenizerOffsets.from_file(ROOT / "models/all-MiniLM-L6-v2/tokenizer.json")
    docs = list(iter_documents([work / "corpus"]))
    counts = [0] * len(docs)
    for chunk in chunk_documents(docs, token_offsets=offsets, token_offsets_batch=offsets.batch,
                                 max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP_TOKENS):
        counts[chunk.doc_index] += 1
    result = [(doc.name, count) for doc, count in zip(docs, counts)]
    cache.write_text(json.dumps(result))
    return result


def _keys(work: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from firmware_tools.keys import private_key_pem, public_key_pem, write_private_file

    publisher = Ed25519PrivateKey.from_private_bytes(bytes(32))
    device = X25519PrivateKey.from_private_bytes(bytes(31) + b"\x01")
    (work / "publisher.pub").write_bytes(public_key_pem(publisher))
    if not (work / "device.key").exists():
        write_private_file(work / "device.key", private_key_pem(device))
    return publisher, device


def cmd_build(work: Path, targets: list[int], n_workers: int) -> None:
    """Build one capsule per target size, largest first, with a shared embedding cache."""
    from firmware_tools.build import build_capsule

    counts = _doc_chunk_counts(work)
    publisher, device = _keys(work)
    corpus = work / "corpus"
    results = json.loads((work / "build.json").read_text()) if (work / "build.json").exists() else {}
    for target in sorted(targets, reverse=True):
        running, files = 0, []
        for name, count in counts:
            files.append(corpus / name)
            running += count
            if running >= target:
                break
        path = work / f"scale-{target // 1000}k.capsule"
        t = time.perf_counter()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        result = build_capsule(files, path, signing_key=publisher, recipients=[device.public_key()],
                               issued_at=NOW - timedelta(days=1), expires_at=NOW + timedelta(days=365),
                               seed=b"bench-scale", n_threads=n_workers, max_tokens=MAX_TOKENS,
                               overlap_tokens=OVERLAP_TOKENS, encrypt_index=False,
                               embedding_cache=work / "embeddings.sqlite", name=f"scale-{target // 1000}k")
        seconds = time.perf_counter() - t
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        embed_s = result.stage_s["read_chunk_embed"]
        results[str(target)] = {
            "capsule": path.name, "documents": result.n_documents, "chunks": result.n_chunks,
            "frames": result.n_frames, "raw_text_bytes": result.raw_text_bytes, "file_bytes": result.file_bytes,
            "capsule_per_raw_text": round(result.file_bytes / result.raw_text_bytes, 3),
            "section_bytes": result.section_bytes,
            "section_per_raw_text": {k: round(v / result.raw_text_bytes, 4) for k, v in result.section_bytes.items()},
            "build_seconds": round(seconds, 1), "stage_s": {k: round(v, 2) for k, v in result.stage_s.items()},
            "chunks_embedded": result.n_embedded,
            "embedding_chunks_per_s": round(result.n_embedded / embed_s, 1) if result.n_embedded else None,
            "chunks_per_s_after_embedding": round(result.n_chunks / (seconds - embed_s), 1),
            "chunks_per_s_overall": round(result.n_chunks / seconds, 1),
            "workers": n_workers,
            "builder_peak_rss_bytes": usage.ru_maxrss * 1024,
            "worker_peak_rss_bytes": children.ru_maxrss * 1024,
            "cpu_user_s": round(usage.ru_utime - usage0.ru_utime + children.ru_utime, 1),
        }
        (work / "build.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({target: results[str(target)]}), flush=True)


QUERY_PROCESS = r"""
import json, sys, time
t_start = time.perf_counter()
root, capsule_path, publisher, device, mode, store_dir, queries_json = sys.argv[1:8]
sys.path.insert(0, root)
from datetime import datetime, timezone
from pathlib import Path
from edge import open_capsule, load_public_key, load_identity
from edge.budget import read_process_memory

def rollup():
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith(":"):
            out[parts[0][:-1]] = int(parts[1]) * 1024
    return {"rss_bytes": out.get("Rss"), "anon_bytes": out.get("Anonymous"),
            "file_backed_bytes": out.get("Rss", 0) - out.get("Anonymous", 0),
            "private_dirty_bytes": out.get("Private_Dirty")}

queries = json.loads(queries_json)
keys = dict(trusted_keys=[load_public_key(publisher)], identities=[load_identity(device)],
            now=datetime(2026, 11, 22, tzinfo=timezone.utc))
if mode == "store":  # installed: index extracted and mapped from its file, big sections not re-hashed
    from edge.store import Store
    capsule = Store(Path(store_dir)).open(Path(capsule_path).stem, **keys)
else:  # the file as copied: index decrypted (here: copied) into memory, every section hashed
    capsule = open_capsule(capsule_path, **keys)
t_open = time.perf_counter()
capsule.search(queries[0], k=10)
t_first = time.perf_counter()
after_first = rollup()
for q in queries[1:11]:
    capsule.search(q, k=10)
totals, stages = [], {"embed_ms": [], "ann_ms": [], "frame_decode_ms": [], "qr_decode_ms": [], "decrypt_ms": []}
frames = []
for q in queries[11:]:
    capsule.clear_cache()
    t = time.perf_counter()
    capsule.search(q, k=10)
    totals.append((time.perf_counter() - t) * 1e3)
    for key in stages:
        stages[key].append(getattr(capsule.last_timings, key))
    frames.append(capsule.last_timings.n_frames_decoded)
status = read_process_memory().to_json()
print(json.dumps({"open_s": t_open - t_start, "cold_start_to_first_answer_s": t_first - t_start,
                  "memory_after_first_query": after_first, "memory_after_queries": rollup(), "status": status,
                  "plan_total_bytes": capsule.budget.report()["total_reserved_bytes"],
                  "totals_ms": totals, "stages_ms": stages, "frames_per_query": frames}))
"""


def _queries() -> list[str]:
    data = ROOT.parent / "shared" / "data"
    out = []
    for name in ("python-docs", "debian-faq"):
        for line in (data / name / "faq_pairs.jsonl").read_text().splitlines():
            if line.strip():
                out.append(json.loads(line)["question"])
    return out


def _pct(values, q):
    import numpy as np

    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2) if values else None


def _install(work: Path, capsule_path: Path) -> dict:
    """Install the capsule into the benchmark's device store (full verify, index extracted)."""
    from edge import load_identity, load_public_key
    from edge.store import Store

    with Store(work / "store") as store:
        if any(e.name == capsule_path.stem for e in store.list(now=NOW)):
            return {}
        t = time.perf_counter()
        store.install(capsule_path, identities=[load_identity(work / "device.key")],
                      trusted_keys=[load_public_key(work / "publisher.pub")], now=NOW)
        return {"install_s": round(time.perf_counter() - t, 1)}


def _run_fresh(argv: list[str], cgroup_limit_bytes: int | None = None) -> tuple[dict, dict | None]:
    """Drop the page cache, run a query process (optionally in a memory cgroup) and return its
    last stdout line as JSON, with the cgroup's report (``None`` without one)."""
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], capture_output=True)
    cgroup = MemoryCgroup(cgroup_limit_bytes) if cgroup_limit_bytes else None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=cgroup.enter if cgroup else None,
                              env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        report = cgroup.report() if cgroup else None
    finally:
        if cgroup:
            cgroup.remove()
    if proc.returncode != 0:
        raise SystemExit(f"query process exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), report


def _query_argv(work: Path, path: Path, mode: str, queries: list[str]) -> list[str]:
    return [sys.executable, "-c", QUERY_PROCESS, str(ROOT), str(path), str(work / "publisher.pub"),
            str(work / "device.key"), mode, str(work / "store"), json.dumps(queries)]


def _query_summary(raw: dict) -> dict:
    """Percentiles and memory from one QUERY_PROCESS run."""
    return {"cold_start_to_first_answer_s": round(raw["cold_start_to_first_answer_s"], 3),
            "open_s": round(raw["open_s"], 3),
            "query_ms_p50": _pct(raw["totals_ms"], 50), "query_ms_p95": _pct(raw["totals_ms"], 95),
            **{f"{k[:-3]}_ms_p50": _pct(v, 50) for k, v in raw["stages_ms"].items()},
            "frames_per_query_mean": round(statistics.mean(raw["frames_per_query"]), 2),
            "n_queries_timed": len(raw["totals_ms"]),
            "memory": raw["memory_after_queries"], "status": raw["status"],
            "plan_total_bytes": raw["plan_total_bytes"]}


def _index_summary(raw: dict) -> dict:
    """Percentiles and memory from one INDEX_PROCESS run (embedding + ANN, no frames)."""
    total = [e + a for e, a in zip(raw["embed_ms"], raw["ann_ms"])]
    return {"cold_start_to_first_answer_s": round(raw["cold_start_to_first_answer_s"], 3),
            "embed_ms_p50": _pct(raw["embed_ms"], 50), "ann_ms_p50": _pct(raw["ann_ms"], 50),
            "ann_ms_p95": _pct(raw["ann_ms"], 95), "query_ms_p50_without_frames": _pct(total, 50),
            "query_ms_p95_without_frames": _pct(total, 95), "n_queries_timed": len(total),
            "memory": raw["memory"], "status": raw["status"]}


def cmd_query(work: Path, targets: list[int]) -> None:
    """Fresh query processes per capsule and index mode: memory, latency, cold start."""
    queries = _queries()
    results = json.loads((work / "query.json").read_text()) if (work / "query.json").exists() else {}
    for target in sorted(targets):
        path = work / f"scale-{target // 1000}k.capsule"
        installed = _install(work, path)
        for mode in ("memory", "store"):
            raw, _ = _run_fresh(_query_argv(work, path, mode, queries[:211]))
            results[f"{target}/{mode}"] = {"capsule": path.name, "index_mode": mode,
                                           **(installed if mode == "store" else {}), **_query_summary(raw)}
            (work / "query.json").write_text(json.dumps(results, indent=2))
            print(json.dumps({f"{target}/{mode}": results[f"{target}/{mode}"]}), flush=True)


INDEX_PROCESS = r"""
import json, sys, time, mmap
t_start = time.perf_counter()
root, folder, queries_json = sys.argv[1:4]
sys.path.insert(0, root)
from pathlib import Path
import numpy as np
import edge
from edge.budget import MemoryBudget, read_process_memory
from edge.embedder import QueryEmbedder, find_model_dir
from edge.index import Projection, VectorIndex
from edge.manifest import IndexInfo, ProjectionInfo
folder = Path(folder)
meta = json.loads((folder / "meta.json").read_text())
info = IndexInfo(dim=meta["ann_dim"], metric="angular", n_items=meta["n_items"], n_trees=meta["n_trees"], seed=1,
                 search_k=meta["search_k"], n_candidates=200, projection=ProjectionInfo("pca", 384, meta["refine_dim"]),
                 encryption="none")
projection = Projection.from_bytes((folder / "projection.bin").read_bytes(), info=info)
handle = open(folder / "vecs.int8", "rb")
vecs = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
index = VectorIndex.from_segments([], n_bytes=0, info=info, budget=MemoryBudget(None), projection=projection,
                                  vecs_view=memoryview(vecs), index_path=folder / "index.annoy")
embedder = QueryEmbedder.open(find_model_dir(), n_threads=1)
queries = json.loads(queries_json)
index.search(embedder.embed([queries[0]])[0], 10)
t_first = time.perf_counter()
for q in queries[1:11]:
    index.search(embedder.embed([q])[0], 10)
embed_ms, ann_ms = [], []
for q in queries[11:]:
    t0 = time.perf_counter(); v = embedder.embed([q])[0]; t1 = time.perf_counter()
    index.search(v, 10); t2 = time.perf_counter()
    embed_ms.append((t1 - t0) * 1e3); ann_ms.append((t2 - t1) * 1e3)
roll = {}
for line in open("/proc/self/smaps_rollup"):
    parts = line.split()
    if len(parts) >= 3 and parts[0].endswith(":"):
        roll[parts[0][:-1]] = int(parts[1]) * 1024
print(json.dumps({"cold_start_to_first_answer_s": t_first - t_start, "embed_ms": embed_ms, "ann_ms": ann_ms,
                  "memory": {"rss_bytes": roll.get("Rss"), "anon_bytes": roll.get("Anonymous"),
                             "file_backed_bytes": roll.get("Rss", 0) - roll.get("Anonymous", 0)},
                  "status": read_process_memory().to_json()}))
"""


def cmd_index1m(work: Path, n_items: int = 1_000_000, sigma: float = 0.02) -> None:
    """Build and query a 1M-item projected index from the 250k real embeddings plus noise."""
    import sqlite3

    import numpy as np

    from firmware_tools.index_builder import build_index

    folder = work / "index1m"
    folder.mkdir(exist_ok=True)
    if not (folder / "meta.json").exists():
        db = sqlite3.connect(work / "embeddings.sqlite")
        rows = db.execute("SELECT vector FROM vectors ORDER BY rowid LIMIT 250000").fetchall()
        real = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), 384)
        rng = np.random.default_rng(1)
        vectors = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32,
                                            shape=(n_items, 384))
        for start in range(0, n_items, len(real)):
            block = real[: min(len(real), n_items - start)]
            if start:
                block = block + rng.normal(0, sigma, block.shape).astype(np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
            vectors[start:start + len(block)] = block
        vectors.flush()
        t = time.perf_counter()
        built = build_index(vectors, n_trees=8, seed=1, work_dir=folder, ann_dim=64, refine_dim=256)
        build_s = time.perf_counter() - t
        (folder / "projection.bin").write_bytes(built.projection_bytes)
        os.replace(built.index_path, folder / "index.annoy")
        os.replace(built.vecs_path, folder / "vecs.int8")
        (folder / "vectors.npy").unlink()
        (folder / "meta.json").write_text(json.dumps({"n_items": n_items, "ann_dim": 64, "refine_dim": 256,
                                                      "n_trees": 8, "search_k": 8000, "real_vectors": len(real),
                                                      "sigma": sigma, "build_s": round(build_s, 1)}))
    raw, _ = _run_fresh([sys.executable, "-c", INDEX_PROCESS, str(ROOT), str(folder), json.dumps(_queries()[:211])])
    meta = json.loads((folder / "meta.json").read_text())
    result = {**meta, "index_bytes": (folder / "index.annoy").stat().st_size,
              "vecs_bytes": (folder / "vecs.int8").stat().st_size, **_index_summary(raw)}
    (work / "index1m.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)


class MemoryCgroup:
    """A memory cgroup (v2 ``memory.max``, else v1 ``memory.limit_in_bytes``) for one child process.

    The kernel charges a page to the cgroup of the process that first touches it, anonymous and
    page cache alike, and reclaims the cgroup's clean file pages when it reaches the limit: so the
    child's whole RSS, file-backed pages included, stays under ``limit_bytes``. Needs root.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            self.version, base = 2, Path("/sys/fs/cgroup")
        else:
            self.version, base = 1, Path("/sys/fs/cgroup/memory")
        self.path = base / f"edge-bench-{os.getpid()}-{limit_bytes}"
        self.path.mkdir()
        limit_file = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        (self.path / limit_file).write_text(str(limit_bytes))
        if self.version == 2 and (self.path / "memory.swap.max").exists():
            (self.path / "memory.swap.max").write_text("0")

    def enter(self) -> None:
        """preexec_fn: move the child into the cgroup before it runs anything."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def report(self) -> dict:
        def read(name: str) -> str | None:
            f = self.path / name
            return f.read_text().strip() if f.exists() else None

        peak = read("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")
        events = read("memory.events") if self.version == 2 else None
        return {"cgroup_version": self.version, "limit_bytes": self.limit_bytes,
                "peak_charged_bytes": int(peak) if peak else None,
                "limit_hits": (int(read("memory.failcnt")) if self.version == 1 else
                               int(dict(line.split() for line in events.splitlines())["max"]) if events else None)}

    def remove(self) -> None:
        self.path.rmdir()


def cmd_pressure(work: Path, limits_mib: list[int], with_1m: bool = False) -> None:
    """The 250k installed capsule and the 1M index again, each process capped at each of ``limits_mib``.

    Shows what the "file-backed pages are evictable" argument costs: RSS stays under the cap
    (the kernel drops clean index and library pages and reads them back on demand) and latency
    pays for the re-reads. Storage here is a virtio disk whose host caches it, so a Pi's SD card
    would pay more per re-read. The 1M index under a cap (``with_1m``) is slow to measure: at
    100 MiB it took about 6,000 major faults a minute and had not finished 211 queries in 7 minutes.
    """
    everything = json.loads((work / "pressure.json").read_text()) if (work / "pressure.json").exists() else {}
    path = work / "scale-250k.capsule"
    for limit_mib in limits_mib:
        done, limit = everything.setdefault(str(limit_mib), {}), limit_mib * 2**20
        if "250000/store" not in done:
            raw, cgroup = _run_fresh(_query_argv(work, path, "store", _queries()[:211]), limit)
            done["250000/store"] = {"capsule": path.name, "index_mode": "store", "cgroup": cgroup,
                                    **_query_summary(raw)}
            print(json.dumps(done["250000/store"]), flush=True)
            (work / "pressure.json").write_text(json.dumps(everything, indent=2))
        if with_1m and "1000000/index-only" not in done:
            # 1 + 10 warm-up + 20 timed queries: under a tight cap each one faults in thousands of pages
            raw, cgroup = _run_fresh([sys.executable, "-c", INDEX_PROCESS, str(ROOT), str(work / "index1m"),
                                      json.dumps(_queries()[:31])], limit)
            done["1000000/index-only"] = {"cgroup": cgroup, **_index_summary(raw)}
            print(json.dumps(done["1000000/index-only"]), flush=True)
            (work / "pressure.json").write_text(json.dumps(everything, indent=2))


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def cmd_report(work: Path, out_dir: Path = ROOT / "bench") -> None:
    """Write bench/results/scale.json, the markdown table bench/SCALE_TABLE.md and bench/scale.png."""
    build = json.loads((work / "build.json").read_text())
    query = json.loads((work / "query.json").read_text())
    index1m = json.loads((work / "index1m.json").read_text()) if (work / "index1m.json").exists() else None
    pressure = json.loads((work / "pressure.json").read_text()) if (work / "pressure.json").exists() else None
    result = {"benchmark": "edge capsules at scale", "machine": machine(), "build": build, "query": query,
              "index_1m": index1m, "under_memory_cgroup": pressure}
    (out_dir / "results").mkdir(exist_ok=True)
    (out_dir / "results" / "scale.json").write_text(json.dumps(result, indent=2))
    lines = ["| chunks | capsule ÷ text | index mode | cold start s | query p50 / p95 ms | frames/query | "
             "RSS MiB | anon MiB | file-backed MiB | VmData MiB | plan MiB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(query, key=lambda k: (int(k.split("/")[0]), k.split("/")[1])):
        target, mode = key.split("/")
        q, b = query[key], build[target]
        lines.append(f"| {b['chunks']:,} | {b['capsule_per_raw_text']} | {'capsule file: index in memory' if mode == 'memory' else 'installed: index mapped from file'} "
                     f"| {q['cold_start_to_first_answer_s']} | {q['query_ms_p50']} / {q['query_ms_p95']} "
                     f"| {q['frames_per_query_mean']} | {_mib(q['memory']['rss_bytes'])} | {_mib(q['memory']['anon_bytes'])} "
                     f"| {_mib(q['memory']['file_backed_bytes'])} | {_mib(q['status']['data_bytes'])} "
                     f"| {_mib(q['plan_total_bytes'])} |")
    if index1m:
        m = index1m["memory"]
        lines.append(f"| {index1m['n_items']:,} (index only) | - | mapped from file | {index1m['cold_start_to_first_answer_s']} "
                     f"| {index1m['query_ms_p50_without_frames']} / {index1m['query_ms_p95_without_frames']} (no frames) "
                     f"| - | {_mib(m['rss_bytes'])} | {_mib(m['anon_bytes'])} | {_mib(m['file_backed_bytes'])} "
                     f"| {_mib(index1m['status']['data_bytes'])} | - |")
    if pressure:
        lines += ["", "Each process again, inside a memory cgroup that caps all of it (anonymous and page cache):", "",
                  "| run | cgroup limit MiB | cold start s | query p50 / p95 ms | RSS MiB | anon MiB | file-backed MiB | peak charged MiB | limit hits |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, r in ((f"{k}/{run}", v) for k, runs in sorted(pressure.items(), key=lambda kv: int(kv[0]))
                       for run, v in runs.items()):
            p50 = r.get("query_ms_p50", r.get("query_ms_p50_without_frames"))
            p95 = r.get("query_ms_p95", r.get("query_ms_p95_without_frames"))
            label = "250k capsule, installed" if "/250000" in key else "1M index only (no frames)"
            lines.append(f"| {label} | {r['cgroup']['limit_bytes'] // 2**20} | {r['cold_start_to_first_answer_s']} | {p50} / {p95} | {_mib(r['memory']['rss_bytes'])} "
                         f"| {_mib(r['memory']['anon_bytes'])} | {_mib(r['memory']['file_backed_bytes'])} "
                         f"| {_mib(r['cgroup']['peak_charged_bytes'])} | {r['cgroup']['limit_hits']} |")
    (out_dir / "SCALE_TABLE.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("memory", "-o"), ("store", "--s")):
        keys = sorted((k for k in query if k.endswith("/" + mode)), key=lambda k: int(k.split("/")[0]))
        xs = [build[k.split("/")[0]]["chunks"] for k in keys]
        label = "capsule file, index in memory" if mode == "memory" else "installed, index mapped from file"
        ax_mem.plot(xs, [query[k]["memory"]["anon_bytes"] / 2**20 for k in keys], style, label=f"anonymous, {label}")
        ax_mem.plot(xs, [query[k]["memory"]["rss_bytes"] / 2**20 for k in keys], style, alpha=0.5,
                    label=f"total RSS, {label}")
        ax_lat.plot(xs, [query[k]["query_ms_p50"] for k in keys], style, label=f"p50, {label}")
        ax_lat.plot(xs, [query[k]["query_ms_p95"] for k in keys], style, alpha=0.5, label=f"p95, {label}")
    if index1m:
        ax_mem.plot([index1m["n_items"]], [index1m["memory"]["anon_bytes"] / 2**20], "k^", label="anonymous, 1M index only")
        ax_mem.plot([index1m["n_items"]], [index1m["memory"]["rss_bytes"] / 2**20], "kv", label="total RSS, 1M index only")
        ax_lat.plot([index1m["n_items"]], [index1m["query_ms_p50_without_frames"]], "k^", label="p50, 1M index, no frames")
    for ax, title, unit in ((ax_mem, "query process memory", "MiB"), (ax_lat, "query latency, k=10, 1 thread", "ms")):
        ax.set_xscale("log")
        ax.set_xlabel("chunks in capsule")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Edge Capsules at scale ({machine()['cpu']}, {machine()['nproc']} vCPUs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "scale.png", dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("corpus", "build", "query", "index1m", "pressure", "report", "all"))
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/edge-scale"))
    parser.add_argument("--targets", type=int, nargs="+", default=list(TARGETS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limits-mib", type=int, nargs="+", default=[100, 160, 256],
                        help="memory cgroup limits for the pressure step (MiB)")
    parser.add_argument("--pressure-1m", action="store_true",
                        help="pressure step: also the 1M index (slow: minutes per query at 100 MiB)")
    args = parser.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    steps = ("corpus", "build", "query", "index1m", "pressure", "report") if args.step == "all" else (args.step,)
    for step in steps:
        if step == "corpus":
            cmd_corpus(work)
        elif step == "build":
            cmd_build(work, args.targets, args.workers)
        elif step == "query":
            cmd_query(work, args.targets)
        elif step == "index1m":
            cmd_index1m(work)
        elif step == "pressure":
            cmd_pressure(work, args.limits_mib, args.pressure_1m)
        else:
            cmd_report(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
