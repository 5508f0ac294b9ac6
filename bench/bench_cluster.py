"""Benchmark: chunk embedding on a Dask distributed cluster against the normal local build.

Builds one capsule from a BEIR SciFact subset (``bench_hybrid.write_corpus``), with no embedding
cache, in three configurations, interleaved over ``--repeats`` rounds (the order rotates each
round so that drift on a shared machine spreads over all of them):

* ``local2``: ``build_capsule(n_threads=2)``, the normal path (2 spawned local worker processes);
* ``cluster1`` / ``cluster2``: ``build_capsule(cluster="tcp://...")`` against a real
  ``distributed.LocalCluster(n_workers=W, threads_per_worker=1, processes=True)`` that this script
  starts fresh for each build (timed apart: ``cluster_start_s``), so that its workers are as cold
  as the local pool's (they load the model inside the build, on their first task);
* ``cluster1_notrim`` / ``cluster2_notrim``: the same, but with ``MALLOC_TRIM_THRESHOLD_`` left out
  of the environment that Dask's nanny gives its workers (``distributed.nanny.pre-spawn-environ``
  sets it to 65536 by default, and glibc then trims the heap so often that batch-1 embedding runs
  about 40% slower in a Dask worker than in a plain process; bench/CLUSTER.md);
* with ``--warm``, ``cluster2_warm``: a second build on the same (default) 2-worker cluster
  (workers already hold the model: a publisher's standing cluster).

Every build runs in a fresh child process (the coordinator), so that ``ru_maxrss`` is that build's
own peak; the coordinator samples its local children's RSS (the embedding pool) every 0.1 s; Dask
workers report their ``ru_maxrss`` and current RSS through ``client.run``. All builds use the same fixed keys, seed and issue time (as
``tests/conftest.py``), so their files must be byte-identical; each file's SHA-256 is compared with
the first local build's. The scheduler's task stream gives the workers' compute seconds, from which
the per-chunk embedding cost of one worker and an Amdahl projection follow.

Usage::

    nice -n 10 python bench/bench_cluster.py [--data ../shared/data/scifact] [--max-docs 1100] \\
        [--repeats 2] [--warm] [--out bench/results/cluster.json]

Not a test; the machine is shared and noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: The fixed clock of tests/conftest.py (``BUILD_ISSUED_AT`` / ``BUILD_EXPIRES_AT``).
ISSUED_AT = datetime(2026, 11, 1, tzinfo=timezone.utc)
EXPIRES_AT = datetime(2036, 11, 1, tzinfo=timezone.utc)
SEED = b"bench-cluster"
WORKERS_LOCAL = 2
PROJECT_WORKERS = (4, 8, 16, 32)
#: This process's environment at start. A Nanny that LocalCluster runs in this process does
#: ``os.environ.update(distributed.nanny.pre-spawn-environ)`` here before spawning its worker
#: (distributed/nanny.py), which would leak MALLOC_TRIM_THRESHOLD_=65536 and OMP_NUM_THREADS=1 into
#: every later coordinator and its local pool; each cluster start restores it, and every child
#: gets it explicitly.
ENV0 = dict(os.environ)


def _restore_environ() -> None:
    os.environ.clear()
    os.environ.update(ENV0)


# ---------------------------------------------------------------------------------------------
# the coordinator: one build in a child process


def _keys():
    """The fixed publisher and device keys of tests/conftest.py ``_write_keys``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    seed = bytes(range(32))
    return Ed25519PrivateKey.from_private_bytes(seed), X25519PrivateKey.from_private_bytes(bytes(reversed(seed)))


def child_build(spec: dict) -> dict:
    """Build once as ``spec`` says; return the figures (this process is the coordinator)."""
    from firmware_tools.build import build_capsule

    publisher, device = _keys()
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total) -> None:
        # report("embed", n, n) is the last call of the read_chunk_embed stage
        if stage == "embed" and total is not None and done == total and "stage1_cpu" not in marks:
            marks["stage1_cpu"] = time.process_time()

    import threading

    import psutil

    # local children (the embedding pool, the QR pools), sampled: RUSAGE_CHILDREN is no measure of
    # them, since Linux charges a fork+exec child the pre-exec image, i.e. this process's size
    kids: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not done.wait(0.1):
            try:
                for child in me.children(recursive=True):
                    try:
                        kids[child.pid] = max(kids.get(child.pid, 0.0), child.memory_info().rss / 2**20)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    result = build_capsule([Path(spec["docs"])], Path(spec["out"]), signing_key=publisher,
                           recipients=[device.public_key()], issued_at=ISSUED_AT, expires_at=EXPIRES_AT,
                           version=1, seed=SEED, n_threads=spec["n_threads"], embedding_cache=None,
                           name="scifact", cluster=spec.get("cluster"), progress=progress)
    wall = time.perf_counter() - t0
    cpu1 = time.process_time()
    done.set()
    sampler.join()
    data = Path(spec["out"]).read_bytes()
    return {
        "wall_s": wall, "n_chunks": result.n_chunks, "n_embedded": result.n_embedded,
        "stage_s": dict(result.stage_s), "file_bytes": result.file_bytes,
        "sha256": hashlib.sha256(data).hexdigest(),
        "coordinator_cpu_s": cpu1 - cpu0,
        "coordinator_malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "coordinator_stage1_cpu_s": marks.get("stage1_cpu", cpu1) - cpu0,
        "coordinator_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # every local child process, its RSS sampled every 0.1 s (largest first)
        "local_children_sampled_peak_rss_mib": sorted((round(v, 1) for v in kids.values()), reverse=True),
    }


def run_child(spec: dict, work: Path) -> dict:
    spec_path = work / f"spec-{time.monotonic_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path), str(out_path)],
                          capture_output=True, text=True, env=ENV0)
    if proc.returncode != 0:
        raise RuntimeError(f"build {spec} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    Path(spec["out"]).unlink()
    return json.loads(out_path.read_text())


# ---------------------------------------------------------------------------------------------
# the workers


def _worker_memory() -> dict:
    """Run inside a Dask worker process (``client.run``)."""
    import resource as _resource

    import psutil

    import os as _os

    return {"peak_rss_mib": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_mib": psutil.Process().memory_info().rss / 2**20,
            "malloc_trim_threshold": _os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def cluster_build(n_workers: int, spec: dict, work: Path, *, warm_again: bool = False,
                  trim: bool = True) -> list[dict]:
    """Start a LocalCluster of ``n_workers``, build on it (twice with ``warm_again``), stop it;
    ``trim=False``: without Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` in the workers' environment."""
    import dask

    overrides = {} if trim else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(overrides):
        return _cluster_build(n_workers, spec, work, warm_again=warm_again, suffix="" if trim else "_notrim")


def _cluster_build(n_workers: int, spec: dict, work: Path, *, warm_again: bool, suffix: str) -> list[dict]:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    client.wait_for_workers(n_workers)
    start_s = time.perf_counter() - t0
    _restore_environ()
    client.get_task_stream()  # starts the scheduler's task-stream recording
    out = []
    try:
        for attempt in range(2 if warm_again else 1):
            t_start = time.time()
            row = run_child(dict(spec, cluster=cluster.scheduler_address), work)
            stream = client.get_task_stream(start=t_start)
            compute = [ss["stop"] - ss["start"] for rec in stream for ss in rec.get("startstops", ())
                       if ss.get("action") == "compute"]
            transfer = [ss["stop"] - ss["start"] for rec in stream for ss in rec.get("startstops", ())
                        if ss.get("action") in ("transfer", "deserialize")]
            mem = client.run(_worker_memory)
            row.update({
                "config": f"cluster{n_workers}{suffix}" + ("_warm" if attempt else ""), "workers": n_workers,
                "cluster_start_s": start_s if attempt == 0 else 0.0,
                "worker_tasks": len(compute), "worker_compute_s": sum(compute),
                "worker_transfer_s": sum(transfer),
                "worker_peak_rss_mib": sorted(round(m["peak_rss_mib"], 1) for m in mem.values()),
                "worker_rss_mib": sorted(round(m["rss_mib"], 1) for m in mem.values()),
                "worker_malloc_trim_threshold": sorted({str(m["malloc_trim_threshold"]) for m in mem.values()}),
            })
            out.append(row)
    finally:
        t1 = time.perf_counter()
        client.close()
        cluster.close()
        for row in out:
            row["cluster_stop_s"] = time.perf_counter() - t1
    return out


# ---------------------------------------------------------------------------------------------
# the benchmark


def pytest_running() -> bool:
    found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True).stdout.split()
    return any(int(p) != os.getpid() for p in found)


def wait_for_pytest(limit_s: float = 300, poll_s: float = 30) -> float:
    """Wait while another test run is going on (``pgrep -f pytest``), up to ``limit_s``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s and pytest_running():
        print(f"pytest running: waiting {poll_s:.0f} s", file=sys.stderr, flush=True)
        time.sleep(poll_s)
    return time.perf_counter() - t0


def summary(rows: list[dict]) -> dict:
    walls = [r["wall_s"] for r in rows]
    n = rows[0]["n_chunks"]
    stages = {k: [r["stage_s"][k] for r in rows] for k in rows[0]["stage_s"]}
    return {
        "runs": len(rows),
        "wall_s": [round(w, 2) for w in walls],
        "wall_s_min": round(min(walls), 2), "wall_s_median": round(statistics.median(walls), 2),
        "chunks_per_s_best": round(n / min(walls), 1), "chunks_per_s_median": round(n / statistics.median(walls), 1),
        "stage_s_median": {k: round(statistics.median(v), 2) for k, v in stages.items()},
        "stage_s_min": {k: round(min(v), 2) for k, v in stages.items()},
        "embed_stage_chunks_per_s_median": round(n / statistics.median(stages["read_chunk_embed"]), 1),
        "after_embedding_s_median": round(statistics.median(
            [sum(v for k, v in r["stage_s"].items() if k != "read_chunk_embed") for r in rows]), 2),
        "coordinator_cpu_s_median": round(statistics.median(r["coordinator_cpu_s"] for r in rows), 2),
        "coordinator_stage1_cpu_s_median": round(statistics.median(r["coordinator_stage1_cpu_s"] for r in rows), 2),
        "coordinator_peak_rss_mib_max": round(max(r["coordinator_peak_rss_mib"] for r in rows), 1),
        "local_child_sampled_peak_rss_mib_max": max((max(r["local_children_sampled_peak_rss_mib"] or [0.0])
                                                     for r in rows)),
        "local_children_per_build": max(len(r["local_children_sampled_peak_rss_mib"]) for r in rows),
        "byte_identical_to_local": all(r["byte_identical"] for r in rows),
        "runs_with_pytest_running": sum(r["pytest_running_before_or_after"] for r in rows),
        **({"cluster_start_s": [round(r["cluster_start_s"], 2) for r in rows if r["cluster_start_s"]],
            "worker_peak_rss_mib_max": max(max(r["worker_peak_rss_mib"]) for r in rows),
            "worker_compute_s_median": round(statistics.median(r["worker_compute_s"] for r in rows), 2),
            "worker_tasks": rows[0]["worker_tasks"]} if "worker_tasks" in rows[0] else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--max-docs", type=int, default=900,
                        help="first N documents (900: 2,059 chunks; 2 repeats run in about 4 minutes on 2 vCPUs)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every configuration")
    parser.add_argument("--wait-each", type=float, default=30,
                        help="seconds to wait, before each build, for a pytest run to end")
    parser.add_argument("--warm", action="store_true", help="also a second build on a warm 2-worker cluster")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cluster.json"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(Path(args.child[0]).read_text())
        Path(args.child[1]).write_text(json.dumps(child_build(spec)))
        return 0

    logging.basicConfig(level=logging.WARNING)
    import dask
    import distributed

    logging.getLogger("distributed").setLevel(logging.ERROR)  # INFO chatter, close-time CommClosedError

    from bench_hybrid import write_corpus
    from bench_scifact import machine

    waited = wait_for_pytest()
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    docs = work / "docs"
    n_docs = write_corpus(Path(args.data), docs, args.max_docs)
    base = {"docs": str(docs), "out": str(work / "out.capsule"), "n_threads": WORKERS_LOCAL}

    # warm-up, not reported: page cache for the model and the corpus, Python bytecode
    small = work / "small"
    write_corpus(Path(args.data), small, 40)
    run_child(dict(base, docs=str(small)), work)

    configs = ["local2", "cluster1", "cluster2", "cluster1_notrim", "cluster2_notrim"]
    rows: list[dict] = []
    for r in range(args.repeats):
        k = (2 * r) % len(configs)
        order = configs[k:] + configs[:k]
        for config in order:
            waited += wait_for_pytest(args.wait_each, 15)  # the shared machine: builds in quiet spells
            busy_before = pytest_running()
            if config == "local2":
                new = [dict(run_child(base, work), config="local2", workers=WORKERS_LOCAL)]
            else:
                w = int(config[len("cluster")])
                new = cluster_build(w, base, work, trim=not config.endswith("_notrim"),
                                    warm_again=(config == "cluster2" and args.warm))
            busy = busy_before or pytest_running()
            for row in new:
                row["round"] = r
                row["pytest_running_before_or_after"] = busy
                print(f"round {r} {row['config']}: {row['n_chunks']} chunks in {row['wall_s']:.1f} s "
                      f"({row['n_chunks'] / row['wall_s']:.1f} chunks/s)", file=sys.stderr, flush=True)
            rows.extend(new)

    reference = next(r["sha256"] for r in rows if r["config"] == "local2")
    for row in rows:
        row["byte_identical"] = row["sha256"] == reference
    n = rows[0]["n_chunks"]
    assert all(r["n_chunks"] == n for r in rows)
    # figures over the runs during which no pytest run was seen (before or after the build), where
    # a configuration has any; the machine is shared with other engineers' test runs
    by_all = {c: [r for r in rows if r["config"] == c] for c in dict.fromkeys(r["config"] for r in rows)}
    by = {c: [r for r in v if not r["pytest_running_before_or_after"]] or v for c, v in by_all.items()}
    configs_out = {c: {"stats_over": "runs without pytest" if by[c] is not v else "all runs (none without pytest)",
                       **summary(by[c]),
                       "all_runs_wall_s": [round(r["wall_s"], 2) for r in v],
                       "all_runs_chunks_per_s_median": round(n / statistics.median(r["wall_s"] for r in v), 1)}
                   for c, v in by_all.items()}

    def overhead(config: str) -> dict:
        """Extra wall time of ``config`` over local2: median / min, and the median of per-round pairs."""
        loc = {r["round"]: r["wall_s"] for r in by["local2"]}
        pairs = [r["wall_s"] / loc[r["round"]] - 1 for r in by[config] if r["round"] in loc]
        return {"median_vs_median": round(configs_out[config]["wall_s_median"] / configs_out["local2"]["wall_s_median"] - 1, 3),
                "min_vs_min": round(configs_out[config]["wall_s_min"] / configs_out["local2"]["wall_s_min"] - 1, 3),
                "per_round": [round(p, 3) for p in pairs],
                "embed_stage_median_vs_median": round(
                    configs_out[config]["stage_s_median"]["read_chunk_embed"]
                    / configs_out["local2"]["stage_s_median"]["read_chunk_embed"] - 1, 3)}

    overheads = {c: overhead(c) for c in by if c.startswith("cluster2")}  # same worker count as local2

    # projection. e: seconds of worker compute per chunk on one worker (task stream of the 1-worker
    # cluster, which includes the model load on the first task); s: the coordinator's serial
    # seconds per chunk (every stage after read_chunk_embed, median over the builds kept: the same work
    # whatever embeds); c: the coordinator's own CPU per chunk while it reads, chunks, BM25-indexes
    # and feeds the workers in read_chunk_embed (a floor on that stage however many workers).
    after = [sum(v for k, v in r["stage_s"].items() if k != "read_chunk_embed") for cfg in by for r in by[cfg]]
    s = statistics.median(after) / n
    c = statistics.median(r["coordinator_stage1_cpu_s"] for cfg in ("cluster2", "cluster2_notrim")
                          for r in by[cfg]) / n

    def project(suffix: str) -> dict:
        e = statistics.median(r["worker_compute_s"] for r in by[f"cluster1{suffix}"]) / n
        e_stage = statistics.median(r["stage_s"]["read_chunk_embed"] for r in by[f"cluster1{suffix}"]) / n
        return {
            "embed_s_per_chunk_one_worker": round(e, 5),
            "embed_s_per_chunk_one_worker_from_stage_time": round(e_stage, 5),
            "check_against_measured": {f"cluster{w}{suffix}": {
                "projected": round(1 / (s + e / w), 1),
                "measured_median": configs_out[f"cluster{w}{suffix}"]["chunks_per_s_median"]} for w in (1, 2)},
            "amdahl_chunks_per_s": {str(w): round(1 / (s + e / w), 1) for w in PROJECT_WORKERS},
            "with_coordinator_floor_chunks_per_s": {str(w): round(1 / (s + max(e / w, c)), 1) for w in PROJECT_WORKERS},
        }

    projection = {
        "coordinator_serial_s_per_chunk": round(s, 6),
        "coordinator_stage1_cpu_s_per_chunk": round(c, 6),
        "model": "chunks/s(N) = 1 / (s + e/N) (Amdahl: embedding parallel over N workers, every stage after "
                 "it serial on the coordinator); 'with_coordinator_floor' also bounds the embedding stage "
                 "by the coordinator's own CPU in it: 1 / (s + max(e/N, c)). Network, scheduler and "
                 "stragglers are ignored: an upper bound",
        "dask_default_workers": project(""),
        "workers_without_malloc_trim_threshold": project("_notrim"),
        "amdahl_limit_chunks_per_s": round(1 / s, 1),
        "coordinator_serial_s_at_1M_chunks": round(s * 1e6),
        "coordinator_stage1_cpu_s_at_1M_chunks": round(c * 1e6),
        "note_1M": "a linear extrapolation from this %d-chunk build, not a measurement: the index stage "
                   "(Annoy trees, PCA) grows faster than linearly and no 1M build was run here" % n,
    }

    report = {
        "benchmark": "cluster", "machine": machine(), "documents": n_docs, "chunks": n,
        "git": os.popen(f"git -C {ROOT} rev-parse HEAD").read().strip(),
        "git_dirty": bool(os.popen(f"git -C {ROOT} status --porcelain firmware_tools").read().strip()),
        "firmware_tools_diff_sha256": hashlib.sha256(os.popen(f"git -C {ROOT} diff HEAD -- firmware_tools").read()
                                                     .encode()).hexdigest()[:16],
        "versions": {"dask": dask.__version__, "distributed": distributed.__version__},
        "repeats": args.repeats, "nice": os.nice(0), "waited_for_pytest_s": round(waited),
        "n_threads_every_build": WORKERS_LOCAL,
        "configs": configs_out, "overhead_vs_local2": overheads,
        "issue_target_overhead": 0.15,
        "byte_identical_all": all(r["byte_identical"] for r in rows),
        "runs_with_pytest_running": sum(r["pytest_running_before_or_after"] for r in rows),
        "file_bytes": rows[0]["file_bytes"], "sha256": reference,
        "projection": projection,
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "stage_s"}
                 | {"stage_s": {k: round(v, 3) for k, v in r["stage_s"].items()}} for r in rows],
        "total_s": round(time.perf_counter() - t_all),
        "note": "no embedding cache; every build in a fresh coordinator process; each cluster a fresh "
                "LocalCluster (cold workers: the model loads on their first task, as a local pool's "
                "workers load it on start), except cluster2_warm, a second build on the same cluster; "
                "cluster_start_s is outside the build time; every build passes n_threads=2, which on "
                "the cluster path still sizes pack_and_seal's local pool; *_notrim: workers started without "
                "Dask's MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-environ). 2 vCPUs: 2 Dask workers plus the "
                "coordinator share 2 cores, so no cluster configuration here can beat local2",
    }
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
