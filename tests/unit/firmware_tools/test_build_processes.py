"""A real ``firmware-tools build`` killed mid-way (issue 9 §3 "Secrets", §4 "Operations").

Each test starts the real CLI in a child process on the tiny corpus, with chunks small enough
(16 tokens, about 70 chunks, 3 tasks of 32) that the embedding pool starts its 2 workers. The
child's progress callback blocks at the first embedded chunk, so the kill lands while the workers
are alive and the plaintext spool is written: no timing involved. Then:

- kill -9: the workers must exit too (PR_SET_PDEATHSIG), and the output directory must hold no
  plaintext and no work folder; the spool is left in the private ``$TMPDIR`` folder (mode 0700).
- SIGTERM: the build unwinds, exit code 143, and removes the spool and the partial capsule.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ...conftest import ROOT, TINY_DOCS, _write_keys

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")

#: Lowers the pool threshold (the tiny corpus has ~70 chunks, not 128) and blocks the CLI's
#: progress callback at the first embedded chunk, after writing this process's pid to argv[1].
_CHILD = '''
import os, sys, time
from pathlib import Path
import firmware_tools.embedding as embedding
from firmware_tools import cli


def block_at_first_chunk(self, stage, done, total):
    if stage == "embed" and done > 0:
        Path(sys.argv[1]).write_text(str(os.getpid()))
        while True:
            time.sleep(60)


if __name__ == "__main__":  # spawned workers re-import this file
    embedding.MIN_TEXTS_FOR_POOL = 1
    cli._Bars.__call__ = block_at_first_chunk
    sys.exit(cli.main(sys.argv[2:]))
'''

#: A sentence of tests/data/docs/good/faq-what-is-python.md, so in the plaintext spool.
_PLAINTEXT = b"Python is an interpreted"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(predicate, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def blocked_build(tmp_path):
    """Start the real CLI build, wait until it blocks with its workers running; yield the state."""
    from firmware_tools.keys import private_key_pem, write_private_file

    publisher, _, _ = _write_keys(tmp_path / "keys")
    write_private_file(tmp_path / "keys" / "publisher.key", private_key_pem(publisher))
    (tmp_path / "child.py").write_text(_CHILD)
    local_tmp = tmp_path / "local-tmp"
    out_dir = tmp_path / "usb-stick"
    local_tmp.mkdir()
    out_dir.mkdir()
    marker = tmp_path / "blocked"
    env = dict(os.environ, TMPDIR=str(local_tmp), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), str(marker), "build", str(TINY_DOCS / "good"),
         "-o", str(out_dir / "tiny.capsule"), "--signing-key", str(tmp_path / "keys" / "publisher.key"),
         "--recipient", str(tmp_path / "keys" / "device.pub"), "--expires", "2036-01-01", "--workers", "2",
         "--max-tokens", "16", "--overlap-tokens", "0", "--seed", "00"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        assert _wait_until(lambda: marker.exists() or proc.poll() is not None, 240), "build never reached embed"
        assert proc.poll() is None, proc.communicate()
        workers = [p for p in _children(proc.pid) if b"spawn_main" in _cmdline(p)]
        assert len(workers) == 2, (_children(proc.pid), [_cmdline(p) for p in _children(proc.pid)])
        yield proc, workers, local_tmp, out_dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for pid in workers:  # only if the code under test left them behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*")]


def test_kill_9_build_takes_its_workers_with_it_and_leaves_no_plaintext_beside_the_output(blocked_build):
    proc, workers, local_tmp, out_dir = blocked_build
    (spool,) = local_tmp.iterdir()
    records = spool / "records"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700 and stat.S_IMODE(records.stat().st_mode) == 0o600
    assert _PLAINTEXT in records.read_bytes()  # the plaintext is there to find, in the private spool

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _wait_until(lambda: not any(_alive(p) for p in workers), 15), \
        [p for p in workers if _alive(p)]

    beside = _files_under(out_dir)
    assert all(p.is_file() and p.name.endswith(".tmp") for p in beside), beside
    assert not any(_PLAINTEXT in p.read_bytes() for p in beside)
    # the accepted residue of a kill -9: the private folder on local disk, owner-only
    assert [p.name for p in local_tmp.iterdir()] == [spool.name]
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700


def test_sigterm_build_unwinds_and_removes_its_spool_and_partial_capsule(blocked_build):
    proc, workers, local_tmp, out_dir = blocked_build
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not any(_alive(p) for p in workers)
    assert list(out_dir.iterdir()) == []
    assert list(local_tmp.iterdir()) == []
