"""Regenerate ``tests/vectors/``: tiny capsules with EXPECT files, byte for byte.

``python -m tests.vectors.generate [-o DIR]`` builds three genuine capsules from the two short
documents in ``tests/vectors/src/docs/`` with test-only keys (derived from their names, written to
``tests/vectors/keys/``), a fixed clock and fixed seeds, and derives every other vector from them:
header and table patches, manifests edited and re-signed, sections re-sealed with the capsule's
own keys (a compromised or buggy publisher), frames re-encoded in another order, trust documents
that delegate, rotate and revoke. Each vector directory holds ``capsule`` (unless it names a
``base`` vector and byte patches), an optional ``trust.json`` / ``installed-trust.json`` and an
``EXPECT`` file; ``tests/vectors/README.md`` defines the EXPECT keys.

It deliberately does not run the vectors (``tests/vectors/test_vectors.py`` and
``tests/corruption/`` do) and never touches ``src/``, ``README.md`` or test files in the output.

Example::

    python -m tests.vectors.generate                  # rewrite tests/vectors/
    python -m tests.vectors.generate -o /tmp/v        # regenerate elsewhere, then diff -r

It lives under ``tests/`` (as python-tuf keeps ``tests/generated_data/generate_md.py``): it is
test tooling, not part of the installed builder, and it uses the builder's internals.

Source: FORMAT.md §14.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import format as fmt
from edge.frames import FrameReader
from edge.keys import Passphrase, keyid
from edge.manifest import canonical_json, format_time, parse_manifest, signatures_to_bytes
from edge.sealed import (
    RECORD_HEADER,
    derive_keys,
    open_frame,
    open_stream,
    seal_stream,
    sha256_hex,
    unwrap_content_key,
    zstd_decompressor,
)

from firmware_tools.cosign import assemble_capsule, read_sections
from firmware_tools.keys import private_key_pem, public_key_pem
from firmware_tools.mp4_writer import encode_lumas, read_sample_table
from firmware_tools.qr_video import VideoParams, render_qr_frame
from firmware_tools.sealing import Randomness, payload_compressor, seal_frame, sign_manifest, wrap_for_passphrase
from firmware_tools.trust_writer import Delegate, next_trust_document, write_trust_document

ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = ROOT / "tests" / "vectors"
DOCS_DIR = VECTORS_DIR / "src" / "docs"
#: The chunk embeddings the genuine capsules are built from (EmbeddingCache rows: keys uint8
#: [n, 32], vectors float32 [n, 384]). Committed, so that the vectors regenerate byte for byte on
#: any CPU: onnxruntime's int8 kernels round differently per instruction set (AVX2, AVX-512 VNNI,
#: AMX, NEON), and the PCA, the int8 re-ranking vectors and the Annoy trees follow the embeddings.
EMBEDDINGS_FILE = VECTORS_DIR / "src" / "chunk-embeddings.npz"
#: What the generator owns in the output directory (everything else is left alone).
KEYS_SUBDIR = "keys"

UTC = timezone.utc
ISSUED_AT = datetime(2026, 1, 1, tzinfo=UTC)
EXPIRES_AT = datetime(2090, 1, 1, tzinfo=UTC)
NOW = "2030-01-01T00:00:00Z"
SEED = b"edge-capsules test vectors v1"
ALPHA_ID = "a1" * 16
BETA_ID = "b2" * 16
PASSPHRASE = "correct horse battery staple (test only)"
QUERY = "How do I reset the kiosk?"
VIDEO_PARAMS = VideoParams(qr_version=10, width=80, height=80, quiet_zone_modules=4)
BUILD_OPTIONS = dict(projection=True, index_format="annoy", ann_dim=2, refine_dim=4, n_trees=2, max_tokens=48,
                     overlap_tokens=8, dense_first_margin=0,
                     video_params=VIDEO_PARAMS, n_threads=1, seed=SEED, index_seed=42, scrypt_log_n=10)

#: The ``binary-codes`` capsule (FORMAT.md §4.4.1): one 64-bit word per code, 64 re-ranking coordinates.
CODES_BUILD_OPTIONS = dict(index_format="binary-codes", ann_dim=64, refine_dim=64, n_candidates=3)
#: The format 1.4 capsule: hybrid fusion with a dense-first margin (FORMAT.md §4.6), the builder's default.
DENSE_FIRST_BUILD_OPTIONS = dict(dense_first_margin=80)

ED25519_KEYS = ("test-root-1", "test-root-2", "test-publisher-1", "test-publisher-2", "test-publisher-3",
                "test-untrusted")
X25519_KEYS = ("test-device", "test-other-device")


def test_key(name: str) -> Ed25519PrivateKey | X25519PrivateKey:
    """Return the test-only key ``name``; its 32-byte seed is SHA-256 of a fixed label and the name."""
    seed = hashlib.sha256(b"edge-capsules test-only key\x00" + name.encode()).digest()
    if name in ED25519_KEYS:
        return Ed25519PrivateKey.from_private_bytes(seed)
    if name in X25519_KEYS:
        return X25519PrivateKey.from_private_bytes(seed)
    raise KeyError(name)


def _kid(name: str) -> str:
    return keyid(test_key(name).public_key())


# ---------------------------------------------------------------------------
# An editable capsule


class Draft:
    """A capsule split into sections with its manifest as a dict, to edit and re-sign."""

    def __init__(self, data: bytes) -> None:
        self.sections = read_sections(data)
        self.format_minor = int.from_bytes(data[10:12], "little")  # the header's minor version (FORMAT.md §2), kept on rebuild
        self.manifest = json.loads(self.sections["MANI"])
        parsed = parse_manifest(self.sections["MANI"])
        self.keys = derive_keys(unwrap_content_key(parsed, [test_key("test-device")]), parsed.capsule_id_bytes)

    def copy(self) -> "Draft":
        return Draft(self.build())

    def plaintext(self, tag: str) -> bytes:
        return open_stream(self.keys.section(tag), self.sections[tag])

    def set_section(self, tag: str, data: bytes) -> None:
        self.sections[tag] = data
        self.manifest["sections"][tag] = {"length": len(data), "sha256": sha256_hex(data)}

    def reseal(self, tag: str, plaintext: bytes) -> None:
        self.set_section(tag, b"".join(seal_stream(self.keys.section(tag), [plaintext])))

    def frame_table(self) -> fmt.FrameTable:
        return fmt.FrameTable.from_bytes(self.sections["FTAB"], n_frames=self.manifest["video"]["n_frames"],
                                         n_chunks=self.manifest["n_chunks"], video_bytes=len(self.sections["VIDE"]))

    def payloads(self) -> list[bytes]:
        ftab = self.frame_table()
        reader = FrameReader(self.sections["VIDE"], extradata=base64.b64decode(self.manifest["video"]["extradata"]),
                             sample_offsets=ftab.sample_offsets, sample_sizes=ftab.sample_bytes,
                             prefer_hardware=False)
        try:
            return [reader.read_payload(i) for i in range(ftab.n_frames)]
        finally:
            reader.close()

    def frame_plaintext(self, frame_index: int) -> bytes:
        ftab = self.frame_table()
        records = open_frame(self.keys.payload, self.payloads()[frame_index], manifest=parse_manifest(self.build_mani()),
                             frame_index=frame_index, first_chunk_id=int(ftab.first_chunk_ids[frame_index]),
                             n_slots=ftab.n_slots(frame_index), decompressor=zstd_decompressor())
        return b"".join(RECORD_HEADER.pack(r.doc_index, r.char_start, r.char_end, len(r.text.encode()))
                        + r.text.encode() for r in records)

    def seal_frame_payload(self, frame_index: int, compressed: bytes, *, first_chunk_id: int | None = None,
                           n_slots: int | None = None) -> bytes:
        ftab = self.frame_table()
        return seal_frame(self.keys.payload, compressed, capsule_id=bytes.fromhex(self.manifest["capsule_id"]),
                          version=self.manifest["version"], frame_index=frame_index,
                          first_chunk_id=int(ftab.first_chunk_ids[frame_index]) if first_chunk_id is None
                          else first_chunk_id,
                          n_slots=ftab.n_slots(frame_index) if n_slots is None else n_slots)

    def set_video(self, frames: list[bytes | np.ndarray], first_chunk_ids: list[int] | None = None) -> None:
        """Re-encode VIDE from payloads (bytes) or ready luma images (ndarray); rewrite FTAB."""
        lumas = [f.tobytes() if isinstance(f, np.ndarray) else render_qr_frame(f, VIDEO_PARAMS).tobytes()
                 for f in frames]
        with tempfile.TemporaryDirectory(prefix="edge-vectors-") as tmp:
            path = Path(tmp) / "v.mp4"
            n = encode_lumas(lumas, path, VIDEO_PARAMS)
            video = read_sample_table(path, n)
            mp4 = path.read_bytes()
        firsts = first_chunk_ids if first_chunk_ids is not None else [int(x) for x in self.frame_table().first_chunk_ids]
        table = fmt.FrameTable(np.asarray(video.sample_offsets, dtype=np.uint64),
                               np.asarray(video.sample_sizes, dtype=np.uint32),
                               np.asarray(firsts, dtype=np.uint32), self.manifest["n_chunks"])
        self.manifest["video"]["n_frames"] = n
        self.manifest["video"]["extradata"] = base64.b64encode(video.extradata).decode("ascii")
        self.set_section("VIDE", mp4)
        self.set_section("FTAB", table.to_bytes())

    def build_mani(self) -> bytes:
        return canonical_json(self.manifest)

    def build(self, signers: tuple[str, ...] = ("test-publisher-1",), *, mani: bytes | None = None,
              sigs: bytes | None = None) -> bytes:
        sections = dict(self.sections)
        sections["MANI"] = mani if mani is not None else self.build_mani()
        if sigs is None:
            sigs = signatures_to_bytes(sign_manifest(sections["MANI"], [test_key(s) for s in signers]))
        sections["SIGS"] = sigs
        return assemble_capsule(sections, format_minor=self.format_minor)


# ---------------------------------------------------------------------------
# Vectors


@dataclass
class Vector:
    """One vector directory: EXPECT lines and files."""

    name: str
    expect: dict[str, str]
    files: dict[str, bytes] = field(default_factory=dict)

    def expect_text(self) -> str:
        return "".join(f"{k.split('.')[0]}: {v}\n" for k, v in self.expect.items())


def _expect(expect: str, comment: str, **fields: str) -> dict[str, str]:
    out = {"expect": expect}
    if "open" in fields:
        out["open"] = fields.pop("open")
    out["now"] = fields.pop("now", NOW)
    if "root_keys" not in fields and "trusted_keys" not in fields:
        out["trusted_keys"] = "test-publisher-1"
    out.update({"identity": "test-device"} if "identity" not in fields and "passphrase" not in fields else {})
    out.update(fields)
    out["comment"] = comment
    return out


def _base_manifest_sha(data: bytes) -> str:
    return hashlib.sha256(read_sections(data)["MANI"]).hexdigest()


class StaleEmbeddingsError(Exception):
    """The documents in ``src/docs/`` hold chunks that ``EMBEDDINGS_FILE`` has no embedding for."""


def _build_genuine(out_dir: Path, *, refresh_embeddings: bool = False) -> dict[str, bytes]:
    """Build the genuine capsules from ``DOCS_DIR`` with the pinned chunk embeddings.

    With ``refresh_embeddings`` the model embeds every chunk on this CPU and ``EMBEDDINGS_FILE`` is
    rewritten (do it only when ``src/docs/`` or the chunking change, and commit the result).

    Raises:
        StaleEmbeddingsError: a chunk has no pinned embedding (and ``refresh_embeddings`` is off).
    """
    from edge.embedder import QueryEmbedder, find_model_dir

    from firmware_tools.build import build_capsule
    from firmware_tools.embedding import EmbeddingCache

    model = QueryEmbedder.open(find_model_dir(None), n_threads=1)
    cache_path = out_dir / "embeddings.sqlite"
    cache = EmbeddingCache(cache_path, model.sha256, model.dim)
    if not refresh_embeddings:
        with np.load(EMBEDDINGS_FILE) as pinned:
            cache.import_rows(pinned["keys"], pinned["vectors"])
    built = {}
    specs = {"alpha-v1": ("alpha", ALPHA_ID, 1, None), "alpha-v2": ("alpha", ALPHA_ID, 2, None),
             "beta-v1": ("beta", BETA_ID, 1, None), "alpha-v3": ("alpha", ALPHA_ID, 3, None),
             "alpha-v2-fts5": ("alpha", ALPHA_ID, 2, "sqlite-fts5"), "alpha-v2-codes": ("alpha", ALPHA_ID, 2, None),
             "alpha-v2-dense-first": ("alpha", ALPHA_ID, 2, None)}
    for label, (name, capsule_id, version, lexical_engine) in specs.items():
        path = out_dir / f"{label}.capsule"
        options = {**BUILD_OPTIONS, **(CODES_BUILD_OPTIONS if label.endswith("-codes") else {}),
                   **(DENSE_FIRST_BUILD_OPTIONS if label.endswith("-dense-first") else {})}
        result = build_capsule([DOCS_DIR], path, signing_key=test_key("test-publisher-1"),
                               recipients=[test_key("test-device").public_key()], issued_at=ISSUED_AT,
                               expires_at=EXPIRES_AT, version=version, name=name, capsule_id=capsule_id,
                               publisher_name="Test Publisher 1", embedding_cache=cache_path,
                               lexical_engine=lexical_engine, **options)
        if result.n_embedded and not refresh_embeddings:
            raise StaleEmbeddingsError(
                f"{result.n_embedded} chunks of {DOCS_DIR} have no embedding in {EMBEDDINGS_FILE}: the documents "
                "or the chunking changed; run python -m tests.vectors.generate --refresh-embeddings and commit it")
        built[label] = path.read_bytes()
    if refresh_embeddings:
        keys, vectors = cache.export_rows()
        np.savez(EMBEDDINGS_FILE, keys=keys, vectors=vectors)
    cache.close()
    return built


def _delta_vectors(alpha3: bytes, alpha2: Draft, beta: bytes, ok_sha: str, fts5_sha: str) -> list[Vector]:
    """Deltas (FORMAT.md §4.7): alpha v3 as the newest segment over alpha v2 (vector ``ok``), its
    chunks replacing all of v2's (every v2 chunk tombstoned), and what a reader must refuse."""
    n2 = alpha2.manifest["n_chunks"]
    out = []

    def delta(name: str, expect: str, comment: str, *, pin_sha: str = ok_sha, pin_chunks: int = n2,
              tombstones: list | None = None, files: dict[str, bytes] | None = None, **fields: str) -> None:
        d = Draft(alpha3)
        d.manifest["segments"] = {"base": [{"version": 2, "manifest_sha256": pin_sha, "n_chunks": pin_chunks}],
                                  "tombstones": [[0, n2]] if tombstones is None else tombstones}
        out.append(Vector(name, _expect(expect, comment, **fields), {"capsule": d.build(), **(files or {})}))

    delta("delta-ok", "ok", "alpha v3, a delta over alpha v2 (vector ok, given as its segment) whose chunks all "
          "are tombstoned", segment="../ok/capsule", operation="search 2 kiosk")
    delta("delta-without-its-base", "delta-base", "alpha v3 delta over v2, opened without v2's file")
    delta("delta-for-another-base", "delta-base", "alpha v3 delta pinning a v2 manifest other than the one given",
          pin_sha="0" * 64, segment="../ok/capsule")
    delta("delta-segment-from-another-capsule", "integrity", "alpha v3 delta pinning capsule beta's manifest, "
          "and given beta's file: a segment of another capsule (mix and match)",
          pin_sha=_base_manifest_sha(beta), segment="beta.capsule", files={"beta.capsule": beta})
    delta("delta-segment-lexical-format-differs", "integrity", "alpha v3 (tantivy-7) over the sqlite-fts5 build of "
          "alpha v2 (vector ok-fts5): BM25 of two engines cannot be merged", pin_sha=fts5_sha, segment="../ok-fts5/capsule")
    delta("delta-segment-chunk-count-wrong", "integrity", "the pin says v2 holds one chunk more than it does",
          pin_chunks=n2 + 1, segment="../ok/capsule")
    delta("delta-tombstone-names-no-chunk", "format", f"a tombstone [0, {n2 + 1}) past v2's {n2} chunks",
          tombstones=[[0, n2 + 1]], segment="../ok/capsule")
    delta("delta-version-backwards", "rollback", "alpha v3 delta over the right v2, on a device that accepted v4",
          segment="../ok/capsule", installed=f"{ALPHA_ID} 4 {'0' * 64}")
    data = out[0].files["capsule"]
    for name, expect, comment, fields in (
            ("delta-installs", "ok", "the store holds alpha v2; installing the delta v3 over it", {}),
            ("delta-replayed", "delta-base", "the store installed alpha v2 then the delta v3; the delta again",
             {"store.2": "../delta-ok/capsule"}),
            ("delta-over-another-version", "delta-base", "the store holds alpha v1; the delta applies to v2",
             {"store.1": "../older-version/capsule"}),
            ("delta-past-store-quota", "store", "the store holds alpha v2 and has a quota 1,000 bytes above it",
             {"store_quota_bytes": str(len(alpha2.build()) + 1000)})):
        store = {"store.1": "../ok/capsule", **fields}
        out.append(Vector(name, _expect(expect, comment, base="delta-ok", operation="install",
                                        **dict(sorted(store.items())))))
    out.append(Vector("delta-truncated", _expect("integrity", "delta-ok without its last 100 bytes", base="delta-ok",
                                                 segment="../ok/capsule", truncate=str(len(data) - 100))))
    return out


def _header_and_table_vectors(ok: bytes) -> list[Vector]:
    header = fmt.parse_header(ok[:64], file_bytes=len(ok))
    table = fmt.parse_section_table(ok[64:64 + header.table_bytes], header)
    entry = {tag: 64 + 32 * i for i, tag in enumerate(fmt.SECTION_ORDER)}
    u32 = lambda v: v.to_bytes(4, "little").hex()  # noqa: E731
    u64 = lambda v: v.to_bytes(8, "little").hex()  # noqa: E731
    pad_start, pad_end = fmt.padding_ranges(table, header)[-1]
    specs = [
        ("header-bad-magic", "format", "first magic byte zeroed", [(0, "00")], {}),
        ("header-major-2", "format", "format_major 2", [(8, "0200")], {}),
        ("header-minor-5", "format", "format_minor 5, newer than the reader", [(10, "0500")], {}),
        ("header-minor-0", "format", "format_minor 0: version 1.0 has no lexical index, a 1.1 or 1.2 reader refuses it",
         [(10, "0000")], {}),
        ("header-bytes-65", "format", "header_bytes 65", [(12, u32(65))], {}),
        ("header-n-sections-huge", "format", "n_sections 2^32-1: refused before anything is read or allocated",
         [(16, "ffffffff")], {}),
        ("header-entry-bytes-33", "format", "section_entry_bytes 33", [(20, u32(33))], {}),
        ("header-file-bytes-huge", "integrity", "file_bytes 2^63-1: compared with the real length, never allocated",
         [(24, "ffffffffffffff7f")], {}),
        ("header-reserved-nonzero", "format", "a reserved header byte is 1", [(40, "01")], {}),
        ("table-flags-nonzero", "format", "SIGS entry flags 1", [(entry["SIGS"] + 4, u32(1))], {}),
        ("table-reserved-nonzero", "format", "DOCS entry reserved field 1", [(entry["DOCS"] + 24, "01")], {}),
        ("table-sections-reordered", "format", "DOCS and FTAB tags swapped",
         [(entry["DOCS"], b"FTAB".hex()), (entry["FTAB"], b"DOCS".hex())], {}),
        ("table-duplicate-tag", "format", "FTAB entry renamed DOCS", [(entry["FTAB"], b"DOCS".hex())], {}),
        ("table-n-sections-9", "format", "n_sections 9: VIDE missing", [(16, u32(9))], {}),
        ("table-misaligned-offset", "format", "MANI offset moved by 8 bytes",
         [(entry["MANI"] + 8, u64(table["MANI"].offset + 8))], {}),
        ("table-mani-length-over-limit", "format", "MANI length 5 MiB, over the 4 MiB limit: refused before reading",
         [(entry["MANI"] + 16, u64(5 << 20))], {}),
        ("table-vide-length-huge", "format", "VIDE length 2^62, over the 64 GiB limit: nothing mapped or allocated",
         [(entry["VIDE"] + 16, u64(1 << 62))], {}),
        ("table-trailing-bytes", "format", "one byte after VIDE, header file_bytes counts it",
         [(24, u64(len(ok) + 1))], {"append": "00"}),
        ("padding-nonzero", "format", f"padding byte {pad_start} (before {fmt.SECTION_ORDER[-1]}) is 1",
         [(pad_start, "01")], {}),
        ("section-length-differs-from-manifest", "integrity", "VIDE one byte longer in header and table than the "
         "manifest says", [(24, u64(len(ok) + 1)), (entry["VIDE"] + 16, u64(table["VIDE"].length + 1))],
         {"append": "00"}),
        ("manifest-tampered-byte", "signature", "one byte of the manifest's name changed after signing",
         [(table["MANI"].offset + ok[table["MANI"].offset:table["MANI"].end].index(b'"name":"alpha"') + 8,
           b"A".hex())], {}),
        ("extended-by-one-byte", "integrity", "one zero byte appended", [], {"append": "00"}),
        ("truncated-in-header", "format", "file cut to 63 bytes", [], {"truncate": "63"}),
    ]
    assert pad_end > pad_start
    vectors = []
    for name, expect, comment, patches, extra in specs:
        fields = {"base": "ok"}
        fields.update(extra)
        e = _expect(expect, comment, **fields)
        lines = dict(e)
        comment_line = lines.pop("comment")
        for i, (offset, hexdata) in enumerate(patches):
            lines[f"patch.{i}"] = f"{offset} {hexdata}"
        lines["comment"] = comment_line
        vectors.append(Vector(name, lines))
    return vectors


def _rules_vector(alpha2: Draft, name: str, rules: dict, expect: str, comment: str, **fields: str) -> Vector:
    d = alpha2.copy()
    d.manifest["rules"] = rules
    return Vector(name, _expect(expect, comment, **fields), {"capsule": d.build()})


def _trust_vectors(ok: bytes, alpha2: Draft) -> list[Vector]:
    r1, r2 = test_key("test-root-1"), test_key("test-root-2")
    p1, p2, p3 = (test_key(f"test-publisher-{i}").public_key() for i in (1, 2, 3))
    far = EXPIRES_AT
    t1 = write_trust_document(root_signing_keys=[r1], publishers=[Delegate(p1, "publisher 1", far),
                                                                  Delegate(p2, "publisher 2", far)],
                              version=1, issued_at=ISSUED_AT)
    t2 = next_trust_document(t1, root_signing_keys=[r1], issued_at=datetime(2026, 2, 1, tzinfo=UTC),
                             add=[Delegate(p3, "publisher 3", far)], revoke=[keyid(p1)])
    by_p2 = alpha2.build(("test-publisher-2",))
    by_p3 = alpha2.build(("test-publisher-3",))
    by_p1_p2 = alpha2.build(("test-publisher-1", "test-publisher-2"))
    root = {"root_keys": "test-root-1"}
    v = []
    v.append(Vector("trust-root-ok", _expect("ok", "signed by publisher 1, which the root delegates until 2090",
                                             base="ok", **root), {"trust.json": t1}))
    revoked = write_trust_document(root_signing_keys=[r1], publishers=[Delegate(p1, "publisher 1", far)],
                                   revoked=[keyid(p2)], version=1, issued_at=ISSUED_AT)
    v.append(Vector("trust-revoked-signer", _expect("signature", "signed by publisher 2, which the root revoked",
                                                    **root), {"capsule": by_p2, "trust.json": revoked}))
    expired = write_trust_document(root_signing_keys=[r1], publishers=[
        Delegate(p1, "publisher 1", far), Delegate(p2, "publisher 2", datetime(2026, 6, 1, tzinfo=UTC))],
        version=1, issued_at=ISSUED_AT)
    v.append(Vector("trust-delegation-expired", _expect(
        "signature", "signed by publisher 2, whose delegation expired 2026-06-01", **root),
        {"capsule": by_p2, "trust.json": expired}))
    late = write_trust_document(root_signing_keys=[r1], publishers=[
        Delegate(p1, "publisher 1", far), Delegate(p2, "publisher 2", datetime(2089, 1, 1, tzinfo=UTC))],
        version=1, issued_at=ISSUED_AT)
    v.append(Vector("trust-delegation-expired-by-floor", _expect(
        "signature", "publisher 2 is delegated until 2089-01-01; the clock says 2030 but the floor is 2089-06-01",
        floor="2089-06-01T00:00:00Z", **root), {"capsule": by_p2, "trust.json": late}))
    two = write_trust_document(root_signing_keys=[r1], publishers=[Delegate(p1, "publisher 1", far),
                                                                   Delegate(p2, "publisher 2", far)],
                               threshold=2, version=1, issued_at=ISSUED_AT)
    v.append(Vector("trust-threshold-not-met", _expect("signature", "the root needs 2 of 2 publisher signatures; "
                                                       "signed by 1", base="ok", **root), {"trust.json": two}))
    v.append(Vector("trust-threshold-met", _expect("ok", "the root needs 2 of 2 publisher signatures; signed by both",
                                                   **root), {"capsule": by_p1_p2, "trust.json": two}))
    v.append(Vector("trust-rotated-key", _expect(
        "ok", "installed document v1 delegates publishers 1 and 2; update v2 adds publisher 3 and revokes "
        "publisher 1; signed by publisher 3", installed_trust="installed-trust.json", **root),
        {"capsule": by_p3, "installed-trust.json": t1, "trust.json": t2}))
    v.append(Vector("trust-old-key-after-rotation", _expect(
        "signature", "after the update to v2 publisher 1 is revoked; signed by publisher 1", base="ok",
        installed_trust="installed-trust.json", **root), {"installed-trust.json": t1, "trust.json": t2}))
    fake = write_trust_document(root_signing_keys=[test_key("test-untrusted")], root_public_keys=[r1.public_key()],
                                publishers=[Delegate(p1, "publisher 1", far)], version=1, issued_at=ISSUED_AT)
    v.append(Vector("trust-document-not-root-signed", _expect(
        "trust", "names root 1 but is signed by another key", base="ok", **root), {"trust.json": fake}))
    pair = write_trust_document(root_signing_keys=[r1], root_public_keys=[r1.public_key(), r2.public_key()],
                                root_threshold=2, publishers=[Delegate(p1, "publisher 1", far)], version=1,
                                issued_at=ISSUED_AT)
    v.append(Vector("trust-document-root-threshold", _expect(
        "trust", "root is 2-of-2; signed by root 1 only", base="ok", root_keys="test-root-1 test-root-2"),
        {"trust.json": pair}))
    v.append(Vector("trust-document-older", _expect(
        "trust", "the device holds version 2; this is version 1", base="ok", installed_trust="installed-trust.json",
        **root), {"installed-trust.json": t2, "trust.json": t1}))
    noncanonical = t1.replace(b'{"signatures":', b'{ "signatures":', 1)
    v.append(Vector("trust-document-noncanonical", _expect("trust", "a space after the first brace", base="ok",
                                                           **root), {"trust.json": noncanonical}))
    both = json.loads(t1)["signed"]
    both["revoked"] = [keyid(p1)]
    both_doc = canonical_json({"signatures": [
        {"keyid": keyid(r1.public_key()),
         "sig": base64.b64encode(r1.sign(b"edge-capsule/v1/trust\x00" + canonical_json(both))).decode()}],
        "signed": both})
    v.append(Vector("trust-document-revoked-and-delegated", _expect(
        "trust", "publisher 1 is both delegated and revoked (properly signed by the root)", base="ok", **root),
        {"trust.json": both_doc}))
    rotated = next_trust_document(t1, root_signing_keys=[r1, r2], issued_at=datetime(2026, 3, 1, tzinfo=UTC),
                                  root_public_keys=[r2.public_key()])
    v.append(Vector("trust-document-root-rotation", _expect(
        "ok", "update v2 moves the root from root 1 to root 2, signed by both", base="ok",
        installed_trust="installed-trust.json", **root), {"installed-trust.json": t1, "trust.json": rotated}))
    hijack = next_trust_document(t1, root_signing_keys=[r2], issued_at=datetime(2026, 3, 1, tzinfo=UTC),
                                 root_public_keys=[r2.public_key()])
    v.append(Vector("trust-document-root-rotation-not-signed-by-old-root", _expect(
        "trust", "update v2 moves the root to root 2 but only root 2 signed it", base="ok",
        installed_trust="installed-trust.json", **root), {"installed-trust.json": t1, "trust.json": hijack}))
    return v


def _frame_vectors(alpha2: Draft, beta: Draft) -> list[Vector]:
    v = []
    payloads = alpha2.payloads()
    ftab = alpha2.frame_table()
    n_frames = ftab.n_frames
    assert 2 <= n_frames <= 5, n_frames
    opened = {"open": "ok"}

    d = alpha2.copy()
    swapped = list(payloads)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    d.set_video(swapped)
    v.append(Vector("frame-moved", _expect("decryption", "frames 0 and 1 swapped; digests recomputed and re-signed, "
                                           "so only the frames' AEAD (frame index in nonce and AD) catches it",
                                           **opened), {"capsule": d.build()}))
    firsts = [int(x) for x in ftab.first_chunk_ids]
    nexts = firsts[1:] + [ftab.n_chunks]
    f = next(i for i in range(1, n_frames) if nexts[i] - firsts[i] >= 2 or firsts[i] - firsts[i - 1] >= 2)
    shifted = list(firsts)
    shifted[f] += 1 if nexts[f] - firsts[f] >= 2 else -1
    d = alpha2.copy()
    d.set_video(payloads, shifted)
    v.append(Vector("frame-slot-shifted", _expect("decryption", f"frame {f} said to start at chunk {shifted[f]} "
                                                  f"instead of {firsts[f]}; re-signed; the AD binds first chunk and "
                                                  "slot count", **opened), {"capsule": d.build()}))
    d = alpha2.copy()
    d.set_video([beta.payloads()[0]] + payloads[1:])
    v.append(Vector("frame-from-other-capsule", _expect("decryption", "frame 0 taken from capsule beta; re-signed",
                                                        **opened), {"capsule": d.build()}))

    def replace_frame0(name: str, expect: str, comment: str, payload: bytes | np.ndarray) -> None:
        d = alpha2.copy()
        d.set_video([payload] + payloads[1:])
        v.append(Vector(name, _expect(expect, comment, **opened), {"capsule": d.build()}))

    compressor = payload_compressor()
    plain0 = alpha2.frame_plaintext(0)
    replace_frame0("frame-payload-version-2", "format", "frame 0 payload version byte 2",
                   b"\x02" + payloads[0][1:])
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=False).compress(bytes(1 << 20))
    replace_frame0("frame-decompression-bomb", "format", f"frame 0 holds {len(bomb)} bytes of zstd that inflate to "
                   "1 MiB (no content size); the limit is max_plaintext_bytes (64 KiB)",
                   alpha2.seal_frame_payload(0, bomb))
    replace_frame0("frame-trailing-bytes", "format", "frame 0: a valid zstd frame followed by 3 bytes, sealed",
                   alpha2.seal_frame_payload(0, compressor.compress(plain0) + b"abc"))
    n_slots0 = ftab.n_slots(0)
    hdr = RECORD_HEADER.unpack_from(plain0, 0)
    overrun = RECORD_HEADER.pack(hdr[0], hdr[1], hdr[2], hdr[3] + 1000) + plain0[RECORD_HEADER.size:]
    replace_frame0("frame-records-overrun", "format", "frame 0's first record claims 1000 more text bytes than "
                   "the plaintext holds", alpha2.seal_frame_payload(0, compressor.compress(overrun)))
    first_len = RECORD_HEADER.size + hdr[3]
    if n_slots0 > 1:
        replace_frame0("frame-record-count-wrong", "format", f"frame 0 holds {n_slots0 - 1} records, the frame "
                       f"table says {n_slots0}", alpha2.seal_frame_payload(0, compressor.compress(plain0[first_len:])))
    else:
        replace_frame0("frame-record-count-wrong", "format", "frame 0 holds its record twice, the frame table says "
                       "1 slot", alpha2.seal_frame_payload(0, compressor.compress(plain0 + plain0)))
    bad_utf8 = RECORD_HEADER.pack(hdr[0], hdr[1], hdr[2], 2) + b"\xff\xfe" + plain0[first_len:]
    replace_frame0("frame-text-not-utf8", "format", "frame 0's first record text is ff fe",
                   alpha2.seal_frame_payload(0, compressor.compress(bad_utf8)))
    d = alpha2.copy()
    blank = np.full((VIDEO_PARAMS.height, VIDEO_PARAMS.width), 255, dtype=np.uint8)
    d.set_video([payloads[0], blank] + payloads[2:])
    v.append(Vector("frame-without-qr", _expect("frame", "frame 1 is a blank white picture; re-signed", **opened),
                    {"capsule": d.build()}))
    return v


def _manifest_vectors(alpha2: Draft, beta: Draft, alpha2_fts5: Draft) -> list[Vector]:
    v = []

    def edited(name: str, expect: str, comment: str, edit: Callable[[Draft], None], **fields: str) -> None:
        d = alpha2.copy()
        edit(d)
        v.append(Vector(name, _expect(expect, comment, **fields), {"capsule": d.build()}))

    def raw_mani(name: str, expect: str, comment: str, transform: Callable[[bytes], bytes]) -> None:
        mani = transform(alpha2.build_mani())
        v.append(Vector(name, _expect(expect, comment), {"capsule": alpha2.build(mani=mani)}))

    def times(nb: datetime, exp: datetime) -> Callable[[Draft], None]:
        def edit(d: Draft) -> None:
            d.manifest["not_before"], d.manifest["expires_at"] = format_time(nb), format_time(exp)
        return edit

    edited("expired", "expired", "expires_at 2026-06-01", times(ISSUED_AT, datetime(2026, 6, 1, tzinfo=UTC)))
    edited("not-yet-valid", "not-yet-valid", "not_before 2089-01-01",
           times(datetime(2089, 1, 1, tzinfo=UTC), EXPIRES_AT))
    raw_mani("manifest-noncanonical-whitespace", "format", "a space after the first brace; re-signed",
             lambda m: b"{ " + m[1:])
    raw_mani("manifest-unsorted-keys", "format", "keys \"version\" and \"video\" swapped; re-signed",
             lambda m: _swap_keys(m))
    raw_mani("manifest-duplicate-key", "format", "\"version\" appears twice (same value); re-signed",
             lambda m: m.replace(b'"version":2,', b'"version":2,"version":2,', 1))
    raw_mani("manifest-float", "format", "version written as 2.0; re-signed",
             lambda m: m.replace(b'"version":2,', b'"version":2.0,', 1))
    edited("manifest-unknown-key", "format", "top-level key \"zz_extra\": 1; re-signed",
           lambda d: d.manifest.__setitem__("zz_extra", 1))
    edited("manifest-name-path-traversal", "format", "name \"../../etc/cron.d\"; re-signed",
           lambda d: d.manifest.__setitem__("name", "../../etc/cron.d"))
    edited("model-unknown-digest", "model", "model sha256 00...00: no such model installed",
           lambda d: d.manifest["model"].__setitem__("sha256", "00" * 32))
    edited("manifest-n-items-mismatch", "format", "index.n_items one more than n_chunks",
           lambda d: d.manifest["index"].__setitem__("n_items", d.manifest["n_chunks"] + 1))
    edited("manifest-projection-dim-in", "format", "index.projection.dim_in 383, model.dim 384",
           lambda d: d.manifest["index"]["projection"].__setitem__("dim_in", 383))

    def no_projection(dim: int) -> Callable[[Draft], None]:
        def edit(d: Draft) -> None:
            d.manifest["index"]["projection"] = None
            d.manifest["index"]["dim"] = dim
        return edit

    edited("manifest-index-dim-without-projection", "format", "projection null, index.dim 2, model.dim 384",
           no_projection(2))
    edited("proj-not-empty-without-projection", "format", "projection null and index.dim 384, but PROJ still holds "
           "the projection", no_projection(384))
    edited("zdic-length-mismatch", "format", "payload.dictionary_bytes 100, ZDIC holds none",
           lambda d: d.manifest["payload"].__setitem__("dictionary_bytes", 100))
    edited("ftab-n-frames-mismatch", "format", "video.n_frames one more than FTAB holds",
           lambda d: d.manifest["video"].__setitem__("n_frames", d.manifest["video"]["n_frames"] + 1))

    def ftab_edit(fn: Callable[[np.ndarray], None]) -> Callable[[Draft], None]:
        def edit(d: Draft) -> None:
            table = np.frombuffer(d.sections["FTAB"], dtype=fmt._FTAB_DTYPE).copy()
            fn(table)
            d.set_section("FTAB", table.tobytes())
        return edit

    edited("ftab-first-chunk-nonzero", "format", "frame 0's first_chunk_id is 1",
           ftab_edit(lambda t: t["first_chunk_id"].__setitem__(0, 1)))
    edited("ftab-sample-outside-video", "format", "the last frame's sample starts at the end of VIDE",
           ftab_edit(lambda t: t["sample_offset"].__setitem__(-1, len(alpha2.sections["VIDE"]))))

    def proj_nan(d: Draft) -> None:
        plain = bytearray(d.plaintext("PROJ"))
        plain[0:4] = np.float32(np.nan).tobytes()
        d.reseal("PROJ", bytes(plain))

    edited("proj-nonfinite", "format", "PROJ mean[0] is NaN; re-sealed with the capsule's key and re-signed", proj_nan)
    def proj_scale_huge(d: Draft) -> None:
        plain = bytearray(d.plaintext("PROJ"))
        plain[-4:] = np.float32(3.4e38).tobytes()
        d.reseal("PROJ", bytes(plain))

    edited("proj-scale-huge", "format", "PROJ's last re-ranking scale is 3.4e38 (finite, but 127 * scale overflows "
           "float32: scores would be NaN); re-sealed and re-signed", proj_scale_huge)

    def index_child_out_of_range(d: Draft) -> None:
        plain = bytearray(d.plaintext("INDX"))
        node_bytes = 12 + 4 * d.manifest["index"]["dim"]
        counts = np.frombuffer(bytes(plain), dtype="<i4").reshape(-1, node_bytes // 4)[:, 0]
        for node in np.flatnonzero(counts == d.manifest["index"]["n_items"]):  # the roots (annoylib.h load())
            plain[int(node) * node_bytes + 4:int(node) * node_bytes + 8] = (1 << 30).to_bytes(4, "little")
        d.reseal("INDX", bytes(plain))

    edited("index-child-out-of-range-resigned", "format", "every Annoy root's first child is node 2^30 (past the "
           "end); re-sealed and re-signed: refused before Annoy maps it", index_child_out_of_range)
    edited("vecs-wrong-length", "format", "VECS plaintext one row short; re-sealed and re-signed",
           lambda d: d.reseal("VECS", d.plaintext("VECS")[:-d.manifest["index"]["projection"]["dim_out"]]))
    edited("index-length-not-whole-nodes", "format", "INDX plaintext one byte longer; re-sealed and re-signed",
           lambda d: d.reseal("INDX", d.plaintext("INDX") + b"\x00"))
    def edited_fts5(name: str, expect: str, comment: str, edit: Callable[[Draft], None]) -> None:
        d = alpha2_fts5.copy()
        edit(d)
        v.append(Vector(name, _expect(expect, comment), {"capsule": d.build()}))

    def lexi_patch(offset: int, value: bytes) -> Callable[[Draft], None]:
        def edit(d: Draft) -> None:
            plain = bytearray(d.plaintext("LEXI"))
            plain[offset:offset + len(value)] = value
            d.reseal("LEXI", bytes(plain))
        return edit

    edited_fts5("lexi-header-wal-resigned", "format", "LEXI's SQLite header says WAL (write/read versions 2); re-sealed "
           "and re-signed: refused before SQLite opens it", lexi_patch(18, b"\x02\x02"))
    edited_fts5("lexi-page-count-lies-resigned", "format", "LEXI's SQLite header declares one page more than the "
           "plaintext holds; re-sealed and re-signed", lambda d: lexi_patch(
               28, (int.from_bytes(d.plaintext("LEXI")[28:32], "big") + 1).to_bytes(4, "big"))(d))

    def lexi_extra_trigger(d: Draft) -> None:
        import sqlite3

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "lexi.sqlite"
            path.write_bytes(d.plaintext("LEXI"))
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("CREATE TABLE notes(x)")
            conn.execute("CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END")
            conn.execute("VACUUM")
            conn.close()
            plain = path.read_bytes()
        d.manifest["lexical"]["plaintext_bytes"] = len(plain)
        d.reseal("LEXI", plain)

    edited_fts5("lexi-extra-trigger-resigned", "format", "LEXI holds an extra table and trigger besides the FTS5 "
           "schema (valid SQLite, header fixed up); re-sealed and re-signed: the schema check refuses it",
           lexi_extra_trigger)

    def tantivy_edit(fn: Callable[[dict[str, bytes]], dict[str, bytes] | None], *, raw: bool = False
                     ) -> Callable[[Draft], None]:
        """Edit the tantivy archive's files (``fn`` changes the dict or returns another), pack,
        compress and re-seal it, and fix the manifest's ``plaintext_bytes``."""
        def edit(d: Draft) -> None:
            from edge.lexical_tantivy import parse_archive
            from firmware_tools.lexical_writer import pack_archive

            archive = zstandard.ZstdDecompressor().decompress(d.plaintext("LEXI"))
            files = {name: bytes(data) for name, data in parse_archive(archive).items()}
            files = fn(files) or files
            packed = files if raw else pack_archive(files)
            d.manifest["lexical"]["plaintext_bytes"] = len(packed)
            d.reseal("LEXI", zstandard.ZstdCompressor(level=19, write_content_size=True).compress(packed))
        return edit

    def segment_file(files: dict[str, bytes], ext: str) -> str:
        return next(name for name in files if name.endswith("." + ext))

    def meta_edit(fn: Callable[[dict], None]) -> Callable[[dict[str, bytes]], None]:
        def edit(files: dict[str, bytes]) -> None:
            meta = json.loads(files["meta.json"])
            fn(meta)
            files["meta.json"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        return edit

    def footer(files: dict[str, bytes], ext: str, *, version: int | None = None, body_flip: bool = False) -> None:
        import struct
        import zlib

        name = segment_file(files, ext)
        data = files[name]
        n, magic = struct.unpack("<II", data[-8:])
        body, tail = bytearray(data[:len(data) - 8 - n]), json.loads(data[len(data) - 8 - n:-8])
        if body_flip:
            body[len(body) // 2] ^= 0x01  # the CRC is left as it was
        if version is not None:
            tail["version"]["index_format_version"] = version
            tail["crc"] = zlib.crc32(body)
        encoded = json.dumps(tail, separators=(",", ":")).encode()
        files[name] = bytes(body) + encoded + struct.pack("<II", len(encoded), magic)

    def archive_bytes(fn: Callable[[bytearray], None]) -> Callable[[dict[str, bytes]], bytes]:
        def edit(files: dict[str, bytes]) -> bytes:
            from firmware_tools.lexical_writer import pack_archive
            packed = bytearray(pack_archive(files))
            fn(packed)
            return bytes(packed)
        return edit

    edited("lexi-archive-bad-magic-resigned", "format", "LEXI's archive starts ELEXTAN2; re-sealed and re-signed",
           tantivy_edit(archive_bytes(lambda a: a.__setitem__(7, ord("2"))), raw=True))
    edited("lexi-archive-length-lies-resigned", "format", "the archive table gives meta.json one byte more than it "
           "has (so every later file starts one byte early); re-sealed and re-signed",
           tantivy_edit(archive_bytes(lambda a: a.__setitem__(slice(72, 80), (int.from_bytes(a[72:80], "little") + 1)
                                                            .to_bytes(8, "little"))), raw=True))
    edited("lexi-segment-file-missing-resigned", "format", "the archive lacks the segment's term dictionary "
           "(.term); re-sealed and re-signed",
           tantivy_edit(lambda f: {k: val for k, val in f.items() if not k.endswith(".term")}))
    edited("lexi-meta-positions-resigned", "format", "meta.json records positions for field text (another schema "
           "than FORMAT.md §5.6's); re-sealed and re-signed",
           tantivy_edit(meta_edit(lambda m: m["schema"][1]["options"]["indexing"].__setitem__("record", "position"))))
    edited("lexi-meta-doc-count-resigned", "format", "meta.json says the segment holds one document more than the "
           "capsule's chunks; re-sealed and re-signed",
           tantivy_edit(meta_edit(lambda m: m["segments"][0].__setitem__("max_doc", m["segments"][0]["max_doc"] + 1))))
    edited("lexi-footer-format-8-resigned", "format", "the postings file's tantivy footer says index format 8 (CRC "
           "recomputed); re-sealed and re-signed", tantivy_edit(lambda f: footer(f, "idx", version=8)))
    edited("lexi-footer-crc-resigned", "format", "one bit of the postings file flipped, its footer's CRC-32 left as "
           "it was; re-sealed and re-signed", tantivy_edit(lambda f: footer(f, "idx", body_flip=True)))
    def store_body(files: dict[str, bytes], body: bytes) -> None:
        import struct
        import zlib

        name = segment_file(files, "store")
        data = files[name]
        n, magic = struct.unpack("<II", data[-8:])
        tail = json.loads(data[len(data) - 8 - n:-8])
        tail["crc"] = zlib.crc32(body)
        encoded = json.dumps(tail, separators=(",", ":")).encode()
        files[name] = body + encoded + struct.pack("<II", len(encoded), magic)

    # The doc store tantivy 0.27 wrote for this segment's 6 documents (one lz4 block, a skip index,
    # its footer) with 8 bytes from offset 35 zeroed: tantivy would allocate 1.6 TB and abort.
    tantivy_store = bytes.fromhex("2200000011800100f00d0000000001000000020000000300000004000000050000000600000081"
                                  "8581808086a602000000260000000000000001000000000000000000000000000000")
    edited("lexi-store-skip-index-zeroed-resigned", "format", "the segment's doc store is the one tantivy wrote, "
           "its skip index zeroed (CRC recomputed), not the empty store FORMAT.md §5.6 requires; re-sealed and "
           "re-signed", tantivy_edit(lambda f: store_body(f, tantivy_store[:35] + bytes(8) + tantivy_store[43:])))
    lexi_bomb = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes(16 << 20))
    edited("lexi-decompression-bomb", "format", f"LEXI holds {len(lexi_bomb)} bytes of zstd declaring 16 MiB, "
           "more than lexical.plaintext_bytes; refused before inflating", lambda d: d.reseal("LEXI", lexi_bomb))
    edited("manifest-lexical-format-unknown", "format", "lexical.format \"lucene-9\"; re-signed",
           lambda d: d.manifest["lexical"].__setitem__("format", "lucene-9"))
    edited("manifest-lexical-rows-mismatch", "format", "lexical.n_rows one more than n_chunks",
           lambda d: d.manifest["lexical"].__setitem__("n_rows", d.manifest["n_chunks"] + 1))

    def docs_edit(fn: Callable[[dict], None]) -> Callable[[Draft], None]:
        def edit(d: Draft) -> None:
            from firmware_tools.sealing import compress_documents

            docs = json.loads(zstandard.ZstdDecompressor().decompress(d.plaintext("DOCS")))
            fn(docs)
            d.reseal("DOCS", compress_documents(canonical_json(docs)))
        return edit

    edited("docs-chunk-counts-wrong", "format", "the first document claims one chunk more, so the counts exceed "
           "n_chunks; re-sealed and re-signed",
           docs_edit(lambda docs: docs["documents"][0].__setitem__("n_chunks", docs["documents"][0]["n_chunks"] + 1)))
    edited("docs-headings-out-of-order", "format", "the first document's headings are [[5, 1, \"B\"], [0, 1, "
           "\"A\"]] (char_start decreasing); re-sealed and re-signed",
           docs_edit(lambda docs: docs["documents"][0].__setitem__("headings", [[5, 1, "B"], [0, 1, "A"]])))
    edited("docs-stream-truncated", "decryption", "DOCS loses its last byte (part of the STREAM tag); re-signed",
           lambda d: d.set_section("DOCS", d.sections["DOCS"][:-1]))
    docs_bomb = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes((64 << 20) + 1))
    edited("docs-decompression-bomb", "format", f"DOCS holds {len(docs_bomb)} bytes of zstd declaring 64 MiB + 1 "
           "byte; refused before inflating", lambda d: d.reseal("DOCS", docs_bomb))
    edited("section-from-other-capsule", "integrity", "DOCS section taken from capsule beta (same length), not "
           "re-signed", lambda d: d.sections.__setitem__("DOCS", beta.sections["DOCS"]))
    edited("index-from-other-capsule", "integrity", "INDX section taken from capsule beta (same length), not "
           "re-signed", lambda d: d.sections.__setitem__("INDX", beta.sections["INDX"]))

    def stanza(d: Draft, **change: object) -> None:
        d.manifest["recipients"][0].update(change)

    edited("stanza-low-order-point", "decryption", "the X25519 stanza's epk is the all-zero point (shared secret 0)",
           lambda d: stanza(d, epk=base64.b64encode(bytes(32)).decode()))
    body = bytearray(base64.b64decode(alpha2.manifest["recipients"][0]["body"]))
    body[5] ^= 0x01
    edited("stanza-body-flipped", "decryption", "one bit of the stanza body flipped; re-signed",
           lambda d: stanza(d, body=base64.b64encode(bytes(body)).decode()))

    def scrypt_stanza(log_n: int, *, alone: bool = True) -> Callable[[Draft], None]:
        def edit(d: Draft) -> None:
            content_key = unwrap_content_key(parse_manifest(alpha2.sections["MANI"]), [test_key("test-device")])
            s = wrap_for_passphrase(content_key, Passphrase(PASSPHRASE.encode()), bytes.fromhex(ALPHA_ID),
                                    Randomness(SEED + b"scrypt"), 10)
            entry = {"type": "scrypt", "salt": base64.b64encode(s.salt).decode(), "log_n": log_n,
                     "body": base64.b64encode(s.body).decode()}
            d.manifest["recipients"] = [entry] if alone else d.manifest["recipients"] + [entry]
        return edit

    edited("stanza-scrypt-log-n-too-big", "format", "a scrypt stanza with log_n 20 (1 GiB of work): refused "
           "before running scrypt", scrypt_stanza(20))
    edited("stanza-scrypt-beside-x25519", "format", "an X25519 and a scrypt stanza: age allows a scrypt stanza "
           "only alone, so a passphrase cannot be one of several ways in", scrypt_stanza(10, alone=False),
           passphrase=PASSPHRASE)
    d = alpha2.copy()
    scrypt_stanza(10)(d)
    with_pass = d.build()
    v.append(Vector("passphrase", _expect("ok", "one scrypt (log_n 10) stanza, alone; opened with the passphrase",
                                          passphrase=PASSPHRASE), {"capsule": with_pass}))
    v.append(Vector("wrong-passphrase", _expect("decryption", "opened with a wrong passphrase", base="passphrase",
                                                passphrase="wrong horse battery staple")))
    many = alpha2.copy()
    many.manifest["recipients"] = many.manifest["recipients"] * 1025
    v.append(Vector("recipients-too-many", _expect("format", "1025 recipient stanzas, limit 1024"),
                    {"capsule": many.build()}))
    mani = alpha2.build_mani()
    sig = sign_manifest(mani, [test_key("test-publisher-1")])
    v.append(Vector("sigs-duplicate-keyid", _expect("format", "the same signature listed twice"),
                    {"capsule": alpha2.build(sigs=signatures_to_bytes(sig + sig))}))
    v.append(Vector("sigs-empty-list", _expect("format", "SIGS is {\"signatures\":[]}"),
                    {"capsule": alpha2.build(sigs=b'{"signatures":[]}')}))
    v.append(Vector("sigs-noncanonical", _expect("format", "a space in SIGS"),
                    {"capsule": alpha2.build(sigs=b"{ " + signatures_to_bytes(sig)[1:])}))
    v.append(Vector("signature-untrusted-key", _expect("signature", "signed only by a key the device does not trust"),
                    {"capsule": alpha2.build(("test-untrusted",))}))
    v.append(Vector("signature-extra-unknown-signer", _expect(
        "ok", "signed by the trusted key and by an unknown key (ignored)"),
        {"capsule": alpha2.build(("test-publisher-1", "test-untrusted"))}))
    return v


def _dense_first_vectors(data: bytes) -> list[Vector]:
    """Format 1.4 (FORMAT.md §4.6): alpha v2 whose fusion has a ``dense_first_margin``, and edits of it."""
    base = Draft(data)
    v = [Vector("ok-dense-first", _expect("ok", "alpha v2 built with lexical.fusion.dense_first_margin 80: format 1.4",
                                          operation=f"search 2 {QUERY}"), {"capsule": data}),
         Vector("dense-first-in-format-1-2", _expect("format", "ok-dense-first with its header's minor version set "
                                                     "to 2: a fusion with dense_first_margin belongs in format 1.4"),
                {"capsule": data[:10] + (2).to_bytes(2, "little") + data[12:]})]

    def margin(name: str, value: int, comment: str) -> None:
        d = base.copy()
        d.manifest["lexical"]["fusion"]["dense_first_margin"] = value
        v.append(Vector(name, _expect("format", comment), {"capsule": d.build()}))

    margin("manifest-dense-first-margin-zero", 0, "lexical.fusion.dense_first_margin 0, re-signed: an absent margin "
           "means none, so a present one is 1..1000")
    margin("manifest-dense-first-margin-1001", 1001, "lexical.fusion.dense_first_margin 1001 (above 1000), re-signed")
    return v


def _binary_codes_vectors(codes_bytes: bytes) -> list[Vector]:
    """A ``binary-codes`` index (FORMAT.md §4.4.1): alpha v2 built with 64-bit codes, and edits of it."""
    base = Draft(codes_bytes)
    v = [Vector("ok-binary-codes", _expect("ok", "alpha v2 with a binary-codes index (64-bit codes, 3 candidates "
                                           "re-ranked by 64 int8 coordinates): format 1.3",
                                           operation=f"search 2 {QUERY}"), {"capsule": codes_bytes})]

    def edited(name: str, expect: str, comment: str, edit: Callable[[Draft], None]) -> None:
        d = base.copy()
        edit(d)
        v.append(Vector(name, _expect(expect, comment), {"capsule": d.build()}))

    edited("codes-wrong-length-resigned", "format", "INDX plaintext one 64-bit word short; re-sealed and re-signed",
           lambda d: d.reseal("INDX", d.plaintext("INDX")[:-8]))
    edited("manifest-codes-dim-not-whole-words", "format", "index.dim 32: binary codes are whole 64-bit words",
           lambda d: d.manifest["index"].__setitem__("dim", 32))

    def no_projection(d: Draft) -> None:
        d.manifest["index"]["projection"] = None

    edited("manifest-codes-without-projection", "format", "binary-codes with projection null: nothing to re-rank "
           "by", no_projection)

    def minor_2(d: Draft) -> None:
        d.format_minor = 2

    edited("codes-in-format-1-2", "format", "ok-binary-codes with its header's minor version set to 2: a "
           "binary-codes index belongs in format 1.3", minor_2)
    return v


def _swap_keys(mani: bytes) -> bytes:
    obj = json.loads(mani)
    keys = sorted(obj)
    i, j = keys.index("version"), keys.index("video")
    keys[i], keys[j] = keys[j], keys[i]
    return json.dumps({k: obj[k] for k in keys}, separators=(",", ":"), ensure_ascii=False).encode()


def _family_vectors() -> list[Vector]:
    def fam(name: str, expect: str, comment: str, mutate: str, **fields: str) -> Vector:
        return Vector(name, _expect(expect, comment, base="ok", mutate=mutate, **fields))

    return [
        fam("truncated-at-section-boundaries", "integrity", "cut at every section's first byte, at the end of the "
            "section table and one byte before each", "truncate-at-section-boundaries"),
        fam("flip-header-and-table", "format|integrity|signature", "every byte of the header and section table, "
            "xor 0x01 and xor 0x80 (each flip is one input); a section length that still fits the alignment cuts "
            "the manifest short, which the signature catches", "flip-each-byte header-and-table"),
        fam("flip-manifest", "signature", "every byte of MANI, xor 0x01", "flip-each-byte MANI"),
        fam("flip-signatures", "format|signature", "every byte of SIGS, xor 0x01", "flip-each-byte SIGS"),
        fam("flip-stanzas", "signature", "every byte of the recipients array inside MANI, xor 0x01",
            "flip-each-byte stanzas"),
        fam("flip-stanzas-resigned", "decryption|format", "every byte of the recipients array, xor 0x01, then "
            "re-signed by test-publisher-1 (a compromised publisher key): the stanza AEAD or the parser refuses",
            "flip-each-byte stanzas resign"),
        fam("flip-video", "integrity", "24 random bytes of VIDE (seed 1), one at a time: a reader authenticates "
            "every sample before a decoder sees it, so opening a file it does not own hashes VIDE (and keeps each "
            "sample's digest); full verification hashes VIDE too", "flip-random VIDE 24 1"),
        fam("flip-index", "integrity", "24 random bytes of INDX, VECS and PROJ each (seed 2), one at a time",
            "flip-random INDX,VECS,PROJ 24 2"),
        fam("flip-lexi", "integrity", "24 random bytes of LEXI (seed 4), one at a time: its digest refuses it "
            "before the lexical engine sees a byte", "flip-random LEXI 24 4"),
        fam("flip-index-resigned", "decryption", "24 random bytes of INDX, VECS and PROJ each (seed 3), one at a "
            "time, digests recomputed and re-signed: the STREAM AEAD refuses", "flip-random INDX,VECS,PROJ 24 3 resign"),
    ]


def generate(out_dir: Path, *, refresh_embeddings: bool = False) -> list[str]:
    """Write every vector and the test keys into ``out_dir``; return the vector names.

    The genuine capsules are built from the pinned chunk embeddings in ``EMBEDDINGS_FILE``, so the
    output is byte-identical on any CPU; ``refresh_embeddings`` re-embeds on this CPU and rewrites
    that file (see ``_build_genuine``).

    Raises:
        StaleEmbeddingsError: a chunk has no pinned embedding.

    Source: FORMAT.md §14.
    """
    with tempfile.TemporaryDirectory(prefix="edge-vectors-build-") as tmp:
        built = _build_genuine(Path(tmp), refresh_embeddings=refresh_embeddings)
    alpha1, alpha2_bytes, beta_bytes = built["alpha-v1"], built["alpha-v2"], built["beta-v1"]
    alpha2, beta = Draft(alpha2_bytes), Draft(beta_bytes)
    ok_sha = _base_manifest_sha(alpha2_bytes)
    v1_sha = _base_manifest_sha(alpha1)
    vectors: list[Vector] = [
        Vector("ok", _expect("ok", "capsule alpha v2, 4 frames; signed by test-publisher-1; opened with test-device"),
               {"capsule": alpha2_bytes}),
        Vector("older-version", _expect("rollback", "alpha v1 after this device accepted v2",
                                        installed=f"{ALPHA_ID} 2 {ok_sha}"), {"capsule": alpha1}),
        Vector("newer-version", _expect("ok", "alpha v2 after this device accepted v1", base="ok",
                                        installed=f"{ALPHA_ID} 1 {v1_sha}")),
        Vector("same-version-other-content", _expect(
            "rollback", "alpha v2, but the device accepted another manifest as v2", base="ok",
            installed=f"{ALPHA_ID} 2 {v1_sha}")),
        Vector("clock-set-back-past-floor", _expect(
            "expired", "expires 2090-01-01; the clock says 2030 but the device's floor is 2095-01-01", base="ok",
            floor="2095-01-01T00:00:00Z")),
        Vector("clock-at-epoch", _expect("ok", "the clock says 1970 (no RTC): judged at the floor, which the "
                                         "verified issued_at 2026-01-01 raises", base="ok",
                                         now="1970-01-01T00:00:00Z")),
        Vector("wrong-device-key", _expect("decryption", "opened with a device key that is not a recipient",
                                           base="ok", identity="test-other-device")),
        Vector("over-budget-index", _expect("over-budget", "a 64-byte memory budget", base="ok", budget_bytes="64")),
        Vector("lexical-stemmed-query", _expect("ok", "lexical search for \"resetting kiosks\": neither word is in "
                                                "the text, their ident-v2 stems (reset, kiosk) are; chunk 3 first",
                                                base="ok", operation="lexical 1 resetting kiosks", first_hit="3")),
        Vector("ok-fts5", _expect("ok", "alpha v2 built with the sqlite-fts5 lexical index: format 1.1, which this "
                                  "reader still reads", operation=f"search 2 {QUERY}"), {"capsule": built["alpha-v2-fts5"]}),
        Vector("fts5-in-format-1-2", _expect("format", "ok-fts5 with its header's minor version set to 2: an "
                                             "sqlite-fts5 lexical index belongs in format 1.1"),
               {"capsule": built["alpha-v2-fts5"][:10] + (2).to_bytes(2, "little") + built["alpha-v2-fts5"][12:]}),
        Vector("tantivy-in-format-1-1", _expect("format", "ok with its header's minor version set to 1: a tantivy-7 "
                                                "lexical index belongs in format 1.2"),
               {"capsule": alpha2_bytes[:10] + (1).to_bytes(2, "little") + alpha2_bytes[12:]}),
    ]
    vectors += _delta_vectors(built["alpha-v3"], alpha2, beta_bytes, ok_sha, _base_manifest_sha(built["alpha-v2-fts5"]))
    vectors += _header_and_table_vectors(alpha2_bytes)
    vectors += _manifest_vectors(alpha2, beta, Draft(built["alpha-v2-fts5"]))
    vectors += _frame_vectors(alpha2, beta)
    vectors += _trust_vectors(alpha2_bytes, alpha2)
    kid = lambda n: _kid(n)  # noqa: E731
    rules = [
        ("rule-unknown-required", {"geofence": {"optional": False, "zone": "x"}}, "rule",
         "requires rule geofence, which the runtime lacks", {}),
        ("rule-unknown-optional", {"geofence": {"optional": True, "zone": "x"}}, "ok",
         "carries rule geofence marked optional: ignored", {}),
        ("rule-malformed-params", {"query_limits": {"optional": False, "max_k": 0}}, "format",
         "query_limits.max_k 0 is out of range", {}),
        ("rule-devices-key-listed", {"devices": {"optional": False, "keyids": [kid("test-device")],
                                                 "hardware_ids": []}}, "ok", "devices lists test-device's key", {}),
        ("rule-devices-key-not-listed", {"devices": {"optional": False, "keyids": [kid("test-other-device")],
                                                     "hardware_ids": []}}, "rule",
         "devices lists only test-other-device's key; opened with test-device", {}),
        ("rule-devices-hardware-id-match", {"devices": {"optional": False, "keyids": [],
                                                        "hardware_ids": ["kiosk-0001"]}}, "ok",
         "devices lists hardware id kiosk-0001; this device is kiosk-0001", {"hardware_id": "kiosk-0001"}),
        ("rule-devices-hardware-id-mismatch", {"devices": {"optional": False, "keyids": [],
                                                           "hardware_ids": ["kiosk-0001"]}}, "rule",
         "devices lists hardware id kiosk-0001; this device is kiosk-0002", {"hardware_id": "kiosk-0002"}),
        ("rule-operations-read-forbidden", {"operations": {"optional": False, "allow": ["search"]}}, "rule",
         "only search is allowed; reading chunk 0", {"open": "ok", "operation": "read 0"}),
        ("rule-operations-export-forbidden", {"operations": {"optional": False, "allow": ["read", "search"]}}, "rule",
         "search and read are allowed; exporting", {"open": "ok", "operation": "export"}),
        ("rule-max-k-exceeded", {"query_limits": {"optional": False, "max_k": 2}}, "rule",
         "at most 2 results per query; searching for 3", {"open": "ok", "operation": f"search 3 {QUERY}"}),
        ("rule-rate-limit", {"rate_limit": {"optional": False, "max_queries": 2, "window_s": 3600}}, "rule",
         "2 queries per hour; the third search is refused", {"open": "ok", "operation": f"search 1 {QUERY}",
                                                             "repeat": "3"}),
        ("rule-min-runtime-too-new", {"min_runtime": {"optional": False, "version": "99.0.0"}}, "rule",
         "needs runtime 99.0.0", {}),
    ]
    for name, body, expect, comment, fields in rules:
        vectors.append(_rules_vector(alpha2, name, body, expect, comment, **fields))
    d = alpha2.copy()
    d.manifest["rules"] = {"purge_on_expiry": {"optional": False}}
    d.manifest["expires_at"] = "2026-06-01T00:00:00Z"
    vectors.append(Vector("rule-purge-on-expiry", _expect("expired", "purge_on_expiry and expired 2026-06-01: "
                                                          "refused; a store deletes it (tests/unit/edge/test_store.py)"),
                          {"capsule": d.build()}))
    vectors += _family_vectors()
    vectors += _binary_codes_vectors(built["alpha-v2-codes"])
    vectors += _dense_first_vectors(built["alpha-v2-dense-first"])

    names = [v.name for v in vectors]
    assert len(names) == len(set(names)), "duplicate vector names"
    for directory in list(out_dir.iterdir()) if out_dir.exists() else []:
        if directory.is_dir() and ((directory / "EXPECT").exists() or directory.name == KEYS_SUBDIR):
            shutil.rmtree(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys_dir = out_dir / KEYS_SUBDIR
    keys_dir.mkdir()
    for name in ED25519_KEYS + X25519_KEYS:
        key = test_key(name)
        (keys_dir / f"{name}.key").write_bytes(private_key_pem(key))
        (keys_dir / f"{name}.pub").write_bytes(public_key_pem(key))
    for vector in vectors:
        directory = out_dir / vector.name
        directory.mkdir()
        (directory / "EXPECT").write_text(vector.expect_text())
        for filename, data in vector.files.items():
            (directory / filename).write_bytes(data)
    return names


def main(argv: list[str] | None = None) -> int:
    """Regenerate the vectors; print how many were written."""
    parser = argparse.ArgumentParser(prog="python -m tests.vectors.generate", description=__doc__.split("\n\n")[0],
                                     epilog="example: python -m tests.vectors.generate -o /tmp/vectors")
    parser.add_argument("-o", "--output", type=Path, default=VECTORS_DIR, help="output directory (default "
                                                                               "tests/vectors)")
    parser.add_argument("--refresh-embeddings", action="store_true",
                        help=f"embed the chunks with the model on this CPU and rewrite {EMBEDDINGS_FILE.name} "
                             "(only after src/docs or the chunking changed)")
    args = parser.parse_args(argv)
    try:
        names = generate(args.output, refresh_embeddings=args.refresh_embeddings)
    except StaleEmbeddingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(names)} vectors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
