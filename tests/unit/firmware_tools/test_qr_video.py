"""qr_video: payloads -> QR frames -> all-intra H.264 MP4, checked by real decoding (no mocks)."""

from __future__ import annotations

import dataclasses
import random
import struct

import av
import numpy as np
import pytest
import zxingcpp

from firmware_tools import qr_video, qr_writer
from firmware_tools.errors import CapacityError
from firmware_tools.qr_video import (
    CAVLC_VIDEO_PARAMS,
    DEFAULT_VIDEO_PARAMS,
    HEVC_VIDEO_PARAMS,
    MIN_QR_VERSION,
    VideoParams,
    check_mp4,
    encode_mp4,
    encode_mp4_file,
    qr_byte_capacity,
    render_qr_frame,
    with_qr_version,
)

N_FRAMES = 20
V40 = with_qr_version(DEFAULT_VIDEO_PARAMS, 40)  # the densest symbol, the default until 2026-12-07


def random_payloads(n: int = N_FRAMES, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    cap = DEFAULT_VIDEO_PARAMS.payload_capacity_bytes
    return [rng.randbytes(cap if i % 4 else rng.randint(1, cap)) for i in range(n)]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    payloads = random_payloads()
    path = tmp_path_factory.mktemp("qr_video") / "frames.mp4"
    return payloads, encode_mp4_file(payloads, path, DEFAULT_VIDEO_PARAMS)


def test_default_params_hold_a_version_24_l_symbol_in_128x128():
    assert DEFAULT_VIDEO_PARAMS.payload_capacity_bytes == 1171
    assert DEFAULT_VIDEO_PARAMS.symbol_modules == 113
    assert (DEFAULT_VIDEO_PARAMS.width, DEFAULT_VIDEO_PARAMS.height) == (128, 128)
    assert (V40.payload_capacity_bytes, V40.symbol_modules, V40.width) == (2953, 177, 192)
    assert qr_byte_capacity(1, "H") == 7
    assert qr_byte_capacity(10, "L") == 271


def test_render_qr_frame_draws_one_readable_symbol():
    payload = bytes(range(256)) * 4 + b"\x00\xff" * 73  # every byte value, incl. non-UTF-8
    luma = render_qr_frame(payload, DEFAULT_VIDEO_PARAMS)
    assert luma.shape == (128, 128) and luma.dtype == np.uint8
    assert set(np.unique(luma)) == {0, 255}
    assert (luma[:7] == 255).all() and (luma[-8:] == 255).all()  # quiet zone
    found = zxingcpp.read_barcodes(luma, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(found) == 1 and found[0].bytes == payload
    assert found[0].extra["Version"] == "24" and found[0].extra["ECLevel"] == "L"
    assert found[0].symbology_identifier == "]Q1"  # no ECI header


def test_encode_and_check_round_trip_every_frame(encoded):
    payloads, video = encoded
    assert video.n_frames == N_FRAMES
    assert check_mp4(video.path, payloads, DEFAULT_VIDEO_PARAMS, video.extradata, video.sample_offsets,
                     video.sample_sizes) == []


def test_mp4_is_a_standard_all_intra_h264_file(encoded):
    payloads, video = encoded
    data = video.path.read_bytes()
    with av.open(str(video.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.profile == "High"
        assert "4:4:4" not in stream.codec_context.profile
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 128)
        assert stream.codec_context.pix_fmt == "yuv420p"
        packets = [p for p in container.demux(stream) if p.size]
        assert len(packets) == N_FRAMES
        assert all(p.is_keyframe for p in packets)
        assert [p.pos for p in packets] == video.sample_offsets
        assert [p.size for p in packets] == video.sample_sizes
        container.seek(0)
        assert sum(1 for _ in container.decode(video=0)) == N_FRAMES
    for off, size in zip(video.sample_offsets, video.sample_sizes):
        assert 0 < off and off + size <= len(data)
    assert video.extradata[0] == 1 and video.extradata[1] == 100  # avcC v1, profile_idc 100 = High


def test_mp4_carries_no_timestamp(encoded):
    _, video = encoded
    data = video.path.read_bytes()
    i = data.index(b"mvhd")
    assert data[i + 4] == 0  # version 0: 32-bit times
    creation, modification = struct.unpack(">II", data[i + 8:i + 16])
    assert creation == 0 and modification == 0
    assert b"Lavf" not in data


def test_encode_is_deterministic(encoded, tmp_path, monkeypatch):
    payloads, video = encoded
    again = encode_mp4(payloads, DEFAULT_VIDEO_PARAMS)
    assert again.mp4_bytes == video.path.read_bytes()
    # the worker-pool render path gives the same bytes
    monkeypatch.setattr(qr_video, "_MIN_FRAMES_FOR_POOL", 0)
    pooled = encode_mp4_file(payloads, tmp_path / "pooled.mp4", DEFAULT_VIDEO_PARAMS, n_workers=2)
    assert pooled.path.read_bytes() == again.mp4_bytes
    assert pooled.sample_offsets == video.sample_offsets


def test_capacity_overflow_raises_capacity_error_naming_the_frame(tmp_path):
    payloads = [b"a" * 100, b"b" * 1172]
    with pytest.raises(CapacityError, match="frame 1 payload is 1172 bytes, a version 24-L qr code holds 1171"):
        encode_mp4_file(payloads, tmp_path / "x.mp4", DEFAULT_VIDEO_PARAMS)
    with pytest.raises(CapacityError):
        render_qr_frame(b"\x00" * 2954, V40)


def test_empty_input_is_a_caller_mistake(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        encode_mp4_file([b"ok", b""], tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="no frame payloads"):
        encode_mp4_file(iter([]), tmp_path / "y.mp4")


def test_check_mp4_names_frames_that_do_not_round_trip(encoded, tmp_path):
    payloads, video = encoded
    wrong = list(payloads)
    wrong[3] = bytes(len(wrong[3]))
    assert check_mp4(video.path, wrong, DEFAULT_VIDEO_PARAMS, video.extradata, video.sample_offsets,
                     video.sample_sizes) == [3]
    data = bytearray(video.path.read_bytes())
    off, size = video.sample_offsets[7], video.sample_sizes[7]
    data[off + 8:off + size] = bytes(size - 8)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    assert check_mp4(broken, payloads, DEFAULT_VIDEO_PARAMS, video.extradata, video.sample_offsets,
                     video.sample_sizes) == [7]


def test_progress_reports_frames_done(tmp_path):
    seen: list[int] = []
    encode_mp4_file(random_payloads(3), tmp_path / "p.mp4", progress=seen.append)
    assert seen == [3]


@pytest.mark.parametrize("kwargs, match", [
    ({"crf": 0}, "crf must be 1..51"),
    ({"width": 180, "height": 180}, "needs 191x191 px"),
    ({"width": 193}, "even"),
    ({"qr_ec_level": "X"}, "ec level"),
    ({"qr_version": 41}, "version must be 1..40"),
    ({"codec": "vp9"}, "only h264 or hevc"),
    ({"codec": "hevc", "profile": "high"}, "hevc profile must be main"),
    ({"qr_mask": 8}, "qr_mask"),
])
def test_video_params_reject_unusable_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoParams(**kwargs)


def test_smaller_symbol_and_two_pixels_per_module_round_trip():
    params = VideoParams(qr_version=10, qr_ec_level="M", pixels_per_module=2, width=144, height=144,
                         quiet_zone_modules=4, crf=20)
    payloads = random_payloads(4, seed=5)
    payloads = [p[: params.payload_capacity_bytes] for p in payloads]
    video = encode_mp4(payloads, params)
    with av.open(__import__("io").BytesIO(video.mp4_bytes)) as c:
        assert c.streams.video[0].codec_context.width == 144
    from edge.frames import FrameReader

    reader = FrameReader(video.mp4_bytes, extradata=video.extradata, sample_offsets=video.sample_offsets,
                         sample_sizes=video.sample_sizes, prefer_hardware=False)
    assert [reader.read_payload(i) for i in range(4)] == payloads


def test_numpy_qr_writer_draws_what_zxing_cpp_draws():
    # ciphertext-like payloads: the fast writer must be a drop-in for zxing-cpp's (zint) writer
    rng = random.Random(9)
    for params in (DEFAULT_VIDEO_PARAMS, V40):
        slow = dataclasses.replace(params, qr_writer="zxing")
        cap = params.payload_capacity_bytes
        for n in (cap, cap - 1, cap // 2, 17):
            payload = rng.randbytes(n)
            assert np.array_equal(render_qr_frame(payload, params), render_qr_frame(payload, slow))
    for version, level, mask in ((1, "H", 3), (7, "M", 5), (27, "Q", 6)):
        writer = qr_writer.numpy_writer(version, level, mask)
        payload = rng.randbytes(qr_byte_capacity(version, level))
        luma = np.pad(writer.modules(payload), 4, constant_values=255)
        found = zxingcpp.read_barcodes(luma, formats=zxingcpp.BarcodeFormat.QRCode)
        assert len(found) == 1 and found[0].bytes == payload


def test_an_mp4_that_cannot_be_written_is_a_video_encode_error(tmp_path):
    from firmware_tools.errors import BuildError, VideoEncodeError

    with pytest.raises(VideoEncodeError, match=r"encoding the h264 MP4 frames.mp4 failed: .*No such file") as info:
        encode_mp4_file([b"x" * 100], tmp_path / "missing" / "frames.mp4", DEFAULT_VIDEO_PARAMS, n_workers=0)
    assert isinstance(info.value, BuildError) and "\n" not in str(info.value)


@pytest.mark.parametrize("version, side", [(40, 192), (28, 144), (20, 112), (15, 96)])
def test_with_qr_version_frames_the_symbol_in_whole_macroblocks(version, side):
    params = with_qr_version(DEFAULT_VIDEO_PARAMS, version)
    assert (params.qr_version, params.width, params.height) == (version, side, side)
    assert params.crf == DEFAULT_VIDEO_PARAMS.crf and params.x264_params == DEFAULT_VIDEO_PARAMS.x264_params
    assert (side - 16) < params.symbol_modules + 2 * params.quiet_zone_modules <= side
    hevc = with_qr_version(HEVC_VIDEO_PARAMS, version)
    assert (hevc.codec, hevc.crf, hevc.width) == ("hevc", HEVC_VIDEO_PARAMS.crf, side)


@pytest.mark.parametrize("version", [MIN_QR_VERSION - 1, 41, 20.0])
def test_with_qr_version_refuses_what_cannot_hold_a_chunk(version):
    with pytest.raises(ValueError, match=f"qr version must be {MIN_QR_VERSION}..40"):
        with_qr_version(DEFAULT_VIDEO_PARAMS, version)


def test_the_cli_offers_the_versions_with_qr_version_gives():
    from firmware_tools import cli

    assert cli.MIN_QR_VERSION == MIN_QR_VERSION
    args = cli.build_parser().parse_args(["build", "docs", "-o", "x.capsule", "--signing-key", "k", "--expires",
                                          "+1d", "--qr-version", "20", "--entropy-coding", "cavlc"])
    params = cli._video_params(args)
    assert (params.qr_version, params.width, params.x264_params) == (20, 112, CAVLC_VIDEO_PARAMS.x264_params)
    default = cli._video_params(cli.build_parser().parse_args(["build", "docs", "-o", "x.capsule", "--signing-key",
                                                               "k", "--expires", "+1d"]))
    assert default is DEFAULT_VIDEO_PARAMS
