"""Property suite: random bytes and mutations of a valid capsule raise only capsule errors, never text.

Default run: a few hundred hypothesis examples. Long run: ``pytest -m fuzz`` runs the same
properties for ``$EDGE_FUZZ_EXAMPLES`` cases each (default 50,000) and writes the case counts to
``$EDGE_FUZZ_REPORT`` (default ``fuzz-report.json`` in the temporary directory).

Properties, for every input file:
- ``open_capsule`` either raises a ``CapsuleError`` or returns a capsule; any other exception
  fails the test (the runtime must not crash on any file);
- when it opens, every chunk read either raises a ``CapsuleError`` or returns exactly the genuine
  text of that chunk (no text from unverified bytes);
- ``verify_capsule(full=True)`` raises a ``CapsuleError`` for every input that differs from the
  genuine capsule (every byte is covered by a check).

The long run memoises the model lookup and the embedder (each hashes the 23 MB model file), so
100,000 cases fit in minutes; neither reads the capsule, which is the fuzzed input.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import format as fmt
from edge.capsule import open_capsule, verify_capsule
from edge.errors import CapsuleError

from ..vectors.harness import VECTORS, Expect, identities, section_ranges, trusted_keys

OK = (VECTORS / "ok" / "capsule").read_bytes()
OLDER = (VECTORS / "older-version" / "capsule").read_bytes()
EXPECT = Expect.read(VECTORS / "ok" / "EXPECT")
RANGES = section_ranges(OK)
KEYS = dict(trusted_keys=trusted_keys(EXPECT), identities=identities(EXPECT), now=EXPECT.now)
FUZZ_EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "50000"))
COUNTS: dict[str, int] = {}


@lru_cache(maxsize=1)
def genuine() -> tuple[str, ...]:
    with open_capsule(VECTORS / "ok" / "capsule", **KEYS) as capsule:
        return tuple(capsule.read(i, now=EXPECT.now).text for i in range(capsule.manifest.n_chunks))


def check(data: bytes, kind: str) -> None:
    """Assert the three properties for one input file."""
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    texts = genuine()
    with tempfile.TemporaryDirectory(prefix="edge-fuzz-") as tmp:
        path = Path(tmp) / "input.capsule"
        path.write_bytes(data)
        try:
            capsule = open_capsule(path, **KEYS)
        except CapsuleError:
            capsule = None
        if capsule is not None:
            try:
                for chunk_id in range(capsule.manifest.n_chunks):
                    try:
                        text = capsule.read(chunk_id, now=EXPECT.now).text
                    except CapsuleError:
                        continue
                    assert text == texts[chunk_id], f"chunk {chunk_id} returned text that is not genuine"
            finally:
                capsule.close()
        if data != OK:
            with pytest.raises(CapsuleError):
                verify_capsule(path, trusted_keys=KEYS["trusted_keys"], now=EXPECT.now, full=True)


# -- strategies ---------------------------------------------------------------------------------

REGIONS = [(0, 64 + 32 * len(RANGES))] + list(RANGES.values())


@st.composite
def offsets(draw) -> int:
    """An offset in the file, first choosing a region (header+table or one section) uniformly."""
    start, end = draw(st.sampled_from(REGIONS))
    return draw(st.integers(start, max(start, end - 1)))


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(OK)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice", "swap"]))
        at = min(draw(offsets()), max(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":  # a section's bytes from the older version of the same capsule
            tag = draw(st.sampled_from(fmt.SECTION_ORDER))
            start, end = RANGES[tag]
            other = section_ranges(OLDER)[tag]
            piece = OLDER[other[0]:other[1]][: end - start]
            data[start:start + len(piece)] = piece
        else:  # swap two 16-byte blocks
            other = min(draw(offsets()), max(0, len(data) - 16))
            a, b = bytes(data[at:at + 16]), bytes(data[other:other + 16])
            if len(a) == len(b) == 16:
                data[at:at + 16], data[other:other + 16] = b, a
    return bytes(data)


def header_like() -> st.SearchStrategy[bytes]:
    """Random files that pass the magic check: a header with random fields, then random bytes."""
    return st.builds(
        lambda fields, rest: (fmt.MAGIC + b"".join(v.to_bytes(n, "little") for v, n in fields) + rest),
        st.tuples(*(st.one_of(st.just(good), st.integers(0, (1 << (8 * n)) - 1)).map(lambda v, n=n: (v, n))
                    for good, n in ((1, 2), (0, 2), (64, 4), (9, 4), (32, 4), (len(OK), 8), (0, 32)))),
        st.one_of(st.binary(max_size=2048), st.just(OK[64:])),
    )


RANDOM_INPUTS = st.one_of(st.binary(max_size=4096), header_like())
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture],
                database=None)


# -- default run ----------------------------------------------------------------------------------


@settings(max_examples=300, **SETTINGS)
@given(RANDOM_INPUTS)
def test_random_bytes_raise_only_capsule_errors(data):
    check(data, "random")


@settings(max_examples=120, **SETTINGS)
@given(mutated())
def test_mutations_of_a_valid_capsule_raise_only_capsule_errors_and_never_return_other_text(data):
    check(data, "mutation")


def test_the_genuine_capsule_passes_the_same_checks():
    """The properties can fail: the unmutated capsule opens and every chunk comes back."""
    with open_capsule(VECTORS / "ok" / "capsule", **KEYS) as capsule:
        assert [capsule.read(i, now=EXPECT.now).text for i in range(capsule.manifest.n_chunks)] == list(genuine())
    verify_capsule(VECTORS / "ok" / "capsule", trusted_keys=KEYS["trusted_keys"], now=EXPECT.now, full=True)


# -- long run (-m fuzz) ---------------------------------------------------------------------------


@pytest.fixture
def memoised_model(monkeypatch):
    import edge.capsule as capsule_module

    find = lru_cache(maxsize=4)(capsule_module.find_model_dir)
    opener = lru_cache(maxsize=4)(capsule_module.QueryEmbedder.open)
    monkeypatch.setattr(capsule_module, "find_model_dir", lambda sha256, search_path=None: find(sha256))
    monkeypatch.setattr(capsule_module.QueryEmbedder, "open", lambda *a, **kw: opener(*a, **kw))
    yield
    report = Path(os.environ.get("EDGE_FUZZ_REPORT", Path(tempfile.gettempdir()) / "fuzz-report.json"))
    previous = json.loads(report.read_text()) if report.exists() else {}
    for kind, n in COUNTS.items():
        previous[kind] = previous.get(kind, 0) + n
    COUNTS.clear()
    _write_atomically(report, json.dumps(previous))


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, **SETTINGS)
@given(data=RANDOM_INPUTS)
def test_fuzz_random_bytes(memoised_model, data):
    check(data, "random")


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, **SETTINGS)
@given(data=mutated())
def test_fuzz_mutations(memoised_model, data):
    check(data, "mutation")


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once: pytest-xdist workers may update the report together."""
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_text(text)
    os.replace(part, path)
