"""Writer side of FORMAT.md §6-§9: content key, stanzas, frame payloads, signatures.

The reader side is ``edge.sealed`` and ``edge.verify``; both import their
constants from there so the two cannot drift.

Randomness is injected: every random value comes from a ``Randomness`` object,
which is the OS (``os.urandom``) in production and an HKDF stream of a seed for
reproducible builds and test vectors.

Source: FORMAT.md §6-§9; age-encryption.org/v1.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

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


class FramePacker:
    """Greedily packs chunk records into frames whose sealed payload fits a QR symbol.

    A frame's payload is ``1 + len(deflate(records)) + 16`` bytes; records are added
    while that stays within ``capacity_bytes``. Compressing a frame's records together
    (not chunk by chunk) lets DEFLATE use the overlap and shared vocabulary.

    Usage::

        packer = FramePacker(capacity_bytes=2953)
        for record in records:
            for frame_records, compressed in packer.add(record): ...
        for frame_records, compressed in packer.finish(): ...
    """

    OVERHEAD_BYTES = 1 + 16

    def __init__(self, capacity_bytes: int, max_plaintext_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.max_plaintext_bytes = max_plaintext_bytes
        self._reset()

    def _reset(self) -> None:
        self._comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
        self._emitted = bytearray()
        self._records: list[bytes] = []
        self._plain_bytes = 0

    def _trial(self, record: bytes) -> tuple[object, bytes, int]:
        comp = self._comp.copy()
        emitted = self._emitted + comp.compress(record)
        total = len(emitted) + len(comp.copy().flush()) + self.OVERHEAD_BYTES
        return comp, bytes(emitted), total

    def add(self, record: bytes) -> list[tuple[list[bytes], bytes]]:
        """Add one record; return the frames completed by it (0 or 1).

        Raises:
            ValueError: a single record does not fit an empty frame (caller maps
                this to ``CapacityError`` with the chunk id).
        """
        done = []
        comp, emitted, total = self._trial(record)
        fits = total <= self.capacity_bytes and self._plain_bytes + len(record) <= self.max_plaintext_bytes
        if not fits and self._records:
            done.append(self._flush())
            comp, emitted, total = self._trial(record)
            fits = total <= self.capacity_bytes and len(record) <= self.max_plaintext_bytes
        if not fits:
            raise ValueError(f"record of {len(record)} bytes compresses to {total} > {self.capacity_bytes}")
        self._comp, self._emitted = comp, bytearray(emitted)
        self._records.append(record)
        self._plain_bytes += len(record)
        return done

    def _flush(self) -> tuple[list[bytes], bytes]:
        compressed = bytes(self._emitted + self._comp.flush())
        records = self._records
        self._reset()
        return records, compressed

    def finish(self) -> list[tuple[list[bytes], bytes]]:
        """Return the last, partly filled frame (if any)."""
        return [self._flush()] if self._records else []


def seal_frame(payload_key: bytes, compressed: bytes, *, capsule_id: bytes, version: int,
               frame_index: int, first_chunk_id: int, n_slots: int) -> bytes:
    """Return a frame's QR payload: version byte + ChaCha20-Poly1305 ciphertext (FORMAT.md §6)."""
    ad = frame_ad(capsule_id, version, frame_index, first_chunk_id, n_slots)
    return bytes([PAYLOAD_VERSION]) + ChaCha20Poly1305(payload_key).encrypt(frame_nonce(frame_index), compressed, ad)


def sign_manifest(manifest_bytes: bytes, signing_keys: Sequence[Ed25519PrivateKey]) -> list[SignatureEntry]:
    """Return one Ed25519 signature per key over the manifest (FORMAT.md §9), sorted by key id."""
    entries = [SignatureEntry(keyid(k.public_key()), k.sign(signed_message(manifest_bytes))) for k in signing_keys]
    return sorted(entries, key=lambda e: e.keyid)


def records_digest_update(hasher: "hashlib._Hash", record: bytes) -> None:
    """Feed one record into the content digest (length-prefixed, so boundaries count)."""
    hasher.update(len(record).to_bytes(8, "little"))
    hasher.update(record)
