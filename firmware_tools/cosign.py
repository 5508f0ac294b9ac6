"""Add signatures to a built capsule (k-of-n co-signing); split a capsule into sections and back.

SIGS is covered by no digest (FORMAT.md §9), so a second or third publisher key can sign a
capsule after it was built: MANI, the section digests and the existing signatures stay valid;
only the section offsets after SIGS shift. Each co-signer checks what it signs first: the
capsule's digests are verified against the manifest before the new signature is added, and the
result is verified again before it replaces the output.

It does not decide who must sign: the device's trust document sets the threshold (FORMAT.md §12).

Example::

    add_signatures(Path("manual.capsule"), [second_key])     # now signed by two keys
    sections = read_sections(Path("manual.capsule").read_bytes())
    assert assemble_capsule(sections) == Path("manual.capsule").read_bytes()

Source: FORMAT.md §2-§3 (layout), §9 (signatures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import format as fmt
from edge._files import atomic_replace
from edge.capsule import OpenOptions, verify_capsule
from edge.errors import CapsuleError
from edge.manifest import parse_signatures, signatures_to_bytes

from .errors import BuildError
from .sealing import sign_manifest


def read_sections(data: bytes) -> dict[str, bytes]:
    """Return a capsule's sections by tag, in file order (header and table checked, nothing else).

    Raises:
        CapsuleFormatError, IntegrityError: the header or section table is malformed.
    """
    header = fmt.parse_header(data[:fmt.HEADER_BYTES], file_bytes=len(data))
    table = fmt.parse_section_table(data[fmt.HEADER_BYTES:fmt.HEADER_BYTES + header.table_bytes], header)
    return {tag: bytes(data[e.offset:e.end]) for tag, e in table.items()}


def assemble_capsule(sections: dict[str, bytes]) -> bytes:
    """Return the capsule bytes for ``sections`` (every tag of ``SECTION_ORDER``), laid out per FORMAT.md §3."""
    header, entries = fmt.layout_sections({tag: len(sections[tag]) for tag in fmt.SECTION_ORDER})
    out = bytearray(header.to_bytes())
    for entry in entries:
        out += entry.to_bytes()
    for entry in entries:
        out += bytes(entry.offset - len(out))
        out += sections[entry.tag]
    assert len(out) == header.file_bytes
    return bytes(out)


def add_signatures(capsule_path: Path, signing_keys: Sequence[Ed25519PrivateKey],
                   output_path: Path | None = None) -> list[str]:
    """Sign a capsule's manifest with more keys; write the result atomically.

    Args:
        capsule_path: the capsule to co-sign.
        signing_keys: Ed25519 publisher keys to add (a key that signed already is re-signed).
        output_path: where to write; default: replace ``capsule_path``.

    Returns:
        Key ids (hex) of all signatures in the result, sorted.

    Raises:
        BuildError: the capsule's sections do not match its manifest, or the result does not
            verify; nothing is written then.
    """
    output_path = Path(output_path or capsule_path)
    data = Path(capsule_path).read_bytes()
    try:
        sections = read_sections(data)
        existing = {e.keyid: e for e in parse_signatures(sections["SIGS"])}
    except CapsuleError as exc:
        raise BuildError(f"cannot co-sign {capsule_path}: {exc}") from exc
    for entry in sign_manifest(sections["MANI"], list(signing_keys)):
        existing[entry.keyid] = entry
    sections["SIGS"] = signatures_to_bytes(sorted(existing.values(), key=lambda e: e.keyid))
    out = assemble_capsule(sections)
    with atomic_replace(output_path, mode=0o644) as tmp:
        tmp.write_bytes(out)
        try:
            verify_capsule(tmp, trusted_keys=[k.public_key() for k in signing_keys], full=True, device_rules=False,
                           options=OpenOptions(threshold=len(signing_keys)),
                           now=_manifest_not_before(sections["MANI"]))
        except CapsuleError as exc:
            raise BuildError(f"refusing to co-sign {capsule_path}: {exc}") from exc
    return sorted(existing)


def _manifest_not_before(mani: bytes):
    from edge.manifest import parse_manifest

    return parse_manifest(mani).not_before


__all__ = ["read_sections", "assemble_capsule", "add_signatures"]
