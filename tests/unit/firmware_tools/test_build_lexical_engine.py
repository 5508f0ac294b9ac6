"""firmware-tools' choice of lexical engine: tantivy-7 by default, sqlite-fts5 on request (format
1.1), and a delta keeps its base's engine (FORMAT.md §4.6, §5.6). Refusals come before any work."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from firmware_tools.build import DEFAULT_LEXICAL_ENGINE, build_capsule
from firmware_tools.delta import BaseVersion

NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)


def _build(tmp_path: Path, **kwargs):
    return build_capsule([tmp_path / "none"], tmp_path / "out.capsule", signing_key=Ed25519PrivateKey.generate(),
                         recipients=[X25519PrivateKey.generate().public_key()], issued_at=NOW,
                         expires_at=NOW + timedelta(days=1), **kwargs)


def test_the_default_engine_is_tantivy():
    assert DEFAULT_LEXICAL_ENGINE == "tantivy-7"


def test_an_unknown_engine_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="lexical_engine must be one of sqlite-fts5, tantivy-7"):
        _build(tmp_path, lexical_engine="lucene")
    assert not (tmp_path / "out.capsule").exists()


def test_a_delta_keeps_its_bases_engine(tmp_path):
    base = BaseVersion(path=tmp_path / "base.capsule", name="faq", capsule_id="ab" * 16, version=1,
                       model_sha256="00" * 32, pins=(), tombstones=(), documents={}, n_chunks=1,
                       lexical_format="sqlite-fts5")
    with pytest.raises(ValueError, match=r"keeps its base's lexical index format \(sqlite-fts5\)"):
        _build(tmp_path, base=base, version=2, lexical_engine="tantivy-7")
