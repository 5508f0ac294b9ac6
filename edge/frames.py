"""Read one frame of the capsule video: H.264 sample -> luma image -> QR payload bytes.

This module owns random access into ``VIDE`` without demuxing: the frame table (FORMAT.md §5)
gives each sample's byte offset and size, the manifest gives the stream's ``avcC`` extradata
(FORMAT.md §4.5), and one all-intra sample decodes alone into exactly one frame. The QR code in
that frame is read with zxing-cpp and its raw byte-mode content comes back unchanged.

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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import FrameDecodeError

log = logging.getLogger(__name__)

__all__ = ["FrameReader", "HARDWARE_DECODERS", "SOFTWARE_DECODERS"]

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
        video: bytes-like view of the whole MP4 (``bytes``, ``memoryview`` or an mmap slice).
            Only the samples that are read are copied, one at a time.
        extradata: the stream's codec extradata (``avcC`` for H.264), from the manifest.
        sample_offsets: byte offset of each frame's sample inside ``video``, frame order;
            any integer sequence or a numpy array of shape [n_frames].
        sample_sizes: byte size of each frame's sample, same length as ``sample_offsets``.
        codec: ``"h264"`` or ``"hevc"`` (manifest ``video.codec``).
        prefer_hardware: try the V4L2 M2M hardware decoder first; ``False`` forces software.

    Raises:
        ValueError: unknown codec, mismatched table lengths, or a sample outside ``video``
            (callers check FTAB against ``VIDE`` first, so this is a caller mistake).
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
    ) -> None:
        if codec not in SOFTWARE_DECODERS:
            raise ValueError(f"unsupported video codec {codec!r}, expected one of {sorted(SOFTWARE_DECODERS)}")
        view = memoryview(video)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        offsets = np.asarray(sample_offsets, dtype=np.int64).reshape(-1)
        sizes = np.asarray(sample_sizes, dtype=np.int64).reshape(-1)
        if offsets.shape != sizes.shape:
            raise ValueError(f"{offsets.shape[0]} sample offsets but {sizes.shape[0]} sample sizes")
        if offsets.size and (int(offsets.min()) < 0 or int(sizes.min()) < 1
                             or int((offsets + sizes).max()) > len(view)):
            raise ValueError(f"sample table does not fit in a {len(view)}-byte video")
        self._view = view
        self._offsets = offsets
        self._sizes = sizes
        self._extradata = bytes(extradata)
        self._codec = codec
        self._prefer_hardware = bool(prefer_hardware)
        self._av = _import_av()
        zx = _import_zxing()
        self._zx = zx
        self._qr_format = zx.BarcodeFormat.QRCode
        self._closed = False
        self._ctx = self._open_decoder()
        self._decoder_name = self._ctx.name

    # -- public surface ---------------------------------------------------------------------

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
            FrameDecodeError: the decoder rejects the sample or returns no frame.
            IndexError: ``frame_index`` is out of range (a caller mistake).
            RuntimeError: the reader is closed.

        Source: FORMAT.md §4.5 (one sample decodes alone into one frame).
        """
        index = self._check_index(frame_index)
        if self._closed:
            raise RuntimeError("frame reader is closed")
        try:
            return self._decode_with(self._ctx, index)
        except FrameDecodeError:
            self._reset_decoder()
            if not self.is_hardware:
                raise
            return self._switch_to_software(index, "decode")

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
        ctx.open()  # a missing V4L2 device fails here, not in create()
        return ctx

    def _decode_with(self, ctx: Any, index: int) -> np.ndarray:
        start = int(self._offsets[index])
        sample = self._view[start:start + int(self._sizes[index])]
        try:
            frames = ctx.decode(self._av.Packet(sample))
            if not frames:
                # A decoder with output delay (V4L2 M2M) holds the frame until drained.
                frames = ctx.decode(None)
                ctx.flush_buffers()
            if not frames:
                raise FrameDecodeError(f"frame {index}: {ctx.name} returned no picture")
            return _luma(frames[-1])
        except FrameDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad frame, never a crash
            raise FrameDecodeError(f"frame {index}: {ctx.name} cannot decode sample "
                                   f"({type(exc).__name__})") from exc

    def _switch_to_software(self, index: int, stage: str) -> Any:
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
        luma = self._decode_with(sw, index)
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
