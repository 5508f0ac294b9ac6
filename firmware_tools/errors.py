"""The builder's error tree: every refusal of the builder is a ``BuildError``.

A ``ValueError`` from a builder function means inconsistent arguments of that call (a version
below the base's, an engine name that does not exist, no input paths): a caller's mistake the
arguments alone show, as the standard library raises it. ``firmware-tools`` reports both as one
line (``firmware_tools.cli``). Anything that goes wrong while building (a document, the encoder,
a check of what was written, a document to co-sign or extend) is a ``BuildError``.
"""

from __future__ import annotations


class BuildError(Exception):
    """The build stopped; no capsule was written."""


class InputDocumentError(BuildError):
    """A source document is unreadable or of an unsupported type."""


class CapacityError(BuildError):
    """A chunk's payload does not fit the chosen QR symbol."""


class FrameCheckError(BuildError):
    """Decoding the encoded MP4 did not give back every payload byte-exact."""


class ReproducibilityError(BuildError):
    """Two builds from identical inputs differ."""




class VideoEncodeError(BuildError):
    """FFmpeg, the encoder or the QR writer failed, or the MP4 written is not the one encoded."""


def describe(exc: BaseException) -> str:
    """Return one line for a library's or the OS's exception: its text and the file it names.

    ``OSError(28, "No space left on device", "/mnt/x")`` -> ``"No space left on device: /mnt/x"``;
    other exceptions give their text with newlines folded, or their class name when it is empty.
    """
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
    return " ".join(str(exc).split()) or type(exc).__name__
