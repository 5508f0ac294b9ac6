"""The builder's error tree: every refusal of the builder is a ``BuildError``."""

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
