"""Chunks that know their section: rules 0 and 5 of firmware_tools.chunking.

Real documents (tests/data/docs, examples/python-faq) with their own headings, the real
all-MiniLM-L6-v2 tokenizer where it matters, and the word tokenizer of test_chunking for
rules whose token counts must be obvious.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_tools.chunking import (
    TokenizerOffsets,
    _heading_block_end,
    chunk_document,
    chunk_documents,
)
from firmware_tools.documents import Heading, iter_documents, read_document

from .test_chunking import _check_invariants, word_offsets

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "python-faq"
HEADINGS = REPO / "tests" / "data" / "docs" / "headings"
GOLDEN = REPO / "tests" / "data" / "chunking" / "golden-no-headings.json"
TOKENIZER = REPO / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"


@pytest.fixture(scope="module")
def minilm() -> TokenizerOffsets:
    if not TOKENIZER.is_file():
        pytest.skip("all-MiniLM-L6-v2 tokenizer.json not available")
    return TokenizerOffsets.from_file(TOKENIZER)


@pytest.fixture(scope="module")
def sectioned_docs(tmp_path_factory) -> list:
    """Real documents with headings: the Python FAQ as .rst, Markdown, rst, HTML."""
    folder = tmp_path_factory.mktemp("faq-rst")
    for source in sorted((EXAMPLE / "docs").glob("*.txt")):
        shutil.copyfile(source, folder / (source.stem + ".rst"))
    docs = list(iter_documents([folder]))
    for name in ("clippy-readme.md", "tutorial-venv.rst", "debian-faq-kernel.html"):
        docs.append(read_document(HEADINGS / name))
    assert all(doc.headings for doc in docs)
    return docs


def _expected_path(headings, at: int) -> tuple[str, ...]:
    stack = []
    for h in headings:
        if h.char_start > at:
            break
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
    return tuple(h.title for h in stack)


# --- without headings, nothing changes ------------------------------------------------


def test_chunks_without_headings_are_those_recorded_before_headings_existed(minilm):
    """Byte-identical to chunking.py at 27dc05e (tests/data/chunking/record_golden.py)."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    tokenizers = {"minilm": minilm, "words": word_offsets}
    n_checked = 0
    for key, expected in golden.items():
        name, what = key.split(" ", 1)
        doc = read_document(REPO / name)
        if what == "text_sha256":
            assert hashlib.sha256(doc.text.encode("utf-8")).hexdigest() == expected, name
            continue
        tokenizer, sizes = what.split(" ")
        max_tokens, overlap = map(int, sizes.split("/"))
        for chunks in (
            chunk_document(doc.text, doc_index=0, token_offsets=tokenizers[tokenizer],
                           max_tokens=max_tokens, overlap_tokens=overlap),
            list(chunk_documents([doc.text], token_offsets=tokenizers[tokenizer],
                                 max_tokens=max_tokens, overlap_tokens=overlap)),
        ):
            assert [[c.char_start, c.char_end, c.n_tokens] for c in chunks] == expected, key
            assert all(c.heading_path == () for c in chunks)
        n_checked += 1
    assert n_checked == 24


# --- rule 0: a heading is a hard boundary, kept with its body ---------------------------


@pytest.mark.parametrize(("max_tokens", "overlap"), [(200, 32), (48, 8), (128, 0)])
def test_no_chunk_spans_a_heading_and_each_section_starts_a_chunk(
    minilm, sectioned_docs, max_tokens, overlap
):
    chunks = list(chunk_documents(sectioned_docs, token_offsets=minilm,
                                  token_offsets_batch=minilm.batch,
                                  max_tokens=max_tokens, overlap_tokens=overlap))
    for doc_index, doc in enumerate(sectioned_docs):
        mine = [c for c in chunks if c.doc_index == doc_index]
        _check_invariants(doc.text, mine, max_tokens, first_id=mine[0].chunk_id)
        starts = {c.char_start for c in mine}
        for h in doc.headings:
            assert not any(c.char_start < h.char_start < c.char_end for c in mine), h
            assert h.char_start in starts, h  # headings start at line starts, never blank
        for c in mine:
            assert c.heading_path == _expected_path(doc.headings, c.char_start)


def test_chunk_starting_at_a_heading_holds_the_start_of_its_body(minilm, sectioned_docs):
    for doc in sectioned_docs:
        chunks = chunk_document(doc.text, doc_index=0, token_offsets=minilm,
                                max_tokens=48, overlap_tokens=8, headings=doc.headings)
        ends = [h.char_start for h in doc.headings[1:]] + [len(doc.text)]
        for h, section_end in zip(doc.headings, ends, strict=True):
            first = next(c for c in chunks if c.char_start == h.char_start)
            block_end = _heading_block_end(doc.text, h.char_start, section_end)
            body = doc.text[block_end:section_end]
            heading_tokens = len(minilm(doc.text[h.char_start:block_end]))
            if body.strip() and heading_tokens < 48:
                assert first.char_end > block_end, (doc.name, h)
                assert doc.text[block_end : first.char_end].strip()


def test_rst_heading_block_is_one_sentence_with_overline_and_underline(minilm):
    doc = read_document(HEADINGS / "tutorial-venv.rst")
    chunks = chunk_document(doc.text, doc_index=0, token_offsets=minilm, headings=doc.headings)
    title = "*" * 33 + "\nVirtual Environments and Packages\n" + "*" * 33
    # The level-1 title is followed at once by the level-2 "Introduction": a chunk of its own.
    assert [(c.text, c.heading_path) for c in chunks[:2]] == [
        (".. _tut-venv:", ()),
        (title, ("Virtual Environments and Packages",)),
    ]
    assert chunks[2].text.startswith("Introduction\n============\n\nPython applications will")
    assert chunks[2].heading_path == ("Virtual Environments and Packages", "Introduction")


def test_body_sentence_is_cut_to_stay_with_its_heading():
    text = "# Fault codes\n\nThe drive stops and shows the code on its panel at once."
    headings = (Heading(0, 1, "Fault codes"),)
    # Heading: 3 word tokens ("#", "Fault", "codes"); the sentence: 13. max_tokens 8.
    chunks = chunk_document(text, doc_index=0, token_offsets=word_offsets, max_tokens=8,
                            overlap_tokens=0, headings=headings)
    assert [c.text for c in chunks] == [
        "# Fault codes\n\nThe drive stops and shows",
        "the code on its panel at once.",
    ]
    assert [c.n_tokens for c in chunks] == [8, 8]
    assert {c.heading_path for c in chunks} == {("Fault codes",)}


def test_overlap_never_carries_text_across_a_heading():
    text = (
        "Intro one here. Intro two here. Intro three here.\n\n"
        "# Part\n\nBody one here. Body two here. Body three here. Body four here."
    )
    part = text.index("# Part")
    headings = (Heading(part, 1, "Part"),)
    chunks = chunk_document(text, doc_index=0, token_offsets=word_offsets, max_tokens=10,
                            overlap_tokens=4, headings=headings)
    assert [c.text for c in chunks] == [
        "Intro one here. Intro two here.",
        "Intro two here. Intro three here.",
        "# Part\n\nBody one here. Body two here.",
        "Body two here. Body three here.",
        "Body three here. Body four here.",
    ]
    assert [c.heading_path for c in chunks] == [(), (), ("Part",), ("Part",), ("Part",)]


def test_heading_path_is_a_stack_by_level():
    text = "\n\n".join(
        ["# Manual", "Preface.", "## Fault codes", "### E-4021 Encoder signal lost",
         "Check the cable.", "### E-4022", "Check the fuse.", "## Parameters",
         "#### P0304", "Rated voltage.", "# Appendix", "Tables."]
    )
    lines = text.split("\n\n")
    headings = tuple(
        Heading(text.index(line), len(line) - len(line.lstrip("#")), line.lstrip("# "))
        for line in lines if line.startswith("#")
    )
    chunks = chunk_document(text, doc_index=0, token_offsets=word_offsets, max_tokens=50,
                            overlap_tokens=0, headings=headings)
    assert [(c.text.split("\n")[0], c.heading_path) for c in chunks] == [
        ("# Manual", ("Manual",)),
        ("## Fault codes", ("Manual", "Fault codes")),
        ("### E-4021 Encoder signal lost", ("Manual", "Fault codes", "E-4021 Encoder signal lost")),
        ("### E-4022", ("Manual", "Fault codes", "E-4022")),
        ("## Parameters", ("Manual", "Parameters")),
        ("#### P0304", ("Manual", "Parameters", "P0304")),
        ("# Appendix", ("Appendix",)),
    ]


# --- chunk_documents and arguments -------------------------------------------------------


def test_chunk_documents_uses_document_headings_and_strings_have_none(minilm, sectioned_docs):
    doc = sectioned_docs[-2]  # tutorial-venv.rst
    from_doc = list(chunk_documents([doc], token_offsets=minilm))
    assert from_doc == chunk_document(doc.text, doc_index=0, token_offsets=minilm,
                                      headings=doc.headings)
    assert any(c.heading_path for c in from_doc)
    from_text = list(chunk_documents([doc.text], token_offsets=minilm))
    assert from_text == chunk_document(doc.text, doc_index=0, token_offsets=minilm)


def test_batch_tokenization_gives_the_same_chunks_with_headings(minilm, sectioned_docs):
    single = list(chunk_documents(sectioned_docs, token_offsets=minilm))
    batched = list(chunk_documents(sectioned_docs, token_offsets=minilm,
                                   token_offsets_batch=minilm.batch, batch_size=3))
    assert single == batched


def test_example_answer_snippets_stay_in_one_chunk_with_headings(minilm, sectioned_docs):
    faq = [d for d in sectioned_docs if d.media_type == "text/x-rst" and d.name.count(".") == 1]
    chunks = list(chunk_documents(faq, token_offsets=minilm))
    lines = (EXAMPLE / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    for q in map(json.loads, lines):
        holders = [c for c in chunks if q["answer_snippet"] in c.text]
        assert holders and {faq[c.doc_index].name for c in holders} == {
            q["file"].replace(".txt", ".rst")
        }
        # The chunk holding the answer's start lies in the question's section.
        assert all(q["question"] in c.heading_path for c in holders)


@pytest.mark.parametrize(
    ("headings", "fragment"),
    [
        ((Heading(5, 1, "b"), Heading(5, 2, "c")), "must increase"),
        ((Heading(9, 1, "b"), Heading(2, 1, "c")), "must increase"),
        ((Heading(-1, 1, "b"),), "must increase"),
        ((Heading(40, 1, "b"),), "must increase"),
        ((Heading(0, 0, "b"),), "level must be 1-6"),
        ((Heading(0, 7, "b"),), "level must be 1-6"),
    ],
)
def test_invalid_headings_raise_value_error(headings, fragment):
    text = "One sentence. Another one here."
    with pytest.raises(ValueError, match=fragment):
        chunk_document(text, doc_index=0, token_offsets=word_offsets, headings=headings)


# --- property test ---------------------------------------------------------------------

_LINES = st.lists(
    st.text(alphabet=st.sampled_from([*"abcXY é.!?=-#*\"')\t ", "日"]), max_size=30),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(lines=_LINES, picks=st.lists(st.integers(0, 24), max_size=8),
       levels=st.lists(st.integers(1, 6), min_size=8, max_size=8),
       max_tokens=st.integers(1, 12), overlap=st.integers(0, 11))
def test_chunks_with_headings_are_exact_slices_for_any_text(lines, picks, levels, max_tokens,
                                                             overlap):
    text = "\n".join(lines)
    overlap = min(overlap, max_tokens - 1)
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    chosen = sorted({starts[p] for p in picks if p < len(starts) and starts[p] < len(text)})
    headings = tuple(Heading(s, levels[i], f"h{i}") for i, s in enumerate(chosen))
    chunks = chunk_document(text, doc_index=0, token_offsets=word_offsets, max_tokens=max_tokens,
                            overlap_tokens=overlap, headings=headings)
    _check_invariants(text, chunks, max_tokens)
    for h in headings:
        assert not any(c.char_start < h.char_start < c.char_end for c in chunks)
    for c in chunks:
        assert c.heading_path == _expected_path(headings, c.char_start)
    if not headings:
        assert chunks == chunk_document(text, doc_index=0, token_offsets=word_offsets,
                                        max_tokens=max_tokens, overlap_tokens=overlap)
