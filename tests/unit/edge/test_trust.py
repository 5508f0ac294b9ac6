"""Trust documents (FORMAT.md §12) and device state (§13): delegation, rotation, revocation, floor."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import RollbackError, SignatureError, TrustError
from edge.keys import keyid
from edge.manifest import canonical_json, parse_manifest, parse_signatures, signatures_to_bytes
from edge.trust import DeviceState, VersionRecord, manifest_sha256, verify_manifest_with_root, verify_trust_document
from firmware_tools.errors import BuildError
from firmware_tools.sealing import sign_manifest
from firmware_tools.trust_writer import Delegate, next_trust_document, write_trust_document

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAR = datetime(2090, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys():
    return {name: Ed25519PrivateKey.generate() for name in ("root", "root2", "p1", "p2", "p3", "evil")}


def _doc(keys, **kwargs):
    params = dict(root_signing_keys=[keys["root"]], version=1, issued_at=T0,
                  publishers=[Delegate(keys["p1"].public_key(), "p1", FAR), Delegate(keys["p2"].public_key(), "p2", FAR)])
    params.update(kwargs)
    return write_trust_document(**params)


def test_first_install_needs_exactly_the_provisioned_root(keys):
    doc = verify_trust_document(_doc(keys), root_keys=[keys["root"].public_key()])
    assert doc.version == 1 and set(doc.publishers) == {keyid(keys["p1"].public_key()), keyid(keys["p2"].public_key())}
    with pytest.raises(TrustError, match="not the 1 provisioned root key"):
        verify_trust_document(_doc(keys), root_keys=[keys["root2"].public_key()])
    forged = _doc(keys, root_signing_keys=[keys["evil"]], root_public_keys=[keys["root"].public_key()])
    with pytest.raises(TrustError, match="signed by 0/1 root keys"):
        verify_trust_document(forged, root_keys=[keys["root"].public_key()])


def test_update_needs_a_higher_version_signed_by_the_installed_root(keys):
    current = verify_trust_document(_doc(keys), root_keys=[keys["root"].public_key()])
    newer = next_trust_document(current.raw, root_signing_keys=[keys["root"]], issued_at=T0,
                                add=[Delegate(keys["p3"].public_key(), "p3", FAR)])
    assert verify_trust_document(newer, current=current).version == 2
    assert verify_trust_document(current.raw, current=current) is current
    with pytest.raises(TrustError, match="differs from the installed document of the same version"):
        verify_trust_document(_doc(keys, threshold=2), current=current)
    v2 = verify_trust_document(newer, current=current)
    with pytest.raises(TrustError, match="older than the installed version 2"):
        verify_trust_document(current.raw, current=v2)
    stolen = next_trust_document(current.raw, root_signing_keys=[keys["evil"]], issued_at=T0)
    with pytest.raises(TrustError, match="signed by 0/1 keys of the installed root"):
        verify_trust_document(stolen, current=current)


def test_root_rotation_needs_old_and_new_root(keys):
    current = verify_trust_document(_doc(keys), root_keys=[keys["root"].public_key()])
    new_root = [keys["root2"].public_key()]
    both = next_trust_document(current.raw, root_signing_keys=[keys["root"], keys["root2"]], issued_at=T0,
                               root_public_keys=new_root)
    assert set(verify_trust_document(both, current=current).root_keys) == {keyid(new_root[0])}
    old_only = next_trust_document(current.raw, root_signing_keys=[keys["root"]], issued_at=T0,
                                   root_public_keys=new_root)
    with pytest.raises(TrustError, match="rotates the root but is signed by 0/1 of its new root keys"):
        verify_trust_document(old_only, current=current)


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["publishers"].reverse(), "sorted by key id"),
    (lambda s: s.__setitem__("extra", 1), "unknown key(s) extra"),
    (lambda s: s["publishers"][0].__setitem__("keyid", "00" * 32), "not the SHA-256 of its public key"),
    (lambda s: s.__setitem__("revoked", [s["publishers"][0]["keyid"]]), "both delegates and revokes"),
    (lambda s: s["root"].__setitem__("threshold", 2), "1..1"),
])
def test_malformed_documents_are_refused(keys, edit, fragment):
    obj = json.loads(_doc(keys))
    edit(obj["signed"])
    from firmware_tools.trust_writer import sign_trust_document

    signed = obj["signed"]
    from edge.trust import trust_signed_message
    import base64

    sig = {"keyid": keyid(keys["root"].public_key()),
           "sig": base64.b64encode(keys["root"].sign(trust_signed_message(signed))).decode()}
    data = canonical_json({"signatures": [sig], "signed": signed})
    with pytest.raises(TrustError) as info:
        verify_trust_document(data, root_keys=[keys["root"].public_key()])
    assert fragment in str(info.value)
    with pytest.raises(BuildError):  # the writer refuses to produce it in the first place
        sign_trust_document(signed, [keys["root"]])


def _signed(manifest_dict, *signers):
    mani = canonical_json(manifest_dict)
    return mani, parse_signatures(signatures_to_bytes(sign_manifest(mani, list(signers))))


def test_manifest_signatures_count_only_delegated_unexpired_unrevoked_keys(keys, manifest_dict, caplog):
    p1, p2 = keys["p1"], keys["p2"]
    root = verify_trust_document(_doc(keys, publishers=[Delegate(p1.public_key(), "p1", FAR),
                                                        Delegate(p2.public_key(), "p2", T0.replace(year=2027))],
                                      revoked=[keyid(keys["evil"].public_key())], threshold=1),
                                 root_keys=[keys["root"].public_key()])
    mani, sigs = _signed(manifest_dict, p1)
    assert verify_manifest_with_root(mani, sigs, root, T0) == [keyid(p1.public_key())]
    mani, sigs = _signed(manifest_dict, p2)
    verify_manifest_with_root(mani, sigs, root, T0)
    with pytest.raises(SignatureError, match="1 by a key whose delegation expired"):
        verify_manifest_with_root(mani, sigs, root, datetime(2028, 1, 1, tzinfo=UTC))
    mani, sigs = _signed(manifest_dict, keys["evil"])
    with pytest.raises(SignatureError, match="1 by a revoked key"):
        verify_manifest_with_root(mani, sigs, root, T0)
    assert "ignoring signature by revoked key" in caplog.text


def test_threshold_counts_distinct_delegated_signers(keys, manifest_dict):
    root = verify_trust_document(_doc(keys, threshold=2), root_keys=[keys["root"].public_key()])
    mani, sigs = _signed(manifest_dict, keys["p1"])
    with pytest.raises(SignatureError, match="signed by 1/2 trusted keys"):
        verify_manifest_with_root(mani, sigs, root, T0)
    mani, sigs = _signed(manifest_dict, keys["p1"], keys["p2"])
    assert len(verify_manifest_with_root(mani, sigs, root, T0)) == 2
    mani, sigs = _signed(manifest_dict, keys["p1"], keys["evil"])
    with pytest.raises(SignatureError):
        verify_manifest_with_root(mani, sigs, root, T0)


def test_floor_only_moves_forward():
    device = DeviceState()
    device.observe(datetime(2027, 1, 1, tzinfo=UTC))
    device.observe(datetime(2026, 1, 1, tzinfo=UTC), issued_at=datetime(2026, 6, 1, tzinfo=UTC))
    assert device.floor_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert device.trusted_time(datetime(2020, 1, 1, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert device.trusted_time(datetime(2030, 1, 1, tzinfo=UTC)) == datetime(2030, 1, 1, tzinfo=UTC)


def test_version_records_refuse_older_and_conflicting_versions(manifest_dict):
    manifest = parse_manifest(canonical_json(manifest_dict))  # version 3
    device = DeviceState(versions={manifest.capsule_id: VersionRecord(4, "00" * 32)})
    with pytest.raises(RollbackError, match="version 3 is older than version 4"):
        device.check_version(manifest)
    device = DeviceState(versions={manifest.capsule_id: VersionRecord(3, "00" * 32)})
    with pytest.raises(RollbackError, match="differs from the version 3"):
        device.check_version(manifest)
    device = DeviceState(versions={manifest.capsule_id: VersionRecord(3, manifest_sha256(manifest))})
    device.check_version(manifest)
    assert device.accept_version(manifest) is False
    device = DeviceState()
    assert device.accept_version(manifest) is True and device.version_record(manifest.capsule_id).version == 3


def test_installing_a_trust_document_raises_the_floor(keys):
    device = DeviceState()
    device.install_trust(_doc(keys, issued_at=datetime(2026, 5, 1, tzinfo=UTC)),
                         root_keys=[keys["root"].public_key()], now=datetime(1970, 1, 1, tzinfo=UTC))
    assert device.floor_at == datetime(2026, 5, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="an update takes no root keys"):
        device.install_trust(_doc(keys), root_keys=[keys["root"].public_key()])
