"""Add signatures to a built capsule (k-of-n co-signing); split a capsule into sections and back.

SIGS is covered by no digest (FORMAT.md §9), so a second or third publisher key can sign a
capsule after it was built: MANI, the section digests and the existing signatures stay valid;
only the section offsets after SIGS shift. The input is read through the runtime's container
reader (header, table and padding checked; bounded preads) and streamed section by section into
the new file, so co-signing a large capsule holds none of it in memory; the result is verified
fully (signatures, every section digest, every frame) before it replaces the output.

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
from edge.container import ContainerFile
from edge.capsule import OpenOptions, verify_capsule
from edge.errors import CapsuleError
from edge.manifest import parse_signatures, signatures_to_bytes

from .container_writer import container_bytes, section_bytes, write_container
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


def assemble_capsule(sections: dict[str, bytes], *, format_minor: int = fmt.TANTIVY_FORMAT_MINOR) -> bytes:
    """Return the capsule bytes for ``sections`` (every tag of ``SECTION_ORDER``), laid out per FORMAT.md §3.

    Lengths are not held to FORMAT.md §10: the test vectors reassemble deliberately malformed
    capsules with it. Writers of real capsules use ``container_writer.write_container``.
    """
    return container_bytes(sections, check_limits=False, format_minor=format_minor)


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
    try:
        source = ContainerFile(capsule_path)  # header, table and padding checked; bounded preads
    except CapsuleError as exc:
        raise BuildError(f"cannot co-sign {capsule_path}: {exc}") from exc
    with source, atomic_replace(output_path, mode=0o644) as tmp:
        try:
            mani = source.read("MANI")
            existing = {e.keyid: e for e in parse_signatures(source.read("SIGS"))}
        except CapsuleError as exc:
            raise BuildError(f"cannot co-sign {capsule_path}: {exc}") from exc
        for entry in sign_manifest(mani, list(signing_keys)):
            existing[entry.keyid] = entry
        sigs = signatures_to_bytes(sorted(existing.values(), key=lambda e: e.keyid))
        # every other section is copied block by block: co-signing a large capsule holds none of it
        sources = {tag: (entry.length, source.iter_blocks(tag)) for tag, entry in source.sections.items()}
        sources.update(MANI=section_bytes(mani), SIGS=section_bytes(sigs))
        with open(tmp, "wb") as out:
            write_container(out, sources, format_minor=source.header.format_minor)
        try:
            verify_capsule(tmp, trusted_keys=[k.public_key() for k in signing_keys], full=True, device_rules=False,
                           options=OpenOptions(threshold=len(signing_keys)),
                           now=_manifest_not_before(mani))
        except CapsuleError as exc:
            raise BuildError(f"refusing to co-sign {capsule_path}: {exc}") from exc
    return sorted(existing)


def _manifest_not_before(mani: bytes):
    from edge.manifest import parse_manifest

    return parse_manifest(mani).not_before


__all__ = ["read_sections", "assemble_capsule", "add_signatures"]
