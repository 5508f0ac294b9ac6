"""Fusion and hit marking (edge/retrieval.py): RRF as Cormack et al. define it, exact identifier
matches first, highlights on the query's terms (FORMAT.md §4.6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.lexical import LexicalQuery
from edge.manifest import FusionInfo
from edge.retrieval import as_valid_text, fuse, mark

RRF = FusionInfo("rrf", 60, 1, 1, 50)


def test_rrf_scores_are_the_sum_of_reciprocal_ranks():
    fused = {f.chunk_id: f for f in fuse([7, 8, 9], [9, 7], exact=set(), fusion=RRF)}
    assert fused[7].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[9].score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[8].score == pytest.approx(1 / 62) and fused[8].lexical_rank is None
    assert [f.chunk_id for f in fuse([7, 8, 9], [9, 7], exact=set(), fusion=RRF)] == [7, 9, 8]


def test_weights_and_k_come_from_the_manifest():
    lexical_heavy = FusionInfo("rrf", 10, 1, 3, 50)
    assert [f.chunk_id for f in fuse([1, 2], [2, 1], exact=set(), fusion=lexical_heavy)] == [2, 1]
    dense_only = FusionInfo("rrf", 60, 1, 0, 50)
    assert [f.chunk_id for f in fuse([1, 2], [2, 1], exact=set(), fusion=dense_only)] == [1, 2]


def test_an_exact_identifier_match_ranks_first_even_when_both_rankings_put_it_last():
    order = [f.chunk_id for f in fuse([1, 2, 3], [1, 2, 3], exact={3}, fusion=RRF)]
    assert order == [3, 1, 2]
    # two chunks hold the identifier: fused order decides between them, both before the rest
    assert [f.chunk_id for f in fuse([1, 2, 3], [1, 2, 3], exact={3, 2}, fusion=RRF)] == [2, 3, 1]
    # an exact match that neither ranking reached is still kept
    assert [f.chunk_id for f in fuse([1], [1], exact={5}, fusion=RRF)][0] == 5


def test_without_exact_first_the_fused_order_stands_and_exact_chunks_are_only_marked():
    fused = fuse([1, 2, 3], [1, 2, 3], exact={3}, fusion=RRF, exact_first=False)
    assert [f.chunk_id for f in fused] == [1, 2, 3] and [f.exact for f in fused] == [False, False, True]


def test_exact_first_max_tokens_is_read_from_the_manifest_and_absent_means_always():
    from edge.manifest import MAX_EXACT_FIRST_TOKENS

    assert FusionInfo("rrf", 60, 1, 1, 50).exact_first_max_tokens == MAX_EXACT_FIRST_TOKENS
    assert "exact_first_max_tokens" not in lexical_to_json_of(FusionInfo("rrf", 60, 1, 1, 50))
    assert lexical_to_json_of(FusionInfo("rrf", 5, 1, 1, 20, 3))["exact_first_max_tokens"] == 3


#: RRF k=5, 3:2, depth 20, exact-first up to 3 tokens, dense first at a 0.080 lead: the builder's default.
DENSE_FIRST = FusionInfo("rrf", 5, 3, 2, 20, 3, 80)


def _order(fused):
    return [f.chunk_id for f in fused]


def test_a_confident_dense_answer_goes_first_and_the_rest_keep_their_fused_order():
    # RRF alone: 2 (dense 2nd, lexical 2nd) and 3 (lexical 1st) beat 1 (dense 1st, no lexical rank)
    rrf_alone = FusionInfo("rrf", 5, 3, 2, 20, 3, 0)
    assert _order(fuse([1, 2, 3], [3, 2, 9], exact=set(), fusion=rrf_alone, dense_scores=[0.8, 0.1, 0.0])) == \
        [2, 3, 1, 9]
    fused = fuse([1, 2, 3], [3, 2, 9], exact=set(), fusion=DENSE_FIRST, dense_scores=[0.80, 0.72, 0.60])
    assert _order(fused) == [1, 2, 3, 9]
    # scored as the best fused chunk, so scores never increase down the list (CapsuleSet merges by score)
    assert fused[0].score == fused[1].score and all(a.score >= b.score for a, b in zip(fused, fused[1:]))
    assert (fused[0].dense_rank, fused[0].lexical_rank) == (1, None)


def test_a_dense_lead_below_the_margin_changes_nothing():
    plain = _order(fuse([1, 2, 3], [3, 2, 9], exact=set(), fusion=DENSE_FIRST))
    assert _order(fuse([1, 2, 3], [3, 2, 9], exact=set(), fusion=DENSE_FIRST,
                       dense_scores=[0.80, 0.7201, 0.60])) == plain == [2, 3, 1, 9]
    off = FusionInfo("rrf", 5, 3, 2, 20, 3, 0)
    assert _order(fuse([1, 2, 3], [3, 2, 9], exact=set(), fusion=off, dense_scores=[0.9, 0.1, 0.0])) == plain
    # one dense hit has no lead to measure
    assert _order(fuse([1], [3, 1], exact=set(), fusion=DENSE_FIRST, dense_scores=[0.9])) == \
        _order(fuse([1], [3, 1], exact=set(), fusion=DENSE_FIRST))


def test_an_exact_match_that_goes_first_wins_over_a_confident_dense_answer():
    assert _order(fuse([1, 2, 3], [3, 2, 9], exact={9}, fusion=DENSE_FIRST, dense_scores=[0.9, 0.5, 0.4]))[0] == 9
    # a long query only marks exact chunks, so the dense answer goes first
    fused = fuse([1, 2, 3], [3, 2, 9], exact={9}, fusion=DENSE_FIRST, exact_first=False,
                 dense_scores=[0.9, 0.5, 0.4])
    assert _order(fused)[0] == 1 and next(f for f in fused if f.chunk_id == 9).exact


def test_dense_first_margin_is_read_from_the_manifest_and_absent_means_never():
    assert FusionInfo("rrf", 60, 1, 1, 50).dense_first_margin == 0
    assert "dense_first_margin" not in lexical_to_json_of(FusionInfo("rrf", 60, 1, 1, 50))
    assert lexical_to_json_of(DENSE_FIRST)["dense_first_margin"] == 80


def lexical_to_json_of(fusion):
    from edge.manifest import LexicalInfo, lexical_to_json

    return lexical_to_json(LexicalInfo("sqlite-fts5", "ident-v1", 4096, 1, 4096, fusion))["fusion"]


def test_mark_highlights_terms_and_variants_and_picks_the_best_sentence():
    text = "General notes. Fault E-4021 means the encoder signal is lost. Replace the cable."
    terms, spans, answer = mark(text, LexicalQuery.parse("e4021 encoder"))
    assert terms == ("e4021", "encoder")
    assert [text[a:b] for a, b in spans] == ["E-4021", "encoder"]
    assert text[answer[0]:answer[1]] == "Fault E-4021 means the encoder signal is lost."


def test_mark_skips_function_words_and_reports_nothing_for_no_match():
    terms, spans, answer = mark("the and of", LexicalQuery.parse("the of"))
    assert spans == () and answer is None
    assert mark("anything", LexicalQuery.parse("!!!")) == ((), (), None)


def test_invalid_unicode_becomes_valid_text():
    assert as_valid_text("E-4021") == "E-4021"
    assert as_valid_text("E-4021\udcff") == "E-4021?"


def test_an_answer_that_is_only_a_table_cell_takes_the_cells_after_it():
    text = "Error Code\n\nCondition Name\n\n22P02\n\ninvalid_text_representation\n\n22P03\n\ninvalid_binary_representation"
    _, _, answer = mark(text, LexicalQuery.parse("22P02"))
    assert text[answer[0]:answer[1]] == "22P02\n\ninvalid_text_representation"


_WORDS = ["Fault", "E-4021", "encoder", "signal", "lost", "22P02", "max_wal_senders", "the", "Größe", "P0304",
          "os.path.join", "v2.3.1", "0x1F", "EACCES", "camelCase", "エンコーダ信号", "6ES7", "214-1AG40-0XB0", "ﬁle"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WORDS) | st.text(max_size=8), max_size=40),
       st.lists(st.sampled_from(_WORDS), min_size=1, max_size=4))
def test_match_terms_finds_exactly_what_every_token_would(words, query_words):
    from edge.lexical import iter_tokens, match_terms, token_variants

    text = " ".join(words)
    wanted = LexicalQuery.parse(" ".join(query_words)).terms
    def can_match(tok):
        return tok.term in wanted or bool(set(token_variants(tok)) & wanted)
    expected = [t for t in iter_tokens(text) if can_match(t)]
    # match_terms: exactly these tokens, with the function-word rule mark() applies
    from edge.retrieval import _STOPWORDS

    reference = [(t.start, t.end, frozenset({t.term} & wanted or set(token_variants(t)) & wanted))
                 for t in expected if t.is_identifier or t.term not in _STOPWORDS]
    assert match_terms(text, wanted, unless_identifier=_STOPWORDS) == reference


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_WORDS + ["x" * 70, "Encoders", "dying", "Lying-2041", "re-encoders_v2",
                                                   "café-22P02"]) | st.text(max_size=8),
                         max_size=30), min_size=1, max_size=6),
       st.lists(st.sampled_from(_WORDS + ["encoders", "die", "lie", "2041", "cafe"]), min_size=1, max_size=4),
       st.booleans())
def test_one_memo_for_a_searchs_hits_finds_what_fresh_calls_do(texts, query_words, stemmed):
    # A search marks its k hits with one memo (edge.opened): a term tested in an earlier hit,
    # ASCII or not, must give the same matches as in a fresh call; and both the same as every
    # token's variants tested one by one, stemmed as the index stems them (no shortcut).
    from edge.lexical import iter_tokens, match_terms, token_variants, v2_term
    from edge.retrieval import _STOPWORDS

    wanted = LexicalQuery.parse(" ".join(query_words)).terms
    keys = {v2_term(t) if stemmed else t for t in wanted}
    memo: dict = {}
    for words in texts:
        text = " ".join(words)
        fresh = match_terms(text, wanted, unless_identifier=_STOPWORDS, stemmed=stemmed)
        by_token = [(t.start, t.end) for t in iter_tokens(text)
                    if (t.is_identifier or t.term not in _STOPWORDS)
                    and any((v2_term(v) if stemmed and not t.is_cjk else v) in keys
                            for v in [t.term, *token_variants(t)])]
        assert [(start, end) for start, end, _ in fresh] == by_token
        assert match_terms(text, wanted, unless_identifier=_STOPWORDS, stemmed=stemmed, memo=memo) == fresh
        assert mark(text, LexicalQuery.parse(" ".join(query_words)), stemmed=stemmed, memo=memo) == \
            mark(text, LexicalQuery.parse(" ".join(query_words)), stemmed=stemmed)


def _is_identifier_reference(raw: str) -> bool:
    if any(c.isdigit() for c in raw) or any(c in "-_." for c in raw):
        return True
    letters = [c for c in raw if c.isalpha()]
    if len(letters) >= 3 and all(c.isupper() for c in letters):
        return True
    return any(a.islower() and b.isupper() for a, b in zip(raw, raw[1:]))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_WORDS + ["word", "ß", "straße", "ǅx", "ﬁle", "の", "Ωmega", "ΣΊΣΥΦΟΣ"]) | st.text(max_size=12))
def test_the_identifier_shortcut_decides_as_the_full_rule(raw):
    from edge.lexical import _CONNECTORS, _is_identifier

    assert set(_CONNECTORS) == set("-_.")
    assert _is_identifier(raw) == _is_identifier_reference(raw)
