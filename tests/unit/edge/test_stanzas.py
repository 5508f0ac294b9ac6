"""Issue 9, item 3: the content-key unwrap work is bounded before it starts (age's rule: a
scrypt stanza is the only stanza; at most MAX_X25519_STANZAS X25519 tries per device key)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import open_capsule
from edge.errors import CapsuleFormatError, DecryptionError
from edge.keys import ContentKey, Passphrase
from edge.manifest import canonical_json, parse_manifest, stanza_to_json
from edge.sealed import MAX_X25519_STANZAS, check_recipient_stanzas, unwrap_content_key
from tests.vectors import generate as fv
from firmware_tools.sealing import Randomness, wrap_for_device, wrap_for_passphrase

from tests.conftest import ROOT

CONTENT_KEY = bytes(range(32))
CAPSULE_ID = "00" * 16


def manifest_with(manifest_dict, stanzas):
    manifest_dict["recipients"] = [stanza_to_json(s) for s in stanzas]
    return replace(parse_manifest(canonical_json(manifest_dict)), capsule_id=CAPSULE_ID)


def scrypt_stanza(passphrase: bytes, log_n: int = 10):
    return wrap_for_passphrase(CONTENT_KEY, Passphrase(passphrase), bytes.fromhex(CAPSULE_ID), Randomness(), log_n=log_n)


def test_several_scrypt_stanzas_are_refused_before_any_scrypt_runs(manifest_dict):
    # Old reader: ran scrypt once per stanza (8 at log_n 18: 8.9 s per open, 1,024: ~19 minutes).
    m = manifest_with(manifest_dict, [scrypt_stanza(b"p%d" % i) for i in range(8)])
    with pytest.raises(CapsuleFormatError,
                       match=r"^a scrypt stanza must be the only recipient stanza, manifest has 8 \(8 scrypt\)$"):
        unwrap_content_key(m, [Passphrase(b"p7")])


@pytest.mark.parametrize("identity_kind", ["passphrase", "device", "cached"])
def test_scrypt_stanza_beside_a_device_stanza_is_refused_for_any_identity(manifest_dict, identity_kind):
    device = X25519PrivateKey.generate()
    m = manifest_with(manifest_dict, [wrap_for_device(CONTENT_KEY, device.public_key(), bytes.fromhex(CAPSULE_ID),
                                                      Randomness()), scrypt_stanza(b"right")])
    identity = {"passphrase": Passphrase(b"right"), "device": device,
                "cached": ContentKey(CAPSULE_ID, CONTENT_KEY)}[identity_kind]
    with pytest.raises(CapsuleFormatError, match=r"manifest has 2 \(1 scrypt\)"):
        unwrap_content_key(m, [identity])


def test_a_lone_scrypt_stanza_still_opens(manifest_dict):
    m = manifest_with(manifest_dict, [scrypt_stanza(b"right")])
    assert unwrap_content_key(m, [Passphrase(b"wrong"), Passphrase(b"right")]) == CONTENT_KEY
    with pytest.raises(DecryptionError):
        unwrap_content_key(m, [Passphrase(b"wrong")])


def test_x25519_stanzas_are_bounded_by_the_recipient_limit(manifest_dict):
    device = X25519PrivateKey.generate()
    others = [X25519PrivateKey.from_private_bytes(bytes([i % 256, i // 256]) + bytes(30)).public_key()
              for i in range(1, MAX_X25519_STANZAS)]
    cid = bytes.fromhex(CAPSULE_ID)
    stanzas = [wrap_for_device(CONTENT_KEY, k, cid, Randomness(b"seed")) for k in others]
    stanzas.append(wrap_for_device(CONTENT_KEY, device.public_key(), cid, Randomness(b"seed")))
    m = manifest_with(manifest_dict, stanzas)
    assert len(m.recipients) == MAX_X25519_STANZAS == 1024
    assert unwrap_content_key(m, [device]) == CONTENT_KEY  # the last of 1,024 tries
    with pytest.raises(CapsuleFormatError, match="1025 recipient stanzas, limit is 1024"):
        check_recipient_stanzas(list(m.recipients) + [m.recipients[0]])
    with pytest.raises(CapsuleFormatError, match="no recipient stanza"):
        check_recipient_stanzas([])


def test_signed_capsule_with_scrypt_beside_a_device_stanza_is_refused_at_open():
    draft = fv.Draft((ROOT / "tests" / "vectors" / "ok" / "capsule").read_bytes())
    extra = wrap_for_passphrase(bytes(32), Passphrase(b"x"), bytes.fromhex(draft.manifest["capsule_id"]),
                                Randomness(), log_n=10)
    draft.manifest["recipients"].append(stanza_to_json(extra))
    data = draft.build()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixed.capsule"
        path.write_bytes(data)
        with pytest.raises(CapsuleFormatError, match="scrypt stanza must be the only recipient stanza"):
            open_capsule(path, trusted_keys=[fv.test_key("test-publisher-1").public_key()],
                         identities=[Passphrase(b"x"), fv.test_key("test-device")],
                         now=datetime(2030, 1, 1, tzinfo=timezone.utc))
