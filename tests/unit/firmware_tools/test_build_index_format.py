"""firmware-tools' choice of dense index (FORMAT.md §4.4, §4.4.1): binary codes wherever it
projects, Annoy below that or on request; contradictory requests are refused before any work."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import format as fmt
from firmware_tools.build import build_capsule
from firmware_tools.cli import build_parser

NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)


def _build(tmp_path: Path, **kwargs):
    return build_capsule([tmp_path / "none"], tmp_path / "out.capsule", signing_key=Ed25519PrivateKey.generate(),
                         recipients=[X25519PrivateKey.generate().public_key()], issued_at=NOW,
                         expires_at=NOW + timedelta(days=1), **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(index_format="hnsw"), "index_format must be annoy or binary-codes"),
    (dict(index_format="binary-codes", projection=False), "needs the projection"),
    (dict(index_format="binary-codes", ann_dim=96), "whole 64-bit words"),
    (dict(index_format="binary-codes", ann_dim=512), "whole 64-bit words"),
    (dict(index_format="binary-codes", lexical_engine="sqlite-fts5"), "not sqlite-fts5"),
    (dict(lexical_engine="sqlite-fts5", dense_first_margin=80), "needs the tantivy-7 lexical index"),
    (dict(dense_first_margin=1001), "0..1000"),
    (dict(dense_first_margin=-1), "0..1000"),
])
def test_contradictory_index_requests_are_refused_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _build(tmp_path, **kwargs)
    assert not (tmp_path / "out.capsule").exists()


def test_format_minor_follows_what_the_capsule_holds():
    assert fmt.format_minor_for("annoy", "tantivy-7") == 2
    assert fmt.format_minor_for("annoy", "sqlite-fts5") == 1
    assert fmt.format_minor_for("binary-codes", "tantivy-7") == 3
    assert fmt.format_minor_for("binary-codes", None) == 3
    assert fmt.format_minor_for("annoy", "tantivy-7", dense_first=True) == fmt.FORMAT_MINOR == 4
    assert fmt.format_minor_for("binary-codes", "tantivy-7", dense_first=True) == 4
    with pytest.raises(ValueError, match="not sqlite-fts5"):
        fmt.format_minor_for("binary-codes", "sqlite-fts5")
    for lexical in ("sqlite-fts5", None):
        with pytest.raises(ValueError, match="dense_first_margin goes with the tantivy-7"):
            fmt.format_minor_for("annoy", lexical, dense_first=True)


def test_cli_index_option():
    parser = build_parser()
    common = ["build", "docs", "-o", "x.capsule", "--signing-key", "k", "--recipient", "d.pub", "--expires", "+1d"]
    assert parser.parse_args(common).index == "auto"
    assert parser.parse_args(common + ["--index", "annoy"]).index == "annoy"
    with pytest.raises(SystemExit):
        parser.parse_args(common + ["--index", "hnsw"])
