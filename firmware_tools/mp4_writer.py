"""The MP4 writer: luma frames -> all-intra H.264/HEVC in a standard MP4, and its sample table.

Encodes with PyAV (libx264 / libx265): every frame an IDR, no B-frames, one closed GOP per frame,
bit-exact muxing; then demuxes the finished file and checks that each sample is a keyframe whose
bytes sit at the offset the table gives (``read_sample_table``). The QR drawing is
``qr_writer``; the frame pipeline and the decode check are ``qr_video``.

Source: FORMAT.md §4.5 (video), §5 (frame table); ITU-T H.264 / H.265 (IDR, NAL types).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import VideoEncodeError

if TYPE_CHECKING:
    from .qr_video import VideoParams

__all__ = ["EncodedVideo", "encode_lumas", "read_sample_table", "X265_FIXED_PARAMS"]


X265_FIXED_PARAMS = ("keyint=1000:min-keyint=1000:scenecut=0:open-gop=0:bframes=0:frame-threads=1:"
                      "pools=none:wpp=0:info=0:repeat-headers=0:log-level=error")
_HEVC_IDR_NAL_TYPES = (19, 20)  # IDR_W_RADL, IDR_N_LP (ISO/IEC 23008-2 Table 7-1)


@dataclass(frozen=True)
class EncodedVideo:
    """An MP4 written by :func:`encode_mp4_file` or :func:`encode_mp4`.

    Attributes:
        path: the MP4 file, or ``None`` when the bytes are in ``mp4_bytes``.
        n_frames: number of frames (= samples = payloads).
        extradata: the stream's ``avcC`` record (manifest ``video.extradata``).
        sample_offsets: byte offset of each frame's sample from the start of the MP4.
        sample_sizes: byte size of each frame's sample.
        profile: H.264 profile as the decoder names it, e.g. ``"High"``.
        codec: ``"h264"``.
        size_bytes: MP4 file size in bytes.
        mp4_bytes: the whole MP4 (only from :func:`encode_mp4`).

    Source: FORMAT.md §4.5 (video), §5 (frame table).
    """

    path: Path | None
    n_frames: int
    extradata: bytes
    sample_offsets: list[int]
    sample_sizes: list[int]
    profile: str
    codec: str
    size_bytes: int
    mp4_bytes: bytes | None = field(default=None, repr=False)


def _x264_options(params: VideoParams) -> dict[str, str]:
    options = {"crf": str(params.crf), "preset": params.x264_preset, "profile": params.profile,
               "threads": str(params.encoder_threads)}
    if params.x264_tune:
        options["tune"] = params.x264_tune
    if params.x264_params:
        options["x264-params"] = params.x264_params
    return options


def _x265_options(params: VideoParams) -> dict[str, str]:
    x265_params = X265_FIXED_PARAMS + (":" + params.x265_params if params.x265_params else "")
    return {"crf": str(params.crf), "preset": params.x265_preset, "profile": params.profile,
            "forced-idr": "1", "x265-params": x265_params}


def encode_lumas(lumas: Iterable[bytes], out_path: Path, params: VideoParams,
                  progress: Callable[[int], None] | None = None) -> int:
    """Encode rendered luma images (H*W bytes each) as an MP4; return the frame count."""
    import av

    width, height = params.width, params.height
    yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)  # chroma stays flat grey
    n_frames = 0
    container = av.open(str(out_path), mode="w", format="mp4", options={"fflags": "+bitexact"})
    try:
        hevc = params.codec == "hevc"
        stream = container.add_stream("libx265" if hevc else "libx264", rate=params.fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = params.pix_fmt
        cc = stream.codec_context
        cc.gop_size = 1
        cc.max_b_frames = 0
        cc.options = _x265_options(params) if hevc else _x264_options(params)
        for luma in lumas:
            yuv[:height] = np.frombuffer(luma, dtype=np.uint8).reshape(height, width)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")  # copies: yuv is reused
            frame.pts = n_frames
            if hevc:
                frame.pict_type = av.video.frame.PictureType.I  # an IDR, with forced-idr=1
            for packet in stream.encode(frame):
                container.mux(packet)
            n_frames += 1
            if progress is not None and n_frames % 64 == 0:
                progress(n_frames)
        if n_frames == 0:
            raise ValueError("no frame payloads to encode")
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    if progress is not None and n_frames % 64:
        progress(n_frames)
    return n_frames


def read_sample_table(path: Path, n_frames: int) -> EncodedVideo:
    """Demux the finished MP4 and return its sample table, checking it against the file bytes."""
    import av

    offsets: list[int] = []
    sizes: list[int] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        profile = stream.codec_context.profile or ""
        codec = stream.codec_context.name
        with open(path, "rb") as f:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if not packet.is_keyframe or packet.pos is None or packet.pos < 0:
                    raise VideoEncodeError(f"sample {len(offsets)} is not a keyframe at a known file offset")
                f.seek(packet.pos)
                if f.read(packet.size) != bytes(packet):
                    raise VideoEncodeError(f"sample {len(offsets)} bytes differ at file offset {packet.pos}")
                if codec == "hevc":
                    _check_hevc_idr(bytes(packet), len(offsets))
                offsets.append(int(packet.pos))
                sizes.append(int(packet.size))
    if len(offsets) != n_frames:
        raise VideoEncodeError(f"mp4 holds {len(offsets)} samples, encoded {n_frames} frames")
    if not extradata or extradata[0] != 1:
        raise VideoEncodeError(f"mp4 has no {'hvcC' if codec == 'hevc' else 'avcC'} extradata")
    if "4:4:4" in profile:
        raise VideoEncodeError(f"encoder produced profile {profile!r}, which hardware decoders refuse")
    return EncodedVideo(path=path, n_frames=n_frames, extradata=extradata, sample_offsets=offsets,
                        sample_sizes=sizes, profile=profile, codec=codec, size_bytes=path.stat().st_size)


def _check_hevc_idr(sample: bytes, index: int) -> None:
    """Raise unless every picture NAL unit in an HEVC sample (4-byte lengths) is an IDR slice."""
    pos = 0
    while pos + 5 <= len(sample):
        size = int.from_bytes(sample[pos:pos + 4], "big")
        nal_type = (sample[pos + 4] >> 1) & 0x3F
        if nal_type < 32 and nal_type not in _HEVC_IDR_NAL_TYPES:  # 0..31 are VCL (slice) NAL units
            raise VideoEncodeError(f"sample {index} holds an hevc slice of NAL type {nal_type}, not an IDR")
        pos += 4 + size
    if pos != len(sample):
        raise VideoEncodeError(f"sample {index} is not a sequence of length-prefixed hevc NAL units")


# -- round-trip check -------------------------------------------------------------------------------
