"""Hybrid retrieval: fuse the dense and lexical rankings, put exact identifiers first, mark hits.

Pure functions over ids, scores and text; no IO, no index. ``edge.opened.Capsule.search`` runs
the two retrievers and calls these; ``edge.capsule_set`` merges several capsules' results.

- ``fuse``: reciprocal rank fusion (RRF; Cormack, Clarke & Buettcher, "Reciprocal rank fusion
  outperforms Condorcet and individual rank learning methods", SIGIR 2009):
  ``score(c) = w_dense / (k + rank_dense(c)) + w_lexical / (k + rank_lexical(c))``, ranks from 1,
  a missing ranking contributing 0. Then every chunk that holds all of the query's identifiers
  (``exact``) is put before every chunk that does not, keeping fused order within each group, so
  an exact identifier match is first unless another chunk matches the identifier too. When no
  exact match goes first, a dense answer that leads the dense ranking by ``dense_first_margin``
  goes first.
- ``mark``: which query terms a hit's text holds, their spans (highlights), and the sentence
  with the most distinct matched terms (the answer line a kiosk shows).

Example::

    order = fuse(dense_ids, lexical_ids, exact=set(exact_ids), fusion=manifest.lexical.fusion)
    terms, spans, answer = mark(hit_text, LexicalQuery.parse(query))
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .lexical import LexicalQuery, match_terms
from .manifest import FusionInfo

__all__ = ["SEARCH_MODES", "SearchResult", "as_valid_text", "fuse", "mark"]

#: Search modes: fused (default when the capsule has a lexical index), embeddings only, BM25 only.
SEARCH_MODES = ("hybrid", "dense", "lexical")

# Sentence ends as the builder's chunker cuts them (firmware_tools.chunking): . ! ? … then space.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])[\"'\u201d\u2019)\]]*\s+|\n\s*\n")

#: Words too common to highlight (English function words); they still count for BM25.
_STOPWORDS = frozenset("""a an and are as at be but by can could did do does for from had has have how i if in into is
it its may might not of on or our shall should so than that the their them then there these they this those to
was we were what when where which who why will with would you your""".split())


@dataclass(frozen=True)
class Fused:
    """One fused candidate: its id, fused score and where each retriever ranked it."""

    chunk_id: int
    score: float
    dense_rank: int | None
    lexical_rank: int | None
    exact: bool


def fuse(dense_ids: Sequence[int], lexical_ids: Sequence[int], *, exact: set[int], fusion: FusionInfo,
         exact_first: bool = True, dense_scores: Sequence[float] = ()) -> list[Fused]:
    """Fuse two rankings by RRF, exact identifier matches first (with ``exact_first``), else a
    confident dense answer first (with ``fusion.dense_first_margin``).

    Args:
        dense_ids: chunk ids by descending cosine similarity (may be empty).
        lexical_ids: chunk ids by descending BM25 (may be empty).
        exact: ids of chunks that hold every identifier of the query (may hold ids in neither
            ranking: they are kept, after the ranked ones of their group).
        fusion: the manifest's weights, RRF ``k`` and ``dense_first_margin`` (``depth`` is
            applied by the caller).
        exact_first: put the ``exact`` ids first; ``False`` keeps the RRF order and only marks
            them (``Fused.exact``): the caller's choice by ``fusion.exact_first_max_tokens``.
        dense_scores: the cosine similarities of ``dense_ids``, in the same order (float32 or
            float; may be empty: then no dense answer goes first).

    Returns:
        Every id in either ranking or ``exact``, best first; ties by id. When no exact id goes
        first and ``dense_scores[0] - dense_scores[1] >= fusion.dense_first_margin / 1000``
        (margin > 0), ``dense_ids[0]`` is first, scored as the best fused chunk, so scores stay
        non-increasing; the rest keep their fused order (FORMAT.md §4.6).
    """
    dense_rank = {c: r for r, c in enumerate(dense_ids, 1)}
    lexical_rank = {c: r for r, c in enumerate(lexical_ids, 1)}
    out = []
    for c in dense_rank.keys() | lexical_rank.keys() | exact:
        score = 0.0
        if c in dense_rank:
            score += fusion.dense_weight / (fusion.k + dense_rank[c])
        if c in lexical_rank:
            score += fusion.lexical_weight / (fusion.k + lexical_rank[c])
        out.append(Fused(c, score, dense_rank.get(c), lexical_rank.get(c), c in exact))
    out.sort(key=lambda f: (exact_first and not f.exact, -f.score, f.chunk_id))
    exact_went_first = exact_first and bool(out) and out[0].exact
    if (fusion.dense_first_margin and not exact_went_first and len(dense_scores) >= 2
            and dense_scores[0] - dense_scores[1] >= fusion.dense_first_margin / 1000):
        at = next(i for i, f in enumerate(out) if f.chunk_id == dense_ids[0])
        if at:
            first = out.pop(at)
            out.insert(0, Fused(first.chunk_id, out[0].score, first.dense_rank, first.lexical_rank, first.exact))
    return out


def as_valid_text(query: str) -> str:
    """``query`` with lone surrogates (bytes that were not UTF-8, as Python decodes argv and
    file names) replaced by ``?``, so the tokenizer gets valid Unicode; other text unchanged."""
    try:
        query.encode("utf-8")
        return query
    except UnicodeEncodeError:
        return query.encode("utf-8", "replace").decode("utf-8")


#: An answer line shorter than this (code points) is extended by the sentences after it.
MIN_ANSWER_CHARS = 24
#: ... but not past this length.
MAX_ANSWER_CHARS = 320


def _sentences(text: str) -> Iterator[tuple[int, int]]:
    start = 0
    for cut in _SENTENCE_END.finditer(text):
        if text[start:cut.start()].strip():
            yield start, cut.start()
        start = cut.end()
    if text[start:].strip():
        yield start, len(text.rstrip())


def mark(text: str, query: LexicalQuery, *, stemmed: bool = False, memo: dict | None = None
         ) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...], tuple[int, int] | None]:
    """Find the query's terms in a hit's text.

    A token of the text matches when its term, one of its variants (parts, compact form) or
    the compact form of a run of tokens equals a query term; function words are not
    highlighted.

    Args:
        text: the hit's text.
        query: the parsed query.
        stemmed: the capsule's index is ``ident-v2``: a token also matches by its stem, as the
            index matched it (``edge.lexical.match_terms``).
        memo: one dict for all the hits of one search (same query, same ``stemmed``), so that
            each distinct word is tested once (``match_terms``); ``None``: a fresh one.

    Returns:
        ``(terms, highlights, answer)``: the query terms found (query order), the
        ``(start, end)`` code-point spans in ``text`` of matching tokens (ascending), and the span
        of the sentence holding the most distinct matched terms (the first on ties; ``None``
        when nothing matched), extended by the sentences after it while it is shorter than
        ``MIN_ANSWER_CHARS`` (a table cell holding only the code).
    """
    wanted = query.terms
    if not wanted:
        return (), (), None
    spans: list[tuple[int, int]] = []
    found: dict[str, list[int]] = {}
    for start, end, hits in match_terms(text, wanted, unless_identifier=_STOPWORDS, stemmed=stemmed, memo=memo):
        spans.append((start, end))
        for term in hits:
            found.setdefault(term, []).append(start)
    if not spans:
        return (), (), None
    order = [t for group in query.groups for t in group]
    terms = tuple(t for t in dict.fromkeys(order + ([query.joined] if query.joined else [])) if t in found)
    sentences = list(_sentences(text))
    starts = [start for start, _ in sentences]
    terms_in: dict[int, set[str]] = {}  # sentence number -> the distinct terms it holds
    for term, positions in found.items():
        for position in positions:
            number = bisect_right(starts, position) - 1
            if number >= 0 and position < sentences[number][1]:
                terms_in.setdefault(number, set()).add(term)
    best, best_count = None, 0
    for number in sorted(terms_in):  # the first sentence with the most terms
        if len(terms_in[number]) > best_count:
            best, best_count = number, len(terms_in[number])
    if best is None:
        return terms, tuple(spans), None
    # A table cell ("22P02") or a heading alone is no answer: take the sentences after it until
    # the line says something (MIN_ANSWER_CHARS), within MAX_ANSWER_CHARS.
    first = last = best
    while (sentences[last][1] - sentences[first][0] < MIN_ANSWER_CHARS and last + 1 < len(sentences)
           and sentences[last + 1][1] - sentences[first][0] <= MAX_ANSWER_CHARS):
        last += 1
    return terms, tuple(spans), (sentences[first][0], sentences[last][1])


@dataclass(frozen=True)
class SearchResult(Sequence):
    """The hits of one search, best first, with what the query was found to be.

    A sequence of ``Hit``: ``result[0]``, ``len(result)``, ``for hit in result``.

    Attributes:
        hits: the hits, best first.
        mode: ``"hybrid"``, ``"dense"`` or ``"lexical"``: what was run.
        identifiers: the query's identifier tokens, folded (``("e-4021",)``); empty when none.
        exact_match: whether some chunk holds every identifier (``None`` when the query has
            no identifier, or the capsule no lexical index). ``False`` means "no entry for this
            code": the hits, if any, are only semantically near.
        timings: per-stage milliseconds.
    """

    hits: tuple = ()
    mode: str = "dense"
    identifiers: tuple[str, ...] = ()
    exact_match: bool | None = None
    timings: object = field(default=None, compare=False)

    def __getitem__(self, index):  # type: ignore[override]
        return self.hits[index]

    def __len__(self) -> int:
        return len(self.hits)

    def to_json(self) -> dict[str, object]:
        """JSON-ready: ``mode``, ``identifiers``, ``exact_match`` and ``hits``."""
        return {"mode": self.mode, "identifiers": list(self.identifiers), "exact_match": self.exact_match,
                "hits": [hit.to_json() for hit in self.hits]}
