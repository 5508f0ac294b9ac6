"""Key files: Ed25519 publisher keys and X25519 device identities.

Public keys are PEM SubjectPublicKeyInfo files; private keys are unencrypted PEM
PKCS#8 files that must not be readable by group or others (like ssh's private
keys). Parsing is pyca/cryptography's; this module only checks types and
permissions and computes key ids.

Example::

    trusted = [load_public_key("publisher.pub")]
    identity = load_identity("device.key")       # X25519PrivateKey
    keyid(trusted[0])                            # 64 hex chars

Source: FORMAT.md §7 (X25519 recipients), §9 (key ids).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ._files import read_regular_file
from .errors import KeyFileError

MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class Passphrase:
    """A passphrase identity for scrypt stanzas (FORMAT.md §7). ``secret`` is UTF-8 bytes."""

    secret: bytes

    def __repr__(self) -> str:  # never show the secret
        return "Passphrase(<hidden>)"


@dataclass(frozen=True)
class ContentKey:
    """A capsule's 32-byte content key as the device store caches it (FORMAT.md §13.4).

    An identity that opens the one capsule whose id is ``capsule_id`` and nothing else; the
    store keeps it for capsules installed with a passphrase, so that queries need no passphrase.
    ``manifest_sha256``, when set, narrows it to the one segment with that manifest (the
    segments of a delta share an id, each with its own content key: FORMAT.md §4.7).
    """

    capsule_id: str
    secret: bytes
    manifest_sha256: str = ""

    def __repr__(self) -> str:  # never show the key
        return f"ContentKey({self.capsule_id}, <hidden>)"


#: What opens a capsule's content key: a device key (X25519 stanza), a passphrase (scrypt
#: stanza) or a content key the store cached (FORMAT.md §7, §13.4).
Identity = X25519PrivateKey | Passphrase | ContentKey


def raw_public_bytes(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    """Return the 32 raw bytes of an Ed25519 or X25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Return the key id: SHA-256 of the raw 32-byte public key, 64 hex chars (FORMAT.md §9)."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()


def _read(path: str | os.PathLike[str], *, private: bool, what: str | None = None) -> bytes:
    what = what or ("private key file" if private else "key file")
    return read_regular_file(path, max_bytes=MAX_KEY_FILE_BYTES, what=what, error=KeyFileError, private=private)


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a trusted publisher key (PEM SubjectPublicKeyInfo, Ed25519).

    Raises:
        KeyFileError: unreadable, not PEM, or not an Ed25519 public key.
    """
    data = _read(path, private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key (a publisher key is needed)")
    return key


def load_recipient_key(path: str | os.PathLike[str]) -> X25519PublicKey:
    """Load a device's public key (PEM SubjectPublicKeyInfo, X25519).

    Raises:
        KeyFileError: unreadable, not PEM, or not an X25519 public key.
    """
    data = _read(path, private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(f"{path} is not an X25519 device public key")
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey | X25519PrivateKey:
    """Load an unencrypted PEM PKCS#8 private key of either type; the file must be mode 600.

    Raises:
        KeyFileError: unreadable, readable by group/others, not PEM, or another key type.
    """
    data = _read(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)):
        raise KeyFileError(f"{path} is neither an Ed25519 nor an X25519 private key")
    return key


def load_identity(path: str | os.PathLike[str]) -> X25519PrivateKey:
    """Load a device identity (X25519 private key, mode 600).

    Raises:
        KeyFileError: see ``load_private_key``; or the key is not X25519.
    """
    key = load_private_key(path)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path} is not an X25519 device key")
    return key


def load_passphrase(path: str | os.PathLike[str]) -> Passphrase:
    """Read a passphrase file (first line, UTF-8, without the newline; mode 600).

    Raises:
        KeyFileError: unreadable, too open, or empty.
    """
    data = _read(path, private=True, what="passphrase file")
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise KeyFileError(f"passphrase file {path} is empty")
    return Passphrase(line)
