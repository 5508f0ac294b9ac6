"""The SQLite FTS5 engine of the lexical index: LEXI format ``sqlite-fts5`` (FORMAT.md §5.5).

Capsules of format 1.1 carry their lexical index as an SQLite database holding one contentless
FTS5 table over the ``ident-v1`` terms of ``edge.lexical``. This module owns that database: the
schema the builder writes (``firmware_tools.lexical_writer.SqliteLexicalWriter``) and the reader
requires, the checks made on the plaintext before SQLite reads a byte of it, and the BM25
queries. Newer capsules (format 1.2) use ``edge.lexical_tantivy``; this reader stays so that
capsules already installed keep answering after a runtime update.

A query is text, never syntax: each term reaches FTS5 as a double-quoted string (``"`` doubled),
joined by our own ``OR``/``AND``; nothing the user typed is ever parsed as FTS5 query syntax.

Source: FORMAT.md §5.5; SQLite FTS5 (https://sqlite.org/fts5.html: contentless tables, bm25(),
fts5vocab); "Defense Against The Dark Arts" (https://sqlite.org/security.html) for the checks on
an untrusted database; Robertson & Zaragoza 2009 for BM25.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import struct
from collections.abc import Iterable

from .errors import CapsuleFormatError, IntegrityError
from .lexical import LexicalQuery
from .manifest import LexicalInfo

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT", "FTS5_TOKENIZER", "SCHEMA", "SqliteLexicalIndex", "check_database_header", "exact_expression",
    "match_expression", "sqlite_plan_bytes",
]

#: The manifest's ``lexical.format`` for this engine.
FORMAT = "sqlite-fts5"
_SQLITE_MAGIC = b"SQLite format 3\x00"
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


def sqlite_plan_bytes(plaintext_bytes: int) -> int:
    """Bytes an open LEXI holds at its peak: the collected plaintext and SQLite's copy of it
    (both while loading), plus ``SQLITE_OVERHEAD_BYTES``. Once loaded, the collected copy is
    freed and the opener releases its ``plaintext_bytes`` from the reservation."""
    return 2 * plaintext_bytes + SQLITE_OVERHEAD_BYTES


def _quote(term: str) -> str:
    """An FTS5 string literal: the term in double quotes, inner quotes doubled."""
    return '"' + term.replace('"', '""') + '"'


def match_expression(query: LexicalQuery, drop: frozenset[str] = frozenset()) -> str:
    """The FTS5 ``MATCH`` string for ranking ``query``: every alternative of every group, ORed.

    ``drop``: terms left out (too frequent to help); never all of them."""
    terms = [t for group in query.groups for t in group if t not in drop]
    if query.joined:
        terms.append(query.joined)
    return " OR ".join(_quote(t) for t in dict.fromkeys(terms))


def exact_expression(query: LexicalQuery) -> str:
    """The FTS5 ``MATCH`` string a chunk satisfies when it holds every identifier of ``query``
    (each as typed or in compact form), or their concatenation; ``""`` without identifiers."""
    if not query.identifiers:
        return ""
    clauses = ["(" + " OR ".join(_quote(t) for t in query.groups[i]) + ")" for i in query.identifiers]
    expression = "(" + " AND ".join(clauses) + ")"
    if query.joined:
        expression += " OR " + _quote(query.joined)
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


class SqliteLexicalIndex:
    """A verified LEXI database, open read-only in SQLite's memory; BM25 search over chunks.

    Create with ``open``. Not thread-safe: one query at a time (as ``Capsule``).
    """

    def __init__(self, conn: sqlite3.Connection, info: LexicalInfo) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.info = info

    @classmethod
    def open(cls, blocks: Iterable[bytes], *, info: LexicalInfo, n_chunks: int) -> "SqliteLexicalIndex":
        """Check the verified plaintext and load it into an SQLite in-memory database, read-only.

        The caller has authenticated the bytes (AEAD or section digest) and reserved
        ``sqlite_plan_bytes(info.plaintext_bytes)``. Before SQLite reads a byte the length and header are
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
                raise CapsuleFormatError(f"lexical index schema differs from {FORMAT}'s "
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
        rows = self._execute(sql, [match_expression(query, frequent), *params, n])
        return [int(r[0]) for r in rows], [float(r[1]) for r in rows]

    def exact_matches(self, query: LexicalQuery, *, limit: int,
                      chunk_ranges: list[tuple[int, int]] | None = None) -> list[int]:
        """Return ids (ascending, at most ``limit``) of chunks holding every identifier of the
        query; empty when the query has none or no chunk holds them."""
        expression = exact_expression(query)
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
