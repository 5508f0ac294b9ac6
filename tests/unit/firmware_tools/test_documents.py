"""Rules of firmware_tools.documents, on the real fixtures in tests/data/docs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from firmware_tools.documents import (
    Document,
    Heading,
    iter_documents,
    normalize_text,
    parse_document,
    plan_documents,
    read_document,
    read_document_bytes,
)
from firmware_tools.errors import InputDocumentError

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "tests" / "data" / "docs"
GOOD = DOCS / "good"
EXAMPLE = REPO / "examples" / "python-faq"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- readers ---------------------------------------------------------------


def test_read_document_keeps_markdown_text():
    path = GOOD / "faq-what-is-python.md"
    doc = read_document(path)
    assert doc == Document(
        name="faq-what-is-python.md",
        text=path.read_text(encoding="utf-8").strip(),
        media_type="text/markdown",
        sha256=_sha256(path),
        n_bytes=path.stat().st_size,
        headings=(
            Heading(0, 1, "What is Python?"),
            Heading(doc.text.index("## What is Python good for?"), 2, "What is Python good for?"),
        ),
    )
    assert doc.text.startswith("# What is Python?\n\n")


def test_read_document_reads_plain_text():
    path = GOOD / "more" / "faq-copyright.txt"
    doc = read_document(path, name="more/faq-copyright.txt")
    assert doc.name == "more/faq-copyright.txt"
    assert doc.media_type == "text/plain"
    assert doc.text.startswith("Are there copyright restrictions on the use of Python?\n---")
    assert "\n\nThe Python logo is trademarked" in doc.text


def test_read_document_reads_rst_as_text(tmp_path):
    path = tmp_path / "faq.rst"
    shutil.copyfile(GOOD / "more" / "faq-copyright.txt", path)
    doc = read_document(path)
    assert doc.media_type == "text/x-rst"
    assert doc.text == read_document(GOOD / "more" / "faq-copyright.txt").text


def test_read_document_html_drops_script_style_nav_and_comments():
    doc = read_document(GOOD / "faq-psf.html")
    assert doc.media_type == "text/html"
    for hidden in ("console.log", "tracking", "color: #333", "Home |", "a comment"):
        assert hidden not in doc.text


def test_read_document_html_keeps_block_paragraphs_and_br_lines():
    paragraphs = read_document(GOOD / "faq-psf.html").text.split("\n\n")
    assert paragraphs == [
        "What is the Python Software Foundation?",  # <title>
        "What is the Python Software Foundation?",  # <h1>
        "The Python Software Foundation is an independent non-profit organization that "
        "holds the copyright on Python versions 2.1 and newer. The PSF\u2019s mission is to "
        "advance open source technology related to the Python programming language and to "
        "publicize the use of Python.",
        "Donations to the PSF are tax-exempt in the US. If you use Python and find it "
        "helpful, please contribute via the PSF donation page.",
        "Home page: https://www.python.org/psf/",
        "Licence: PSF License Agreement",
        "Source:\nPython 3.11 General Python FAQ",
    ]


def test_read_document_html_keeps_pre_whitespace(tmp_path):
    path = tmp_path / "code.htm"
    path.write_text("<p>Try:</p><pre>if x:\n    y()</pre><p>a  <b>b</b>\n c</p>", encoding="utf-8")
    assert read_document(path).text == "Try:\n\nif x:\n    y()\n\na b c"


def test_read_document_pdf_joins_pages_with_blank_line():
    path = GOOD / "faq-indentation.pdf"
    doc = read_document(path)
    assert doc.media_type == "application/pdf"
    assert doc.sha256 == _sha256(path) and doc.n_bytes == 2506
    page_1, page_2 = doc.text.split("\n\n")
    assert page_1.startswith("Why does Python use indentation for grouping of statements?\n")
    assert "cannot be a disagreement between" in page_1
    assert page_2.startswith("Why are colons required for the if/while/def/class statements?")


def test_read_document_suffix_is_case_insensitive(tmp_path):
    path = tmp_path / "NOTES.TXT"
    path.write_text("Shouting file name.", encoding="utf-8")
    assert read_document(path).media_type == "text/plain"


def test_read_document_normalises_text(tmp_path):
    path = tmp_path / "messy.txt"
    # BOM, CRLF, lone CR, trailing spaces/tabs, decomposed e-acute, 4 blank lines.
    path.write_bytes(
        "\ufeff  \r\nCafe\u0301 line \t\r\nnext\rlast\n\n\n\n\nend  \n\n".encode("utf-8")
    )
    assert read_document(path).text == "Caf\u00e9 line\nnext\nlast\n\n\nend"


def test_normalize_text_keeps_two_blank_lines():
    assert normalize_text("a\n\n\nb\n\nc") == "a\n\n\nb\n\nc"


# --- reader refusals --------------------------------------------------------


def _assert_refused(path: Path, fragment: str, **kwargs) -> None:
    with pytest.raises(InputDocumentError, match=fragment) as info:
        read_document(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_read_document_rejects_unsupported_suffix(tmp_path):
    path = tmp_path / "slides.docx"
    path.write_bytes(b"PK\x03\x04")
    _assert_refused(path, r"unsupported file type '\.docx'")


def test_read_document_rejects_missing_file(tmp_path):
    _assert_refused(tmp_path / "gone.txt", "no such file")


def test_read_document_rejects_broken_pdf():
    _assert_refused(DOCS / "bad" / "broken.pdf", "broken pdf")


def test_read_document_rejects_encrypted_pdf(tmp_path):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(GOOD / "faq-indentation.pdf"))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    path = tmp_path / "locked.pdf"
    with path.open("wb") as f:
        writer.write(f)
    _assert_refused(path, "encrypted pdf")


def test_read_document_rejects_pdf_without_text(tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    path = tmp_path / "scan.pdf"
    with path.open("wb") as f:
        writer.write(f)
    _assert_refused(path, "pdf has no extractable text")


def test_read_document_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.md"
    path.write_bytes(b"")
    _assert_refused(path, "empty document")


def test_read_document_rejects_whitespace_only_file(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_bytes(b" \r\n\t\n  \n")
    _assert_refused(path, "empty document")


def test_read_document_rejects_html_without_visible_text(tmp_path):
    path = tmp_path / "app.html"
    path.write_text("<html><script>run()</script><nav>Menu</nav></html>", encoding="utf-8")
    _assert_refused(path, "empty document")


def test_read_document_rejects_non_utf8_text(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me".encode("cp1252"))
    _assert_refused(path, r"not UTF-8 \(invalid byte 0xe9 at offset 3\)")


def test_read_document_rejects_file_over_size_limit():
    _assert_refused(GOOD / "faq-psf.html", "file is 1122 bytes, limit is 1000", max_file_bytes=1000)


def test_read_document_rejects_directory(tmp_path):
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    _assert_refused(folder, "not a regular file")


# --- iter_documents ---------------------------------------------------------


def test_iter_documents_expands_directory_sorted_and_recursive():
    docs = list(iter_documents([GOOD]))
    assert [d.name for d in docs] == [
        "faq-indentation.pdf",
        "faq-psf.html",
        "faq-what-is-python.md",
        "more/faq-copyright.txt",
    ]
    assert [d.media_type for d in docs] == [
        "application/pdf",
        "text/html",
        "text/markdown",
        "text/plain",
    ]


def test_plan_then_parse_is_iter_documents():
    """A cluster build reads with plan_documents/read_document_bytes and parses elsewhere."""
    planned = plan_documents([GOOD])
    assert [name for _, name in planned] == [d.name for d in iter_documents([GOOD])]
    assert [parse_document(read_document_bytes(shown), shown, name=name) for shown, name in planned] == \
        list(iter_documents([GOOD]))


def test_read_document_bytes_makes_the_checks_of_read_document(tmp_path):
    (tmp_path / "notes.docx").write_bytes(b"x")
    with pytest.raises(InputDocumentError, match="unsupported file type"):
        read_document_bytes(tmp_path / "notes.docx")
    (tmp_path / "big.txt").write_bytes(b"x" * 11)
    with pytest.raises(InputDocumentError, match="limit is 10"):
        read_document_bytes(tmp_path / "big.txt", max_file_bytes=10)


def test_iter_documents_is_deterministic():
    assert list(iter_documents([GOOD])) == list(iter_documents([GOOD]))


def test_iter_documents_order_does_not_depend_on_creation_order(tmp_path):
    for name in ("b.txt", "a/z.txt", "a.txt", "a-b/y.txt", "B.md"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"Text of {name}.", encoding="utf-8")
    names = [d.name for d in iter_documents([tmp_path])]
    assert names == ["B.md", "a/z.txt", "a-b/y.txt", "a.txt", "b.txt"]


def test_iter_documents_skips_hidden_and_unsupported_files_in_directory(tmp_path):
    (tmp_path / "kept.txt").write_text("Kept.", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("Hidden.", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.md").write_text("Hidden dir.", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "data.jsonl").write_text("{}", encoding="utf-8")
    assert [d.name for d in iter_documents([tmp_path])] == ["kept.txt"]


def test_iter_documents_names_are_relative_to_common_root(tmp_path):
    for name in ("faq/general.txt", "guide/intro.md", "guide/deep/more.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"Text of {name}.", encoding="utf-8")
    docs = iter_documents([tmp_path / "guide", tmp_path / "faq" / "general.txt"])
    assert [d.name for d in docs] == ["guide/deep/more.txt", "guide/intro.md", "faq/general.txt"]


def test_iter_documents_single_file_is_named_by_its_file_name():
    (doc,) = iter_documents([GOOD / "more" / "faq-copyright.txt"])
    assert doc.name == "faq-copyright.txt"


def test_iter_documents_yields_each_file_once():
    docs = list(iter_documents([GOOD / "faq-psf.html", GOOD, GOOD / "faq-psf.html"]))
    assert [d.name for d in docs] == [
        "faq-psf.html",
        "faq-indentation.pdf",
        "faq-what-is-python.md",
        "more/faq-copyright.txt",
    ]


def test_iter_documents_rejects_explicit_unsupported_file(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputDocumentError, match=r"table\.csv: unsupported file type '\.csv'"):
        list(iter_documents([path]))


def test_iter_documents_rejects_missing_path(tmp_path):
    with pytest.raises(InputDocumentError, match="nowhere: no such file or directory"):
        list(iter_documents([GOOD, tmp_path / "nowhere"]))


def test_iter_documents_checks_paths_before_reading_any_file(tmp_path):
    (tmp_path / "late.csv").write_text("a,b\n", encoding="utf-8")
    # Raised by the call itself, not when the first document is read.
    with pytest.raises(InputDocumentError, match=r"late\.csv: unsupported file type"):
        iter_documents([GOOD, tmp_path / "late.csv"])
    with pytest.raises(InputDocumentError, match="nowhere: no such file or directory"):
        iter_documents([GOOD, tmp_path / "nowhere"])


def test_iter_documents_rejects_directory_without_documents(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputDocumentError, match="directory holds no supported documents"):
        list(iter_documents([tmp_path]))


def test_iter_documents_names_the_failing_file_inside_a_directory():
    with pytest.raises(InputDocumentError, match=r"bad/broken\.pdf: broken pdf"):
        list(iter_documents([DOCS / "bad"]))


def test_iter_documents_rejects_empty_path_list():
    with pytest.raises(ValueError, match="no input paths"):
        list(iter_documents([]))


# --- the shipped example corpus ----------------------------------------------


def test_example_corpus_reads_and_matches_its_checksums():
    source = (EXAMPLE / "SOURCE.md").read_text(encoding="utf-8")
    docs = list(iter_documents([EXAMPLE / "docs"]))
    assert [d.name for d in docs] == [
        "design.txt",
        "extending.txt",
        "general.txt",
        "gui.txt",
        "installed.txt",
        "library.txt",
        "programming.txt",
        "windows.txt",
    ]
    for doc in docs:
        assert f"| docs/{doc.name} | {doc.n_bytes} | {doc.sha256} |" in source
    assert sum(d.n_bytes for d in docs) < 400_000


def test_example_questions_have_a_unique_snippet_in_their_file():
    docs = {d.name: d.text for d in iter_documents([EXAMPLE / "docs"])}
    lines = (EXAMPLE / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line) for line in lines]
    assert len(questions) >= 12
    for q in questions:
        assert set(q) == {"question", "file", "answer_snippet"}
        assert q["question"].endswith("?") and q["question"] in docs[q["file"]]
        assert 40 <= len(q["answer_snippet"]) <= 80
        assert sum(text.count(q["answer_snippet"]) for text in docs.values()) == 1
        assert q["answer_snippet"] in docs[q["file"]]
