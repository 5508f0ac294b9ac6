"""FrameReader: random access into an all-intra QR video, decoded for real (no mocks)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from edge.errors import EdgeError, FrameDecodeError
from edge.frames import FrameReader
from firmware_tools.qr_video import DEFAULT_VIDEO_PARAMS, VideoParams, encode_mp4, render_qr_frame

N_FRAMES = 20


@pytest.fixture(scope="module")
def video():
    rng = random.Random(20261122)
    cap = DEFAULT_VIDEO_PARAMS.payload_capacity_bytes
    # full frames (what the builder packs) plus a few short and tiny payloads
    sizes = [cap] * 14 + [1, 17, 100, cap // 2, cap - 2, cap - 1]
    payloads = [rng.randbytes(n) for n in sizes]
    encoded = encode_mp4(payloads, DEFAULT_VIDEO_PARAMS)
    return payloads, encoded


def make_reader(encoded, data=None, **kwargs) -> FrameReader:
    kwargs.setdefault("prefer_hardware", False)
    buf = memoryview(encoded.mp4_bytes if data is None else data)
    return FrameReader(buf, extradata=encoded.extradata, sample_offsets=encoded.sample_offsets,
                       sample_sizes=encoded.sample_sizes, codec="h264", **kwargs)


def test_read_payload_random_order_is_byte_exact(video):
    payloads, encoded = video
    order = list(range(N_FRAMES)) * 3
    random.Random(7).shuffle(order)
    with make_reader(encoded) as reader:
        assert reader.n_frames == N_FRAMES
        for frame_index in order:
            assert reader.read_payload(frame_index) == payloads[frame_index]


def test_a_twin_reads_the_same_frames_on_another_thread_at_the_same_time(video):
    from concurrent.futures import ThreadPoolExecutor

    payloads, encoded = video
    reader = make_reader(encoded)
    twin = reader.twin()
    assert twin.decoder_name == reader.decoder_name and twin.n_frames == reader.n_frames
    order = list(range(N_FRAMES)) * 5
    with ThreadPoolExecutor(max_workers=1) as pool:  # both decoders busy at once
        there = pool.submit(lambda: [twin.read_payload(i) for i in order])
        here = [reader.read_payload(i) for i in reversed(order)]
        assert there.result() == [payloads[i] for i in order]
    assert here == [payloads[i] for i in reversed(order)]
    twin.close()
    assert reader.read_payload(4) == payloads[4]  # closing the twin leaves the reader (and buffer) alone
    reader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.twin()


def test_reader_accepts_numpy_sample_table(video):
    payloads, encoded = video
    reader = FrameReader(encoded.mp4_bytes, extradata=encoded.extradata,
                         sample_offsets=np.asarray(encoded.sample_offsets, dtype=np.uint64),
                         sample_sizes=np.asarray(encoded.sample_sizes, dtype=np.uint32), prefer_hardware=False)
    assert reader.read_payload(np.int64(3)) == payloads[3]
    reader.close()


def test_decode_frame_and_decode_qr_are_separate_stages(video):
    payloads, encoded = video
    with make_reader(encoded) as reader:
        luma = reader.decode_frame(5)
        assert luma.shape == (DEFAULT_VIDEO_PARAMS.height, DEFAULT_VIDEO_PARAMS.width)
        assert luma.dtype == np.uint8 and luma.flags.c_contiguous
        assert reader.decode_qr(luma, 5) == payloads[5]


def test_reader_reads_the_callers_buffer_without_copying(video):
    payloads, encoded = video
    data = bytearray(encoded.mp4_bytes)
    reader = make_reader(encoded, data)
    assert reader.read_payload(2) == payloads[2]
    start, size = encoded.sample_offsets[2], encoded.sample_sizes[2]
    data[start:start + size] = bytes(size)  # the reader sees the change: it holds a view
    with pytest.raises(FrameDecodeError):
        reader.read_payload(2)
    reader.close()


@pytest.mark.parametrize("bad_index", [-1, N_FRAMES, 10**9])
def test_read_payload_rejects_out_of_range_frame_index(video, bad_index):
    _, encoded = video
    with make_reader(encoded) as reader, pytest.raises(IndexError, match="out of range"):
        reader.read_payload(bad_index)


def test_read_payload_rejects_non_integer_frame_index(video):
    _, encoded = video
    with make_reader(encoded) as reader, pytest.raises(TypeError):
        reader.read_payload(1.0)  # type: ignore[arg-type]


def test_corrupted_sample_raises_frame_decode_error_or_differs(video):
    payloads, encoded = video
    rng = random.Random(11)
    outcomes = {"error": 0, "differs": 0, "same": 0}
    for frame_index in range(0, N_FRAMES, 3):
        start, size = encoded.sample_offsets[frame_index], encoded.sample_sizes[frame_index]
        for _ in range(3):
            data = bytearray(encoded.mp4_bytes)
            middle = start + size // 2 + rng.randrange(-size // 4, size // 4)
            for k in range(8):
                data[middle + k] ^= 0xFF
            with make_reader(encoded, data) as reader:
                try:
                    got = reader.read_payload(frame_index)
                except FrameDecodeError as exc:
                    assert f"frame {frame_index}" in str(exc)
                    outcomes["error"] += 1
                else:  # the AEAD upstream rejects an altered payload; here it just must not crash
                    outcomes["differs" if got != payloads[frame_index] else "same"] += 1
                # the reader recovers: the next frame still decodes exactly
                other = (frame_index + 1) % N_FRAMES
                assert reader.read_payload(other) == payloads[other]
    assert outcomes["error"] + outcomes["differs"] + outcomes["same"] == 21
    assert outcomes["error"] >= 1  # 21/21 with these seeds: 8 flipped bytes break the frame


@pytest.mark.parametrize("garbage", [b"\x00" * 64, b"\xff" * 4096, bytes(range(256)) * 8])
def test_garbage_sample_raises_frame_decode_error(video, garbage):
    payloads, encoded = video
    data = bytearray(encoded.mp4_bytes)
    start = encoded.sample_offsets[4]
    size = min(len(garbage), encoded.sample_sizes[4])
    data[start:start + size] = garbage[:size]
    sizes = list(encoded.sample_sizes)
    sizes[4] = size
    reader = FrameReader(bytes(data), extradata=encoded.extradata, sample_offsets=encoded.sample_offsets,
                         sample_sizes=sizes, prefer_hardware=False)
    with pytest.raises(FrameDecodeError, match="frame 4"):
        reader.read_payload(4)
    assert reader.read_payload(5) == payloads[5]


def test_decode_qr_without_a_code_raises_frame_decode_error(video):
    _, encoded = video
    with make_reader(encoded) as reader:
        side = DEFAULT_VIDEO_PARAMS.width
        blank = np.full((side, side), 255, dtype=np.uint8)
        with pytest.raises(FrameDecodeError, match="frame 9: no qr code found"):
            reader.decode_qr(blank, 9)
        noise = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
        with pytest.raises(EdgeError):
            reader.decode_qr(noise, 9)


def test_decode_qr_with_two_codes_raises_frame_decode_error(video):
    _, encoded = video
    params = VideoParams(qr_version=5, width=64, height=64, quiet_zone_modules=4)
    two = np.hstack([render_qr_frame(b"left", params), render_qr_frame(b"right", params)])
    with make_reader(encoded) as reader, pytest.raises(FrameDecodeError, match="2 qr codes found"):
        reader.decode_qr(two, 0)


def test_hardware_decoder_falls_back_to_software_and_logs(video, caplog):
    payloads, encoded = video
    caplog.set_level(logging.INFO, logger="edge.frames")
    with make_reader(encoded, prefer_hardware=True) as reader:
        # no /dev/video* here: h264_v4l2m2m is created but fails to open
        assert reader.decoder_name == "h264"
        assert not reader.is_hardware
        assert reader.read_payload(0) == payloads[0]
    assert any("h264_v4l2m2m unavailable" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)


def test_prefer_hardware_false_forces_software(video, caplog):
    _, encoded = video
    caplog.set_level(logging.INFO, logger="edge.frames")
    with make_reader(encoded, prefer_hardware=False) as reader:
        assert reader.decoder_name == "h264"
    assert not any("h264_v4l2m2m unavailable" in r.getMessage() for r in caplog.records)


def test_sample_table_must_fit_the_buffer(video):
    _, encoded = video
    with pytest.raises(ValueError, match="does not fit"):
        FrameReader(encoded.mp4_bytes[:1000], extradata=encoded.extradata,
                    sample_offsets=encoded.sample_offsets, sample_sizes=encoded.sample_sizes)
    with pytest.raises(ValueError, match="sample offsets but"):
        FrameReader(encoded.mp4_bytes, extradata=encoded.extradata, sample_offsets=[0, 1], sample_sizes=[1])
    with pytest.raises(ValueError, match="unsupported video codec"):
        FrameReader(encoded.mp4_bytes, extradata=encoded.extradata, sample_offsets=[0], sample_sizes=[1],
                    codec="vp9")


def test_read_after_close_raises_runtime_error(video):
    _, encoded = video
    reader = make_reader(encoded)
    reader.close()
    reader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.read_payload(0)


def test_hardware_decoder_that_opens_but_fails_is_replaced_by_software(video, caplog, monkeypatch):
    # Stand-in for a V4L2 device that opens but mis-decodes: a real decoder for another codec.
    payloads, encoded = video
    import edge.frames

    monkeypatch.setitem(edge.frames.HARDWARE_DECODERS, "h264", "hevc")
    caplog.set_level(logging.INFO, logger="edge.frames")
    data = bytearray(encoded.mp4_bytes)
    start, size = encoded.sample_offsets[1], encoded.sample_sizes[1]
    data[start:start + size] = bytes(size)
    with make_reader(encoded, data, prefer_hardware=True) as reader:
        assert reader.decoder_name == "hevc" and reader.is_hardware
        with pytest.raises(FrameDecodeError, match="frame 1"):
            reader.read_payload(1)  # software fails too: the frame is bad, keep the decoder
        assert reader.decoder_name == "hevc"
        assert reader.read_payload(6) == payloads[6]  # software reads it: switch for good
        assert reader.decoder_name == "h264" and not reader.is_hardware
        luma = reader.decode_frame(7)
        assert reader.decode_qr(luma, 7) == payloads[7]
    assert any(r.levelno == logging.WARNING and "hevc failed frame 6" in r.getMessage() for r in caplog.records)
