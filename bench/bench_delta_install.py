"""Benchmark: installing a delta on a device against installing the full capsule of the same version.

Builds, from BEIR SciFact's abstracts (``bench_hybrid.write_corpus``), a base capsule v1, then
changes ``--fraction`` of the documents (one sentence appended to each, seeded choice) and builds
both the delta v2 over v1 and the full capsule v2 of the same documents. Then, in fresh device
stores (``edge.Store``), times ``Store.install``:

- ``full_over_v1``: the full v2 installed over v1 (what a device does without deltas);
- ``delta_over_v1``: the delta installed over v1 (verifies the delta in full, opens v1 as the
  store object it is, hard-links it into the new object);
- ``full_fresh``: v1 into an empty store (a first install, for scale).

Each is repeated ``--repeats`` times, interleaved, in one run; the figure is the median and the
ratio delta/full (issue 13's target: "applying a delta takes no longer than installing the full
capsule", ratio <= 1). Prints one JSON object and writes it to ``--out``.

Usage::

    python bench/bench_delta_install.py [--data ../shared/data/scifact] [--max-docs 4300] \\
        [--fraction 0.01] [--repeats 3] [--out bench/results/delta-install.json]

Not a test; the machine is shared and noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--max-docs", type=int, default=4300, help="first N documents (4,300: about 10k chunks)")
    parser.add_argument("--fraction", type=float, default=0.01, help="share of documents changed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "delta-install.json"))
    args = parser.parse_args()

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge import Store
    from firmware_tools.build import build_capsule
    from firmware_tools.delta import read_base

    work = Path(tempfile.mkdtemp(prefix="bench-delta-install-"))
    try:
        docs = work / "docs"
        n_docs = write_corpus(Path(args.data), docs, args.max_docs)
        publisher, device = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        issued = datetime(2026, 12, 1, tzinfo=timezone.utc)
        common = dict(signing_key=publisher, recipients=[device.public_key()], issued_at=issued,
                      expires_at=issued + timedelta(days=365), seed=b"bench-delta-install", n_threads=args.workers,
                      embedding_cache=work / "embed.sqlite", name="scifact")
        v1 = build_capsule([docs], work / "v1.capsule", version=1, **common)
        files = sorted(docs.iterdir())
        changed = random.Random(13).sample(files, max(1, round(args.fraction * len(files))))
        for path in changed:
            path.write_text(path.read_text() + "\nThis abstract was revised in version two.\n")
        base = read_base(v1.path, signing_key=publisher, identities=[device])
        delta = build_capsule([docs], work / "v2.delta.capsule", version=2, base=base, **common)
        full = build_capsule([docs], work / "v2.full.capsule", version=2, **common)

        keys = dict(identities=[device], trusted_keys=[publisher.public_key()], now=issued + timedelta(days=1))
        seeded = work / "seeded"
        with Store(seeded) as store:
            store.install(v1.path, **keys)
        times: dict[str, list[float]] = {"full_fresh": [], "full_over_v1": [], "delta_over_v1": []}
        for repeat in range(args.repeats):
            for label, source, start in (("full_over_v1", full.path, seeded), ("delta_over_v1", delta.path, seeded),
                                         ("full_fresh", v1.path, None)):
                target = work / f"store-{label}-{repeat}"
                if start is not None:
                    shutil.copytree(start, target)
                with Store(target) as store:
                    t0 = time.perf_counter()
                    store.install(source, **keys)
                    times[label].append(time.perf_counter() - t0)
                    used = store.used_bytes()
                shutil.rmtree(target)
        median = {label: statistics.median(values) for label, values in times.items()}
        report = {
            "benchmark": "delta-install", "machine": machine(),
            "git": os.popen(f"git -C {ROOT} rev-parse HEAD").read().strip(),
            "documents": n_docs, "changed_documents": len(changed), "fraction": args.fraction,
            "chunks": {"v1": v1.n_chunks, "delta": delta.n_chunks, "full_v2": full.n_chunks},
            "bytes": {"v1": v1.file_bytes, "delta": delta.file_bytes, "full_v2": full.file_bytes,
                      "delta_to_full": round(delta.file_bytes / full.file_bytes, 4)},
            "install_s": {label: [round(v, 3) for v in values] for label, values in times.items()},
            "install_median_s": {label: round(v, 3) for label, v in median.items()},
            "delta_to_full_install": round(median["delta_over_v1"] / median["full_over_v1"], 3),
            "store_bytes_after_last_fresh_install": used,
            "note": "Store.install on this machine's disk; the full install decodes and authenticates every frame of "
                    "v2, the delta install those of the delta and opens v1 as the store object it is",
        }
        text = json.dumps(report, indent=2)
        print(text)
        Path(args.out).write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
