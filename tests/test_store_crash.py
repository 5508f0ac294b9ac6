"""A real ``edge install`` process killed at every checkpoint leaves the previous version serving.

The store starts with capsule alpha v1 installed. ``edge install`` of alpha v2 runs in a child
process (``tests/kill_at_checkpoint.py N``), which SIGKILLs itself at its N-th checkpoint (every
state change of an install: staging, copy, fsyncs, renames, catalogue, floor). After each kill
the store must show exactly one of the two versions, that version must open and answer, no
half-installed file may be visible, the version record must match what is visible, and the next
writer must leave no debris. A second test kills installs from outside at random moments, so
that a gap between checkpoints would show too. A third fills the "disk" (``RLIMIT_FSIZE``).
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge.store import Store

from .conftest import ROOT
from .vectors.harness import KEYS, VECTORS, private_key, public_key

V1 = VECTORS / "older-version" / "capsule"
V2 = VECTORS / "ok" / "capsule"
QUERY = "How do I reset the kiosk?"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A store with alpha v1 installed, and a 0600 copy of the device key."""
    tmp = tmp_path_factory.mktemp("crash")
    key = tmp / "device.key"
    key.write_bytes((KEYS / "test-device.key").read_bytes())
    os.chmod(key, 0o600)
    with Store(tmp / "seed") as store:
        store.install(V1, identities=[private_key("test-device")], trusted_keys=[public_key("test-publisher-1")])
    return tmp, key


def _install_argv(store: Path, key: Path, verbose: bool = False, kill_at: int | None = None) -> tuple[list[str], dict]:
    env = dict(os.environ, EDGE_STORE_DIR=str(store), PYTHONPATH=str(ROOT))
    edge = ["-m", "edge"] if kill_at is None else [str(ROOT / "tests" / "kill_at_checkpoint.py"), str(kill_at)]
    argv = [sys.executable, *edge, *(["-vv"] if verbose else []), "install", str(V2), "--trust",
            str(KEYS / "test-publisher-1.pub"), "--identity", str(key)]
    return argv, env


def _check_store(path: Path) -> int:
    """Assert the store is consistent and serving; return the visible version of alpha."""
    with Store(path) as store:
        entries = store.list()
        assert [e.name for e in entries] == ["alpha"], entries
        entry = entries[0]
        assert entry.version in (1, 2)
        assert store.state.version_record(entry.capsule_id).version == entry.version
        objects = sorted(p.name for p in (path / "objects").iterdir())
        assert entry.object_name in objects
        with store.open("alpha", identities=[private_key("test-device")],
                        trusted_keys=[public_key("test-publisher-1")]) as capsule:
            assert capsule.manifest.version == entry.version
            assert "power button" in capsule.read(3).text
        # the next writer (here: re-recording the visible version, which changes nothing) clears any debris
        record = store.state.version_record(entry.capsule_id)
        store.record_version(entry.capsule_id, record.version, record.manifest_sha256)
        assert list((path / "tmp").iterdir()) == []
        assert sorted(p.name for p in (path / "objects").iterdir()) == [entry.object_name]
        return entry.version


def _count_checkpoints(seed: Path, key: Path, tmp: Path) -> list[str]:
    store = tmp / "count"
    shutil.copytree(seed, store)
    argv, env = _install_argv(store, key, verbose=True)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return re.findall(r"install checkpoint \d+: (.*)", proc.stderr)


def test_install_killed_at_every_checkpoint_leaves_one_whole_version(seeded, tmp_path):
    tmp, key = seeded
    seed = tmp / "seed"
    names = _count_checkpoints(seed, key, tmp_path)
    assert len(names) >= 20, names

    def run(n: int) -> tuple[int, int]:
        store = tmp_path / f"kill-{n}"
        shutil.copytree(seed, store)
        argv, env = _install_argv(store, key, kill_at=n)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        return n, proc.returncode

    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = dict(pool.map(run, range(1, len(names) + 1)))
    assert all(code == -signal.SIGKILL for code in codes.values()), codes
    switch = names.index("catalogue replaced") + 1  # the checkpoint right after the catalogue rename
    for n in range(1, len(names) + 1):
        version = _check_store(tmp_path / f"kill-{n}")
        # killed before the catalogue rename: v1 serves; after it: v2 does
        assert version == (2 if n >= switch - 1 else 1), (n, names[n - 1], version)


def test_install_killed_from_outside_at_random_moments(seeded, tmp_path):
    tmp, key = seeded
    rng = random.Random(7)
    argv, env = _install_argv(tmp_path / "timing", key)
    shutil.copytree(tmp / "seed", tmp_path / "timing")
    start = time.monotonic()
    subprocess.run(argv, env=env, capture_output=True, timeout=300, check=True)
    duration = time.monotonic() - start
    versions = []
    for i in range(4):
        store = tmp_path / f"random-{i}"
        shutil.copytree(tmp / "seed", store)
        argv, env = _install_argv(store, key)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        versions.append(_check_store(store))
    assert set(versions) <= {1, 2}


def test_install_that_runs_out_of_space_changes_nothing(seeded, tmp_path):
    tmp, key = seeded
    store = tmp_path / "full"
    shutil.copytree(tmp / "seed", store)
    argv, env = _install_argv(store, key)

    def small_disk() -> None:  # writes beyond 8 KiB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("edge: error: install of ") and "nothing changed" in proc.stderr, proc.stderr
    assert list((store / "tmp").iterdir()) == []
    assert _check_store(store) == 1


def test_a_killed_install_of_a_first_capsule_shows_nothing(tmp_path):
    key = tmp_path / "device.key"
    key.write_bytes((KEYS / "test-device.key").read_bytes())
    os.chmod(key, 0o600)
    store = tmp_path / "empty"
    Store(store).close()
    argv, env = _install_argv(store, key, kill_at=12)  # the catalogue's temporary file is written, not renamed
    assert subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode == -signal.SIGKILL
    with Store(store) as opened:
        assert opened.list(now=datetime(2030, 1, 1, tzinfo=timezone.utc)) == []


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30) \
        if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


# A real full file system: a small tmpfs mounted in a user and mount namespace (no root needed
# where the kernel allows unprivileged user namespaces; skipped where it does not).
_FULL_DISK_SCRIPT = r"""
set -e
mount -t tmpfs -o size=4m tmpfs "$MNT"
cp -a "$SEED" "$MNT/store"
# fill the file system to the last byte, as a device whose logs ran away
dd if=/dev/zero of="$MNT/filler" bs=4k 2>/dev/null || true
if "$PY" -c 'import os; os.write(os.open(os.environ["MNT"] + "/probe", os.O_WRONLY | os.O_CREAT), b"x" * 4096)' 2>/dev/null; then
  echo "NOT FULL"; exit 3
fi
set +e
EDGE_STORE_DIR="$MNT/store" "$PY" -m edge remove alpha
echo "remove rc=$?"
EDGE_STORE_DIR="$MNT/store" "$PY" -m edge list --json
echo "list rc=$?"
ls "$MNT/store/objects" | wc -l | sed 's/^/objects=/'
"""


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="unprivileged user and mount namespaces are not available")
def test_remove_frees_space_on_a_full_file_system(seeded, tmp_path):
    tmp, _ = seeded
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, MNT=str(mnt), SEED=str(tmp / "seed"), PY=sys.executable, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", _FULL_DISK_SCRIPT],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "remove rc=0" in proc.stdout, proc.stdout + proc.stderr
    assert "list rc=0" in proc.stdout and '"alpha"' not in proc.stdout.split("remove rc=0", 1)[1], proc.stdout
    assert "objects=0" in proc.stdout, proc.stdout


def test_delta_install_killed_at_every_checkpoint_leaves_one_whole_version(tmp_path):
    """alpha v3 as a delta over v2 (vectors ok, delta-ok): killed at each checkpoint, the store
    serves v2, or v3 with v2's file as its segment; never a half-linked object."""
    key = tmp_path / "device.key"
    key.write_bytes((KEYS / "test-device.key").read_bytes())
    os.chmod(key, 0o600)
    seed = tmp_path / "seed"
    with Store(seed) as store:
        store.install(V2, identities=[private_key("test-device")], trusted_keys=[public_key("test-publisher-1")])
    delta = VECTORS / "delta-ok" / "capsule"

    def argv_for(store: Path, kill_at: int | None = None, verbose: bool = False) -> tuple[list[str], dict]:
        argv, env = _install_argv(store, key, verbose=verbose, kill_at=kill_at)
        return [delta if a == str(V2) else a for a in map(str, argv)], env

    count = tmp_path / "count"
    shutil.copytree(seed, count)
    argv, env = argv_for(count, verbose=True)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = re.findall(r"install checkpoint \d+: (.*)", proc.stderr)
    assert "segments linked" in names, names

    def run(n: int) -> int:
        store = tmp_path / f"kill-{n}"
        shutil.copytree(seed, store)
        argv, env = argv_for(store, kill_at=n)
        return subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode

    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = list(pool.map(run, range(1, len(names) + 1)))
    assert all(code == -signal.SIGKILL for code in codes), codes
    switch = names.index("catalogue replaced") + 1
    for n in range(1, len(names) + 1):
        path = tmp_path / f"kill-{n}"
        with Store(path) as store:
            entry = store.get("alpha")
            assert entry.version == (3 if n >= switch - 1 else 2), (n, names[n - 1], entry.version)
            assert store.state.version_record(entry.capsule_id).version == entry.version
            with store.open("alpha", identities=[private_key("test-device")],
                            trusted_keys=[public_key("test-publisher-1")]) as capsule:
                assert len(capsule.parts) == entry.version - 1
                assert any("power button" in hit.text for hit in capsule.search(QUERY, k=3))
            record = store.state.version_record(entry.capsule_id)
            store.record_version(entry.capsule_id, record.version, record.manifest_sha256)  # the next writer
            assert list((path / "tmp").iterdir()) == []
            assert sorted(p.name for p in (path / "objects").iterdir()) == [entry.object_name]


def test_plain_install_killed_while_its_indexes_are_extracted_leaves_the_old_version_whole(tmp_path):
    """An unencrypted capsule's install has two checkpoints more (its Annoy index and its tantivy
    lexical index are written beside the staged copy): killed at either, the previous version
    serves with its own extracted files, and the next writer clears the staging debris."""
    from .conftest import FAQ_DOCS, build_test_capsule

    docs = [FAQ_DOCS / "design.txt", FAQ_DOCS / "gui.txt"]
    v1 = build_test_capsule(docs, tmp_path / "plain-v1.capsule", keys_dir=tmp_path / "keys", encrypt_index=False,
                            name="plain", version=1)
    v2 = build_test_capsule(docs, tmp_path / "plain-v2.capsule", keys_dir=tmp_path / "keys", encrypt_index=False,
                            name="plain", version=2)
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()])
    seed = tmp_path / "seed"
    with Store(seed) as store:
        store.install(v1.path, **keys)
    argv = [sys.executable, "-vv", "install", str(v2.path), "--trust", str(v1.publisher_pub_path), "--identity",
            str(v1.device_key_path)]

    def install(store: Path, kill_at: int | None) -> subprocess.CompletedProcess:
        edge = ["-m", "edge"] if kill_at is None else [str(ROOT / "tests" / "kill_at_checkpoint.py"), str(kill_at)]
        env = dict(os.environ, EDGE_STORE_DIR=str(store), PYTHONPATH=str(ROOT))
        return subprocess.run([argv[0], *edge, *argv[1:]], env=env, capture_output=True, text=True, timeout=300)

    shutil.copytree(seed, tmp_path / "count")
    counted = install(tmp_path / "count", None)
    assert counted.returncode == 0, counted.stderr
    names = re.findall(r"install checkpoint \d+: (.*)", counted.stderr)
    for name in ("index extracted", "lexical index extracted"):
        store_path = tmp_path / name.replace(" ", "-")
        shutil.copytree(seed, store_path)
        assert install(store_path, names.index(name) + 1).returncode == -signal.SIGKILL
        with Store(store_path) as store:
            (entry,) = store.list()
            assert entry.version == 1
            assert (store.capsule_path(entry).parent / "lexical" / "meta.json").is_file()
            with store.open("plain", **keys) as capsule:
                assert capsule.manifest.version == 1 and capsule.search("tkinter", k=3, mode="hybrid")
            record = store.state.version_record(entry.capsule_id)
            store.record_version(entry.capsule_id, record.version, record.manifest_sha256)
            assert list((store_path / "tmp").iterdir()) == []
    with Store(tmp_path / "count") as store:  # the uninterrupted install serves v2 from its own files
        (entry,) = store.list()
        assert entry.version == 2 and (store.capsule_path(entry).parent / "lexical" / "meta.json").is_file()
