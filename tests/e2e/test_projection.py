"""The projected index (PCA + Annoy or binary codes + int8 re-ranking, FORMAT.md §4.4, §4.4.1) end to end
on the FAQ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge import open_capsule
from edge.capsule import verify_capsule
from edge.errors import IntegrityError
from edge.index import BinaryCodeIndex
from edge.sealed import stream_plaintext_bytes
from edge.store import Store

from ..conftest import FAQ_DOCS, build_test_capsule
from .test_real_corpus import NOW, QUESTIONS


PROJECTED = {"annoy": dict(projection=True, index_format="annoy", ann_dim=32, refine_dim=128),
             # 356 chunks: 100 candidates, so that the scan's choice matters
             "binary-codes": dict(projection=True, index_format="binary-codes", ann_dim=64, refine_dim=128,
                                  n_candidates=100)}


@pytest.fixture(scope="module", params=[("annoy", True), ("annoy", False), ("binary-codes", True),
                                        ("binary-codes", False)],
                ids=["annoy-encrypted", "annoy-plain", "codes-encrypted", "codes-plain"])
def projected(request, tmp_path_factory):
    """The encrypted ones with the builder's default fusion (format 1.4: a dense-first margin), the
    plain ones with ``dense_first_margin=0`` (the index's own format, 1.2 or 1.3)."""
    index_format, encrypt = request.param
    tmp = tmp_path_factory.mktemp("projected")
    margin = {} if encrypt else {"dense_first_margin": 0}
    built = build_test_capsule(FAQ_DOCS, tmp / "faq.capsule", keys_dir=tmp / "keys", encrypt_index=encrypt,
                               **PROJECTED[index_format], **margin)
    built.overrides = dict(PROJECTED[index_format], encrypt_index=encrypt, **margin)
    return built


def _open(built):
    return open_capsule(built.path, trusted_keys=[built.publisher_key.public_key()],
                        identities=[built.device_key], now=NOW)


def test_projected_capsule_answers_faq_questions(projected):
    with _open(projected) as capsule:
        assert capsule.manifest.index.projection is not None
        assert capsule.manifest.index.dim == projected.overrides["ann_dim"]
        assert capsule.manifest.index.format == projected.overrides["index_format"]
        found = 0
        for item in QUESTIONS:
            hits = capsule.search(item["question"], k=5, mode="dense")
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
            found += any(item["answer_snippet"] in h.text and h.document.endswith(item["file"]) for h in hits)
        assert found >= len(QUESTIONS) - 1, f"{found}/{len(QUESTIONS)} answers in the top 5"


def test_projected_scores_are_the_exact_reranked_cosines(projected):
    with _open(projected) as capsule:
        index = capsule._index
        question = QUESTIONS[0]["question"]
        z = index.projection.project(capsule._embedder.embed([question]))[0]
        rows = np.stack([index.item_vector(i) for i in range(capsule.manifest.n_chunks)])
        exact = rows @ z / (np.linalg.norm(rows, axis=1) * np.linalg.norm(z))
        hits = capsule.search(question, k=5, mode="dense")
        for hit in hits:
            assert hit.score == pytest.approx(float(exact[hit.chunk_id]), abs=1e-5)
        assert hits[0].chunk_id == int(np.argmax(exact))


def test_projected_index_is_smaller_and_verifies_fully(projected, faq_capsule):
    sizes = projected.result.section_bytes
    full = faq_capsule.result.section_bytes
    assert sizes["INDX"] + sizes["VECS"] + sizes["PROJ"] < full["INDX"]
    report = verify_capsule(projected.path, trusted_keys=[projected.publisher_key.public_key()],
                            identities=[projected.device_key], now=NOW, full=True)
    assert report.n_chunks_checked == report.manifest.n_chunks


def test_projected_build_is_byte_identical(projected, tmp_path):
    again = build_test_capsule(FAQ_DOCS, tmp_path / "faq.capsule", keys_dir=tmp_path / "keys", **projected.overrides)
    assert again.path.read_bytes() == projected.path.read_bytes()


def test_plain_vecs_are_copied_by_path_and_mapped_in_place_from_the_store(projected, tmp_path):
    """Opened by path, VECS is read (and hashed) into memory and charged; a store object maps it."""
    with _open(projected) as capsule:
        vecs_bytes = capsule.manifest.n_chunks * 128  # int8 rows of refine_dim
        assert capsule.memory_plan["vecs"] == vecs_bytes
    keys = dict(identities=[projected.device_key], trusted_keys=[projected.publisher_key.public_key()])
    if projected.overrides["encrypt_index"]:
        # installed, an encrypted index and VECS are still decrypted into memory: both are charged
        # (the plan charged an installed encrypted index nothing until 2026-12-07)
        with Store(tmp_path / "store") as store:
            entry = store.install(projected.path, now=NOW, **keys)
            with store.open(entry.name, now=NOW, **keys) as capsule:
                index_plaintext = stream_plaintext_bytes(capsule._cf.sections["INDX"].length)
                scratch = (BinaryCodeIndex.scratch_bytes(capsule.manifest.n_chunks)
                           if projected.overrides["index_format"] == "binary-codes" else 0)
                assert capsule.memory_plan["index"] == index_plaintext + scratch
                assert capsule.memory_plan["vecs"] == vecs_bytes
        return
    with Store(tmp_path / "store") as store:
        entry = store.install(projected.path, now=NOW, **keys)
        with store.open(entry.name, now=NOW, **keys) as capsule:
            # binary codes are mapped in place like VECS; only the scan's scratch is charged
            scratch = (BinaryCodeIndex.scratch_bytes(capsule.manifest.n_chunks)
                       if projected.overrides["index_format"] == "binary-codes" else 0)
            assert capsule.memory_plan["vecs"] == 0 and capsule.memory_plan["index"] == scratch
            assert (Path(capsule.path).parent / "index.annoy").exists() == (scratch == 0)
            planted = Path(capsule.path).parent / "index.annoy"
            hits = capsule.search(QUESTIONS[0]["question"], k=3, mode="dense")
            assert hits and hits[0].score > 0.3
        if scratch:  # an index.annoy planted beside a binary-codes object is refused, as beside an encrypted one
            planted.write_bytes(b"\0" * 4096)
            with pytest.raises(IntegrityError, match="binary codes"):
                store.open(entry.name, now=NOW, **keys)


def test_format_minor_is_1_4_with_a_dense_first_margin_else_1_3_for_binary_codes_and_1_2_for_annoy(projected):
    minor = int.from_bytes(projected.path.read_bytes()[10:12], "little")
    margin = projected.overrides.get("dense_first_margin", 80)
    assert minor == (4 if margin else 3 if projected.overrides["index_format"] == "binary-codes" else 2)
    with _open(projected) as capsule:  # this runtime reads each, and searches it hybrid
        assert capsule.manifest.lexical.fusion.dense_first_margin == margin
        hits = capsule.search(QUESTIONS[0]["question"], k=3)
        assert hits and hits.mode == "hybrid"


def test_binary_codes_index_is_a_fraction_of_annoys(projected):
    sizes = projected.result.section_bytes
    if projected.overrides["index_format"] == "binary-codes":
        # 8 bytes of code per chunk, plus the STREAM tag when encrypted; Annoy's 32-d nodes are 140 bytes
        assert sizes["INDX"] - (16 if projected.overrides["encrypt_index"] else 0) == 8 * projected.result.n_chunks
