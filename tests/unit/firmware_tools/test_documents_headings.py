"""Headings found by firmware_tools.documents, on real files (tests/data/docs, examples/).

The PDFs with an outline are written at run time by pypdf (a builder dependency) from the
committed real PDF fixture: real PDF bytes, read back through ``read_document``.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import pytest
from pypdf import PdfWriter
from pypdf.generic import NameObject, NumberObject

from firmware_tools import documents
from firmware_tools.documents import (
    MAX_TITLE_CHARS,
    Heading,
    find_headings,
    iter_documents,
    normalize_text,
    read_document,
)

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "tests" / "data" / "docs"
HEADINGS = DOCS / "headings"
EXAMPLE = REPO / "examples" / "python-faq"
PDF = DOCS / "good" / "faq-indentation.pdf"


def _check_headings(doc) -> None:
    """Invariants every document's headings keep."""
    starts = [h.char_start for h in doc.headings]
    assert starts == sorted(set(starts))
    for h in doc.headings:
        assert 0 <= h.char_start < len(doc.text)
        assert h.char_start == 0 or doc.text[h.char_start - 1] == "\n"  # a line start
        assert 1 <= h.level <= 6
        assert h.title and h.title == h.title.strip() and "\n" not in h.title
        assert len(h.title) <= MAX_TITLE_CHARS


def _as_rst(tmp_path: Path, source: Path) -> Path:
    """Copy an rst source saved as .txt (as examples/python-faq keeps them) to a .rst file."""
    path = tmp_path / (source.stem + ".rst")
    shutil.copyfile(source, path)
    return path


# --- Markdown --------------------------------------------------------------------


def test_markdown_atx_headings_of_a_real_readme_skip_fenced_code():
    doc = read_document(HEADINGS / "clippy-readme.md")
    _check_headings(doc)
    assert [(h.level, h.title) for h in doc.headings] == [
        (1, "Clippy"),
        (2, "Usage"),
        (3, "As a cargo subcommand (`cargo clippy`)"),
        (4, "Step 1: Install Rustup"),
        (4, "Step 2: Install Clippy"),
        (4, "Step 3: Run Clippy"),
        (4, "Automatically applying Clippy suggestions"),
        (4, "Workspaces"),
        (3, "Using `clippy-driver`"),
        (3, "Travis CI"),
        (2, "Configuration"),
        (3, "Allowing/denying lints"),
        (3, "Configure the behavior of some lints"),
        (3, "Specifying the minimum supported Rust version"),
        (2, "Contributing"),
        (2, "License"),
    ]
    for h in doc.headings:
        assert doc.text[h.char_start :].startswith("#" * h.level + " " + h.title + "\n")
    # The YAML block's comment lines ("  # if you want the build job to fail...") stay text.
    assert "  # if you want the build job to fail" in doc.text
    assert not any("build job" in h.title for h in doc.headings)


def test_markdown_setext_closing_hashes_and_blocks_that_hold_no_headings():
    text = normalize_text(
        "---\ntitle: front matter\n---\n"
        "Fault codes\n===========\n\n"
        "## E-4021 Encoder signal lost ##\n\nThe encoder cable is loose.\n\n"
        "Two-line setext\nheading text\n---------------\n\n"
        "```sh\n# a shell comment\n```\n\n"
        "~~~~\n## not a heading\n~~~\n~~~~\n\n"
        "    # indented code\n\n"
        "- a list item\n---\n\n"
        "> a quote\n===\n\n"
        "<!--\n# commented out\n-->\n\n"
        "#hashtag is a paragraph\n\n"
        "####### seven is a paragraph\n\n"
        "   ### Indented three\n"
    )
    found = find_headings(text, "text/markdown")
    assert [(h.level, h.title) for h in found] == [
        (1, "Fault codes"),
        (2, "E-4021 Encoder signal lost"),
        (2, "Two-line setext heading text"),
        (3, "Indented three"),
    ]
    assert text[found[0].char_start :].startswith("Fault codes\n===")
    assert text[found[2].char_start :].startswith("Two-line setext\n")
    assert text[found[3].char_start :].startswith("   ### Indented three")


def test_markdown_fixture_headings_and_plain_text_has_none():
    doc = read_document(DOCS / "good" / "faq-what-is-python.md")
    assert [(h.level, h.title) for h in doc.headings] == [
        (1, "What is Python?"),
        (2, "What is Python good for?"),
    ]
    assert read_document(DOCS / "good" / "more" / "faq-copyright.txt").headings == ()
    assert find_headings("Title\n=====\n\n# Not either", "text/plain") == ()


# --- reStructuredText ----------------------------------------------------------------


def test_rst_real_tutorial_overline_and_underline_styles():
    doc = read_document(HEADINGS / "tutorial-venv.rst")
    _check_headings(doc)
    assert [(h.level, h.title) for h in doc.headings] == [
        (1, "Virtual Environments and Packages"),
        (2, "Introduction"),
        (2, "Creating Virtual Environments"),
        (2, "Managing Packages with pip"),
    ]
    first, *rest = doc.headings
    # A title with an overline starts at the overline; others at the title line.
    assert doc.text[first.char_start :].startswith("*" * 33 + "\nVirtual Environments and Packages\n")
    for h in rest:
        assert doc.text[h.char_start :].startswith(h.title + "\n" + "=" * len(h.title) + "\n")
    # Literal blocks ("::" then indented text) and directives hold no titles.
    assert "::\n\n   python3 -m venv tutorial-env\n" in doc.text
    assert ".. code-block:: bash\n" in doc.text


def test_rst_python_faq_sections_are_found_at_docutils_levels(tmp_path):
    doc = read_document(_as_rst(tmp_path, EXAMPLE / "docs" / "general.txt"))
    _check_headings(doc)
    assert doc.media_type == "text/x-rst"
    assert (doc.headings[0].level, doc.headings[0].title) == (1, "General Python FAQ")
    assert doc.text[doc.headings[0].char_start :].startswith("=" * 18 + "\nGeneral Python FAQ\n")
    groups = [h.title for h in doc.headings if h.level == 2]
    assert groups == ["General Information", "Python in the real world"]
    questions = [h for h in doc.headings if h.level == 3]
    assert len(questions) == 23  # every question heading of general.rst
    assert all(h.title.endswith("?") for h in questions)


def test_rst_every_example_question_is_a_heading(tmp_path):
    by_file = {}
    for source in sorted((EXAMPLE / "docs").glob("*.txt")):
        by_file[source.name] = read_document(_as_rst(tmp_path, source))
        _check_headings(by_file[source.name])
    lines = (EXAMPLE / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    for q in map(json.loads, lines):
        assert q["question"] in {h.title for h in by_file[q["file"]].headings}


def test_rst_rules_literal_blocks_directives_short_underlines_and_style_order():
    text = normalize_text(
        ":tocdepth: 2\n\n"
        "#####\nParts\n#####\n\n"
        "Chapter\n#######\n\n"  # '#' without overline is a new style: level 2
        "Example::\n\n    Indented\n    ========\n\n"
        ".. note::\n   ========\n\n"
        "Too long a title\n====\n\n"
        "- bullet\n--------\n\n"
        "Section\n=======\n\n"
        "Next part\n*********\n\n"
        "=====\n=====\n\n"
        "Another chapter\n###############\n"
    )
    found = find_headings(text, "text/x-rst")
    assert [(h.level, h.title) for h in found] == [
        (1, "Parts"),
        (2, "Chapter"),
        (3, "Section"),
        (4, "Next part"),
        (2, "Another chapter"),
    ]


def test_rst_title_width_counts_wide_characters_as_two_columns():
    text = "日本語\n======\n\n本文。\n\n日本語\n=====\n"
    found = find_headings(text, "text/x-rst")
    assert [(h.char_start, h.title) for h in found] == [(0, "日本語")]


# --- HTML --------------------------------------------------------------------


def test_html_real_page_headings_at_their_paragraphs():
    doc = read_document(HEADINGS / "debian-faq-kernel.html")
    _check_headings(doc)
    assert [(h.level, h.title) for h in doc.headings] == [
        (1, "Chapter 10. Debian and the kernel"),
        (2, "10.1. Can I install and compile a kernel without some Debian-specific tweaking?"),
        (2, "10.2. What tools does Debian provide to build custom kernels?"),
        (2, "10.3. What special provisions does Debian provide to deal with modules?"),
        (2, "10.4. Can I safely de-install an old kernel package, and if so, how?"),
        (2, "10.5. Where can I get more information about Linux packages for Debian?"),
    ]
    paragraphs = doc.text.split("\n\n")
    for h in doc.headings:
        assert doc.text[h.char_start :].startswith(h.title + "\n\n")
    # The page has an h1, so <title> (paragraph 0) is not a heading; nor is the
    # navigation table's <th> (paragraph 1) that repeats it.
    assert paragraphs[:3] == [doc.headings[0].title] * 3
    assert doc.headings[0].char_start == 2 * (len(doc.headings[0].title) + 2)


def test_html_heading_is_the_h1_paragraph_not_the_equal_title():
    doc = read_document(DOCS / "good" / "faq-psf.html")
    title = "What is the Python Software Foundation?"
    assert doc.headings == (Heading(len(title) + 2, 1, title),)


def test_html_title_is_a_heading_only_without_h1_and_permalinks_are_dropped(tmp_path):
    # <h1> is missing: the page's <title> (not an SVG image's) is the level-1 heading.
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>Drive manual</title></head><body>"
        "<h2>Fault codes<a class='headerlink' href='#f'>\u00b6</a></h2>"
        "<p>Codes below.</p><h3>E-4021<br>Encoder signal lost</h3><p>Check the cable.</p>"
        "<pre>## not a heading</pre><svg><title>logo</title></svg></body></html>",
        encoding="utf-8",
    )
    doc = read_document(path)
    assert doc.text == (
        "Drive manual\n\nFault codes\u00b6\n\nCodes below.\n\nE-4021\nEncoder signal lost\n\n"
        "Check the cable.\n\n## not a heading\n\nlogo"
    )
    assert [(h.level, h.title) for h in doc.headings] == [
        (1, "Drive manual"),
        (2, "Fault codes"),
        (3, "E-4021 Encoder signal lost"),
    ]
    assert [doc.text[h.char_start :][:6] for h in doc.headings] == ["Drive ", "Fault ", "E-4021"]


# --- PDF ---------------------------------------------------------------------


def _pdf_with_outline(tmp_path: Path, outline) -> Path:
    """Write the real fixture PDF with an outline: [(title, page, parent_index|None)]."""
    writer = PdfWriter(clone_from=PDF)
    items = []
    for title, page, parent in outline:
        parent_item = None if parent is None else items[parent]
        items.append(writer.add_outline_item(title=title, page_number=page, parent=parent_item))
    path = tmp_path / "outlined.pdf"
    buffer = io.BytesIO()
    writer.write(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_pdf_outline_entries_are_placed_where_their_titles_start(tmp_path):
    path = _pdf_with_outline(
        tmp_path,
        [
            ("Design and History FAQ", 0, None),  # not a line in the text: page start
            ("Why does Python use indentation for grouping of statements?", 0, 0),
            ("Since there are no begin/end brackets", 0, 1),  # starts a line mid-page
            ("Why are colons required for the if/while/def/class statements?", 1, 0),
        ],
    )
    doc = read_document(path)
    _check_headings(doc)
    page_2 = doc.text.index("Why are colons")
    assert doc.headings == (
        # Found at offset 0, it wins over the outer entry placed at its page start.
        Heading(0, 2, "Why does Python use indentation for grouping of statements?"),
        Heading(doc.text.index("Since there are no"), 3, "Since there are no begin/end brackets"),
        Heading(page_2, 2, "Why are colons required for the if/while/def/class statements?"),
    )
    # The outline changes nothing else.
    plain = read_document(PDF)
    assert plain.headings == () and doc.text == plain.text


def test_pdf_outline_title_not_in_the_text_starts_at_its_page(tmp_path):
    doc = read_document(_pdf_with_outline(tmp_path, [("Page two", 1, None)]))
    assert doc.headings == (Heading(doc.text.index("Why are colons"), 1, "Page two"),)


def test_pdf_broken_outline_is_ignored_not_an_error(tmp_path, caplog):
    writer = PdfWriter(clone_from=PDF)
    writer.add_outline_item(title="Broken", page_number=0)
    outlines = writer._root_object["/Outlines"].get_object()
    outlines[NameObject("/First")] = NumberObject(7)  # not an outline item
    path = tmp_path / "broken-outline.pdf"
    buffer = io.BytesIO()
    writer.write(buffer)
    path.write_bytes(buffer.getvalue())
    with caplog.at_level(logging.WARNING, logger="firmware_tools.documents"):
        doc = read_document(path)
    assert doc.headings == ()
    assert doc.text == read_document(PDF).text


# --- bounds and API ------------------------------------------------------------------


def test_long_titles_are_cut_and_heading_count_is_bounded(monkeypatch, caplog):
    long_title = "Word " * 100
    found = find_headings(f"# {long_title}\n\n# Second\n\n# Third\n\n# Fourth", "text/markdown")
    assert found[0].title == long_title[:MAX_TITLE_CHARS].rstrip()
    monkeypatch.setattr(documents, "MAX_HEADINGS", 2)
    with caplog.at_level(logging.WARNING, logger="firmware_tools.documents"):
        bounded = find_headings("# One\n\n# Two\n\n# Three\n\n# Four", "text/markdown")
    assert [h.title for h in bounded] == ["One", "Two"]
    assert "more than 2 headings" in caplog.text


def test_find_headings_refuses_markup_formats():
    with pytest.raises(ValueError, match="text/markdown, text/x-rst or text/plain"):
        find_headings("<h1>x</h1>", "text/html")


def test_iter_documents_keeps_headings():
    docs = list(iter_documents([HEADINGS]))
    by_name = {d.name: d for d in docs}
    assert by_name["tutorial-venv.rst"].headings == read_document(HEADINGS / "tutorial-venv.rst").headings
    assert by_name["clippy-LICENSE-MIT.txt"].headings == ()


def test_html_definition_terms_with_an_anchor_head_their_definition(tmp_path):
    # A DocBook variable list (PostgreSQL's server parameters) and a plain glossary list.
    path = tmp_path / "config.html"
    path.write_text(
        "<html><body><h1>Server Configuration</h1><h2>Memory</h2><dl class='variablelist'>"
        "<dt id='GUC-WORK-MEM'><span class='term'><code>work_mem</code> (<code>integer</code>)</span> "
        "<a href='#GUC-WORK-MEM' class='id_link'>#</a></dt><dd><p>Sets the base maximum amount of memory.</p></dd>"
        "<dt id='GUC-TEMP-BUFFERS'><code>temp_buffers</code> (<code>integer</code>)</dt><dd><p>Temporary buffers.</p></dd>"
        "</dl><dl><dt>term</dt><dd>not anchored: no heading</dd></dl></body></html>",
        encoding="utf-8",
    )
    doc = read_document(path)
    assert [(h.level, h.title) for h in doc.headings] == [
        (1, "Server Configuration"), (2, "Memory"), (6, "work_mem (integer)"), (6, "temp_buffers (integer)")]
    assert doc.text[doc.headings[2].char_start:].startswith("work_mem (integer)")
