"""Issue 9, item 1: no sample or extradata byte reaches FFmpeg unless its NAL structure and the
frame size it declares were checked first (real libx264/libx265 streams, real decoders)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from edge.errors import CapsuleFormatError, FrameDecodeError
from edge.frames import FrameReader, check_sample, parse_extradata
from firmware_tools.qr_video import DEFAULT_VIDEO_PARAMS, HEVC_VIDEO_PARAMS, encode_mp4

from tests.conftest import ROOT

av = pytest.importorskip("av")


def in_band_sample(codec: str, size: int) -> bytes:
    """Encode one black ``size`` x ``size`` frame with no global header: SPS/PPS (VPS) in-band.

    Returns the Annex-B access unit converted to 4-byte length-prefixed NAL units, i.e. a
    sample that carries its own parameter sets (what a hostile publisher would put in VIDE).
    """
    enc = av.CodecContext.create("libx264" if codec == "h264" else "libx265", "w")
    enc.width = enc.height = size
    enc.pix_fmt = "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.options = ({"preset": "ultrafast"} if codec == "h264"
                   else {"preset": "ultrafast", "x265-params": "log-level=error:pools=none:frame-threads=1"})
    enc.open()
    frame = av.VideoFrame.from_ndarray(np.zeros((size, size), np.uint8), format="gray").reformat(format="yuv420p")
    annexb = b"".join(bytes(p) for p in enc.encode(frame)) + b"".join(bytes(p) for p in enc.encode(None))
    units = [u for u in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", annexb) if u]
    return b"".join(len(u).to_bytes(4, "big") + u for u in units)


def avcc_from_sample(sample: bytes) -> bytes:
    """Build an avcC record from the SPS and PPS inside a length-prefixed H.264 sample."""
    units, pos = [], 0
    while pos < len(sample):
        n = int.from_bytes(sample[pos:pos + 4], "big")
        units.append(sample[pos + 4:pos + 4 + n])
        pos += 4 + n
    sps = next(u for u in units if u[0] & 0x1F == 7)
    pps = next(u for u in units if u[0] & 0x1F == 8)
    return (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
            + b"\x01" + len(pps).to_bytes(2, "big") + pps)


@pytest.fixture(scope="module")
def h264_video():
    return encode_mp4([bytes(range(200)) * 5, b"x" * 900], DEFAULT_VIDEO_PARAMS)


@pytest.fixture(scope="module")
def hevc_video():
    return encode_mp4([bytes(range(200)) * 5, b"x" * 900], HEVC_VIDEO_PARAMS)


@pytest.fixture(scope="module")
def h264_big_sample():
    return in_band_sample("h264", 4096)


def reader_for(sample: bytes, extradata: bytes, codec: str, **kw) -> FrameReader:
    return FrameReader(sample, extradata=extradata, sample_offsets=[0], sample_sizes=[len(sample)],
                       codec=codec, prefer_hardware=False, **kw)


def test_capsule_extradata_declares_the_manifest_frame_size(tiny_capsule):
    from edge import open_capsule
    from tests.conftest import FIXED_NOW

    cap = open_capsule(tiny_capsule.path, trusted_keys=[tiny_capsule.publisher_key.public_key()],
                       identities=[tiny_capsule.device_key], now=FIXED_NOW)
    try:
        video = cap.manifest.video
        params = parse_extradata(video.extradata, video.codec)
        assert (params.width, params.height, params.nal_length_bytes) == (video.width, video.height, 4)
        assert cap.read(0).text  # the genuine frames still pass the sample filter
    finally:
        cap.close()


def test_in_band_sps_in_a_capsule_sample_is_refused_without_allocating(tiny_capsule, h264_big_sample, tmp_path):
    # The genuine capsule's avcC (128x128) with a sample carrying its own 4096x4096 SPS/PPS/IDR.
    # Measured in a child process: the old reader decoded it (4096x4096 luma, ~38 MB RSS).
    (tmp_path / "sample.bin").write_bytes(h264_big_sample)
    script = r"""
import json, re, sys
from pathlib import Path
from edge import open_capsule
from edge.frames import FrameReader
from edge.errors import FrameDecodeError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tests.conftest import FIXED_NOW
def rss_kib():
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
seed = bytes(range(32))
cap = open_capsule(sys.argv[1], trusted_keys=[Ed25519PrivateKey.from_private_bytes(seed).public_key()],
                   identities=[X25519PrivateKey.from_private_bytes(bytes(reversed(seed)))], now=FIXED_NOW)
v = cap.manifest.video
sample = Path(sys.argv[2]).read_bytes()
reader = FrameReader(sample, extradata=v.extradata, sample_offsets=[0], sample_sizes=[len(sample)],
                     codec=v.codec, width=v.width, height=v.height, prefer_hardware=True)
before = rss_kib()
try:
    luma = reader.decode_frame(0)
    out = {"decoded": list(luma.shape)}
except FrameDecodeError as exc:
    out = {"error": str(exc)}
out["rss_delta_kib"] = rss_kib() - before
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_capsule.path), str(tmp_path / "sample.bin")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" in out, out
    assert out["error"] == "frame 0: sample holds a nal unit of type 7, allowed [5, 6]"
    assert out["rss_delta_kib"] < 16 * 1024, out


def test_hevc_sample_with_vps_sps_pps_is_refused(hevc_video):
    sample = in_band_sample("hevc", 1024)
    with reader_for(sample, hevc_video.extradata, "hevc", width=192, height=192) as reader:
        with pytest.raises(FrameDecodeError, match=r"^frame 0: sample holds a nal unit of type 32"):
            reader.read_payload(0)


def test_decoder_max_pixels_takes_effect(h264_video, h264_big_sample):
    # Layer (b): even a sample that got past the filter cannot make FFmpeg allocate a picture
    # larger than the stream's frame. PyAV 18.1 applies the option at avcodec_open2.
    with reader_for(h264_big_sample, h264_video.extradata, "h264") as reader:
        guarded = reader._create_context("h264")
    with pytest.raises(av.error.FFmpegError):
        guarded.decode(av.Packet(h264_big_sample))
    plain = av.CodecContext.create("h264", "r")
    plain.extradata = h264_video.extradata
    plain.open()
    assert [f.width for f in plain.decode(av.Packet(h264_big_sample))] == [4096]  # the attack is real


def test_decoded_frame_of_another_size_is_refused(h264_video):
    reader = FrameReader(h264_video.mp4_bytes, extradata=h264_video.extradata,
                         sample_offsets=h264_video.sample_offsets, sample_sizes=h264_video.sample_sizes,
                         prefer_hardware=False)
    reader._params = dataclasses.replace(reader._params, width=96)  # as if the decoder returned another size
    with pytest.raises(FrameDecodeError, match=r"^frame 1: h264 decoded a 128x128 picture, stream is 96x128$"):
        reader.decode_frame(1)


def test_extradata_sps_must_declare_the_manifest_size(h264_video, h264_big_sample):
    with pytest.raises(CapsuleFormatError, match=r"^h264 sps declares a 128x128 frame, manifest says 200x200$"):
        reader_for(b"\x00", h264_video.extradata, "h264", width=200, height=200)
    big = avcc_from_sample(h264_big_sample)
    assert parse_extradata(big, "h264").width == 4096
    with pytest.raises(CapsuleFormatError, match=r"sps declares a 4096x4096 frame, manifest says 192x192"):
        reader_for(b"\x00", big, "h264", width=192, height=192)


def test_cropped_frame_size_is_read_from_the_sps():
    params = dataclasses.replace(DEFAULT_VIDEO_PARAMS, width=200, height=216)
    video = encode_mp4([b"y" * 500], params)
    got = parse_extradata(video.extradata, "h264")
    assert (got.width, got.height) == (200, 216)
    with FrameReader(video.mp4_bytes, extradata=video.extradata, sample_offsets=video.sample_offsets,
                     sample_sizes=video.sample_sizes, width=200, height=216, prefer_hardware=False) as reader:
        assert reader.read_payload(0) == b"y" * 500


@pytest.mark.parametrize("mutate, message", [
    (lambda x: x[:-1], "ends early"),
    (lambda x: x + b"\x00", "1 bytes after its last nal unit"),
    (lambda x: bytes([2]) + x[1:], "version is 2"),
    (lambda x: x[:5] + bytes([0xE2]) + x[6:], "ends early"),  # 2 SPS declared, 1 present
    (lambda x: x[:4] + bytes([0xFE]) + x[5:], "3-byte nal lengths"),
])
def test_malformed_avcc_is_refused(h264_video, mutate, message):
    with pytest.raises(CapsuleFormatError, match=message):
        parse_extradata(mutate(h264_video.extradata), "h264")


def test_malformed_hvcc_is_refused(hevc_video):
    extradata = hevc_video.extradata
    with pytest.raises(CapsuleFormatError, match="ends early"):
        parse_extradata(extradata[:-3], "hevc")
    vps_count = extradata[23 + 1:23 + 3]
    assert int.from_bytes(vps_count, "big") == 1
    with pytest.raises(CapsuleFormatError):
        parse_extradata(extradata[:24] + b"\x00\x02" + extradata[26:], "hevc")


def _sample(*units: bytes) -> bytes:
    return b"".join(len(u).to_bytes(4, "big") + u for u in units)


@pytest.mark.parametrize("sample, message", [
    (_sample(b"\x65" + b"\x88" * 10)[:-1], "nal unit of 11 bytes does not fit the 14-byte sample"),
    (_sample(b"\x65" + b"\x88" * 10) + b"\x00\x00", "sample ends inside a nal unit length"),
    (_sample(b"\x67\x64\x00\x0c", b"\x65\x88"), "nal unit of type 7"),
    (_sample(b"\x68\xee", b"\x65\x88"), "nal unit of type 8"),
    (_sample(b"\x6d\x00", b"\x65\x88"), "nal unit of type 13"),
    (_sample(b"\x41\x9a"), "nal unit of type 1"),                    # non-IDR slice
    (_sample(b"\xe5\x88"), "nal unit header e5 is not allowed"),     # forbidden_zero_bit
    (_sample(b"\x06\x05\x02ab\x80"), "sample holds no idr slice"),
    (_sample(b"\x06\x01\x02ab\x80", b"\x65\x88"), "sei payload type 1 is not allowed"),
    (_sample(b"\x06\x05\x09ab\x80", b"\x65\x88"), "sei message overruns"),
    (_sample(*[b"\x65\x88"] * 65), "over 64 nal units"),
    (b"", "sample holds no idr slice"),
])
def test_sample_filter_refuses(sample, message):
    with pytest.raises(FrameDecodeError, match=message):
        check_sample(sample, "h264", 4, 0)


def test_sample_filter_accepts_user_data_sei_and_idr():
    check_sample(_sample(b"\x06\x05\x02ab\x80", b"\x65\x88"), "h264", 4, 0)
    check_sample(_sample(b"\x28\x01\xaf"), "hevc", 4, 0)  # IDR_N_LP, layer 0, tid 1


@pytest.mark.parametrize("header, message", [
    (b"\x40\x01", "type 32"),                   # VPS
    (b"\x42\x01", "type 33"),                   # SPS
    (b"\x44\x01", "type 34"),                   # PPS
    (b"\x2a\x01", "type 21"),                   # CRA
    (b"\x28\x09", "header 2809 is not allowed"),  # nuh_layer_id 1
    (b"\x28\x00", "header 2800 is not allowed"),  # temporal id plus 1 = 0
])
def test_hevc_sample_filter_refuses(header, message):
    with pytest.raises(FrameDecodeError, match=message):
        check_sample(_sample(header + b"\xaf"), "hevc", 4, 0)


def test_probe_reader_with_empty_extradata_accepts_no_sample(h264_video):
    # the CLI's decoder probe passes empty extradata: the reader opens, but decodes nothing
    with FrameReader(h264_video.mp4_bytes, extradata=b"", sample_offsets=h264_video.sample_offsets,
                     sample_sizes=h264_video.sample_sizes, prefer_hardware=False) as reader:
        with pytest.raises(FrameDecodeError, match="no stream parameters"):
            reader.decode_frame(0)
