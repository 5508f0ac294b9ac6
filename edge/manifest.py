"""The capsule manifest: canonical JSON in, a checked frozen ``Manifest`` out.

This module owns FORMAT.md §4 (fields), §7 (stanza shapes) and §9 (the SIGS JSON):
strict parsing of untrusted bytes and the canonical serialisation the writer
signs. It does no IO, no crypto and reads no clock: callers pass ``now``.

Example::

    manifest = parse_manifest(mani_bytes)        # after the signature checked out
    manifest.check_validity(now)                 # ExpiredCapsuleError / NotYetValidError
    manifest.sections["VIDE"].sha256

Source: FORMAT.md §4, §7, §9.

Size: ~900 lines because the manifest's parser, its bounds, its writer (``to_bytes``) and the
canonical-JSON rules it is signed under stay side by side, so that a field is added to all four
in one place.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .clock import format_time, parse_time
from .errors import CapsuleFormatError, ExpiredCapsuleError, NotYetValidError, RuleViolationError
from .format import HASHED_SECTIONS

MODEL_FAMILIES = ("onnx", "tflite")
"""Values of ``model.family`` (FORMAT.md §4.3): the model file format and engine."""

FORMAT_ID = "edge-capsule/1"
MAX_INT = (1 << 53) - 1
MAX_RECIPIENTS = 1024
MAX_SIGNATURES = 16
SCRYPT_LOG_N_RANGE = (10, 18)
MAX_PLAINTEXT_LIMIT = 1 << 20
MAX_DICTIONARY_BYTES = 1 << 20
#: ``model.max_tokens`` this runtime's query embedder takes: [CLS] + 1 token + [SEP] at least,
#: at most the BERT position table (edge/embedder.py ``MAX_POSITIONS``, ``QueryEmbedder.load``).
MODEL_MAX_TOKENS_RANGE = (3, 512)
#: Largest ``index.search_k``: Annoy takes it as a C ``int`` (annoymodule.cc, ``"Oi|ii"``).
MAX_SEARCH_K = (1 << 31) - 1
#: Largest ``n_chunks`` / ``index.n_items``: Annoy item ids and node counts are int32
#: (annoylib.h ``AnnoyIndex<int32_t, float, ...>``), and ids index the frame table.
MAX_ITEMS = (1 << 31) - 1
#: Largest ``binary-codes`` INDX plaintext: 4 GiB (16 million 2,048-bit codes; 268 million at 128 bits).
MAX_CODES_BYTES = 4 << 30
#: Largest LEXI plaintext (an SQLite database, or a tantivy archive once inflated), bytes.
MAX_LEXICAL_PLAINTEXT_BYTES = 4 << 30
#: The lexical index formats (manifest ``lexical.format``) and the normaliser each one uses.
LEXICAL_NORMALISERS = {"sqlite-fts5": "ident-v1", "tantivy-7": "ident-v2"}
#: Rules this runtime implements (FORMAT.md §4.2). Others fail closed unless optional.
KNOWN_RULES: frozenset[str] = frozenset(
    {"devices", "operations", "query_limits", "rate_limit", "purge_on_expiry", "min_runtime"})

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


# ---------------------------------------------------------------------------
# Canonical JSON


def canonical_json(obj: Any) -> bytes:
    """Return the canonical UTF-8 JSON encoding of ``obj`` (FORMAT.md §4).

    This is RFC 8785 (JSON Canonicalization Scheme) restricted to integers in ``[0, 2^53)``
    and no floats: object members sorted by the UTF-16 code units of their names, no
    whitespace, strings escaped only where RFC 8785 requires (``"``, ``\\``, control
    characters, the short forms ``\\b \\f \\n \\r \\t``, others ``\\u00xx``), UTF-8 out.
    ``tests/unit/edge/test_manifest.py`` checks it against the ``rfc8785`` package.

    Raises:
        ValueError: ``obj`` holds a float, an integer outside ``[0, 2^53)``, a non-string
            key, or a lone surrogate.
    """
    _check_encodable(obj)
    return json.dumps(_jcs_ordered(obj), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _jcs_ordered(obj: Any) -> Any:
    """``obj`` with every object's members in RFC 8785 §3.2.3 order (UTF-16 code units)."""
    if isinstance(obj, dict):
        return {key: _jcs_ordered(obj[key]) for key in sorted(obj, key=lambda k: k.encode("utf-16-be", "surrogatepass"))}
    if isinstance(obj, (list, tuple)):
        return [_jcs_ordered(value) for value in obj]
    return obj


def _check_encodable(obj: Any) -> None:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, int):
        if not 0 <= obj <= MAX_INT:
            raise ValueError(f"integer {obj} outside 0..2^53-1")
        return
    if isinstance(obj, float):
        raise ValueError("floats are not allowed in canonical JSON")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValueError("object keys must be strings")
            _check_encodable(value)
        return
    if isinstance(obj, (list, tuple)):
        for value in obj:
            _check_encodable(value)
        return
    raise ValueError(f"type {type(obj).__name__} is not JSON")


def _show(key: str, limit: int = 40) -> str:
    """A key from untrusted JSON for a one-line message: as is when it looks like a field
    name, else escaped with ``ascii`` (no control characters, no newline); at most ``limit`` chars."""
    if _NAME.fullmatch(key) and len(key) <= limit:
        return key
    return ascii(key[:limit]) + ("..." if len(key) > limit else "")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CapsuleFormatError(f"duplicate key {ascii(key[:40])}{'...' if len(key) > 40 else ''} in JSON")
        result[key] = value
    return result


def _reject_float(text: str) -> Any:
    raise CapsuleFormatError(f"float {text} in JSON (integers only)")


def parse_canonical_json(data: bytes, *, what: str) -> Any:
    """Parse canonical JSON strictly; refuse anything with a second encoding.

    Args:
        data: the untrusted bytes.
        what: what is being parsed, for messages ("manifest", "signatures").

    Raises:
        CapsuleFormatError: not UTF-8, not JSON, duplicate keys, floats,
            NaN/Infinity, or bytes that differ from the canonical re-encoding.

    Source: FORMAT.md §4.
    """
    try:
        text = bytes(data).decode("utf-8", errors="strict")
        obj = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except CapsuleFormatError as exc:
        raise CapsuleFormatError(f"{what}: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CapsuleFormatError(f"{what} is not valid UTF-8 JSON ({type(exc).__name__})") from None
    try:
        again = canonical_json(obj)
    except ValueError as exc:
        raise CapsuleFormatError(f"{what}: {exc}") from None
    except RecursionError:  # json.loads took a nesting that re-encoding, deeper in the stack, does not
        raise CapsuleFormatError(f"{what} nests too deeply") from None
    if again != bytes(data):
        raise CapsuleFormatError(f"{what} is not in canonical JSON form")
    return obj


# ---------------------------------------------------------------------------
# Field readers: each raises CapsuleFormatError naming the field path.


class _Obj:
    """A dict being read field by field; unknown keys are refused at ``done()``."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise CapsuleFormatError(f"{path} must be an object")
        self.value = value
        self.path = path
        self.seen: set[str] = set()

    def get(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.value:
            raise CapsuleFormatError(f"{self.path}.{key} is missing")
        return self.value[key]

    def int(self, key: str, low: int = 0, high: int = MAX_INT) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CapsuleFormatError(f"{self.path}.{key} must be an integer in {low}..{high}")
        return value

    def str(self, key: str, pattern: re.Pattern[str] | None = None, max_len: int = 256,
            choices: tuple[str, ...] | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str) or len(value) > max_len:
            raise CapsuleFormatError(f"{self.path}.{key} must be a string of at most {max_len} chars")
        if pattern is not None and not pattern.fullmatch(value):
            raise CapsuleFormatError(f"{self.path}.{key} is malformed")
        if choices is not None and value not in choices:
            raise CapsuleFormatError(f"{self.path}.{key} is {value!r}, expected one of {', '.join(choices)}")
        return value

    def bool(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise CapsuleFormatError(f"{self.path}.{key} must be true or false")
        return value

    def b64(self, key: str, n_bytes: int | None = None, max_bytes: int = 1024) -> bytes:
        value = self.str(key, max_len=4 * max_bytes // 3 + 4)
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise CapsuleFormatError(f"{self.path}.{key} is not base64") from None
        if base64.b64encode(raw).decode("ascii") != value:
            raise CapsuleFormatError(f"{self.path}.{key} is not canonical base64")
        if n_bytes is not None and len(raw) != n_bytes:
            raise CapsuleFormatError(f"{self.path}.{key} is {len(raw)} bytes, expected {n_bytes}")
        return raw

    def time(self, key: str) -> datetime:
        value = self.str(key, _TIME, max_len=20)
        try:
            return parse_time(value)
        except ValueError:
            raise CapsuleFormatError(f"{self.path}.{key} is not a valid UTC time") from None

    def obj(self, key: str) -> "_Obj":
        return _Obj(self.get(key), f"{self.path}.{key}")

    def list(self, key: str, low: int, high: int) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list) or not low <= len(value) <= high:
            raise CapsuleFormatError(f"{self.path}.{key} must be a list of {low}..{high} items")
        return value

    def done(self) -> None:
        extra = sorted(set(self.value) - self.seen)
        if extra:
            shown = ", ".join(_show(k) for k in extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            raise CapsuleFormatError(f"{self.path} has unknown key(s) {shown}")


# ---------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class SectionDigest:
    """Length (bytes) and sha256 (hex) the manifest records for a section."""

    length: int
    sha256: str


@dataclass(frozen=True)
class ModelInfo:
    """The embedding model a capsule was built with (FORMAT.md §4.3)."""

    name: str
    family: str
    sha256: str
    tokenizer_sha256: str
    dim: int
    pooling: str
    normalization: str
    max_tokens: int


@dataclass(frozen=True)
class ProjectionInfo:
    """PCA projection and int8 re-ranking parameters (FORMAT.md §4.4, §5.2-§5.3)."""

    method: str
    dim_in: int
    dim_out: int

    @property
    def plaintext_bytes(self) -> int:
        """Exact PROJ plaintext length: mean f32, axes f16, scale f32."""
        return 4 * self.dim_in + 2 * self.dim_out * self.dim_in + 4 * self.dim_out


#: ``index.format`` values: an Annoy forest (§4.4), or binary codes scanned exhaustively (§4.4.1).
INDEX_FORMATS = ("annoy", "binary-codes")


@dataclass(frozen=True)
class IndexInfo:
    """The dense index's parameters (FORMAT.md §4.4).

    Attributes:
        dim: Annoy item dimension (``model.dim``, or the first ``dim`` projected coordinates);
            for ``binary-codes``, the bits per code (a multiple of 64, at most ``dim_out``).
        n_trees, seed, search_k: Annoy's; 0 for ``binary-codes``.
        n_candidates: candidates re-ranked per query when ``projection`` is set.
        projection: ``None``, or the PCA projection with int8 re-ranking vectors (required for
            ``binary-codes``).
        format: ``"annoy"`` or ``"binary-codes"`` (FORMAT.md §4.4.1).
    """

    dim: int
    metric: str
    n_items: int
    n_trees: int
    seed: int
    search_k: int
    n_candidates: int
    projection: ProjectionInfo | None
    encryption: str
    format: str = "annoy"

    @property
    def node_bytes(self) -> int:
        """Bytes per Annoy node for the angular metric: 12 + 4 * dim."""
        return 12 + 4 * self.dim

    @property
    def codes_plaintext_bytes(self) -> int:
        """Exact INDX plaintext length of a ``binary-codes`` index: ``n_items * dim / 8``."""
        return self.n_items * self.dim // 8

    @property
    def vecs_plaintext_bytes(self) -> int:
        """Exact VECS plaintext length: ``n_items * dim_out`` int8, 0 without projection."""
        return 0 if self.projection is None else self.n_items * self.projection.dim_out


#: ``lexical.fusion.exact_first_max_tokens`` at most (and when absent): the query term limit.
MAX_EXACT_FIRST_TOKENS = 32
#: ``lexical.fusion.dense_first_margin`` at most: thousandths of cosine similarity (1.0).
MAX_DENSE_FIRST_MARGIN = 1000


@dataclass(frozen=True)
class FusionInfo:
    """How hybrid search fuses the dense and lexical rankings (FORMAT.md §4.6).

    Attributes:
        method: ``"rrf"``: reciprocal rank fusion, ``score = sum w / (k + rank)`` over the
            rankings a chunk appears in (rank from 1; Cormack, Clarke & Buettcher, SIGIR 2009).
        k: the RRF constant, 1..1000 (60 in the paper).
        dense_weight, lexical_weight: integer weights ``w`` of the two rankings, 0..1000 each,
            not both 0 (integers because the manifest holds no floats).
        depth: how many hits of each ranking are fused, 1..1000.
        exact_first_max_tokens: chunks holding all of the query's identifiers go first only
            when the query has at most this many tokens (0..32; absent in the manifest: 32,
            always). A short query ("E-4021", "max_wal_senders") is a lookup; in a long one an
            identifier is one term among many (bench/HYBRID.md: exact-first always costs
            SciFact 0.02 nDCG@10).
        dense_first_margin: when no chunk goes first as an exact match, the dense ranking's
            first chunk goes first if its cosine similarity leads the second's by at least this
            many thousandths (1..1000; 0, absent in the manifest: never; format 1.4). A
            confident dense answer to a paraphrased question is then not displaced by chunks
            that only share its words (bench/HYBRID.md, "Dense first").
    """

    method: str
    k: int
    dense_weight: int
    lexical_weight: int
    depth: int
    exact_first_max_tokens: int = 32
    dense_first_margin: int = 0


@dataclass(frozen=True)
class LexicalInfo:
    """The lexical index's parameters: the manifest's ``lexical`` object (FORMAT.md §4.6).

    Attributes:
        format: ``"sqlite-fts5"`` (an SQLite database, §5.5) or ``"tantivy-7"`` (a zstd frame
            holding an archive of tantivy's files, §5.6).
        normaliser: ``"ident-v1"`` for ``sqlite-fts5``, ``"ident-v2"`` for ``tantivy-7``
            (``edge.lexical``).
        plaintext_bytes: size of the LEXI plaintext, bytes: the database (``sqlite-fts5``) or
            the inflated archive (``tantivy-7``).
        n_rows: indexed chunks; equals ``n_chunks``.
        page_bytes: the database's page size, a power of two in 512..65536 (``sqlite-fts5``);
            0 for ``tantivy-7``.
        fusion: how ``search(mode="hybrid")`` fuses the rankings.
    """

    format: str
    normaliser: str
    plaintext_bytes: int
    n_rows: int
    page_bytes: int
    fusion: FusionInfo


@dataclass(frozen=True)
class VideoInfo:
    """MP4/H.264/QR parameters (FORMAT.md §4.5)."""

    codec: str
    profile: str
    width: int
    height: int
    pix_fmt: str
    crf: int
    fps: int
    n_frames: int
    extradata: bytes
    qr_version: int
    qr_ec_level: str
    pixels_per_module: int
    quiet_zone_modules: int


@dataclass(frozen=True)
class Stanza:
    """One wrapped copy of the content key (FORMAT.md §7).

    ``type`` is ``"x25519"`` (``epk`` set) or ``"scrypt"`` (``salt``/``log_n`` set).
    """

    type: str
    body: bytes
    epk: bytes = b""
    salt: bytes = b""
    log_n: int = 0


#: Most earlier segments a version may list (FORMAT.md §4.7); a publisher compacts well before.
MAX_BASE_SEGMENTS = 63
#: Most tombstone ranges one version may carry.
MAX_TOMBSTONE_RANGES = 4096


@dataclass(frozen=True)
class SegmentPin:
    """An earlier segment a version is built on: a capsule of the same lineage, pinned by its manifest.

    Attributes:
        version: the version that created it (its own manifest's ``version``).
        manifest_sha256: SHA-256 (hex) of its MANI bytes; what authenticates it.
        n_chunks: its chunks; its global chunk ids follow those of the segments before it.
    """

    version: int
    manifest_sha256: str
    n_chunks: int


@dataclass(frozen=True)
class SegmentsInfo:
    """The manifest's ``segments`` object: this capsule is the newest segment of a version (FORMAT.md §4.7).

    Attributes:
        base: the earlier segments, oldest first; this capsule's own chunks come after theirs.
        tombstones: ``(start, end)`` ranges of global chunk ids of earlier segments that this
            version removes or replaces; sorted, disjoint, not touching, inside the base.
    """

    base: tuple[SegmentPin, ...]
    tombstones: tuple[tuple[int, int], ...]

    @property
    def base_chunks(self) -> int:
        """Chunks in all earlier segments: the global id of this capsule's first chunk."""
        return sum(pin.n_chunks for pin in self.base)

    @property
    def n_tombstoned(self) -> int:
        """Chunks the tombstones remove."""
        return sum(end - start for start, end in self.tombstones)


@dataclass(frozen=True)
class Manifest:
    """A parsed, structurally checked manifest. Exists only for signed bytes.

    Times are timezone-aware UTC datetimes. ``raw`` keeps the exact signed bytes.

    Source: FORMAT.md §4.
    """

    capsule_id: str
    name: str
    version: int
    publisher_keyid: str
    publisher_name: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    rules: dict[str, Any]
    model: ModelInfo
    chunk_max_tokens: int
    chunk_overlap_tokens: int
    index: IndexInfo
    video: VideoInfo
    max_plaintext_bytes: int
    dictionary_bytes: int
    n_chunks: int
    n_documents: int
    sections: dict[str, SectionDigest]
    recipients: tuple[Stanza, ...]
    builder: dict[str, str]
    lexical: LexicalInfo | None = None
    segments: SegmentsInfo | None = None
    raw: bytes = field(repr=False, default=b"")

    @property
    def capsule_id_bytes(self) -> bytes:
        """The 16 raw bytes of ``capsule_id``."""
        return bytes.fromhex(self.capsule_id)

    def check_validity(self, now: datetime) -> None:
        """Raise unless ``not_before <= now < expires_at``.

        Args:
            now: timezone-aware current time.

        Raises:
            ExpiredCapsuleError: ``now >= expires_at``.
            NotYetValidError: ``now < not_before``.

        Source: FORMAT.md §4.1.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if now >= self.expires_at:
            raise ExpiredCapsuleError(
                f"capsule expired at {format_time(self.expires_at)} (now {format_time(now)})",
                expires_at=self.expires_at, now=now,
            )
        if now < self.not_before:
            raise NotYetValidError(
                f"capsule is not valid before {format_time(self.not_before)} (now {format_time(now)})",
                not_before=self.not_before, now=now,
            )

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as the JSON object of FORMAT.md §4.1 (the writer's side of ``parse_manifest``).

        ``parse_manifest(canonical_json(m.to_json()))`` equals ``m`` (but for ``raw``), and for
        any bytes ``b`` that ``parse_manifest`` accepts, ``parse_manifest(b).to_bytes() == b``.
        """
        projection = self.index.projection
        video = self.video
        return {
            "format": FORMAT_ID,
            "capsule_id": self.capsule_id,
            "name": self.name,
            "version": self.version,
            "publisher": {"keyid": self.publisher_keyid, "name": self.publisher_name},
            "issued_at": format_time(self.issued_at),
            "not_before": format_time(self.not_before),
            "expires_at": format_time(self.expires_at),
            "rules": {name: dict(body) for name, body in self.rules.items()},
            "model": {"name": self.model.name, "family": self.model.family, "sha256": self.model.sha256,
                      "tokenizer_sha256": self.model.tokenizer_sha256, "dim": self.model.dim,
                      "pooling": self.model.pooling, "normalization": self.model.normalization,
                      "max_tokens": self.model.max_tokens},
            "chunking": {"max_tokens": self.chunk_max_tokens, "overlap_tokens": self.chunk_overlap_tokens},
            "index": {"format": self.index.format, "dim": self.index.dim, "metric": self.index.metric,
                      "n_items": self.index.n_items,
                      **({"n_trees": self.index.n_trees, "seed": self.index.seed, "search_k": self.index.search_k}
                         if self.index.format == "annoy" else {}),
                      "n_candidates": self.index.n_candidates,
                      "projection": None if projection is None else {
                          "method": projection.method, "dim_in": projection.dim_in, "dim_out": projection.dim_out},
                      "encryption": self.index.encryption},
            "video": {"container": "mp4", "codec": video.codec, "profile": video.profile, "width": video.width,
                      "height": video.height, "pix_fmt": video.pix_fmt, "crf": video.crf, "gop": 1,
                      "fps": video.fps, "n_frames": video.n_frames,
                      "extradata": base64.b64encode(video.extradata).decode("ascii"),
                      "qr": {"version": video.qr_version, "ec_level": video.qr_ec_level,
                             "pixels_per_module": video.pixels_per_module,
                             "quiet_zone_modules": video.quiet_zone_modules}},
            "payload": {"aead": "chacha20poly1305", "compression": "zstd", "layout": "frame-v1",
                        "max_plaintext_bytes": self.max_plaintext_bytes, "dictionary_bytes": self.dictionary_bytes},
            "lexical": None if self.lexical is None else lexical_to_json(self.lexical),
            **({} if self.segments is None else {"segments": segments_to_json(self.segments)}),
            "n_chunks": self.n_chunks,
            "n_documents": self.n_documents,
            "sections": {tag: {"length": d.length, "sha256": d.sha256} for tag, d in self.sections.items()},
            "recipients": [stanza_to_json(stanza) for stanza in self.recipients],
            "builder": dict(self.builder),
        }

    def to_bytes(self) -> bytes:
        """Return the canonical JSON bytes of ``to_json()``: what the publisher signs (MANI).

        Raises:
            ValueError: a value that canonical JSON cannot hold (see ``canonical_json``).
        """
        return canonical_json(self.to_json())

    def check_rules(self) -> None:
        """Raise if a required rule is one this runtime does not implement.

        Raises:
            RuleViolationError: a rule without ``"optional": true`` is unknown.

        Source: FORMAT.md §4.2.
        """
        for name, body in self.rules.items():
            if name not in KNOWN_RULES and not body.get("optional", False):
                raise RuleViolationError(f"capsule requires rule {name!r}, which this runtime does not implement")


def parse_manifest(data: bytes) -> Manifest:
    """Parse and structurally check manifest bytes.

    Call only on bytes whose signature has been verified.

    Args:
        data: the MANI section.

    Returns:
        The ``Manifest``; ``raw`` is ``data``.

    Every integer is bounded to what this runtime can honour, not only to what the format
    can express (FORMAT.md §10): ``model.max_tokens`` to the embedder's 3..512,
    ``index.search_k`` to Annoy's C ``int``, ``n_chunks``/``index.n_items`` to Annoy's int32
    item ids.

    Raises:
        CapsuleFormatError: not canonical JSON, a missing, unknown or malformed
            field, a value outside its bounds, or values that contradict each other;
            nothing else, whatever ``data`` holds.

    Source: FORMAT.md §4, §10.
    """
    top = _Obj(parse_canonical_json(data, what="manifest"), "manifest")
    if top.str("format") != FORMAT_ID:
        raise CapsuleFormatError(f"manifest.format is not {FORMAT_ID!r}")
    capsule_id = top.str("capsule_id", _HEX32, 32)
    name = top.str("name", _NAME, 64)
    version = top.int("version", 1)
    pub = top.obj("publisher")
    publisher_keyid = pub.str("keyid", _HEX64, 64)
    publisher_name = pub.str("name", max_len=128)
    pub.done()
    issued_at = top.time("issued_at")
    not_before = top.time("not_before")
    expires_at = top.time("expires_at")
    if expires_at <= not_before:
        raise CapsuleFormatError("manifest.expires_at is not after not_before")

    rules_obj = top.obj("rules")
    rules: dict[str, Any] = {}
    for rule_name in rules_obj.value:
        if not _NAME.fullmatch(rule_name):
            raise CapsuleFormatError("manifest.rules has a malformed rule name")
        body = rules_obj.obj(rule_name)
        body.bool("optional")
        rules[rule_name] = dict(body.value)
    rules_obj.done()

    m = top.obj("model")
    model = ModelInfo(
        name=m.str("name", max_len=128),
        family=m.str("family", choices=MODEL_FAMILIES),
        sha256=m.str("sha256", _HEX64, 64),
        tokenizer_sha256=m.str("tokenizer_sha256", _HEX64, 64),
        dim=m.int("dim", 1, 4096),
        pooling=m.str("pooling", choices=("mean",)),
        normalization=m.str("normalization", choices=("l2",)),
        max_tokens=m.int("max_tokens", *MODEL_MAX_TOKENS_RANGE),
    )
    m.done()

    c = top.obj("chunking")
    chunk_max_tokens = c.int("max_tokens", 1, 8192)
    chunk_overlap_tokens = c.int("overlap_tokens", 0, 8192)
    c.done()

    n_chunks = top.int("n_chunks", 1, MAX_ITEMS)
    n_documents = top.int("n_documents", 1, 1 << 24)

    i = top.obj("index")
    index_format = i.str("format", choices=INDEX_FORMATS)
    projection = None
    if i.get("projection") is not None:
        pr = i.obj("projection")
        projection = ProjectionInfo(method=pr.str("method", choices=("pca",)), dim_in=pr.int("dim_in", 1, 4096),
                                    dim_out=pr.int("dim_out", 1, 4096))
        pr.done()
    annoy = index_format == "annoy"
    index = IndexInfo(
        dim=i.int("dim", 1, 4096),
        metric=i.str("metric", choices=("angular",) if annoy else ("hamming",)),
        n_items=i.int("n_items", 1, MAX_ITEMS),
        n_trees=i.int("n_trees", 1, 1024) if annoy else 0,
        seed=i.int("seed", 0, (1 << 31) - 1) if annoy else 0,
        search_k=i.int("search_k", 1, MAX_SEARCH_K) if annoy else 0,
        n_candidates=i.int("n_candidates", 1, 65536),
        projection=projection,
        encryption=i.str("encryption", choices=("chacha20poly1305-stream", "none")),
        format=index_format,
    )
    i.done()
    if not annoy:
        if projection is None:
            raise CapsuleFormatError("manifest.index: a binary-codes index needs a projection (it re-ranks by VECS)")
        if index.dim % 64:
            raise CapsuleFormatError(f"manifest.index.dim is {index.dim}: binary codes are whole 64-bit words")
        if index.codes_plaintext_bytes > MAX_CODES_BYTES:
            raise CapsuleFormatError(f"manifest.index: {index.n_items} codes of {index.dim} bits are "
                                     f"{index.codes_plaintext_bytes} bytes, more than {MAX_CODES_BYTES}")
    if index.n_items != n_chunks:
        raise CapsuleFormatError(f"manifest.index.n_items is {index.n_items}, n_chunks is {n_chunks}")
    if projection is None and index.dim != model.dim:
        raise CapsuleFormatError(f"manifest.index.dim is {index.dim}, model.dim is {model.dim}")
    if projection is not None:
        if projection.dim_in != model.dim:
            raise CapsuleFormatError(
                f"manifest.index.projection.dim_in is {projection.dim_in}, model.dim is {model.dim}")
        if not index.dim <= projection.dim_out <= projection.dim_in:
            raise CapsuleFormatError(
                f"manifest.index dims must satisfy dim {index.dim} <= dim_out {projection.dim_out} "
                f"<= dim_in {projection.dim_in}")

    v = top.obj("video")
    v.str("container", choices=("mp4",))
    if v.int("gop", 1, 1) != 1:
        raise CapsuleFormatError("manifest.video.gop must be 1")
    q = v.obj("qr")
    video = VideoInfo(
        codec=v.str("codec", choices=("h264", "hevc")),
        profile=v.str("profile", max_len=64),
        width=v.int("width", 21, 4096),
        height=v.int("height", 21, 4096),
        pix_fmt=v.str("pix_fmt", choices=("yuv420p",)),
        crf=v.int("crf", 0, 63),
        fps=v.int("fps", 1, 240),
        n_frames=v.int("n_frames", 1, 1 << 24),
        extradata=v.b64("extradata", max_bytes=4096),
        qr_version=q.int("version", 1, 40),
        qr_ec_level=q.str("ec_level", choices=("L", "M", "Q", "H")),
        pixels_per_module=q.int("pixels_per_module", 1, 16),
        quiet_zone_modules=q.int("quiet_zone_modules", 0, 16),
    )
    q.done()
    v.done()

    p = top.obj("payload")
    p.str("aead", choices=("chacha20poly1305",))
    p.str("compression", choices=("zstd",))
    p.str("layout", choices=("frame-v1",))
    max_plaintext_bytes = p.int("max_plaintext_bytes", 16, MAX_PLAINTEXT_LIMIT)
    dictionary_bytes = p.int("dictionary_bytes", 0, MAX_DICTIONARY_BYTES)
    p.done()

    lexical = None
    if top.get("lexical") is not None:
        lexical = _parse_lexical(top.obj("lexical"), n_chunks)

    segments = None
    if "segments" in top.value:
        segments = _parse_segments(top.obj("segments"), capsule_version=version)

    s = top.obj("sections")
    sections = {}
    for tag in HASHED_SECTIONS:
        d = s.obj(tag)
        sections[tag] = SectionDigest(d.int("length", 0), d.str("sha256", _HEX64, 64))
        d.done()
    s.done()

    recipients = []
    for n, raw in enumerate(top.list("recipients", 1, MAX_RECIPIENTS)):
        st = _Obj(raw, f"manifest.recipients[{n}]")
        kind = st.str("type", choices=("x25519", "scrypt"))
        body = st.b64("body", 48)
        if kind == "x25519":
            recipients.append(Stanza(kind, body, epk=st.b64("epk", 32)))
        else:
            low, high = SCRYPT_LOG_N_RANGE
            recipients.append(Stanza(kind, body, salt=st.b64("salt", 16), log_n=st.int("log_n", low, high)))
        st.done()

    b = top.obj("builder")
    builder = {"name": b.str("name", max_len=64), "version": b.str("version", max_len=64)}
    b.done()
    top.done()

    return Manifest(
        capsule_id=capsule_id, name=name, version=version,
        publisher_keyid=publisher_keyid, publisher_name=publisher_name,
        issued_at=issued_at, not_before=not_before, expires_at=expires_at,
        rules=rules, model=model, chunk_max_tokens=chunk_max_tokens,
        chunk_overlap_tokens=chunk_overlap_tokens, index=index, video=video,
        max_plaintext_bytes=max_plaintext_bytes, dictionary_bytes=dictionary_bytes, n_chunks=n_chunks, n_documents=n_documents,
        sections=sections, recipients=tuple(recipients), builder=builder, lexical=lexical, segments=segments,
        raw=bytes(data),
    )


def _parse_lexical(x: _Obj, n_chunks: int) -> LexicalInfo:
    """The ``lexical`` object (FORMAT.md §4.6)."""
    f = x.obj("fusion")
    fusion = FusionInfo(method=f.str("method", choices=("rrf",)), k=f.int("k", 1, 1000),
                        dense_weight=f.int("dense_weight", 0, 1000), lexical_weight=f.int("lexical_weight", 0, 1000),
                        depth=f.int("depth", 1, 1000),
                        exact_first_max_tokens=(f.int("exact_first_max_tokens", 0, MAX_EXACT_FIRST_TOKENS)
                                                if "exact_first_max_tokens" in f.value else MAX_EXACT_FIRST_TOKENS),
                        dense_first_margin=(f.int("dense_first_margin", 1, MAX_DENSE_FIRST_MARGIN)
                                            if "dense_first_margin" in f.value else 0))
    f.done()
    if fusion.dense_weight == fusion.lexical_weight == 0:
        raise CapsuleFormatError("manifest.lexical.fusion weights are both 0")
    engine = x.str("format", choices=tuple(LEXICAL_NORMALISERS))
    normaliser = x.str("normaliser", choices=(LEXICAL_NORMALISERS[engine],))
    if engine == "sqlite-fts5":
        plaintext_bytes = x.int("plaintext_bytes", 512, MAX_LEXICAL_PLAINTEXT_BYTES)
        page_bytes = x.int("page_bytes", 512, 65536)
    else:  # an archive of tantivy files (§5.6): header, table and meta.json at least
        plaintext_bytes = x.int("plaintext_bytes", 64, MAX_LEXICAL_PLAINTEXT_BYTES)
        page_bytes = 0
    info = LexicalInfo(format=engine, normaliser=normaliser, plaintext_bytes=plaintext_bytes,
                       n_rows=x.int("n_rows", 1, MAX_ITEMS), page_bytes=page_bytes, fusion=fusion)
    x.done()
    if engine == "sqlite-fts5" and (info.page_bytes & (info.page_bytes - 1) or info.plaintext_bytes % info.page_bytes):
        raise CapsuleFormatError(f"manifest.lexical: page_bytes {info.page_bytes} is not a power of two dividing "
                                 f"plaintext_bytes {info.plaintext_bytes}")
    if info.n_rows != n_chunks:
        raise CapsuleFormatError(f"manifest.lexical.n_rows is {info.n_rows}, n_chunks is {n_chunks}")
    return info


def _parse_segments(x: _Obj, *, capsule_version: int) -> SegmentsInfo:
    """The optional ``segments`` object (FORMAT.md §4.7)."""
    pins = []
    for n, raw in enumerate(x.list("base", 1, MAX_BASE_SEGMENTS)):
        p = _Obj(raw, f"manifest.segments.base[{n}]")
        pins.append(SegmentPin(version=p.int("version", 1), manifest_sha256=p.str("manifest_sha256", _HEX64, 64),
                               n_chunks=p.int("n_chunks", 1, MAX_ITEMS)))
        p.done()
    versions = [pin.version for pin in pins] + [capsule_version]
    if any(a >= b for a, b in zip(versions, versions[1:])):
        raise CapsuleFormatError("manifest.segments.base versions must increase, and stay below the capsule's "
                                 f"version {capsule_version}")
    if len({pin.manifest_sha256 for pin in pins}) != len(pins):
        raise CapsuleFormatError("manifest.segments.base names one segment twice")
    base_chunks = sum(pin.n_chunks for pin in pins)
    if base_chunks > MAX_ITEMS:
        raise CapsuleFormatError(f"manifest.segments.base holds {base_chunks} chunks, limit is {MAX_ITEMS}")
    tombstones = []
    previous_end = -1
    for n, raw in enumerate(x.list("tombstones", 0, MAX_TOMBSTONE_RANGES)):
        if (not isinstance(raw, list) or len(raw) != 2 or not all(type(v) is int for v in raw)):
            raise CapsuleFormatError(f"manifest.segments.tombstones[{n}] is not a [start, end] pair of integers")
        start, end = raw
        if not 0 <= start < end <= base_chunks:
            raise CapsuleFormatError(f"manifest.segments.tombstones[{n}] = [{start}, {end}] names chunks that do not "
                                     f"exist: the earlier segments hold chunks 0..{base_chunks - 1}")
        if start <= previous_end:
            raise CapsuleFormatError(f"manifest.segments.tombstones[{n}] is not after the range before it "
                                     "(ranges are sorted, disjoint and not touching)")
        tombstones.append((start, end))
        previous_end = end
    x.done()
    return SegmentsInfo(tuple(pins), tuple(tombstones))


def segments_to_json(info: SegmentsInfo) -> dict[str, Any]:
    """The manifest's ``segments`` object for ``info`` (the writer's side of the parser)."""
    return {"base": [{"version": p.version, "manifest_sha256": p.manifest_sha256, "n_chunks": p.n_chunks}
                     for p in info.base],
            "tombstones": [[start, end] for start, end in info.tombstones]}


def lexical_to_json(info: LexicalInfo) -> dict[str, Any]:
    """The manifest's ``lexical`` object for ``info`` (the writer's side of the parser)."""
    f = info.fusion
    return {"format": info.format, "normaliser": info.normaliser, "plaintext_bytes": info.plaintext_bytes,
            "n_rows": info.n_rows, **({"page_bytes": info.page_bytes} if info.format == "sqlite-fts5" else {}),
            "fusion": {"method": f.method, "k": f.k, "dense_weight": f.dense_weight,
                       "lexical_weight": f.lexical_weight, "depth": f.depth,
                       **({"exact_first_max_tokens": f.exact_first_max_tokens}
                          if f.exact_first_max_tokens != MAX_EXACT_FIRST_TOKENS else {}),
                       **({"dense_first_margin": f.dense_first_margin} if f.dense_first_margin else {})}}


def lexical_summary(info: LexicalInfo | None) -> dict[str, Any] | None:
    """What ``edge info`` shows of the lexical index: its format, rows and every fusion parameter
    (defaults included, unlike ``lexical_to_json``); ``None`` without a lexical index."""
    if info is None:
        return None
    f = info.fusion
    return {"format": info.format, "normaliser": info.normaliser, "n_rows": info.n_rows,
            "plaintext_bytes": info.plaintext_bytes,
            "fusion": {"method": f.method, "k": f.k, "dense_weight": f.dense_weight,
                       "lexical_weight": f.lexical_weight, "depth": f.depth,
                       "exact_first_max_tokens": f.exact_first_max_tokens,
                       "dense_first_margin": f.dense_first_margin}}


def stanza_to_json(stanza: Stanza) -> dict[str, Any]:
    """Return the manifest JSON object for ``stanza`` (FORMAT.md §7)."""
    out: dict[str, Any] = {"type": stanza.type, "body": base64.b64encode(stanza.body).decode("ascii")}
    if stanza.type == "x25519":
        out["epk"] = base64.b64encode(stanza.epk).decode("ascii")
    else:
        out["salt"] = base64.b64encode(stanza.salt).decode("ascii")
        out["log_n"] = stanza.log_n
    return out


@dataclass(frozen=True)
class SignatureEntry:
    """One Ed25519 signature from SIGS: signer key id (hex) and 64 raw bytes."""

    keyid: str
    sig: bytes


def parse_signatures(data: bytes) -> tuple[SignatureEntry, ...]:
    """Parse the SIGS section.

    Raises:
        CapsuleFormatError: not canonical JSON, 0 or more than 16 entries,
            a malformed or duplicate key id, or a signature that is not 64 bytes.

    Source: FORMAT.md §9.
    """
    top = _Obj(parse_canonical_json(data, what="signatures"), "signatures")
    entries = []
    seen = set()
    for n, raw in enumerate(top.list("signatures", 1, MAX_SIGNATURES)):
        e = _Obj(raw, f"signatures[{n}]")
        keyid = e.str("keyid", _HEX64, 64)
        sig = e.b64("sig", 64)
        e.done()
        if keyid in seen:
            raise CapsuleFormatError(f"signatures list key {keyid[:16]} twice")
        seen.add(keyid)
        entries.append(SignatureEntry(keyid, sig))
    top.done()
    return tuple(entries)


def signatures_to_bytes(entries: list[SignatureEntry]) -> bytes:
    """Serialise signatures to canonical SIGS bytes (FORMAT.md §9)."""
    return canonical_json(
        {"signatures": [{"keyid": e.keyid, "sig": base64.b64encode(e.sig).decode("ascii")} for e in entries]}
    )
