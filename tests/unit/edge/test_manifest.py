"""Manifest canonical JSON and strict parsing (FORMAT.md §4, §9)."""

from datetime import datetime, timezone

import pytest

from edge.errors import CapsuleFormatError, ExpiredCapsuleError, NotYetValidError, RuleViolationError
from edge.manifest import (
    SignatureEntry,
    canonical_json,
    parse_manifest,
    parse_signatures,
    signatures_to_bytes,
)


def test_valid_manifest_parses(manifest_dict):
    m = parse_manifest(canonical_json(manifest_dict))
    assert m.version == 3 and m.index.node_bytes == 12 + 4 * 384
    assert m.expires_at == datetime(2027, 11, 1, tzinfo=timezone.utc)
    assert m.recipients[0].type == "x25519" and len(m.recipients[0].epk) == 32


def test_non_canonical_whitespace_is_refused(manifest_dict):
    data = canonical_json(manifest_dict).replace(b'"name":"sample"', b'"name": "sample"')
    with pytest.raises(CapsuleFormatError, match="not in canonical JSON form"):
        parse_manifest(data)


def test_duplicate_key_is_refused(manifest_dict):
    data = canonical_json(manifest_dict).replace(b'"name":"sample"', b'"name":"sample","name":"other"')
    with pytest.raises(CapsuleFormatError, match="duplicate key 'name'"):
        parse_manifest(data)


def test_float_is_refused(manifest_dict):
    data = canonical_json(manifest_dict).replace(b'"version":3', b'"version":3.0')
    with pytest.raises(CapsuleFormatError, match="float"):
        parse_manifest(data)


def test_unknown_field_is_refused(manifest_dict):
    manifest_dict["surprise"] = 1
    with pytest.raises(CapsuleFormatError, match="unknown key"):
        parse_manifest(canonical_json(manifest_dict))


@pytest.mark.parametrize("path, value, message", [
    (("capsule_id",), "XYZ", "capsule_id is malformed"),
    (("version",), 0, "version must be an integer"),
    (("expires_at",), "2027-11-01 00:00:00", "expires_at is malformed"),
    (("expires_at",), "2026-10-01T00:00:00Z", "expires_at is not after not_before"),
    (("index", "n_items"), 11, "n_items is 11, n_chunks is 10"),
    (("index", "metric"), "euclidean", "metric is 'euclidean'"),
    (("video", "gop"), 30, "gop must be an integer"),
    (("model", "family"), "pytorch", "family is 'pytorch', expected one of onnx, tflite"),
    (("video", "codec"), "vp9", "codec is 'vp9', expected one of h264, hevc"),
    (("recipients",), [], "list of 1..1024"),
    (("payload", "max_plaintext_bytes"), 1 << 30, "max_plaintext_bytes must be"),
])
def test_bad_fields_are_named(manifest_dict, path, value, message):
    target = manifest_dict
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CapsuleFormatError, match=message):
        parse_manifest(canonical_json(manifest_dict))


@pytest.mark.parametrize("family, codec", [("onnx", "h264"), ("tflite", "h264"), ("onnx", "hevc"), ("tflite", "hevc")])
def test_model_families_and_video_codecs_parse(manifest_dict, family, codec):
    manifest_dict["model"]["family"] = family
    manifest_dict["video"]["codec"] = codec
    manifest = parse_manifest(canonical_json(manifest_dict))
    assert (manifest.model.family, manifest.video.codec) == (family, codec)


def test_scrypt_work_factor_out_of_bounds_is_refused(manifest_dict):
    manifest_dict["recipients"] = [{"type": "scrypt", "salt": "AAAAAAAAAAAAAAAAAAAAAA==", "log_n": 30,
                                    "body": manifest_dict["recipients"][0]["body"]}]
    with pytest.raises(CapsuleFormatError, match="log_n must be an integer in 10..18"):
        parse_manifest(canonical_json(manifest_dict))


def test_validity_window(manifest_dict):
    m = parse_manifest(canonical_json(manifest_dict))
    m.check_validity(datetime(2027, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ExpiredCapsuleError, match=r"expired at 2027-11-01T00:00:00Z \(now 2027-11-01T00:00:00Z\)") as info:
        m.check_validity(datetime(2027, 11, 1, tzinfo=timezone.utc))
    assert info.value.expires_at == m.expires_at
    with pytest.raises(NotYetValidError, match="not valid before 2026-11-01T00:00:00Z"):
        m.check_validity(datetime(2026, 10, 31, 23, 59, 59, tzinfo=timezone.utc))


def test_unknown_required_rule_fails_closed_but_optional_passes(manifest_dict):
    manifest_dict["rules"] = {"future-rule": {"optional": True, "x": 1}}
    parse_manifest(canonical_json(manifest_dict)).check_rules()
    manifest_dict["rules"] = {"future-rule": {"optional": False}}
    with pytest.raises(RuleViolationError, match="requires rule 'future-rule'"):
        parse_manifest(canonical_json(manifest_dict)).check_rules()


def test_signatures_round_trip_and_reject_duplicates():
    entries = [SignatureEntry("aa" * 32, bytes(64)), SignatureEntry("bb" * 32, bytes(range(64)))]
    assert list(parse_signatures(signatures_to_bytes(entries))) == entries
    with pytest.raises(CapsuleFormatError, match="twice"):
        parse_signatures(signatures_to_bytes([entries[0], entries[0]]))


def test_canonical_json_refuses_floats_and_big_ints():
    with pytest.raises(ValueError):
        canonical_json({"a": 1.5})
    with pytest.raises(ValueError):
        canonical_json({"a": 1 << 60})


# --- canonical JSON is RFC 8785 (JCS) restricted to integers, checked against an independent implementation

import rfc8785  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge.manifest import canonical_json as _canonical_json  # noqa: E402

_JSON_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # no lone surrogates
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(0, (1 << 53) - 1) | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(_JSON)
def test_canonical_json_equals_rfc8785(obj):
    assert _canonical_json(obj) == rfc8785.dumps(obj)


def test_canonical_json_orders_keys_by_utf16_code_units_as_rfc8785_does():
    # U+FFFF sorts after U+1F600 by code point but before it by UTF-16 code units (0xFFFF > 0xD83D)
    obj = {"\uffff": 1, "\U0001F600": 2, "a": 3}
    assert _canonical_json(obj) == rfc8785.dumps(obj)
    assert _canonical_json(obj).index("\U0001F600".encode()) < _canonical_json(obj).index("\uffff".encode())


# --- the manifest has a writer beside its reader: parse . serialise round trips

import dataclasses  # noqa: E402

from edge.manifest import parse_manifest as _parse_manifest  # noqa: E402


def _without_raw(manifest):
    return dataclasses.replace(manifest, raw=b"")


def test_genuine_manifests_round_trip_byte_for_byte():
    from tests.conftest import ROOT
    from firmware_tools.cosign import read_sections

    paths = sorted((ROOT / "tests" / "vectors").glob("*/capsule"))
    n_checked = 0
    for path in paths:
        mani = read_sections(path.read_bytes())["MANI"]
        try:
            manifest = _parse_manifest(mani)
        except Exception:  # noqa: BLE001 - vectors that the parser refuses on purpose
            continue
        assert manifest.to_bytes() == mani, path
        n_checked += 1
    assert n_checked >= 50


@settings(max_examples=150, deadline=None)
@given(version=st.integers(1, (1 << 53) - 1), name=st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True),
       n_trees=st.integers(1, 1024), max_tokens=st.integers(3, 512), rules=st.dictionaries(
           st.sampled_from(["devices", "geofence", "operations", "x-y"]),
           st.fixed_dictionaries({"optional": st.booleans()}, optional={"zone": _JSON_TEXT}), max_size=3),
       extradata=st.binary(max_size=64), publisher=_JSON_TEXT)
def test_manifest_serialise_then_parse_is_identity(version, name, n_trees, max_tokens, rules, extradata, publisher):
    import base64

    from tests.conftest import sample_manifest_dict

    manifest_dict = sample_manifest_dict()
    manifest_dict.update(version=version, name=name, rules=rules)
    manifest_dict["index"]["n_trees"] = n_trees
    manifest_dict["model"]["max_tokens"] = max_tokens
    manifest_dict["video"]["extradata"] = base64.b64encode(extradata).decode()
    manifest_dict["publisher"]["name"] = publisher[:128]
    parsed = _parse_manifest(_canonical_json(manifest_dict))
    again = _parse_manifest(parsed.to_bytes())
    assert _without_raw(again) == _without_raw(parsed)
    assert parsed.to_json() == manifest_dict
