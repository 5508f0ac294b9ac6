"""Every integer parse_manifest accepts is one this runtime can honour (ISSUE9 §1, FORMAT.md §10).

``model.max_tokens`` used to be accepted up to 8192 while the embedder takes 3..512, and
``index.search_k`` up to 2^31 while Annoy takes a C ``int``: a publisher-signed manifest gave a
traceback at open or at the first search. Each numeric field is tried one past each bound.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from annoy import AnnoyIndex
from cryptography.hazmat.primitives import serialization

from edge import open_capsule
from edge.embedder import MAX_POSITIONS
from edge.errors import CapsuleFormatError
from edge.manifest import MAX_INT, MAX_ITEMS, MAX_SEARCH_K, MODEL_MAX_TOKENS_RANGE, canonical_json, parse_manifest
from tests.vectors.generate import Draft
from tests.conftest import sample_manifest_dict

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def _raw(obj) -> bytes:
    """Canonical JSON form without canonical_json's own integer check (to write out-of-range values)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _projected() -> dict:
    m = sample_manifest_dict()
    m["index"].update(dim=64, projection={"method": "pca", "dim_in": 384, "dim_out": 256})
    return m


def _scrypt() -> dict:
    m = sample_manifest_dict()
    m["recipients"] = [{"type": "scrypt", "salt": "AAECAwQFBgcICQoLDA0ODw==", "log_n": 15,
                        "body": m["recipients"][0]["body"]}]
    return m


def _lexical() -> dict:
    m = sample_manifest_dict()
    m["lexical"] = {"format": "sqlite-fts5", "normaliser": "ident-v1", "plaintext_bytes": 8192, "n_rows": 10,
                    "page_bytes": 4096,
                    "fusion": {"method": "rrf", "k": 60, "dense_weight": 1, "lexical_weight": 1, "depth": 50}}
    return m


def _lexical_exact_first() -> dict:
    m = _lexical()
    m["lexical"]["fusion"]["exact_first_max_tokens"] = 3
    return m


def _lexical_dense_first() -> dict:
    m = _lexical()
    m["lexical"]["fusion"]["dense_first_margin"] = 80
    return m


#: (base manifest, path, low, high): every integer field parse_manifest reads, with its bounds.
FIELDS = [
    (sample_manifest_dict, ("version",), 1, MAX_INT),
    (sample_manifest_dict, ("model", "dim"), 1, 4096),
    (sample_manifest_dict, ("model", "max_tokens"), *MODEL_MAX_TOKENS_RANGE),
    (sample_manifest_dict, ("chunking", "max_tokens"), 1, 8192),
    (sample_manifest_dict, ("chunking", "overlap_tokens"), 0, 8192),
    (sample_manifest_dict, ("n_chunks",), 1, MAX_ITEMS),
    (sample_manifest_dict, ("n_documents",), 1, 1 << 24),
    (sample_manifest_dict, ("index", "dim"), 1, 4096),
    (sample_manifest_dict, ("index", "n_items"), 1, MAX_ITEMS),
    (sample_manifest_dict, ("index", "n_trees"), 1, 1024),
    (sample_manifest_dict, ("index", "seed"), 0, (1 << 31) - 1),
    (sample_manifest_dict, ("index", "search_k"), 1, MAX_SEARCH_K),
    (sample_manifest_dict, ("index", "n_candidates"), 1, 65536),
    (_projected, ("index", "projection", "dim_in"), 1, 4096),
    (_projected, ("index", "projection", "dim_out"), 1, 4096),
    (sample_manifest_dict, ("video", "gop"), 1, 1),
    (sample_manifest_dict, ("video", "width"), 21, 4096),
    (sample_manifest_dict, ("video", "height"), 21, 4096),
    (sample_manifest_dict, ("video", "crf"), 0, 63),
    (sample_manifest_dict, ("video", "fps"), 1, 240),
    (sample_manifest_dict, ("video", "n_frames"), 1, 1 << 24),
    (sample_manifest_dict, ("video", "qr", "version"), 1, 40),
    (sample_manifest_dict, ("video", "qr", "pixels_per_module"), 1, 16),
    (sample_manifest_dict, ("video", "qr", "quiet_zone_modules"), 0, 16),
    (sample_manifest_dict, ("payload", "max_plaintext_bytes"), 16, 1 << 20),
    (sample_manifest_dict, ("payload", "dictionary_bytes"), 0, 1 << 20),
    (sample_manifest_dict, ("sections", "INDX", "length"), 0, MAX_INT),
    (_scrypt, ("recipients", 0, "log_n"), 10, 18),
    (_lexical, ("lexical", "fusion", "k"), 1, 1000),
    (_lexical, ("lexical", "fusion", "dense_weight"), 0, 1000),
    (_lexical, ("lexical", "fusion", "lexical_weight"), 0, 1000),
    (_lexical, ("lexical", "fusion", "depth"), 1, 1000),
    (_lexical_exact_first, ("lexical", "fusion", "exact_first_max_tokens"), 0, 32),
    (_lexical_dense_first, ("lexical", "fusion", "dense_first_margin"), 1, 1000),
]


@pytest.mark.parametrize("change, message", [
    ({"plaintext_bytes": 4 << 30 | 4096}, "plaintext_bytes"),
    ({"plaintext_bytes": 0}, "plaintext_bytes"),
    ({"plaintext_bytes": 8192 + 512}, "power of two dividing"),
    ({"page_bytes": 3000}, "power of two dividing"),
    ({"page_bytes": 1 << 17}, "page_bytes"),
    ({"n_rows": 11}, "n_rows is 11, n_chunks is 10"),
    ({"format": "tantivy"}, "format"),
    ({"normaliser": "ident-v2"}, "normaliser"),
    ({"fusion": {"method": "rrf", "k": 60, "dense_weight": 0, "lexical_weight": 0, "depth": 50}}, "both 0"),
    ({"fusion": {"method": "combsum", "k": 60, "dense_weight": 1, "lexical_weight": 1, "depth": 50}}, "method"),
    ({"extra": 1}, "extra"),
])
def test_lexical_object_lies_are_refused(change, message):
    m = _lexical()
    parse_manifest(canonical_json(m))
    m["lexical"].update(change)
    with pytest.raises(CapsuleFormatError, match=message):
        parse_manifest(_raw(m))


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _name(path) -> str:
    return "manifest" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


CASES = [(base, path, value) for base, path, low, high in FIELDS for value in (low - 1, high + 1)]


@pytest.mark.parametrize("base, path, value", CASES,
                         ids=[f"{'.'.join(map(str, p))}={v}" for _, p, v in CASES])
def test_one_past_each_bound_is_refused_in_one_line(base, path, value):
    m = base()
    parse_manifest(canonical_json(m))  # the base itself is fine
    _set(m, path, value)
    with pytest.raises(CapsuleFormatError) as err:
        parse_manifest(_raw(m))
    message = str(err.value)
    assert "\n" not in message and not message.endswith(".")
    if 0 <= value <= MAX_INT:  # negative or huge integers are refused as not canonical, before any field
        assert message.startswith(_name(path)), message


@pytest.mark.parametrize("path, value", [
    (("model", "max_tokens"), 3), (("model", "max_tokens"), 512), (("index", "search_k"), MAX_SEARCH_K),
])
def test_tightened_bounds_themselves_are_accepted(path, value):
    m = sample_manifest_dict()
    _set(m, path, value)
    assert parse_manifest(canonical_json(m))


def test_largest_item_count_is_accepted():
    m = sample_manifest_dict()
    m["n_chunks"] = m["index"]["n_items"] = MAX_ITEMS
    assert parse_manifest(canonical_json(m)).index.n_items == MAX_ITEMS


def test_bounds_are_the_consumers_bounds():
    assert MODEL_MAX_TOKENS_RANGE[1] == MAX_POSITIONS  # the embedder's position table
    annoy = AnnoyIndex(2, "angular")
    annoy.add_item(0, [1.0, 0.0])
    annoy.build(1)
    assert annoy.get_nns_by_vector([1.0, 0.0], 1, search_k=MAX_SEARCH_K) == [0]
    with pytest.raises(OverflowError):
        annoy.get_nns_by_vector([1.0, 0.0], 1, search_k=MAX_SEARCH_K + 1)


def _key(name: str, private: bool):
    data = (VECTORS / "keys" / f"{name}.{'key' if private else 'pub'}").read_bytes()
    if private:
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_pem_public_key(data)


@pytest.mark.parametrize("path, value", [(("model", "max_tokens"), 513), (("model", "max_tokens"), 2),
                                         (("index", "search_k"), 1 << 31)])
def test_signed_capsule_with_a_value_the_runtime_cannot_honour_is_refused_at_open(path, value, tmp_path):
    draft = Draft((VECTORS / "ok" / "capsule").read_bytes())
    _set(draft.manifest, path, value)
    capsule = tmp_path / "signed.capsule"
    capsule.write_bytes(draft.build())  # re-signed by test-publisher-1
    with pytest.raises(CapsuleFormatError, match=rf"^{_name(path)} must be an integer in \d+\.\.\d+$"):
        open_capsule(capsule, trusted_keys=[_key("test-publisher-1", False)],
                     identities=[_key("test-device", True)], now=datetime(2030, 1, 1, tzinfo=timezone.utc))


def _binary_codes() -> dict:
    m = _projected()
    m["index"].update(format="binary-codes", metric="hamming", dim=128, n_candidates=400)
    for key in ("n_trees", "seed", "search_k"):
        del m["index"][key]
    return m


def test_binary_codes_index_parses_without_annoys_fields():
    info = parse_manifest(canonical_json(_binary_codes())).index
    assert (info.format, info.dim, info.metric, info.n_trees, info.search_k) == ("binary-codes", 128, "hamming", 0, 0)
    assert info.codes_plaintext_bytes == info.n_items * 16
    assert parse_manifest(canonical_json(_binary_codes())).to_json()["index"] == _binary_codes()["index"]


@pytest.mark.parametrize("change, message", [
    ({"n_trees": 8}, "n_trees"),  # Annoy's fields are unknown keys here (FORMAT.md §4.4.1)
    ({"search_k": 8000}, "search_k"),
    ({"metric": "angular"}, "metric"),
    ({"dim": 96}, "whole 64-bit words"),
    ({"dim": 320}, "dim_out"),
    ({"projection": None}, "needs a projection"),
    ({"format": "hnsw"}, "format"),
])
def test_binary_codes_index_lies_are_refused(change, message):
    m = _binary_codes()
    m["index"].update(change)
    with pytest.raises(CapsuleFormatError, match=message):
        parse_manifest(_raw(m))


def test_binary_codes_larger_than_4_gib_are_refused_before_anything_is_sized():
    m = _binary_codes()
    m["n_chunks"] = m["index"]["n_items"] = MAX_ITEMS
    m["index"]["dim"] = 256
    with pytest.raises(CapsuleFormatError, match="more than"):
        parse_manifest(_raw(m))
