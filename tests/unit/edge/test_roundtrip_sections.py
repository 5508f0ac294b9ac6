"""Writer then reader is the identity for the DOCS plaintext and the frame table (issue 14: every
format piece has a writer beside its reader and a round-trip test, as python-tuf's and age's
suites check theirs). The manifest's and the container's are in test_manifest.py and
test_container_writer.py.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import format as fmt
from edge.errors import CapsuleFormatError
from edge.hits import (
    DOCS_BATCH_BYTES,
    MAX_HEADING_CHARS,
    MAX_INTERNED_MEDIA_TYPES,
    Document,
    DocumentTable,
    documents_to_bytes,
    parse_document_table,
    parse_documents,
    table_columns_from_bytes,
    table_columns_to_bytes,
)
from edge.manifest import canonical_json

_TITLE = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=MAX_HEADING_CHARS)


@st.composite
def _documents(draw):
    docs = []
    for _ in range(draw(st.integers(0, 6))):
        starts = sorted(draw(st.sets(st.integers(0, 10**9), max_size=5)))
        headings = tuple((start, draw(st.integers(1, 6)), draw(_TITLE)) for start in starts)
        docs.append(Document(draw(st.text(max_size=40)), draw(st.integers(0, 1 << 40)), draw(st.text(max_size=30)),
                             n_chunks=draw(st.integers(0, 1000)), headings=headings,
                             sha256=draw(st.sampled_from(["", "ab" * 32, "0123456789abcdef" * 4]))))
    return docs


@settings(max_examples=150, deadline=None)
@given(_documents())
def test_documents_serialise_then_parse_is_identity(docs):
    data = documents_to_bytes(docs)
    parsed = parse_documents(data, n_documents=len(docs), n_chunks=sum(d.n_chunks for d in docs))
    first = 0
    for doc, back in zip(docs, parsed, strict=True):
        assert back == Document(doc.name, doc.n_bytes, doc.media_type, n_chunks=doc.n_chunks, first_chunk_id=first,
                                headings=doc.headings, sha256=doc.sha256)
        first += doc.n_chunks
    assert documents_to_bytes(parsed) == data  # and back to the same bytes
    streamed = parse_document_table(data, n_documents=len(docs), n_chunks=sum(d.n_chunks for d in docs))
    assert list(streamed) == parsed  # entry by entry, the same documents
    table = DocumentTable(parsed)  # what an open capsule keeps
    assert len(table) == len(parsed) and list(table) == parsed and table[-1:] == parsed[-1:]
    assert list(table.iter_names()) == [doc.name for doc in parsed]
    for i, doc in enumerate(parsed):
        assert table.name(i) == doc.name and table[i] == doc
        for h in doc.headings:
            assert table.heading_path(i, h[0]) == doc.heading_path(h[0])
            assert table.heading_path(i, max(h[0] - 1, 0)) == doc.heading_path(max(h[0] - 1, 0))


@settings(max_examples=150, deadline=None)
@given(_documents())
def test_a_tables_columns_as_bytes_give_back_the_same_table(docs):
    # what a device store keeps beside an installed capsule (FORMAT.md §13.5)
    n_chunks = sum(d.n_chunks for d in docs)
    if not docs:
        return  # a manifest holds at least one document
    table = parse_document_table(documents_to_bytes(docs), n_documents=len(docs), n_chunks=n_chunks)
    back = table_columns_from_bytes(table_columns_to_bytes(table), n_documents=len(docs), n_chunks=n_chunks)
    assert list(back) == list(table) and list(back.iter_names()) == list(table.iter_names())
    for i, doc in enumerate(table):
        for h in doc.headings:
            assert back.heading_path(i, h[0]) == table.heading_path(i, h[0])
    assert table_columns_to_bytes(back) == table_columns_to_bytes(table)


def _columns_table():
    docs = [Document("a.md", 10, "text/markdown", n_chunks=2, headings=((0, 1, "Intro"), (5, 2, "Más"))),
            Document("b.html", 20, "text/html", n_chunks=1, sha256="ab" * 32),
            Document("c.md", 30, "text/markdown", n_chunks=3)]
    return parse_documents(documents_to_bytes(docs), n_documents=3, n_chunks=6)


def _edited(column: str, edit) -> bytes:
    """The stored table's bytes with one column edited in place (as if the tag had passed)."""
    from edge.hits import _TABLE_COLUMNS, _TABLE_HEADER

    data = bytearray(table_columns_to_bytes(DocumentTable(_columns_table())))
    fields = list(_TABLE_HEADER.unpack_from(data))
    names = [name for name, _, _ in _TABLE_COLUMNS]
    at = _TABLE_HEADER.size + sum(fields[3:3 + names.index(column)])
    length = fields[3 + names.index(column)]
    dtype = dict((name, dtype) for name, dtype, _ in _TABLE_COLUMNS)[column]
    values = np.frombuffer(bytes(data[at:at + length]), dtype=dtype).copy()
    edit(values)
    data[at:at + length] = values.tobytes()
    return bytes(data)


@pytest.mark.parametrize("column, edit, message", [
    ("_name_end", lambda v: v.__setitem__(-1, v[-1] + 1), "offsets name_end do not tile"),
    ("_name_end", lambda v: v.__setitem__(0, v[1] + 1), "offsets name_end do not tile"),
    ("_title_end", lambda v: v.__setitem__(-1, 1 << 30), "offsets title_end do not tile"),
    ("_heading_end", lambda v: v.__setitem__(-1, 7), "offsets heading_end do not tile"),
    ("_media_end", lambda v: v.__setitem__(-1, 999), "offsets media_end do not tile"),
    ("_media_index", lambda v: v.__setitem__(0, 5), "media type index points past"),
    ("n_chunks", lambda v: v.__setitem__(0, 3), "hold 7 chunks, the manifest says 6"),
    ("first_chunk_ids", lambda v: v.__setitem__(1, 1), "first chunk ids do not follow"),
])
def test_stored_table_columns_that_do_not_fit_together_are_refused(column, edit, message):
    with pytest.raises(CapsuleFormatError, match=message):
        table_columns_from_bytes(_edited(column, edit), n_documents=3, n_chunks=6)


def test_stored_table_bytes_that_are_not_a_table_of_this_manifest_are_refused():
    data = table_columns_to_bytes(DocumentTable(_columns_table()))
    for bad, message in ((data[:20], "truncated header"), (b"X" + data[1:], "not a document table"),
                         (data + b"\0", "its header says"), (data[:-1], "its header says")):
        with pytest.raises(CapsuleFormatError, match=message):
            table_columns_from_bytes(bad, n_documents=3, n_chunks=6)
    with pytest.raises(CapsuleFormatError, match="3 documents, the manifest says 4"):
        table_columns_from_bytes(data, n_documents=4, n_chunks=6)
    assert list(table_columns_from_bytes(data, n_documents=3, n_chunks=6)) == _columns_table()


@settings(max_examples=150, deadline=None)
@given(_documents(), st.data())
def test_the_entry_by_entry_parser_refuses_what_the_whole_parser_refuses(docs, data):
    good = documents_to_bytes(docs)
    n_chunks = sum(d.n_chunks for d in docs)
    at = data.draw(st.integers(0, len(good)))
    edit = data.draw(st.sampled_from(["insert", "delete", "flip"]))
    raw = bytearray(good)
    if edit == "insert":
        raw[at:at] = data.draw(st.sampled_from([b" ", b",", b"}", b'},{"bytes":', b"]", b"\\", b'"']))
    elif edit == "delete" and at < len(raw):
        del raw[at]
    elif at < len(raw):
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    bad = bytes(raw)
    outcomes = []
    for parse in (parse_documents, parse_document_table):
        try:
            outcomes.append(list(parse(bad, n_documents=len(docs), n_chunks=n_chunks)))
        except CapsuleFormatError:
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1]


def _many_documents(n: int) -> list[Document]:
    """``n`` documents with names, headings and digests of varied lengths: about 170 bytes of DOCS each,
    so a few hundred span several of ``parse_document_table``'s batches (``DOCS_BATCH_BYTES``)."""
    return [Document(f"manuals/{'é' * (i % 7)}part-{i:05d}.md", 1000 + i, "text/markdown", n_chunks=i % 4,
                     headings=tuple((10 * h, 1 + h % 6, f"Section {h} ✓") for h in range(i % 3)),
                     sha256=("0123456789abcdef" * 4) if i % 2 else "") for i in range(n)]


def test_the_batched_parser_agrees_with_the_whole_parser_across_batches():
    docs = _many_documents(800)
    good = documents_to_bytes(docs)
    n_chunks = sum(d.n_chunks for d in docs)
    assert len(good) > 4 * DOCS_BATCH_BYTES  # several batches, and an entry in the last one below
    assert list(parse_document_table(good, n_documents=800, n_chunks=n_chunks)) == parse_documents(
        good, n_documents=800, n_chunks=n_chunks)
    assert good.index(b'"bytes":1700,') > 3 * DOCS_BATCH_BYTES  # document 700, in a later batch
    bad_edits = {
        "duplicate member": good.replace(b'"bytes":1700,', b'"bytes":1700,"bytes":1700,'),
        "integer over 2^53 - 1": good.replace(b'"bytes":1700,', b'"bytes":9007199254740992,'),
        "float": good.replace(b'"bytes":1700,', b'"bytes":1700.0,'),
        "escaped letter": good.replace(b"part-00700", b"\\u0070art-00700"),
        "escaped surrogate": good.replace(b"part-00700", b"part-\\ud800"),
        "whitespace": good.replace(b'"bytes":1700,', b'"bytes": 1700,'),
        "media type not a string": good.replace(b'"bytes":1700,"headings":[[0,1,"Section 0 \xe2\x9c\x93"]],'
                                                b'"media_type":"text/markdown"',
                                                b'"bytes":1700,"headings":[[0,1,"Section 0 \xe2\x9c\x93"]],"media_type":7'),
    }
    for what, bad in bad_edits.items():
        assert bad != good, what
        for parse in (parse_documents, parse_document_table):
            with pytest.raises(CapsuleFormatError):
                parse(bad, n_documents=800, n_chunks=n_chunks)
                pytest.fail(f"{parse.__name__} took the list with {what}")
    # a malformed entry in a later batch is named as the whole parser names it
    with pytest.raises(CapsuleFormatError, match="^document 700 entry is malformed$"):
        parse_document_table(bad_edits["media type not a string"], n_documents=800, n_chunks=n_chunks)
    # an entry cut in two at a batch edge is refused
    with pytest.raises(CapsuleFormatError):
        parse_document_table(good.replace(b'"n_chunks":0,"name":"manuals/part-00700.md"', b'"n_chunks":0}'),
                             n_documents=800, n_chunks=n_chunks)


def test_a_count_the_list_cannot_hold_is_refused_before_the_columns_are_allocated():
    data = documents_to_bytes(_many_documents(3))
    tracemalloc.start()
    try:
        with pytest.raises(CapsuleFormatError, match="cannot hold the 100000000 entries the manifest says"):
            parse_document_table(data, n_documents=100_000_000, n_chunks=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # not 6 GB of columns for 100 million documents


def test_more_media_types_than_are_interned_are_kept_per_document():
    docs = [Document(f"d{i}", i, f"text/x-kind-{i % (MAX_INTERNED_MEDIA_TYPES + 44)}", n_chunks=1) for i in range(700)]
    data = documents_to_bytes(docs)
    table = parse_document_table(data, n_documents=700, n_chunks=700)
    assert list(table) == parse_documents(data, n_documents=700, n_chunks=700)
    assert [table[i].media_type for i in (0, 255, 256, 299, 300, 699)] == [docs[i].media_type for i in
                                                                          (0, 255, 256, 299, 300, 699)]


def test_a_list_without_headings_and_with_every_digest_takes_the_batch_shortcuts_to_the_same_table():
    # SciFact's shape (a digest on every entry, no headings, one media type) over several batches:
    # the builder's whole-batch paths give what entry-by-entry parsing does.
    docs = [Document(f"corpus/{i:06d}.txt", 500 + i, "text/plain", n_chunks=1 + i % 3, sha256=f"{i:064x}")
            for i in range(1500)]
    data = documents_to_bytes(docs)
    assert len(data) > 4 * DOCS_BATCH_BYTES
    n_chunks = sum(d.n_chunks for d in docs)
    table = parse_document_table(data, n_documents=1500, n_chunks=n_chunks)
    assert list(table) == parse_documents(data, n_documents=1500, n_chunks=n_chunks)
    assert documents_to_bytes(list(table)) == data


def test_parse_documents_checks_the_counts_against_the_manifest():
    data = documents_to_bytes([Document("a.md", 10, "text/markdown", n_chunks=2)])
    with pytest.raises(CapsuleFormatError, match="manifest says 2"):
        parse_documents(data, n_documents=2, n_chunks=2)
    with pytest.raises(CapsuleFormatError, match="hold 2 chunks, manifest says 3"):
        parse_documents(data, n_documents=1, n_chunks=3)


def test_the_writer_refuses_what_the_reader_would_refuse():
    out_of_order = Document("a.md", 10, "text/markdown", n_chunks=1, headings=((5, 1, "B"), (0, 1, "A")))
    with pytest.raises(ValueError, match="malformed heading"):
        documents_to_bytes([out_of_order])
    with pytest.raises(ValueError, match="cannot be written"):
        documents_to_bytes([Document("a.md", 10, "text/markdown", sha256="abc")])
    for bad in ("AB" * 32, "zz" * 32):  # the length alone is not enough: lowercase hex (FORMAT.md §8)
        with pytest.raises(ValueError):
            documents_to_bytes([Document("a.md", 10, "text/markdown", sha256=bad)])
        data = canonical_json({"documents": [{"name": "a.md", "bytes": 10, "media_type": "text/markdown",
                                              "n_chunks": 1, "headings": [], "sha256": bad}]})
        with pytest.raises(CapsuleFormatError, match="document 0 entry is malformed"):
            parse_documents(data, n_documents=1, n_chunks=1)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, fmt.MAX_SAMPLE_BYTES), min_size=1, max_size=40),
       gaps=st.lists(st.integers(0, 4096), min_size=40, max_size=40),
       slots=st.lists(st.integers(1, 60), min_size=40, max_size=40), spare_chunks=st.integers(0, 59))
def test_frame_table_serialise_then_parse_is_identity(sizes, gaps, slots, spare_chunks):
    offsets, at = [], 0
    for size, gap in zip(sizes, gaps):
        at += gap
        offsets.append(at)
        at += size
    firsts = np.concatenate([[0], np.cumsum(slots[:len(sizes) - 1])]).astype(np.uint32)
    n_chunks = int(firsts[-1]) + 1 + spare_chunks
    table = fmt.FrameTable(np.array(offsets, np.uint64), np.array(sizes, np.uint32), firsts, n_chunks)
    data = table.to_bytes()
    assert len(data) == fmt.FRAME_ENTRY_BYTES * len(sizes)
    parsed = fmt.FrameTable.from_bytes(data, n_frames=len(sizes), n_chunks=n_chunks, video_bytes=at)
    assert np.array_equal(parsed.sample_offsets, table.sample_offsets)
    assert np.array_equal(parsed.sample_bytes, table.sample_bytes)
    assert np.array_equal(parsed.first_chunk_ids, table.first_chunk_ids)
    assert parsed.to_bytes() == data


_GOOD_ENTRIES = (
    {"bytes": 10, "headings": [], "media_type": "text/plain", "n_chunks": 1, "name": "a.txt"},
    {"bytes": 20, "headings": [[0, 1, "Intro"], [9, 2, "Wiring"]], "media_type": "text/markdown", "n_chunks": 2,
     "name": "b.md", "sha256": "ab" * 32},
    {"bytes": 0, "headings": [], "media_type": "text/plain", "n_chunks": 0, "name": "c.txt", "sha256": ""},
)


class _Missing:
    """The field is left out (a fixed repr, so pytest-xdist workers collect the same test ids)."""

    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()
_ENTRY_EDITS = [
    ("bytes", True), ("bytes", -1), ("bytes", 2**53), ("bytes", "1"), ("bytes", None), ("n_chunks", False),
    ("n_chunks", -1), ("n_chunks", 2**53), ("name", 5), ("name", _MISSING), ("media_type", ["x"]),
    ("sha256", "AB" * 32), ("sha256", "ab" * 31 + "a"), ("sha256", "ab" * 33), ("sha256", "g" * 64),
    ("sha256", "é" * 64), ("sha256", " " + "a" * 63), ("sha256", 7), ("sha256", None), ("sha256", ""),
    ("sha256", _MISSING), ("headings", {}), ("headings", None), ("headings", [[0]]), ("headings", [[0, 7, "x"]]),
    ("headings", [[5, 1, "b"], [1, 1, "a"]]), ("headings", [[0, 1, "Intro"]]), ("headings", _MISSING),
    ("extra", 1),
]


@pytest.mark.parametrize("field, value", _ENTRY_EDITS, ids=[f"{f}={v!r}"[:40] for f, v in _ENTRY_EDITS])
def test_the_column_checks_accept_and_refuse_exactly_what_the_entry_check_does(field, value):
    # _check_entries checks each field over a whole batch at once; an entry it takes must be one
    # _check_entry takes, with the same values, and one it refuses is named as _check_entry names it.
    for at in range(len(_GOOD_ENTRIES)):
        items = [dict(entry) for entry in _GOOD_ENTRIES]
        if value is _MISSING:
            items[at].pop(field, None)
        else:
            items[at][field] = value
        _assert_columns_agree(items)


@pytest.mark.parametrize("item", [["not", "an", "object"], "text", 3, None])
def test_an_entry_that_is_not_an_object_is_named_by_the_column_checks(item):
    _assert_columns_agree([dict(_GOOD_ENTRIES[0]), item, dict(_GOOD_ENTRIES[1])])
    _assert_columns_agree([dict(entry) for entry in _GOOD_ENTRIES])


def _assert_columns_agree(items: list) -> None:
    from edge.hits import _check_entries, _check_entry

    try:
        expected = [list(column) for column in zip(*(_check_entry(item, 7 + i) for i, item in enumerate(items)))]
    except CapsuleFormatError as exc:
        with pytest.raises(CapsuleFormatError, match=f"^{exc}$"):
            _check_entries(items, 7)
    else:
        assert [list(column) for column in _check_entries(items, 7)] == expected
