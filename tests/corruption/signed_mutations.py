"""Signed-malicious mutations of a genuine capsule, and a crash-proof runner for them.

What a stolen publisher key can do (issue 9, "Proof"): take the ``ok`` test vector, change the
plaintext of a section (or a frame payload, an H.264 sample, a manifest field), re-seal it with
the capsule's own content keys (``tests.vectors.generate.Draft``), recompute the digests and
re-sign the manifest with ``test-publisher-1``. Every byte then passes the signature and the
AEAD, so the mutation reaches annoy, FFmpeg/PyAV, zxing-cpp, zstd, tantivy and the JSON parser.

Each family below is a function ``(rng, draft) -> label`` that edits a copy of the genuine
draft; ``make_case(family, seed)`` is deterministic in ``(family, seed)``.

Cases run in worker processes forked from a warm forkserver (imports, the model session and
the genuine draft are loaded once), one case at a time per worker, each under:

- a per-case timeout (a case past it is a ``hang``; the worker is killed and replaced);
- an ``edge`` ``MemoryBudget`` of the worker's own VmData plus ``CASE_MEMORY_BYTES``, a peak-RSS
  check (``/proc/self/clear_refs`` resets VmHWM before each case; growth past
  ``CASE_MEMORY_BYTES`` is ``over-memory``), and a hard ``RLIMIT_AS`` of the warm worker's
  VmSize plus ``HARD_LIMIT_BYTES`` (a ``MemoryError`` is ``over-memory`` too);
- death by a signal or any exit is a ``crash`` for the case in flight.

The operation per case: ``open_capsule`` with the test-device identity, ``search`` for
``QUERY``, then ``read`` for every chunk id the manifest names (at most a few past the
genuine count). The outcome must be success with genuine text, or one of the capsule error
classes (``CapsuleError`` subclasses, ``BudgetExceededError``, ``ModelError``). Any other
exception is a ``traceback``; text that differs from the genuine chunk (or, for a re-sealed
frame, from the text its records hold) is ``wrong-text``; a search score outside [-1, 1] or NaN
is ``bad-score``.

Example::

    results = run_cases([("indx-int32", 0), ("manifest", 3)], workers=2, timeout_s=10)
    print(summarise(results))

Source: issue 9 (Proof); FORMAT.md §5-§8 (section layouts); Annoy's ``annoylib.h`` (node layout:
``int32 n_descendants, int32 children[2], float v[f]``; leaves hold up to ``K`` item ids).
"""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import struct
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
OK_CAPSULE = ROOT / "tests" / "vectors" / "ok" / "capsule"
NOW_TEXT = "2030-01-01T00:00:00Z"
QUERY = "How do I reset the kiosk?"
#: What one case may add to the worker's peak RSS (and the budget's room above the runtime).
CASE_MEMORY_BYTES = int(os.environ.get("EDGE_FUZZ_CASE_MIB", "64")) * MiB
#: Peak-RSS growth allowed beyond what the case's budget had reserved (interpreter noise).
SLACK_BYTES = int(os.environ.get("EDGE_FUZZ_SLACK_MIB", "16")) * MiB
#: Hard address-space room above the warm worker's VmSize (RLIMIT_AS).
HARD_LIMIT_BYTES = int(os.environ.get("EDGE_FUZZ_HARD_MIB", "1024")) * MiB
#: Extra chunk ids read past the genuine count (a manifest that claims more chunks).
EXTRA_READS = 3

FAILURE_KINDS = ("crash", "hang", "over-memory", "traceback", "wrong-text", "bad-score")
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


class Skip(Exception):
    """The generator could not build this case (e.g. a payload too big for the QR code)."""


# ---------------------------------------------------------------------------------------------
# The genuine capsule, loaded once per process


@dataclass
class Base:
    """The ``ok`` vector as a ``Draft`` plus everything the families read from it."""

    draft: object
    plain: dict[str, bytes]
    payloads: list[bytes]
    frame_plain: list[bytes]
    genuine: list[str]
    big_samples: dict[str, bytes] = field(default_factory=dict)


_BASE: Base | None = None


def base() -> Base:
    """Return the process's ``Base`` (built on first use: ~0.3 s)."""
    global _BASE
    if _BASE is None:
        from tests.vectors.generate import Draft

        draft = Draft(OK_CAPSULE.read_bytes())
        plain = {t: draft.plaintext(t) for t in ("DOCS", "ZDIC", "PROJ", "VECS", "INDX", "LEXI")}
        payloads = draft.payloads()
        frame_plain = [draft.frame_plaintext(i) for i in range(len(payloads))]
        _BASE = Base(draft, plain, payloads, frame_plain, _genuine_texts())
    return _BASE


def _genuine_texts() -> list[str]:
    from edge.capsule import open_capsule

    with open_capsule(OK_CAPSULE, **_open_kwargs()) as capsule:
        return [capsule.read(i, now=_now()).text for i in range(capsule.manifest.n_chunks)]


def _now():
    from datetime import datetime, timezone

    return datetime.strptime(NOW_TEXT, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _open_kwargs() -> dict:
    from tests.vectors.generate import test_key

    return dict(trusted_keys=[test_key("test-publisher-1").public_key()], identities=[test_key("test-device")],
                now=_now())


def clone(draft):
    """A cheap copy of a ``Draft`` (sections and manifest copied, keys shared)."""
    new = object.__new__(type(draft))
    new.sections = dict(draft.sections)
    new.format_minor = draft.format_minor
    new.manifest = json.loads(json.dumps(draft.manifest))
    new.keys = draft.keys
    return new


def raw_json(obj) -> bytes:
    """Canonical-looking JSON without canonical_json's range checks (floats, negatives, 2^63)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Byte-level helpers


def flip_bits(data: bytes, rng: random.Random, n: int | None = None, lo: int = 0, hi: int | None = None) -> bytes:
    out = bytearray(data)
    hi = len(out) if hi is None else hi
    if hi <= lo:
        raise Skip("nothing to flip")
    for _ in range(n or rng.randint(1, 4)):
        out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(out)


def zstd_with_declared_size(content: bytes, declared: int) -> bytes:
    """One zstd frame holding ``content`` whose header declares ``declared`` bytes (RFC 8878 §3.1.1.1).

    Built from a frame without a content size (a window descriptor, no single-segment flag):
    the descriptor's Frame_Content_Size_flag is set to 3 and 8 little-endian bytes inserted.
    """
    import zstandard

    frame = zstandard.ZstdCompressor(level=3, write_content_size=False, write_checksum=False).compress(content)
    fhd = frame[4]
    assert fhd & 0xC0 == 0 and not fhd & 0x20, "expected no FCS field and a window descriptor"
    dict_id_bytes = (0, 1, 2, 4)[fhd & 3]
    head = frame[:5 + 1 + dict_id_bytes]  # magic, FHD, window descriptor, dictionary id
    return bytes([*frame[:4], fhd | 0xC0]) + head[5:] + struct.pack("<Q", declared % (1 << 64)) + frame[len(head):]


@lru_cache(maxsize=8)
def zeros_frame(n: int, content_size: bool) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19, write_content_size=content_size).compress(bytes(n))


def extreme_int(rng: random.Random, original: int, *, negative: bool = True) -> int:
    values = [0, 1, 2, 3, original - 1, original + 1, original * 2, 511, 512, 513, 8192, 8193,
              (1 << 16), (1 << 20), (1 << 24) + 1, I32_MAX, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 53) - 1,
              1 << 53, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 10 ** 30]
    if negative:
        values += [-1, -2, I32_MIN, -(1 << 63)]
    return rng.choice(values)


def annexb_to_avcc(stream: bytes) -> list[bytes]:
    """Split an Annex B stream into NAL units (start codes removed)."""
    nals, i, n = [], 0, len(stream)
    starts = []
    while True:
        j = stream.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        nal = stream[s:end]
        nals.append(nal.rstrip(b"\x00") if k + 1 < len(starts) else nal)
    return [x for x in nals if x]


def avcc_sample(nals: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(x)) + x for x in nals)


def avcc_extradata(sps: bytes, pps: bytes) -> bytes:
    """An ``avcC`` record (ISO/IEC 14496-15 §5.3.3.1) with one SPS and one PPS, 4-byte lengths."""
    return (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + struct.pack(">H", len(sps)) + sps
            + b"\x01" + struct.pack(">H", len(pps)) + pps)


def encode_big_frame(width: int, height: int, pix_fmt: str = "yuv420p") -> bytes:
    """One grey IDR frame of ``width`` x ``height`` from libx264 (PyAV), Annex B with SPS/PPS in band."""
    import av

    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "45", "keyint": "1", "annexb": "1"}
    ctx.open()
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane in frame.planes:
        plane.update(bytes([128]) * plane.buffer_size)
    return b"".join(bytes(p) for p in ctx.encode(frame)) + b"".join(bytes(p) for p in ctx.encode(None))


BIG_FRAMES = {"720p": (1280, 720, "yuv420p"), "4096": (4096, 4096, "yuv420p"), "8192": (8192, 8192, "yuv420p"),
              "4096-yuv444": (4096, 4096, "yuv444p"), "8192x64": (8192, 64, "yuv420p")}


def write_big_frames(directory: Path) -> None:
    """Encode every ``BIG_FRAMES`` entry into ``directory`` (run once per session, in a child)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, (w, h, pix) in BIG_FRAMES.items():
        path = directory / f"{name}.h264"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(encode_big_frame(w, h, pix))
            tmp.replace(path)


def big_frame_nals(name: str) -> list[bytes]:
    b = base()
    if name not in b.big_samples:
        directory = os.environ.get("EDGE_FUZZ_BIG_FRAMES")
        if not directory or not (Path(directory) / f"{name}.h264").exists():
            raise Skip(f"big frame {name} not prepared")
        b.big_samples[name] = (Path(directory) / f"{name}.h264").read_bytes()
    return annexb_to_avcc(b.big_samples[name])


# ---------------------------------------------------------------------------------------------
# Families: each edits a copy of the genuine draft and returns a label


#: chunk id -> the text a re-sealed frame honestly holds (None: its records do not parse, so no
#: text may come back), filled by ``_seal_frames`` for the case being built.
_EXPECTED: dict[int, str | None] = {}


def _reference_texts(d, frame: int, compressed: bytes) -> dict[int, str | None]:
    """What frame ``frame`` holds after re-sealing ``compressed``: its texts by chunk id, or Nones.

    A publisher may seal any text, so a re-sealed frame's text is whatever its records say when
    they parse (zstd via python-zstandard, the record layout of FORMAT.md §6).
    """
    import zstandard

    from edge.sealed import RECORD_HEADER

    ftab = d.frame_table()
    first, n_slots = int(ftab.first_chunk_ids[frame]), ftab.n_slots(frame)
    refused = {first + i: None for i in range(n_slots)}
    limit = d.manifest["payload"]["max_plaintext_bytes"]
    try:
        stream = zstandard.ZstdDecompressor().decompressobj()
        plain = stream.decompress(compressed) if zstandard.frame_content_size(compressed) <= limit else b""
        if not stream.eof or stream.unused_data or len(plain) > limit:
            return refused
        texts, pos = [], 0
        while pos < len(plain):
            doc, start, end, n = RECORD_HEADER.unpack_from(plain, pos)
            pos += RECORD_HEADER.size
            if n > len(plain) - pos or doc >= d.manifest["n_documents"] or end <= start:
                return refused
            texts.append(plain[pos:pos + n].decode("utf-8"))
            pos += n
    except (zstandard.ZstdError, struct.error, UnicodeDecodeError):
        return refused
    if len(texts) != n_slots:
        return refused
    return {first + i: t for i, t in enumerate(texts)}


def _seal_frames(d, rng: random.Random, frame: int, compressed: bytes, *, label: str,
                 register: bool = True) -> str:
    """Seal ``compressed`` as frame ``frame``'s payload, re-encode VIDE; record what it holds."""
    b = base()
    payloads = list(b.payloads)
    payloads[frame] = d.seal_frame_payload(frame, compressed)
    try:
        d.set_video(payloads)
    except Exception as exc:  # noqa: BLE001 - payload too big for the QR version, etc.
        raise Skip(f"cannot render frame {frame}: {type(exc).__name__}") from None
    if register:
        _EXPECTED.update(_reference_texts(d, frame, compressed))
    return label


def fam_indx_flip(rng, d):
    plain = base().plain["INDX"]
    d.reseal("INDX", flip_bits(plain, rng))
    return "INDX plaintext bit flips"


def fam_indx_int32(rng, d):
    """Set int32 fields of Annoy nodes (n_descendants, children, leaf item ids) to extremes."""
    plain = bytearray(base().plain["INDX"])
    f = d.manifest["index"]["dim"]
    node = 12 + 4 * f
    n_nodes = len(plain) // node
    n_items = d.manifest["index"]["n_items"]
    k_slots = (node - 4) // 4
    labels = []
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(n_nodes)
        slot = rng.choice([0, 1, 2] + list(range(1, 1 + k_slots)))
        value = rng.choice([-1, -2, I32_MIN, I32_MAX, n_nodes, n_nodes - 1, n_nodes + 1, n_items, n_items - 1,
                            n_items + 1, 0, 1, 2, 1 << 20, -n_nodes, rng.randrange(I32_MIN, I32_MAX)])
        struct.pack_into("<i", plain, i * node + 4 * slot, value)
        labels.append(f"node {i} field {slot} = {value}")
    d.reseal("INDX", bytes(plain))
    return "INDX " + ", ".join(labels)


CODES_CAPSULE = ROOT / "tests" / "vectors" / "ok-binary-codes" / "capsule"


@lru_cache(maxsize=1)
def _codes_base():
    """The ``binary-codes`` vector (FORMAT.md §4.4.1) as a draft and its INDX / VECS plaintexts;
    the same documents and chunks as ``ok``, so the genuine texts are the same."""
    from tests.vectors.generate import Draft

    draft = Draft(CODES_CAPSULE.read_bytes())
    return draft, draft.plaintext("INDX"), draft.plaintext("VECS")


def fam_codes(rng, d):
    """The binary-codes capsule: its codes flipped, cut or extended, its index fields changed (re-signed)."""
    codes_draft, codes, vecs = _codes_base()
    d.sections, d.format_minor, d.keys = dict(codes_draft.sections), codes_draft.format_minor, codes_draft.keys
    d.manifest = json.loads(json.dumps(codes_draft.manifest))
    op = rng.choice(["flip", "length", "field", "vecs"])
    if op == "flip":
        d.reseal("INDX", flip_bits(codes, rng, n=rng.randint(1, 64)))
        return "codes: INDX plaintext bit flips"
    if op == "length":
        cut = rng.choice([-len(codes), -9, -8, -1, 1, 7, 8, 64, 4096])
        d.reseal("INDX", codes[:cut] if cut < 0 else codes + bytes(cut))
        return f"codes: INDX plaintext {cut:+d} bytes"
    if op == "vecs":
        d.reseal("VECS", flip_bits(vecs, rng))
        return "codes: VECS plaintext bit flips"
    index = d.manifest["index"]
    field, value = rng.choice([
        ("dim", 0), ("dim", 63), ("dim", 128), ("dim", 4096), ("dim", I32_MAX),
        ("n_candidates", 0), ("n_candidates", 1), ("n_candidates", 65536), ("n_candidates", 65537),
        ("n_items", index["n_items"] + 1), ("n_items", I32_MAX), ("metric", "angular"), ("format", "annoy"),
        ("n_trees", 8), ("projection", None), ("encryption", "none"),
    ])
    index[field] = value
    return f"codes: manifest index.{field} = {value!r}"


def fam_vecs(rng, d):
    plain = bytearray(base().plain["VECS"])
    if rng.random() < 0.5:
        d.reseal("VECS", flip_bits(bytes(plain), rng))
        return "VECS plaintext bit flips"
    for _ in range(rng.randint(1, 4)):
        plain[rng.randrange(len(plain))] = rng.choice([0x80, 0x7F, 0x00, 0xFF])
    d.reseal("VECS", bytes(plain))
    return "VECS int8 values set to -128/127/0/-1"


def fam_proj(rng, d):
    plain = bytearray(base().plain["PROJ"])
    p = d.manifest["index"]["projection"]
    mean_end = 4 * p["dim_in"]
    axes_end = mean_end + 2 * p["dim_in"] * p["dim_out"]
    op = rng.choice(["flip", "f32", "f16", "scale"])
    if op == "flip":
        d.reseal("PROJ", flip_bits(bytes(plain), rng))
        return "PROJ plaintext bit flips"
    specials32 = [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 0.0, -0.0]
    if op == "f32":
        at = 4 * rng.randrange(p["dim_in"])
        v = rng.choice(specials32)
        plain[at:at + 4] = np.float32(v).tobytes()
        label = f"PROJ mean[{at // 4}] = {v}"
    elif op == "f16":
        at = mean_end + 2 * rng.randrange(p["dim_in"] * p["dim_out"])
        v = rng.choice([np.nan, np.inf, -np.inf, 65504.0, -65504.0, 0.0])
        plain[at:at + 2] = np.float16(v).tobytes()
        label = f"PROJ axes[{(at - mean_end) // 2}] = {v}"
    else:
        at = axes_end + 4 * rng.randrange(p["dim_out"])
        v = rng.choice(specials32 + [-1.0])
        plain[at:at + 4] = np.float32(v).tobytes()
        label = f"PROJ scale[{(at - axes_end) // 4}] = {v}"
    d.reseal("PROJ", bytes(plain))
    return label


def _docs_list() -> dict:
    import zstandard

    return json.loads(zstandard.ZstdDecompressor().decompress(base().plain["DOCS"]))


def _compress_docs(plain: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(plain)


def fam_docs_plain(rng, d):
    """DOCS before compression: JSON bit flips, or fields set to extremes (recompressed, re-sealed)."""
    op = rng.choice(["flip", "field", "many", "long-name"])
    docs = _docs_list()
    if op == "flip":
        plain = raw_json(docs)
        d.reseal("DOCS", _compress_docs(flip_bits(plain, rng)))
        return "DOCS JSON bit flips"
    if op == "field":
        entry = rng.choice(docs["documents"])
        key = rng.choice(["bytes", "name", "media_type"])
        value = rng.choice([extreme_int(rng, 100), "", "\x1b[2J\x1b]0;pwned\x07", None, True, [], {}, 1.5,
                            "a" * 70000])
        entry[key] = value
        label = f"DOCS {key} = {str(value)[:20]!r}"
    elif op == "many":
        n = rng.choice([0, 1, 3, 1000, 100_000, 400_000])
        docs["documents"] = (docs["documents"] * (n // 2 + 1))[:n]
        label = f"DOCS with {n} entries"
    else:
        n = rng.choice([1 << 16, 1 << 20, 8 << 20])
        docs["documents"][0]["name"] = "n" * n
        label = f"DOCS name of {n} characters"
    d.reseal("DOCS", _compress_docs(raw_json(docs)))
    return label


def fam_docs_compressed(rng, d):
    """DOCS after compression: flips, truncation, trailing bytes, two frames, skippable frames."""
    import zstandard

    frame = _compress_docs(base().plain["DOCS"])
    op = rng.choice(["flip", "flip-header", "truncate", "trailing", "two-frames", "skippable", "no-size",
                     "random", "empty"])
    if op == "flip":
        data = flip_bits(frame, rng)
    elif op == "flip-header":
        data = flip_bits(frame, rng, lo=4, hi=min(14, len(frame)))
    elif op == "truncate":
        data = frame[:rng.randrange(len(frame))]
    elif op == "trailing":
        data = frame + rng.randbytes(rng.randint(1, 16))
    elif op == "two-frames":
        data = frame + frame
    elif op == "skippable":
        data = struct.pack("<II", 0x184D2A50, 4) + b"skip" + frame
    elif op == "no-size":
        data = zstandard.ZstdCompressor(write_content_size=False).compress(base().plain["DOCS"])
    elif op == "random":
        data = rng.randbytes(rng.randint(1, 200))
    else:
        data = b""
    d.reseal("DOCS", data)
    return f"DOCS compressed: {op}"


def fam_docs_bomb(rng, d):
    """DOCS zstd bombs: small compressed, huge declared or real content."""
    op = rng.choice(["declared", "declared", "zeros", "json-spaces"])
    if op == "declared":
        declared = rng.choice([64 << 20, (64 << 20) + 1, 1 << 32, 1 << 40, (1 << 63) - 1, (1 << 64) - 2])
        content = rng.choice([b"", base().plain["DOCS"][:0] + b'{"documents":[]}', bytes(1 << 16)])
        data = zstd_with_declared_size(content, declared)
        label = f"DOCS declares {declared} bytes, holds {len(content)}"
    elif op == "zeros":
        n = rng.choice([16 << 20, (64 << 20) - 1, 64 << 20])
        data = zeros_frame(n, True)
        label = f"DOCS inflates to {n} zero bytes ({len(data)} compressed)"
    else:
        n = rng.choice([16 << 20, (64 << 20) - 64])
        data = _compress_docs(b'{"documents":[' + b" " * n + b"]}")
        label = f"DOCS JSON with {n} spaces ({len(data)} compressed)"
    d.reseal("DOCS", data)
    return label


def _lexi_files() -> dict[str, bytes]:
    """The genuine tantivy-7 LEXI's archive, as ``{name: bytes}`` (FORMAT.md §5.6)."""
    import zstandard

    from edge.lexical_tantivy import parse_archive

    archive = zstandard.ZstdDecompressor().decompress(base().plain["LEXI"])
    return {name: bytes(data) for name, data in parse_archive(archive).items()}


def _reseal_lexi(d, archive: bytes, *, declared: int | None = None) -> None:
    import zstandard

    d.manifest["lexical"]["plaintext_bytes"] = len(archive) if declared is None else declared
    d.reseal("LEXI", zstandard.ZstdCompressor(level=3, write_content_size=True).compress(archive))


def _refooter(data: bytes) -> bytes:
    """``data`` with its tantivy footer's CRC-32 recomputed over the (mutated) body, as a signer
    who knows the format would; unchanged when the footer itself was destroyed."""
    import zlib

    if len(data) < 8:
        return data
    n, magic = struct.unpack("<II", data[-8:])
    if n > len(data) - 8:
        return data
    try:
        footer = json.loads(data[len(data) - 8 - n:-8])
        footer["crc"] = zlib.crc32(data[:len(data) - 8 - n])
    except (ValueError, TypeError, KeyError):
        return data
    encoded = json.dumps(footer, separators=(",", ":")).encode()
    return data[:len(data) - 8 - n] + encoded + struct.pack("<II", len(encoded), magic)


def fam_lexi_files(rng, d):
    """tantivy-7 LEXI: bytes of one segment file flipped, set, zeroed, cut or spliced, its footer's
    CRC recomputed; the archive repacked, recompressed, re-sealed (tantivy itself reads them)."""
    from firmware_tools.lexical_writer import pack_archive

    files = _lexi_files()
    name = rng.choice(sorted(n for n in files if n != "meta.json"))
    data = files[name]
    n = struct.unpack("<I", data[-8:-4])[0]
    body = bytearray(data[:len(data) - 8 - n])
    op = rng.choice(["flip", "flip", "set", "zero", "truncate", "splice", "footer"])
    if not body and op != "footer":
        op = "footer"
    if op == "flip":
        body = bytearray(flip_bits(bytes(body), rng, n=rng.choice([1, 2, 8])))
    elif op == "set":
        i = rng.randrange(len(body))
        body[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    elif op == "zero":
        i = rng.randrange(len(body))
        body[i:i + 8] = bytes(len(body[i:i + 8]))
    elif op == "truncate":
        body = body[:rng.randrange(len(body))]
    elif op == "splice":  # a run of another file's bytes over this one's
        other = files[rng.choice(sorted(files))]
        i, j = rng.randrange(len(body)), rng.randrange(len(other))
        run = other[j:j + rng.randint(1, 64)]
        body[i:i + len(run)] = run
    files[name] = _refooter(bytes(body) + data[len(data) - 8 - n:])
    if op == "footer":
        files[name] = data[:-8] + struct.pack("<II", rng.choice([0, n + 1, 50_000, (1 << 32) - 1]), 1337)
    _reseal_lexi(d, pack_archive(files))
    return f"LEXI {name.split('.')[-1]}: {op}"


def fam_lexi_archive(rng, d):
    """tantivy-7 LEXI: the archive table and meta.json at extremes (counts, offsets, names, schema,
    segments, max_doc), and zstd frames declaring other sizes; re-sealed and re-signed."""
    from firmware_tools.lexical_writer import pack_archive

    files = _lexi_files()
    meta = json.loads(files["meta.json"])
    op = rng.choice(["max_doc", "segments", "schema", "opstamp", "meta-bytes", "table", "count", "declared",
                     "duplicate"])
    archive = None
    if op == "max_doc":
        meta["segments"][0]["max_doc"] = extreme_int(rng, meta["segments"][0]["max_doc"])
    elif op == "segments":
        seg = meta["segments"][0]
        meta["segments"] = rng.choice([[], [seg, seg], [seg] * 65, [dict(seg, deletes={"num_deleted_docs": 1})],
                                       [dict(seg, segment_id="../../etc/passwd")]])
    elif op == "schema":
        field_ = rng.choice(meta["schema"])
        field_["options"][rng.choice(sorted(field_["options"]))] = rng.choice([True, False, None, "raw", 7, {}])
    elif op == "opstamp":
        meta["opstamp"] = rng.choice([-1, 1 << 64, 1.5, None, "x"])
    if op in ("max_doc", "segments", "schema", "opstamp"):
        files["meta.json"] = raw_json(meta)
    elif op == "meta-bytes":
        files["meta.json"] = flip_bits(files["meta.json"], rng)
    elif op == "duplicate":
        name = rng.choice(sorted(files))
        archive = pack_archive({**files, name.replace(name[:2], "ff", 1) if name != "meta.json" else name: files[name]})
    archive = archive or pack_archive(files)
    if op in ("table", "count"):
        out = bytearray(archive)
        n_files = struct.unpack_from("<I", out, 8)[0]
        if op == "count":
            out[8:12] = struct.pack("<I", rng.choice([0, n_files - 1, n_files + 1, 385, 386, (1 << 32) - 1]))
        else:
            entry = 16 + 64 * rng.randrange(n_files)
            where = rng.choice([48, 56])  # offset or length
            out[entry + where:entry + where + 8] = struct.pack("<Q", extreme_int(rng, 1000, negative=False) % (1 << 64))
        archive = bytes(out)
    if op == "declared":
        declared = rng.choice([len(archive) - 1, len(archive) + 1, 1 << 32, (1 << 64) - 2])
        d.manifest["lexical"]["plaintext_bytes"] = len(archive)
        d.reseal("LEXI", zstd_with_declared_size(archive, declared))
        return f"LEXI zstd declares {declared} bytes"
    _reseal_lexi(d, archive)
    return f"LEXI archive: {op}"


def fam_zdic(rng, d):
    """ZDIC: a garbage dictionary (random bytes, or zstd dictionary magic and random tables)."""
    op = rng.choice(["random", "magic", "magic-entropy", "huge"])
    n = rng.choice([1, 8, 64, 1024, 8192])
    if op == "random":
        data = rng.randbytes(n)
    elif op == "magic":
        data = b"\x37\xa4\x30\xec" + struct.pack("<I", rng.randrange(1 << 32)) + rng.randbytes(n)
    elif op == "magic-entropy":
        # Header, then Huffman/FSE tables that claim large weights, then content.
        data = (b"\x37\xa4\x30\xec" + struct.pack("<I", rng.randrange(1, 1 << 32))
                + bytes([rng.randrange(256) for _ in range(rng.randint(1, 128))]) + bytes(n))
    else:
        n = rng.choice([(1 << 20) - 8, 1 << 20, (1 << 20) + 1])
        data = b"\x37\xa4\x30\xec" + rng.randbytes(n - 4)
    d.reseal("ZDIC", data)
    d.manifest["payload"]["dictionary_bytes"] = len(data)
    return f"ZDIC {op}, {len(data)} bytes"


def fam_ftab(rng, d):
    """FTAB: offsets, sizes and first chunk ids set to extremes (re-signed, not re-encoded)."""
    from edge import format as fmt

    table = np.frombuffer(d.sections["FTAB"], dtype=fmt._FTAB_DTYPE).copy()
    n_frames, vide = len(table), len(d.sections["VIDE"])
    op = rng.choice(["sample_offset", "sample_bytes", "first_chunk_id", "append", "drop"])
    i = rng.randrange(n_frames)
    if op == "sample_offset":
        v = rng.choice([0, 1, vide - 1, vide, int(table["sample_offset"][(i + 1) % n_frames]),
                        int(table["sample_offset"][i]) + 1, int(table["sample_offset"][i]) - 1, (1 << 63),
                        (1 << 64) - 1, (1 << 32)]) % (1 << 64)
    elif op == "sample_bytes":
        v = rng.choice([0, 1, 4, 5, (1 << 32) - 1, 1 << 20, (1 << 20) + 1, vide,
                        int(table["sample_bytes"][i]) + 1, int(table["sample_bytes"][i]) - 1]) % (1 << 32)
    elif op == "first_chunk_id":
        v = rng.choice([0, 1, d.manifest["n_chunks"], d.manifest["n_chunks"] - 1, (1 << 32) - 1,
                        int(table["first_chunk_id"][i]) + 1, int(table["first_chunk_id"][i]) - 1]) % (1 << 32)
    if op in ("sample_offset", "sample_bytes", "first_chunk_id"):
        table[op][i] = v
        d.set_section("FTAB", table.tobytes())
        return f"FTAB frame {i} {op} = {v}"
    if op == "append":
        data = table.tobytes() + table[-1:].tobytes()
        if rng.random() < 0.5:
            d.manifest["video"]["n_frames"] = n_frames + 1
        d.set_section("FTAB", data)
        return f"FTAB one extra entry (manifest n_frames {d.manifest['video']['n_frames']})"
    d.set_section("FTAB", table[:-1].tobytes())
    if rng.random() < 0.5:
        d.manifest["video"]["n_frames"] = n_frames - 1
    return f"FTAB one entry short (manifest n_frames {d.manifest['video']['n_frames']})"


def _records(plain: bytes) -> list[tuple[tuple[int, int, int, int], bytes]]:
    from edge.sealed import RECORD_HEADER

    out, pos = [], 0
    while pos < len(plain):
        hdr = RECORD_HEADER.unpack_from(plain, pos)
        pos += RECORD_HEADER.size
        out.append((hdr, plain[pos:pos + hdr[3]]))
        pos += hdr[3]
    return out


def _pack(records) -> bytes:
    from edge.sealed import RECORD_HEADER

    return b"".join(RECORD_HEADER.pack(*hdr) + text for hdr, text in records)


def fam_frame_records(rng, d):
    """Frame payloads re-sealed with chunk records of wrong counts, lengths, positions."""
    from firmware_tools.sealing import payload_compressor

    b = base()
    op = rng.choice(["drop", "duplicate", "length", "doc_index", "chars", "header-flip", "cut", "empty", "swap"])
    frames = [i for i, p in enumerate(b.frame_plain) if op != "swap" or len(_records(p)) >= 2]
    frame = rng.choice(frames)
    records = _records(b.frame_plain[frame])
    label = op
    if op == "drop":
        records.pop(rng.randrange(len(records)))
    elif op == "duplicate":
        r = rng.randrange(len(records))
        records.insert(r, records[r])
    elif op in ("length", "doc_index", "chars"):
        r = rng.randrange(len(records))
        hdr, text = records[r]
        hdr = list(hdr)
        if op == "length":
            hdr[3] = rng.choice([0, 1, hdr[3] - 1, hdr[3] + 1, hdr[3] + 1000, (1 << 32) - 1, 1 << 31])
        elif op == "doc_index":
            hdr[0] = rng.choice([1, d.manifest["n_documents"], d.manifest["n_documents"] - 1, (1 << 32) - 1])
        else:
            j = rng.choice([1, 2])
            hdr[j] = rng.choice([0, hdr[3 - j] if j == 1 else hdr[1], (1 << 32) - 1, 1 << 31])
        hdr[3] %= 1 << 32
        records[r] = (tuple(hdr), text)
        label = f"{op} of record {r} = {hdr}"
    elif op == "header-flip":
        plain = bytearray(_pack(records))
        starts, pos = [], 0
        for hdr, text in records:
            starts.append(pos)
            pos += 16 + len(text)
        at = rng.choice(starts) + rng.randrange(16)
        plain[at] ^= 1 << rng.randrange(8)
        return _seal_frames(d, rng, frame, payload_compressor().compress(bytes(plain)),
                            label=f"frame {frame} record header byte {at} flipped")
    elif op == "cut":
        plain = _pack(records)
        plain = plain[:rng.randrange(len(plain))]
        return _seal_frames(d, rng, frame, payload_compressor().compress(plain), label=f"frame {frame} cut short")
    elif op == "empty":
        records = []
    else:
        if len(records) < 2:
            raise Skip("one record")
        records[0], records[1] = records[1], records[0]
    return _seal_frames(d, rng, frame, payload_compressor().compress(_pack(records)), label=f"frame {frame} {label}")


def fam_frame_zstd(rng, d):
    """Frame payloads re-sealed around bad zstd: bombs, flips, truncation, trailing data."""
    from firmware_tools.sealing import payload_compressor

    b = base()
    frame = rng.randrange(len(b.payloads))
    good = payload_compressor().compress(b.frame_plain[frame])
    limit = d.manifest["payload"]["max_plaintext_bytes"]
    op = rng.choice(["bomb", "bomb-declared", "bomb-at-limit", "flip", "truncate", "trailing", "two-frames",
                     "random", "empty", "with-size"])
    if op == "bomb":
        data = zeros_frame(rng.choice([1 << 20, 4 << 20]), False)  # 46 and 142 bytes: they fit a QR code
    elif op == "bomb-declared":
        data = zstd_with_declared_size(rng.choice([b"", b"x" * 64]), rng.choice([limit, 1 << 40, (1 << 64) - 2]))
    elif op == "bomb-at-limit":
        data = zeros_frame(rng.choice([limit, limit + 1]), rng.random() < 0.5)
    elif op == "flip":
        data = flip_bits(good, rng)
    elif op == "truncate":
        data = good[:rng.randrange(len(good))]
    elif op == "trailing":
        data = good + rng.randbytes(rng.randint(1, 8))
    elif op == "two-frames":
        data = good + payload_compressor().compress(b"")
    elif op == "random":
        data = rng.randbytes(rng.randint(1, 150))
    elif op == "empty":
        data = b""
    else:
        import zstandard

        data = zstandard.ZstdCompressor(write_content_size=True).compress(b.frame_plain[frame])
    return _seal_frames(d, rng, frame, data, label=f"frame {frame} zstd {op} ({len(data)} bytes)")


def _set_samples(d, replace: dict[int, bytes]) -> None:
    from edge import format as fmt

    ftab = d.frame_table()
    vide = d.sections["VIDE"]
    offsets = [int(x) for x in ftab.sample_offsets]
    sizes = [int(x) for x in ftab.sample_bytes]
    order = sorted(range(len(offsets)), key=lambda i: offsets[i])
    out, cursor, new_offsets, new_sizes = bytearray(), 0, list(offsets), list(sizes)
    for i in order:
        out += vide[cursor:offsets[i]]
        new_offsets[i] = len(out)
        sample = replace.get(i, vide[offsets[i]:offsets[i] + sizes[i]])
        out += sample
        new_sizes[i] = len(sample)
        cursor = offsets[i] + sizes[i]
    out += vide[cursor:]
    table = fmt.FrameTable(np.asarray(new_offsets, dtype=np.uint64), np.asarray(new_sizes, dtype=np.uint32),
                           ftab.first_chunk_ids, ftab.n_chunks)
    d.set_section("VIDE", bytes(out))
    d.set_section("FTAB", table.to_bytes())


def fam_vide_flip(rng, d):
    """Bit flips inside H.264 samples (VIDE digest recomputed, re-signed)."""
    ftab = d.frame_table()
    i = rng.randrange(ftab.n_frames)
    start, size = int(ftab.sample_offsets[i]), int(ftab.sample_bytes[i])
    n = rng.choice([1, 2, 8, 32])
    d.set_section("VIDE", flip_bits(d.sections["VIDE"], rng, n, start, start + size))
    return f"VIDE sample {i}: {n} bit flips"


def fam_vide_inband(rng, d):
    """A sample replaced by in-band SPS/PPS + IDR of a bigger frame (libx264), or parts of one."""
    ftab = d.frame_table()
    i = rng.randrange(ftab.n_frames)
    name = rng.choice(list(BIG_FRAMES))
    nals = big_frame_nals(name)
    params = [x for x in nals if x[0] & 0x1F in (7, 8)]
    slices = [x for x in nals if x[0] & 0x1F in (1, 5)]
    op = rng.choice(["whole", "whole", "params-only", "params-then-original", "truncated"])
    vide = d.sections["VIDE"]
    original = vide[int(ftab.sample_offsets[i]):int(ftab.sample_offsets[i]) + int(ftab.sample_bytes[i])]
    if op == "whole":
        sample = avcc_sample(nals)
    elif op == "params-only":
        sample = avcc_sample(params)
    elif op == "params-then-original":
        sample = avcc_sample(params) + original
    else:
        whole = avcc_sample(params + slices)
        sample = whole[:rng.randint(len(avcc_sample(params)) + 8, len(whole))]
    _set_samples(d, {i: sample})
    return f"VIDE sample {i} = {op} of {name} ({len(sample)} bytes)"


#: Integer manifest fields and the bounds the manifest parser accepts today (edge/manifest.py,
#: FORMAT.md §4.1): cases sit on and just past those bounds, where the runtime's other limits
#: (the embedder's token range, annoy's int32 search_k, the decoder's frame size) may be narrower.
KEY_FIELDS = {"model.max_tokens": (1, 8192), "index.search_k": (1, 1 << 31), "index.n_items": (1, (1 << 32) - 1),
              "index.dim": (1, 4096), "model.dim": (1, 4096), "index.projection.dim_in": (1, 4096),
              "index.projection.dim_out": (1, 4096), "index.n_candidates": (1, 65536),
              "n_chunks": (1, (1 << 32) - 1), "n_documents": (1, 1 << 24)}
OTHER_FIELDS = {"index.n_trees": (1, 1024), "index.seed": (0, (1 << 31) - 1), "video.width": (21, 4096),
                "video.height": (21, 4096), "video.n_frames": (1, 1 << 24), "video.fps": (1, 240),
                "video.crf": (0, 63), "video.gop": (1, 1), "video.qr.version": (1, 40),
                "video.qr.pixels_per_module": (1, 16), "video.qr.quiet_zone_modules": (0, 16),
                "payload.max_plaintext_bytes": (16, 1 << 20), "payload.dictionary_bytes": (0, 1 << 20),
                "chunking.max_tokens": (1, 8192), "chunking.overlap_tokens": (0, 8192), "version": (1, (1 << 53) - 1)}


def _edit_int_field(rng, d, fields: dict[str, tuple[int, int]]) -> str:
    labels = []
    for _ in range(1 if rng.random() < 0.7 else 2):
        path = rng.choice(sorted(fields))
        lo, hi = fields[path]
        *parents, leaf = path.split(".")
        obj = d.manifest
        for p in parents:
            obj = obj[p]
        original = obj[leaf]
        if isinstance(original, bool) or not isinstance(original, int):  # a second edit of one field
            original = lo
        r = rng.random()
        if r < 0.6:  # accepted by the parser, at its edges
            value = rng.choice([lo, lo + 1, hi, hi - 1, hi // 2, max(lo, original - 1), min(hi, original + 1),
                                max(lo, min(hi, rng.choice([2, 3, 256, 511, 512, 513, 1 << 16, 1 << 24])))])
        elif r < 0.85:
            value = rng.choice([lo - 1, hi + 1, -1, (1 << 53) - 1, 1 << 63])
        else:
            value = rng.choice([None, True, False, str(original), 1.5, -0.0, [], {}])
        obj[leaf] = value
        labels.append(f"{path} = {value!r}")
    return "manifest " + ", ".join(labels)


def _extradata_value(rng) -> tuple[str, str]:
    b = base()
    original = base64.b64decode(b.draft.manifest["video"]["extradata"])
    op = rng.choice(["big-sps", "big-sps", "annexb", "random", "empty", "truncated", "length-size", "huge"])
    if op in ("big-sps", "annexb"):
        name = rng.choice(list(BIG_FRAMES))
        nals = big_frame_nals(name)
        sps = next(x for x in nals if x[0] & 0x1F == 7)
        pps = next(x for x in nals if x[0] & 0x1F == 8)
        data = avcc_extradata(sps, pps) if op == "big-sps" else b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
        op = f"{op} {name}"
    elif op == "random":
        data = rng.randbytes(rng.randint(1, 64))
    elif op == "empty":
        data = b""
    elif op == "truncated":
        data = original[:rng.randrange(len(original))]
    elif op == "length-size":
        data = original[:4] + bytes([0xFC | rng.randrange(4)]) + original[5:]
    else:
        data = original + rng.randbytes(rng.choice([1 << 16, 1 << 20]))
    return base64.b64encode(data).decode(), f"extradata {op} ({len(data)} bytes)"


def fam_manifest_limits(rng, d):
    """Publisher-signed sizes and counts (max_tokens, search_k, n_items, dims, ...) at their bounds."""
    return _edit_int_field(rng, d, KEY_FIELDS)


def fam_manifest_fields(rng, d):
    """The other integer manifest fields (video, QR, payload, chunking, version) at their bounds."""
    return _edit_int_field(rng, d, OTHER_FIELDS)


def fam_manifest_extradata(rng, d):
    """``video.extradata``: the SPS/PPS of a bigger frame, Annex B, random, truncated, huge."""
    value, label = _extradata_value(rng)
    d.manifest["video"]["extradata"] = value
    return label


def fam_selftest(rng, d):
    """Not a mutation: the genuine capsule (the ``selftest-*`` operations run in the worker)."""
    return "genuine capsule"


def fam_altered_text(rng, d):
    """A control: frame 0's first record text changed and re-sealed (authentic but not genuine text)."""
    from firmware_tools.sealing import payload_compressor

    records = _records(base().frame_plain[0])
    hdr, text = records[0]
    new = b"X" + text[1:]
    records[0] = (hdr, new)
    return _seal_frames(d, rng, 0, payload_compressor().compress(_pack(records)), label="frame 0 text altered",
                        register=False)


FAMILIES: dict[str, Callable] = {
    "indx-flip": fam_indx_flip,
    "indx-int32": fam_indx_int32,
    "codes": fam_codes,
    "vecs": fam_vecs,
    "proj": fam_proj,
    "docs-plain": fam_docs_plain,
    "docs-compressed": fam_docs_compressed,
    "docs-bomb": fam_docs_bomb,
    "zdic": fam_zdic,
    "ftab": fam_ftab,
    "frame-records": fam_frame_records,
    "frame-zstd": fam_frame_zstd,
    "vide-flip": fam_vide_flip,
    "vide-inband": fam_vide_inband,
    "manifest-limits": fam_manifest_limits,
    "manifest-fields": fam_manifest_fields,
    "manifest-extradata": fam_manifest_extradata,
    "lexi-files": fam_lexi_files,
    "lexi-archive": fam_lexi_archive,
}
#: Controls for the harness's own test: each must be classified as its name says.
CONTROLS: dict[str, Callable] = {
    "genuine": fam_selftest,
    "control-crash": fam_selftest,
    "control-hang": fam_selftest,
    "control-traceback": fam_selftest,
    "control-over-memory": fam_selftest,
    "control-memory-error": fam_selftest,
    "control-wrong-text": fam_altered_text,
}


def make_case(family: str, seed: int) -> tuple[str, bytes, dict[int, str | None]]:
    """Return ``(label, capsule bytes, expected)`` for case ``seed`` of ``family``; deterministic.

    ``expected`` maps the chunk ids of re-sealed frames to the text they hold (``None``: no text
    may come back); every other chunk must read as the genuine capsule's.

    Raises:
        Skip: the generator cannot build this case.
    """
    rng = random.Random(f"{family}:{seed}")
    d = clone(base().draft)
    _EXPECTED.clear()
    label = (FAMILIES.get(family) or CONTROLS[family])(rng, d)
    expected = dict(_EXPECTED)
    try:
        return label, d.build(), expected
    except ValueError:  # canonical_json refuses the value: sign the raw JSON instead
        return label, d.build(mani=raw_json(d.manifest)), expected


# ---------------------------------------------------------------------------------------------
# The worker (a forked child) and the case operation


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def warm() -> None:
    """Load everything a worker needs before the forkserver forks it (imports, model, base)."""
    from edge._process import quiet_rust_panics

    quiet_rust_panics()  # as the edge program does: a tantivy panic's backtrace is ~50 MiB
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        import av

        av.logging.set_level(None)
    except Exception:  # noqa: BLE001 - older PyAV: ffmpeg's log level stays
        pass
    _memoise_model()
    base()
    # A first open+search+read warms onnxruntime, PyAV and zxing-cpp, and checks the base is genuine.
    from edge.capsule import open_capsule

    with open_capsule(OK_CAPSULE, **_open_kwargs()) as capsule:
        capsule.search(QUERY, k=2, now=_now())


_MEMOISED = False
_OPENER = None


def _session_misses() -> int:
    """How many model sessions the memoised opener has really opened in this process."""
    return _OPENER.cache_info().misses if _OPENER is not None else 0


def _memoise_model() -> None:
    """Memoise the model lookup and session (each hashes the 23 MB model), as test_fuzz.py does.

    Keyed by every argument, so a manifest ``max_tokens`` the embedder refuses still reaches it.
    """
    global _MEMOISED
    if _MEMOISED:
        return
    import edge.capsule as capsule_module

    global _OPENER
    find = lru_cache(maxsize=4)(capsule_module.find_model_dir)
    opener = _OPENER = lru_cache(maxsize=16)(capsule_module.QueryEmbedder.open)
    capsule_module.find_model_dir = lambda sha256, search_path=None, **kw: find(sha256, search_path, **kw)
    capsule_module.QueryEmbedder.open = lambda *a, **kw: opener(*a, **kw)
    _MEMOISED = True


def _allowed(exc: BaseException) -> bool:
    from edge.errors import BudgetExceededError, CapsuleError, ModelError

    return isinstance(exc, (CapsuleError, BudgetExceededError, ModelError))


def _describe_exc(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc)[:200]}{where}"


class TrackingBudget:
    """Factory for a ``MemoryBudget`` that remembers the most it ever had reserved beyond ``runtime``."""

    @staticmethod
    def create(limit_bytes: int):
        from edge.budget import MemoryBudget

        class _Tracking(MemoryBudget):
            peak_bytes = 0
            peak_model_bytes = 0

            def acquire_all(self, reservations, *, what=None):
                super().acquire_all(reservations, what=what)
                with self._lock:
                    held = {k: v for k, v in self._reserved.items() if k != "runtime"}
                total = sum(held.values())
                if total > self.peak_bytes:
                    self.peak_bytes = total
                    self.peak_model_bytes = sum(v for k, v in held.items() if k.endswith("/model"))

        return _Tracking(limit_bytes)


def run_one(path: Path, genuine: list[str], control: str | None = None,
            expected: dict[int, str | None] | None = None, budget=None) -> tuple[str, str]:
    """Open, search and read ``path``; return ``(kind, detail)`` (kind ``ok``/``refused`` or a failure)."""
    from edge.capsule import open_capsule

    now = _now()
    refusals: list[str] = []

    def check(text: str, chunk_id: int, what: str) -> str | None:
        if expected and chunk_id in expected:
            want = expected[chunk_id]
            if want is None:
                return f"{what} chunk {chunk_id} returned {text[:40]!r} from a frame whose records do not parse"
        else:
            want = genuine[chunk_id] if 0 <= chunk_id < len(genuine) else None
        if text != want:
            return f"{what} chunk {chunk_id} returned {text[:40]!r}, not the genuine text"
        return None

    try:
        if control == "control-crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if control == "control-hang":
            time.sleep(3600)
        if control == "control-traceback":
            raise KeyError("control")
        if control == "control-over-memory":
            hold = b"\x01" * (CASE_MEMORY_BYTES + 64 * MiB)  # noqa: F841 - touched pages count
        if control == "control-memory-error":
            hold = bytearray(HARD_LIMIT_BYTES + 512 * MiB)  # noqa: F841
        try:
            capsule = open_capsule(path, budget=budget or TrackingBudget.create(1 << 40), **_open_kwargs())
        except Exception as exc:  # noqa: BLE001 - classified below
            if _allowed(exc):
                return "refused", f"open: {type(exc).__name__}: {str(exc)[:160]}"
            raise
        with capsule:
            n = capsule.manifest.n_chunks
            try:
                for hit in capsule.search(QUERY, k=max(1, min(3, n)), now=now):
                    bad = check(hit.text, hit.chunk_id, "search")
                    if bad:
                        return "wrong-text", bad
                    if not -1.001 <= hit.score <= 1.001:  # also catches NaN
                        return "bad-score", f"search hit chunk {hit.chunk_id} has score {hit.score!r}"
            except Exception as exc:  # noqa: BLE001
                if not _allowed(exc):
                    raise
                refusals.append(f"search: {type(exc).__name__}: {str(exc)[:160]}")
            for chunk_id in range(min(n, len(genuine) + EXTRA_READS)):
                try:
                    hit = capsule.read(chunk_id, now=now)
                except Exception as exc:  # noqa: BLE001
                    if not _allowed(exc):
                        raise
                    refusals.append(f"read {chunk_id}: {type(exc).__name__}: {str(exc)[:160]}")
                    continue
                bad = check(hit.text, chunk_id, "read")
                if bad:
                    return "wrong-text", bad
    except MemoryError as exc:
        return "over-memory", _describe_exc(exc)
    except Exception as exc:  # noqa: BLE001 - the finding
        return "traceback", _describe_exc(exc)
    return ("refused", refusals[0]) if refusals else ("ok", "")


def worker_main(conn, workdir: str) -> None:
    """Serve cases from ``conn`` until EOF: ``(case_id, family, seed)`` -> result dict."""
    import ctypes

    try:  # die with the parent (Linux PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except Exception:  # noqa: BLE001
        pass
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warm()
    vm_size = _status_kib("VmSize") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + HARD_LIMIT_BYTES, vm_size + HARD_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from edge.budget import read_process_memory

    genuine = base().genuine
    path = Path(workdir) / "case.capsule"
    conn.send({"ready": True})
    while True:
        try:
            case_id, family, seed = conn.recv()
        except (EOFError, OSError):
            return
        t0 = time.perf_counter()
        try:
            label, data, expected = make_case(family, seed)
        except Skip as exc:
            conn.send({"id": case_id, "kind": "skipped", "label": str(exc), "detail": ""})
            continue
        except Exception as exc:  # noqa: BLE001 - a generator bug, reported apart from findings
            conn.send({"id": case_id, "kind": "harness", "label": "", "detail": _describe_exc(exc)})
            continue
        path.write_bytes(data)
        conn.send({"id": case_id, "started": True, "label": label})
        budget = TrackingBudget.create(read_process_memory().anon_bytes + CASE_MEMORY_BYTES)
        sessions_before = _session_misses()
        rss_before = _status_kib("VmRSS") * 1024
        exact = _reset_peak()
        kind, detail = run_one(path, genuine, control=family if family.startswith("control-") else None,
                               expected={int(k): v for k, v in expected.items()}, budget=budget)
        peak = _status_kib("VmHWM") * 1024
        grown = peak - rss_before if exact else 0
        # The memoised model session is shared, so its reservation pays for nothing this case
        # allocated, unless this case opened a new session (another max_tokens).
        unused_model = budget.peak_model_bytes if _session_misses() == sessions_before else 0
        allowance = budget.peak_bytes - unused_model + SLACK_BYTES
        if kind in ("ok", "refused") and grown > allowance:
            kind, detail = "over-memory", (
                f"peak RSS grew {grown // MiB} MiB, the budget held {(budget.peak_bytes - unused_model) // MiB} MiB "
                f"(+{SLACK_BYTES // MiB} MiB slack); outcome was {kind} {detail[:100]}")
        retire = grown > CASE_MEMORY_BYTES  # leave with the memory; the parent starts a fresh worker
        conn.send({"id": case_id, "kind": kind, "label": label, "detail": detail, "grown_mib": grown // MiB,
                   "s": round(time.perf_counter() - t0, 3), "retire": retire})
        if retire:
            return


# ---------------------------------------------------------------------------------------------
# The parent: a pool of forked workers, replaced when they die or hang


@dataclass
class Result:
    family: str
    seed: int
    kind: str
    label: str = ""
    detail: str = ""
    seconds: float = 0.0
    saved: str = ""
    grown_mib: int = 0


class _Worker:
    def __init__(self, ctx, root: Path, n: int) -> None:
        self.dir = root / f"w{n}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, str(self.dir)), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.case: tuple[int, str, int] | None = None
        self.deadline = 0.0
        self.label = ""

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(5)
        self.conn.close()


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.corruption._signed_preload"])
    # glibc gives each new thread its own malloc arena (64 MiB of address space, up to 8 per core),
    # and tantivy starts a meta-file watcher thread per open lexical index that lives up to 0.5 s
    # after close: cases opened back to back hold dozens, whose arenas (1 GiB measured after 40
    # opens) exhaust the workers' RLIMIT_AS. glibc reads MALLOC_ARENA_MAX when a process starts,
    # so it is set for the forkserver alone (the systemd unit sets 1 for the same reason).
    from multiprocessing import forkserver

    previous = os.environ.get("MALLOC_ARENA_MAX")
    os.environ["MALLOC_ARENA_MAX"] = "2"
    try:
        forkserver.ensure_running()
    finally:
        if previous is None:
            del os.environ["MALLOC_ARENA_MAX"]
        else:
            os.environ["MALLOC_ARENA_MAX"] = previous
    return ctx


def prepare_big_frames(directory: Path) -> None:
    """Encode the big H.264 frames once, in a child process (libx264 needs ~0.5 GB for 8192x8192)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", "import sys; from tests.corruption.signed_mutations import "
                    "write_big_frames; write_big_frames(__import__('pathlib').Path(sys.argv[1]))", str(directory)],
                   check=True, env=env, cwd=ROOT, timeout=300)
    os.environ["EDGE_FUZZ_BIG_FRAMES"] = str(directory)


def run_cases(cases: list[tuple[str, int]], *, workers: int = 2, timeout_s: float = 10.0,
              save_dir: Path | None = None, ready_timeout_s: float = 120.0) -> list[Result]:
    """Run every ``(family, seed)`` case in forked workers; return one ``Result`` per case, in order.

    A worker that dies with a case in flight gives that case ``crash``; one that passes
    ``timeout_s`` is killed and its case is a ``hang``. Either way a fresh worker takes over.
    The inputs of up to three differently failing cases per ``(family, kind)`` are copied into
    ``save_dir``.
    """
    ctx = _context()
    results: dict[int, Result] = {}
    pending = list(enumerate(cases))[::-1]
    saved: set[tuple[str, str, str]] = set()
    with tempfile.TemporaryDirectory(prefix="edge-signed-fuzz-") as tmp:
        root = Path(tmp)
        pool = [_Worker(ctx, root, i) for i in range(workers)]
        spawned = workers
        ready_by = time.monotonic() + ready_timeout_s

        def save(w: _Worker, r: Result) -> None:
            key = (r.family, r.kind, _signature(r))
            if (save_dir is None or key in saved or sum(k[:2] == key[:2] for k in saved) >= 3
                    or not (w.dir / "case.capsule").exists()):
                return
            saved.add(key)
            save_dir.mkdir(parents=True, exist_ok=True)
            target = save_dir / f"{r.family}-{r.kind}-{r.seed}.capsule"
            shutil.copyfile(w.dir / "case.capsule", target)
            r.saved = str(target)

        def finish(w: _Worker, r: Result) -> None:
            results[w.case[0]] = r
            if r.kind in FAILURE_KINDS:
                save(w, r)
            w.case = None

        def replace(i: int) -> None:
            nonlocal spawned
            pool[i].kill()
            pool[i] = _Worker(ctx, root, spawned)
            spawned += 1

        try:
            while pending or any(w.case is not None for w in pool):
                for w in pool:
                    if w.ready and w.case is None and pending:
                        case_id, (family, seed) = pending.pop()
                        w.case = (case_id, family, seed)
                        w.deadline = time.monotonic() + timeout_s + 60  # generation; reset at "started"
                        w.label = ""
                        w.conn.send(w.case)
                busy = [w.conn for w in pool]
                now = time.monotonic()
                soonest = min([w.deadline for w in pool if w.case] + [ready_by if not all(w.ready for w in pool)
                                                                      else now + 1])
                wait(busy + [w.proc.sentinel for w in pool], timeout=max(0.0, soonest - now))
                for i, w in enumerate(pool):
                    died = False
                    while True:
                        try:
                            if not w.conn.poll():
                                break
                            msg = w.conn.recv()
                        except (EOFError, OSError):
                            died = True
                            break
                        if msg.get("ready"):
                            w.ready = True
                        elif msg.get("started"):
                            w.label = msg["label"]
                            w.deadline = time.monotonic() + timeout_s
                        else:
                            _, family, seed = w.case
                            finish(w, Result(family, seed, msg["kind"], msg["label"], msg["detail"],
                                             msg.get("s", 0.0), grown_mib=msg.get("grown_mib", 0)))
                            if msg.get("retire"):
                                died = True
                                break
                    if died or not w.proc.is_alive():
                        w.proc.join(1)
                        if w.case is not None:
                            _, family, seed = w.case
                            code = w.proc.exitcode
                            how = f"killed by signal {signal.Signals(-code).name}" if code and code < 0 \
                                else f"exited with code {code}"
                            finish(w, Result(family, seed, "crash", w.label, f"worker {how}"))
                        elif not w.ready:
                            raise RuntimeError(f"signed-fuzz worker died while warming (exit {w.proc.exitcode})")
                        replace(i)
                    elif w.case is not None and time.monotonic() > w.deadline:
                        _, family, seed = w.case
                        finish(w, Result(family, seed, "hang", w.label, f"no outcome within {timeout_s:g} s"))
                        replace(i)
                if not all(w.ready for w in pool) and time.monotonic() > ready_by:
                    raise RuntimeError("signed-fuzz workers did not warm up in time")
                if any(w.ready for w in pool):
                    ready_by = time.monotonic() + ready_timeout_s
        finally:
            for w in pool:
                w.kill()
    return [results[i] for i in range(len(cases))]


def _signature(r: Result) -> str:
    """What tells two failures apart: the detail without numbers (exception type and place)."""
    return re.sub(r"\d+", "N", r.detail.split(";")[0])[:80]


def summarise(results: list[Result], *, examples_per_kind: int = 3) -> tuple[dict[str, dict[str, int]], str]:
    """Return counts per family and kind, and a report of the failing families.

    The report has one line per failing family (cases, then the count of each failure kind) and,
    per kind, up to ``examples_per_kind`` examples that fail differently (seed, mutation, outcome,
    saved input).
    """
    counts: dict[str, dict[str, int]] = {}
    examples: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        counts.setdefault(r.family, {}).setdefault(r.kind, 0)
        counts[r.family][r.kind] += 1
        if r.kind in FAILURE_KINDS + ("harness",):
            by_signature = examples.setdefault((r.family, r.kind), {})
            if len(by_signature) < examples_per_kind:
                by_signature.setdefault(_signature(r), r)
    lines = []
    for family in sorted(counts):
        bad = {k: n for k, n in counts[family].items() if k in FAILURE_KINDS + ("harness",)}
        if not bad:
            continue
        total = sum(counts[family].values())
        lines.append(f"{family}: {total} cases, " + ", ".join(f"{n} {k}" for k, n in sorted(bad.items())))
        for kind in sorted(bad):
            for ex in examples[(family, kind)].values():
                where = f" [saved {ex.saved}]" if ex.saved else ""
                lines.append(f"    {kind}: seed {ex.seed}: {ex.label}: {ex.detail}{where}")
    return counts, "\n".join(lines)


def case_list(families, n_per_family: int, start: int = 0) -> list[tuple[str, int]]:
    """Cases ``start .. start+n-1`` of every family, interleaved (so slow families spread over workers)."""
    return [(f, s) for s in range(start, start + n_per_family) for f in families]
