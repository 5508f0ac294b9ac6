"""CapsuleSet: several capsules open at once, one memory budget, merged search.

A device often carries more than one capsule (a product manual, a safety sheet, a
FAQ). They share one ``MemoryBudget`` and, when they were built with the same model,
one model session (the largest single reservation, ~40 MiB). A query is embedded
once per model, ranked in every capsule's indexes (dense, lexical or both), and the best
``k`` hits overall are read from their frames.

Example::

    with CapsuleSet.open(["manual.capsule", "faq.capsule"], trusted_keys=keys,
                         identities=[device_key], budget=MemoryBudget(parse_size("256MiB"))) as capsules:
        for hit in capsules.search("how do I reset the unit?", k=5):
            print(hit.capsule, hit.score, hit.text[:60])

Source: edge/budget.py (shared reservations).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .budget import MemoryBudget
from .clock import utc_now
from .errors import EdgeError, ExpiredCapsuleError, NotYetValidError
from .capsule import Capsule, Identity, OpenOptions, StageTimings, _InstalledObject, _open_capsule
from .lexical import LexicalQuery
from .hits import Candidate
from .opened import read_grouped
from .retrieval import SearchResult, as_valid_text

__all__ = ["CapsuleSet"]


class CapsuleSet:
    """Open capsules searched together. Create with ``CapsuleSet.open``; close when done.

    Attributes:
        capsules: the open capsules, in the order given.
        budget: the budget they share.
        skipped: targets left out because they are outside their validity window (opened
            with ``skip_invalid``), by path, with the error each raised.
    """

    def __init__(self, capsules: list[Capsule], budget: MemoryBudget,
                 skipped: dict[str, EdgeError] | None = None) -> None:
        self.capsules = capsules
        self.budget = budget
        self.skipped = dict(skipped or {})

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike[str]], *, trusted_keys: Sequence[Ed25519PublicKey],
             identities: Sequence[Identity], budget: MemoryBudget | None = None, now: datetime | None = None,
             options: OpenOptions | None = None, skip_invalid: bool = False) -> "CapsuleSet":
        """Verify and open every capsule file; return the set, or raise and leave nothing open.

        Installed capsules open by name with ``Store.open_set``.

        Args:
            paths: capsule files, at least one.
            trusted_keys, identities, options: as for ``open_capsule``, the same for each.
            budget: shared budget; ``None`` is unlimited.
            now: one clock reading for every capsule (``None`` reads the clock once).
            skip_invalid: leave out capsules that are expired or not yet valid (listed in
                ``skipped``) while at least one other opens.

        Raises:
            Everything ``open_capsule`` raises, for the first capsule that fails; capsules
            opened before it are closed again.
            ValueError: no paths.
        """
        return cls._open([(Path(p), None) for p in paths], trusted_keys=trusted_keys, identities=identities,
                         budget=budget, now=now, options=options if options is not None else OpenOptions(),
                         skip_invalid=skip_invalid)

    @classmethod
    def _open(cls, opens: Sequence[tuple[Path, _InstalledObject | None]], *, trusted_keys: Sequence[Ed25519PublicKey],
              identities: Sequence[Identity], budget: MemoryBudget | None, now: datetime | None,
              options: OpenOptions, skip_invalid: bool = False, labels: Sequence[str] | None = None) -> "CapsuleSet":
        """``open`` for (file, what a store verified at install or ``None``) pairs; one model session per model.

        ``skip_invalid``: a capsule outside its validity window (expired, not yet valid) is left
        out and recorded in ``skipped`` under its label (``labels``, else its path), as long as
        another one opens; when none does, the first such error is raised.
        """
        if not opens:
            raise ValueError("give at least one capsule")
        now = utc_now(now)
        budget = budget if budget is not None else MemoryBudget(None)
        opened: list[Capsule] = []
        skipped: dict[str, EdgeError] = {}
        try:
            for number, (path, installed) in enumerate(opens):
                shared = {c.manifest.model.sha256: c.embedder for c in opened}
                try:
                    opened.append(_open_capsule(path, trusted_keys=trusted_keys, identities=identities,
                                                budget=budget, now=now, options=options, installed=installed,
                                                embedders=shared))
                except (ExpiredCapsuleError, NotYetValidError) as exc:
                    if not skip_invalid:
                        raise
                    skipped[labels[number] if labels else str(path)] = exc
            if not opened:
                raise next(iter(skipped.values()))
        except BaseException:
            for capsule in opened:
                capsule.close()
            raise
        return cls(opened, budget, skipped)

    def search(self, query: str, k: int = 5, *, mode: str | None = None, documents: Sequence[str] | None = None,
               now: datetime | None = None) -> SearchResult:
        """Return the ``k`` best chunks over all capsules, best first.

        Each capsule ranks the query in its own indexes (``Capsule.search``'s modes); the
        candidates are merged, exact identifier matches first, then by score, and only the
        best ``k`` overall are read from their frames. In hybrid mode the scores are RRF scores
        of each capsule's own rankings; in lexical mode BM25, whose scale depends on each
        capsule's statistics, so merging across capsules is approximate.

        Args:
            query: text.
            k: hits wanted, >= 1.
            mode: ``"hybrid"``, ``"dense"``, ``"lexical"``; ``None``: hybrid when every capsule
                has a lexical index, else dense.
            documents: ``fnmatch`` glob patterns over document names (``None``: all).
            now: one clock reading for the rules of every capsule.

        Returns:
            A ``SearchResult`` (``hit.capsule`` names the capsule); ties go to the capsule given
            first, then the lower chunk id. ``exact_match`` is true when any capsule holds every
            identifier of the query.

        Raises:
            ExpiredCapsuleError, NotYetValidError, RuleViolationError, RateLimitedError: a
                capsule's validity window or rules refuse the search (each capsule counts it
                as one search use; FORMAT.md §4.2).
            FrameDecodeError, DecryptionError, CapsuleFormatError: a hit's frame fails.
            QueryError: an empty query, ``k < 1``, an unknown mode, or a lexical mode when a
                capsule has no lexical index.
        """
        if mode is None:
            mode = "hybrid" if all(c.has_lexical for c in self.capsules) else "dense"
        for capsule in self.capsules:
            capsule._check_query(query, k, mode)
        query = as_valid_text(query)
        at = utc_now(now)
        for capsule in self.capsules:
            capsule._policy.before_use("search", at=at, k=k)
        timings = StageTimings()
        lexical_query = LexicalQuery.parse(query)
        vectors: dict[int, object] = {}
        merged: list[tuple[int, Candidate]] = []
        exact_matches: list[bool] = []
        for order, capsule in enumerate(self.capsules):
            key = id(capsule.embedder)
            if mode != "lexical" and key not in vectors:
                t0 = time.perf_counter()
                vectors[key] = capsule.embedder.embed([query])[0]
                timings.embed_ms += (time.perf_counter() - t0) * 1e3
            found, exact = capsule._candidates(lexical_query, vectors.get(key), k, mode, documents, -1, timings)
            merged.extend((order, cand) for cand in found)
            if exact is not None:
                exact_matches.append(exact)
        merged.sort(key=lambda item: (not item[1].exact, -item[1].score, item[0], item[1].chunk_id))
        best = [cand for _, cand in merged[:k]]
        hits = read_grouped(best, lexical_query, timings)
        return SearchResult(tuple(hits), mode=mode, identifiers=lexical_query.identifier_terms,
                            exact_match=any(exact_matches) if exact_matches else None, timings=timings)

    def close(self) -> None:
        """Close every capsule (releases their reservations)."""
        for capsule in self.capsules:
            capsule.close()

    def __enter__(self) -> "CapsuleSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
