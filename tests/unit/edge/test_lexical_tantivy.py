"""The tantivy-7 lexical index (FORMAT.md §5.6): ident-v2 terms, what BM25 finds, the archive and
meta.json checks made before tantivy reads a byte, and what opening leaves on the file system.
Real tantivy, real zstd; the writer is the builder's own."""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
import zstandard

from edge.errors import CapsuleFormatError
from edge.lexical import LexicalQuery, match_terms, open_lexical_index, v2_term
from edge.lexical_tantivy import TantivyLexicalIndex, parse_archive
from edge.manifest import FusionInfo, LexicalInfo
from edge.retrieval import mark
from firmware_tools.errors import BuildError
from firmware_tools.lexical_writer import TantivyLexicalWriter, pack_archive

CHUNKS = [
    "Fault E-4021: encoder signal lost. Check the encoder cable.",
    "Order number 6ES7 214-1AG40-0XB0 for the CPU module.",
    "The drive restarts after fault E-4022 is cleared.",
    "max_wal_senders sets the maximum number of WAL sender processes.",
    "Die Größe der Drehzahlüberwachung wird in P0304 eingestellt.",
    "エンコーダ信号の喪失を確認してください。",
    "Use os.path.join to build paths; version v2.3.1 fixed 0x1F handling.",
    "Resetting the encoders clears every stored fault.",
]
HEADINGS = [("Fault codes", "E-4021 Encoder signal lost"), ("Parts",), ("Fault codes",), ("Replication",),
            ("Parameter",), ("故障",), ("Python",), ("Maintenance",)]


def _build(path: Path, chunks=CHUNKS, headings=HEADINGS) -> tuple[bytes, LexicalInfo]:
    with TantivyLexicalWriter(path) as writer:
        for chunk_id, (text, heading) in enumerate(zip(chunks, headings)):
            writer.add(chunk_id, text, heading_path=heading)
        meta = writer.finish()
    info = LexicalInfo("tantivy-7", "ident-v2", meta["plaintext_bytes"], meta["n_rows"], 0, FusionInfo("rrf", 5, 1, 1, 20))
    return path.read_bytes(), info


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[bytes, LexicalInfo]:
    return _build(tmp_path_factory.mktemp("lexi") / "lexi.index")


@pytest.fixture(scope="module")
def index(built) -> TantivyLexicalIndex:
    section, info = built
    lexi = open_lexical_index([section], info=info, n_chunks=len(CHUNKS), section_bytes=len(section))
    yield lexi
    lexi.close()


def _top(index, query: str, n: int = 3) -> list[int]:
    return index.search(LexicalQuery.parse(query), n)[0]


def _reopen(files: dict[str, bytes], info: LexicalInfo, n_chunks: int = len(CHUNKS)):
    archive = pack_archive(files)
    section = zstandard.ZstdCompressor(write_content_size=True).compress(archive)
    info = LexicalInfo(info.format, info.normaliser, len(archive), n_chunks, 0, info.fusion)
    return open_lexical_index([section], info=info, n_chunks=n_chunks, section_bytes=len(section))


def _files(built) -> dict[str, bytes]:
    section, _ = built
    return {k: bytes(v) for k, v in parse_archive(zstandard.ZstdDecompressor().decompress(section)).items()}


def test_v2_terms_stem_words_fold_latin_and_leave_identifiers_and_cjk():
    assert [v2_term(t) for t in ("encoders", "resetting", "studies", "größe", "café", "e-4021", "max_wal_senders",
                                 "0x1f", "故障", "p0304")] == [
        "encod", "reset", "studi", "große", "cafe", "e-4021", "max_wal_senders", "0x1f", "故障", "p0304"]


@pytest.mark.parametrize("query, chunk", [("E-4021", 0), ("e4021", 0), ("4021", 0), ("6ES72141AG400XB0", 1),
                                          ("214-1AG40-0XB0", 1), ("max_wal_senders", 3), ("P0304", 4),
                                          ("os.path.join", 6), ("v2.3.1", 6), ("0x1F", 6), ("信号", 5)])
def test_identifier_forms_find_their_chunk_first(index, query, chunk):
    assert _top(index, query)[0] == chunk


def test_inflected_words_find_their_stem_and_accents_fold(index):
    assert _top(index, "reset") == [7]  # only "Resetting the encoders" holds it, inflected
    assert set(_top(index, "clearing")) == {2, 7}  # "cleared", "clears"
    assert 4 in _top(index, "grosse", 1) or 4 in _top(index, "größe", 1)
    assert _top(index, "Drehzahluberwachung")[0] == 4


def test_a_heading_term_finds_the_chunks_under_it(index):
    assert set(_top(index, "replication", 8)) == {3}
    assert _top(index, "encoder signal lost")[0] == 0  # in its heading too


def test_exact_matches_need_every_identifier_and_say_not_found(index):
    assert index.exact_matches(LexicalQuery.parse("E-4021 encoder"), limit=10) == [0]
    assert index.exact_matches(LexicalQuery.parse("E-9999"), limit=10) == []
    assert index.exact_matches(LexicalQuery.parse("E-4021 E-4022"), limit=10) == []
    assert index.exact_matches(LexicalQuery.parse("6ES7 214-1AG40-0XB0"), limit=10) == [1]
    assert index.exact_matches(LexicalQuery.parse("how do I reset it"), limit=10) == []


def test_document_ranges_restrict_results_and_keep_scores(index):
    query = LexicalQuery.parse("fault")
    ids, scores = index.search(query, 8)
    assert {0, 2} <= set(ids)
    kept, kept_scores = index.search(query, 8, chunk_ranges=[(2, 3)])
    assert kept == [2] and kept_scores == [scores[ids.index(2)]]
    assert index.search(query, 8, chunk_ranges=[]) == ([], [])
    assert index.exact_matches(LexicalQuery.parse("E-4021"), limit=10, chunk_ranges=[(1, 8)]) == []


@pytest.mark.parametrize("query", ['"', "*", "NEAR(encoder", "a OR b", "body:e", "title:(x", "\\", "+-", "", "   ",
                                   "x" * 10_000, "\x00\x1b[2J", "' OR 1=1 --"])
def test_query_text_is_never_syntax(index, query):
    ids, scores = index.search(LexicalQuery.parse(query), 5)
    assert len(ids) == len(scores) <= 5


def test_highlighting_matches_by_stem_on_a_v2_index():
    query = LexicalQuery.parse("resetting encoders")
    text = CHUNKS[7]
    assert [t for *_, t in match_terms(text, query.terms, stemmed=True)] == [{"resetting"}, {"encoders"}]
    assert match_terms("reset the encoder", query.terms, stemmed=False) == []
    # Porter2 respells three special words at their start: "dying" is stemmed "die", as tantivy
    # indexed it, so it is marked for a query of "die" although its first letters differ
    dying = match_terms("the patient was dying slowly", LexicalQuery.parse("die").terms, stemmed=True)
    assert [(start, end, set(terms)) for start, end, terms in dying] == [(16, 21, {"die"})]
    assert v2_term("dying") == v2_term("die") == "die" and v2_term("lying") == "lie" and v2_term("tying") == "tie"
    terms, spans, _ = mark("Reset the encoder now.", query, stemmed=True)
    assert set(terms) == {"resetting", "encoders"} and spans == ((0, 5), (10, 17))


def test_the_writer_is_deterministic_and_names_segments_by_content(tmp_path, built):
    again, _ = _build(tmp_path / "again.index")
    assert again == built[0]
    names = list(_files(built))
    assert names[0] == "meta.json" and len(names) == 7
    meta = json.loads(_files(built)["meta.json"])
    assert meta["segments"][0]["segment_id"].replace("-", "") == names[1].split(".")[0]


def test_the_writer_refuses_out_of_order_chunks_and_an_empty_index(tmp_path):
    writer = TantivyLexicalWriter(tmp_path / "a")
    with pytest.raises(BuildError, match="expected 0"):
        writer.add(1, "x")
    with pytest.raises(BuildError, match="at least one chunk"):
        writer.finish()
    writer.close()
    assert not (tmp_path / "a.d").exists()


def test_opening_names_no_plaintext_and_leaves_no_folder_behind(built, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    import tantivy
    monkeypatch.setattr(tempfile, "tempdir", None)
    seen = {}
    real_open = tantivy.Index.open

    def open_and_look(path):  # the real tantivy open; records what the folder held then
        folder = Path(path)
        seen["mode"] = oct(folder.stat().st_mode & 0o777)
        seen["links"] = [(p.name, os.readlink(p)) for p in folder.iterdir()]
        return real_open(path)

    monkeypatch.setattr(tantivy.Index, "open", open_and_look)
    section, info = built
    lexi = open_lexical_index([section], info=info, n_chunks=len(CHUNKS), section_bytes=len(section))
    assert seen["mode"] == "0o700"
    assert seen["links"] and all(target.startswith("/proc/self/fd/") for _, target in seen["links"])
    # Gone once the searcher has mapped the files: a process killed from now on leaves nothing.
    assert list(tmp_path.iterdir()) == []
    time.sleep(0.6)  # past tantivy's meta-file watcher poll (500 ms): it must not mind
    assert lexi.search(LexicalQuery.parse("encoder"), 1)[0] == [0]
    lexi.close()
    assert list(tmp_path.iterdir()) == []
    lexi.close()  # twice is harmless


def _refooter(data: bytes, *, version: int | None = None, flip: bool = False) -> bytes:
    n = struct.unpack("<I", data[-8:-4])[0]
    body, footer = bytearray(data[:len(data) - 8 - n]), json.loads(data[len(data) - 8 - n:-8])
    if flip:
        body[len(body) // 2] ^= 1
    if version is not None:
        footer["version"]["index_format_version"] = version
        footer["crc"] = zlib.crc32(body)
    encoded = json.dumps(footer).encode()
    return bytes(body) + encoded + struct.pack("<II", len(encoded), 1337)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.pop(next(k for k in f if k.endswith(".fieldnorm"))), "do not match meta.json"),
    (lambda f: f.__setitem__("0" * 32 + ".idx", b"x"), "do not match meta.json"),
    (lambda f: f.__setitem__("meta.json", b"{"), "not JSON"),
    (lambda f: f.__setitem__("meta.json", b" " * (65 << 10)), "limit"),
    (lambda f: f.__setitem__("meta.json", f["meta.json"].replace(b'"freq"', b'"position"', 1)), "schema"),
    (lambda f: f.__setitem__("meta.json", f["meta.json"].replace(b'"deletes":null', b'"deletes":{"n":1}')), "segment"),
    (lambda f: f.__setitem__("meta.json", f["meta.json"].replace(b'"max_doc":8', b'"max_doc":7')), "7 documents"),
    (lambda f: f.__setitem__(next(k for k in f if k.endswith(".idx")), _refooter(f[next(k for k in f if k.endswith(".idx"))], version=8)), "format 8"),
    (lambda f: f.__setitem__(next(k for k in f if k.endswith(".term")), _refooter(f[next(k for k in f if k.endswith(".term"))], flip=True)), "CRC-32"),
    (lambda f: f.__setitem__(next(k for k in f if k.endswith(".store")), b"\x00" * 7), "footer"),
])
def test_a_bad_archive_is_refused_before_tantivy_reads_it(built, edit, message):
    files = _files(built)
    edit(files)
    with pytest.raises(CapsuleFormatError, match=message):
        _reopen(files, built[1])


@pytest.mark.parametrize("patch, message", [
    (lambda a: a.__setitem__(slice(0, 8), b"ELEXTAN2"), "bad header"),
    (lambda a: a.__setitem__(slice(8, 12), struct.pack("<I", 386)), "386 files"),
    (lambda a: a.__setitem__(slice(8, 12), struct.pack("<I", 1 << 20)), "files"),
    (lambda a: a.__setitem__(slice(72, 80), struct.pack("<Q", 1 << 62)), "not where the table says"),
    (lambda a: a.__setitem__(slice(16, 25), b"../../etc"), "first and once"),
])
def test_the_archive_table_is_checked_whole(built, patch, message):
    archive = bytearray(pack_archive(_files(built)))
    patch(archive)
    with pytest.raises(CapsuleFormatError, match=message):
        parse_archive(bytes(archive))
    with pytest.raises(CapsuleFormatError, match="bytes after its last file"):
        parse_archive(pack_archive(_files(built)) + b"\x00")


def test_the_section_must_be_one_zstd_frame_of_the_declared_size(built):
    section, info = built
    for bad in (section[:-1], section + b"\x00", b"not zstd"):
        with pytest.raises(CapsuleFormatError):
            open_lexical_index([bad], info=info, n_chunks=len(CHUNKS), section_bytes=len(bad))
    bigger = LexicalInfo(info.format, info.normaliser, info.plaintext_bytes - 1, info.n_rows, 0, info.fusion)
    with pytest.raises(CapsuleFormatError, match="decompresses to"):
        open_lexical_index([section], info=bigger, n_chunks=len(CHUNKS), section_bytes=len(section))
    with pytest.raises(CapsuleFormatError, match="rows"):
        open_lexical_index([section], info=info, n_chunks=len(CHUNKS) + 1, section_bytes=len(section))


def test_without_a_writable_tmpdir_the_links_go_to_the_fallback_folder(built, monkeypatch, tmp_path):
    """A container run with --read-only has no writable /tmp but a /dev/shm: found on aarch64 by
    docker/arm64/test.sh, where every capsule with a tantivy index failed to open (EdgeError)."""
    import errno
    import tempfile

    import edge.lexical_tantivy as lt
    from edge.errors import EdgeError

    real_mkdtemp = tempfile.mkdtemp
    used: list[str] = []

    def read_only_tmp(prefix="", dir=None):
        if dir is None:
            raise OSError(errno.EROFS, "Read-only file system")
        used.append(real_mkdtemp(prefix=prefix, dir=dir))
        return used[-1]

    monkeypatch.setattr(lt.tempfile, "mkdtemp", read_only_tmp)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(lt, "LINK_DIR_FALLBACKS", (str(shm),))
    section, info = built
    lexi = open_lexical_index([section], info=info, n_chunks=len(CHUNKS), section_bytes=len(section))
    try:
        assert used and used[0].startswith(str(shm)) and not os.path.exists(used[0])  # links removed once open
        assert _top(lexi, "encoder")  # it searches
    finally:
        lexi.close()
    monkeypatch.setattr(lt, "LINK_DIR_FALLBACKS", (str(tmp_path / "missing"),))
    with pytest.raises(EdgeError, match="private temporary folder.*--tmpfs"):
        open_lexical_index([section], info=info, n_chunks=len(CHUNKS), section_bytes=len(section))
