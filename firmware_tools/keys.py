"""Generate publisher (Ed25519) and device (X25519) key pairs as PEM files.

Private keys are written with mode 0600 via ``os.open(..., O_EXCL)``: an
existing file is never overwritten and the key never exists world-readable,
not even briefly. Nothing here prints key material.

Example::

    generate_keypair("publisher", Path("keys/publisher.key"))   # + publisher.pub
    generate_keypair("device", Path("keys/kiosk-7.key"))        # + kiosk-7.pub
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.keys import keyid

KeyKind = Literal["publisher", "device", "root"]


def private_key_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """Return the unencrypted PKCS#8 PEM encoding of ``key``."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """Return the SubjectPublicKeyInfo PEM encoding of ``key``'s public half."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; refuse to overwrite.

    Raises:
        FileExistsError: ``path`` exists.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def generate_keypair(kind: KeyKind, private_path: Path, public_path: Path | None = None) -> tuple[Path, Path, str]:
    """Generate a key pair and write it; return ``(private_path, public_path, keyid)``.

    Args:
        kind: ``"publisher"`` (Ed25519, signs manifests), ``"device"`` (X25519,
            receives content keys) or ``"root"`` (Ed25519, signs trust documents; keep offline).
        private_path: where the private key goes (created 0600, must not exist).
        public_path: where the public key goes; default ``private_path`` with ``.pub``.

    Raises:
        FileExistsError: either file exists already.
        ValueError: unknown ``kind``.
    """
    if kind in ("publisher", "root"):
        key: Ed25519PrivateKey | X25519PrivateKey = Ed25519PrivateKey.generate()
    elif kind == "device":
        key = X25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key kind {kind!r}; use 'publisher', 'device' or 'root'")
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    if public_path.exists():
        raise FileExistsError(f"{public_path} exists; refusing to overwrite")
    write_private_file(private_path, private_key_pem(key))
    public_path.write_bytes(public_key_pem(key))
    return private_path, public_path, keyid(key.public_key())
