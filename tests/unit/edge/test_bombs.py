"""Issue 9, item 2: zstd bombs signed by the publisher are refused from their header or stopped
at a hard output cap, charged to the memory budget first, and never end in a MemoryError."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zstandard

from edge import MemoryBudget, open_capsule
from edge.budget import read_process_memory
from edge.errors import BudgetExceededError, CapsuleFormatError
from edge.hits import DOCS_SMALL_ENTRY_BYTES, DOCS_TABLE_BASE_BYTES, DOCS_TABLE_PEAK_FACTOR, parse_document_table
from edge.manifest import canonical_json
from edge.sealed import (
    MAX_DOCUMENT_ENTRY_BYTES,
    MAX_HEADING_BYTES_PER_CHUNK,
    decompress_bounded,
    docs_plaintext_limit,
    zstd_content_size,
    zstd_decompressor,
)
from tests.vectors import generate as fv
from tests.vectors.generate import Draft

from tests.conftest import ROOT

OK_VECTOR = ROOT / "tests" / "vectors" / "ok"
KEYS = ROOT / "tests" / "vectors" / "keys"
#: What the reader allows the bomb's DOCS (2 documents, and the ok vector's chunks; FORMAT.md §8).
BOMB_LIMIT = 64 + MAX_DOCUMENT_ENTRY_BYTES * 2 + MAX_HEADING_BYTES_PER_CHUNK * Draft(
    (ROOT / "tests" / "vectors" / "ok" / "capsule").read_bytes()).manifest["n_chunks"]
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
MiB = 1 << 20


def docs_bomb(n_bytes: int, **manifest_changes) -> bytes:
    """Return the genuine ``ok`` capsule with DOCS re-sealed as zstd of ``n_bytes`` zeros, re-signed."""
    draft = Draft((OK_VECTOR / "capsule").read_bytes())
    draft.manifest.update(manifest_changes)
    draft.reseal("DOCS", zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes(n_bytes)))
    return draft.build()


def open_kwargs() -> dict:
    return dict(trusted_keys=[fv.test_key("test-publisher-1").public_key()], identities=[fv.test_key("test-device")],
                now=NOW)


@pytest.fixture(scope="module")
def bomb_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "docs-64mib.capsule"
    path.write_bytes(docs_bomb(64 * MiB))  # exactly the FORMAT v1 hard limit: the old header check passed it
    assert path.stat().st_size < 64 * 1024
    return path


def test_signed_docs_bomb_is_refused_from_its_header(bomb_path):
    # Old reader: inflated all 64 MiB (twice) before refusing; a JSON-shaped 5.7 kB bomb cost 1.9 GB RSS.
    limit = BOMB_LIMIT
    with pytest.raises(CapsuleFormatError,
                       match=rf"^document list decompresses to {64 * MiB} bytes, limit is {limit}$"):
        open_capsule(bomb_path, **open_kwargs())


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_signed_docs_bomb_under_a_data_limit_is_one_line_error(bomb_path, tmp_path):
    # Old reader under prlimit --data=200 MB: a MemoryError traceback (the genuine capsule opens).
    identity = tmp_path / "device.key"
    identity.write_bytes((KEYS / "test-device.key").read_bytes())
    identity.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGE_STORE_DIR": str(tmp_path / "store")}
    proc = subprocess.run(["prlimit", f"--data={200 * 1000 * 1000}", sys.executable, "-m", "edge", "verify",
                           str(bomb_path), "--trust", str(KEYS / "test-publisher-1.pub"), "--identity", str(identity)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge: error: ")]
    assert errors == [f"edge: error: document list decompresses to {64 * MiB} bytes, limit is {BOMB_LIMIT}"], proc.stderr


def test_declared_docs_size_is_charged_to_the_budget_before_inflating(tmp_path):
    # 10,000 entries allow 40,960,064 bytes of DOCS; parsing them entry by entry may hold 6x
    # that plus 2 MiB (DOCS_TABLE_PEAK_FACTOR, DOCS_TABLE_BASE_BYTES), which is reserved first
    # (less what the open has reserved for parts it loads later, at most the genuine capsule's
    # whole plan): a budget with 64 MiB to spare refuses before zstd runs.
    genuine_budget = MemoryBudget(None)
    with open_capsule(OK_VECTOR / "capsule", budget=genuine_budget, **open_kwargs()):
        plan = genuine_budget.reserved_bytes - genuine_budget.report()["reserved_bytes"]["runtime"]
    path = tmp_path / "docs-40mb.capsule"
    path.write_bytes(docs_bomb(40_000_000, n_documents=10_000))
    # Room for this process as it is now (the runtime is charged its RssAnon, which the tests run
    # before this one in the same process move, by more than 100 MiB under pytest-xdist), the
    # genuine plan and 64 MiB.
    budget = MemoryBudget(_anon_bytes() + plan + 64 * MiB)
    with pytest.raises(BudgetExceededError, match="documents_inflate") as info:
        open_capsule(path, budget=budget, **open_kwargs())
    peak = DOCS_TABLE_PEAK_FACTOR * 40_000_000 + DOCS_TABLE_BASE_BYTES
    assert peak - plan <= info.value.requested_bytes <= peak
    assert set(budget.report()["reserved_bytes"]) == {"runtime"}
    # With room for it, 4 MB of zeros are inflated (to their declared size, no further) and
    # refused as what they are, with nothing left reserved.
    path = tmp_path / "docs-4mb.capsule"
    path.write_bytes(docs_bomb(4_000_000, n_documents=1000))
    roomy = MemoryBudget(_anon_bytes() + plan + 64 * MiB)
    with pytest.raises(CapsuleFormatError, match="document list must be"):
        open_capsule(path, budget=roomy, **open_kwargs())
    assert set(roomy.report()["reserved_bytes"]) == {"runtime"}


def _anon_bytes() -> int:
    """This process's RssAnon now: what ``MemoryBudget.charge_runtime`` will charge at an open."""
    return read_process_memory().anon_bytes


def test_a_large_docs_entry_is_charged_before_it_is_parsed():
    # One entry of 200 kB of headings: over DOCS_SMALL_ENTRY_BYTES, so 32x its length is
    # reserved before the JSON parser sees it, and refused when that does not fit.
    headings = [[i, 1, "h"] for i in range(20_000)]
    data = canonical_json({"documents": [{"bytes": 1, "headings": headings, "media_type": "text/plain",
                                          "n_chunks": 1, "name": "big.txt"}]})
    assert len(data) > DOCS_SMALL_ENTRY_BYTES
    budget = MemoryBudget(8 * MiB)
    with pytest.raises(BudgetExceededError, match="docs_entry"):
        parse_document_table(data, n_documents=1, n_chunks=1,
                             reserve_entry=lambda n: budget.reserve("docs_entry", n))
    table = parse_document_table(data, n_documents=1, n_chunks=1,
                                 reserve_entry=lambda n: MemoryBudget(64 * MiB).reserve("docs_entry", n))
    assert len(list(table.headings(0))) == 20_000


def test_docs_limit_follows_the_entry_count():
    assert docs_plaintext_limit(2, 64 * MiB) == 64 + 2 * MAX_DOCUMENT_ENTRY_BYTES
    assert docs_plaintext_limit(1 << 24, 64 * MiB) == 64 * MiB
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 5000)
    assert zstd_content_size(frame, 5000, what="docs") == 5000
    with pytest.raises(CapsuleFormatError, match="decompresses to 5000 bytes, limit is 4999"):
        zstd_content_size(frame, 4999, what="docs")
    with pytest.raises(CapsuleFormatError, match="does not record its content size"):
        zstd_content_size(zstandard.ZstdCompressor(write_content_size=False).compress(b"x"), 10, what="docs")


def test_frame_bomb_stops_at_the_cap_without_allocating_more():
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=16, write_content_size=0)
    bomb = zstandard.ZstdCompressor(compression_params=params).compress(bytes(64 * MiB))
    assert len(bomb) < 8192
    tracemalloc.start()
    try:
        with pytest.raises(CapsuleFormatError, match="^frame payload decompresses to over 65536 bytes$"):
            decompress_bounded(bomb, 65536, zstd_decompressor())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB


def test_frame_asking_for_a_large_zstd_window_is_refused():
    # a streaming zstd decoder allocates the window the header asks for: bounded to 1 MiB
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=24, write_content_size=0)
    frame = zstandard.ZstdCompressor(compression_params=params).compress(
        os.urandom(1000) * 3000)
    assert zstandard.get_frame_parameters(frame).window_size > MiB
    with pytest.raises(CapsuleFormatError, match="not one zstd frame that decompresses within 65536 bytes"):
        decompress_bounded(frame, 65536, zstd_decompressor())


def test_frame_round_trips_and_trailing_or_missing_bytes_are_refused():
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"chunk " * 2000)
    assert decompress_bounded(frame, 12000, zstd_decompressor()) == b"chunk " * 2000
    with pytest.raises(CapsuleFormatError, match="decompresses to 12000 bytes, limit is 11999"):
        decompress_bounded(frame, 11999, zstd_decompressor())
    with pytest.raises(CapsuleFormatError, match="decompresses to over 12000 bytes"):
        decompress_bounded(frame + frame, 1 << 20, zstd_decompressor())
    short = zstandard.ZstdCompressor(write_content_size=False).compress(b"chunk")
    for trailing in (b"\0", short):
        with pytest.raises(CapsuleFormatError, match="zstd frame"):
            decompress_bounded(short + trailing, 1 << 20, zstd_decompressor())
    with pytest.raises(CapsuleFormatError):
        decompress_bounded(frame[:-2], 1 << 20, zstd_decompressor())
