"""Writer side of FORMAT.md §6-§9: content key, stanzas, frame payloads, signatures.

The reader side is ``edge.sealed`` and ``edge.verify``; both import their
constants from there so the two cannot drift.

Randomness is injected: every random value comes from a ``Randomness`` object,
which is the OS (``os.urandom``) in production and an HKDF stream of a seed for
reproducible builds and test vectors.

Source: FORMAT.md §6-§9; age-encryption.org/v1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
import zstandard

from edge.keys import Passphrase, keyid, raw_public_bytes
from edge.manifest import SignatureEntry, Stanza
from edge.sealed import (
    INFO_CONTENT_KEY,
    PAYLOAD_VERSION,
    RECORD_HEADER,
    frame_ad,
    frame_nonce,
    hkdf_sha256,
    scrypt_wrap_key,
    stanza_ad,
    x25519_wrap_key,
)
from edge.verify import signed_message

DEFAULT_SCRYPT_LOG_N = 15


class Randomness:
    """Source of random bytes: the OS, or a deterministic stream from a seed.

    ``Randomness(seed=b"...")`` gives the same bytes for the same seed and labels,
    for reproducible builds; each ``take(label, n)`` is HKDF(seed, info=label#i).
    """

    def __init__(self, seed: bytes | None = None) -> None:
        self._seed = seed
        self._counter = 0

    @property
    def is_deterministic(self) -> bool:
        """True when bytes come from a seed rather than the OS."""
        return self._seed is not None

    def take(self, label: str, n_bytes: int) -> bytes:
        """Return ``n_bytes`` random bytes for purpose ``label``."""
        if self._seed is None:
            return os.urandom(n_bytes)
        self._counter += 1
        info = f"edge-capsule/builder-rng/{label}/{self._counter}".encode()
        return hkdf_sha256(self._seed, salt=b"", info=info, length=n_bytes)


def derive_content_key(random_bytes: bytes, content_digest: bytes) -> bytes:
    """Return the content key: HKDF(random, salt = SHA-256 of all chunk records) (FORMAT.md §8)."""
    return hkdf_sha256(random_bytes, salt=content_digest, info=INFO_CONTENT_KEY)


def wrap_for_device(content_key: bytes, recipient: X25519PublicKey, capsule_id: bytes, rng: Randomness) -> Stanza:
    """Return an X25519 stanza wrapping ``content_key`` for one device (FORMAT.md §7)."""
    ephemeral = X25519PrivateKey.from_private_bytes(rng.take("x25519-ephemeral", 32))
    epk = raw_public_bytes(ephemeral.public_key())
    wrap = x25519_wrap_key(ephemeral.exchange(recipient), epk, raw_public_bytes(recipient))
    body = ChaCha20Poly1305(wrap).encrypt(bytes(12), content_key, stanza_ad(capsule_id))
    return Stanza("x25519", body, epk=epk)


def wrap_for_passphrase(content_key: bytes, passphrase: Passphrase, capsule_id: bytes, rng: Randomness,
                        log_n: int = DEFAULT_SCRYPT_LOG_N) -> Stanza:
    """Return a scrypt stanza wrapping ``content_key`` under a passphrase (FORMAT.md §7)."""
    salt = rng.take("scrypt-salt", 16)
    wrap = scrypt_wrap_key(passphrase.secret, salt, log_n)
    body = ChaCha20Poly1305(wrap).encrypt(bytes(12), content_key, stanza_ad(capsule_id))
    return Stanza("scrypt", body, salt=salt, log_n=log_n)


def encode_record(doc_index: int, char_start: int, char_end: int, text: str) -> bytes:
    """Return one chunk record of a frame plaintext (FORMAT.md §6)."""
    data = text.encode("utf-8")
    return RECORD_HEADER.pack(doc_index, char_start, char_end, len(data)) + data


def zstd_bound(n_bytes: int) -> int:
    """The most bytes zstd's one-shot compression of ``n_bytes`` can produce, frame included
    (``ZSTD_COMPRESSBOUND`` in zstd.h)."""
    return n_bytes + (n_bytes >> 8) + ((128 * 1024 - n_bytes) >> 11 if n_bytes < 128 * 1024 else 0)


class FramePacker:
    """Greedily packs chunk records into frames whose sealed payload fits a QR symbol.

    A frame's payload is ``1 + len(zstd(records)) + 16`` bytes (FORMAT.md §6); records are
    added while that stays within ``capacity_bytes``. Compressing a frame's records together
    (not chunk by chunk) lets zstd use the chunk overlap and shared vocabulary. To keep the
    builder fast, a frame is compressed only once its size, estimated from the previous
    frame's ratio, nears the capacity; the size that decides is always an exact compression.
    The last two compressions are reused when the same records are compressed again (a frame
    that overflows is emitted with the records compressed one add before), and a record whose
    zstd bound fits an empty frame is not compressed alone to prove it.

    Usage::

        packer = FramePacker(2953, 65536, compressor.compress)
        for record in records:
            for frame_records, compressed in packer.add(record): ...
        for frame_records, compressed in packer.finish(): ...
    """

    OVERHEAD_BYTES = 1 + 16
    #: Fraction of the capacity below which a frame is not compressed to check its size.
    LAZY_FRACTION = 0.85

    def __init__(self, capacity_bytes: int, max_plaintext_bytes: int, compress: Callable[[bytes], bytes]) -> None:
        self.capacity_bytes = capacity_bytes
        self.max_plaintext_bytes = max_plaintext_bytes
        self._limit = capacity_bytes - self.OVERHEAD_BYTES
        self._compress = compress
        self._ratio = 0.5
        self._records: list[bytes] = []
        self._plain_bytes = 0
        self._recent: list[tuple[bytes, bytes]] = []  # the last two (plaintext, compression)
        self.n_compressions = 0

    def _compressed(self, records: list[bytes]) -> bytes:
        plaintext = b"".join(records)
        for seen, compressed in self._recent:
            if seen == plaintext:
                return compressed
        self.n_compressions += 1
        compressed = self._compress(plaintext)
        self._recent = [*self._recent[-1:], (plaintext, compressed)]
        return compressed

    def add(self, record: bytes) -> list[tuple[list[bytes], bytes]]:
        """Add one record; return the frames completed by it (0 or more).

        Raises:
            ValueError: a single record does not fit an empty frame (caller maps
                this to ``CapacityError`` with the chunk id).
        """
        if len(record) > self.max_plaintext_bytes:
            raise ValueError(f"record of {len(record)} bytes exceeds the {self.max_plaintext_bytes}-byte frame plaintext")
        done: list[tuple[list[bytes], bytes]] = []
        if self._records and self._plain_bytes + len(record) > self.max_plaintext_bytes:
            done += self._emit()
        self._records.append(record)
        self._plain_bytes += len(record)
        if self._plain_bytes * self._ratio >= self.LAZY_FRACTION * self._limit:
            if len(self._compressed(self._records)) > self._limit:
                self._records.pop()
                self._plain_bytes -= len(record)
                if self._records:
                    done += self._emit()
                self._records, self._plain_bytes = [record], len(record)
                if zstd_bound(len(record)) > self._limit:  # else it fits an empty frame, compressed or not
                    size = len(self._compressed(self._records))
                    if size > self._limit:
                        raise ValueError(f"record of {len(record)} bytes compresses to {size + self.OVERHEAD_BYTES} "
                                         f"> {self.capacity_bytes}")
        return done

    def _emit(self) -> list[tuple[list[bytes], bytes]]:
        """Compress the pending records into frames (normally one; more only if the lazy
        estimate was too optimistic, by moving trailing records to a following frame)."""
        out = []
        records = self._records
        while records:
            n = len(records)
            compressed = self._compressed(records)
            while len(compressed) > self._limit and n > 1:
                n -= 1
                compressed = self._compressed(records[:n])
            if len(compressed) > self._limit:
                raise ValueError(f"record of {len(records[0])} bytes compresses to "
                                 f"{len(compressed) + self.OVERHEAD_BYTES} > {self.capacity_bytes}")
            self._ratio = min(1.5, max(0.05, len(compressed) / sum(len(r) for r in records[:n])))
            out.append((records[:n], compressed))
            records = records[n:]
        self._records, self._plain_bytes = [], 0
        return out

    def finish(self) -> list[tuple[list[bytes], bytes]]:
        """Return the last, partly filled frame(s), if any."""
        return self._emit() if self._records else []


def seal_frame(payload_key: bytes, compressed: bytes, *, capsule_id: bytes, version: int,
               frame_index: int, first_chunk_id: int, n_slots: int) -> bytes:
    """Return a frame's QR payload: version byte + ChaCha20-Poly1305 ciphertext (FORMAT.md §6)."""
    ad = frame_ad(capsule_id, version, frame_index, first_chunk_id, n_slots)
    return bytes([PAYLOAD_VERSION]) + ChaCha20Poly1305(payload_key).encrypt(frame_nonce(frame_index), compressed, ad)


def sign_manifest(manifest_bytes: bytes, signing_keys: Sequence[Ed25519PrivateKey]) -> list[SignatureEntry]:
    """Return one Ed25519 signature per key over the manifest (FORMAT.md §9), sorted by key id."""
    entries = [SignatureEntry(keyid(k.public_key()), k.sign(signed_message(manifest_bytes))) for k in signing_keys]
    return sorted(entries, key=lambda e: e.keyid)


#: zstd level of the frame payloads (``build_capsule(zstd_level=)``). Measured on SciFact
#: (12,102 chunks, 2 workers, AMD EPYC 2 vCPU, dictionary as built): level 19 packs in 3.70 s for
#: 2,503,628 payload bytes (883 frames); 15: 2.57 s, +0.4% bytes (886 frames, +0.3% MP4);
#: 9: 1.08 s, +4.6% (925 frames); 3: 0.59 s, +13.5% (1,008 frames). 15 keeps the video within
#: 0.3% of the smallest and puts the stages after embedding over 2,000 chunks/s (issue 15).
PAYLOAD_ZSTD_LEVEL = 15
DOCS_ZSTD_LEVEL = 19
#: Largest payload dictionary the builder trains, and the share of the text it may cost.
MAX_DICTIONARY_BYTES = 64 * 1024
DICTIONARY_TEXT_FRACTION = 32
MIN_DICTIONARY_BYTES = 1024


def payload_compressor(dictionary: bytes = b"", level: int = PAYLOAD_ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    """Return the zstd compressor for frame payloads: no content size, checksum or dict id (FORMAT.md §6)."""
    kwargs = {"dict_data": zstandard.ZstdCompressionDict(dictionary)} if dictionary else {}
    return zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=False,
                                    write_dict_id=False, **kwargs)


def compress_documents(plaintext: bytes) -> bytes:
    """Return the DOCS plaintext as one zstd frame with its content size (FORMAT.md §8)."""
    return zstandard.ZstdCompressor(level=DOCS_ZSTD_LEVEL, write_checksum=False, write_content_size=True,
                                    write_dict_id=False).compress(plaintext)


def train_payload_dictionary(samples: Sequence[bytes], raw_text_bytes: int) -> bytes:
    """Return a zstd dictionary trained on chunk records, or ``b""`` when one would not pay.

    The size is ``raw_text_bytes / 32`` up to 64 KiB (the section costs its size once; on
    SciFact a 64 KiB dictionary cuts frame payloads from 0.41 to 0.31 of the text). Training is
    deterministic for the same samples (zstd's COVER trainer, one thread).

    Args:
        samples: chunk records (or texts) representative of frame plaintexts; a sequence
            supporting ``len`` and step slices (a ``ByteSpool`` works; its ``n_bytes`` is used).
        raw_text_bytes: UTF-8 bytes of all document text.

    Source: FORMAT.md §5.4; zstd's dictionary builder (zdict.h).
    """
    size = min(MAX_DICTIONARY_BYTES, raw_text_bytes // DICTIONARY_TEXT_FRACTION)
    if size < MIN_DICTIONARY_BYTES or len(samples) < 16:
        return b""
    budget = 100 * size  # zstd's guidance: ~100x the dictionary size of samples
    total = getattr(samples, "n_bytes", None)
    total = sum(len(s) for s in samples) if total is None else total
    step = max(1, total // budget)
    chosen = list(samples[::step])
    try:
        # Fixed COVER parameters: zstd's parameter search took 19 s on SciFact for a 0.3%
        # smaller payload than k=64, d=6 (0.2 s): /tmp/trainprof.py in the build-speed note.
        return zstandard.train_dictionary(size, chosen, k=64, d=6, threads=1).as_bytes()
    except zstandard.ZstdError:
        return b""  # too few or too uniform samples: frames are compressed without a dictionary
