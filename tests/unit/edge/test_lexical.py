"""The lexical index: ident-v1 terms, query text never reaching FTS5 as syntax, the checks made on
an untrusted database before SQLite reads it (FORMAT.md §5.5). Real SQLite, real FTS5."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import CapsuleFormatError, IntegrityError
from edge.lexical import LexicalQuery, MAX_QUERY_TERMS, index_terms, iter_tokens
from edge.lexical_sqlite import SqliteLexicalIndex as LexicalIndex, check_database_header, exact_expression
from edge.manifest import FusionInfo, LexicalInfo
from firmware_tools.lexical_writer import SqliteLexicalWriter as LexicalWriter

CHUNKS = [
    "Fault E-4021: encoder signal lost. Check the encoder cable.",
    "Order number 6ES7 214-1AG40-0XB0 for the CPU module.",
    "The drive restarts after fault E-4022 is cleared.",
    "max_wal_senders sets the maximum number of WAL sender processes.",
    "Die Größe der Drehzahlüberwachung wird in P0304 eingestellt.",
    "エンコーダ信号の喪失を確認してください。",
    "Use os.path.join to build paths; version v2.3.1 fixed 0x1F handling.",
]
HEADINGS = [("Fault codes", "E-4021 Encoder signal lost"), ("Parts",), ("Fault codes",), ("Replication",),
            ("Parameter",), ("故障",), ("Python",)]


def _info(meta: dict) -> LexicalInfo:
    return LexicalInfo("sqlite-fts5", "ident-v1", meta["plaintext_bytes"], meta["n_rows"], meta["page_bytes"],
                       FusionInfo("rrf", 60, 1, 1, 50))


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> tuple[bytes, LexicalInfo]:
    path = tmp_path_factory.mktemp("lexi") / "lexi.sqlite"
    writer = LexicalWriter(path)
    for chunk_id, (text, heading) in enumerate(zip(CHUNKS, HEADINGS)):
        writer.add(chunk_id, text, heading_path=heading)
    info = _info(writer.finish())
    return path.read_bytes(), info


@pytest.fixture(scope="module")
def index(database) -> LexicalIndex:
    data, info = database
    return LexicalIndex.open([data], info=info, n_chunks=len(CHUNKS))


def _top(index: LexicalIndex, query: str) -> list[int]:
    return index.search(LexicalQuery.parse(query), 3)[0]


def test_identifiers_are_whole_tokens_and_sentence_ends_are_not_part_of_them():
    tokens = [(t.term, t.is_identifier) for t in iter_tokens("Fault E-4021. Set max_wal_senders, os.path.join "
                                                              "v2.3.1 0x1F P0304 EACCES camelCase and words")]
    assert tokens == [("fault", False), ("e-4021", True), ("set", False), ("max_wal_senders", True),
                      ("os.path.join", True), ("v2.3.1", True), ("0x1f", True), ("p0304", True), ("eacces", True),
                      ("camelcase", True), ("and", False), ("words", False)]


def test_variants_hold_parts_compact_forms_digit_runs_and_joins():
    body, variants = index_terms("E-4021 and 6ES7 214-1AG40-0XB0 and P0304")
    assert body.split() == ["e-4021", "and", "6es7", "214-1ag40-0xb0", "and", "p0304"]
    assert {"e", "4021", "e4021", "2141ag400xb0", "6es72141ag400xb0", "0304"} <= set(variants.split())


@pytest.mark.parametrize("query, chunk", [
    ("E-4021", 0), ("e-4021", 0), ("E4021", 0), ("4021", 0), ("e4021 encoder", 0),
    ("6ES72141AG400XB0", 1), ("6ES7 214-1AG40-0XB0", 1), ("214-1AG40-0XB0", 1),
    ("max_wal_senders", 3), ("wal senders", 3), ("P0304", 4), ("Grösse", 4), ("drehzahluberwachung", 4),
    ("信号", 5), ("エンコーダ", 5), ("os.path.join", 6), ("v2.3.1", 6), ("0x1F", 6),
])
def test_identifier_forms_find_their_chunk_first(index, query, chunk):
    assert _top(index, query)[0] == chunk


def test_a_heading_term_finds_the_chunks_under_it(index):
    assert set(_top(index, "replication")) == {3}
    assert _top(index, "encoder signal lost")[0] == 0  # body and heading both hold it


def test_exact_matches_need_every_identifier_and_say_not_found(index):
    assert index.exact_matches(LexicalQuery.parse("E-4021"), limit=10) == [0]
    assert index.exact_matches(LexicalQuery.parse("fault E-4022"), limit=10) == [2]
    assert index.exact_matches(LexicalQuery.parse("E-4021 E-4022"), limit=10) == []
    absent = LexicalQuery.parse("E-9999")
    assert index.exact_matches(absent, limit=10) == [] and index.search(absent, 5) == ([], [])
    assert exact_expression(LexicalQuery.parse("how do I reset it")) == ""


@pytest.mark.parametrize("query", [
    '"', '""', "*", "NEAR(", "NEAR(a b)", "a OR b", "a AND NOT b", "col:term", "heading:fault", "^fault",
    "fault*", "(fault", "fault)", "-fault", "+", "'", "\\", "\x00\x01\x02", "\udcff\ud800", "   ", "…", "💥",
    "a" * 10_000, "E-4021 " * 5_000, "x" + "-" * 500 + "y",
])
def test_query_text_is_never_fts5_syntax(index, query):
    parsed = LexicalQuery.parse(query)
    assert len(parsed.groups) <= MAX_QUERY_TERMS
    ids, scores = index.search(parsed, 5)  # no sqlite3.OperationalError, whatever the text
    index.exact_matches(parsed, limit=5)
    assert len(ids) == len(scores) <= 5


def test_fts5_syntax_words_are_searched_as_words(index):
    assert _top(index, 'NEAR("encoder" cable)')[0] == 0
    assert _top(index, "heading:replication") == [3]


def test_frequent_terms_are_dropped_only_beside_a_rare_term_that_occurs(index, monkeypatch):
    import edge.lexical_sqlite as lexical_sqlite
    monkeypatch.setattr(lexical_sqlite, "MIN_FREQUENT_ROWS", 0)
    monkeypatch.setattr(lexical_sqlite, "MAX_DOCUMENT_FREQUENCY", 0.2)  # 1 of 7 chunks is rare
    # "fault" is in 2 chunks (frequent), "restarts" in 1: only chunk 2 is scored.
    assert index.search(LexicalQuery.parse("fault restarts"), 5)[0] == [2]
    # Only frequent terms: the rarest one that occurs ranks, an unknown word does not empty it.
    assert set(index.search(LexicalQuery.parse("fault zzzunknown"), 5)[0]) == {0, 2}
    # Without the patch (a small capsule) every term ranks.
    monkeypatch.setattr(lexical_sqlite, "MIN_FREQUENT_ROWS", 256)
    assert set(index.search(LexicalQuery.parse("fault restarts"), 5)[0]) == {0, 2}


def test_a_long_query_uses_its_first_terms():
    parsed = LexicalQuery.parse(" ".join(f"w{i}" for i in range(100)))
    assert len(parsed.groups) == MAX_QUERY_TERMS and parsed.groups[0] == ("w0",)


def test_document_ranges_restrict_results(index):
    query = LexicalQuery.parse("fault")
    assert set(index.search(query, 5)[0]) == {0, 2}
    assert index.search(query, 5, chunk_ranges=[(1, 3)])[0] == [2]
    assert index.search(query, 5, chunk_ranges=[])[0] == []


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(data)
    out[offset:offset + len(value)] = value
    return bytes(out)


@pytest.mark.parametrize("offset, value, message", [
    (0, b"SQLite format 4", "not an SQLite database"),
    (16, b"\x10\x00", "page size"),
    (18, b"\x02\x02", "WAL"),
    (20, b"\x08", "reserved bytes"),
    (28, b"\x00\x00\xff\xff", "pages of"),
    (36, b"\x00\x00\x00\x01", "free pages"),
    (44, b"\x00\x00\x00\x01", "schema format"),
    (56, b"\x00\x00\x00\x02", "UTF-8"),
    (60, b"\x00\x00\x00\x07", "layout version"),
    (68, b"\x00\x00\x00\x00", "application id"),
])
def test_header_fields_are_checked_before_sqlite_reads_the_bytes(database, offset, value, message):
    data, info = database
    with pytest.raises(CapsuleFormatError, match=message):
        check_database_header(_patched(data, offset, value)[:100], info=info)
    with pytest.raises(CapsuleFormatError, match=message):
        LexicalIndex.open([_patched(data, offset, value)], info=info, n_chunks=len(CHUNKS))


def test_declared_length_must_match(database):
    data, info = database
    with pytest.raises(CapsuleFormatError, match="exceeds"):
        LexicalIndex.open([data, b"\x00"], info=info, n_chunks=len(CHUNKS))
    with pytest.raises(CapsuleFormatError, match="is 100 bytes"):
        LexicalIndex.open([data[:100]], info=info, n_chunks=len(CHUNKS))
    with pytest.raises(CapsuleFormatError, match="rows"):
        LexicalIndex.open([data], info=info, n_chunks=len(CHUNKS) + 1)


def _rewritten(data: bytes, tmp_path: Path, *statements: str) -> bytes:
    path = tmp_path / "edit.sqlite"
    path.write_bytes(data)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.execute("VACUUM")
    conn.close()
    return path.read_bytes()


@pytest.mark.parametrize("statements, message", [
    (["CREATE TABLE notes(x)"], "schema differs"),
    (["CREATE VIEW v AS SELECT 1"], "schema differs"),
    (["CREATE TRIGGER t AFTER UPDATE ON lexi_config BEGIN SELECT 1; END"], "schema differs"),
    (["INSERT INTO lexi(rowid, heading, body, variants) VALUES (99, '', 'stray', '')"], "rows"),
])
def test_a_valid_database_with_another_schema_or_rows_is_refused(database, tmp_path, statements, message):
    data, info = database
    edited = _rewritten(data, tmp_path, *statements)
    edited_info = LexicalInfo(info.format, info.normaliser, len(edited), info.n_rows, info.page_bytes, info.fusion)
    with pytest.raises(CapsuleFormatError, match=message):
        LexicalIndex.open([edited], info=edited_info, n_chunks=len(CHUNKS))


def test_a_corrupted_page_is_a_format_error_not_a_crash(database):
    data, info = database
    assert len(data) // info.page_bytes > 2  # there are pages to corrupt
    for page in range(1, len(data) // info.page_bytes):
        start = page * info.page_bytes
        corrupt = data[:start] + bytes([data[start] ^ 0xFF]) + b"\xff" * 40 + data[start + 41:]
        try:
            lexi = LexicalIndex.open([corrupt], info=info, n_chunks=len(CHUNKS))
        except CapsuleFormatError:
            continue
        try:  # opened (quick_check does not read every FTS5 blob): a query ends in a typed error at worst
            lexi.search(LexicalQuery.parse("fault E-4021"), 5)
        except IntegrityError:
            pass
        lexi.close()


def test_writer_refuses_out_of_order_chunks(tmp_path):
    from firmware_tools.errors import BuildError

    writer = LexicalWriter(tmp_path / "l.sqlite")
    writer.add(0, "a")
    with pytest.raises(BuildError, match="expected 1"):
        writer.add(2, "b")
    writer.close()


def _digit_joins(tokens, text: str) -> list[str]:
    """Concatenations of 2..3 adjacent tokens that each hold a digit, separated by one space."""
    def compact(term: str) -> str:
        return "".join(re.findall(r"[^\W_]+", term))

    out = []
    for i, tok in enumerate(tokens):
        if tok.is_cjk or not any(c.isdigit() for c in tok.term):
            continue
        joined, end = compact(tok.term), tok.end
        for nxt in tokens[i + 1:i + 3]:
            if nxt.is_cjk or not any(c.isdigit() for c in nxt.term) or text[end:nxt.start] not in (" ", "\u00a0"):
                break
            joined += compact(nxt.term)
            out.append(joined)
            end = nxt.end
    return out


def _index_terms_by_tokens(text: str) -> tuple[str, str]:
    """index_terms as defined: every Token, its variants, then the digit joins."""
    from edge.lexical import token_variants

    tokens = list(iter_tokens(text))
    variants = [v for tok in tokens for v in token_variants(tok)] + _digit_joins(tokens, text)
    return " ".join(t.term for t in tokens), " ".join(variants)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["E-4021", "6ES7", "214-1AG40-0XB0", "P0304", "Größe", "max_wal_senders", "v2.3.1",
                                 "0x1F", "エンコーダ信号", "ﬁle", "22P02", "word", "1 2 3", "a" * 70, "\u00a0", "x1 y2"])
                | st.text(max_size=10), max_size=30))
def test_index_terms_equals_its_token_by_token_definition(words):
    text = " ".join(words)
    assert index_terms(text) == _index_terms_by_tokens(text)
