"""Read one frame of the capsule video: H.264 sample -> luma image -> QR payload bytes.

This module owns random access into ``VIDE`` without demuxing: the frame table (FORMAT.md §5)
gives each sample's byte offset and size, the manifest gives the stream's ``avcC`` extradata
(FORMAT.md §4.5), and one all-intra sample decodes alone into exactly one frame. The QR code in
that frame is read with zxing-cpp and its raw byte-mode content comes back unchanged.

Before any decoder (hardware or software) sees a byte, ``parse_extradata`` checks the
``avcC``/``hvcC`` record and the frame size its SPS declares against the manifest, and
``check_sample`` checks that a sample is length-prefixed NAL units of only the types the builder
writes (IDR slices, user-data SEI; never a parameter set). Decoders open with FFmpeg's
``max_pixels`` set to the declared coded size, and a decoded frame of another size is refused.

It deliberately does not open files, parse the MP4 container, decrypt or authenticate anything:
callers pass a bytes-like view of ``VIDE`` (an mmap slice; it is never copied whole) and get the
opaque frame payload, which the AEAD of FORMAT.md §6 authenticates upstream.

Example::

    reader = FrameReader(vide_view, extradata=avcc, sample_offsets=offsets,
                         sample_sizes=sizes, codec="h264")
    payload = reader.read_payload(17)          # bytes of frame 17's QR code
    luma = reader.decode_frame(17)             # or time the two stages apart
    payload = reader.decode_qr(luma, 17)
    reader.close()

Decoder choice: with ``prefer_hardware=True`` the reader first opens the V4L2 memory-to-memory
decoder (``h264_v4l2m2m`` / ``hevc_v4l2m2m``; the Raspberry Pi 4's H.264 block) and falls back to
FFmpeg's software decoder, single-threaded, when that fails; ``decoder_name`` says which one runs.
On machines without a V4L2 device, creating the hardware context succeeds and *opening* it fails
(PyAV 18.1), so the probe opens the context before trusting it. If the hardware decoder opens but
then fails a frame that the software decoder reads, the reader logs a WARNING and stays on
software for good; a frame that fails both ways raises ``FrameDecodeError``.

QR reading: a fast "pure image" pass (``is_pure``, fixed threshold), then zxing-cpp's full
detector when that pass does not find exactly one symbol. This reads more frames near the
compression cliff than zxing-cpp's default options (at CRF 27, 3 above the default: 300/300
against 255/300) and is faster (p50 ~1.0 ms against ~1.8 ms).

Measured (x86_64 Xeon, 2 vCPUs, 192x192 v40-L frames at the default CRF 24, random order;
bench/QR_VIDEO.md): H.264 software decode p50 1.3-1.8 ms, QR read p50 1.0-1.3 ms per frame.

Size: ~760 lines because the sample authentication, the NAL filter, the decoder choice (V4L2
M2M, then software) with its fallback, and the QR read are one pipeline with one error path
per frame; splitting it would spread one hostile-byte boundary over several modules.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CapsuleFormatError, FrameDecodeError, IntegrityError

log = logging.getLogger(__name__)

__all__ = ["FrameReader", "HARDWARE_DECODERS", "SOFTWARE_DECODERS", "StreamParameters", "check_sample",
           "parse_extradata"]

#: codec name in the manifest -> FFmpeg hardware (V4L2 M2M) decoder tried first.
HARDWARE_DECODERS: dict[str, str] = {"h264": "h264_v4l2m2m", "hevc": "hevc_v4l2m2m"}
#: codec name in the manifest -> FFmpeg software decoder used as fallback.
SOFTWARE_DECODERS: dict[str, str] = {"h264": "h264", "hevc": "hevc"}

# Pixel formats whose plane 0 is 8-bit luma, one byte per pixel.
_LUMA_PLANE0_FORMATS = frozenset({
    "yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray",
})


def _import_av() -> Any:
    import av  # local import: keeps `import edge` cheap when no frame is ever read

    return av


def _import_zxing() -> Any:
    import zxingcpp

    return zxingcpp


class FrameReader:
    """Decode single frames of an all-intra capsule video by frame index.

    Args:
        video: the whole MP4: bytes-like (``bytes``, ``memoryview``, an mmap slice) or an object
            with ``len`` and slicing to ``bytes`` (``edge.container.SectionReader``, which reads
            each sample with pread, so a file that shrinks gives ``IntegrityError``, not SIGBUS).
            Only the samples that are read are copied, one at a time.
        extradata: the stream's codec extradata (``avcC`` for H.264), from the manifest.
        sample_offsets: byte offset of each frame's sample inside ``video``, frame order;
            any integer sequence or a numpy array of shape [n_frames].
        sample_sizes: byte size of each frame's sample, same length as ``sample_offsets``.
        codec: ``"h264"`` or ``"hevc"`` (manifest ``video.codec``).
        prefer_hardware: try the V4L2 M2M hardware decoder first; ``False`` forces software.
        width, height: the manifest's ``video.width`` / ``video.height`` in pixels; the SPS in
            ``extradata`` must declare exactly this size. ``None`` takes the SPS's size.
        sample_sha256: uint8 array of shape [n_frames, 32], the SHA-256 of each sample as it
            was read when ``VIDE`` was hashed against the manifest (``edge.capsule`` computes
            it when a capsule is opened by path). Each sample is then read once per decode and
            compared before anything else looks at it, so a file changed on disk after the open
            gives ``IntegrityError``, never unauthenticated bytes to FFmpeg. ``None``: the
            caller owns ``video`` (a device-store object, verified at install).

    Every sample passes ``check_sample`` before any decoder (hardware or software) sees it; the
    decoders are opened with FFmpeg's ``max_pixels`` = width * height, so that no picture larger
    than the declared frame is ever allocated; and a decoded frame of another size is refused.
    An empty ``extradata`` (a probe for available decoders) opens the decoders, but no sample
    is then accepted.

    Raises:
        ValueError: unknown codec, mismatched table lengths, or a sample outside ``video``
            (callers check FTAB against ``VIDE`` first, so this is a caller mistake).
        CapsuleFormatError: ``extradata`` is malformed (see ``parse_extradata``) or its SPS
            declares another frame size than ``width`` x ``height``.
        FrameDecodeError: neither the hardware nor the software decoder can be opened.

    Source: FORMAT.md §4.5 (video), §5 (frame table).
    """

    def __init__(
        self,
        video: Any,
        *,
        extradata: bytes,
        sample_offsets: Sequence[int] | np.ndarray,
        sample_sizes: Sequence[int] | np.ndarray,
        codec: str = "h264",
        prefer_hardware: bool = True,
        width: int | None = None,
        height: int | None = None,
        sample_sha256: np.ndarray | None = None,
    ) -> None:
        if codec not in SOFTWARE_DECODERS:
            raise ValueError(f"unsupported video codec {codec!r}, expected one of {sorted(SOFTWARE_DECODERS)}")
        if isinstance(video, (bytes, bytearray, memoryview, mmap.mmap)):
            view = memoryview(video)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
        else:  # a container.SectionReader: each sample is read with pread when it is decoded
            view = video
        offsets = np.asarray(sample_offsets, dtype=np.int64).reshape(-1)
        sizes = np.asarray(sample_sizes, dtype=np.int64).reshape(-1)
        if offsets.shape != sizes.shape:
            raise ValueError(f"{offsets.shape[0]} sample offsets but {sizes.shape[0]} sample sizes")
        if offsets.size and (int(offsets.min()) < 0 or int(sizes.min()) < 1
                             or int((offsets + sizes).max()) > len(view)):
            raise ValueError(f"sample table does not fit in a {len(view)}-byte video")
        if sample_sha256 is not None:
            sample_sha256 = np.asarray(sample_sha256, dtype=np.uint8)
            if sample_sha256.shape != (offsets.shape[0], 32):
                raise ValueError(f"sample_sha256 has shape {sample_sha256.shape}, expected ({offsets.shape[0]}, 32)")
        self._sample_sha256 = sample_sha256
        self._view = view
        self._offsets = offsets
        self._sizes = sizes
        self._extradata = bytes(extradata)
        self._codec = codec
        self._params: StreamParameters | None = None
        if self._extradata:
            self._params = parse_extradata(self._extradata, codec)
            declared = (self._params.width, self._params.height)
            if (width, height) != (None, None) and declared != (width, height):
                raise CapsuleFormatError(f"{codec} sps declares a {declared[0]}x{declared[1]} frame, "
                                         f"manifest says {width}x{height}")
        self._prefer_hardware = bool(prefer_hardware)
        self._av = _import_av()
        zx = _import_zxing()
        self._zx = zx
        self._qr_format = zx.BarcodeFormat.QRCode
        self._closed = False
        self._ctx = self._open_decoder()
        self._decoder_name = self._ctx.name

    # -- public surface ---------------------------------------------------------------------

    def twin(self) -> "FrameReader":
        """Return a second reader of the same video with a decoder of its own.

        It shares the video, sample table and sample digests (nothing is copied) and starts from
        the decoder this reader uses now (hardware, or software once hardware was dropped). Two
        readers may decode on two threads at once: PyAV releases the GIL while FFmpeg decodes
        (two threads, two contexts: 2.02x one, ``bench/bench_qr_video.py --parts threads``), and
        so does zxing-cpp while it reads a QR code. One reader is still one thread's.

        Raises:
            FrameDecodeError: no decoder can be opened.
            RuntimeError: this reader is closed.
        """
        if self._closed:
            raise RuntimeError("frame reader is closed")
        return FrameReader(self._view, extradata=self._extradata, sample_offsets=self._offsets,
                           sample_sizes=self._sizes, codec=self._codec, prefer_hardware=self.is_hardware,
                           width=self._params.width if self._params else None,
                           height=self._params.height if self._params else None,
                           sample_sha256=self._sample_sha256)

    @property
    def decoder_name(self) -> str:
        """Name of the FFmpeg decoder in use, e.g. ``"h264_v4l2m2m"`` or ``"h264"``."""
        return self._decoder_name

    @property
    def is_hardware(self) -> bool:
        """Whether the hardware (V4L2 M2M) decoder is in use."""
        return self._decoder_name != SOFTWARE_DECODERS[self._codec]

    @property
    def n_frames(self) -> int:
        """Number of frames (samples) in the table."""
        return int(self._offsets.shape[0])

    def read_payload(self, frame_index: int) -> bytes:
        """Return the raw bytes of the QR code drawn in frame ``frame_index``.

        Args:
            frame_index: 0-based frame index, ``0 <= frame_index < n_frames``.

        Returns:
            The QR symbol's byte-mode content, exactly as the builder drew it.

        Raises:
            FrameDecodeError: the sample does not decode to a frame, or the frame does not hold
                exactly one readable QR code.
            IndexError: ``frame_index`` is out of range (a caller mistake).
            RuntimeError: the reader is closed.

        Source: FORMAT.md §4.5, §6.
        """
        return self.decode_qr(self.decode_frame(frame_index), frame_index)

    def decode_frame(self, frame_index: int) -> np.ndarray:
        """Return the luma plane of frame ``frame_index``.

        Args:
            frame_index: 0-based frame index, ``0 <= frame_index < n_frames``.

        Returns:
            uint8 array of shape [height, width], C-contiguous, 0 = black, 255 = white.

        Raises:
            IntegrityError: the sample's SHA-256 differs from ``sample_sha256`` (the file
                changed after it was hashed at open), or the file shrank.
            FrameDecodeError: the sample fails ``check_sample``, the decoder rejects it or returns
                no frame, or the frame is not the stream's declared size.
            IndexError: ``frame_index`` is out of range (a caller mistake).
            RuntimeError: the reader is closed.

        Source: FORMAT.md §4.5 (one sample decodes alone into one frame).
        """
        index = self._check_index(frame_index)
        if self._closed:
            raise RuntimeError("frame reader is closed")
        sample = self._checked_sample(index)  # refused here, before any decoder, and not retried
        try:
            return self._decode_with(self._ctx, index, sample)
        except FrameDecodeError:
            self._reset_decoder()
            if not self.is_hardware:
                raise
            return self._switch_to_software(index, "decode", sample)

    def decode_qr(self, luma: np.ndarray, frame_index: int | None = None) -> bytes:
        """Return the raw bytes of the one QR code in a luma image.

        Args:
            luma: uint8 array of shape [height, width] (from ``decode_frame``).
            frame_index: names the frame in error messages; with the hardware decoder, a frame
                whose QR code fails is also re-decoded in software (see ``decoder_name``).

        Returns:
            The QR symbol's byte-mode content (zxing-cpp ``Barcode.bytes``, no text conversion).

        Raises:
            FrameDecodeError: no QR code is found, more than one is found, or its error
                correction fails.

        Source: ISO/IEC 18004 (QR code); FORMAT.md §4.5 (one QR code per frame).
        """
        try:
            return self._read_qr(luma, frame_index)
        except FrameDecodeError:
            if frame_index is None or not self.is_hardware or self._closed:
                raise
            return self._switch_to_software(self._check_index(frame_index), "qr")

    def _read_qr(self, luma: np.ndarray, frame_index: int | None) -> bytes:
        where = "frame" if frame_index is None else f"frame {frame_index}"
        zx = self._zx
        try:
            # Fast path: the builder draws one axis-aligned symbol on white ("pure" image).
            found = [b for b in zx.read_barcodes(luma, formats=self._qr_format, try_rotate=False,
                                                 try_downscale=False, try_invert=False, is_pure=True,
                                                 binarizer=zx.Binarizer.FixedThreshold) if b.valid]
            if len(found) != 1:
                # Full detector: frames the fast path misses, and telling 0 from 2+ symbols.
                found = [b for b in zx.read_barcodes(luma, formats=self._qr_format, try_rotate=False,
                                                     try_invert=False) if b.valid]
        except Exception as exc:  # noqa: BLE001 - zxing-cpp errors surface as one error type
            raise FrameDecodeError(f"{where}: qr reader failed ({type(exc).__name__})") from exc
        if len(found) != 1:
            what = "no qr code" if not found else f"{len(found)} qr codes"
            raise FrameDecodeError(f"{where}: {what} found, expected 1")
        return bytes(found[0].bytes)

    def close(self) -> None:
        """Release the decoder; later reads raise ``RuntimeError``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ctx = None
        if isinstance(self._view, memoryview):
            self._view.release()
        log.debug("frame reader closed (%s)", self._decoder_name)

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _check_index(self, frame_index: int) -> int:
        if isinstance(frame_index, bool) or not isinstance(frame_index, (int, np.integer)):
            raise TypeError(f"frame_index must be an int, not {type(frame_index).__name__}")
        index = int(frame_index)
        if not 0 <= index < self._offsets.shape[0]:
            raise IndexError(f"frame index {index} out of range (video has {self._offsets.shape[0]} frames)")
        return index

    def _open_decoder(self) -> Any:
        if self._prefer_hardware:
            name = HARDWARE_DECODERS[self._codec]
            try:
                ctx = self._create_context(name)
                log.info("using hardware video decoder %s", name)
                return ctx
            except Exception as exc:  # noqa: BLE001 - any failure means "no usable hardware"
                log.info("hardware video decoder %s unavailable (%s: %s); using software decoder %s",
                         name, type(exc).__name__, exc, SOFTWARE_DECODERS[self._codec])
        else:
            log.info("hardware video decoder not requested; using software decoder %s",
                     SOFTWARE_DECODERS[self._codec])
        name = SOFTWARE_DECODERS[self._codec]
        try:
            return self._create_context(name)
        except Exception as exc:  # noqa: BLE001
            raise FrameDecodeError(f"cannot open video decoder {name} ({type(exc).__name__}: {exc})") from exc

    def _create_context(self, name: str) -> Any:
        ctx = self._av.CodecContext.create(name, "r")
        ctx.extradata = self._extradata
        ctx.thread_type = "NONE"
        ctx.thread_count = 1
        # FFmpeg refuses (ENOMEM/EINVAL) any picture over max_pixels before allocating it, in
        # hardware wrappers too (ff_set_dimensions / ff_get_buffer). PyAV 18.1 passes these
        # options to avcodec_open2 (checked by tests/unit/edge/test_frames_hardening.py).
        max_pixels = self._params.coded_pixels if self._params else 1
        ctx.options = {"max_pixels": str(max_pixels)}
        ctx.open()  # a missing V4L2 device fails here, not in create()
        return ctx

    def _checked_sample(self, index: int) -> bytes:
        """Read sample ``index`` once, authenticate it (``sample_sha256``) and filter it
        (``check_sample``); the returned copy is what the decoder gets."""
        if self._params is None:
            raise FrameDecodeError(f"frame {index}: no stream parameters (empty extradata)")
        start = int(self._offsets[index])
        sample = bytes(self._view[start:start + int(self._sizes[index])])
        if self._sample_sha256 is not None and hashlib.sha256(sample).digest() != self._sample_sha256[index].tobytes():
            raise IntegrityError(f"frame {index}: sample sha256 differs from the video hashed at open "
                                 "(the capsule file changed on disk)")
        check_sample(sample, self._codec, self._params.nal_length_bytes, index)
        return sample

    def _decode_with(self, ctx: Any, index: int, sample: bytes) -> np.ndarray:
        try:
            frames = ctx.decode(self._av.Packet(sample))
            if not frames:
                # A decoder with output delay (V4L2 M2M) holds the frame until drained.
                frames = ctx.decode(None)
                ctx.flush_buffers()
            if not frames:
                raise FrameDecodeError(f"frame {index}: {ctx.name} returned no picture")
            frame = frames[-1]
            params = self._params
            if (frame.width, frame.height) != (params.width, params.height):
                raise FrameDecodeError(f"frame {index}: {ctx.name} decoded a {frame.width}x{frame.height} "
                                       f"picture, stream is {params.width}x{params.height}")
            return _luma(frame)
        except FrameDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad frame, never a crash
            raise FrameDecodeError(f"frame {index}: {ctx.name} cannot decode sample "
                                   f"({type(exc).__name__})") from exc

    def _switch_to_software(self, index: int, stage: str, sample: bytes | None = None) -> Any:
        """Retry frame ``index`` in software after the hardware decoder failed it.

        If software succeeds, the hardware decoder is wrong for this video and is dropped for
        good; if software fails too, the frame itself is bad and the hardware decoder stays.
        Returns the luma (stage ``"decode"``) or the payload (stage ``"qr"``).
        """
        hw_name = self._decoder_name
        sw_name = SOFTWARE_DECODERS[self._codec]
        try:
            sw = self._create_context(sw_name)
        except Exception as exc:  # noqa: BLE001
            raise FrameDecodeError(f"frame {index}: {hw_name} failed and {sw_name} cannot open") from exc
        luma = self._decode_with(sw, index, sample if sample is not None else self._checked_sample(index))
        result = luma if stage == "decode" else self._read_qr(luma, index)
        log.warning("hardware decoder %s failed frame %d that %s reads; using %s from now on",
                    hw_name, index, sw_name, sw_name)
        self._ctx = sw
        self._decoder_name = sw_name
        return result

    def _reset_decoder(self) -> None:
        # After an error the decoder may hold partial state; a fresh context costs ~0.05 ms.
        try:
            self._ctx = self._create_context(self._decoder_name)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot reopen video decoder %s: %s", self._decoder_name, exc)


def _luma(frame: Any) -> np.ndarray:
    """Return the luma plane of a decoded ``av.VideoFrame`` as uint8 [height, width]."""
    width, height = frame.width, frame.height
    if frame.format.name in _LUMA_PLANE0_FORMATS:
        plane = frame.planes[0]
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[:height, :width]
        return np.ascontiguousarray(rows)
    return frame.to_ndarray(format="gray")


# -- stream parameters and sample filter ----------------------------------------------------------
#
# Every byte FFmpeg sees is checked here first: the extradata (signed, but possibly by a stolen
# key) must be one avcC/hvcC record whose single SPS declares exactly the manifest's frame size,
# and every sample must be length-prefixed NAL units of only the types the builder writes. A
# sample carrying its own SPS/PPS (or VPS) could otherwise make the decoder allocate for any
# frame size it declares (16000x16000 cost 1.04 GB RSS per frame, issue 9).

#: NAL unit types a sample may hold, per codec (what firmware_tools.qr_video writes).
#: H.264 (ISO/IEC 14496-10 Table 7-1): 5 IDR slice, 6 SEI (x264's version SEI in frame 0).
#: HEVC (ISO/IEC 23008-2 Table 7-1): 19 IDR_W_RADL, 20 IDR_N_LP, 39 prefix SEI.
SAMPLE_NAL_TYPES: dict[str, frozenset[int]] = {"h264": frozenset({5, 6}), "hevc": frozenset({19, 20, 39})}
_SLICE_NAL_TYPES = {"h264": frozenset({5}), "hevc": frozenset({19, 20})}
_SEI_NAL_TYPES = {"h264": 6, "hevc": 39}
#: SEI payload types a sample may carry: only user_data_unregistered (encoder version text).
_SEI_PAYLOAD_TYPES = frozenset({5})
#: Cropped pixels per dimension, at most (below one 64-pixel HEVC CTB; x264 crops < 16).
MAX_CROP_PIXELS = 63
#: NAL units per sample, at most (the builder writes 1-2).
MAX_SAMPLE_NAL_UNITS = 64
_H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True)
class StreamParameters:
    """What a checked ``avcC``/``hvcC`` record declares.

    Attributes:
        nal_length_bytes: size of each sample's NAL unit length prefix (1, 2 or 4).
        width: frame width in pixels after cropping (the SPS's conformance window).
        height: frame height in pixels after cropping.
        coded_pixels: pixels of the coded picture before cropping, its width rounded up to 64
            (what FFmpeg's ``max_pixels`` is compared with).
    """

    nal_length_bytes: int
    width: int
    height: int
    coded_pixels: int


class _Bits:
    """Bounds-checked big-endian bit reader over an RBSP (Exp-Golomb as in H.264 §9.1)."""

    def __init__(self, data: bytes, what: str) -> None:
        self._value = int.from_bytes(data, "big")
        self._n_bits = 8 * len(data)
        self._pos = 0
        self._what = what

    def u(self, n: int) -> int:
        if self._pos + n > self._n_bits:
            raise CapsuleFormatError(f"{self._what} ends early at bit {self._pos}")
        self._pos += n
        return (self._value >> (self._n_bits - self._pos)) & ((1 << n) - 1)

    def ue(self, limit: int = (1 << 32) - 2) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise CapsuleFormatError(f"{self._what} has an exp-golomb code over 32 bits")
        value = (1 << zeros) - 1 + self.u(zeros)
        if value > limit:
            raise CapsuleFormatError(f"{self._what} field value {value} over its limit {limit}")
        return value

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal_payload: bytes) -> bytes:
    """Remove emulation prevention bytes (00 00 03 -> 00 00; H.264 §7.4.1)."""
    return nal_payload.replace(b"\x00\x00\x03", b"\x00\x00")


def _crop_units(chroma_format_idc: int, separate_planes: bool) -> tuple[int, int]:
    """Return (SubWidthC, SubHeightC): H.264 Table 6-1, HEVC Table 6-1."""
    if chroma_format_idc == 0 or separate_planes:
        return 1, 1
    return {1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_format_idc]


def _h264_sps_size(nal: bytes) -> tuple[int, int, int, int]:
    """Return (coded width, coded height, width, height) an H.264 SPS declares (ISO/IEC 14496-10 §7.3.2.1.1, §7.4.2.1.1)."""
    b = _Bits(_rbsp(nal[1:]), "h264 sps")
    profile_idc = b.u(8)
    b.u(16)  # constraint flags, level_idc
    b.ue(31)  # seq_parameter_set_id
    chroma_format_idc, separate = 1, False
    if profile_idc in _H264_HIGH_PROFILES:
        chroma_format_idc = b.ue(3)
        if chroma_format_idc == 3:
            separate = bool(b.u(1))
        b.ue(6), b.ue(6), b.u(1)  # bit depths, qpprime_y_zero_transform_bypass_flag
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if b.u(1):
                    last = following = 8
                    for _ in range(16 if i < 6 else 64):
                        if following:
                            following = (last + b.se()) % 256
                        last = following or last
    b.ue(12)  # log2_max_frame_num_minus4
    poc_type = b.ue(2)
    if poc_type == 0:
        b.ue(12)
    elif poc_type == 1:
        b.u(1), b.se(), b.se()
        for _ in range(b.ue(255)):
            b.se()
    b.ue(16), b.u(1)  # max_num_ref_frames, gaps_in_frame_num_value_allowed_flag
    width_mbs, height_map_units = b.ue(1 << 16) + 1, b.ue(1 << 16) + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)  # mb_adaptive_frame_field_flag
    b.u(1)  # direct_8x8_inference_flag
    coded_width = width = 16 * width_mbs
    coded_height = height = 16 * height_map_units * (2 - frame_mbs_only)
    if b.u(1):  # frame_cropping_flag
        crop_x, crop_y = _crop_units(chroma_format_idc, separate)
        crop_y *= 2 - frame_mbs_only
        left, right, top, bottom = (b.ue(1 << 20) for _ in range(4))
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    return coded_width, coded_height, width, height


def _hevc_sps_size(nal: bytes) -> tuple[int, int, int, int]:
    """Return (coded width, coded height, width, height) an HEVC SPS declares (ISO/IEC 23008-2 §7.3.2.2, §7.3.3)."""
    b = _Bits(_rbsp(nal[2:]), "hevc sps")
    b.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = b.u(3)
    if max_sub_layers_minus1 > 6:
        raise CapsuleFormatError(f"hevc sps has {max_sub_layers_minus1 + 1} sub-layers, limit is 7")
    b.u(1)  # sps_temporal_id_nesting_flag
    b.u(48), b.u(48)  # general profile_tier_level: 88 bits, then general_level_idc
    present = [(b.u(1), b.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1:
        b.u(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in present:
        if profile_present:
            b.u(44), b.u(44)
        if level_present:
            b.u(8)
    b.ue(15)  # sps_seq_parameter_set_id
    chroma_format_idc = b.ue(3)
    separate = bool(b.u(1)) if chroma_format_idc == 3 else False
    coded_width, coded_height = width, height = b.ue(1 << 20), b.ue(1 << 20)
    if b.u(1):  # conformance_window_flag
        crop_x, crop_y = _crop_units(chroma_format_idc, separate)
        left, right, top, bottom = (b.ue(1 << 20) for _ in range(4))
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    return coded_width, coded_height, width, height


def _take(data: bytes, pos: int, n: int, what: str) -> tuple[bytes, int]:
    if n < 0 or pos + n > len(data):
        raise CapsuleFormatError(f"{what} ends early: {n} bytes needed at offset {pos} of {len(data)}")
    return data[pos:pos + n], pos + n


def _avcc_nal_units(extradata: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """Split an avcC record (ISO/IEC 14496-15 §5.3.3.1) into (nal length size, [(type, nal)])."""
    what = "h264 extradata (avcC)"
    head, pos = _take(extradata, 0, 6, what)
    if head[0] != 1:
        raise CapsuleFormatError(f"{what} version is {head[0]}, expected 1")
    units: list[tuple[int, bytes]] = []
    for expected_type, count in ((7, head[5] & 0x1F), (8, None)):
        if count is None:
            raw, pos = _take(extradata, pos, 1, what)
            count = raw[0]
        for _ in range(count):
            raw, pos = _take(extradata, pos, 2, what)
            nal, pos = _take(extradata, pos, int.from_bytes(raw, "big"), what)
            if not nal or nal[0] & 0x80 or nal[0] & 0x1F != expected_type:
                raise CapsuleFormatError(f"{what} holds a nal unit that is not type {expected_type}")
            units.append((expected_type, nal))
    if pos < len(extradata) and head[1] in _H264_HIGH_PROFILES:  # §5.3.3.1.2 high-profile tail
        tail, pos = _take(extradata, pos, 4, what)
        for _ in range(tail[3]):
            raw, pos = _take(extradata, pos, 2, what)
            nal, pos = _take(extradata, pos, int.from_bytes(raw, "big"), what)
            if not nal or nal[0] & 0x80 or nal[0] & 0x1F != 13:
                raise CapsuleFormatError(f"{what} holds a nal unit that is not type 13")
            units.append((13, nal))
    if pos != len(extradata):
        raise CapsuleFormatError(f"{what} has {len(extradata) - pos} bytes after its last nal unit")
    return (head[4] & 3) + 1, units


def _hvcc_nal_units(extradata: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """Split an hvcC record (ISO/IEC 14496-15 §8.3.3.1) into (nal length size, [(type, nal)])."""
    what = "hevc extradata (hvcC)"
    head, pos = _take(extradata, 0, 23, what)
    if head[0] != 1:
        raise CapsuleFormatError(f"{what} version is {head[0]}, expected 1")
    units: list[tuple[int, bytes]] = []
    for _ in range(head[22]):
        raw, pos = _take(extradata, pos, 3, what)
        array_type = raw[0] & 0x3F
        if array_type not in (32, 33, 34, 39):
            raise CapsuleFormatError(f"{what} holds nal units of type {array_type}")
        for _ in range(int.from_bytes(raw[1:3], "big")):
            raw, pos = _take(extradata, pos, 2, what)
            nal, pos = _take(extradata, pos, int.from_bytes(raw, "big"), what)
            if len(nal) < 2 or nal[0] & 0x80 or (nal[0] >> 1) & 0x3F != array_type:
                raise CapsuleFormatError(f"{what} holds a nal unit that is not type {array_type}")
            if array_type == 39:
                _check_sei(nal, 2, what, CapsuleFormatError)
            units.append((array_type, nal))
    if pos != len(extradata):
        raise CapsuleFormatError(f"{what} has {len(extradata) - pos} bytes after its last nal unit")
    return (head[21] & 3) + 1, units


def parse_extradata(extradata: bytes, codec: str) -> StreamParameters:
    """Check a stream's ``avcC``/``hvcC`` record and return the parameters it declares.

    The record must hold exactly one SPS (and, for HEVC, one VPS), at least one PPS, nothing
    else but SPS extensions (H.264) or user-data SEI (HEVC), every length inside the record.

    Args:
        extradata: the manifest's ``video.extradata``.
        codec: ``"h264"`` or ``"hevc"``.

    Returns:
        The NAL length size and the cropped frame size the SPS declares.

    Raises:
        CapsuleFormatError: the record is malformed, holds other NAL units, or its SPS is
            malformed or declares an empty frame.

    Source: ISO/IEC 14496-15 §5.3.3 (avcC), §8.3.3 (hvcC); ISO/IEC 14496-10 §7.3.2.1 and
    ISO/IEC 23008-2 §7.3.2.2 (SPS); FORMAT.md §4.5.
    """
    if codec == "h264":
        nal_length_bytes, units = _avcc_nal_units(bytes(extradata))
        need = {7: (1, 1), 8: (1, 256)}
        sps_size = _h264_sps_size
    else:
        nal_length_bytes, units = _hvcc_nal_units(bytes(extradata))
        need = {32: (1, 1), 33: (1, 1), 34: (1, 64)}
        sps_size = _hevc_sps_size
    for nal_type, (low, high) in need.items():
        count = sum(1 for t, _ in units if t == nal_type)
        if not low <= count <= high:
            raise CapsuleFormatError(f"{codec} extradata holds {count} nal units of type {nal_type}, "
                                     f"expected {low}..{high}")
    if nal_length_bytes == 3:
        raise CapsuleFormatError(f"{codec} extradata declares 3-byte nal lengths (only 1, 2 or 4 exist)")
    sps = next(nal for t, nal in units if t == (7 if codec == "h264" else 33))
    coded_width, coded_height, width, height = sps_size(sps)
    if width < 1 or height < 1:
        raise CapsuleFormatError(f"{codec} sps declares a {width}x{height} frame")
    if coded_width - width > MAX_CROP_PIXELS or coded_height - height > MAX_CROP_PIXELS:
        raise CapsuleFormatError(f"{codec} sps crops a {coded_width}x{coded_height} picture to {width}x{height}, "
                                 f"at most {MAX_CROP_PIXELS} pixels per side")
    # FFmpeg checks max_pixels against the width rounded up to its stride alignment (64 with
    # AVX-512, libavcodec/decode.c ff_get_buffer), so the limit allows for that rounding.
    return StreamParameters(nal_length_bytes, width, height, -(-coded_width // 64) * 64 * coded_height)


def _check_sei(nal: bytes, header_bytes: int, what: str, error: type[Exception] = FrameDecodeError) -> None:
    """Refuse an SEI NAL unit holding anything but user_data_unregistered messages."""
    rbsp = _rbsp(nal[header_bytes:])
    pos = 0
    while pos < len(rbsp) and rbsp[pos:] != b"\x80":
        values = []
        for _ in range(2):  # payloadType, payloadSize: runs of 0xFF then a last byte (§7.3.5)
            value = 0
            while pos < len(rbsp) and rbsp[pos] == 0xFF:
                value += 255
                pos += 1
            if pos >= len(rbsp):
                raise error(f"{what}: sei message ends early")
            value += rbsp[pos]
            pos += 1
            values.append(value)
        payload_type, payload_size = values
        if payload_type not in _SEI_PAYLOAD_TYPES:
            raise error(f"{what}: sei payload type {payload_type} is not allowed")
        pos += payload_size
    if pos >= len(rbsp):
        raise error(f"{what}: sei message overruns its nal unit")


def check_sample(sample: bytes | memoryview, codec: str, nal_length_bytes: int, frame_index: int) -> None:
    """Refuse a sample that is not length-prefixed NAL units of the types a capsule may hold.

    Allowed: slices of an IDR picture and user-data SEI (``SAMPLE_NAL_TYPES``); never a
    parameter set (SPS, PPS, VPS), which would override the manifest's stream parameters.
    At most ``MAX_SAMPLE_NAL_UNITS`` units, each length inside the sample.

    Raises:
        FrameDecodeError: a length overruns the sample, a unit has another type, a nonzero
            forbidden bit or HEVC layer id, or the sample holds no slice.

    Source: ISO/IEC 14496-15 §5.3.2 / §8.3.2 (sample format); Table 7-1 of ISO/IEC 14496-10 and
    ISO/IEC 23008-2 (NAL unit types); FORMAT.md §4.5.
    """
    where = f"frame {frame_index}"
    allowed = SAMPLE_NAL_TYPES[codec]
    header_bytes = 1 if codec == "h264" else 2
    view = memoryview(sample)
    pos, n_units, n_slices = 0, 0, 0
    while pos < len(view):
        if len(view) - pos < nal_length_bytes:
            raise FrameDecodeError(f"{where}: sample ends inside a nal unit length")
        length = int.from_bytes(view[pos:pos + nal_length_bytes], "big")
        pos += nal_length_bytes
        if not header_bytes <= length <= len(view) - pos:
            raise FrameDecodeError(f"{where}: nal unit of {length} bytes does not fit the "
                                   f"{len(view)}-byte sample at offset {pos}")
        n_units += 1
        if n_units > MAX_SAMPLE_NAL_UNITS:
            raise FrameDecodeError(f"{where}: sample holds over {MAX_SAMPLE_NAL_UNITS} nal units")
        first = view[pos]
        if codec == "h264":
            nal_type, bad_header = first & 0x1F, first & 0x80
        else:
            second = view[pos + 1]
            nal_type = (first >> 1) & 0x3F
            bad_header = first & 0x80 or first & 1 or second & 0xF8 or not second & 7  # layer 0, tid >= 1
        if bad_header:
            raise FrameDecodeError(f"{where}: nal unit header {bytes(view[pos:pos + header_bytes]).hex()} "
                                   f"is not allowed")
        if nal_type not in allowed:
            raise FrameDecodeError(f"{where}: sample holds a nal unit of type {nal_type}, "
                                   f"allowed {sorted(allowed)}")
        if nal_type == _SEI_NAL_TYPES[codec]:
            _check_sei(bytes(view[pos:pos + length]), header_bytes, where)
        n_slices += nal_type in _SLICE_NAL_TYPES[codec]
        pos += length
    if not n_slices:
        raise FrameDecodeError(f"{where}: sample holds no idr slice")
