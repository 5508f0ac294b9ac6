"""The lexical index (LEXI): identifier-aware terms, queries as terms, and the engines behind them.

This module owns the terms of FORMAT.md §5.5-§5.6 (the ``ident-v1`` and ``ident-v2``
normalisers), the parsed query every engine searches for, and the choice of engine by the
manifest's ``lexical.format``: ``sqlite-fts5`` (``edge.lexical_sqlite``, capsules of format 1.1)
or ``tantivy-7`` (``edge.lexical_tantivy``, format 1.2). The builder
(``firmware_tools.lexical_writer``) uses the same ``index_terms`` and ``v2_term``, so index and
query always agree.

Terms (``ident-v1``): a *token* is a maximal run of letters and digits (Unicode categories L*
and N*), possibly joined by single ``-``, ``_`` or ``.`` between such runs, so ``E-4021``,
``214-1AG40-0XB0``, ``0x1F``, ``v2.3.1``, ``max_wal_senders`` and ``os.path.join`` are one token
each, and a sentence's final full stop is not part of one. Each token is NFKC-normalised and
case-folded. Besides the token itself the index holds its *variants*: the parts between the
connectors (``e``, ``4021``), the compact form without connectors (``e4021``), digit runs of
three or more inside a mixed token (``P0304`` → ``0304``), and the concatenation of up to three
adjacent tokens that all hold a digit (``6ES7 214-1AG40-0XB0`` → ``6es72141ag400xb0``). Runs
of CJK characters (kana, CJK ideographs), which have no spaces, are indexed as overlapping
character bigrams, the usual approach of CJK analysers (Lucene's CJKAnalyzer). So ``E4021``,
``e-4021`` and ``4021`` find ``E-4021``, and ``6ES72141AG400XB0`` finds the spaced form.

``ident-v2`` (``v2_term``) maps each ``ident-v1`` term once more: a Latin letter with
diacritics becomes its ASCII letter (``größe`` → ``große``; what FTS5's ``remove_diacritics``
did inside SQLite), whitespace that NFKC put inside a term is dropped, and a term of ASCII
letters only becomes its Snowball English (Porter2) stem (``encoders`` → ``encod``), through
tantivy's own stemmer so that builder and device stem alike. Stemming lifted BM25 on SciFact from
0.615 to 0.650 nDCG@10 and hybrid from 0.691 to 0.706 (bench/LEXICAL_ENGINES.md). Identifiers
keep their digits and connectors, so codes are matched as typed.

A query is text, never syntax: its terms are found with the same rules, and each engine builds
its query from them (FTS5: double-quoted strings; tantivy: term queries); nothing the user typed
is parsed as query syntax.

Example::

    lexi = open_lexical_index(section_blocks, info=manifest.lexical, n_chunks=n, section_bytes=m)
    query = LexicalQuery.parse("E-4021 encoder")
    ids, scores = lexi.search(query, 10)          # BM25, best first
    exact = lexi.exact_matches(query, limit=100)  # chunks holding every identifier

Source: FORMAT.md §5.5-§5.6; Porter, "Snowball: A language for stemming algorithms" (2001);
Robertson & Zaragoza 2009 for BM25.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import CapsuleFormatError
from .manifest import LexicalInfo

log = logging.getLogger(__name__)

__all__ = [
    "LexicalEngine", "LexicalQuery", "NORMALISER", "NORMALISER_V2", "Token", "index_terms", "iter_tokens",
    "lexical_loading_bytes", "lexical_plan_bytes", "match_terms", "open_lexical_index", "v2_term",
]

#: The token rules this module implements (manifest ``lexical.normaliser`` of ``sqlite-fts5``).
NORMALISER = "ident-v1"
#: ``NORMALISER``'s terms mapped by ``v2_term`` (manifest ``lexical.normaliser`` of ``tantivy-7``).
NORMALISER_V2 = "ident-v2"
#: Stems kept by ``english_stem``'s cache (a query needs a few; a build reuses many).
STEM_CACHE_ENTRIES = 1 << 14
#: Most distinct terms a query contributes; the rest of a long query is ignored.
MAX_QUERY_TERMS = 32
#: Most characters of a query that are read for terms.
MAX_QUERY_CHARS = 4096
#: Longest accepted token, in characters; longer runs are cut (a base64 blob is not a term).
MAX_TOKEN_CHARS = 64

_CONNECTORS = "-_."
_TOKEN_RE = re.compile(r"[^\W_]+(?:[-_.][^\W_]+)*")
_PART_RE = re.compile(r"[^\W_]+")
_DIGITS_RE = re.compile(r"\d{3,}")
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]+")


@dataclass(frozen=True)
class Token:
    """One token of a text, as ``iter_tokens`` finds it.

    Attributes:
        start, end: its span in the text, in code points (``text[start:end]``).
        term: NFKC-normalised, case-folded form (what the index holds).
        is_identifier: holds a digit or a connector, is camelCase, or is upper case of three
            letters or more (``E-4021``, ``22P02``, ``max_wal_senders``, ``EACCES``).
        is_cjk: a CJK bigram (or single character), not a spaced word.
    """

    start: int
    end: int
    term: str
    is_identifier: bool
    is_cjk: bool = False


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _is_identifier(raw: str) -> bool:
    if raw.isalpha() and raw.islower():  # most words: no digit, connector or capital (a shortcut)
        return False
    if any(c.isdigit() for c in raw) or any(c in _CONNECTORS for c in raw):
        return True
    letters = [c for c in raw if c.isalpha()]
    if len(letters) >= 3 and all(c.isupper() for c in letters):
        return True
    return any(a.islower() and b.isupper() for a, b in zip(raw, raw[1:]))


def iter_tokens(text: str, *, offset: int = 0) -> Iterator[Token]:
    """Yield the tokens of ``text`` in order (``ident-v1``; see the module docstring).

    Args:
        text: any ``str``; characters that are not letters or digits only separate tokens.
        offset: added to every span (``text`` is a piece of a longer text starting there).

    Returns:
        An iterator of ``Token``; a CJK run yields its bigrams, each spanning two characters.
    """
    for match in _TOKEN_RE.finditer(text):
        raw, start = match.group(), match.start() + offset
        if _CJK_RE.search(raw):
            yield from _cjk_tokens(raw, start)
            continue
        raw = raw[:MAX_TOKEN_CHARS]
        yield Token(start, start + len(raw), _fold(raw), _is_identifier(raw))


@functools.lru_cache(maxsize=64)
def _match_setup(wanted: frozenset[str], stemmed: bool) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    """What ``match_terms`` needs of a query, made once for all its hits (a k=10 search marks
    ten): the wanted terms by their ``v2_term`` form (when ``stemmed``), and the first two letters
    of every wanted term and stem. A stem keeps its word's first two letters (Porter2 changes
    endings only), so a token whose first two do not begin one is not stemmed at all (halves the
    cost); the exceptions are three of Porter2's special words, which are always stemmed."""
    by_stem: dict[str, frozenset[str]] = {}
    if stemmed:
        for t in wanted:
            key = v2_term(t)
            by_stem[key] = by_stem.get(key, frozenset()) | {t}
    return by_stem, frozenset({key[:2] for key in by_stem} | {t[:2] for t in wanted})


#: Words whose Porter2 stem starts with other letters: the stemmer's special forms ``dying`` ->
#: ``die``, ``lying`` -> ``lie``, ``tying`` -> ``tie`` (Snowball English, "exception1"; its other
#: special words keep their first two letters).
_RESPELLED_BY_STEMMING = frozenset({"dying", "lying", "tying"})


def match_terms(text: str, wanted: frozenset[str], *, unless_identifier: frozenset[str] = frozenset(),
                stemmed: bool = False, memo: dict | None = None) -> list[tuple[int, int, frozenset[str]]]:
    """Return ``(start, end, terms)`` of every token of ``text`` whose term or a variant of it
    (``token_variants``) is ``wanted``, in order; ``terms`` are the wanted ones it matches.

    A token whose term is in ``unless_identifier`` (function words) counts only when it is an
    identifier. With ``stemmed`` (an ``ident-v2`` index) terms also match by their ``v2_term``
    form, as the index matched them (``encoder`` for a query's ``encoders``). Equivalent to
    testing every token of ``iter_tokens``, without building them: this is most of the time of
    marking a query's hits (``edge.retrieval.mark``).

    ``memo``: a dict to keep what each distinct term matched, shared by calls with the same
    ``wanted`` and ``stemmed`` (one search's hits); it holds one entry per distinct term seen.
    A k=10 SciFact search marks ten hits of ~700 characters, whose words repeat. With one memo
    per search, ASCII tokens read here rather than through ``_spans``, and a token of digits or
    connectors passed over when no variant of it can begin like a wanted term (and the
    ``_is_identifier`` shortcut for lower-case words), matching takes 0.54-0.57x the time of
    testing every token afresh on 2,000 hits recorded from SciFact x8 searches, and 0.49x on 320
    from the PostgreSQL error-code queries, whose tables are mostly codes (AMD EPYC, 2026-12-08).
    """
    by_stem, prefixes = _match_setup(wanted, stemmed)
    if memo is None:
        memo = {}
    out = []
    for match in _TOKEN_RE.finditer(text):
        raw = match.group()
        if raw.isascii():  # most tokens: the term is raw.lower(), as in _spans, and not CJK
            if len(raw) > MAX_TOKEN_CHARS:
                raw = raw[:MAX_TOKEN_CHARS]
            term = raw.lower()
            try:
                hits = memo[term]
            except KeyError:
                hits = memo[term] = _term_hits(term, False, wanted, by_stem, prefixes, stemmed)
            if hits is not None and (term not in unless_identifier or _is_identifier(raw)):
                start = match.start()
                out.append((start, start + len(raw), hits))
            continue
        for start, end, term, raw, is_cjk in _non_ascii_spans(text, match):
            key = (term, True) if is_cjk else term  # a CJK bigram is tested as no other token is
            try:
                hits = memo[key]
            except KeyError:
                hits = memo[key] = _term_hits(term, is_cjk, wanted, by_stem, prefixes, stemmed)
            if hits is not None and (term not in unless_identifier or (not is_cjk and _is_identifier(raw))):
                out.append((start, end, hits))
    return out


def _term_hits(term: str, is_cjk: bool, wanted: frozenset[str], by_stem: dict[str, frozenset[str]],
               prefixes: frozenset[str], stemmed: bool) -> frozenset[str] | None:
    """The wanted terms one token's ``term`` matches (``match_terms``), or ``None``."""
    if term in wanted:
        return frozenset((term,))
    if (stemmed and not is_cjk and (term[:2] in prefixes or term in _RESPELLED_BY_STEMMING)
            and (key := v2_term(term)) in by_stem):
        return by_stem[key]
    if is_cjk or term.isalpha():  # no variants: a letters-only token matches only as itself
        return None
    if term.isascii() and not any(p in (compact := _without_connectors(term)) for p in prefixes) and not (
            stemmed and "ying" in compact):
        # Every variant (a part, a digit run, the compact form) is a substring of the compact
        # form, and one that matches begins with a prefix of a wanted term or stem (an ASCII
        # variant's v2_term keeps its first two characters, but for dying, lying, tying).
        return None
    if stemmed:
        hits = frozenset(t for v in _variants(term, False) for t in by_stem.get(v2_term(v), ()))
    else:
        hits = frozenset(_variants(term, False)) & wanted
    return hits or None


def _cjk_tokens(raw: str, start: int) -> Iterator[Token]:
    pos = 0
    for run in _CJK_RE.finditer(raw):
        if run.start() > pos:  # the Latin or digit part before the CJK run
            yield from _plain(raw, start, pos, run.start())
        chars = run.group()
        if len(chars) == 1:
            yield Token(start + run.start(), start + run.end(), _fold(chars), False, True)
        for i in range(len(chars) - 1):
            yield Token(start + run.start() + i, start + run.start() + i + 2, _fold(chars[i:i + 2]), False, True)
        pos = run.end()
    if pos < len(raw):
        yield from _plain(raw, start, pos, len(raw))


def _plain(raw: str, base: int, lo: int, hi: int) -> Iterator[Token]:
    for match in _TOKEN_RE.finditer(raw, lo, hi):
        piece = match.group()[:MAX_TOKEN_CHARS]
        yield Token(base + match.start(), base + match.start() + len(piece), _fold(piece), _is_identifier(piece))


def token_variants(token: Token) -> list[str]:
    """Return the variant terms of one token (parts, compact form, digit runs), not the token.

    ``E-4021`` → ``["e", "4021", "e4021"]``; ``P0304`` → ``["0304"]``; ``word`` → ``[]``.
    """
    return _variants(token.term, token.is_cjk)


def _variants(term: str, is_cjk: bool) -> list[str]:
    if is_cjk:
        return []
    out: list[str] = []
    if any(c in _CONNECTORS for c in term):
        parts = _PART_RE.findall(term)
        out.extend(parts)
        out.append("".join(parts))
    has_alpha = any(c.isalpha() for c in term)
    if has_alpha:
        out.extend(m.group() for m in _DIGITS_RE.finditer(term) if m.group() != term)
    seen: set[str] = {term}
    return [v for v in out if not (v in seen or seen.add(v))]


def _compact(term: str) -> str:
    return "".join(_PART_RE.findall(term))


def _joins(spans: Sequence[tuple[int, int, str, bool]], text: str) -> list[str]:
    """Concatenations of 2..3 adjacent tokens that each hold a digit, separated by one space.

    ``spans``: ``(start, end, term, is_cjk)`` of the tokens, in order."""
    out = []
    for i, (_, end, term, is_cjk) in enumerate(spans):
        if is_cjk or not any(c.isdigit() for c in term):
            continue
        joined = _compact(term)
        for nxt_start, nxt_end, nxt_term, nxt_cjk in spans[i + 1:i + 3]:
            if nxt_cjk or not any(c.isdigit() for c in nxt_term) or text[end:nxt_start] not in (" ", "\u00a0"):
                break
            joined += _compact(nxt_term)
            out.append(joined)
            end = nxt_end
    return out


def index_terms(text: str) -> tuple[str, str]:
    """Return the ``body`` and ``variants`` column values for ``text``: space-separated terms.

    Args:
        text: a chunk's text, or a heading path joined by spaces.

    Returns:
        ``(tokens, variants)``: every token's term in order, and every variant and join.
    """
    # The same as iterating Tokens with token_variants and the joins, without building them (the
    # builder runs this for every chunk: it was ~0.5 ms of main-process time per chunk, against
    # ~5.7 ms of embedding CPU; tests/unit/edge/test_lexical.py checks the equivalence).
    spans = [(start, end, term, is_cjk) for start, end, term, _, is_cjk in _spans(text)]
    variants: list[str] = []
    for _, _, term, is_cjk in spans:
        if not is_cjk and not term.isalpha():  # letters only: no parts, no digit runs
            variants.extend(_variants(term, False))
    variants.extend(_joins(spans, text))
    return " ".join(span[2] for span in spans), " ".join(variants)


def _without_connectors(term: str) -> str:
    """``term`` with its connectors (``-``, ``_``, ``.``) removed: for an ASCII term, what
    ``_compact`` gives, without its regex (NFKC can fold a non-ASCII term into characters
    ``_compact`` also drops, so it stays the rule there)."""
    return term.replace("-", "").replace("_", "").replace(".", "")


def _non_ascii_spans(text: str, match: re.Match) -> Iterator[tuple[int, int, str, str, bool]]:
    """``_spans`` of one regex token ``match`` of ``text`` that is not ASCII."""
    raw = match.group()
    if _CJK_RE.search(raw):
        for tok in iter_tokens(raw, offset=match.start()):
            yield tok.start, tok.end, tok.term, text[tok.start:tok.end], tok.is_cjk
    else:
        raw = raw[:MAX_TOKEN_CHARS]
        start = match.start()
        yield start, start + len(raw), _fold(raw), raw, False


def _spans(text: str) -> Iterator[tuple[int, int, str, str, bool]]:
    """``(start, end, term, raw, is_cjk)`` of every token ``iter_tokens`` yields, in order, without
    building ``Token``s (an ASCII token's term is its ``lower()``: NFKC leaves ASCII alone and
    ``casefold`` equals ``lower`` there)."""
    for match in _TOKEN_RE.finditer(text):
        raw = match.group()
        if raw.isascii():  # most tokens: no CJK
            raw = raw[:MAX_TOKEN_CHARS]
            start = match.start()
            yield start, start + len(raw), raw.lower(), raw, False
        else:
            yield from _non_ascii_spans(text, match)


@dataclass(frozen=True)
class LexicalQuery:
    """A query as terms: what a ``LexicalEngine`` searches for.

    Attributes:
        groups: one tuple of alternative terms per distinct query token, in query order (a
            token and its compact form: ``("e-4021", "e4021")``).
        identifiers: the indexes into ``groups`` of identifier tokens.
        joined: the concatenation of all identifier tokens when they are adjacent in the
            query (the spaced part number typed without spaces), else ``""``.
    """

    groups: tuple[tuple[str, ...], ...]
    identifiers: tuple[int, ...]
    joined: str = ""

    @classmethod
    def parse(cls, query: str) -> "LexicalQuery":
        """Find the terms of ``query`` (first ``MAX_QUERY_CHARS`` characters, first
        ``MAX_QUERY_TERMS`` distinct tokens). Never raises for any ``str``; a query without a
        letter or digit has no groups."""
        text = query[:MAX_QUERY_CHARS]
        tokens = list(iter_tokens(text))
        groups: list[tuple[str, ...]] = []
        identifiers: list[int] = []
        seen: set[str] = set()
        for tok in tokens:
            if tok.term in seen:
                continue
            seen.add(tok.term)
            compact = _compact(tok.term)
            alternatives = (tok.term,) if compact == tok.term or tok.is_cjk else (tok.term, compact)
            if tok.is_identifier:
                identifiers.append(len(groups))
            groups.append(alternatives)
            if len(groups) == MAX_QUERY_TERMS:
                break
        joins = _joins([(t.start, t.end, t.term, t.is_cjk) for t in tokens], text)
        ident_tokens = [t for t in tokens if t.is_identifier and not t.is_cjk]
        joined = ""
        if len(ident_tokens) >= 2 and joins and joins[-1] == "".join(_compact(t.term) for t in ident_tokens):
            joined = joins[-1]
        return cls(tuple(groups), tuple(identifiers), joined)

    @property
    def terms(self) -> frozenset[str]:
        """Every term this query matches (its tokens, their compact forms and the join)."""
        out = {t for group in self.groups for t in group}
        if self.joined:
            out.add(self.joined)
        return frozenset(out)

    def terms_in_order(self) -> list[str]:
        """``terms`` in query order without repeats: each group's alternatives, then the join."""
        order = [t for group in self.groups for t in group] + ([self.joined] if self.joined else [])
        return list(dict.fromkeys(order))

    @property
    def identifier_terms(self) -> tuple[str, ...]:
        """The identifier tokens as the user typed them (folded), in query order."""
        return tuple(self.groups[i][0] for i in self.identifiers)


# ------------------------------------------------------------------------------------ ident-v2

@functools.lru_cache(maxsize=1)
def _stemmer():
    import tantivy
    return tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.raw()).filter(tantivy.Filter.stemmer("english")).build()


@functools.lru_cache(maxsize=STEM_CACHE_ENTRIES)
def english_stem(word: str) -> str:
    """The Snowball English (Porter2) stem of ``word`` (ASCII letters), as tantivy computes it."""
    out = _stemmer().analyze(word)
    return out[0] if out and out[0] else word


def _fold_latin(term: str) -> str:
    out = []
    for ch in term:
        if not ch.isascii():
            parts = unicodedata.normalize("NFD", ch)
            if (len(parts) > 1 and parts[0].isascii() and parts[0].isalpha()
                    and all(unicodedata.combining(c) for c in parts[1:])):
                ch = parts[0]
            elif ch.isspace():
                ch = ""
        out.append(ch)
    return "".join(out)


def v2_term(term: str) -> str:
    """Map an ``ident-v1`` term to its ``ident-v2`` form (see the module docstring).

    ``"Encoders"`` is not a term (terms are folded); ``"encoders"`` → ``"encod"``,
    ``"e-4021"`` → ``"e-4021"``, ``"größe"`` → ``"große"``, ``"故障"`` → ``"故障"``.
    """
    if not term.isascii():
        term = _fold_latin(term)
        if not term.isascii():
            return term
    return english_stem(term) if term.isalpha() else term


# ----------------------------------------------------------------------------------- engines

class LexicalEngine(Protocol):
    """What ``open_lexical_index`` returns: one engine's open LEXI (``SqliteLexicalIndex``,
    ``TantivyLexicalIndex``). Not thread-safe; one query at a time."""

    info: LexicalInfo

    def search(self, query: LexicalQuery, n: int, *, chunk_ranges: list[tuple[int, int]] | None = None,
               ) -> tuple[list[int], list[float]]: ...

    def exact_matches(self, query: LexicalQuery, *, limit: int,
                      chunk_ranges: list[tuple[int, int]] | None = None) -> list[int]: ...

    def close(self) -> None: ...


def lexical_plan_bytes(info: LexicalInfo, section_bytes: int) -> int:
    """Bytes an open LEXI of ``info.format`` holds at its peak (``section_bytes``: the section's
    plaintext length, as stored)."""
    if info.format == "tantivy-7":
        from .lexical_tantivy import tantivy_plan_bytes
        return tantivy_plan_bytes(info, section_bytes)
    from .lexical_sqlite import sqlite_plan_bytes
    return sqlite_plan_bytes(info.plaintext_bytes)


def lexical_loading_bytes(info: LexicalInfo, section_bytes: int) -> int:
    """Bytes of ``lexical_plan_bytes`` that only loading needs, released once the index is open."""
    if info.format == "tantivy-7":
        from .lexical_tantivy import tantivy_loading_bytes
        return tantivy_loading_bytes(info, section_bytes)
    return info.plaintext_bytes  # the collected copy, freed once SQLite holds its own


def open_lexical_index(blocks: Iterable[bytes], *, info: LexicalInfo, n_chunks: int,
                       section_bytes: int) -> LexicalEngine:
    """Open a verified LEXI plaintext with the engine its manifest names.

    Args:
        blocks: the section's authenticated plaintext in pieces, ``section_bytes`` in all.
        info: the manifest's ``lexical`` object.
        n_chunks: the capsule's chunk count.
        section_bytes: the plaintext's length (``sqlite-fts5``: the database, which must equal
            ``info.plaintext_bytes``; ``tantivy-7``: the zstd frame).

    Raises:
        CapsuleFormatError: the bytes are not what ``info.format`` specifies (FORMAT.md §5.5, §5.6).
    """
    if info.format == "tantivy-7":
        from .lexical_tantivy import TantivyLexicalIndex
        return TantivyLexicalIndex.open(blocks, info=info, n_chunks=n_chunks, section_bytes=section_bytes)
    if info.format == "sqlite-fts5":
        if section_bytes != info.plaintext_bytes:
            raise CapsuleFormatError(f"lexical section holds {section_bytes} bytes, manifest says "
                                     f"{info.plaintext_bytes}")
        from .lexical_sqlite import SqliteLexicalIndex
        return SqliteLexicalIndex.open(blocks, info=info, n_chunks=n_chunks)
    raise CapsuleFormatError(f"lexical index format {info.format!r} is not read by this runtime")
