"""Shared fixtures: a fixed clock and small valid manifest objects."""

from __future__ import annotations

import base64
import copy
from datetime import datetime, timezone

import pytest

FIXED_NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def sample_manifest_dict() -> dict:
    """Return a structurally valid manifest object (FORMAT.md §4.1); not tied to real sections."""
    b64 = lambda n: base64.b64encode(bytes(range(n))).decode()  # noqa: E731
    digest = {"length": 100, "sha256": "ab" * 32}
    return copy.deepcopy({
        "format": "edge-capsule/1",
        "capsule_id": "0123456789abcdef0123456789abcdef",
        "name": "sample",
        "version": 3,
        "publisher": {"keyid": "cd" * 32, "name": "Example Publisher"},
        "issued_at": "2026-11-01T00:00:00Z",
        "not_before": "2026-11-01T00:00:00Z",
        "expires_at": "2027-11-01T00:00:00Z",
        "rules": {},
        "model": {"name": "all-MiniLM-L6-v2-int8", "family": "onnx", "sha256": "ef" * 32,
                  "tokenizer_sha256": "12" * 32, "dim": 384, "pooling": "mean", "normalization": "l2",
                  "max_tokens": 256},
        "chunking": {"max_tokens": 200, "overlap_tokens": 32},
        "index": {"format": "annoy", "dim": 384, "metric": "angular", "n_items": 10, "n_trees": 16, "seed": 42,
                  "search_k": 4000, "projection": None, "encryption": "chacha20poly1305-stream"},
        "video": {"container": "mp4", "codec": "h264", "profile": "High", "width": 192, "height": 192,
                  "pix_fmt": "yuv420p", "crf": 24, "gop": 1, "fps": 25, "n_frames": 3, "extradata": b64(40),
                  "qr": {"version": 40, "ec_level": "L", "pixels_per_module": 1, "quiet_zone_modules": 4}},
        "payload": {"aead": "chacha20poly1305", "compression": "deflate-raw", "layout": "frame-v1",
                    "max_plaintext_bytes": 65536},
        "n_chunks": 10,
        "n_documents": 2,
        "sections": {"DOCS": digest, "FTAB": dict(digest, length=48), "INDX": digest, "VIDE": digest},
        "recipients": [{"type": "x25519", "epk": b64(32), "body": b64(48)}],
        "builder": {"name": "firmware-tools", "version": "0.1.0"},
    })


@pytest.fixture
def fixed_now() -> datetime:
    return FIXED_NOW


@pytest.fixture
def manifest_dict() -> dict:
    return sample_manifest_dict()
