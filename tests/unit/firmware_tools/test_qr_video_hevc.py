"""HEVC capsule video: all-IDR HEVC Main, exact seeks and byte-exact frames through the runtime."""

from __future__ import annotations

import random

import av
import pytest

from edge.frames import FrameReader
from firmware_tools.qr_video import HEVC_VIDEO_PARAMS, VideoParams, check_mp4, encode_mp4, encode_mp4_file

N_FRAMES = 24


def _payloads(n: int = N_FRAMES, seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    cap = HEVC_VIDEO_PARAMS.payload_capacity_bytes
    return [rng.randbytes(cap if i % 5 else rng.randint(1, cap)) for i in range(n)]


@pytest.fixture(scope="module")
def hevc(tmp_path_factory):
    payloads = _payloads()
    path = tmp_path_factory.mktemp("hevc") / "frames.mp4"
    return payloads, encode_mp4_file(payloads, path, HEVC_VIDEO_PARAMS)


def test_hevc_params():
    assert HEVC_VIDEO_PARAMS.codec == "hevc" and HEVC_VIDEO_PARAMS.profile == "main"
    assert HEVC_VIDEO_PARAMS.payload_capacity_bytes == 2953
    with pytest.raises(ValueError, match="hevc profile must be main"):
        VideoParams(codec="hevc", profile="high")
    with pytest.raises(ValueError, match="only h264 or hevc"):
        VideoParams(codec="vp9")


def test_hevc_mp4_is_standard_main_profile_with_every_sample_an_idr(hevc):
    payloads, video = hevc
    assert video.codec == "hevc" and video.profile == "Main"  # not RExt "Main Intra"
    assert video.extradata[0] == 1  # hvcC configurationVersion
    data = video.path.read_bytes()
    with av.open(str(video.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "hevc"
        assert (stream.codec_context.width, stream.codec_context.height) == (192, 192)
        packets = [p for p in container.demux(stream) if p.size]
        assert [p.pos for p in packets] == video.sample_offsets
        assert all(p.is_keyframe for p in packets)
        container.seek(0)
        assert sum(1 for _ in container.decode(video=0)) == N_FRAMES  # a player plays all frames
    for off, size in zip(video.sample_offsets, video.sample_sizes):
        sample = data[off:off + size]
        pos, types = 0, []
        while pos < len(sample):
            n = int.from_bytes(sample[pos:pos + 4], "big")
            types.append((sample[pos + 4] >> 1) & 0x3F)
            pos += 4 + n
        assert pos == len(sample)
        assert [t for t in types if t < 32] and all(t in (19, 20) for t in types if t < 32), types  # IDR only


def test_hevc_every_frame_round_trips_through_the_builders_check(hevc):
    payloads, video = hevc
    assert check_mp4(video.path, payloads, HEVC_VIDEO_PARAMS, video.extradata, video.sample_offsets,
                     video.sample_sizes) == []


def test_hevc_exact_seeks_in_random_order_are_byte_exact(hevc):
    payloads, video = hevc
    order = list(range(N_FRAMES)) * 2
    random.Random(7).shuffle(order)
    data = video.path.read_bytes()
    with FrameReader(data, extradata=video.extradata, sample_offsets=video.sample_offsets,
                     sample_sizes=video.sample_sizes, codec="hevc") as reader:
        assert reader.decoder_name in ("hevc", "hevc_v4l2m2m")
        for index in order:
            assert reader.read_payload(index) == payloads[index], index
        # the last frame first, then the first: no frame depends on another
        assert reader.read_payload(N_FRAMES - 1) == payloads[-1]
        assert reader.read_payload(0) == payloads[0]


def test_hevc_encode_is_deterministic(hevc):
    payloads, video = hevc
    assert encode_mp4(payloads, HEVC_VIDEO_PARAMS).mp4_bytes == video.path.read_bytes()
