"""The store and trust verbs through ``run_cli`` (real subprocesses where state must hold across
processes): edge install/list/remove/search NAME/export/trust,
firmware-tools keygen --kind root / trust / sign. Exit codes, stdout shape, one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from .conftest import ROOT, run_cli
from .test_cli import _assert_one_line_error
from .vectors.harness import KEYS, VECTORS

QUERY = "How do I reset the kiosk?"


@pytest.fixture
def device(tmp_path):
    """A fresh store and config dir, and 0600 copies of the test keys this device holds."""
    store, config = tmp_path / "store", tmp_path / "config"
    config.mkdir()
    for name in ("test-device", "test-publisher-2"):
        shutil.copy(KEYS / f"{name}.key", tmp_path / f"{name}.key")
        os.chmod(tmp_path / f"{name}.key", 0o600)
    env = {"EDGE_STORE_DIR": str(store), "EDGE_CONFIG_DIR": str(config)}
    keys = ["--trust", str(KEYS / "test-publisher-1.pub"), "--identity", str(tmp_path / "test-device.key")]
    return env, keys, tmp_path


def test_install_list_search_read_export_remove_by_name(device):
    env, keys, _ = device
    proc = run_cli("edge", "install", str(VECTORS / "ok" / "capsule"), *keys, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("installed alpha v2 (a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1), expires 2090-01-01T00:00:00Z")
    proc = run_cli("edge", "list", "--json", env=env)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["name"], r["version"], r["status"]) for r in rows] == [("alpha", 2, "ok")]
    proc = run_cli("edge", "search", "alpha", QUERY, "-k", "1", "--json", *keys, env=env)
    assert proc.returncode == 0, proc.stderr
    hit = json.loads(proc.stdout)
    assert "power button" in hit["text"]
    proc = run_cli("edge", "read", "alpha", str(hit["chunk_id"]), "--json", *keys, env=env)
    assert json.loads(proc.stdout)["text"] == hit["text"]
    proc = run_cli("edge", "export", "alpha", *keys, env=env)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 6
    proc = run_cli("edge", "remove", "alpha", env=env)
    assert proc.returncode == 0 and "versions below 2 stay refused" in proc.stdout
    assert "no capsules installed" in run_cli("edge", "list", env=env).stdout


def test_install_of_an_older_version_is_refused_in_one_line(device):
    env, keys, _ = device
    assert run_cli("edge", "install", str(VECTORS / "ok" / "capsule"), *keys, env=env).returncode == 0
    proc = run_cli("edge", "install", str(VECTORS / "older-version" / "capsule"), *keys, env=env)
    _assert_one_line_error(proc, "version 1 is older than version 2 accepted on this device")
    assert "edge: hint: this device accepted a newer version" in proc.stderr


def test_search_of_a_name_not_installed_is_one_line(device):
    env, keys, _ = device
    _assert_one_line_error(run_cli("edge", "search", "nothing", QUERY, *keys, env=env), "no capsule named 'nothing'")


def test_json_mode_reports_the_error_word_on_stdout(device):
    env, keys, _ = device
    proc = run_cli("edge", "verify", str(VECTORS / "signature-untrusted-key" / "capsule"), *keys, "--json", env=env)
    assert proc.returncode == 1 and proc.stdout.strip() == proc.stdout.strip().splitlines()[0]
    assert json.loads(proc.stdout)["error"] == "signature"


def test_rules_are_enforced_by_the_cli(device):
    env, keys, _ = device
    proc = run_cli("edge", "export", str(VECTORS / "rule-operations-export-forbidden" / "capsule"), *keys, env=env)
    _assert_one_line_error(proc, "operation 'export' is not allowed")
    path = str(VECTORS / "rule-max-k-exceeded" / "capsule")  # max_k 2: the default -k becomes 2
    proc = run_cli("edge", "search", path, QUERY, "--json", *keys, env=env)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    _assert_one_line_error(run_cli("edge", "search", path, QUERY, "-k", "3", *keys, env=env), "at most 2")


def test_rate_limit_holds_across_cli_processes(device):
    """Uses are counted for capsules verified with the device's own (provisioned) keys; with ad-hoc
    --trust keys a rate-limited capsule is refused, since the use would not be counted."""
    env, keys, tmp = device
    (tmp / "config" / "trusted").mkdir()
    shutil.copy(KEYS / "test-publisher-1.pub", tmp / "config" / "trusted")
    own = keys[2:]  # --identity only: the provisioned key is the device's trust
    path = str(VECTORS / "rule-rate-limit" / "capsule")
    proc = run_cli("edge", "search", path, QUERY, "-k", "1", *keys, "--trust", str(KEYS / "test-untrusted.pub"), env=env)
    _assert_one_line_error(proc, "only counted for capsules verified with this device's own trust")
    for _ in range(2):
        assert run_cli("edge", "search", path, QUERY, "-k", "1", *own, env=env, process=True).returncode == 0
    proc = run_cli("edge", "search", path, QUERY, "-k", "1", *own, env=env, process=True)
    _assert_one_line_error(proc, "query rate limit reached")


def test_provision_root_delegate_cosign_rotate_and_revoke_end_to_end(device):
    """The README's operator flow with real tools: root key, trust document, 2-of-2 co-signing, rotation."""
    env, _, tmp = device
    identity = ["--identity", str(tmp / "test-device.key")]
    assert run_cli("firmware_tools", "keygen", "--kind", "root", "-o", str(tmp / "root.key")).returncode == 0
    for name in ("test-publisher-1", "test-publisher-2", "test-publisher-3"):
        shutil.copy(KEYS / f"{name}.key", tmp / f"{name}.key")
        os.chmod(tmp / f"{name}.key", 0o600)
    proc = run_cli("firmware_tools", "trust", "-o", str(tmp / "trust-v1.json"), "--root-key", str(tmp / "root.key"),
                   "--delegate", str(KEYS / "test-publisher-1.pub"), "--expires", "2090-01-01",
                   "--delegate", str(KEYS / "test-publisher-2.pub"), "--expires", "2090-01-01", "--threshold", "2")
    assert proc.returncode == 0, proc.stderr
    assert "version 1, 2 publisher key(s), threshold 2" in proc.stdout
    proc = run_cli("edge", "trust", "update", str(tmp / "trust-v1.json"), env=env)  # nothing installed yet
    assert proc.returncode == 2 and "the first install needs --root" in proc.stderr, proc.stderr
    proc = run_cli("edge", "trust", "install", str(tmp / "trust-v1.json"), "--root", str(tmp / "root.pub"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "capsules need 2 signature(s)" in proc.stdout
    capsule = tmp / "alpha.capsule"
    shutil.copy(VECTORS / "ok" / "capsule", capsule)
    _assert_one_line_error(run_cli("edge", "install", str(capsule), *identity, env=env), "signed by 1/2 trusted keys")
    proc = run_cli("firmware_tools", "sign", str(capsule), "--signing-key", str(tmp / "test-publisher-2.key"))
    assert proc.returncode == 0 and "signed by 2 key(s)" in proc.stdout, proc.stderr
    proc = run_cli("edge", "install", str(capsule), *identity, env=env)
    assert proc.returncode == 0, proc.stderr
    # rotate: publisher 3 replaces publisher 1, threshold back to 1
    proc = run_cli("firmware_tools", "trust", "-o", str(tmp / "trust-v2.json"), "--root-key", str(tmp / "root.key"),
                   "--previous", str(tmp / "trust-v1.json"), "--delegate", str(KEYS / "test-publisher-3.pub"),
                   "--expires", "2090-01-01", "--revoke", str(KEYS / "test-publisher-1.pub"), "--threshold", "1")
    assert proc.returncode == 0 and "version 2" in proc.stdout, proc.stderr
    proc = run_cli("edge", "trust", "install", str(tmp / "trust-v2.json"), "--json", env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["version"] == 2
    by_p1 = tmp / "by-p1.capsule"
    shutil.copy(VECTORS / "ok" / "capsule", by_p1)
    proc = run_cli("edge", "verify", str(by_p1), *identity, env=env)
    _assert_one_line_error(proc, "1 by a revoked key")
    proc = run_cli("edge", "trust", "update", str(tmp / "trust-v1.json"), env=env)
    _assert_one_line_error(proc, "older than the installed version 2")
    proc = run_cli("edge", "trust", "show", env=env)
    assert proc.returncode == 0 and "revoked" in proc.stdout


def test_trust_init_refuses_a_document_for_another_root(device):
    env, _, tmp = device
    proc = run_cli("edge", "trust", "init", str(VECTORS / "trust-root-ok" / "trust.json"), "--root",
                   str(KEYS / "test-root-2.pub"), env=env)
    _assert_one_line_error(proc, "are not the 1 provisioned root key")


def test_devices_rule_reads_the_configured_hardware_id(device):
    env, keys, tmp = device
    path = str(VECTORS / "rule-devices-hardware-id-match" / "capsule")
    _assert_one_line_error(run_cli("edge", "verify", path, *keys, env=env), "this device's is")
    (tmp / "config" / "hardware-id").write_text("kiosk-0001\n")
    assert run_cli("edge", "verify", path, *keys, env=env).returncode == 0


@pytest.mark.parametrize("argv", [["edge", "install"], ["edge", "list"], ["edge", "remove"], ["edge", "export"],
                                  ["edge", "trust"], ["edge", "history"], ["edge", "settings"],
                                  ["firmware_tools", "sign"], ["firmware_tools", "trust"], ["firmware_tools", "append"],
                                  ["firmware_tools", "compact"], ["firmware_tools", "bundle"]])
def test_new_commands_have_help_with_an_example_and_are_in_the_readme(argv):
    proc = run_cli(*argv, "--help")
    assert proc.returncode == 0 and "example:" in proc.stdout
    command = ("edge " if argv[0] == "edge" else "firmware-tools ") + argv[1]
    assert command in (ROOT / "README.md").read_text()
