"""A capsule opened by path is read with preads: a file that shrinks or changes under an open
capsule gives typed errors, never SIGBUS, a segfault, or unhashed bytes reaching annoy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from edge import open_capsule
from edge.errors import IntegrityError
from edge.keys import load_identity, load_public_key

from ...conftest import FAQ_DOCS, ROOT, build_test_capsule


def _child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def plain_capsule(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    return build_test_capsule(FAQ_DOCS, tmp / "plain.capsule", keys_dir=tmp / "keys", encrypt_index=False)


def test_capsule_truncated_while_open_gives_integrity_error_not_sigbus(tiny_capsule, tmp_path):
    path = tmp_path / "stick.capsule"
    shutil.copyfile(tiny_capsule.path, path)
    proc = _child(f"""
        import os, sys
        from edge import open_capsule
        from edge.container import ContainerFile
        from edge.errors import IntegrityError
        from edge.keys import load_identity, load_public_key
        capsule = open_capsule({str(path)!r}, trusted_keys=[load_public_key({str(tiny_capsule.publisher_pub_path)!r})],
                               identities=[load_identity({str(tiny_capsule.device_key_path)!r})])
        capsule.clear_cache()
        vide = ContainerFile({str(path)!r}).sections["VIDE"]
        os.truncate({str(path)!r}, vide.offset + 16)      # the USB stick is pulled, the file shrinks
        try:
            capsule.read(0)
        except IntegrityError as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit(3)
    """)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "shrank after it was opened" in proc.stdout


def test_plain_index_is_hashed_as_it_is_copied(plain_capsule, tmp_path):
    from edge.container import ContainerFile

    path = tmp_path / "flipped.capsule"
    data = bytearray(plain_capsule.path.read_bytes())
    with ContainerFile(plain_capsule.path) as container:
        indx = container.sections["INDX"]
    data[indx.offset + indx.length // 2] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(IntegrityError, match="INDX section sha256"):
        open_capsule(path, trusted_keys=[load_public_key(plain_capsule.publisher_pub_path)],
                     identities=[load_identity(plain_capsule.device_key_path)])


def test_plain_index_rewritten_during_opens_never_crashes(plain_capsule, tmp_path):
    # On 8a3260b a concurrent writer made 115 of 547 opens of a --plain-index capsule SIGSEGV:
    # the index was hashed through the mapping and then read again. Now the bytes copied are the
    # bytes hashed, and annoy only sees the sealed copy.
    path = tmp_path / "racing.capsule"
    shutil.copyfile(plain_capsule.path, path)
    proc = _child(f"""
        import os, random, sys, threading
        from edge import open_capsule
        from edge.container import ContainerFile
        from edge.errors import CapsuleError
        from edge.keys import load_identity, load_public_key
        path = {str(path)!r}
        indx = ContainerFile(path).sections["INDX"]
        stop = threading.Event()
        def writer():
            rng = random.Random(7)
            fd = os.open(path, os.O_WRONLY)
            while not stop.is_set():
                os.pwrite(fd, rng.randbytes(4096), indx.offset + rng.randrange(max(1, indx.length - 4096)))
            os.close(fd)
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        keys = dict(trusted_keys=[load_public_key({str(plain_capsule.publisher_pub_path)!r})],
                    identities=[load_identity({str(plain_capsule.device_key_path)!r})])
        outcomes = {{}}
        for _ in range(25):
            try:
                with open_capsule(path, **keys) as capsule:
                    capsule.search("how do I install python", k=3)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except CapsuleError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        stop.set()
        print(outcomes)
    """, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "IntegrityError" in proc.stdout, proc.stdout  # the writer's bytes were seen and refused
