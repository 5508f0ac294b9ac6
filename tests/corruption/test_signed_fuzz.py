"""Signed-malicious fuzzing: mutations re-sealed and re-signed with the test publisher key (issue 9, Proof).

A compromised publisher key can sign anything, so these mutations pass the signature, the
section digests and the AEAD and reach annoy, FFmpeg/PyAV, zxing-cpp, zstd and the JSON parser
(families and runner: ``signed_mutations.py``). Every case runs in a forked worker process
under a per-case timeout, the runtime's memory budget plus a peak-RSS check, and a hard
``RLIMIT_AS``; the outcome must be genuine text or a capsule error, never a crash, hang,
allocation past the budget, traceback or other text.

Default run: ``DEFAULT_PER_FAMILY`` seeded cases per family (a few hundred in all, about 10 s
on 2 cores). Long run: ``pytest -m fuzz tests/corruption/test_signed_fuzz.py`` runs
``$EDGE_FUZZ_EXAMPLES`` cases (default 100,000) spread over the families, with other seeds,
and adds the counts per family and outcome to ``$EDGE_FUZZ_REPORT`` under ``"signed"``.
Knobs: ``EDGE_FUZZ_WORKERS`` (default 2), ``EDGE_FUZZ_TIMEOUT`` (seconds per case, default 10),
``EDGE_FUZZ_CASE_MIB``, ``EDGE_FUZZ_SLACK_MIB``, ``EDGE_FUZZ_HARD_MIB`` (see signed_mutations.py).

The first failing input of each family and kind is kept under the test's ``tmp_path``
(``failures/``); the assertion message lists, per failing family, the counts of crashes,
hangs, over-memory, tracebacks and wrong text, with one example (seed, mutation, outcome) each.
Reproduce one case with ``signed_mutations.make_case(family, seed)``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

from . import signed_mutations as sm

DEFAULT_PER_FAMILY = 24
#: Families given more default cases: manifest-limits spreads over ten fields, proj over four kinds.
DEFAULT_EXTRA = {"manifest-limits": 40, "proj": 24}
WORKERS = max(1, min(2, int(os.environ.get("EDGE_FUZZ_WORKERS", "2"))))
TIMEOUT_S = float(os.environ.get("EDGE_FUZZ_TIMEOUT", "10"))
FUZZ_EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "100000"))
#: Refusals that mean a mutation never got past authentication (the re-sealing or re-signing failed).
AUTH_REFUSAL = re.compile(r"^open: (SignatureError|IntegrityError|DecryptionError):")


@pytest.fixture(scope="module")
def big_frames(tmp_path_factory) -> Path:
    """The libx264 frames that vide-inband and manifest extradata cases splice in, encoded once."""
    directory = tmp_path_factory.mktemp("signed-fuzz-big-frames")
    sm.prepare_big_frames(directory)
    return directory


@pytest.fixture(scope="module")
def default_results(big_frames, tmp_path_factory) -> tuple[list[sm.Result], Path]:
    saved = tmp_path_factory.mktemp("signed-fuzz") / "failures"
    cases = sm.case_list(sm.FAMILIES, DEFAULT_PER_FAMILY)
    for family, n in DEFAULT_EXTRA.items():
        cases += sm.case_list([family], n, start=DEFAULT_PER_FAMILY)
    results = sm.run_cases(cases, workers=WORKERS, timeout_s=TIMEOUT_S, save_dir=saved)
    return results, saved


def _report_failures(results: list[sm.Result], saved: Path) -> str:
    _, report = sm.summarise(results)
    if not report:
        return ""
    return (f"signed-malicious fuzz: failing families ({len(results)} cases; inputs kept in {saved}):\n{report}")


def test_the_harness_classifies_each_kind_of_failure(big_frames, tmp_path):
    """The controls: a genuine case passes; a SIGSEGV, a hang, a traceback, memory past the budget,
    a MemoryError under the hard limit and authentic-but-not-genuine text are each caught as such.

    A crashed or hung worker is replaced: the genuine cases after each control still run.
    """
    names = ["genuine", "control-crash", "genuine", "control-hang", "genuine", "control-traceback",
             "control-over-memory", "genuine", "control-memory-error", "control-wrong-text", "genuine"]
    results = sm.run_cases([(n, 0) for n in names], workers=WORKERS, timeout_s=3, save_dir=tmp_path)
    got = [(r.family, r.kind) for r in results]
    want = {"genuine": "ok", "control-crash": "crash", "control-hang": "hang", "control-traceback": "traceback",
            "control-over-memory": "over-memory", "control-memory-error": "over-memory",
            "control-wrong-text": "wrong-text"}
    assert got == [(n, want[n]) for n in names], [(r.family, r.kind, r.detail) for r in results]
    crash = next(r for r in results if r.family == "control-crash")
    assert "SIGSEGV" in crash.detail and Path(crash.saved).is_file()
    _, report = sm.summarise(results)
    assert "control-crash: 1 cases, 1 crash" in report.splitlines()
    assert not [line for line in report.splitlines() if line.startswith("genuine:")]


def test_cases_are_deterministic(big_frames, monkeypatch):
    monkeypatch.setenv("EDGE_FUZZ_BIG_FRAMES", str(big_frames))
    for family in sm.FAMILIES:
        for seed in (0, 1):
            try:
                first = sm.make_case(family, seed)
            except sm.Skip:
                continue
            label, data, expected = sm.make_case(family, seed)
            # Signatures are deterministic (Ed25519); only the label, bytes and expectations matter.
            assert (label, data, expected) == first, family


def test_every_family_gets_past_authentication(default_results):
    """A family whose cases all stop at the signature, a digest or the section AEAD tests nothing."""
    results, _ = default_results
    assert not [r for r in results if r.kind == "harness"], [r.detail for r in results if r.kind == "harness"]
    for family in sm.FAMILIES:
        mine = [r for r in results if r.family == family]
        assert len(mine) == DEFAULT_PER_FAMILY + DEFAULT_EXTRA.get(family, 0)
        ran = [r for r in mine if r.kind != "skipped"]
        assert len(ran) >= len(mine) // 2, (family, "too many cases skipped")
        reached = [r for r in ran if not (r.kind == "refused" and AUTH_REFUSAL.match(r.detail))]
        assert len(reached) >= len(ran) // 2, (family, [r.detail for r in ran][:5])


def test_signed_mutations_fail_closed(default_results):
    """Every default case: genuine text or a capsule error. The message lists each failing family."""
    results, saved = default_results
    message = _report_failures(results, saved)
    assert not message, message


# -- long run (-m fuzz) ---------------------------------------------------------------------------


@pytest.mark.fuzz
def test_fuzz_signed_mutations(big_frames, tmp_path):
    per_family = max(1, FUZZ_EXAMPLES // len(sm.FAMILIES))
    cases = sm.case_list(sm.FAMILIES, per_family, start=1_000_000)
    started = time.monotonic()
    results = sm.run_cases(cases, workers=WORKERS, timeout_s=TIMEOUT_S, save_dir=tmp_path / "failures")
    elapsed = time.monotonic() - started
    counts, _ = sm.summarise(results)
    report = Path(os.environ.get("EDGE_FUZZ_REPORT", Path(tempfile.gettempdir()) / "fuzz-report.json"))
    previous = json.loads(report.read_text()) if report.exists() else {}
    signed = previous.setdefault("signed", {})
    for family, kinds in counts.items():
        for kind, n in kinds.items():
            signed.setdefault(family, {})
            signed[family][kind] = signed[family].get(kind, 0) + n
    previous["signed_rate"] = {"cases": len(results), "seconds": round(elapsed, 1),
                               "cases_per_s": round(len(results) / elapsed, 1), "workers": WORKERS}
    _write_atomically(report, json.dumps(previous, indent=1, sort_keys=True))
    message = _report_failures(results, tmp_path / "failures")
    assert not message, message


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once: pytest-xdist workers may update the report together."""
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_text(text)
    os.replace(part, path)
