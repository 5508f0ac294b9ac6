"""The builder never spools plaintext beside the output (issue 9 §3, "Secrets").

The spool (chunk records, payloads, vectors, the video before it is placed) lives in a private
``tempfile.mkdtemp`` folder under ``$TMPDIR`` (mode 0700, files 0600), removed after the build;
the output directory only ever holds the sealed capsule's temporary file. The kill -9 case is in
test_build_processes.py, which kills a real build mid-way.
"""

from __future__ import annotations

import stat
import tempfile

import pytest

from firmware_tools.errors import BuildError

from ...conftest import TINY_DOCS, build_test_capsule


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_tmp(tmp_path, monkeypatch):
    local = tmp_path / "local-tmp"
    local.mkdir()
    monkeypatch.setenv("TMPDIR", str(local))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    return local


def test_build_spools_only_in_a_private_tmpdir_never_beside_the_output(tmp_path, monkeypatch):
    local = _private_tmp(tmp_path, monkeypatch)
    out_dir = tmp_path / "usb-stick"
    out_dir.mkdir()
    output = out_dir / "tiny.capsule"
    seen: list[tuple[str, list[str], list[str], list[int], list[tuple[str, int]]]] = []

    def watch(stage, done, total):
        beside = sorted(p.name for p in out_dir.iterdir())
        work_dirs = sorted(d for d in local.iterdir() if d.is_dir())
        files = [(f"{d.name}/{f.name}", _mode(f)) for d in work_dirs for f in d.iterdir()]
        seen.append((stage, beside, [d.name for d in work_dirs], [_mode(d) for d in work_dirs], files))

    build_test_capsule(TINY_DOCS / "good", output, keys_dir=tmp_path / "keys", progress=watch)

    assert {stage for stage, *_ in seen} >= {"read", "embed", "seal", "encode", "check", "index"}
    for stage, beside, work_dirs, modes, files in seen:
        # beside the output: at most the sealed capsule's own temporary file, never a work dir
        assert all(n.startswith(".tiny.capsule.") and n.endswith(".tmp") for n in beside), (stage, beside)
        assert len(work_dirs) == 1 and modes == [0o700], (stage, work_dirs, modes)
    spool_files = {name: mode for *_, files in seen for name, mode in files}
    assert any(name.endswith("/records") for name in spool_files), spool_files
    plaintext = {name: mode for name, mode in spool_files.items()
                 if name.rsplit("/", 1)[1] in ("records", "payloads", "vectors.f32")}
    assert len(plaintext) == 3 and set(plaintext.values()) == {0o600}, plaintext
    assert sorted(p.name for p in out_dir.iterdir()) == ["tiny.capsule"]
    assert _mode(output) == 0o600
    assert list(local.iterdir()) == []  # the spool is removed after the build


def test_failed_build_removes_the_private_spool_and_leaves_nothing_beside_the_output(tmp_path, monkeypatch):
    local = _private_tmp(tmp_path, monkeypatch)
    out_dir = tmp_path / "usb-stick"
    out_dir.mkdir()
    empty = tmp_path / "no-docs"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    with pytest.raises(BuildError):
        build_test_capsule(empty, out_dir / "x.capsule", keys_dir=tmp_path / "keys")
    assert list(out_dir.iterdir()) == []
    assert list(local.iterdir()) == []
