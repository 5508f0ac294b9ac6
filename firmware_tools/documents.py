"""Read source documents from disk into normalised Unicode text.

This module owns the builder's only document IO: it turns ``.txt``, ``.md``,
``.rst``, ``.html``/``.htm`` and ``.pdf`` files into :class:`Document` values
with a stable name, normalised text and the sha256 of the source bytes.
It does not chunk, tokenize or embed (see ``firmware_tools.chunking``), and it
keeps plain-text formats as they are: Markdown and reStructuredText markup is
left in place (headings and code blocks are useful context for retrieval).

Usage::

    from pathlib import Path
    from firmware_tools.documents import iter_documents

    for doc in iter_documents([Path("examples/python-faq/docs")]):
        print(doc.name, doc.media_type, doc.n_bytes, len(doc.text))

Text encoding: text files MUST be UTF-8 (a leading BOM is allowed and
dropped). There is deliberately no cp1252/latin-1 fallback: a guessed
encoding silently turns into mojibake inside a signed capsule, while a clear
error asks the user to re-save the file once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from firmware_tools.errors import InputDocumentError

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "SUPPORTED_SUFFIXES",
    "Document",
    "iter_documents",
    "normalize_text",
    "read_document",
]

logger = logging.getLogger(__name__)

#: Largest source file read by default (64 MiB); larger files are refused.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024

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
    """

    name: str
    text: str
    media_type: str
    sha256: str
    n_bytes: int


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

    Source: block elements are those the WHATWG HTML standard's rendering
    section displays as blocks (a subset); PDF text is
    ``pypdf.PageObject.extract_text`` per page.
    """
    if max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be >= 1, got {max_file_bytes}")
    path = Path(path)
    media_type = _check_suffix(path)
    data = _read_bytes(path, max_file_bytes)
    if media_type == "application/pdf":
        text = _pdf_to_text(data, path)
    else:
        decoded = _decode_utf8(data, path)
        text = _html_to_text(decoded) if media_type == "text/html" else decoded
    text = normalize_text(text)
    if not text:
        raise InputDocumentError(f"{path}: empty document (no text after normalisation)")
    doc = Document(
        name=name if name is not None else path.name,
        text=text,
        media_type=media_type,
        sha256=hashlib.sha256(data).hexdigest(),
        n_bytes=len(data),
    )
    logger.debug("read %s: %d bytes, %d chars of text", path, len(data), len(text))
    return doc


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
    return _read_planned(planned, root, max_file_bytes)


def _read_planned(planned: dict[Path, Path], root: Path, max_file_bytes: int) -> Iterator[Document]:
    """Yield each planned file as a Document named relative to ``root``."""
    for file_path, shown_path in planned.items():
        doc = read_document(shown_path, max_file_bytes=max_file_bytes)
        yield Document(
            name=file_path.relative_to(root).as_posix(),
            text=doc.text,
            media_type=doc.media_type,
            sha256=doc.sha256,
            n_bytes=doc.n_bytes,
        )


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


def _html_to_text(markup: str) -> str:
    """Return the visible text of an HTML page, one paragraph per block."""
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
    pieces: list[str] = []
    has_pre = False  # the pending paragraph holds <pre> text: keep its spaces

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
    # ("end", tag) entry closes a block element.
    stack: list[tuple[str, object, bool]] = [("node", soup, False)]
    while stack:
        kind, node, in_pre = stack.pop()
        if kind == "end":
            flush()
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
            stack.append(("end", node, in_pre))
        for child in reversed(node.contents):
            stack.append(("node", child, child_in_pre))
    flush()
    return "\n\n".join(paragraphs)


def _pdf_to_text(data: bytes, path: Path) -> str:
    """Return the text of each PDF page, pages joined by a blank line."""
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
    return "\n\n".join(page.strip() for page in pages if page.strip())
