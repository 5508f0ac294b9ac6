"""Build and verify the PostgreSQL exact-identifier query set (issue 10).

Usage (from the repository root, with the project venv)::

    cd /tmp && apt-get download postgresql-doc-15 && dpkg-deb -x postgresql-doc-15_*.deb /tmp/pgdoc
    python bench/data/pg-identifiers/make_queries.py \\
        --html /tmp/pgdoc/usr/share/doc/postgresql-doc-15/html
    python bench/data/pg-identifiers/make_queries.py --verify   # shipped files only, no package

With ``--html`` it copies the chosen pages byte for byte into ``docs/``, writes
``docs.SHA256SUMS``, ``queries.jsonl`` and the unit-test subset under
``tests/data/pg-errcodes/``, then verifies everything. ``--verify`` re-checks the shipped files.

Every record is ``{"id", "query", "kind", "identifier", "document", "definition"}``.
``definition`` is a verbatim snippet of the defining passage, compared on whitespace-collapsed
text (``" ".join(text.split())``) of what ``firmware_tools.documents.read_document`` extracts:
a retrieved chunk is relevant when its collapsed text contains ``definition``. Checks:

- each ``definition`` occurs exactly once in the collapsed text of ``document`` and in no other
  shipped page;
- each ``absent`` identifier occurs in no shipped page, and (with ``--html``) in none of the
  manual's HTML pages, compared case-insensitively both as is and with every non-alphanumeric
  character removed from the identifier and the text.

Sampling is ``random.Random(SEED)``; the result is the same on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import sys
from pathlib import Path

from bs4 import BeautifulSoup

from firmware_tools.documents import read_document

SEED = 20240610
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DOCS = HERE / "docs"
QUERIES = HERE / "queries.jsonl"
SUMS = HERE / "docs.SHA256SUMS"
TESTS = REPO / "tests" / "data" / "pg-errcodes"
ERRCODES = "errcodes-appendix.html"
# Pages copied: the SQLSTATE appendix, every runtime-config page (chapter 20, the server
# parameters) and psql's reference page (a large distractor page, full of identifiers, with no
# queries of its own).
EXTRA_PAGES = ("app-psql.html",)

N_SQLSTATE = 150
N_SQLSTATE_LOWER = 50
N_CONDITION = 100
N_GUC = 200
N_GUC_SPACED = 50
TEST_COUNTS = {"sqlstate": 10, "sqlstate-lower": 4, "condition": 10, "absent": 8}

# Natural-language questions, written by reading each parameter's definition; they avoid the
# definition's own wording where a paraphrase exists. identifier -> question.
QUESTIONS: dict[str, str] = {
    "max_wal_senders": "how many standbys or base backup clients can stream from the primary at the same time",
    "max_connections": "what caps how many clients can be logged in to postgres simultaneously",
    "work_mem": "how much RAM can one sort or hash step use before it spills to disk",
    "shared_buffers": "how big is the server's shared page cache",
    "statement_timeout": "cancel any query that runs longer than a time limit",
    "lock_timeout": "give up when a statement has been blocked waiting on a row or table lock for too long",
    "idle_in_transaction_session_timeout": "disconnect clients that sit idle with a transaction left open",
    "deadlock_timeout": "delay before the server runs its deadlock detection while a session is blocked",
    "log_min_duration_statement": "log every query slower than a given number of milliseconds",
    "listen_addresses": "which network interfaces or IP addresses does the server accept clients on",
    "port": "change the port number postgres uses for incoming connections",
    "search_path": "order of schemas used to resolve a table name written without a schema",
    "autovacuum_max_workers": "how many autovacuum worker processes can be active simultaneously",
    "autovacuum_naptime": "how long does the autovacuum launcher sleep between rounds over a database",
    "checkpoint_timeout": "how often is a checkpoint forced by the clock",
    "max_wal_size": "how large may the write-ahead log grow before a checkpoint is triggered",
    "wal_level": "how much detail goes into the write-ahead log, for example enough for logical decoding",
    "synchronous_commit": "can a commit report success to the client before its WAL is flushed",
    "fsync": "stop forcing data to disk with fsync calls, risking corruption after a power failure",
    "full_page_writes": "write whole pages into the WAL after a checkpoint to survive torn partial page writes",
    "archive_command": "shell command that copies each finished WAL segment to an archive",
    "restore_command": "shell command that fetches archived WAL segments back during recovery",
    "hot_standby": "allow read-only queries on a replica while it is still in recovery",
    "hot_standby_feedback": "let a replica tell the primary which old rows its queries still need so they are not cancelled",
    "primary_conninfo": "connection string a replica uses to reach the server it replicates from",
    "wal_keep_size": "keep extra old WAL segments in pg_wal so a lagging standby can catch up",
    "effective_cache_size": "tell the planner how much memory the OS and database together have for caching data",
    "random_page_cost": "planner's price for reading a page out of sequence, often lowered for SSDs",
    "enable_seqscan": "discourage the planner from choosing full table scans",
    "default_statistics_target": "how detailed are the per-column statistics collected by ANALYZE",
    "log_line_prefix": "printf-style format put at the start of every server log line",
    "logging_collector": "enable the process that redirects stderr messages into rotated log files",
    "log_lock_waits": "write a log entry when a session is stuck behind a lock for longer than the deadlock check delay",
    "password_encryption": "choose between md5 and SCRAM when hashing passwords set with CREATE ROLE",
    "client_min_messages": "which notice and warning levels are sent back to the client",
    "default_transaction_isolation": "make every new transaction serializable unless it says otherwise",
    "maintenance_work_mem": "memory budget for VACUUM runs and index builds",
    "huge_pages": "use large memory pages (hugetlb) for the server's shared memory segment",
    "temp_file_limit": "cap on how much disk one process may fill with temporary sort and hash files",
    "max_locks_per_transaction": "how many distinct objects each transaction may lock on average, raise it for queries touching many partitions",
}

# Identifiers that look real but occur nowhere in the manual (verified by this script).
ABSENT: tuple[str, ...] = (
    "99Z99",
    "22P99",
    "42P99",
    "57P99",
    "0A999",
    "HV0ZZ",
    "23599",
    "XX999",
    "40P09",
    "53999",
    "max_foo_senders",
    "wal_sender_max_timeout",
    "autovacuum_max_threads",
    "shared_buffer_pool_size",
    "enable_bloomscan",
    "ssl_cert_directory",
    "checkpoint_max_interval",
    "max_idle_sessions",
    "invalid_json_pointer",
    "replication_slot_conflict",
)


class DataError(Exception):
    """A page or record fails a check; the message names it."""


def collapse(text: str) -> str:
    """Return ``text`` with every whitespace run replaced by one space, stripped."""
    return " ".join(text.split())


def alnum_lower(text: str) -> str:
    """Return ``text`` lower-cased with every non-alphanumeric character removed."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def page_names(html: Path) -> list[str]:
    """Return the names of the pages to copy from the manual's ``html`` folder."""
    names = [ERRCODES, *sorted(p.name for p in html.glob("runtime-config*.html")), *EXTRA_PAGES]
    missing = [n for n in names if not (html / n).is_file()]
    if missing:
        raise DataError(f"{html}: missing pages {missing}")
    return names


def read_texts(folder: Path) -> dict[str, str]:
    """Return file name -> collapsed builder text for every ``.html`` page in ``folder``."""
    return {p.name: collapse(read_document(p).text) for p in sorted(folder.glob("*.html"))}


def parse_errcodes(path: Path) -> list[tuple[str, str]]:
    """Return (SQLSTATE, condition name) for every row of Table A.1, in table order."""
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    table = soup.find("div", id="ERRCODES-TABLE").find("table")
    rows = []
    for tr in table.find("tbody").find_all("tr"):
        code = tr.find("code", class_="literal")
        cond = tr.find("code", class_="symbol")
        if code is not None and cond is not None:
            rows.append((code.get_text(), cond.get_text()))
    if not rows:
        raise DataError(f"{path}: no rows in ERRCODES-TABLE")
    return rows


def parse_gucs(folder: Path) -> list[tuple[str, str, str, str]]:
    """Return (name, page name, <dt> text, <dd> text), collapsed, per ``<dt id="GUC-...">``."""
    found = []
    for page in sorted(folder.glob("runtime-config-*.html")):
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        for dt in soup.find_all("dt", id=re.compile(r"^GUC-")):
            names = [c.get_text() for c in dt.find_all("code", class_="varname")]
            if len(names) != 1:
                raise DataError(f"{page.name}: {dt['id']} names {len(names)} parameters")
            dd = dt.find_next_sibling("dd")
            found.append((names[0], page.name, collapse(dt.get_text()), collapse(dd.get_text())))
    return found


def unique_snippet(head: str, tail: str, page: str, texts: dict[str, str]) -> str:
    """Return ``head`` plus as few leading words of ``tail`` as make it occur once in all pages.

    ``transaction_isolation (enum)`` is a substring of ``default_transaction_isolation (enum)``;
    such a term gets the first words of its own description appended.
    """
    words = tail.split()
    for k in range(len(words) + 1):
        snippet = " ".join([head, *words[:k]])
        if sum(t.count(snippet) for t in texts.values()) == 1 and snippet in texts[page]:
            return snippet
    raise DataError(f"{page}: no unique snippet for {head!r}")


def build_records(docs: Path, texts: dict[str, str]) -> list[dict]:
    """Return every query record, sampled with ``SEED``, from the pages in ``docs``.

    ``texts`` is :func:`read_texts` of ``docs``; snippets are made unique against it.
    """
    rng = random.Random(SEED)
    rows = parse_errcodes(docs / ERRCODES)
    gucs = [(name, page, unique_snippet(dt, dd, page, texts))
            for name, page, dt, dd in parse_gucs(docs)]
    by_guc = {name: (page, dt) for name, page, dt in gucs}
    records: list[dict] = []

    def add(kind: str, rid: str, query: str, identifier: str, document: str | None,
            definition: str | None) -> None:
        records.append({"id": f"{kind}-{rid}", "query": query, "kind": kind,
                        "identifier": identifier, "document": document,
                        "definition": definition})

    def row_def(code: str, cond: str) -> str:
        return f"{code} {cond}"

    for code, cond in sorted(rng.sample(rows, N_SQLSTATE), key=rows.index):
        add("sqlstate", code, code, code, ERRCODES, row_def(code, cond))
    lettered = [r for r in rows if r[0] != r[0].lower()]
    for code, cond in sorted(rng.sample(lettered, N_SQLSTATE_LOWER), key=rows.index):
        add("sqlstate-lower", code.lower(), code.lower(), code, ERRCODES, row_def(code, cond))
    cond_count: dict[str, int] = {}
    for _, cond in rows:
        cond_count[cond] = cond_count.get(cond, 0) + 1
    unique = [r for r in rows if cond_count[r[1]] == 1]  # a name on two rows has two answers
    for code, cond in sorted(rng.sample(unique, N_CONDITION), key=rows.index):
        add("condition", cond, cond, code, ERRCODES, row_def(code, cond))
    for name, page, dt in sorted(rng.sample(gucs, N_GUC), key=gucs.index):
        add("guc", name, name, name, page, dt)
    multi = [g for g in gucs if "_" in g[0]]
    for name, page, dt in sorted(rng.sample(multi, N_GUC_SPACED), key=gucs.index):
        add("guc-spaced", name, name.replace("_", " "), name, page, dt)
    for i, (name, question) in enumerate(QUESTIONS.items(), 1):
        if name not in by_guc:
            raise DataError(f"question {i}: {name} is not a parameter defined in the pages")
        page, dt = by_guc[name]
        add("question", f"{i:02d}", question, name, page, dt)
    for i, ident in enumerate(ABSENT, 1):
        add("absent", f"{i:02d}", ident, ident, None, None)
    return records


def verify(records: list[dict], texts: dict[str, str], extra_texts: dict[str, str] | None = None) -> None:
    """Raise DataError unless every record passes the checks in the module docstring."""
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise DataError("duplicate record ids")
    searched = {**texts, **(extra_texts or {})}  # absent identifiers: every page given
    lowered = {n: t.lower() for n, t in searched.items()}
    squeezed = {n: alnum_lower(t) for n, t in searched.items()}
    for r in records:
        if r["kind"] == "absent":
            ident = r["query"]
            hits = [n for n, t in lowered.items() if ident.lower() in t]
            hits += [n for n, t in squeezed.items() if alnum_lower(ident) in t]
            if hits:
                raise DataError(f"{r['id']}: {ident!r} occurs in {sorted(set(hits))}")
            continue
        if r["document"] not in texts:
            raise DataError(f"{r['id']}: document {r['document']!r} is not shipped")
        snippet = r["definition"]
        for name, text in texts.items():
            n = text.count(snippet)
            want = 1 if name == r["document"] else 0
            if n != want:
                raise DataError(f"{r['id']}: definition {snippet!r} occurs {n} times in {name}")
        if r["kind"] != "question" and r["identifier"] not in snippet:
            raise DataError(f"{r['id']}: identifier not in its definition")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_subset(records: list[dict]) -> list[dict]:
    """Return the unit-test records: a seeded sample of the errcodes and absent kinds."""
    rng = random.Random(SEED)
    out = []
    for kind, k in TEST_COUNTS.items():
        pool = [r for r in records if r["kind"] == kind]
        out += sorted(rng.sample(pool, k), key=records.index)
    return out


def make(html: Path) -> None:
    """Copy the pages from ``html``, write every output file, verify."""
    names = page_names(html)
    if DOCS.exists():
        shutil.rmtree(DOCS)
    DOCS.mkdir()
    for n in names:
        shutil.copyfile(html / n, DOCS / n)
        if sha256(DOCS / n) != sha256(html / n):
            raise DataError(f"{n}: copy differs from source")
    SUMS.write_text("".join(f"{sha256(DOCS / n)}  {n}\n" for n in sorted(names)), encoding="utf-8")
    texts = read_texts(DOCS)
    records = build_records(DOCS, texts)
    manual = {p.name: collapse(read_document(p).text) for p in sorted(html.glob("*.html"))
              if p.name not in texts}
    verify(records, texts, manual)
    write_jsonl(QUERIES, records)
    (TESTS / "docs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCS / ERRCODES, TESTS / "docs" / ERRCODES)
    subset = test_subset(records)
    verify(subset, read_texts(TESTS / "docs"))
    write_jsonl(TESTS / "queries.jsonl", subset)
    report(records, subset)


def check() -> None:
    """Re-verify the shipped files (no package needed)."""
    for line in SUMS.read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        if sha256(DOCS / name) != digest:
            raise DataError(f"docs/{name}: sha256 differs from docs.SHA256SUMS")
    records = load_jsonl(QUERIES)
    texts = read_texts(DOCS)
    if records != build_records(DOCS, texts):
        raise DataError(f"{QUERIES.name}: differs from what the pages and SEED give")
    verify(records, texts)
    subset = load_jsonl(TESTS / "queries.jsonl")
    if subset != test_subset(records):
        raise DataError("tests/data/pg-errcodes/queries.jsonl: differs from the seeded subset")
    verify(subset, read_texts(TESTS / "docs"))
    if sha256(TESTS / "docs" / ERRCODES) != sha256(DOCS / ERRCODES):
        raise DataError(f"tests/data/pg-errcodes/docs/{ERRCODES}: differs from docs/")
    report(records, subset)


def report(records: list[dict], subset: list[dict]) -> None:
    def counts(rs: list[dict]) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in rs:
            c[r["kind"]] = c.get(r["kind"], 0) + 1
        return c

    docs_bytes = sum(p.stat().st_size for p in DOCS.glob("*.html"))
    print(json.dumps({"records": len(records), "per_kind": counts(records),
                      "pages": len(list(DOCS.glob("*.html"))), "docs_bytes": docs_bytes,
                      "test_records": len(subset), "test_per_kind": counts(subset),
                      "queries_sha256": sha256(QUERIES),
                      "test_queries_sha256": sha256(TESTS / "queries.jsonl")}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--html", type=Path, help="the extracted package's html/ folder")
    group.add_argument("--verify", action="store_true", help="re-check the shipped files")
    args = parser.parse_args(argv)
    try:
        make(args.html) if args.html else check()
    except (DataError, OSError) as exc:
        print(f"make_queries: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
