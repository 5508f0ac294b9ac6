"""The lexical index (LEXI): identifier-aware terms, the SQLite FTS5 database, BM25 queries.

This module owns FORMAT.md §5.5: how text becomes terms (the ``ident-v1`` normaliser), the
database schema the builder writes and the reader requires, the checks made on the plaintext
before SQLite reads a byte of it, and the queries. The builder (``firmware_tools.lexical_writer``)
uses the same ``index_terms`` and ``SCHEMA``, so index and query always agree.

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

A query is text, never syntax: its terms are found with the same rules and each one reaches
FTS5 as a double-quoted string (``"`` doubled), joined by our own ``OR``/``AND``; nothing the
user typed is ever parsed as FTS5 query syntax.

Example::

    lexi = LexicalIndex.open(plaintext_blocks, n_bytes=..., info=manifest.lexical, n_chunks=n)
    query = LexicalQuery.parse("E-4021 encoder")
    ids, scores = lexi.search(query, 10)          # BM25, best first
    exact = lexi.exact_matches(query, limit=100)  # chunks holding every identifier

Source: FORMAT.md §5.5; SQLite FTS5 (https://sqlite.org/fts5.html: contentless tables, bm25(),
fts5vocab); "Defense Against The Dark Arts" (https://sqlite.org/security.html) for the checks on
an untrusted database; Robertson & Zaragoza 2009 for BM25.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .errors import CapsuleFormatError, IntegrityError
from .manifest import LexicalInfo

log = logging.getLogger(__name__)

__all__ = [
    "FTS5_TOKENIZER", "NORMALISER", "SCHEMA", "LexicalIndex", "LexicalQuery", "Token", "check_database_header",
    "index_terms", "iter_tokens", "match_terms",
]

#: The normaliser this module implements (manifest ``lexical.normaliser``).
NORMALISER = "ident-v1"
#: FTS5 tokenizer over the space-separated terms: case and diacritics folding only; ``-_.``
#: are token characters so a term such as ``e-4021`` stays one FTS5 token.
FTS5_TOKENIZER = "unicode61 remove_diacritics 2 tokenchars '-_.'"
#: SQLite ``application_id`` (header offset 68) of a LEXI database: ASCII "ELEX".
APPLICATION_ID = 0x454C4558
#: SQLite ``user_version`` (header offset 60): the LEXI layout version.
LAYOUT_VERSION = 1
#: The statements that make a LEXI database, in order. The reader requires exactly the schema
#: these produce in its own SQLite (shadow tables included): no view, trigger or other table.
SCHEMA = (
    f"CREATE VIRTUAL TABLE lexi USING fts5(heading, body, variants, content='', columnsize=1, "
    f"detail=full, tokenize=\"{FTS5_TOKENIZER}\")",
    "CREATE VIRTUAL TABLE lexi_vocab USING fts5vocab(lexi, row)",
)
#: BM25 column weights (heading, body, variants): a heading term counts three times.
BM25_WEIGHTS = (3.0, 1.0, 1.0)
#: Most distinct terms a query contributes; the rest of a long query is ignored.
MAX_QUERY_TERMS = 32
#: Most characters of a query that are read for terms.
MAX_QUERY_CHARS = 4096
#: A term in more than this share of chunks is dropped from the ranking query when the query has
#: rarer ones: FTS5 scores every row a query term matches (it has no top-k pruning), and such a
#: term's IDF is small (log 10 at 10%). Measured while designing issue 10 (x86 Zen 4, a standalone
#: FTS5 table of the SciFact abstracts, not chunks): BM25 nDCG@10 0.659 with every term, 0.656 at
#: 25%, 0.647 at 10%; at 100k python-docs chunks search p95 34 ms at 10%, 53 ms at 25%. Through
#: the capsule (bench/HYBRID.md) BM25 alone gives 0.629 on SciFact test at 10%.
MAX_DOCUMENT_FREQUENCY = 0.1
#: ... but never below this many chunks: scoring a few hundred rows is cheap, and in a small
#: capsule every term is "frequent".
MIN_FREQUENT_ROWS = 256
#: SQLite page cache per open LEXI (KiB): the anonymous memory the lexical path holds.
CACHE_KIB = 2048
#: Bytes the plan reserves for SQLite beyond the database itself (cache plus connection).
SQLITE_OVERHEAD_BYTES = CACHE_KIB * 1024 + (1 << 20)


def lexical_plan_bytes(plaintext_bytes: int) -> int:
    """Bytes an open LEXI holds at its peak: the collected plaintext and SQLite's copy of it
    (both while loading), plus ``SQLITE_OVERHEAD_BYTES``. Once loaded, the collected copy is
    freed and the opener releases its ``plaintext_bytes`` from the reservation."""
    return 2 * plaintext_bytes + SQLITE_OVERHEAD_BYTES
#: Longest accepted token, in characters; longer runs are cut (a base64 blob is not a term).
MAX_TOKEN_CHARS = 64

_CONNECTORS = "-_."
_TOKEN_RE = re.compile(r"[^\W_]+(?:[-_.][^\W_]+)*")
_PART_RE = re.compile(r"[^\W_]+")
_DIGITS_RE = re.compile(r"\d{3,}")
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]+")
_SQLITE_MAGIC = b"SQLite format 3\x00"


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


def match_terms(text: str, wanted: frozenset[str], *, unless_identifier: frozenset[str] = frozenset()
                ) -> list[tuple[int, int, frozenset[str]]]:
    """Return ``(start, end, terms)`` of every token of ``text`` whose term or a variant of it
    (``token_variants``) is ``wanted``, in order; ``terms`` are the wanted ones it matches.

    A token whose term is in ``unless_identifier`` (function words) counts only when it is an
    identifier. Equivalent to testing every token of ``iter_tokens``, without building them
    (a token of letters only has no variants, so it is looked up and dropped at once): this is
    most of the time of marking a query's hits (``edge.retrieval.mark``).
    """
    out = []
    for start, end, term, raw, is_cjk in _spans(text):
        if term in wanted:
            hits = frozenset((term,))
        elif is_cjk or term.isalpha():  # no variants: a letters-only token matches only as itself
            continue
        else:
            hits = frozenset(_variants(term, False)) & wanted
        if hits and (term not in unless_identifier or (not is_cjk and _is_identifier(raw))):
            out.append((start, end, hits))
    return out


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
        elif _CJK_RE.search(raw):
            for tok in iter_tokens(raw, offset=match.start()):
                yield tok.start, tok.end, tok.term, text[tok.start:tok.end], tok.is_cjk
        else:
            raw = raw[:MAX_TOKEN_CHARS]
            start = match.start()
            yield start, start + len(raw), _fold(raw), raw, False


def _quote(term: str) -> str:
    """An FTS5 string literal: the term in double quotes, inner quotes doubled."""
    return '"' + term.replace('"', '""') + '"'


@dataclass(frozen=True)
class LexicalQuery:
    """A query as terms: what ``LexicalIndex`` searches for.

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

    @property
    def identifier_terms(self) -> tuple[str, ...]:
        """The identifier tokens as the user typed them (folded), in query order."""
        return tuple(self.groups[i][0] for i in self.identifiers)

    def match_expression(self, drop: frozenset[str] = frozenset()) -> str:
        """The FTS5 ``MATCH`` string for ranking: every alternative of every group, ORed.

        ``drop``: terms left out (too frequent to help); never all of them."""
        terms = [t for group in self.groups for t in group if t not in drop]
        if self.joined:
            terms.append(self.joined)
        return " OR ".join(_quote(t) for t in dict.fromkeys(terms))

    def exact_expression(self) -> str:
        """The FTS5 ``MATCH`` string a chunk satisfies when it holds every identifier of the
        query (each as typed or in compact form), or their concatenation; ``""`` without
        identifiers."""
        if not self.identifiers:
            return ""
        clauses = ["(" + " OR ".join(_quote(t) for t in self.groups[i]) + ")" for i in self.identifiers]
        expression = "(" + " AND ".join(clauses) + ")"
        if self.joined:
            expression += " OR " + _quote(self.joined)
        return expression


def check_database_header(header: bytes, *, info: LexicalInfo) -> None:
    """Check the first 100 bytes of a LEXI plaintext before SQLite opens it.

    Every field SQLite would trust about the file's shape must be the one value a LEXI writer
    produces: page size and count (page count × page size = the declared plaintext length),
    rollback journal (no WAL), no reserved bytes per page, UTF-8, schema format 4, no freelist,
    no auto-vacuum, and LEXI's application id and layout version.

    Raises:
        CapsuleFormatError: naming the first field that differs.

    Source: https://sqlite.org/fileformat2.html §1.3 (the database header).
    """
    if len(header) < 100 or header[:16] != _SQLITE_MAGIC:
        raise CapsuleFormatError("lexical index is not an SQLite database (bad header)")
    (page_size, write_version, read_version, reserved, max_frac, min_frac, leaf_frac, change_counter,
     n_pages, freelist_trunk, n_freelist, _cookie, schema_format, _cache, _vacuum_root, encoding, user_version,
     incremental, application_id) = struct.unpack(">HBBBBBBIIIIIIIIIIII", header[16:72])
    page_bytes = 65536 if page_size == 1 else page_size
    version_valid_for = struct.unpack(">I", header[92:96])[0]
    checks = [
        (page_bytes == info.page_bytes, f"page size {page_bytes}, manifest says {info.page_bytes}"),
        (n_pages * page_bytes == info.plaintext_bytes,
         f"{n_pages} pages of {page_bytes} bytes, plaintext is {info.plaintext_bytes} bytes"),
        ((write_version, read_version) == (1, 1), "journal mode is not rollback (WAL?)"),
        (reserved == 0, f"{reserved} reserved bytes per page"),
        ((max_frac, min_frac, leaf_frac) == (64, 32, 32), "payload fractions are not 64/32/32"),
        (change_counter == version_valid_for, "page count is not valid for this change counter"),
        (freelist_trunk == 0 and n_freelist == 0, f"{n_freelist} free pages"),
        (schema_format == 4, f"schema format {schema_format}"),
        (encoding == 1, f"text encoding {encoding}, not UTF-8"),
        (_vacuum_root == 0 and incremental == 0, "auto-vacuum is on"),
        (application_id == APPLICATION_ID, f"application id {application_id:#x} is not LEXI's"),
        (user_version == LAYOUT_VERSION, f"layout version {user_version}, this runtime reads {LAYOUT_VERSION}"),
    ]
    for ok, what in checks:
        if not ok:
            raise CapsuleFormatError(f"lexical index header: {what}")


def _schema_rows(conn: sqlite3.Connection) -> list[tuple]:
    return list(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name"))


def expected_schema() -> list[tuple]:
    """The schema rows a LEXI database must hold, as this process's SQLite creates them."""
    conn = sqlite3.connect(":memory:")
    try:
        for statement in SCHEMA:
            conn.execute(statement)
        return _schema_rows(conn)
    finally:
        conn.close()


def schema_sha256() -> str:
    """SHA-256 (hex) of ``expected_schema``'s rows, as a short way to name the schema."""
    return hashlib.sha256(repr(expected_schema()).encode()).hexdigest()


class LexicalIndex:
    """A verified LEXI database, open read-only in SQLite's memory; BM25 search over chunks.

    Create with ``open``. Not thread-safe: one query at a time (as ``Capsule``).
    """

    def __init__(self, conn: sqlite3.Connection, info: LexicalInfo) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.info = info

    @classmethod
    def open(cls, blocks: Iterable[bytes], *, info: LexicalInfo, n_chunks: int) -> "LexicalIndex":
        """Check the verified plaintext and load it into an SQLite in-memory database, read-only.

        The caller has authenticated the bytes (AEAD or section digest) and reserved
        ``lexical_plan_bytes(info)``. Before SQLite reads a byte the length and header are
        checked (``check_database_header``); the bytes are then handed to SQLite with
        ``sqlite3_deserialize`` (SQLite keeps its own copy, which nobody else can change, and the
        collected bytes are freed). After ``trusted_schema=OFF``, ``cell_size_check=ON``,
        ``query_only`` and defensive mode where Python offers it, the schema must be exactly
        ``SCHEMA``'s, the row count ``info.n_rows == n_chunks``, every rowid in
        ``0..n_chunks-1``, and ``PRAGMA quick_check`` must pass.

        Why not a memfd path: SQLite's unix VFS resolves symbolic links, and
        ``/proc/self/fd/N`` of a memfd resolves to ``/memfd:NAME (deleted)``, which does not open
        (and, without ``mode=ro``, is created as a new empty file).

        Args:
            blocks: the plaintext database in pieces, ``info.plaintext_bytes`` in all.
            info: the manifest's ``lexical`` object.
            n_chunks: the capsule's chunk count.

        Raises:
            CapsuleFormatError: the bytes are not a LEXI database as specified (length, header,
                schema, rows, structure).
        """
        if info.n_rows != n_chunks:
            raise CapsuleFormatError(f"lexical index has {info.n_rows} rows, capsule has {n_chunks} chunks")
        data = bytearray()
        for piece in blocks:
            if len(data) + len(piece) > info.plaintext_bytes:
                raise CapsuleFormatError(f"lexical index exceeds the {info.plaintext_bytes} bytes declared")
            data += piece
        if len(data) != info.plaintext_bytes:
            raise CapsuleFormatError(f"lexical index is {len(data)} bytes, manifest says {info.plaintext_bytes}")
        check_database_header(bytes(data[:100]), info=info)
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        try:
            conn.deserialize(data)
            del data
            _harden(conn)
            found = _schema_rows(conn)
            if found != expected_schema():
                raise CapsuleFormatError(f"lexical index schema differs from {NORMALISER}'s "
                                         f"({len(found)} schema rows)")
            n_rows, low, high = conn.execute("SELECT count(*), min(id), max(id) FROM lexi_docsize").fetchone()
            if n_rows != n_chunks or (n_rows and not (0 <= low and high < n_chunks)):
                raise CapsuleFormatError(f"lexical index has {n_rows} rows with ids {low}..{high}, "
                                         f"capsule has {n_chunks} chunks")
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise CapsuleFormatError(f"lexical index fails SQLite's quick_check: {str(check[0][0])[:80]}")
        except sqlite3.Error as exc:
            conn.close()
            raise CapsuleFormatError(f"lexical index is not a readable database ({exc})") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, info)

    def _document_frequencies(self, terms: Iterable[str]) -> dict[str, int]:
        terms = list(terms)
        marks = ",".join("?" * len(terms))
        return dict(self._conn.execute(f"SELECT term, doc FROM lexi_vocab WHERE term IN ({marks})", terms))

    def search(self, query: LexicalQuery, n: int, *, chunk_ranges: list[tuple[int, int]] | None = None,
               ) -> tuple[list[int], list[float]]:
        """Return up to ``n`` chunk ids and BM25 scores (higher is better), best first.

        Terms found in more than ``MAX_DOCUMENT_FREQUENCY`` of the chunks (and in more than
        ``MIN_FREQUENT_ROWS``) are left out when the query has a rarer term that occurs; when it
        has none (a query of function words) only the rarest of them ranks. FTS5 scores every row
        a term matches, so this bounds the rows scored. ``chunk_ranges``: only chunks in these
        ``[first, last)`` ranges.

        Raises:
            IntegrityError: SQLite fails while reading the (verified) database.
        """
        if not query.groups or n < 1:
            return [], []
        terms = query.terms
        frequencies = self._document_frequencies(terms)
        limit = max(MAX_DOCUMENT_FREQUENCY * self.info.n_rows, MIN_FREQUENT_ROWS)
        # A term missing from the vocabulary may still match once FTS5 folds its diacritics: kept,
        # but it does not count as the rare term that lets the frequent ones go.
        rare = [t for t in terms if frequencies.get(t, 0) <= limit]
        if not any(frequencies.get(t, 0) for t in rare):
            present = [t for t in terms if frequencies.get(t, 0)]
            if present:  # only frequent terms occur: the rarest one alone ranks
                rare.append(min(present, key=lambda t: (frequencies[t], t)))
        frequent = frozenset(terms - set(rare))
        weights = ", ".join(str(w) for w in BM25_WEIGHTS)
        where, params = self._range_clause(chunk_ranges)
        sql = (f"SELECT rowid, -bm25(lexi, {weights}) AS score FROM lexi WHERE lexi MATCH ?{where} "
               "ORDER BY score DESC, rowid LIMIT ?")
        rows = self._execute(sql, [query.match_expression(frequent), *params, n])
        return [int(r[0]) for r in rows], [float(r[1]) for r in rows]

    def exact_matches(self, query: LexicalQuery, *, limit: int,
                      chunk_ranges: list[tuple[int, int]] | None = None) -> list[int]:
        """Return ids (ascending, at most ``limit``) of chunks holding every identifier of the
        query; empty when the query has none or no chunk holds them."""
        expression = query.exact_expression()
        if not expression:
            return []
        where, params = self._range_clause(chunk_ranges)
        rows = self._execute(f"SELECT rowid FROM lexi WHERE lexi MATCH ?{where} ORDER BY rowid LIMIT ?",
                             [expression, *params, limit])
        return [int(r[0]) for r in rows]

    @staticmethod
    def _range_clause(chunk_ranges: list[tuple[int, int]] | None) -> tuple[str, list[int]]:
        if chunk_ranges is None:
            return "", []
        if not chunk_ranges:
            return " AND 0", []
        clause = " OR ".join("(rowid >= ? AND rowid < ?)" for _ in chunk_ranges)
        return f" AND ({clause})", [v for r in chunk_ranges for v in r]

    def _execute(self, sql: str, params: list) -> list[tuple]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise IntegrityError(f"lexical index failed while searching ({exc})") from None

    def close(self) -> None:
        """Close the database and free its memory."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _harden(conn: sqlite3.Connection) -> None:
    """Settings from SQLite's advice for reading an untrusted database."""
    setconfig = getattr(conn, "setconfig", None)  # Python 3.12+
    if setconfig is not None:
        setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)
    for pragma in ("trusted_schema = OFF", "cell_size_check = ON", "query_only = ON", "mmap_size = 0",
                   f"cache_size = -{CACHE_KIB}", "temp_store = MEMORY"):
        conn.execute(f"PRAGMA {pragma}")
    if hasattr(conn, "setlimit"):  # Python 3.11+
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 20)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 1 << 16)
        conn.setlimit(sqlite3.SQLITE_LIMIT_EXPR_DEPTH, 64)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 64)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
