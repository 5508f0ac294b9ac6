"""``edge sync DIR`` (a mounted USB stick), ``edge install`` of several files and folders, and
``edge search A B`` with one capsule expired: the CLI (``run_cli``) on the signed test vectors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from .serving import Device
from .vectors.harness import KEYS, VECTORS


@pytest.fixture
def device(tmp_path):
    return Device(tmp_path / "device", device_key=KEYS / "test-device.key",
                  publisher_pubs=[KEYS / "test-publisher-1.pub"])


def _stick(tmp_path, files: dict[str, str]):
    stick = tmp_path / "stick"
    for target, vector in files.items():
        path = stick / target
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(VECTORS / vector / "capsule", path)
    return stick


def _outcomes(proc) -> dict[str, str]:
    return {os.path.relpath(r["path"], r["path"].split("/stick/")[0] + "/stick"): r["outcome"]
            for r in map(json.loads, proc.stdout.splitlines())}


def test_sync_installs_what_is_newer_and_reports_the_rest_per_file(device, tmp_path):
    stick = _stick(tmp_path, {"alpha-v2.capsule": "ok", "old/alpha-v1.capsule": "older-version",
                              "other/foreign.capsule": "signature-untrusted-key", "a-expired.capsule": "expired",
                              "a-later.capsule": "not-yet-valid", "notes.txt": "ok"})
    (stick / "link.capsule").symlink_to(stick / "alpha-v2.capsule")  # links are not followed
    proc = device.cli("sync", str(stick), "--json")
    assert proc.returncode == 0, proc.stderr
    assert _outcomes(proc) == {"alpha-v2.capsule": "installed", "a-expired.capsule": "expired",
                               "a-later.capsule": "not-yet-valid", "old/alpha-v1.capsule": "older",
                               "other/foreign.capsule": "foreign"}
    listed = [json.loads(line) for line in device.cli("list", "--json").stdout.splitlines()]
    assert [(r["name"], r["version"]) for r in listed] == [("alpha", 2)]
    again = device.cli("sync", str(stick))
    assert again.returncode == 0 and "up-to-date    " in again.stdout
    assert "sync: 1 foreign, 3 older, 1 up-to-date" in again.stderr  # the device accepted v2: v1s are older


def _damaged(path, data: bytes) -> None:
    flipped = bytearray(data)
    flipped[-200] ^= 0xFF  # inside the MP4 (VIDE is the last section): a full verify refuses it
    path.write_bytes(bytes(flipped))


def test_sync_fails_only_on_a_real_error_and_still_installs_the_rest(device, tmp_path):
    stick = _stick(tmp_path, {"b-alpha.capsule": "ok"})
    _damaged(stick / "a-damaged.capsule", (VECTORS / "ok" / "capsule").read_bytes())
    (stick / "c-garbage.capsule").write_bytes(os.urandom(4096))
    proc = device.cli("sync", str(stick), "--json")
    assert proc.returncode == 1
    rows = {os.path.basename(r["path"]): r for r in map(json.loads, proc.stdout.splitlines())}
    assert rows["a-damaged.capsule"]["outcome"] == "failed" and rows["a-damaged.capsule"]["expect"] == "integrity"
    assert rows["b-alpha.capsule"]["outcome"] == "installed"
    assert rows["c-garbage.capsule"]["outcome"] == "failed" and rows["c-garbage.capsule"]["expect"] == "format"


def test_sync_on_a_device_the_capsule_is_not_addressed_to_fails(tmp_path):
    other = Device(tmp_path / "other", device_key=KEYS / "test-other-device.key",
                   publisher_pubs=[KEYS / "test-publisher-1.pub"])
    stick = _stick(tmp_path, {"alpha.capsule": "ok"})
    proc = other.cli("sync", str(stick), "--json")
    row = json.loads(proc.stdout)
    assert proc.returncode == 1 and row["outcome"] == "failed" and row["expect"] in ("decryption", "key")


def test_sync_of_a_missing_folder_or_an_empty_one(device, tmp_path):
    proc = device.cli("sync", str(tmp_path / "nothing"))
    assert proc.returncode == 1 and proc.stderr.startswith("edge: error: cannot read") and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = device.cli("sync", str(tmp_path / "empty"))
    assert proc.returncode == 0 and "no .capsule files" in proc.stdout


def test_install_takes_several_files_and_folders(device, tmp_path):
    stick = _stick(tmp_path, {"v1.capsule": "older-version", "more/v2.capsule": "ok"})
    _damaged(stick / "more" / "v2-damaged.capsule", (VECTORS / "ok" / "capsule").read_bytes())
    proc = device.cli("install", str(stick / "v1.capsule"), str(stick / "more"))
    assert proc.returncode == 1  # the damaged one failed; the others are installed
    assert [line.split()[:3] for line in proc.stdout.splitlines()] == [["installed", "alpha", "v1"],
                                                                     ["installed", "alpha", "v2"]]
    assert proc.stderr.count("edge: error:") == 1 and "v2-damaged.capsule" in proc.stderr
    proc = device.cli("install", str(stick / "v1.capsule"), str(stick / "more" / "v2.capsule"))
    assert proc.returncode == 1 and "older than version 2" in proc.stderr


def test_search_over_several_capsules_leaves_an_expired_one_out(tmp_path):
    keys = ["--trust", str(KEYS / "test-publisher-1.pub"), "--identity", str(tmp_path / "device.key")]
    shutil.copy(KEYS / "test-device.key", tmp_path / "device.key")
    os.chmod(tmp_path / "device.key", 0o600)
    device = Device(tmp_path / "d", device_key=KEYS / "test-device.key", publisher_pubs=[])
    files = [str(VECTORS / "expired" / "capsule"), str(VECTORS / "ok" / "capsule")]
    proc = device.cli("search", *files, "How do I reset the kiosk?", "-k", "1", "--json", *keys)
    assert proc.returncode == 0, proc.stderr
    assert "left out" in proc.stderr and "expired" in proc.stderr
    assert "power button" in json.loads(proc.stdout)["text"]
    alone = device.cli("search", files[0], "How do I reset the kiosk?", *keys)
    assert alone.returncode == 1 and "expired" in alone.stderr
