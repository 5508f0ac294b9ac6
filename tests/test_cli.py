"""Every CLI command through ``run_cli`` (``main(argv)`` in this process with its own fds 1 and 2, or a
real subprocess where the process itself is measured): exit code, stdout shape, one-line stderr errors."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone

import pytest

from .conftest import ROOT, TINY_DOCS, build_test_capsule, run_cli


def _keys(built):
    return ["--trust", str(built.publisher_pub_path), "--identity", str(built.device_key_path)]


def _assert_one_line_error(proc, fragment, prog="edge"):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr
    assert all(line.startswith(f"{prog}: ") for line in lines), proc.stderr
    assert fragment in errors[0], proc.stderr


def test_verify_search_read_info_succeed(tiny_capsule):
    proc = run_cli("edge", "verify", str(tiny_capsule.path), *_keys(tiny_capsule))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: tiny v1") and "chunks decrypted" in proc.stdout

    proc = run_cli("edge", "search", str(tiny_capsule.path), "What is Python?", "-k", "2", "--json",
                   *_keys(tiny_capsule))
    assert proc.returncode == 0, proc.stderr
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2]
    assert {"chunk_id", "score", "document", "char_start", "char_end", "text"} <= set(hits[0])

    proc = run_cli("edge", "read", str(tiny_capsule.path), str(hits[0]["chunk_id"]), "--json", *_keys(tiny_capsule))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text"] == hits[0]["text"]

    proc = run_cli("edge", "info", str(tiny_capsule.path), "--trust", str(tiny_capsule.publisher_pub_path), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "tiny" and info["n_chunks"] == tiny_capsule.result.n_chunks
    # the fusion a publisher chose, defaults included (FORMAT.md §4.6)
    assert info["lexical"]["format"] == "tantivy-7"
    assert info["lexical"]["fusion"] == {"method": "rrf", "k": 5, "dense_weight": 3, "lexical_weight": 2,
                                         "depth": 20, "exact_first_max_tokens": 3, "dense_first_margin": 80}
    proc = run_cli("edge", "info", str(tiny_capsule.path), "--json", *_keys(tiny_capsule))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["lexical"] == info["lexical"]


def test_wrong_device_key_one_line_error(tiny_capsule):
    proc = run_cli("edge", "search", str(tiny_capsule.path), "What is Python?", "--trust",
                   str(tiny_capsule.publisher_pub_path), "--identity", str(tiny_capsule.other_device_key_path))
    _assert_one_line_error(proc, "not for this device")


def test_tampered_manifest_one_line_error(tiny_capsule, tmp_path):
    from edge import format as fmt

    data = bytearray(tiny_capsule.path.read_bytes())
    data[64 + len(fmt.SECTION_ORDER) * 32 + 40] ^= 0x04  # inside MANI, the first section
    bad = tmp_path / "bad.capsule"
    bad.write_bytes(bytes(data))
    proc = run_cli("edge", "verify", str(bad), *_keys(tiny_capsule))
    _assert_one_line_error(proc, "manifest signed by 0/1 trusted keys")


def test_truncated_file_one_line_error(tiny_capsule, tmp_path):
    bad = tmp_path / "cut.capsule"
    bad.write_bytes(tiny_capsule.path.read_bytes()[:-1000])
    proc = run_cli("edge", "search", str(bad), "What is Python?", *_keys(tiny_capsule))
    _assert_one_line_error(proc, "truncated")


def test_expired_capsule_one_line_error(tmp_path):
    built = build_test_capsule(TINY_DOCS / "good", tmp_path / "old.capsule", keys_dir=tmp_path / "keys",
                               issued_at=datetime(2020, 1, 1, tzinfo=timezone.utc),
                               expires_at=datetime(2021, 1, 1, tzinfo=timezone.utc))
    proc = run_cli("edge", "search", str(built.path), "What is Python?", *_keys(built))
    _assert_one_line_error(proc, "capsule expired at 2021-01-01T00:00:00Z")


def test_missing_model_one_line_error(tiny_capsule, tmp_path):
    proc = run_cli("edge", "search", str(tiny_capsule.path), "What is Python?", *_keys(tiny_capsule),
                   env={"EDGE_MODEL_PATH": str(tmp_path)})
    _assert_one_line_error(proc, "model")


def test_not_a_capsule_one_line_error(tiny_capsule):
    proc = run_cli("edge", "verify", str(ROOT / "README.md"), *_keys(tiny_capsule))
    _assert_one_line_error(proc, "bad magic")


def test_missing_file_one_line_error(tiny_capsule, tmp_path):
    proc = run_cli("edge", "verify", str(tmp_path / "nope.capsule"), *_keys(tiny_capsule))
    _assert_one_line_error(proc, "nope.capsule")


def test_usage_error_exits_2(tiny_capsule):
    proc = run_cli("edge", "search", str(tiny_capsule.path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_keygen_writes_0600_and_refuses_overwrite(tmp_path):
    key = tmp_path / "pub.key"
    proc = run_cli("firmware_tools", "keygen", "--kind", "publisher", "-o", str(key))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "PRIVATE" not in proc.stdout and "key id" in proc.stdout
    assert (tmp_path / "pub.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    proc = run_cli("firmware_tools", "keygen", "--kind", "publisher", "-o", str(key))
    _assert_one_line_error(proc, "exists", prog="firmware-tools")


def test_build_stops_cleanly_on_unsupported_document(tmp_path):
    run_cli("firmware_tools", "keygen", "--kind", "publisher", "-o", str(tmp_path / "p.key"))
    run_cli("firmware_tools", "keygen", "--kind", "device", "-o", str(tmp_path / "d.key"))
    odd = tmp_path / "notes.docx"
    odd.write_bytes(b"PK\x03\x04 not really")
    out = tmp_path / "out.capsule"
    proc = run_cli("firmware_tools", "build", str(TINY_DOCS / "good"), str(odd), "-o", str(out), "--signing-key",
                   str(tmp_path / "p.key"), "--recipient", str(tmp_path / "d.pub"), "--expires", "+30d", "-q")
    _assert_one_line_error(proc, "notes.docx", prog="firmware-tools")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary capsule left


@pytest.mark.parametrize("case", ["output-folder-missing", "output-is-a-folder", "rules-not-json", "no-documents"])
def test_build_failures_are_one_line_and_leave_nothing(tmp_path, case):
    run_cli("firmware_tools", "keygen", "--kind", "publisher", "-o", str(tmp_path / "p.key"))
    run_cli("firmware_tools", "keygen", "--kind", "device", "-o", str(tmp_path / "d.key"))
    docs, out, extra = str(TINY_DOCS / "good"), tmp_path / "out.capsule", []
    if case == "output-folder-missing":
        out, expected = tmp_path / "no-such-folder" / "out.capsule", "No such file or directory"
    elif case == "output-is-a-folder":
        out, expected = tmp_path / "a-folder", "it is a folder"
        out.mkdir()
    elif case == "rules-not-json":
        (tmp_path / "rules.json").write_text("{not json")
        extra, expected = ["--rules", str(tmp_path / "rules.json")], "Expecting property name"
    else:
        (tmp_path / "empty").mkdir()
        docs, expected = str(tmp_path / "empty"), "holds no supported documents"
    proc = run_cli("firmware_tools", "build", docs, "-o", str(out), "--signing-key", str(tmp_path / "p.key"),
                   "--recipient", str(tmp_path / "d.pub"), "--expires", "+30d", "-q", *extra)
    _assert_one_line_error(proc, expected, prog="firmware-tools")
    assert not out.exists() or (out.is_dir() and not any(out.iterdir()))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_build_refuses_world_readable_signing_key(tmp_path):
    run_cli("firmware_tools", "keygen", "--kind", "publisher", "-o", str(tmp_path / "p.key"))
    run_cli("firmware_tools", "keygen", "--kind", "device", "-o", str(tmp_path / "d.key"))
    os.chmod(tmp_path / "p.key", 0o644)
    proc = run_cli("firmware_tools", "build", str(TINY_DOCS / "good"), "-o", str(tmp_path / "o.capsule"),
                   "--signing-key", str(tmp_path / "p.key"), "--recipient", str(tmp_path / "d.pub"),
                   "--expires", "+30d", "-q")
    _assert_one_line_error(proc, "chmod 600", prog="firmware-tools")


@pytest.mark.parametrize("argv", [["edge", "verify"], ["edge", "info"], ["edge", "search"], ["edge", "read"],
                                  ["firmware_tools", "keygen"], ["firmware_tools", "build"],
                                  ["firmware_tools", "export-model"]])
def test_every_command_has_help_with_an_example_and_is_in_the_readme(argv):
    proc = run_cli(*argv, "--help")
    assert proc.returncode == 0 and "example:" in proc.stdout
    readme = (ROOT / "README.md").read_text()
    command = ("edge " if argv[0] == "edge" else "firmware-tools ") + argv[1]
    assert command in readme


def test_wrong_passphrase_one_line_error(tmp_path):
    from edge.keys import Passphrase

    built = build_test_capsule(TINY_DOCS / "good", tmp_path / "p.capsule", keys_dir=tmp_path / "keys",
                               recipients=[], passphrase=Passphrase(b"right"), scrypt_log_n=12)
    secret = tmp_path / "pass.txt"
    secret.write_text("wrong\n")
    os.chmod(secret, 0o600)
    proc = run_cli("edge", "search", str(built.path), "What is Python?", "--trust", str(built.publisher_pub_path),
                   "--passphrase-file", str(secret))
    _assert_one_line_error(proc, "not for this device")
    secret.write_text("right\n")
    proc = run_cli("edge", "search", str(built.path), "What is Python?", "-k", "1", "--trust",
                   str(built.publisher_pub_path), "--passphrase-file", str(secret))
    assert proc.returncode == 0 and "score" in proc.stdout, proc.stderr


@pytest.mark.parametrize("flag, full", [([], True), (["--full"], True), (["--no-full"], False), (["--quick"], False)])
def test_verify_full_flag_is_the_api_keyword(tiny_capsule, flag, full):
    keys = ["--trust", str(tiny_capsule.publisher_pub_path), "--identity", str(tiny_capsule.device_key_path)]
    proc = run_cli("edge", "verify", str(tiny_capsule.path), *keys, *flag, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["full"] is full and (report["frames_checked"] > 0) is full


@pytest.mark.parametrize("extra, fragment", [
    (["--version", "0"], "--version: must be >= 1"),
    (["--workers", "0"], "--workers: must be >= 1"),
    (["--max-tokens", "-3"], "--max-tokens: must be >= 1"),
    (["--seed", "zz"], "--seed: 'zz' is not hex digits"),
    (["--max-tokens", "16", "--overlap-tokens", "16"], "--overlap-tokens 16 must be below --max-tokens 16"),
])
def test_build_usage_errors_exit_2_without_traceback(tmp_path, extra, fragment):
    run_cli("firmware_tools", "keygen", "--kind", "publisher", "-o", str(tmp_path / "p.key"))
    run_cli("firmware_tools", "keygen", "--kind", "device", "-o", str(tmp_path / "d.key"))
    proc = run_cli("firmware_tools", "build", str(TINY_DOCS / "good"), "-o", str(tmp_path / "x.capsule"),
                   "--signing-key", str(tmp_path / "p.key"), "--recipient", str(tmp_path / "d.pub"),
                   "--expires", "+30d", "-q", *extra)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "x.capsule").exists()


def test_build_help_shows_several_examples():
    proc = run_cli("firmware_tools", "build", "--help")
    assert proc.returncode == 0 and "example: firmware-tools build" in proc.stdout
    for option in ("--passphrase-file pass.txt", "--codec hevc", "--embedding-cache embed.sqlite", "--seed 00"):
        assert option in proc.stdout
