"""CapsuleSet: several capsules open at once, one memory budget, merged search.

A device often carries more than one capsule (a product manual, a safety sheet, a
FAQ). They share one ``MemoryBudget`` and, when they were built with the same model,
one model session (the largest single reservation, ~40 MiB). A query is embedded
once per model, ranked in every capsule's index, and the best ``k`` hits overall are
read from their frames; scores are comparable because every capsule scores by cosine
similarity with the same model.

Example::

    with CapsuleSet.open(["manual.capsule", "faq.capsule"], trusted_keys=keys,
                         identities=[device_key], budget=MemoryBudget(parse_size("256MiB"))) as capsules:
        for hit in capsules.search("how do I reset the unit?", k=5):
            print(hit.capsule, hit.score, hit.text[:60])

Source: edge/budget.py (shared reservations).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .budget import MemoryBudget
from .clock import utc_now
from .capsule import Capsule, Hit, Identity, OpenOptions, StageTimings, _InstalledObject, _open_capsule

__all__ = ["CapsuleSet"]


class CapsuleSet:
    """Open capsules searched together. Create with ``CapsuleSet.open``; close when done.

    Attributes:
        capsules: the open capsules, in the order given.
        budget: the budget they share.
    """

    def __init__(self, capsules: list[Capsule], budget: MemoryBudget) -> None:
        self.capsules = capsules
        self.budget = budget

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike[str]], *, trusted_keys: Sequence[Ed25519PublicKey],
             identities: Sequence[Identity], budget: MemoryBudget | None = None, now: datetime | None = None,
             options: OpenOptions | None = None) -> "CapsuleSet":
        """Verify and open every capsule file; return the set, or raise and leave nothing open.

        Installed capsules open by name with ``Store.open_set``.

        Args:
            paths: capsule files, at least one.
            trusted_keys, identities, options: as for ``open_capsule``, the same for each.
            budget: shared budget; ``None`` is unlimited.
            now: one clock reading for every capsule (``None`` reads the clock once).

        Raises:
            Everything ``open_capsule`` raises, for the first capsule that fails; capsules
            opened before it are closed again.
            ValueError: no paths.
        """
        return cls._open([(Path(p), None) for p in paths], trusted_keys=trusted_keys, identities=identities,
                         budget=budget, now=now, options=options if options is not None else OpenOptions())

    @classmethod
    def _open(cls, opens: Sequence[tuple[Path, _InstalledObject | None]], *, trusted_keys: Sequence[Ed25519PublicKey],
              identities: Sequence[Identity], budget: MemoryBudget | None, now: datetime | None,
              options: OpenOptions) -> "CapsuleSet":
        """``open`` for (file, what a store verified at install or ``None``) pairs; one model session per model."""
        if not opens:
            raise ValueError("give at least one capsule")
        now = utc_now(now)
        budget = budget if budget is not None else MemoryBudget(None)
        opened: list[Capsule] = []
        try:
            for path, installed in opens:
                shared = {c.manifest.model.sha256: c.embedder for c in opened}
                opened.append(_open_capsule(path, trusted_keys=trusted_keys, identities=identities, budget=budget,
                                            now=now, options=options, installed=installed, embedders=shared))
        except BaseException:
            for capsule in opened:
                capsule.close()
            raise
        return cls(opened, budget)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """Return the ``k`` best chunks over all capsules, best first.

        Args:
            query: UTF-8 text.
            k: hits wanted, >= 1.

        Returns:
            Up to k ``Hit``s (``hit.capsule`` names the capsule), score descending; ties go to
            the capsule given first, then the lower chunk id.

        Raises:
            ExpiredCapsuleError, NotYetValidError, RuleViolationError, RateLimitedError: a
                capsule's validity window or rules refuse the search (each capsule counts it
                as one search use; FORMAT.md §4.2).
            FrameDecodeError, DecryptionError, CapsuleFormatError: a hit's frame fails.
            ValueError: ``k < 1`` or an empty query.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be non-empty text")
        if k < 1:
            raise ValueError("k must be >= 1")
        vectors: dict[int, object] = {}
        ranked: list[tuple[float, int, int, Capsule]] = []
        for order, capsule in enumerate(self.capsules):
            key = id(capsule.embedder)
            if key not in vectors:
                vectors[key] = capsule.embedder.embed([query])[0]
            ids, scores = capsule.rank(vectors[key], k)
            ranked.extend((score, order, chunk_id, capsule) for chunk_id, score in zip(ids, scores))
        ranked.sort(key=lambda item: (-item[0], item[1], item[2]))
        timings = StageTimings()
        return [capsule.read_hits([chunk_id], [score], timings)[0] for score, _, chunk_id, capsule in ranked[:k]]

    def close(self) -> None:
        """Close every capsule (releases their reservations)."""
        for capsule in self.capsules:
            capsule.close()

    def __enter__(self) -> "CapsuleSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
