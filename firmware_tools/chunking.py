"""Split document text into chunks of whole sentences, measured in model tokens.

This module owns the builder's chunking rule. A chunk is a span of one
document's text: ``chunk.text == doc_text[chunk.char_start:chunk.char_end]``
always holds, so the runtime can return byte-exact source text and report
where a hit came from. Each chunk also carries its heading path (the titles of
the sections it lies in). No file IO, no heading detection (see
``firmware_tools.documents``) and no embedding here: callers pass text, its
headings and a ``token_offsets`` callable built from the model's tokenizer.

Usage::

    from pathlib import Path
    from firmware_tools.chunking import TokenizerOffsets, chunk_documents
    from firmware_tools.documents import iter_documents

    offsets = TokenizerOffsets.from_file("models/all-MiniLM-L6-v2/tokenizer.json")
    docs = iter_documents([Path("examples/python-faq/docs")])
    chunks = list(chunk_documents(docs, token_offsets=offsets,
                                  token_offsets_batch=offsets.batch))

The rule, in order:

0. With headings, each heading starts a *section* that runs to the next
   heading (text before the first heading is a section too). Sections are
   chunked independently by rules 1-4: no chunk spans a heading's start, and
   the overlap never carries text from before a heading into the chunk that
   starts at it. A section's *heading block* (the line at the heading's
   start; for an rst overline, the title line after it too; then any lines
   directly below made of one repeated punctuation character, such as an rst
   or setext underline) is one sentence of its own, and the section's first
   chunk starts with it and also holds the start of the next sentence: when
   both do not fit in ``max_tokens``, that sentence is cut at a token
   boundary as in rule 2 (unless the heading alone fills ``max_tokens``).
1. Cut the text at paragraph breaks (a blank line) and at sentence ends
   (``.``, ``!``, ``?`` or ``…``, optional closing quotes or brackets, then
   whitespace, then a character that is not lower case). Each piece, stripped
   of surrounding whitespace, is a *sentence*; whitespace-only pieces vanish.
   (Measured against pySBD, BlingFire and semantic-text-splitter on the FAQ
   and SciFact: no library did better; bench/SENTENCE_SPLITTER.md.)
2. A sentence of more than ``max_tokens`` tokens is cut at token boundaries,
   preferring a boundary with whitespace between the two tokens (a word
   boundary) in the second half of the window.
3. Greedily pack consecutive sentences while the chunk has at most
   ``max_tokens`` tokens.
4. With ``overlap_tokens > 0``, the next chunk starts with the previous chunk's
   last whole sentences totalling at most ``overlap_tokens`` tokens (never all
   of them, and only as many as still leave room for one new sentence).
5. A chunk's ``heading_path`` is the titles of the headings that enclose its
   first character, outermost first: walking the headings in order, a
   heading of level L replaces every open heading of level >= L. A chunk that
   starts a section includes that section's heading.

Without headings, rules 0 and 5 do nothing (``heading_path`` is ``()``) and
the chunks are exactly those of rules 1-4 alone.

Token counts come from one tokenization of the whole document: a chunk's
``n_tokens`` is the number of document tokens that start inside its span.
For tokenizers that pre-split on whitespace (BERT WordPiece, as in MiniLM) this
equals the count obtained by tokenizing ``chunk.text`` alone, except where rule
2 had to cut inside a word.

Size: ~640 lines because the chunking rule above (sections, units, cuts, packing with overlap)
is one algorithm with one invariant, ``chunk.text == doc_text[char_start:char_end]``; about a
third of the module is the rule's documentation.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, pairwise
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from firmware_tools.documents import Document, Heading

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_OVERLAP_TOKENS",
    "Chunk",
    "TokenizerOffsets",
    "chunk_document",
    "chunk_documents",
]

#: Default chunk size in model tokens (special tokens excluded). See
#: :func:`chunk_document` for the rationale; to be tuned by the benchmark.
DEFAULT_MAX_TOKENS = 200
#: Default overlap in model tokens between consecutive chunks of a document.
DEFAULT_OVERLAP_TOKENS = 32

TokenOffsets = Callable[[str], list[tuple[int, int]]]
TokenOffsetsBatch = Callable[[Sequence[str]], list[list[tuple[int, int]]]]

# A paragraph break, or a sentence terminator followed by whitespace; group 1
# is the first non-space character after it (a lower-case one means "no cut",
# as in "e.g. this").
_CUT_RE = re.compile(r"\n\s*\n|[.!?\u2026]+[\"'\u201d\u2019\u00bb\u203a)\]]*(?=\s+(\S))")
# A line of one repeated ASCII punctuation character (rst adornment, setext
# underline), possibly indented.
_ADORNMENT_LINE_RE = re.compile(r"\s*([!-/:-@\[-`{-~])\1*\s*")


@dataclass(frozen=True)
class Chunk:
    """One chunk: a span of one document's normalised text.

    Attributes:
        chunk_id: 0-based, consecutive over a whole build.
        doc_index: 0-based index of the source document in the build.
        char_start: first character of the span in the document text.
        char_end: one past the last character (Python slice convention).
        text: exactly ``doc_text[char_start:char_end]``; never whitespace-only.
        n_tokens: model tokens in the span, special tokens excluded.
        heading_path: titles of the headings enclosing ``char_start``,
            outermost first (``("Fault codes", "E-4021 Encoder signal
            lost")``); ``()`` without headings.
    """

    chunk_id: int
    doc_index: int
    char_start: int
    char_end: int
    text: str
    n_tokens: int
    heading_path: tuple[str, ...] = ()


class TokenizerOffsets:
    """Token offsets from a Hugging Face ``tokenizers.Tokenizer``.

    Calling the object returns the ``(start, end)`` character offsets of one
    text's tokens, without special tokens; :meth:`batch` does the same for many
    texts through ``encode_batch`` (parallel in Rust). The tokenizer is copied
    with truncation and padding disabled: a tokenizer.json that truncates to
    128 tokens (as all-MiniLM-L6-v2's does) would otherwise hide the rest of
    every document.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``; it is not modified.

    Raises:
        TypeError: ``tokenizer`` is not a ``tokenizers.Tokenizer``.
    """

    def __init__(self, tokenizer: object) -> None:
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        copy = Tokenizer.from_str(tokenizer.to_str())
        copy.no_truncation()
        copy.no_padding()
        self._tokenizer = copy

    @classmethod
    def from_file(cls, tokenizer_path: str | Path) -> TokenizerOffsets:
        """Return offsets for the tokenizer stored in a ``tokenizer.json``.

        Args:
            tokenizer_path: a Hugging Face ``tokenizer.json`` file.

        Returns:
            The adapter, truncation and padding disabled.

        Raises:
            Exception: from ``tokenizers`` when the file is missing or not a
                tokenizer (the Rust binding raises a plain ``Exception``).
        """
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(tokenizer_path)))

    def __call__(self, text: str) -> list[tuple[int, int]]:
        """Return the ``(start, end)`` character offsets of the tokens of text.

        Args:
            text: any text.

        Returns:
            One ``(start, end)`` per token, in text order, special tokens
            excluded; ``text[start:end]`` is the token's source text.

        Raises:
            TypeError: ``text`` is not a ``str``.
        """
        return self._tokenizer.encode(text, add_special_tokens=False).offsets

    def batch(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Return the token offsets of each text, as :meth:`__call__` does.

        Args:
            texts: any texts.

        Returns:
            One offsets list per text, in the order of ``texts``.

        Raises:
            TypeError: an element of ``texts`` is not a ``str``.
        """
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.offsets for encoding in encodings]


def chunk_document(
    doc_text: str,
    *,
    doc_index: int,
    token_offsets: TokenOffsets,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    first_chunk_id: int = 0,
    headings: Sequence[Heading] = (),
) -> list[Chunk]:
    """Return the chunks of one document, in text order.

    Defaults: all-MiniLM-L6-v2 was trained on pairs of at most 128 tokens and
    sentence-transformers truncates its input at 256 (254 plus [CLS] and
    [SEP]). 200 tokens stays under that limit with room to spare and holds
    about one FAQ answer's opening paragraph; 32 tokens of overlap (about one
    sentence) keeps a question next to the start of its answer when a chunk
    boundary falls between them. A first check on the Python FAQ corpus
    (examples/python-faq, all 175 FAQ questions, fp32 MiniLM, hit = the
    chunk holding the start of the answer) gave recall@5 / MRR@10 of
    0.943/0.827 at 128/32, 0.966/0.863 at 200/32 and 0.960/0.855 at 256/32,
    and 0.81-0.91 recall@5 without overlap. The 200-vs-256 gap is one
    question, and the headings (the questions) are in the corpus, so treat
    200/32 as a default to be tuned by the retrieval benchmark. With the FAQ
    read as reStructuredText, chunks cut at its headings (rule 0) gave
    recall@5 / MRR@10 of 1.000/0.985 at 200/32 against 0.971/0.867 without
    (int8 model, exact search; bench/bench_faq_chunking.py,
    bench/results/faq-chunking.json).

    Args:
        doc_text: the document's normalised text.
        doc_index: 0-based index of the document, copied into each chunk.
        token_offsets: returns the ``(start, end)`` character offsets of the
            model tokens of a text, special tokens excluded, in text order and
            with no truncation (see :class:`TokenizerOffsets`). Called once,
            on ``doc_text``.
        max_tokens: most tokens per chunk, >= 1.
        overlap_tokens: most tokens repeated from the previous chunk,
            0 <= overlap_tokens < max_tokens; 0 disables overlap.
        first_chunk_id: ``chunk_id`` of the first chunk.
        headings: the document's headings
            (:attr:`~firmware_tools.documents.Document.headings`): objects
            with ``char_start`` (offset in ``doc_text``), ``level`` (1-6) and
            ``title``, sorted by strictly increasing ``char_start``; see rules
            0 and 5 in the module docstring. Empty: no headings.

    Returns:
        Chunks with consecutive ids from ``first_chunk_id``; empty when
        ``doc_text`` is empty or whitespace. ``n_tokens <= max_tokens`` except
        when more than ``max_tokens`` consecutive tokens share one start offset
        (possible only with tokenizers that split a single character).

    Raises:
        ValueError: a size argument is out of range, a heading's
            ``char_start`` is outside ``doc_text`` or not after the previous
            one, or its level is not 1-6, or ``token_offsets`` returned no
            token for a sentence containing letters or digits (typically a
            tokenizer that truncates).

    Source: model card of sentence-transformers/all-MiniLM-L6-v2 (training
    sequence length 128, ``max_seq_length`` 256).
    """
    _check_sizes(max_tokens, overlap_tokens)
    if doc_index < 0 or first_chunk_id < 0:
        raise ValueError(
            f"doc_index and first_chunk_id must be >= 0, got {doc_index}, {first_chunk_id}"
        )
    if not doc_text or doc_text.isspace():
        return []
    _check_headings(headings, len(doc_text))
    return _chunk_with_offsets(
        doc_text,
        token_offsets(doc_text),
        doc_index=doc_index,
        max_tokens=max_tokens,
        overlap_tokens=overlap_tokens,
        first_chunk_id=first_chunk_id,
        headings=headings,
    )


def chunk_documents(
    docs: Iterable[Document | str],
    *,
    token_offsets: TokenOffsets,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    token_offsets_batch: TokenOffsetsBatch | None = None,
    batch_size: int = 64,
) -> Iterator[Chunk]:
    """Return an iterator over the chunks of many documents, ids from 0.

    Documents are consumed lazily (``batch_size`` at a time when
    ``token_offsets_batch`` is given) and ``doc_index`` is each document's
    position in ``docs``. The result is identical with or without batching.
    A :class:`~firmware_tools.documents.Document` is chunked with its
    ``headings`` (see :func:`chunk_document`); a string has none.

    Args:
        docs: :class:`~firmware_tools.documents.Document` values or strings.
        token_offsets: see :func:`chunk_document`; used when
            ``token_offsets_batch`` is None.
        max_tokens: see :func:`chunk_document`.
        overlap_tokens: see :func:`chunk_document`.
        token_offsets_batch: optional batch form of ``token_offsets``
            (e.g. ``TokenizerOffsets.batch``): faster on many small documents.
        batch_size: documents per ``token_offsets_batch`` call, >= 1.

    Returns:
        An iterator of chunks in document order, then text order.

    Raises:
        ValueError: at the call, a size argument is out of range or
            ``batch_size`` < 1; while iterating, ``token_offsets`` returned
            no token for a sentence with letters or digits, or a document's
            headings are out of order or range (see :func:`chunk_document`).
    """
    _check_sizes(max_tokens, overlap_tokens)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return _iter_chunks(
        docs, token_offsets, max_tokens, overlap_tokens, token_offsets_batch, batch_size
    )


def _iter_chunks(
    docs: Iterable[Document | str],
    token_offsets: TokenOffsets,
    max_tokens: int,
    overlap_tokens: int,
    token_offsets_batch: TokenOffsetsBatch | None,
    batch_size: int,
) -> Iterator[Chunk]:
    """Yield the chunks of ``docs``; arguments already checked."""
    items = ((doc, ()) if isinstance(doc, str) else (doc.text, doc.headings) for doc in docs)
    next_id = 0
    doc_index = 0
    while True:
        batch = list(islice(items, batch_size if token_offsets_batch else 1))
        if not batch:
            return
        if token_offsets_batch is not None:
            nonblank = [text for text, _ in batch if text and not text.isspace()]
            found = iter(token_offsets_batch(nonblank) if nonblank else [])
        for text, headings in batch:
            if text and not text.isspace():
                _check_headings(headings, len(text))
                offsets = next(found) if token_offsets_batch else token_offsets(text)
                chunks = _chunk_with_offsets(
                    text,
                    offsets,
                    doc_index=doc_index,
                    max_tokens=max_tokens,
                    overlap_tokens=overlap_tokens,
                    first_chunk_id=next_id,
                    headings=headings,
                )
                next_id += len(chunks)
                yield from chunks
            doc_index += 1


def _check_sizes(max_tokens: int, overlap_tokens: int) -> None:
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(
            f"overlap_tokens must be in [0, max_tokens={max_tokens}), got {overlap_tokens}"
        )


def _check_headings(headings: Sequence[Heading], n_chars: int) -> None:
    previous = -1
    for heading in headings:
        if not previous < heading.char_start < n_chars:
            raise ValueError(
                f"heading char_start must increase within [0, {n_chars}), got "
                f"{heading.char_start} after {previous}"
            )
        if not 1 <= heading.level <= 6:
            raise ValueError(f"heading level must be 1-6, got {heading.level}")
        previous = heading.char_start


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """Return ``(start, end)`` of each sentence, whitespace stripped."""
    cuts = [0]
    for match in _CUT_RE.finditer(text):
        following = match.group(1)
        if following is not None and following.islower():
            continue
        cuts.append(match.start() if following is None else match.end())
    cuts.append(len(text))
    spans = []
    for start, end in pairwise(cuts):
        piece = text[start:end]
        stripped = piece.lstrip()
        if not stripped:
            continue
        start += len(piece) - len(stripped)
        end -= len(stripped) - len(stripped.rstrip())
        spans.append((start, end))
    return spans


def _split_long_unit(
    text: str,
    start: int,
    end: int,
    first_token: int,
    tok_starts: list[int],
    tok_ends: list[int],
    max_tokens: int,
) -> list[tuple[int, int]]:
    """Cut one over-long sentence ``text[start:end]`` at token boundaries."""
    pieces = []
    cut_char = start
    p = first_token  # first token of the current piece
    last = bisect_left(tok_starts, end)  # one past the sentence's last token
    while last - p > max_tokens:
        q = _choose_cut(p, max_tokens, tok_starts, tok_ends, cut_char, last)
        if q >= last:
            break
        pieces.append((cut_char, tok_starts[q]))
        cut_char, p = tok_starts[q], q
    pieces.append((cut_char, end))
    spans = []
    for piece_start, piece_end in pieces:
        piece = text[piece_start:piece_end]
        stripped = piece.strip()
        if stripped:
            offset = piece_start + len(piece) - len(piece.lstrip())
            spans.append((offset, offset + len(stripped)))
    return spans


def _choose_cut(
    p: int,
    max_tokens: int,
    tok_starts: list[int],
    tok_ends: list[int],
    cut_char: int,
    last: int,
) -> int:
    """Return the token index at which the piece starting at token p ends."""
    limit = p + max_tokens
    # A word boundary (whitespace between two tokens) in the second half.
    for q in range(limit, p + max(1, max_tokens // 2) - 1, -1):
        if tok_ends[q - 1] < tok_starts[q] and tok_starts[q] > cut_char:
            return q
    # Any boundary that moves forward.
    for q in range(limit, p, -1):
        if tok_starts[q] > cut_char:
            return q
    # Over max_tokens tokens share one start offset: cut after them.
    q = limit + 1
    while q < last and tok_starts[q] <= cut_char:
        q += 1
    return q


def _line_end(text: str, start: int, limit: int) -> int:
    end = text.find("\n", start, limit)
    return limit if end < 0 else end


def _heading_block_end(text: str, start: int, limit: int) -> int:
    """Return where the heading block starting at ``start`` ends (rule 0)."""
    end = _line_end(text, start, limit)
    if _ADORNMENT_LINE_RE.fullmatch(text, start, end) and end < limit:
        end = _line_end(text, end + 1, limit)  # an rst overline: the title line too
    while end < limit:
        following = _line_end(text, end + 1, limit)
        if not _ADORNMENT_LINE_RE.fullmatch(text, end + 1, following):
            break
        end = following
    return end


def _stripped_spans(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return the spans with surrounding whitespace removed; blank ones dropped."""
    out = []
    for start, end in spans:
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            start += len(piece) - len(piece.lstrip())
            out.append((start, start + len(stripped)))
    return out


def _units(
    text: str,
    spans: Iterable[tuple[int, int]],
    tok_starts: list[int],
    tok_ends: list[int],
    max_tokens: int,
) -> list[tuple[int, int]]:
    """Return the sentences as units, over-long ones cut (rules 1-2)."""
    units: list[tuple[int, int]] = []
    for start, end in spans:
        a = bisect_left(tok_starts, start)
        b = bisect_left(tok_starts, end)
        if b - a > max_tokens:
            units.extend(_split_long_unit(text, start, end, a, tok_starts, tok_ends, max_tokens))
        else:
            if a == b and any(ch.isalnum() for ch in text[start:end]):
                raise ValueError(
                    f"token_offsets gave no token for the text at characters "
                    f"{start}..{end} of {len(text)} (does the tokenizer truncate?)"
                )
            units.append((start, end))
    return units


def _section_units(
    text: str,
    start: int,
    end: int,
    has_heading: bool,
    tok_starts: list[int],
    tok_ends: list[int],
    max_tokens: int,
) -> list[tuple[int, int]]:
    """Return the units of the section ``text[start:end]`` (rule 0)."""
    body_start = _heading_block_end(text, start, end) if has_heading else start
    head = _units(
        text, _stripped_spans(text, [(start, body_start)]), tok_starts, tok_ends, max_tokens
    )
    body = _units(
        text,
        [(body_start + s, body_start + e) for s, e in _sentence_spans(text[body_start:end])],
        tok_starts,
        tok_ends,
        max_tokens,
    )
    if head and body:
        # The heading's last unit and the start of the body share a chunk.
        a = bisect_left(tok_starts, head[-1][0])
        first_start, first_end = body[0]
        p = bisect_left(tok_starts, first_start)
        last = bisect_left(tok_starts, first_end)
        room = max_tokens - (p - a)
        if last - a > max_tokens and room >= 1:
            q = _choose_cut(p, room, tok_starts, tok_ends, first_start, last)
            if q < last:
                body[0:1] = _stripped_spans(
                    text, [(first_start, tok_starts[q]), (tok_starts[q], first_end)]
                )
    return head + body


def _heading_paths(headings: Sequence[Heading]) -> list[tuple[str, ...]]:
    """Return the heading path at each heading's start (rule 5)."""
    stack: list[Heading] = []
    paths = []
    for heading in headings:
        while stack and stack[-1].level >= heading.level:
            stack.pop()
        stack.append(heading)
        paths.append(tuple(h.title for h in stack))
    return paths


def _chunk_with_offsets(
    text: str,
    offsets: Sequence[tuple[int, int]],
    *,
    doc_index: int,
    max_tokens: int,
    overlap_tokens: int,
    first_chunk_id: int,
    headings: Sequence[Heading] = (),
) -> list[Chunk]:
    tok_starts = [s for s, _ in offsets]
    tok_ends = [e for _, e in offsets]
    chunks: list[Chunk] = []
    if not headings:
        units = _units(text, _sentence_spans(text), tok_starts, tok_ends, max_tokens)
        _pack(text, units, tok_starts, (), doc_index, max_tokens, overlap_tokens,
              first_chunk_id, chunks)
        return chunks
    bounds = [h.char_start for h in headings]
    if bounds[0] > 0:
        units = _section_units(text, 0, bounds[0], False, tok_starts, tok_ends, max_tokens)
        _pack(text, units, tok_starts, (), doc_index, max_tokens, overlap_tokens,
              first_chunk_id, chunks)
    ends = [*bounds[1:], len(text)]
    for start, end, path in zip(bounds, ends, _heading_paths(headings), strict=True):
        units = _section_units(text, start, end, True, tok_starts, tok_ends, max_tokens)
        _pack(text, units, tok_starts, path, doc_index, max_tokens, overlap_tokens,
              first_chunk_id, chunks)
    return chunks


def _pack(
    text: str,
    units: list[tuple[int, int]],
    tok_starts: list[int],
    heading_path: tuple[str, ...],
    doc_index: int,
    max_tokens: int,
    overlap_tokens: int,
    first_chunk_id: int,
    chunks: list[Chunk],
) -> None:
    """Append the chunks packed from ``units`` to ``chunks`` (rules 3-4)."""
    a_idx = [bisect_left(tok_starts, start) for start, _ in units]
    b_idx = [bisect_left(tok_starts, end) for _, end in units]
    n_units = len(units)
    i = 0
    while i < n_units:
        j = i
        while j + 1 < n_units and b_idx[j + 1] - a_idx[i] <= max_tokens:
            j += 1
        char_start, char_end = units[i][0], units[j][1]
        chunks.append(
            Chunk(
                chunk_id=first_chunk_id + len(chunks),
                doc_index=doc_index,
                char_start=char_start,
                char_end=char_end,
                text=text[char_start:char_end],
                n_tokens=b_idx[j] - a_idx[i],
                heading_path=heading_path,
            )
        )
        if j + 1 >= n_units:
            break
        k = j + 1
        if overlap_tokens:
            while k - 1 > i and b_idx[j] - a_idx[k - 1] <= overlap_tokens:
                k -= 1
            while k <= j and b_idx[j + 1] - a_idx[k] > max_tokens:
                k += 1
        i = k
