"""Authenticated decryption of capsule content: key unwrap, STREAM sections, frames.

Owns FORMAT.md §6 (frame payloads), §7 (recipient stanzas) and §8 (key
derivation, STREAM). Functions take bytes and keys and return bytes; no file IO.
Every authentication failure raises the same opaque ``DecryptionError``.

Example::

    content_key = unwrap_content_key(manifest, [device_key])
    keys = derive_keys(content_key, manifest.capsule_id_bytes)
    docs_json = open_stream(keys.docs, docs_section)
    records = open_frame(keys.payload, qr_bytes, manifest=manifest, frame_index=3,
                         first_chunk_id=12, n_slots=4)

Source: FORMAT.md §6-§8; age-encryption.org/v1 (stanzas, STREAM); RFC 8439
(ChaCha20-Poly1305, chosen over AES-GCM because the Raspberry Pi 4's Cortex-A72
has no AES instructions); RFC 5869 (HKDF).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
import zstandard

from .errors import BudgetExceededError, CapsuleFormatError, DecryptionError
from .keys import ContentKey, Passphrase, raw_public_bytes
from .manifest import MAX_RECIPIENTS, SCRYPT_LOG_N_RANGE, Manifest, Stanza

log = logging.getLogger(__name__)

TAG_BYTES = 16
KEY_BYTES = 32
STREAM_SEGMENT_BYTES = 64 * 1024
PAYLOAD_VERSION = 1
RECORD_HEADER = struct.Struct("<IIII")  # doc_index, char_start, char_end, text_bytes

INFO_X25519 = b"edge-capsule/v1/x25519"
INFO_SCRYPT_SALT = b"edge-capsule/v1/scrypt"
AD_STANZA = b"edge-capsule/v1/stanza"
AD_FRAME = b"edge-capsule/v1/frame\x00"
INFO_PAYLOAD = b"edge-capsule/v1/payload"
INFO_SECTION_PREFIX = b"edge-capsule/v1/section/"
#: Sections sealed with STREAM under their own key (FORMAT.md §8).
STREAM_SECTIONS = ("DOCS", "ZDIC", "PROJ", "VECS", "INDX", "LEXI")
INFO_CONTENT_KEY = b"edge-capsule/v1/content-key"

_DECRYPTION_FAILED = "decryption failed: wrong key, or the capsule was altered"


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """Return HKDF-SHA256(ikm, salt, info) of ``length`` bytes (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def x25519_wrap_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    """Return the stanza wrap key for an X25519 shared secret (FORMAT.md §7)."""
    return hkdf_sha256(shared, salt=epk + recipient, info=INFO_X25519)


def scrypt_wrap_key(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    """Return the stanza wrap key for a passphrase; ``log_n`` is checked first (FORMAT.md §7).

    Raises:
        CapsuleFormatError: ``log_n`` outside 10..18 (bounded work, 256 MiB at most).
    """
    low, high = SCRYPT_LOG_N_RANGE
    if not low <= log_n <= high:
        raise CapsuleFormatError(f"scrypt work factor 2^{log_n} outside 2^{low}..2^{high}")
    return Scrypt(salt=INFO_SCRYPT_SALT + salt, length=KEY_BYTES, n=1 << log_n, r=8, p=1).derive(passphrase)


def stanza_ad(capsule_id: bytes) -> bytes:
    """Associated data of a stanza body: binds the wrapped key to one capsule id."""
    return AD_STANZA + capsule_id


def _try_stanza(stanza: Stanza, identity: X25519PrivateKey | Passphrase, capsule_id: bytes) -> bytes | None:
    if stanza.type == "x25519" and isinstance(identity, X25519PrivateKey):
        try:
            shared = identity.exchange(X25519PublicKey.from_public_bytes(stanza.epk))
        except ValueError:  # all-zero shared secret (low-order point)
            return None
        wrap = x25519_wrap_key(shared, stanza.epk, raw_public_bytes(identity.public_key()))
    elif stanza.type == "scrypt" and isinstance(identity, Passphrase):
        wrap = scrypt_wrap_key(identity.secret, stanza.salt, stanza.log_n)
    else:
        return None
    try:
        return ChaCha20Poly1305(wrap).decrypt(bytes(12), stanza.body, stanza_ad(capsule_id))
    except InvalidTag:
        return None


#: X25519 stanzas tried per X25519 identity, at most: the manifest's recipient limit. One try is
#: an X25519 exchange, an HKDF and a ChaCha20-Poly1305 open (~0.1 ms on x86, ~0.5 ms on a Pi 4).
MAX_X25519_STANZAS = MAX_RECIPIENTS


def check_recipient_stanzas(recipients: Sequence[Stanza]) -> None:
    """Refuse a recipient list whose unwrap work is not bounded as age bounds it.

    A scrypt stanza MUST be the only stanza (age-encryption.org/v1: "the scrypt recipient
    stanza ... MUST be the only stanza in the header"), so one open runs scrypt at most once per
    passphrase; X25519 stanzas number at most ``MAX_X25519_STANZAS``. Total work before the first
    byte is decrypted is then at most one scrypt at ``2^log_n`` (``log_n`` <= 18: 256 MiB, ~1 s)
    per passphrase identity, or ``MAX_X25519_STANZAS`` X25519 tries per device key.

    Raises:
        CapsuleFormatError: no stanza, a scrypt stanza beside any other, or too many stanzas.

    Source: FORMAT.md §7; age-encryption.org/v1 (scrypt recipient stanza).
    """
    n_scrypt = sum(1 for s in recipients if s.type == "scrypt")
    if not recipients:
        raise CapsuleFormatError("manifest has no recipient stanza")
    if n_scrypt and len(recipients) != 1:
        raise CapsuleFormatError(f"a scrypt stanza must be the only recipient stanza, manifest has "
                                 f"{len(recipients)} ({n_scrypt} scrypt)")
    if len(recipients) > MAX_X25519_STANZAS:
        raise CapsuleFormatError(f"manifest has {len(recipients)} recipient stanzas, limit is {MAX_X25519_STANZAS}")


def unwrap_content_key(manifest: Manifest,
                       identities: Sequence[X25519PrivateKey | Passphrase | ContentKey]) -> bytes:
    """Return the 32-byte content key from the first stanza an identity opens.

    The stanza list is checked first (``check_recipient_stanzas``), so the work is bounded
    before any key derivation starts: at most one scrypt per passphrase, at most
    ``MAX_X25519_STANZAS`` X25519 tries per device key.

    Args:
        manifest: the verified manifest.
        identities: device X25519 private keys, passphrases and/or content keys the device
            store cached for this capsule, tried in order.

    Raises:
        CapsuleFormatError: a scrypt stanza beside another stanza, or too many stanzas.
        DecryptionError: no identity opens any stanza (one opaque message).

    Source: FORMAT.md §7; age-encryption.org/v1.
    """
    check_recipient_stanzas(manifest.recipients)
    capsule_id = manifest.capsule_id_bytes
    for identity in identities:
        if isinstance(identity, ContentKey):  # cached by the device store; checked by the first AEAD
            if (identity.capsule_id == manifest.capsule_id and len(identity.secret) == KEY_BYTES
                    and identity.manifest_sha256 in ("", hashlib.sha256(manifest.raw).hexdigest())):
                return identity.secret
            continue
        for stanza in manifest.recipients:
            key = _try_stanza(stanza, identity, capsule_id)
            if key is not None:
                return key
    log.warning("no identity opens any of the %d recipient stanzas", len(manifest.recipients))
    raise DecryptionError("no recipient stanza opens with the given identity: this capsule is not for this device")


@dataclass(frozen=True)
class ContentKeys:
    """Per-purpose 32-byte keys derived from the content key (FORMAT.md §8).

    Attributes:
        payload: the frame payload key.
        sections: STREAM key per section tag (``DOCS``, ``ZDIC``, ``PROJ``, ``VECS``, ``INDX``, ``LEXI``).
    """

    payload: bytes
    sections: dict[str, bytes]

    def section(self, tag: str) -> bytes:
        """Return the STREAM key of section ``tag``."""
        return self.sections[tag]

    def __repr__(self) -> str:
        return "ContentKeys(<hidden>)"


def derive_keys(content_key: bytes, capsule_id: bytes) -> ContentKeys:
    """Derive the payload key and one key per STREAM section (FORMAT.md §8)."""
    return ContentKeys(
        payload=hkdf_sha256(content_key, salt=capsule_id, info=INFO_PAYLOAD),
        sections={tag: hkdf_sha256(content_key, salt=capsule_id, info=INFO_SECTION_PREFIX + tag.encode("ascii"))
                  for tag in STREAM_SECTIONS},
    )


#: HKDF info of the key that authenticates a device store's copy of an installed capsule's parsed
#: document table (FORMAT.md §13.8); derived from the DOCS section key, so only a holder of the
#: content key can make one.
INFO_STORE_DOCUMENTS_TABLE = b"edge-capsule/v1/store/documents-table"
#: Bytes of the HMAC-SHA256 tag that ends that copy.
STORE_TABLE_TAG_BYTES = 32


def seal_store_table(body: bytes, keys: ContentKeys, manifest: Manifest) -> bytes:
    """``body`` (``edge.hits.table_columns_to_bytes``) followed by its tag: HMAC-SHA256 (RFC 2104)
    under a key derived from ``keys``' DOCS key, over the manifest's SHA-256 and ``body``, so the
    copy is bound to this capsule version (FORMAT.md §13.8)."""
    return body + _store_table_tag(body, keys, manifest)


def open_store_table(data: bytes, keys: ContentKeys, manifest: Manifest) -> memoryview:
    """The body of a ``seal_store_table`` copy (a view of ``data``, not a copy), once its tag is
    checked (constant time).

    Raises:
        IntegrityError: the tag does not match: the copy was changed, or belongs to another
            capsule, version or key.
    """
    import hmac

    from .errors import IntegrityError

    body, tag = memoryview(data)[:-STORE_TABLE_TAG_BYTES], bytes(data[-STORE_TABLE_TAG_BYTES:])
    if len(data) < STORE_TABLE_TAG_BYTES or not hmac.compare_digest(tag, _store_table_tag(body, keys, manifest)):
        raise IntegrityError("the store's copy of the document list fails its authentication tag")
    return body


def _store_table_tag(body: bytes | memoryview, keys: ContentKeys, manifest: Manifest) -> bytes:
    import hmac

    key = hkdf_sha256(keys.section("DOCS"), salt=manifest.capsule_id_bytes, info=INFO_STORE_DOCUMENTS_TABLE)
    mac = hmac.new(key, hashlib.sha256(manifest.raw).digest(), hashlib.sha256)
    mac.update(body)
    return mac.digest()


def _stream_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def stream_plaintext_bytes(sealed_bytes: int) -> int:
    """Return the plaintext length of a STREAM ciphertext of ``sealed_bytes``.

    Raises:
        CapsuleFormatError: no plaintext length gives that ciphertext length.
    """
    full = STREAM_SEGMENT_BYTES + TAG_BYTES
    n_full, rest = divmod(sealed_bytes, full)
    if rest == 0 and n_full > 0:
        return n_full * STREAM_SEGMENT_BYTES  # last segment is a full one
    if rest < TAG_BYTES:
        raise CapsuleFormatError(f"encrypted section of {sealed_bytes} bytes has a truncated segment")
    return n_full * STREAM_SEGMENT_BYTES + rest - TAG_BYTES


def iter_open_stream(key: bytes, sealed: bytes | memoryview) -> Iterator[bytes]:
    """Yield the plaintext segments of a STREAM ciphertext, each authenticated.

    ``sealed`` is bytes-like or any object with ``len`` and contiguous slicing that returns
    bytes (``edge.container.SectionReader``: a section read by pread, segment by segment).

    Memory use is one 64 KiB segment at a time.

    Raises:
        CapsuleFormatError: the length fits no plaintext length.
        DecryptionError: a segment fails authentication (altered, reordered, truncated).

    Source: FORMAT.md §8; age STREAM.
    """
    stream_plaintext_bytes(len(sealed))
    aead = ChaCha20Poly1305(key)
    # bytes-like input is sliced without copying; a ``container.SectionReader`` reads each slice
    view = memoryview(sealed) if isinstance(sealed, (bytes, bytearray, memoryview)) else sealed
    full = STREAM_SEGMENT_BYTES + TAG_BYTES
    n_segments = max(1, -(-len(view) // full))
    for counter in range(n_segments):
        segment = view[counter * full:(counter + 1) * full]
        try:
            yield aead.decrypt(_stream_nonce(counter, counter == n_segments - 1), bytes(segment), None)
        except InvalidTag:
            log.warning("STREAM segment %d of %d fails authentication", counter, n_segments)
            raise DecryptionError(_DECRYPTION_FAILED) from None


def open_stream(key: bytes, sealed: bytes | memoryview) -> bytes:
    """Return the whole plaintext of a STREAM ciphertext (for small sections).

    Raises:
        CapsuleFormatError, DecryptionError: see ``iter_open_stream``.
    """
    return b"".join(iter_open_stream(key, sealed))


def seal_stream(key: bytes, plaintext_segments: Iterable[bytes]) -> Iterator[bytes]:
    """Yield STREAM ciphertext for plaintext given in any pieces (writer side).

    Source: FORMAT.md §8.
    """
    aead = ChaCha20Poly1305(key)
    buffer = bytearray()
    counter = 0
    for piece in plaintext_segments:
        buffer += piece
        while len(buffer) > STREAM_SEGMENT_BYTES:  # keep >= 1 byte for the last segment
            yield aead.encrypt(_stream_nonce(counter, False), bytes(buffer[:STREAM_SEGMENT_BYTES]), None)
            del buffer[:STREAM_SEGMENT_BYTES]
            counter += 1
    yield aead.encrypt(_stream_nonce(counter, True), bytes(buffer), None)


def frame_nonce(frame_index: int) -> bytes:
    """Return the 12-byte nonce of frame ``frame_index``: 4 zero bytes + u64 big-endian."""
    return bytes(4) + frame_index.to_bytes(8, "big")


def frame_ad(manifest_capsule_id: bytes, version: int, frame_index: int, first_chunk_id: int, n_slots: int) -> bytes:
    """Return a frame's associated data (FORMAT.md §6)."""
    return AD_FRAME + manifest_capsule_id + struct.pack("<QQII", version, frame_index, first_chunk_id, n_slots)


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk as stored in a frame: source position and text (FORMAT.md §6)."""

    doc_index: int
    char_start: int
    char_end: int
    text: str


#: zstd window accepted by default: the frame plaintext limit (FORMAT.md §10). A streaming
#: decoder allocates the window a frame header asks for (up to 128 MiB without this bound).
MAX_FRAME_WINDOW_BYTES = 1 << 20
#: zstd window accepted for DOCS: 8 MiB, the window of zstd level 19, the builder's level.
MAX_DOCS_WINDOW_BYTES = 8 << 20


def zstd_decompressor(dictionary: bytes = b"", *,
                      max_window_bytes: int = MAX_FRAME_WINDOW_BYTES) -> zstandard.ZstdDecompressor:
    """Return a zstd decompressor, using ``dictionary`` when it is non-empty (FORMAT.md §5.4).

    Frames whose header asks for a window over ``max_window_bytes`` are refused when read
    (``decompress_bounded`` raises ``CapsuleFormatError``), before the window is allocated.
    """
    if not dictionary:
        return zstandard.ZstdDecompressor(max_window_size=max_window_bytes)
    return zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary),
                                      max_window_size=max_window_bytes)


#: Bytes of canonical JSON per DOCS entry, on average, that a reader accepts (FORMAT.md §8):
#: ``{"bytes":N,"media_type":"...","name":"..."}`` with a path-length name fits in far less.
MAX_DOCUMENT_ENTRY_BYTES = 4096
#: DOCS bytes of headings a document may carry per chunk it has (FORMAT.md §8).
MAX_HEADING_BYTES_PER_CHUNK = 1024
#: Python objects per byte of JSON, at most: the parse peak of a document list is below this
#: many times its length (measured with tracemalloc on CPython 3.11: 7.9x for real lists,
#: 27.2x for the worst shape, ``[{},{},...]``).
JSON_PARSE_PEAK_FACTOR = 32


def docs_plaintext_limit(n_documents: int, hard_limit_bytes: int, n_chunks: int = 0) -> int:
    """Return the most DOCS plaintext bytes a reader accepts for ``n_documents`` entries.

    ``min(hard_limit_bytes, 64 + MAX_DOCUMENT_ENTRY_BYTES * n_documents
    + MAX_HEADING_BYTES_PER_CHUNK * n_chunks)``: the document list cannot declare more than its
    entries and their headings can fill (a writer keeps at most that many heading bytes), so a
    signed 64 MiB bomb with 2 entries and 10 chunks is refused from its header, before anything
    is inflated.

    Source: FORMAT.md §8 (DOCS), §10 (limits).
    """
    return min(hard_limit_bytes, 64 + MAX_DOCUMENT_ENTRY_BYTES * max(n_documents, 0)
               + MAX_HEADING_BYTES_PER_CHUNK * max(n_chunks, 0))


def zstd_content_size(data: bytes | memoryview, max_bytes: int, *, what: str) -> int:
    """Return the content size a zstd frame header declares, refusing one over ``max_bytes``.

    Reads only the frame header (RFC 8878 §3.1.1.1); nothing is inflated.

    Raises:
        CapsuleFormatError: not a zstd frame, no content size in the header, or a size over
            ``max_bytes``.
    """
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise CapsuleFormatError(f"{what} is not a zstd frame") from None
    if size < 0:
        raise CapsuleFormatError(f"{what} zstd frame does not record its content size")
    if size > max_bytes:
        raise CapsuleFormatError(f"{what} decompresses to {size} bytes, limit is {max_bytes}")
    return size


#: Output read from zstd per step while decompressing (the cap is checked after each step).
ZSTD_READ_PIECE_BYTES = 64 * 1024


def decompress_bounded(data: bytes, max_bytes: int, decompressor: zstandard.ZstdDecompressor,
                       *, what: str = "frame payload", require_content_size: bool = False) -> bytes:
    """Return the content of exactly one zstd frame, refusing output beyond ``max_bytes``.

    Streams: zstd's stream reader yields at most ``ZSTD_READ_PIECE_BYTES`` per step and
    decompression stops as soon as the output passes the cap (``max_bytes``, or the content size
    the header declares, whichever is smaller), so a bomb costs at most cap + 1 bytes of output
    and the time to produce them. The decompressor bounds zstd's window buffer
    (``zstd_decompressor``). A second pass, whose output is then known to be bounded, checks that
    the frame ends exactly at the end of ``data`` (the stream reader does not report leftovers).

    Args:
        data: one zstd frame and nothing else.
        max_bytes: the most output accepted; memory is bounded by about twice this.
        decompressor: from ``zstd_decompressor``.
        what: names the input in error messages.
        require_content_size: refuse a frame whose header does not record its size (DOCS).

    Raises:
        CapsuleFormatError: not a zstd frame, corrupt or truncated, trailing bytes, a missing
            content size where one is required, output over the cap (a decompression bomb), or
            a window larger than the decompressor allows.
        BudgetExceededError: the system refuses memory for the bounded output (``MemoryError``,
            e.g. under ``prlimit --data``).

    Source: FORMAT.md §6 (payloads), §8 (DOCS); RFC 8878 (zstd).
    """
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise CapsuleFormatError(f"{what} is not a zstd frame") from None
    if size > max_bytes:
        raise CapsuleFormatError(f"{what} decompresses to {size} bytes, limit is {max_bytes}")
    if size < 0 and require_content_size:
        raise CapsuleFormatError(f"{what} zstd frame does not record its content size")
    cap = max_bytes if size < 0 else size
    try:
        out = bytearray()
        reader = decompressor.stream_reader(data, read_across_frames=False)
        while True:
            piece = reader.read(min(ZSTD_READ_PIECE_BYTES, cap + 1 - len(out)))
            if not piece:
                break
            out += piece
            if len(out) > cap:
                log.warning("%s passes its %d-byte cap while decompressing; refused", what, cap)
                raise CapsuleFormatError(f"{what} decompresses to over {cap} bytes")
        stream = decompressor.decompressobj()
        again = stream.decompress(data)  # bounded: the same frame gave at most cap bytes above
    except MemoryError:
        raise BudgetExceededError(f"decompressing {what} needs up to {2 * cap} bytes, the system refused them",
                                  requested_bytes=2 * cap, available_bytes=0) from None
    except zstandard.ZstdError:
        raise CapsuleFormatError(f"{what} is not one zstd frame that decompresses within {cap} bytes") from None
    if not stream.eof:
        raise CapsuleFormatError(f"{what} zstd frame is truncated")
    if stream.unused_data or again != out:
        raise CapsuleFormatError(f"{what} has bytes after its zstd frame")
    if size >= 0 and len(again) != size:
        raise CapsuleFormatError(f"{what} decompresses to {len(again)} bytes, its header says {size}")
    return again


def parse_records(plaintext: bytes, n_slots: int, n_documents: int) -> list[ChunkRecord]:
    """Split a frame plaintext into exactly ``n_slots`` records.

    Raises:
        CapsuleFormatError: records do not fill the plaintext exactly, their count
            differs, a document index or position is out of range, or text is not UTF-8.
    """
    records = []
    pos = 0
    view = memoryview(plaintext)
    while pos < len(view):
        if len(view) - pos < RECORD_HEADER.size:
            raise CapsuleFormatError("frame plaintext ends inside a record header")
        doc_index, start, end, n = RECORD_HEADER.unpack_from(view, pos)
        pos += RECORD_HEADER.size
        if n > len(view) - pos:
            raise CapsuleFormatError(f"record text of {n} bytes overruns the frame plaintext")
        if doc_index >= n_documents or end <= start:
            raise CapsuleFormatError(f"record names document {doc_index} chars {start}..{end}, out of range")
        try:
            text = str(view[pos:pos + n], "utf-8")
        except UnicodeDecodeError:
            raise CapsuleFormatError("record text is not valid UTF-8") from None
        pos += n
        records.append(ChunkRecord(doc_index, start, end, text))
    if len(records) != n_slots:
        raise CapsuleFormatError(f"frame holds {len(records)} chunk records, frame table says {n_slots}")
    return records


def open_frame(
    payload_key: bytes,
    qr_payload: bytes,
    *,
    manifest: Manifest,
    frame_index: int,
    first_chunk_id: int,
    n_slots: int,
    decompressor: zstandard.ZstdDecompressor,
) -> list[ChunkRecord]:
    """Authenticate, decrypt and parse one frame's QR payload.

    Args:
        payload_key: from ``derive_keys``.
        qr_payload: the raw bytes decoded from the frame's QR code.
        manifest: the verified manifest (capsule id, version, limits).
        frame_index: which frame the bytes came from (bound by nonce and AD).
        first_chunk_id: FTAB's first chunk id for the frame.
        n_slots: FTAB's chunk count for the frame.
        decompressor: from ``zstd_decompressor`` with the capsule's ZDIC dictionary.

    Returns:
        ``n_slots`` records in chunk order.

    Raises:
        CapsuleFormatError: unknown payload version, too short, or malformed plaintext.
        DecryptionError: the AEAD rejects the payload (altered, moved or foreign).

    Source: FORMAT.md §6.
    """
    if len(qr_payload) < 1 + TAG_BYTES:
        raise CapsuleFormatError(f"frame {frame_index} payload is {len(qr_payload)} bytes, too short")
    if qr_payload[0] != PAYLOAD_VERSION:
        raise CapsuleFormatError(f"frame {frame_index} payload version {qr_payload[0]} is not {PAYLOAD_VERSION}")
    ad = frame_ad(manifest.capsule_id_bytes, manifest.version, frame_index, first_chunk_id, n_slots)
    try:
        compressed = ChaCha20Poly1305(payload_key).decrypt(frame_nonce(frame_index), bytes(qr_payload[1:]), ad)
    except InvalidTag:
        log.warning("frame %d payload fails authentication", frame_index)
        raise DecryptionError(_DECRYPTION_FAILED) from None
    plaintext = decompress_bounded(compressed, manifest.max_plaintext_bytes, decompressor)
    return parse_records(plaintext, n_slots, manifest.n_documents)


def sha256_hex(data: bytes | memoryview) -> str:
    """Return the SHA-256 of ``data`` as 64 hex chars."""
    return hashlib.sha256(data).hexdigest()
