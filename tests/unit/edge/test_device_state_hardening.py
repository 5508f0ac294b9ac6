"""Device state (time floor, version records, rate log, installs) moves only for capsules verified
against the device's own trust; ad-hoc ``--trust`` keys inspect without changing anything.

On 8a3260b a local user with a self-signed capsule could raise the floor to 2099 (every installed
capsule then expired) with ``edge verify evil.capsule --trust evil.pub``, and squat a genuine
capsule id at version 2^53-1 so that the genuine next version was refused as a rollback.
"""

from __future__ import annotations

import os
import shutil

import pytest

from edge.cli import main
from edge.store import Store
from tests.vectors.generate import ALPHA_ID, Draft
from tests.vectors.harness import KEYS, VECTORS

OK = VECTORS / "ok" / "capsule"


@pytest.fixture
def device(tmp_path, monkeypatch):
    """A device whose own trust is the provisioned key test-publisher-1."""
    config = tmp_path / "config"
    (config / "trusted").mkdir(parents=True)
    shutil.copyfile(KEYS / "test-publisher-1.pub", config / "trusted" / "test-publisher-1.pub")
    key = tmp_path / "device.key"
    key.write_bytes((KEYS / "test-device.key").read_bytes())
    os.chmod(key, 0o600)
    monkeypatch.setenv("EDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(config))
    return tmp_path, ["--identity", str(key)]


def _evil(tmp_path, *, issued_at="2026-01-01T00:00:00Z", version=None, signer="test-untrusted"):
    d = Draft(OK.read_bytes())
    d.manifest["issued_at"] = issued_at
    if version is not None:
        d.manifest["version"] = version
    path = tmp_path / f"evil-{signer}-{version}.capsule"
    path.write_bytes(d.build(signers=(signer,)))
    return path


def _state(tmp_path):
    with Store(tmp_path / "store") as store:
        return store.state.floor_at, store.state.version_record(ALPHA_ID)


def test_ad_hoc_verify_of_a_capsule_from_2099_leaves_the_floor_alone(device, capsys):
    tmp, identity = device
    assert main(["install", str(OK), *identity]) == 0
    floor_before, record_before = _state(tmp)
    evil = _evil(tmp, issued_at="2099-01-01T00:00:00Z")
    d = Draft(evil.read_bytes())
    d.manifest.update(not_before="2099-01-01T00:00:00Z", expires_at="2100-01-01T00:00:00Z")
    evil.write_bytes(d.build(signers=("test-untrusted",)))
    capsys.readouterr()
    main(["verify", str(evil), "--trust", str(KEYS / "test-untrusted.pub"), *identity])
    assert "device state unchanged" in capsys.readouterr().err
    assert _state(tmp) == (floor_before, record_before)
    assert main(["search", "alpha", "How do I reset the kiosk?", *identity]) == 0  # not expired


def test_ad_hoc_keys_cannot_install_or_squat_a_capsule_id(device, capsys):
    tmp, identity = device
    squat = _evil(tmp, version=(1 << 53) - 1)
    assert main(["install", str(squat), "--trust", str(KEYS / "test-untrusted.pub"), *identity]) == 1
    assert "not ad-hoc keys" in capsys.readouterr().err
    assert _state(tmp)[1] is None
    assert main(["install", str(OK), *identity]) == 0  # the genuine capsule still installs


def test_a_capsule_id_belongs_to_the_keys_that_signed_its_accepted_version(device, capsys):
    tmp, identity = device
    shutil.copyfile(KEYS / "test-publisher-2.pub", tmp / "config" / "trusted" / "test-publisher-2.pub")
    v1_by_other = tmp / "alpha-v1-by-publisher-2.capsule"
    v1_by_other.write_bytes(Draft((VECTORS / "older-version" / "capsule").read_bytes()).build(
        signers=("test-publisher-2",)))
    assert main(["install", str(v1_by_other), *identity]) == 0  # publisher-2 now owns alpha's id here
    capsys.readouterr()
    assert main(["install", str(OK), *identity]) == 1  # v2 by publisher-1: trusted, but not the owner
    err = capsys.readouterr().err
    assert "the id belongs to" in err and len([l for l in err.splitlines() if l.startswith("edge: error:")]) == 1
    assert _state(tmp)[1].version == 1
