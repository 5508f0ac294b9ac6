"""Write the lexical index (LEXI plaintext): an SQLite FTS5 database over the chunks.

The writer side of ``edge.lexical`` (FORMAT.md §5.5): the same ``ident-v1`` terms and the same
``SCHEMA``, rows in chunk order (rowid = chunk id), then FTS5 ``optimize`` (one b-tree per
index) and ``VACUUM`` (no free pages), so the file is as small as FTS5 makes it and its header
passes ``edge.lexical.check_database_header``. The database is contentless (``content=''``): it
holds postings, not the text, which stays only in the frames.

Example::

    with LexicalWriter(work / "lexi.sqlite") as lexi:
        for chunk in chunks:
            lexi.add(chunk.chunk_id, chunk.text, heading_path=chunk.heading_path)
    info = lexi.finish()          # {"plaintext_bytes": ..., "n_rows": ..., "page_bytes": 4096}

Source: https://sqlite.org/fts5.html (contentless tables, the optimize command).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from edge import lexical

from .errors import BuildError

__all__ = ["LexicalWriter", "PAGE_BYTES"]

#: SQLite page size of a LEXI database (SQLite's default).
PAGE_BYTES = 4096
#: Page size of a database that would be under ``SMALL_DATABASE_BYTES`` with 4 KiB pages.
SMALL_PAGE_BYTES = 512
SMALL_DATABASE_BYTES = 256 << 10


class LexicalWriter:
    """Collects chunks into a new LEXI database file at ``path`` (which must not exist)."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            raise BuildError(f"{path} exists; the lexical index is written to a new file")
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")
        self._conn.execute("PRAGMA journal_mode = DELETE")
        self._conn.execute(f"PRAGMA application_id = {lexical.APPLICATION_ID}")
        self._conn.execute(f"PRAGMA user_version = {lexical.LAYOUT_VERSION}")
        self._conn.execute("BEGIN")
        for statement in lexical.SCHEMA:
            self._conn.execute(statement)
        self.n_rows = 0
        self._finished: dict[str, int] | None = None

    def add(self, chunk_id: int, text: str, *, heading_path: Sequence[str] = ()) -> None:
        """Index one chunk; ids must be consecutive from 0.

        Args:
            chunk_id: the chunk's id (the FTS5 rowid).
            text: the chunk text.
            heading_path: titles of the enclosing headings, outermost first.

        Raises:
            BuildError: ``chunk_id`` is not the next id.
        """
        if chunk_id != self.n_rows:
            raise BuildError(f"lexical index got chunk {chunk_id}, expected {self.n_rows}")
        heading_terms, heading_variants = lexical.index_terms(" \u203a ".join(heading_path))
        body, variants = lexical.index_terms(text)
        self._conn.execute("INSERT INTO lexi(rowid, heading, body, variants) VALUES (?, ?, ?, ?)",
                           (chunk_id, heading_terms, body, " ".join(filter(None, (variants, heading_variants)))))
        self.n_rows += 1

    def finish(self) -> dict[str, int]:
        """Merge, vacuum and close the database; return its ``plaintext_bytes``, ``n_rows``, ``page_bytes``."""
        if self._finished is None:
            self._conn.execute("INSERT INTO lexi(lexi) VALUES ('optimize')")
            self._conn.execute("COMMIT")
            self._conn.execute("VACUUM")
            page_bytes = PAGE_BYTES
            if self.path.stat().st_size < SMALL_DATABASE_BYTES:
                # a small capsule's index is mostly per-page overhead: 512-byte pages shrink it
                page_bytes = SMALL_PAGE_BYTES
                self._conn.execute(f"PRAGMA page_size = {page_bytes}")
                self._conn.execute("VACUUM")
            self._conn.close()
            self._finished = {"plaintext_bytes": self.path.stat().st_size, "n_rows": self.n_rows,
                              "page_bytes": page_bytes}
        return self._finished

    def close(self) -> None:
        """Close without finishing (an aborted build); the file is left for the caller to remove."""
        if self._finished is None:
            self._conn.close()
            self._finished = {}

    def __enter__(self) -> "LexicalWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.close()
