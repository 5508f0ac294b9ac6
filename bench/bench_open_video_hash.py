"""Measure what authenticating every MP4 sample costs when a capsule is opened by path.

A capsule opened by path has its ``VIDE`` section hashed at open, keeping one SHA-256 per sample
(``edge.capsule._hash_video``), so a frame rewritten after the open is refused before a decoder
sees it. A store object was hashed at install and is mapped instead. This benchmark builds one
capsule from ``../shared/data/python-docs`` (or ``--corpus debian-faq``) (or takes ``--capsule`` with ``--keys``), then reports,
as one JSON object on stdout:

- ``vide_bytes``, ``n_frames``: the section hashed;
- ``hash_video_ms``: the hashing pass alone (median of ``--repeat``, page cache warm);
- ``open_by_path_ms`` and ``open_store_ms``: whole ``open_capsule`` medians, by path and as an
  installed store object, so the ratio shows the share of the open the pass takes;
- ``hash_mib_per_s``: VIDE throughput of the pass.

Usage::

    PYTHONPATH=. python bench/bench_open_video_hash.py              # builds into a temp dir
    PYTHONPATH=. python bench/bench_open_video_hash.py --repeat 20

Figures are from a warm page cache; a cold USB stick adds its read time to both the pass and
an install.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = {"debian-faq": ROOT.parent / "shared" / "data" / "debian-faq" / "debian-faq.en.txt",
           "python-docs": ROOT.parent / "shared" / "data" / "python-docs" / "rst"}
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu, "nproc": os.cpu_count(),
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def _build(work: Path, corpus: str) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from firmware_tools.build import build_capsule
    from firmware_tools.keys import private_key_pem, public_key_pem, write_private_file

    publisher = Ed25519PrivateKey.from_private_bytes(bytes(32))
    device = X25519PrivateKey.from_private_bytes(bytes(31) + b"\x01")
    (work / "publisher.pub").write_bytes(public_key_pem(publisher))
    write_private_file(work / "device.key", private_key_pem(device))
    out = work / f"{corpus}.capsule"
    print(f"building {out.name} from {CORPORA[corpus]}", file=sys.stderr)
    build_capsule([CORPORA[corpus]], out, signing_key=publisher, recipients=[device.public_key()],
                  issued_at=datetime(2026, 11, 1, tzinfo=timezone.utc),
                  expires_at=datetime(2027, 11, 1, tzinfo=timezone.utc), version=1, n_threads=2)
    return out


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capsule", type=Path, help="an existing capsule (needs --keys)")
    parser.add_argument("--keys", type=Path, help="folder with publisher.pub and device.key")
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="python-docs",
                        help="corpus to build when no --capsule is given (default: python-docs)")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)

    from edge import load_identity, load_public_key, open_capsule
    from edge.verification import _hash_video
    from edge.container import ContainerFile
    from edge.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-open-") as tmp:
        work = Path(tmp)
        path = args.capsule or _build(work, args.corpus)
        keys = args.keys or work
        trust = [load_public_key(keys / "publisher.pub")]
        identity = load_identity(keys / "device.key")

        def open_by_path():
            open_capsule(path, trusted_keys=trust, identities=[identity], now=NOW).close()

        probe = open_capsule(path, trusted_keys=trust, identities=[identity], now=NOW)
        manifest, frames = probe.manifest, probe._frames
        probe.close()

        def hash_only():
            with ContainerFile(path) as cf:
                _hash_video(cf, manifest, frames)

        with Store(work / "store") as store:
            store.install(path, identities=[identity], trusted_keys=trust, now=NOW)
            name = store.list(now=NOW)[0].name

            def open_store():
                store.open(name, trusted_keys=trust, identities=[identity], now=NOW).close()

            open_by_path()  # warm the page cache and the model
            result = {
                "machine": machine(),
                "capsule": path.name,
                "vide_bytes": manifest.sections["VIDE"].length,
                "n_frames": frames.n_frames,
                "repeat": args.repeat,
                "hash_video_ms": _median_ms(hash_only, args.repeat),
                "open_by_path_ms": _median_ms(open_by_path, args.repeat),
                "open_store_ms": _median_ms(open_store, args.repeat),
            }
    result["hash_mib_per_s"] = round(result["vide_bytes"] / 2**20 / (result["hash_video_ms"] / 1000), 1)
    result["open_by_path_over_store"] = round(result["open_by_path_ms"] / result["open_store_ms"], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
