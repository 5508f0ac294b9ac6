"""parse_manifest raises nothing but CapsuleFormatError, whatever JSON it is given (ISSUE9 §1).

As python-tuf's metadata parsing does, a malformed manifest must end in the one documented
error, never a KeyError, TypeError or RecursionError. Hypothesis mutates a valid manifest
(replacing, deleting and adding values anywhere in it) and also feeds arbitrary JSON values.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import CapsuleFormatError
from edge.manifest import Manifest, parse_manifest
from tests.conftest import sample_manifest_dict


def _raw(obj) -> bytes:
    """JSON in canonical form (sorted keys, no spaces) without canonical_json's value checks."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2, max_value=1 << 20), st.integers(min_value=0, max_value=1 << 64),
    st.sampled_from([0, 1, 2, 3, 255, 511, 512, 513, 4096, (1 << 31) - 1, 1 << 31, (1 << 53) - 1, 1 << 53]),
    st.text(max_size=40),
    st.sampled_from(["", "x25519", "scrypt", "angular", "annoy", "pca", "h264", "hevc", "mp4", "none", "L",
                     "AAAA", "ab" * 32, "2026-11-01T00:00:00Z", "9999-12-31T23:59:59Z", "0000-00-00T00:00:00Z"]),
)
KEYS = st.one_of(st.text(max_size=12), st.sampled_from(["optional", "type", "body", "epk", "salt", "log_n", "\n",
                                                       "\x1b[2J", "a" * 300]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(KEYS, inner, max_size=4)),
                    max_leaves=12)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for n, value in enumerate(obj):
            yield from _paths(value, prefix + (n,))


def _projected() -> dict:
    m = sample_manifest_dict()
    m["index"].update(dim=64, projection={"method": "pca", "dim_in": 384, "dim_out": 256})
    m["recipients"].append({"type": "scrypt", "salt": "AAECAwQFBgcICQoLDA0ODw==", "log_n": 15,
                            "body": m["recipients"][0]["body"]})
    m["rules"] = {"query_limits": {"optional": False, "max_k": 5}}
    return m


BASES = [sample_manifest_dict, _projected]


@st.composite
def mutated(draw):
    m = draw(st.sampled_from(BASES))()
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(m))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            continue
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        if action == "replace":
            parent[path[-1]] = draw(JSON)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(KEYS)] = draw(JSON)
        else:
            parent.append(draw(JSON))
    return m


def _only_format_errors(data: bytes) -> None:
    try:
        assert isinstance(parse_manifest(data), Manifest)
    except CapsuleFormatError as exc:
        message = str(exc)
        assert message.isprintable() and len(message) < 400, message


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated())
def test_mutated_manifests_raise_only_capsule_format_error(manifest):
    _only_format_errors(_raw(manifest))


@FUZZ
@given(JSON)
def test_arbitrary_json_raises_only_capsule_format_error(value):
    _only_format_errors(_raw(value))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_capsule_format_error(data):
    _only_format_errors(data)


def test_deep_nesting_is_a_format_error():
    # Every depth around the recursion limit: the JSON decoder may accept a nesting that
    # re-encoding (a few frames deeper) does not.
    limit = sys.getrecursionlimit()
    for depth in [10, 500, *range(limit - 120, limit + 20), 100_000]:
        for data in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
            with pytest.raises(CapsuleFormatError):
                parse_manifest(data)


@pytest.mark.parametrize("key", ["\n", "\x1b[2J", "a" * 1000])
def test_unknown_keys_are_shown_escaped_and_bounded(key):
    m = sample_manifest_dict()
    m["model"][key] = 1
    with pytest.raises(CapsuleFormatError, match="^manifest.model has unknown key") as err:
        parse_manifest(_raw(m))
    assert str(err.value).isprintable() and len(str(err.value)) < 100
