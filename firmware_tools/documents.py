"""Read source documents from disk into normalised Unicode text.

This module owns the builder's only document IO: it turns ``.txt``, ``.md``,
``.rst``, ``.html``/``.htm`` and ``.pdf`` files into :class:`Document` values
with a stable name, normalised text, the section headings found in it and the
sha256 of the source bytes. It does not chunk, tokenize or embed (see
``firmware_tools.chunking``), and it keeps plain-text formats as they are:
Markdown and reStructuredText markup is left in place (headings and code blocks
are useful context for retrieval); headings are found by scanning that text
(:func:`find_headings`), in HTML from ``h1``..``h6`` and in PDF from the outline.

Usage::

    from pathlib import Path
    from firmware_tools.documents import iter_documents

    for doc in iter_documents([Path("examples/python-faq/docs")]):
        print(doc.name, doc.media_type, doc.n_bytes, len(doc.text))
        for h in doc.headings:
            print("  " * (h.level - 1), h.title, "@", h.char_start)

Text encoding: text files MUST be UTF-8 (a leading BOM is allowed and
dropped). There is deliberately no cp1252/latin-1 fallback: a guessed
encoding silently turns into mojibake inside a signed capsule, while a clear
error asks the user to re-save the file once.

Size: ~870 lines because the five formats' readers and the Markdown (CommonMark) and
reStructuredText (docutils) heading scanners share one normalisation, one size bound and one
heading bound; about a third is the scanners' documentation of the spec rules they follow.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from firmware_tools.errors import InputDocumentError

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "MAX_HEADINGS",
    "MAX_TITLE_CHARS",
    "SUPPORTED_SUFFIXES",
    "Document",
    "Heading",
    "find_headings",
    "iter_documents",
    "normalize_text",
    "parse_document",
    "plan_documents",
    "read_document",
    "read_document_bytes",
]

logger = logging.getLogger(__name__)

#: Largest source file read by default (64 MiB); larger files are refused.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024

#: Most headings kept per document; later ones are dropped (logged at WARNING).
MAX_HEADINGS = 100_000
#: Longest heading title kept, in characters; a longer title is cut to this length.
MAX_TITLE_CHARS = 200

#: Lower-case file suffix -> media type recorded in :attr:`Document.media_type`.
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".rst": "text/x-rst",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}

# HTML elements whose content is never document text.
_HTML_DROPPED_TAGS = ("script", "style", "nav", "noscript", "template")
# HTML elements that start and end a paragraph of their own.
_HTML_BLOCK_TAGS = frozenset(
    (
        "address article aside blockquote body caption dd details dialog div dl dt "
        "fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr "
        "html li main ol p pre section summary table tbody td tfoot th thead title tr ul"
    ).split(" ")
)
_TRAILING_SPACE_RE = re.compile(r"[ \t\f\v]+$", re.MULTILINE)
_EXCESS_BLANK_LINES_RE = re.compile(r"\n{4,}")  # 3+ blank lines
_HTML_SPACE_RE = re.compile(r"\s+")
_LINE_BREAK_RE = re.compile(r"[ \t]*\n\s*")
_HTML_HEADING_LEVELS = {f"h{n}": n for n in range(1, 7)}
#: A definition term with an anchor (``<dt id=...>``: a DocBook ``varlistentry``, a Sphinx object
#: such as ``os.path.join``, a server parameter) heads its definition like the deepest heading:
#: the chunk that defines ``work_mem`` then carries it in its heading path, which the lexical
#: index boosts over chunks that only mention it (bench/HYBRID.md: parameter names).
DEFINITION_TERM_LEVEL = 6

# Markdown (CommonMark 0.31 sections 4.2-4.5): ATX heading, closing #s, setext
# underline, code fence, lines that cannot start a paragraph (so a following
# "---" is a thematic break or list content, not a setext underline).
_MD_ATX_RE = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?")
_MD_ATX_CLOSE_RE = re.compile(r"(?:^|[ \t]+)#+[ \t]*$")
_MD_SETEXT_RE = re.compile(r" {0,3}(=+|-+)[ \t]*")
_MD_FENCE_RE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_MD_NOT_PARAGRAPH_RE = re.compile(r" {0,3}(?:[>|<]|[-+*](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$))")
# reStructuredText (docutils "Sections"): an adornment line is one punctuation
# character repeated; lines that docutils parses as other constructs first.
_RST_ADORNMENT_RE = re.compile(r"([!-/:-@\[-`{-~])\1*")
_RST_NOT_TITLE_RE = re.compile(
    r"\.\.(?:\s|$)|[-*+\u2022\u2023\u2043](?:\s|$)|>>>|\|(?:\s|$)|:(?![: ])[^:]*?(?<! ):(?: +|$)"
)


@dataclass(frozen=True)
class Heading:
    """One section heading of a document.

    Attributes:
        char_start: offset in :attr:`Document.text` where the heading starts:
            the start of its line for Markdown (ATX line, or first line of a
            setext paragraph), for reStructuredText (the title line, or the
            overline when the title has one) and for HTML (the heading's
            paragraph); for PDF, see :func:`read_document`.
        level: 1 (outermost) to 6.
        title: the heading's text as it appears, without its markup (``#``
            marks, rst adornment lines, HTML tags, a trailing ``¶`` permalink),
            normalised like the text; a line break inside it (a setext
            paragraph, ``<br>``) becomes one space (a PDF outline title has
            every run of whitespace collapsed to one space); cut to
            :data:`MAX_TITLE_CHARS` characters; never empty.
    """

    char_start: int
    level: int
    title: str


@dataclass(frozen=True)
class Document:
    """One source document, read and normalised.

    Attributes:
        name: path relative to the common input root, POSIX separators
            (``"faq/general.txt"``); unique within one ``iter_documents`` call.
        text: normalised text (NFC, ``\\n`` line ends, no trailing spaces,
            at most two consecutive blank lines, stripped); never empty.
        media_type: ``text/plain``, ``text/markdown``, ``text/x-rst``,
            ``text/html`` or ``application/pdf``.
        sha256: hex sha256 of the source file's bytes (not of ``text``).
        n_bytes: size of the source file in bytes.
        headings: the section headings, sorted by ``char_start`` (unique),
            at most :data:`MAX_HEADINGS`; empty for plain text and for a
            PDF without an outline.
    """

    name: str
    text: str
    media_type: str
    sha256: str
    n_bytes: int
    headings: tuple[Heading, ...] = ()


def normalize_text(text: str) -> str:
    """Return ``text`` normalised the way every document is.

    NFC; ``\\r\\n`` and lone ``\\r`` become ``\\n``; trailing spaces and tabs
    are removed from each line; three or more blank lines collapse to two;
    leading and trailing whitespace of the whole text is removed.

    Args:
        text: any text.

    Returns:
        The normalised text, possibly empty.

    Raises:
        TypeError: ``text`` is not a ``str``.
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE_RE.sub("", text)
    text = _EXCESS_BLANK_LINES_RE.sub("\n\n\n", text)
    return text.strip()


def read_document(
    path: Path,
    *,
    name: str | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Document:
    """Read one file and return it as a normalised :class:`Document`.

    Args:
        path: a ``.txt``, ``.md``, ``.rst``, ``.html``, ``.htm`` or ``.pdf``
            file (suffix compared case-insensitively).
        name: the document's name; defaults to ``path.name``.
        max_file_bytes: refuse files larger than this many bytes.

    Returns:
        The document; ``sha256`` and ``n_bytes`` describe the file's bytes.

    Raises:
        InputDocumentError: the file is missing, not a regular file, larger
            than ``max_file_bytes``, unreadable, of an unsupported type, not
            UTF-8 (text formats), an encrypted or broken PDF, a PDF with no
            extractable text, or empty after normalisation. The message is one
            line that starts with the path.
        ValueError: ``max_file_bytes`` < 1.

    Headings (:attr:`Document.headings`): Markdown and reStructuredText as
    :func:`find_headings` finds them; HTML ``h1``..``h6`` at their level, definition
    terms with an anchor (``<dt id=...>``) at level ``DEFINITION_TERM_LEVEL`` (6), and
    ``<title>`` as a level-1 heading only when the page has no ``h1`` (a page
    title usually repeats the ``h1`` plus a site name); PDF outline (bookmark)
    entries at their depth (capped at 6), each placed at the start of the
    line where its title starts on its destination page (searched after the
    previous entry found on that page; case and line breaks ignored), else at
    the start of that page's text (an empty page: the next page with text).
    Where entries share an offset, one found in the text wins over one placed
    at its page start, then the first in outline order. A PDF outline that
    cannot be read is ignored (logged at WARNING), never an error.

    Source: block elements are those the WHATWG HTML standard's rendering
    section displays as blocks (a subset); PDF text is
    ``pypdf.PageObject.extract_text`` per page, the outline
    ``pypdf.PdfReader.outline``.
    """
    if max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be >= 1, got {max_file_bytes}")
    path = Path(path)
    _check_suffix(path)
    return parse_document(_read_bytes(path, max_file_bytes), path, name=name)


def parse_document(data: bytes, path: Path, *, name: str | None = None) -> Document:
    """Parse one file's bytes, already read, as :func:`read_document` parses them.

    The split lets a build read files in one process and parse them in another (a cluster
    worker, ``firmware_tools.build``): ``read_document(p) == parse_document(p.read_bytes(), p)``
    for any file within the size limit.

    Args:
        data: the file's bytes.
        path: the file's path as the user named it: its suffix chooses the format, and it
            starts every error message; the file is not opened.
        name: the document's name; defaults to ``path.name``.

    Returns:
        The document (``sha256`` and ``n_bytes`` describe ``data``).

    Raises:
        InputDocumentError: as :func:`read_document`, for everything after the read.
    """
    path = Path(path)
    media_type = _check_suffix(path)
    if media_type == "application/pdf":
        reader, pages = _pdf_pages(data, path)
        text = normalize_text("\n\n".join(page for page in pages if page))
    elif media_type == "text/html":
        paragraphs, html_heads = _html_paragraphs(_decode_utf8(data, path))
        text = normalize_text("\n\n".join(paragraphs))
    else:
        text = normalize_text(_decode_utf8(data, path))
    if not text:
        raise InputDocumentError(f"{path}: empty document (no text after normalisation)")
    if media_type == "application/pdf":
        headings = _pdf_headings(reader, pages, text, path)
    elif media_type == "text/html":
        headings = _html_headings(paragraphs, html_heads, text, path)
    else:
        headings = _finish_headings(_text_headings(text, media_type), path)
    doc = Document(
        name=name if name is not None else path.name,
        text=text,
        media_type=media_type,
        sha256=hashlib.sha256(data).hexdigest(),
        n_bytes=len(data),
        headings=headings,
    )
    logger.debug(
        "read %s: %d bytes, %d chars of text, %d headings",
        path,
        len(data),
        len(text),
        len(headings),
    )
    return doc


def find_headings(text: str, media_type: str) -> tuple[Heading, ...]:
    """Return the section headings of a Markdown or reStructuredText text.

    Markdown (CommonMark): ATX headings (``#`` to ``######`` after at most
    three spaces, then a space or the line end; a closing run of ``#`` is
    dropped) and setext headings (a paragraph underlined with ``=``, level 1,
    or ``-``, level 2; the heading starts at the paragraph's first line), not
    inside fenced code blocks (``````` or ``~~~``), indented code, HTML
    comments, or YAML front matter; a paragraph that starts as a list item,
    block quote, table row or HTML tag is never a setext heading.

    reStructuredText (docutils): a title line with an underline, or with an
    overline and an identical underline, of one punctuation character
    repeated at least as long as the title (docutils also accepts a shorter
    underline of 4 or more characters, with a warning; this scanner does
    not). The title (or overline) follows a blank line or the start of the
    text and starts in column 0, so indented literal blocks, directive
    bodies and block quotes hold no titles; ``..`` directive and comment
    lines, bullets, field lists, doctest and line-block lines are not
    titles. Levels follow the order in which each adornment style (character,
    with or without overline) first appears, as docutils assigns them;
    a seventh or later style is level 6.

    ``text/plain`` (and any text without headings) gives ``()``.

    Args:
        text: normalised text (see :func:`normalize_text`): ``\\n`` line
            ends, no trailing spaces.
        media_type: ``text/markdown``, ``text/x-rst`` or ``text/plain``.

    Returns:
        Headings sorted by ``char_start``, at most :data:`MAX_HEADINGS`;
        ``text[h.char_start:]`` starts with the heading's line (for an rst
        title with an overline: the overline).

    Raises:
        ValueError: ``media_type`` is not one of the three above (HTML and
            PDF headings come from the markup, see :func:`read_document`).

    Source: CommonMark Spec 0.31.2, sections 4.2-4.5; docutils
    reStructuredText Markup Specification, "Sections".
    """
    if media_type not in ("text/markdown", "text/x-rst", "text/plain"):
        raise ValueError(
            f"find_headings reads text/markdown, text/x-rst or text/plain, got {media_type!r}"
        )
    return _finish_headings(_text_headings(text, media_type), None)


def iter_documents(
    paths: Sequence[Path],
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[Document]:
    """Return an iterator over the documents in ``paths``, dirs expanded.

    Order is deterministic: arguments in the given order; inside a directory,
    files sorted by their relative path components, recursively. Inside a
    directory, hidden entries (name starts with ``.``) and files without a
    supported suffix are skipped; symlinked directories are not followed.
    A file named explicitly must have a supported suffix. A file reached twice
    (named twice, or named and inside a named directory) is yielded once.

    Each ``Document.name`` is the path relative to the common input root:
    the deepest directory containing every argument (a file argument counts
    as its parent directory), with POSIX separators.

    Args:
        paths: files and directories.
        max_file_bytes: per-file size limit, see :func:`read_document`.

    Returns:
        An iterator of one :class:`Document` per file. Paths are checked and
        directories listed when this function is called; each file is read
        when the iterator reaches it.

    Raises:
        InputDocumentError: at the call, when a path does not exist, an
            explicit file has an unsupported suffix, or a directory holds no
            supported file; while iterating, when a file fails
            :func:`read_document`.
        ValueError: ``paths`` is empty.
    """
    return _read_planned(plan_documents(paths), max_file_bytes)


def plan_documents(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """List the files :func:`iter_documents` reads, in its order, without reading any.

    Args:
        paths: files and directories, as for :func:`iter_documents`.

    Returns:
        ``(path as the user named it, document name)`` per file.

    Raises:
        InputDocumentError, ValueError: as :func:`iter_documents` at its call.
    """
    if len(paths) == 0:
        raise ValueError("no input paths given")
    # Plan every file before reading any: path errors surface at the call.
    absolute = [Path(os.path.abspath(p)) for p in paths]
    for given, abs_path in zip(paths, absolute, strict=True):
        if not abs_path.exists():
            raise InputDocumentError(f"{given}: no such file or directory")
    root = Path(os.path.commonpath([str(p if p.is_dir() else p.parent) for p in absolute]))
    planned: dict[Path, Path] = {}  # absolute file -> path as the user named it
    for given, abs_path in zip(paths, absolute, strict=True):
        if abs_path.is_dir():
            files = _expand_directory(abs_path)
            if not files:
                raise InputDocumentError(
                    f"{given}: directory holds no supported documents "
                    f"({', '.join(sorted(SUPPORTED_SUFFIXES))})"
                )
            for file_path in files:
                planned.setdefault(file_path, Path(given) / file_path.relative_to(abs_path))
        else:
            _check_suffix(Path(given))
            planned.setdefault(abs_path, Path(given))
    return [(shown_path, file_path.relative_to(root).as_posix()) for file_path, shown_path in planned.items()]


def _read_planned(planned: list[tuple[Path, str]], max_file_bytes: int) -> Iterator[Document]:
    """Yield each planned file as a Document under its planned name."""
    for shown_path, name in planned:
        yield read_document(shown_path, name=name, max_file_bytes=max_file_bytes)


def read_document_bytes(path: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """Return a supported file's bytes after the suffix, existence and size checks of
    :func:`read_document`, for :func:`parse_document` to parse later or elsewhere.

    Raises:
        InputDocumentError: as :func:`read_document`, for the checks and the read.
    """
    path = Path(path)
    _check_suffix(path)
    return _read_bytes(path, max_file_bytes)


def _check_suffix(path: Path) -> str:
    """Return the media type for ``path``'s suffix, or refuse the file."""
    media_type = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if media_type is None:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputDocumentError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r} "
            f"(supported: {supported})"
        )
    return media_type


def _expand_directory(directory: Path) -> list[Path]:
    """Return the supported, non-hidden files under ``directory``, sorted."""
    found: list[Path] = []
    for dir_path, dir_names, file_names in os.walk(directory, followlinks=False):
        dir_names[:] = sorted(d for d in dir_names if not d.startswith("."))
        for file_name in file_names:
            if file_name.startswith("."):
                continue
            if Path(file_name).suffix.lower() in SUPPORTED_SUFFIXES:
                found.append(Path(dir_path) / file_name)
    found.sort(key=lambda p: p.relative_to(directory).parts)
    return found


def _read_bytes(path: Path, max_file_bytes: int) -> bytes:
    """Return the file's bytes after the existence and size checks."""
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise InputDocumentError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InputDocumentError(f"{path}: unreadable ({exc.strerror or exc})") from exc
    if not path.is_file():
        raise InputDocumentError(f"{path}: not a regular file")
    if stat.st_size > max_file_bytes:
        raise InputDocumentError(f"{path}: file is {stat.st_size} bytes, limit is {max_file_bytes}")
    try:
        with path.open("rb") as f:
            data = f.read(max_file_bytes + 1)
    except OSError as exc:
        raise InputDocumentError(f"{path}: unreadable ({exc.strerror or exc})") from exc
    if len(data) > max_file_bytes:  # grew after stat
        raise InputDocumentError(
            f"{path}: file is over {max_file_bytes} bytes, limit is {max_file_bytes}"
        )
    return data


def _decode_utf8(data: bytes, path: Path) -> str:
    """Decode strict UTF-8, dropping one leading BOM."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputDocumentError(
            f"{path}: not UTF-8 (invalid byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); re-save the file as UTF-8"
        ) from exc


# --- headings ---------------------------------------------------------------


def _clean_title(title: str, *, collapse_spaces: bool = False) -> str:
    """Return ``title`` normalised like document text, on one line, bounded."""
    title = normalize_text(title)
    title = " ".join(title.split()) if collapse_spaces else _LINE_BREAK_RE.sub(" ", title)
    return title[:MAX_TITLE_CHARS].rstrip()


def _finish_headings(
    found: Iterable[tuple[int, int, str]], path: Path | None
) -> tuple[Heading, ...]:
    """Return headings sorted by offset: one per offset (the first given), titled."""
    by_start: dict[int, Heading] = {}
    for char_start, level, title in found:
        title = _clean_title(title)
        if title and char_start not in by_start:
            if len(by_start) == MAX_HEADINGS:
                logger.warning(
                    "%s: more than %d headings; the rest are ignored",
                    path or "text",
                    MAX_HEADINGS,
                )
                break
            by_start[char_start] = Heading(char_start, min(max(level, 1), 6), title)
    return tuple(sorted(by_start.values(), key=lambda h: h.char_start))


def _text_headings(text: str, media_type: str) -> Iterator[tuple[int, int, str]]:
    if media_type == "text/markdown":
        return _markdown_headings(text)
    if media_type == "text/x-rst":
        return _rst_headings(text)
    return iter(())


def _line_starts(lines: list[str]) -> list[int]:
    starts = [0] * len(lines)
    offset = 0
    for i, line in enumerate(lines):
        starts[i] = offset
        offset += len(line) + 1
    return starts


def _markdown_headings(text: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(char_start, level, title)`` of each Markdown heading."""
    lines = text.split("\n")
    starts = _line_starts(lines)
    i = 0
    if lines[0] == "---":  # YAML front matter, only when it is closed
        close = next((j for j in range(1, len(lines)) if lines[j] in ("---", "...")), None)
        if close is not None:
            i = close + 1
    fence: tuple[str, int] | None = None  # (character, length) of the open code fence
    paragraph: int | None = None  # first line of the open paragraph
    blocked = False  # the open run of lines cannot be a setext heading
    in_comment = False
    while i < len(lines):
        line = lines[i]
        i += 1
        if fence is not None:
            close_match = _MD_FENCE_RE.fullmatch(line)
            if (
                close_match
                and close_match.group(1)[0] == fence[0]
                and len(close_match.group(1)) >= fence[1]
                and not close_match.group(2).strip()
            ):
                fence = None
            continue
        if in_comment:
            in_comment = "-->" not in line
            continue
        if not line.strip():
            paragraph, blocked = None, False
            continue
        fence_match = _MD_FENCE_RE.fullmatch(line)
        if fence_match and not (fence_match.group(1)[0] == "`" and "`" in fence_match.group(2)):
            fence = (fence_match.group(1)[0], len(fence_match.group(1)))
            paragraph, blocked = None, False
            continue
        atx = _MD_ATX_RE.fullmatch(line)
        if atx:
            title = _MD_ATX_CLOSE_RE.sub("", atx.group(2) or "")
            yield starts[i - 1], len(atx.group(1)), title
            paragraph, blocked = None, False
            continue
        if paragraph is not None and not blocked and _MD_SETEXT_RE.fullmatch(line):
            title = " ".join(part.strip() for part in lines[paragraph : i - 1])
            yield starts[paragraph], 1 if line.strip()[0] == "=" else 2, title
            paragraph = None
            continue
        if paragraph is None and not blocked:
            if line.startswith("    ") or line.startswith("\t"):
                continue  # indented code
            if line.lstrip(" ").startswith("<!--") and "-->" not in line:
                in_comment = True
                continue
            paragraph = i - 1
            blocked = bool(_MD_NOT_PARAGRAPH_RE.match(line))


def _column_width(text: str) -> int:
    """Return the display width of ``text`` in columns, as docutils counts it."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _is_adornment(line: str) -> bool:
    return bool(_RST_ADORNMENT_RE.fullmatch(line))


def _rst_headings(text: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(char_start, level, title)`` of each reStructuredText section title."""
    lines = text.split("\n")
    starts = _line_starts(lines)
    styles: dict[tuple[str, bool], int] = {}
    after_blank = True  # the previous line is blank, a title, or the start
    i = 0
    n_lines = len(lines)
    while i < n_lines:
        line = lines[i]
        if after_blank and i + 2 < n_lines and _is_adornment(line):
            title, under = lines[i + 1], lines[i + 2]
            stripped = title.strip()
            if (
                under == line
                and stripped
                and not _is_adornment(stripped)
                and _column_width(title) <= len(line)
            ):
                level = styles.setdefault((line[0], True), len(styles) + 1)
                yield starts[i], level, stripped
                i += 3
                continue
        if (
            after_blank
            and i + 1 < n_lines
            and line
            and not line[0].isspace()
            and _is_adornment(lines[i + 1])
            and not _is_adornment(line)
            and _column_width(line) <= len(lines[i + 1])
            and not _RST_NOT_TITLE_RE.match(line)
        ):
            level = styles.setdefault((lines[i + 1][0], False), len(styles) + 1)
            yield starts[i], level, line
            i += 2
            continue
        after_blank = not line
        i += 1


def _locate_in_order(text: str, pieces: Sequence[str], n_needed: int) -> list[int] | None:
    """Return where each of the first ``n_needed`` pieces starts in ``text``.

    ``text`` is the normalised join of ``pieces``; each piece is found, in
    order, as its own normalised form. None if one is missing (not expected).
    """
    found: list[int] = []
    cursor = 0
    for piece in pieces[:n_needed]:
        needle = normalize_text(piece)
        at = text.find(needle, cursor) if needle else cursor
        if at < 0:
            return None
        line_start = text.rfind("\n", 0, at) + 1
        found.append(line_start if not text[line_start:at].strip() else at)
        cursor = at + len(needle)
    return found


# --- HTML ----------------------------------------------------------------------


def _html_paragraphs(markup: str) -> tuple[list[str], list[tuple[int, int, str]]]:
    """Return the visible paragraphs of an HTML page (one per block) and its headings.

    Headings are ``(paragraph_index, level, title)``, in document order;
    the first ``<title>`` outside SVG comes as level 0 (the caller decides
    whether it counts).
    """
    from bs4 import (
        BeautifulSoup,
        Comment,
        Declaration,
        Doctype,
        NavigableString,
        ProcessingInstruction,
        Tag,
    )

    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup.find_all(_HTML_DROPPED_TAGS):
        tag.decompose()

    paragraphs: list[str] = []
    headings: list[tuple[int, int, str]] = []
    pieces: list[str] = []
    has_pre = False  # the pending paragraph holds <pre> text: keep its spaces
    has_title = False

    def flush() -> None:
        nonlocal has_pre
        text = "".join(pieces)
        if not has_pre:
            # Inline whitespace is already collapsed; trim around <br> newlines.
            text = "\n".join(line.strip(" ") for line in text.split("\n"))
        if text.strip():
            paragraphs.append(text.strip("\n"))
        pieces.clear()
        has_pre = False

    skipped = (Comment, Declaration, Doctype, ProcessingInstruction)
    # Iterative walk (deep nesting must not hit the recursion limit); an
    # ("end", tag, _, first) entry closes a block element whose paragraphs
    # start at index ``first``.
    stack: list[tuple[str, object, bool, int]] = [("node", soup, False, 0)]
    while stack:
        kind, node, in_pre, first = stack.pop()
        if kind == "end":
            flush()
            level = _HTML_HEADING_LEVELS.get(node.name)
            if node.name == "title" and not has_title and node.find_parent("svg") is None:
                level, has_title = 0, True  # the page's title, not an SVG image's
            if node.name == "dt" and node.get("id"):
                level = DEFINITION_TERM_LEVEL
            if level is not None and len(paragraphs) > first:
                # permalink marks that manuals append to headings and terms: "¶", "#"
                title = " ".join(paragraphs[first:]).rstrip().removesuffix("\u00b6").removesuffix(" #").rstrip()
                headings.append((first, level, title))
            continue
        if isinstance(node, NavigableString):
            if isinstance(node, skipped):
                continue
            text = str(node)
            pieces.append(text if in_pre else _HTML_SPACE_RE.sub(" ", text))
            has_pre = has_pre or in_pre
            continue
        if not isinstance(node, Tag):
            continue
        if node.name == "br":
            pieces.append("\n")
            continue
        is_block = node.name in _HTML_BLOCK_TAGS
        child_in_pre = in_pre or node.name == "pre"
        if is_block:
            flush()
            stack.append(("end", node, in_pre, len(paragraphs)))
        for child in reversed(node.contents):
            stack.append(("node", child, child_in_pre, 0))
    flush()
    return paragraphs, headings


def _html_headings(
    paragraphs: list[str], found: list[tuple[int, int, str]], text: str, path: Path
) -> tuple[Heading, ...]:
    """Return the HTML headings placed in the normalised ``text``."""
    if not any(level == 1 for _, level, _ in found):
        found = [(index, 1 if level == 0 else level, title) for index, level, title in found]
    found = [entry for entry in found if entry[1] > 0]
    if not found:
        return ()
    offsets = _locate_in_order(text, paragraphs, max(index for index, _, _ in found) + 1)
    if offsets is None:
        logger.warning("%s: html headings could not be placed in the text; ignored", path)
        return ()
    return _finish_headings(((offsets[i], level, title) for i, level, title in found), path)


# --- PDF -----------------------------------------------------------------------


def _pdf_pages(data: bytes, path: Path) -> tuple[object, list[str]]:
    """Return the reader and the stripped text of each page with text."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InputDocumentError(f"{path}: encrypted pdf (decrypt it first)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except InputDocumentError:
        raise
    except Exception as exc:  # pypdf raises many types on malformed input
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise InputDocumentError(f"{path}: broken pdf ({type(exc).__name__}: {detail})") from exc
    if not any(page.strip() for page in pages):
        raise InputDocumentError(
            f"{path}: pdf has no extractable text ({len(pages)} pages; scanned images need OCR)"
        )
    # Keep the page count (empty pages as ""): outline entries point at pages.
    return reader, [page.strip() for page in pages]


def _pdf_headings(reader: object, pages: list[str], text: str, path: Path) -> tuple[Heading, ...]:
    """Return the PDF's outline entries placed in ``text``; () on any error."""
    try:
        return _pdf_outline_headings(reader, pages, text, path)
    except Exception as exc:  # a broken outline must not fail the read
        detail = str(exc).splitlines()[0] if str(exc) else ""
        logger.warning(
            "%s: pdf outline ignored (%s: %s)", path, type(exc).__name__, detail
        )
        return ()


#: Deepest outline nesting read; deeper entries are ignored.
_MAX_OUTLINE_DEPTH = 32


def _pdf_outline_headings(
    reader: object, pages: list[str], text: str, path: Path
) -> tuple[Heading, ...]:
    outline = reader.outline
    if not outline:
        return ()
    with_text = [page for page in pages if page]
    starts = iter(_locate_in_order(text, with_text, len(with_text)) or ())
    # Offset of each page's text; an empty page takes the next page's offset.
    page_starts: list[int | None] = [next(starts, None) if page else None for page in pages]
    page_ends: list[int | None] = [
        None if start is None else start + len(normalize_text(page))
        for start, page in zip(page_starts, pages, strict=True)
    ]
    for index in range(len(pages) - 2, -1, -1):
        if page_starts[index] is None:
            page_starts[index] = page_starts[index + 1]
            page_ends[index] = page_ends[index + 1]
    searched_to: dict[int, int] = {}  # page start -> end of the last title found there
    # (offset, 0 if the title was found on its page else 1, outline order, level, title)
    found: list[tuple[int, int, int, int, str]] = []
    stack = [(iter(outline), 1)]
    n_entries = 0
    while stack and n_entries <= MAX_HEADINGS:
        items, level = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        if isinstance(item, list):
            if len(stack) < _MAX_OUTLINE_DEPTH:
                stack.append((iter(item), level + 1))
            continue
        n_entries += 1
        title = _clean_title(str(getattr(item, "title", "") or ""), collapse_spaces=True)
        page_index = reader.get_destination_page_number(item)
        if not title or page_index is None or not 0 <= page_index < len(pages):
            continue
        start, end = page_starts[page_index], page_ends[page_index]
        if start is None or end is None:
            continue
        # The title at the start of a line, words separated by any whitespace.
        pattern = r"^[ \t]*" + r"\s+".join(re.escape(word) for word in title.split())
        match = re.compile(pattern, re.IGNORECASE | re.MULTILINE).search(
            text, searched_to.get(start, start), end
        )
        if match:
            searched_to[start] = match.end()
            found.append((match.start(), 0, n_entries, level, title))
        else:
            found.append((start, 1, n_entries, level, title))
    # At one offset, a title found there wins over one placed at its page start.
    found.sort()
    return _finish_headings(((offset, level, title) for offset, _, _, level, title in found), path)
