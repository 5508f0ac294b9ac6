"""Write frame payloads as QR codes into an all-intra H.264 MP4 (writer for ``edge/frames.py``).

This module owns the frame codec on the builder side: one opaque frame payload (bytes) -> one
QR symbol (byte mode, fixed version and EC level, drawn 1 px per module) -> one all-intra H.264
frame in a standard MP4 -> the sample table (byte offset, size) and ``avcC`` extradata that the
runtime needs for random access without demuxing. ``check_mp4`` decodes every frame back through
the runtime's own reader (``edge.frames.FrameReader``).

It deliberately does not know what a payload contains (the caller packs and encrypts chunk
slots), does not hash or sign anything, and writes nothing but the MP4 file it is given.

Example::

    params = DEFAULT_VIDEO_PARAMS           # v24-L, 1 px/module, 128x128, veryfast CRF 25
    video = encode_mp4_file(payloads, "frames.mp4", params)
    bad = check_mp4("frames.mp4", payloads, params, video.extradata,
                    video.sample_offsets, video.sample_sizes)
    assert not bad, f"frames {bad} did not round-trip"

Determinism: the same payloads and params give a byte-identical MP4. x264 runs with a fixed
``threads=1`` (its output depends on the thread count, not on the machine), the muxer runs with
``fflags=+bitexact`` and no ``creation_time``, and QR rendering in worker processes is ordered.

Measurements that chose ``DEFAULT_VIDEO_PARAMS`` (x86_64 "Intel(R) Xeon(R) Processor", 2 vCPUs,
shared with other jobs; CPython 3.11, PyAV 18.1.0 / x264 core 165, zxing-cpp 3.1.1; run
``bench/bench_qr_video.py``; every table and command is in ``bench/QR_VIDEO.md``). Payloads are
uniformly random (ciphertext), 2,953 bytes = one full v40-L symbol; "ok" counts frames out of
300 that came back byte-exact through ``edge.frames.FrameReader`` (software h264 + zxing-cpp);
B/B is MP4 bytes per payload byte; "margin CRF" is the highest CRF still 300/300 at CRF+1 and
CRF+2 too; enc is x264 CPU ms per frame (noisy machine, +-20%)::

    setting, 1 px/module 192x192       ok at CRF 24 25 26 27 28 29   margin CRF -> B/B   enc ms
    medium (FACTS' setting)            300 300 300 300 295   1       25 -> 3.820        5.4
    medium no-deblock/no-psy/trellis=2/ bytes +-0.3%, same cliff     25 -> 3.81-3.82    4.2-6.9
      no-8x8dct/tune=stillimage        (stillimage: relabelled CRF)
    medium aq-mode=0                   CRF scale +4, same bytes      29 -> 3.823        4.5
    faster = veryfast + trellis=1      300 300 300 300 292   1       25 -> 3.724        3.0-3.2
    veryfast                           300 300 300 300   1   1       25 -> 3.631        2.2
    veryfast aq-mode=2 (= tune=ssim)   CRF 23: 300 (3.03), 24: 287   21 -> 3.586        1.9
    veryfast aq-mode=2:aq-strength=0.5 300 300 300 300 245   1       25 -> 3.315        1.8  <- default
    veryfast aq-mode=3:aq-strength=0.5 300 300 300 300 228   1       25 -> 3.304        2.1
    superfast                          CRF 24..29: 300, CRF 30: 1    27 -> 3.892        1.6
    ultrafast (CAVLC, no 8x8dct)       CRF 28..33: 300, CRF 34: 1    31 -> 4.390        0.6
    2 px/module, 384x384 medium        CRF 29: 300 (7.24), CRF 30: 17  27 -> 9.012      15
    v40-M (2,331 B) medium             CRF 27: 300 (4.21), CRF 28: 291 25 -> 4.840      5.4
    v30-L (1,367 B) 160x160 medium     CRF 27: 300 (3.46), CRF 28: 297 25 -> 3.967      3.4

With uniform quantisation (aq-mode 0/1, any preset) decoding collapses below ~3.07 B/B within
one CRF step and tuning only relabels the CRF scale. Auto-variance AQ at strength 0.5-0.6 moves
that wall to ~2.75 B/B (presumably by quantising the flat finder-pattern and quiet-zone
macroblocks harder than the data macroblocks; per-macroblock QPs were not inspected).
1 px/module and EC level L are clearly best. Re-checked on 3 fresh sets of 300 payloads (10%
short): veryfast aq-mode=2:aq-strength=0.5 at CRF 25, 26 and 27 reads 1,200/1,200 over all four
sets, 78-85% at CRF 28. Default: that setting at **CRF 25**, 9,790 MP4
bytes per full frame (3.315 B/B; FACTS reported 3.6-4.0 B/B for medium CRF 23-25).
Speed (2,000 frames, ``encode_mp4_file``): QR drawing 0.3-0.5 ms/symbol with this module's NumPy
writer (zxing-cpp's writer 2.6-3.0 ms with a fixed mask, 14 ms choosing the mask; segno ~190-225
ms; qrcode ~230-250 ms); see bench/QR_VIDEO.md for frames/s with 0, 1 and 2 render workers.

Its parts: the QR symbols are ``qr_writer.py``, the MP4 encoding and sample table ``mp4_writer.py``;
this module holds ``VideoParams``, the render pool and the decode check.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np

from ._workers import ordered_map
from .errors import CapacityError, VideoEncodeError
from .mp4_writer import EncodedVideo, encode_lumas, read_sample_table
from .qr_writer import DATA_CODEWORDS, numpy_writer, zxing_modules

log = logging.getLogger(__name__)

__all__ = [
    "VideoParams",
    "DEFAULT_VIDEO_PARAMS",
    "CAVLC_VIDEO_PARAMS",
    "HEVC_VIDEO_PARAMS",
    "MIN_QR_VERSION",
    "with_qr_version",
    "EncodedVideo",
    "qr_byte_capacity",
    "render_qr_frame",
    "encode_mp4",
    "encode_mp4_file",
    "check_mp4",
]

_TUNES = ("", "film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode", "zerolatency")
_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")

# Frames rendered per task sent to a worker process, and tasks kept in flight per worker
# (bounds memory: the encoder consumes frames in order while workers render ahead).
_RENDER_BATCH = 32
_IN_FLIGHT_PER_WORKER = 3
# Below this many frames a worker pool costs more (process start ~0.3 s) than it saves.
_MIN_FRAMES_FOR_POOL = 256


def qr_byte_capacity(version: int, ec_level: str) -> int:
    """Return how many raw bytes one QR symbol holds in byte mode, without ECI.

    Args:
        version: QR version, 1..40.
        ec_level: ``"L"``, ``"M"``, ``"Q"`` or ``"H"``.

    Returns:
        Capacity in bytes, e.g. 2953 for version 40-L.

    Source: ISO/IEC 18004:2015 §7.4.3 (byte mode: 4-bit mode + 8/16-bit count), Table 7.
    """
    if ec_level not in DATA_CODEWORDS:
        raise ValueError(f"qr ec level must be one of L, M, Q, H, not {ec_level!r}")
    if not 1 <= int(version) <= 40:
        raise ValueError(f"qr version must be 1..40, not {version}")
    count_bits = 8 if version < 10 else 16
    return (DATA_CODEWORDS[ec_level][version - 1] * 8 - 4 - count_bits) // 8


@dataclass(frozen=True)
class VideoParams:
    """How payloads become QR symbols and H.264 frames (recorded in manifest ``video``).

    Attributes:
        codec: ``"h264"`` (libx264; the Pi 4 decodes it in hardware) or ``"hevc"`` (libx265,
            for devices with an HEVC but no H.264 decoder, such as the Pi 5; see
            :data:`HEVC_VIDEO_PARAMS`).
        profile: x264 profile, ``"high"`` (8x8 transform, CABAC; what Pi 4 decodes in hardware);
            ``"main"`` for HEVC (8-bit 4:2:0 Main, not the RExt "Main Intra" that x265 signals
            for ``keyint=1``).
        width: frame width in pixels, even.
        height: frame height in pixels, even.
        pix_fmt: ``"yuv420p"``; chroma is flat grey.
        crf: x264/x265 constant rate factor, 1..51 (0 would select a lossless profile).
        qr_version: QR version 1..40 (v40 = 177x177 modules).
        qr_ec_level: QR error-correction level ``"L"``/``"M"``/``"Q"``/``"H"``.
        pixels_per_module: pixels per QR module edge.
        quiet_zone_modules: light modules guaranteed around the symbol (the symbol is centred;
            the frame must leave at least this much on every side).
        fps: nominal frame rate written into the MP4 (players only; readers seek by index).
        x264_preset: x264 speed preset.
        x264_tune: x264 tune (``""`` = none, e.g. ``"stillimage"``; measured: no gain).
        x264_params: extra ``key=value:key=value`` x264 options.
        qr_mask: QR data mask 0..7, fixed (cuts QR generation from ~11 ms to ~2 ms per v40
            symbol; decoders read any mask), or ``None`` to let the encoder score all eight.
        qr_writer: ``"numpy"`` (this module's writer, ~0.4 ms per v40 symbol, needs a fixed
            ``qr_mask``) or ``"zxing"`` (zxing-cpp's, ~3.2 ms); both draw identical modules.
        encoder_threads: x264 thread count; fixed so that output does not depend on the machine.
            (x265 always runs without a thread pool, ``pools=none``, for the same reason.)
        x265_preset: x265 speed preset (HEVC only).
        x265_params: extra ``key=value:key=value`` x265 options (HEVC only), after the fixed
            closed-GOP, single-thread ones in ``mp4_writer.X265_FIXED_PARAMS``.

    Source: FORMAT.md §4.5 (video object).
    """

    codec: str = "h264"
    profile: str = "high"
    width: int = 192
    height: int = 192
    pix_fmt: str = "yuv420p"
    crf: int = 25
    qr_version: int = 40
    qr_ec_level: str = "L"
    pixels_per_module: int = 1
    quiet_zone_modules: int = 7
    fps: int = 25
    x264_preset: str = "veryfast"
    x264_tune: str = ""
    x264_params: str = "aq-mode=2:aq-strength=0.5"
    qr_mask: int | None = 0
    qr_writer: str = "numpy"
    encoder_threads: int = 1
    x265_preset: str = "veryfast"
    x265_params: str = ""

    def __post_init__(self) -> None:
        if self.codec not in ("h264", "hevc"):
            raise ValueError(f"only h264 or hevc video can be written, not {self.codec!r}")
        if self.pix_fmt != "yuv420p":
            raise ValueError(f"only yuv420p video can be written, not {self.pix_fmt!r}")
        if self.codec == "h264" and self.profile not in ("baseline", "main", "high"):
            raise ValueError(f"h264 profile must be baseline, main or high, not {self.profile!r}")
        if self.codec == "hevc" and self.profile != "main":
            raise ValueError(f"hevc profile must be main, not {self.profile!r}")
        if self.x265_preset not in _PRESETS:
            raise ValueError(f"unknown x265 preset {self.x265_preset!r}")
        if not 1 <= self.crf <= 51:
            raise ValueError(f"crf must be 1..51 (0 is lossless High 4:4:4), not {self.crf}")
        qr_byte_capacity(self.qr_version, self.qr_ec_level)  # validates version and level
        if self.pixels_per_module < 1 or self.quiet_zone_modules < 0:
            raise ValueError("pixels_per_module must be >= 1 and quiet_zone_modules >= 0")
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ValueError(f"frame size {self.width}x{self.height} must be even and >= 16 (yuv420p)")
        need = (self.symbol_modules + 2 * self.quiet_zone_modules) * self.pixels_per_module
        if self.width < need or self.height < need:
            raise ValueError(f"a version {self.qr_version} symbol at {self.pixels_per_module} px/module with a "
                             f"{self.quiet_zone_modules}-module quiet zone needs {need}x{need} px, "
                             f"frame is {self.width}x{self.height}")
        if self.x264_preset not in _PRESETS:
            raise ValueError(f"unknown x264 preset {self.x264_preset!r}")
        if self.x264_tune not in _TUNES:
            raise ValueError(f"unknown x264 tune {self.x264_tune!r}")
        if self.qr_mask is not None and not 0 <= self.qr_mask <= 7:
            raise ValueError(f"qr_mask must be 0..7 or None, not {self.qr_mask}")
        if self.qr_writer not in ("numpy", "zxing"):
            raise ValueError(f"qr_writer must be 'numpy' or 'zxing', not {self.qr_writer!r}")
        if not 1 <= self.fps <= 240 or self.encoder_threads < 1:
            raise ValueError("fps must be 1..240 and encoder_threads >= 1")

    @property
    def symbol_modules(self) -> int:
        """Modules per side of the QR symbol (``17 + 4 * qr_version``)."""
        return 17 + 4 * self.qr_version

    @property
    def payload_capacity_bytes(self) -> int:
        """Largest frame payload in bytes (byte mode, no ECI), 2953 for version 40-L."""
        return qr_byte_capacity(self.qr_version, self.qr_ec_level)


#: Smallest QR version ``with_qr_version`` gives (520 bytes at EC level L): below it a long chunk
#: no longer fits one frame once compressed, and the build stops with a ``CapacityError``.
MIN_QR_VERSION = 15

#: Frame sides are whole H.264 macroblocks (16 pixels), as 192 is for version 40.
_MACROBLOCK_PIXELS = 16


def with_qr_version(params: VideoParams, version: int) -> VideoParams:
    """Return ``params`` with version-``version`` QR symbols in the smallest square frame of whole
    16-pixel macroblocks that holds one with its quiet zone (``firmware-tools build --qr-version``).

    Version 40 gives 192x192 (``VideoParams``' field defaults), 24 gives ``DEFAULT_VIDEO_PARAMS``'
    128x128, 20 gives 112x112. A smaller symbol makes each hit's frame cheaper to decode and
    QR-read, for more video bytes: frames are filled less evenly, and every frame carries its own
    AEAD tag, zstd header, finder patterns and slice header. A query still reads about as many
    frames, because its hits mostly sit in different frames anyway (SciFact, k=10: 7.5 at version
    40, 7.8 at 24). Measured on SciFact: bench/QR_VIDEO.md §9.

    Raises:
        ValueError: ``version`` outside ``MIN_QR_VERSION``..40.

    Source: ISO/IEC 18004 §5.3.1 (a version-V symbol is 17 + 4V modules a side).
    """
    if not isinstance(version, int) or not MIN_QR_VERSION <= version <= 40:
        raise ValueError(f"qr version must be {MIN_QR_VERSION}..40, not {version!r}")
    modules = 17 + 4 * version + 2 * params.quiet_zone_modules
    side = -(-modules * params.pixels_per_module // _MACROBLOCK_PIXELS) * _MACROBLOCK_PIXELS
    return replace(params, qr_version=version, width=side, height=side)


#: Chosen by measurement (module docstring, bench/QR_VIDEO.md §2 and §9): x264 veryfast with
#: aq-mode=2:aq-strength=0.5 at CRF 25, 1 px per module, and since 2026-12-07 QR version 24-L
#: (1,171 bytes) in 128x128 frames. On SciFact (12,102 chunks, k=10, 2 cores) queries take 0.68-0.71x
#: the time of version 40 in 192x192 (2,953 bytes, 3.315 MP4 bytes per payload byte) for 1.32x the
#: video (capsule 1.78x -> 2.14x its text); all 2,471 frames still decode at CRF 27 (CRF 28 lost
#: one). ``with_qr_version(DEFAULT_VIDEO_PARAMS, 40)`` is the smallest capsule.
DEFAULT_VIDEO_PARAMS = with_qr_version(VideoParams(), 24)

#: H.264 with CAVLC instead of CABAC entropy coding (``firmware-tools build --entropy-coding
#: cavlc``), in the default's frame size. With version-24 frames (SciFact, bench/QR_VIDEO.md §7):
#: 0.33 against 0.50 ms of H.264 decode per frame inside queries, query p50 0.82-0.93x, for
#: 13.9% more video bytes; with version-40 frames it was 0.284 against 0.646 ms (§7) for 18.7%.
#: Still High profile (CABAC is optional there), so hardware H.264 decoders take it and readers
#: need nothing new. For a device where the query time matters more than the capsule's size.
CAVLC_VIDEO_PARAMS = replace(DEFAULT_VIDEO_PARAMS, x264_params=DEFAULT_VIDEO_PARAMS.x264_params + ":cabac=0")

#: HEVC capsules (``firmware-tools build --codec hevc``) for devices whose hardware decodes HEVC
#: but not H.264 (Raspberry Pi 5). Every frame is a forced IDR picture (closed GOPs of one
#: frame, no CRA/RASL), HEVC Main profile. Chosen on 60 random full v40-L payloads, 1 px/module,
#: 192x192, x265 veryfast (x86_64, PyAV 18.1 / x265 bundled in its wheel; frames read through
#: ``edge.frames.FrameReader``). With forced IDRs x265 spends more bits at equal CRF than with
#: keyint=1 (which signals the RExt "Main Intra" profile that hardware decoders may refuse), so
#: the CRF scale moves up: CRF 30 4.56 B/B, 32 4.02, **33 3.75**, 34 3.42, 35 3.15 all 60/60; CRF 36 58/60,
#: 37 53/60. CRF 33 keeps a 2-step margin below the cliff (H.264 default: 3.32 B/B). HEVC stays at
#: version 40 in 192x192: x265's margin was not measured at the H.264 default's smaller frames.
HEVC_VIDEO_PARAMS = VideoParams(codec="hevc", profile="main", crf=33)

# Fixed x265 options: every frame an IDR picture (the encoder is also handed I-frames with
# forced-idr=1), no B-frames, no scene cuts, closed GOPs; no threads (output independent of
# the machine); no SEI with the encoder's settings; parameter sets only in hvcC.
# -- QR rendering -----------------------------------------------------------------------------


def _qr_modules(payload: bytes, params: VideoParams) -> np.ndarray:
    """Return the QR module matrix: uint8 [n, n], 0 = dark, 255 = light, no quiet zone."""
    if params.qr_writer == "numpy" and params.qr_mask is not None:
        return numpy_writer(params.qr_version, params.qr_ec_level, params.qr_mask).modules(payload)
    modules = zxing_modules(payload, params.qr_version, params.qr_ec_level, params.qr_mask)
    n = params.symbol_modules
    if modules.shape != (n, n):
        raise VideoEncodeError(f"qr encoder drew {modules.shape} modules, expected {n}x{n}")
    return modules


def _check_capacity(payload: bytes, frame_index: int, params: VideoParams) -> None:
    capacity = params.payload_capacity_bytes
    if len(payload) > capacity:
        raise CapacityError(f"frame {frame_index} payload is {len(payload)} bytes, a version "
                            f"{params.qr_version}-{params.qr_ec_level} qr code holds {capacity}")
    if not payload:
        raise ValueError(f"frame {frame_index} payload is empty")


def render_qr_frame(payload: bytes, params: VideoParams = DEFAULT_VIDEO_PARAMS) -> np.ndarray:
    """Return the luma image of one frame: ``payload`` as a centred QR code.

    Args:
        payload: 1..``params.payload_capacity_bytes`` opaque bytes (QR byte mode).
        params: QR version/EC level, pixels per module and frame size.

    Returns:
        uint8 array of shape [params.height, params.width]; 0 = dark module, 255 = light.

    Raises:
        CapacityError: ``payload`` is longer than ``params.payload_capacity_bytes``.
        ValueError: ``payload`` is empty.

    Source: ISO/IEC 18004:2015 (QR code, byte mode); FORMAT.md §4.5.
    """
    _check_capacity(payload, 0, params)
    return _render_checked(bytes(payload), params)


def _render_checked(payload: bytes, params: VideoParams) -> np.ndarray:
    modules = _qr_modules(payload, params)
    ppm = params.pixels_per_module
    if ppm > 1:
        modules = np.repeat(np.repeat(modules, ppm, axis=0), ppm, axis=1)
    side = modules.shape[0]
    top = (params.height - side) // 2
    left = (params.width - side) // 2
    frame = np.full((params.height, params.width), 255, dtype=np.uint8)
    frame[top:top + side, left:left + side] = modules
    return frame


def _render_batch(args: tuple[VideoParams, list[bytes]]) -> list[bytes]:
    params, payloads = args
    return [_render_checked(p, params).tobytes() for p in payloads]


# -- H.264 / MP4 encoding -----------------------------------------------------------------------


def _default_workers() -> int:
    try:
        n_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n_cpus = os.cpu_count() or 1
    return max(0, min(n_cpus, 4) - 1)


def _iter_lumas(payloads: Iterable[bytes], params: VideoParams, n_workers: int, cluster=None) -> Iterator[bytes]:
    """Yield each payload's rendered luma (H*W bytes), in order, checking capacity first."""

    def batches() -> Iterator[list[bytes]]:
        it = iter(payloads)
        frame_index = 0
        while batch := list(islice(it, _RENDER_BATCH)):
            for payload in batch:
                _check_capacity(payload, frame_index, params)
                frame_index += 1
            yield [bytes(p) for p in batch]

    tasks = ((params, batch) for batch in batches())
    for lumas in ordered_map(_render_batch, tasks, n_workers=n_workers, cluster=cluster,
                             max_in_flight=None if cluster is not None else n_workers * _IN_FLIGHT_PER_WORKER or None):
        yield from lumas


def encode_mp4_file(
    payloads: Iterable[bytes],
    out_path: str | os.PathLike[str],
    params: VideoParams = DEFAULT_VIDEO_PARAMS,
    *,
    progress: Callable[[int], None] | None = None,
    n_frames_hint: int | None = None,
    n_workers: int | None = None,
    cluster=None,
) -> EncodedVideo:
    """Write one all-intra H.264 frame per payload to an MP4 file; return its sample table.

    Args:
        payloads: frame payloads in frame order, each 1..``params.payload_capacity_bytes`` bytes;
            consumed once, lazily.
        out_path: MP4 file to write (overwritten).
        params: QR and H.264 parameters.
        progress: optional ``progress(n_frames_done)``, called every 64 frames and at the end.
        n_frames_hint: expected frame count when ``payloads`` has no ``len()``; only decides
            whether a render pool is worth starting.
        n_workers: QR render processes beside the encoder; ``None`` = usable CPUs - 1 (max 3),
            0 = render in this process. The output does not depend on it.
        cluster: a ``distributed.Client``: draw the QR codes on its workers instead
            (``_workers.cluster_map``; they get sealed payloads, never plaintext or a key); the
            H.264 encoder runs here. The output does not depend on it.

    Returns:
        EncodedVideo with ``path``, ``n_frames``, ``extradata``, ``sample_offsets``,
        ``sample_sizes`` and ``profile`` (read back by demuxing the finished file).

    Raises:
        CapacityError: a payload is longer than ``params.payload_capacity_bytes`` (names the frame).
        ValueError: no payloads, or an empty payload.
        VideoEncodeError: FFmpeg or the encoder failed (an unwritable output, a full disk, an
            option the encoder refuses), or the finished MP4 does not demux into one keyframe
            sample per payload; the message names what failed.

    Source: FORMAT.md §4.5 (video), §5 (frame table).
    """
    out_path = Path(out_path)
    if n_workers is None:
        n_workers = _default_workers()
    known = len(payloads) if isinstance(payloads, Sequence) else n_frames_hint
    if known is not None and known < _MIN_FRAMES_FOR_POOL:
        n_workers = 0
    import av

    try:
        n_frames = encode_lumas(_iter_lumas(payloads, params, n_workers, cluster), out_path, params, progress)
        video = read_sample_table(out_path, n_frames)
    except av.FFmpegError as exc:  # PyAV's errors: some are OSError or ValueError, others neither
        raise VideoEncodeError(f"encoding the {params.codec} MP4 {out_path.name} failed: {exc}") from None
    except OSError as exc:
        raise VideoEncodeError(f"writing the MP4 {out_path} failed: {exc.strerror or exc}") from None
    log.debug("wrote %d frames, %d bytes to %s (%s, crf %d)", n_frames, video.size_bytes, out_path,
              video.profile, params.crf)
    return video


def encode_mp4(
    payloads: Iterable[bytes],
    params: VideoParams = DEFAULT_VIDEO_PARAMS,
    *,
    n_frames_hint: int | None = None,
    progress: Callable[[int], None] | None = None,
    n_workers: int | None = None,
) -> EncodedVideo:
    """Return an in-memory MP4 (``mp4_bytes``) with one frame per payload.

    Same as :func:`encode_mp4_file` through a temporary file; ``path`` is ``None``.

    Raises:
        CapacityError: a payload is longer than ``params.payload_capacity_bytes``.
        ValueError: no payloads, or an empty payload.
    """
    with tempfile.TemporaryDirectory(prefix="qr_video_") as tmp:
        path = Path(tmp) / "frames.mp4"
        video = encode_mp4_file(payloads, path, params, progress=progress, n_frames_hint=n_frames_hint,
                                n_workers=n_workers)
        data = path.read_bytes()
    return EncodedVideo(path=None, n_frames=video.n_frames, extradata=video.extradata,
                        sample_offsets=video.sample_offsets, sample_sizes=video.sample_sizes,
                        profile=video.profile, codec=video.codec, size_bytes=len(data), mp4_bytes=data)


def _check_range(args: tuple[str, str, bytes, list[int], list[int], int, list[bytes]]) -> list[int]:
    from edge.errors import FrameDecodeError
    from edge.frames import FrameReader

    path, codec, extradata, offsets, sizes, start, payloads = args
    bad: list[int] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            # offsets/sizes/payloads are this task's slice: local index i is frame start + i
            reader = FrameReader(view, extradata=extradata, sample_offsets=offsets, sample_sizes=sizes,
                                 codec=codec, prefer_hardware=False)
            try:
                for i, payload in enumerate(payloads):
                    try:
                        if reader.read_payload(i) != payload:
                            bad.append(start + i)
                    except FrameDecodeError:
                        bad.append(start + i)
            finally:
                reader.close()
        finally:
            view.release()
    return bad


def check_mp4(
    path: str | os.PathLike[str],
    payloads: Sequence[bytes],
    params: VideoParams,
    extradata: bytes,
    sample_offsets: Sequence[int],
    sample_sizes: Sequence[int],
    *,
    n_workers: int | None = None,
) -> list[int]:
    """Return the indexes of frames that do not decode to their payload byte-exact.

    Every frame goes through the runtime's reader (``edge.frames.FrameReader``, software
    decoder), exactly as a device reads it.

    Args:
        path: the MP4 written by :func:`encode_mp4_file`.
        payloads: the payloads that were encoded, frame order.
        params: the parameters they were encoded with (``codec``).
        extradata: ``EncodedVideo.extradata``.
        sample_offsets: ``EncodedVideo.sample_offsets``.
        sample_sizes: ``EncodedVideo.sample_sizes``.
        n_workers: decoding processes; ``None`` = usable CPUs (max 4), 0 = this process.

    Returns:
        Sorted 0-based frame indexes that failed; empty when every frame round-trips.

    Raises:
        ValueError: the sample table and payload counts differ.
    """
    n = len(payloads)
    if len(sample_offsets) != n or len(sample_sizes) != n:
        raise ValueError(f"{n} payloads but {len(sample_offsets)} offsets and {len(sample_sizes)} sizes")
    offsets = [int(o) for o in sample_offsets]
    sizes = [int(s) for s in sample_sizes]
    if n_workers is None:
        n_workers = _default_workers() + 1
    if n < _MIN_FRAMES_FOR_POOL:
        n_workers = 0
    path_str, codec, extradata = str(path), params.codec, bytes(extradata)
    step = min(4096, max(1, -(-n // (max(n_workers, 1) * 4))))
    tasks = ((path_str, codec, extradata, offsets[s:s + step], sizes[s:s + step], s,
              [bytes(p) for p in payloads[s:s + step]]) for s in range(0, n, step))
    bad = [i for part in ordered_map(_check_range, tasks, n_workers=n_workers if n_workers > 1 else 0) for i in part]
    if bad:
        log.warning("%d of %d frames did not round-trip: %s", len(bad), n, bad[:10])
    return sorted(bad)
