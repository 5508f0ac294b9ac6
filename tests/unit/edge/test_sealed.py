"""Key wrap, STREAM and frame payload crypto, reader against writer (FORMAT.md §6-§9)."""

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import CapsuleFormatError, DecryptionError, SignatureError
from edge.keys import Passphrase
from edge.manifest import canonical_json, parse_manifest
from edge.sealed import (
    STREAM_SEGMENT_BYTES,
    decompress_bounded,
    derive_keys,
    open_frame,
    open_stream,
    stream_plaintext_bytes,
    unwrap_content_key,
    zstd_decompressor,
)
from edge.verify import verify_signatures
from firmware_tools.sealing import (
    FramePacker,
    Randomness,
    compress_documents,
    encode_record,
    payload_compressor,
    seal_frame,
    sign_manifest,
    wrap_for_device,
    wrap_for_passphrase,
)
from edge.sealed import seal_stream

CONTENT_KEY = bytes(range(32))


def _manifest(manifest_dict, stanzas):
    from edge.manifest import stanza_to_json

    manifest_dict["recipients"] = [stanza_to_json(s) for s in stanzas]
    return parse_manifest(canonical_json(manifest_dict))


def test_device_stanza_opens_only_with_its_key(manifest_dict):
    device, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    m = _manifest(manifest_dict, [wrap_for_device(CONTENT_KEY, device.public_key(), bytes(16), Randomness())])
    m = replace(m, capsule_id="00" * 16)
    assert unwrap_content_key(m, [device]) == CONTENT_KEY
    with pytest.raises(DecryptionError, match="not for this device"):
        unwrap_content_key(m, [other])


def test_stanza_is_bound_to_capsule_id(manifest_dict):
    device = X25519PrivateKey.generate()
    stanza = wrap_for_device(CONTENT_KEY, device.public_key(), bytes(16), Randomness())
    m = replace(_manifest(manifest_dict, [stanza]), capsule_id="11" * 16)
    with pytest.raises(DecryptionError):
        unwrap_content_key(m, [device])


def test_passphrase_stanza(manifest_dict):
    stanza = wrap_for_passphrase(CONTENT_KEY, Passphrase(b"correct horse"), bytes(16), Randomness(), log_n=10)
    m = replace(_manifest(manifest_dict, [stanza]), capsule_id="00" * 16)
    assert unwrap_content_key(m, [Passphrase(b"correct horse")]) == CONTENT_KEY
    with pytest.raises(DecryptionError):
        unwrap_content_key(m, [Passphrase(b"wrong horse")])


def test_seeded_randomness_is_reproducible_and_os_randomness_is_not():
    assert Randomness(b"s").take("a", 32) == Randomness(b"s").take("a", 32)
    assert Randomness(b"s").take("a", 32) != Randomness(b"t").take("a", 32)
    assert Randomness().take("a", 32) != Randomness().take("a", 32)


@pytest.mark.parametrize("n_bytes", [0, 1, STREAM_SEGMENT_BYTES - 1, STREAM_SEGMENT_BYTES,
                                     STREAM_SEGMENT_BYTES + 1, 3 * STREAM_SEGMENT_BYTES])
def test_stream_round_trip_lengths(n_bytes):
    data = bytes(i % 251 for i in range(n_bytes))
    sealed = b"".join(seal_stream(CONTENT_KEY, [data[:7], data[7:]]))
    assert stream_plaintext_bytes(len(sealed)) == n_bytes
    assert open_stream(CONTENT_KEY, sealed) == data


def test_stream_detects_truncation_at_segment_boundary_and_flips():
    data = bytes(3 * STREAM_SEGMENT_BYTES)
    sealed = b"".join(seal_stream(CONTENT_KEY, [data]))
    segment = STREAM_SEGMENT_BYTES + 16
    with pytest.raises(DecryptionError):  # drop the last segment: the new last lacks the last flag
        open_stream(CONTENT_KEY, sealed[: 2 * segment])
    flipped = bytearray(sealed)
    flipped[segment + 5] ^= 1
    with pytest.raises(DecryptionError):
        open_stream(CONTENT_KEY, bytes(flipped))
    with pytest.raises(CapsuleFormatError):
        open_stream(CONTENT_KEY, sealed[: segment + 3])


def _frame(manifest_dict, frame_index=2, first=4):
    m = parse_manifest(canonical_json(manifest_dict))
    keys = derive_keys(CONTENT_KEY, m.capsule_id_bytes)
    records = [encode_record(0, 0, 5, "hello"), encode_record(1, 10, 16, "wörld!")]
    packer = FramePacker(2953, 65536, payload_compressor().compress)
    for r in records:
        assert packer.add(r) == []
    ((packed, compressed),) = packer.finish()
    payload = seal_frame(keys.payload, compressed, capsule_id=m.capsule_id_bytes, version=m.version,
                         frame_index=frame_index, first_chunk_id=first, n_slots=2)
    return m, keys, payload


def test_frame_round_trip(manifest_dict):
    m, keys, payload = _frame(manifest_dict)
    records = open_frame(keys.payload, payload, manifest=m, frame_index=2, first_chunk_id=4, n_slots=2,
                         decompressor=zstd_decompressor())
    assert [r.text for r in records] == ["hello", "wörld!"] and records[1].doc_index == 1


@pytest.mark.parametrize("kwargs", [{"frame_index": 3}, {"first_chunk_id": 5}, {"n_slots": 3}])
def test_frame_moved_to_another_frame_or_slot_fails(manifest_dict, kwargs):
    m, keys, payload = _frame(manifest_dict)
    args = dict(frame_index=2, first_chunk_id=4, n_slots=2) | kwargs
    with pytest.raises(DecryptionError):
        open_frame(keys.payload, payload, manifest=m, decompressor=zstd_decompressor(), **args)


def test_frame_from_another_version_fails(manifest_dict):
    m, keys, payload = _frame(manifest_dict)
    with pytest.raises(DecryptionError):
        open_frame(keys.payload, payload, manifest=replace(m, version=4), frame_index=2, first_chunk_id=4, n_slots=2,
                   decompressor=zstd_decompressor())


def test_decompression_refuses_bomb_with_and_without_declared_size():
    bomb = payload_compressor().compress(bytes(10_000_000))  # no content size in the header
    assert len(bomb) < 2_000
    with pytest.raises(CapsuleFormatError, match="decompresses within 65536 bytes"):
        decompress_bounded(bomb, 65536, zstd_decompressor())
    declared = compress_documents(bytes(10_000_000))  # content size in the header: refused unread
    with pytest.raises(CapsuleFormatError, match="decompresses to 10000000 bytes, limit is 65536"):
        decompress_bounded(declared, 65536, zstd_decompressor())


def test_decompression_refuses_trailing_truncated_and_foreign_bytes():
    frame = payload_compressor().compress(b"hello " * 100)
    assert decompress_bounded(frame, 65536, zstd_decompressor()) == b"hello " * 100
    for bad in (frame + b"\0", frame[:-1], b"PK\x03\x04" + frame):
        with pytest.raises(CapsuleFormatError):
            decompress_bounded(bad, 65536, zstd_decompressor())
    with pytest.raises(CapsuleFormatError, match="does not record its content size"):
        decompress_bounded(frame, 65536, zstd_decompressor(), require_content_size=True)


def test_frame_compressed_with_a_dictionary_needs_that_dictionary():
    from firmware_tools.sealing import train_payload_dictionary

    samples = [f"chunk {i}: the quick brown fox {i % 7} jumps over the lazy dog {i % 5}".encode() for i in range(400)]
    dictionary = train_payload_dictionary(samples, raw_text_bytes=1 << 20)
    assert dictionary and len(dictionary) <= 32 * 1024
    frame = payload_compressor(dictionary).compress(samples[3])
    assert decompress_bounded(frame, 65536, zstd_decompressor(dictionary)) == samples[3]
    with pytest.raises(CapsuleFormatError):
        decompress_bounded(frame, 65536, zstd_decompressor())


def test_packer_splits_frames_by_compressed_capacity():
    import random

    rng = random.Random(1)
    records = [encode_record(0, i, i + 1, "".join(rng.choice("abcdefghij ") for _ in range(600))) for i in range(20)]
    packer = FramePacker(1000, 65536, payload_compressor().compress)
    frames = [f for r in records for f in packer.add(r)] + packer.finish()
    assert sum(len(f[0]) for f in frames) == 20 and len(frames) > 2
    assert all(len(compressed) + 17 <= 1000 for _, compressed in frames)
    assert [r for f in frames for r in f[0]] == records


def test_packer_reuses_a_compression_and_makes_the_same_frames():
    # The Python FAQ's text as 650-byte records in version-24 frames (1,171 bytes), with a
    # trained dictionary, as the builder packs them: the packer that reuses its last
    # compression and skips proving that one record fits alone makes the same frames as one
    # that compresses every time, with fewer compressions.
    from pathlib import Path

    from firmware_tools.sealing import train_payload_dictionary, zstd_bound

    docs = Path(__file__).resolve().parents[3] / "examples" / "python-faq" / "docs"
    texts = [f.read_text(encoding="utf-8") for f in sorted(docs.iterdir())]
    records = [encode_record(0, i, i + 650, t[i:i + 650]) for t in texts for i in range(0, len(t), 600)]
    compress = payload_compressor(train_payload_dictionary(records, sum(map(len, records)))).compress

    class EveryTime(FramePacker):
        def _compressed(self, records):
            self.n_compressions += 1
            return self._compress(b"".join(records))

    def pack(packer):
        return [f for r in records for f in packer.add(r)] + packer.finish(), packer.n_compressions

    (frames, n), (reference, n_reference) = pack(FramePacker(1171, 65536, compress)), pack(EveryTime(1171, 65536, compress))
    assert frames == reference and len(frames) > 50
    assert n < 0.8 * n_reference, (n, n_reference)
    assert zstd_bound(650) == 715 and zstd_bound(1 << 17) == (1 << 17) + 512


def test_signature_threshold():
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    message = b'{"a":1}'
    sigs = sign_manifest(message, keys[:2])
    publics = [k.public_key() for k in keys]
    assert len(verify_signatures(message, sigs, publics, threshold=2)) == 2
    with pytest.raises(SignatureError, match="signed by 2/3 trusted keys"):
        verify_signatures(message, sigs, publics, threshold=3)
    with pytest.raises(SignatureError, match="signed by 0/1"):
        verify_signatures(message + b" ", sigs, publics)
