"""Record the chunk spans of real documents chunked without headings (dev-time only).

The output, ``golden-no-headings.json``, was written with ``firmware_tools/chunking.py`` as of
commit 27dc05e, before chunks knew their headings. ``tests/unit/firmware_tools/
test_chunking_headings.py`` checks that chunking without headings still gives exactly these
spans, so only rerun this script on purpose (it records what the code does now)::

    PYTHONPATH=$PWD python tests/data/chunking/record_golden.py
"""

import hashlib
import json
import re
from pathlib import Path

from firmware_tools.chunking import TokenizerOffsets, chunk_document
from firmware_tools.documents import read_document

ROOT = Path(__file__).resolve().parents[3]
FILES = (
    "examples/python-faq/docs/general.txt",
    "examples/python-faq/docs/design.txt",
    "tests/data/docs/good/faq-what-is-python.md",
    "tests/data/docs/good/faq-psf.html",
    "tests/data/docs/good/faq-indentation.pdf",
    "tests/data/docs/headings/clippy-readme.md",
    "tests/data/docs/headings/tutorial-venv.rst",
    "tests/data/docs/headings/debian-faq-kernel.html",
)
#: (tokenizer, max_tokens, overlap_tokens)
CONFIGS = (("minilm", 200, 32), ("minilm", 48, 8), ("words", 12, 3))
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def word_offsets(text):
    return [m.span() for m in _WORD_RE.finditer(text)]


def main() -> None:
    minilm = TokenizerOffsets.from_file(ROOT / "models" / "all-MiniLM-L6-v2" / "tokenizer.json")
    tokenizers = {"minilm": minilm, "words": word_offsets}
    out = {}
    for name in FILES:
        text = read_document(ROOT / name).text
        out[f"{name} text_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        for tok, max_tokens, overlap in CONFIGS:
            chunks = chunk_document(text, doc_index=0, token_offsets=tokenizers[tok],
                                    max_tokens=max_tokens, overlap_tokens=overlap)
            out[f"{name} {tok} {max_tokens}/{overlap}"] = [
                [c.char_start, c.char_end, c.n_tokens] for c in chunks
            ]
    path = Path(__file__).with_name("golden-no-headings.json")
    path.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
