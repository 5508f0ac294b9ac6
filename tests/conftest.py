"""Shared fixtures: a fixed clock and small valid manifest objects."""

from __future__ import annotations

import base64
import copy
from datetime import datetime, timezone

import pytest

FIXED_NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def sample_manifest_dict() -> dict:
    """Return a structurally valid manifest object (FORMAT.md §4.1); not tied to real sections."""
    b64 = lambda n: base64.b64encode(bytes(range(n))).decode()  # noqa: E731
    digest = {"length": 100, "sha256": "ab" * 32}
    return copy.deepcopy({
        "format": "edge-capsule/1",
        "capsule_id": "0123456789abcdef0123456789abcdef",
        "name": "sample",
        "version": 3,
        "publisher": {"keyid": "cd" * 32, "name": "Example Publisher"},
        "issued_at": "2026-11-01T00:00:00Z",
        "not_before": "2026-11-01T00:00:00Z",
        "expires_at": "2027-11-01T00:00:00Z",
        "rules": {},
        "model": {"name": "all-MiniLM-L6-v2-int8", "family": "onnx", "sha256": "ef" * 32,
                  "tokenizer_sha256": "12" * 32, "dim": 384, "pooling": "mean", "normalization": "l2",
                  "max_tokens": 256},
        "chunking": {"max_tokens": 200, "overlap_tokens": 32},
        "index": {"format": "annoy", "dim": 384, "metric": "angular", "n_items": 10, "n_trees": 16, "seed": 42,
                  "search_k": 4000, "n_candidates": 200, "projection": None,
                  "encryption": "chacha20poly1305-stream"},
        "video": {"container": "mp4", "codec": "h264", "profile": "High", "width": 192, "height": 192,
                  "pix_fmt": "yuv420p", "crf": 24, "gop": 1, "fps": 25, "n_frames": 3, "extradata": b64(40),
                  "qr": {"version": 40, "ec_level": "L", "pixels_per_module": 1, "quiet_zone_modules": 4}},
        "payload": {"aead": "chacha20poly1305", "compression": "zstd", "dictionary_bytes": 0, "layout": "frame-v1",
                    "max_plaintext_bytes": 65536},
        "n_chunks": 10,
        "n_documents": 2,
        "sections": {"DOCS": digest, "FTAB": dict(digest, length=48), "ZDIC": dict(digest, length=16),
                     "PROJ": dict(digest, length=16), "VECS": dict(digest, length=16), "INDX": digest,
                     "LEXI": dict(digest, length=16), "VIDE": digest},
        "lexical": None,
        "recipients": [{"type": "x25519", "epk": b64(32), "body": b64(48)}],
        "builder": {"name": "firmware-tools", "version": "0.1.0"},
    })


@pytest.fixture
def fixed_now() -> datetime:
    return FIXED_NOW


@pytest.fixture
def manifest_dict() -> dict:
    return sample_manifest_dict()


# ---------------------------------------------------------------------------
# Real capsules built once per session from the shipped corpus (real model, real video).

import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAQ_DOCS = ROOT / "examples" / "python-faq" / "docs"
TINY_DOCS = ROOT / "tests" / "data" / "docs"
BUILD_ISSUED_AT = datetime(2026, 11, 1, tzinfo=timezone.utc)
BUILD_EXPIRES_AT = datetime(2036, 11, 1, tzinfo=timezone.utc)


@dataclass
class BuiltCapsule:
    path: Path
    publisher_key: object
    device_key: object
    other_device_key: object
    publisher_pub_path: Path
    device_key_path: Path
    other_device_key_path: Path
    result: object


def _write_keys(tmp: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from firmware_tools.keys import private_key_pem, public_key_pem, write_private_file

    seed = bytes(range(32))
    publisher = Ed25519PrivateKey.from_private_bytes(seed)
    device = X25519PrivateKey.from_private_bytes(bytes(reversed(seed)))
    other = X25519PrivateKey.from_private_bytes(bytes(31) + b"\x07")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "publisher.pub").write_bytes(public_key_pem(publisher))
    for name, key in (("device", device), ("other", other)):
        path = tmp / f"{name}.key"
        if not path.exists():
            write_private_file(path, private_key_pem(key))
        (tmp / f"{name}.pub").write_bytes(public_key_pem(key))
    return publisher, device, other


#: One embedding cache for the whole test session: the real model embeds each chunk text once,
#: later builds of the same text reuse the vectors (tests/unit/firmware_tools/test_streaming.py
#: checks that a cached build is byte-identical to an uncached one).
_SESSION_EMBEDDING_CACHE: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _session_embedding_cache(tmp_path_factory):
    # $EDGE_TEST_EMBEDDING_CACHE names a cache file to use (and fill) instead: the emulated
    # aarch64 run (docker/arm64/test.sh) starts from the one an x86 run filled, so that the
    # builder's chunk embedding, a desktop job, does not run 100x slower under QEMU.
    import os

    given = os.environ.get("EDGE_TEST_EMBEDDING_CACHE")
    _SESSION_EMBEDDING_CACHE.append(Path(given) if given else tmp_path_factory.mktemp("embeddings") / "cache.sqlite")
    yield
    _SESSION_EMBEDDING_CACHE.clear()


def build_test_capsule(docs, out: Path, *, keys_dir: Path, **overrides) -> BuiltCapsule:
    """Build a real capsule with fixed keys, seed and clock (deterministic)."""
    from firmware_tools.build import build_capsule

    publisher, device, other = _write_keys(keys_dir)
    kwargs = dict(signing_key=publisher, recipients=[device.public_key()], issued_at=BUILD_ISSUED_AT,
                  expires_at=BUILD_EXPIRES_AT, version=1, seed=b"test-seed", n_threads=2,
                  embedding_cache=_SESSION_EMBEDDING_CACHE[0] if _SESSION_EMBEDDING_CACHE else None)
    kwargs.update(overrides)
    result = build_capsule(docs if isinstance(docs, list) else [docs], out, **kwargs)
    return BuiltCapsule(out, publisher, device, other, keys_dir / "publisher.pub", keys_dir / "device.key",
                        keys_dir / "other.key", result)


@pytest.fixture(scope="session")
def faq_capsule(tmp_path_factory) -> BuiltCapsule:
    tmp = tmp_path_factory.mktemp("faq")
    return build_test_capsule(FAQ_DOCS, tmp / "python-faq.capsule", keys_dir=tmp / "keys")


@pytest.fixture(scope="session")
def tiny_capsule(tmp_path_factory) -> BuiltCapsule:
    tmp = tmp_path_factory.mktemp("tiny")
    return build_test_capsule(TINY_DOCS / "good", tmp / "tiny.capsule", keys_dir=tmp / "keys")


@pytest.fixture(scope="session")
def errcodes_capsule(tmp_path_factory) -> BuiltCapsule:
    """A capsule of a real manual with many codes: PostgreSQL's SQLSTATE appendix (tests/data/pg-errcodes)."""
    tmp = tmp_path_factory.mktemp("pg")
    return build_test_capsule(ROOT / "tests" / "data" / "pg-errcodes" / "docs", tmp / "errcodes.capsule",
                              keys_dir=tmp / "keys", name="errcodes")


#: Arguments whose command measures or limits this process's own memory: a test process's RSS
#: (pytest, every module the suite imported, capsules other tests left open) is not a CLI's.
_OWN_PROCESS_ARGS = frozenset({"--ram-budget", "--memory"})


def absent_onnx_device() -> str:
    """A ``--device`` other than ``cpu`` whose execution provider this onnxruntime lacks (the test
    is skipped where it has them all)."""
    import onnxruntime as ort

    from edge.embedder import EXECUTION_PROVIDERS

    absent = [d for d, p in EXECUTION_PROVIDERS.items() if d != "cpu" and p not in ort.get_available_providers()]
    if not absent:
        pytest.skip("this onnxruntime has every execution provider")
    return absent[0]


def run_cli(*args: str, env: dict | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m edge ...`` or ``python -m firmware_tools ...``; return what a subprocess gives.

    By default the CLI's ``main(argv)`` runs inside the test process, with file descriptors 1 and 2
    (so C libraries' output too), ``sys.stdout``/``sys.stderr``, the environment, the working
    directory, the root logger and the signal handlers a build sets swapped for the call and put
    back after: the same exit code, stdout and stderr as the program, without a new interpreter
    (about 0.3 s of imports per call on this machine kind). An exception that escapes ``main`` is
    written to stderr as a traceback with exit code 1, as the interpreter would.

    ``process=True`` runs a real subprocess instead; so does any call with ``--ram-budget``,
    ``--memory`` or ``$EDGE_RAM_BUDGET``, because those measure the process itself. Tests of
    prlimit, unshare, SIGKILL, blocked imports or state kept across processes pass it.
    """
    import os

    full_env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    full_env["EDGE_STORE_DIR"] = os.environ.get("EDGE_STORE_DIR") or _cli_store_dir()  # never /var/lib
    full_env.update(env or {})
    if process or _OWN_PROCESS_ARGS.intersection(args) or full_env.get("EDGE_RAM_BUDGET"):
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                              env={**os.environ, **full_env}, cwd=ROOT, timeout=300)
    return _run_cli_in_process(args[0], list(args[1:]), full_env)


def _run_cli_in_process(module: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    import importlib
    import logging
    import os
    import signal
    import tempfile
    import traceback

    main = importlib.import_module(f"{module}.cli").main
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = sys.stdout, sys.stderr
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    root = logging.getLogger()
    saved_logging = root.handlers[:], root.level
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for stream in saved_streams:
            stream.flush()
        saved_fds = os.dup(1), os.dup(2)
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            os.environ.update(env)
            os.chdir(ROOT)
            root.handlers = []  # as in a fresh interpreter: main's logging.basicConfig takes effect
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:
                traceback.print_exc()
                code = 1
            if isinstance(code, str):  # SystemExit("message"): the interpreter prints it, exit 1
                print(code, file=sys.stderr)
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            for handler in root.handlers:
                if handler not in saved_logging[0]:
                    handler.close()
            root.handlers, _ = saved_logging
            root.setLevel(saved_logging[1])
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            for signum, handler in saved_signals.items():
                signal.signal(signum, handler)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return subprocess.CompletedProcess([sys.executable, "-m", module, *argv], code or 0, stdout, stderr)


_CLI_STORE_DIR: list[str] = []


def _cli_store_dir() -> str:
    """Return a device store directory private to this test process (one pytest-xdist worker)."""
    import tempfile

    if not _CLI_STORE_DIR:
        _CLI_STORE_DIR.append(tempfile.mkdtemp(prefix="edge-test-store-"))
    return _CLI_STORE_DIR[0]


#: Names the store directory the suite made itself, so that a pytest-xdist worker, which inherits
#: the controller's environment, makes its own instead of sharing it with the other workers.
_SUITE_STORE_ENV = "EDGE_TEST_SUITE_STORE_DIR"


def pytest_configure(config):
    """Every process the suite starts gets a private store: tests never touch /var/lib/edge-capsules,
    and two workers never share one (a store given in ``$EDGE_STORE_DIR`` is used as it is)."""
    import os

    given = os.environ.get("EDGE_STORE_DIR")
    if not given or given == os.environ.get(_SUITE_STORE_ENV):
        os.environ["EDGE_STORE_DIR"] = os.environ[_SUITE_STORE_ENV] = _cli_store_dir()
