"""edge.container: a capsule read with bounded preads, never through a mapping it does not own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from edge import format as fmt
from edge.container import ContainerFile
from edge.errors import CapsuleFormatError


def test_sections_read_by_pread_equal_the_file_bytes(tiny_capsule):
    data = tiny_capsule.path.read_bytes()
    with ContainerFile(tiny_capsule.path) as container:
        assert not container.is_mapped
        for tag, entry in container.sections.items():
            expected = data[entry.offset:entry.end]
            assert container.read(tag) == expected
            assert b"".join(container.iter_blocks(tag, 4096)) == expected
            reader = container.section(tag)
            assert len(reader) == entry.length
            assert reader[3:40] == expected[3:40]
            assert reader[entry.length - 5:entry.length + 100] == expected[-5:]
        with pytest.raises(RuntimeError, match="pread only"):
            container.mapped_section("VIDE")


def test_mapping_only_when_asked(tiny_capsule):
    with ContainerFile(tiny_capsule.path, mapping=True) as container:
        view = container.mapped_section("MANI")
        assert bytes(view) == container.read("MANI")
        view.release()


def _mapped_file_flags(path) -> list[tuple[int, int, list[str]]]:
    """``(file offset, end, VmFlags)`` of this process's mappings of ``path`` (proc(5) smaps)."""
    found, current = [], None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            current = (int(fields[2], 16), int(fields[2], 16) + end - start) if line.rstrip().endswith(str(path)) else None
        elif line.startswith("VmFlags:") and current:
            found.append((*current, line.split(":", 1)[1].split()))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_a_mapped_capsules_vecs_are_advised_random_access(tiny_capsule):
    """VECS and VIDE are MADV_RANDOM ("rr" in smaps: no read-around on a fault), the rest (the
    header, the binary codes scanned in order) keeps the default. A query reads ~8 scattered frames
    and a few hundred scattered VECS rows; 128 kB of read-around each filled a 128 MiB cgroup and
    evicted the libraries' code (installed 97k capsule: p50 173-184 -> ~20 ms,
    bench/results/cgroup-binary-codes.json)."""
    path = os.path.realpath(tiny_capsule.path)
    with ContainerFile(tiny_capsule.path, mapping=True) as container:
        view = container.mapped_section("VIDE")
        vecs, video = container.sections["VECS"], container.sections["VIDE"]
        flags = _mapped_file_flags(path)
        view.release()

    def flags_at(offset):
        return next(f for start, end, f in flags if start <= offset < end)
    assert "rr" in flags_at(vecs.offset) and "rr" in flags_at(video.offset), flags
    assert "rr" not in flags_at(0), flags


def test_file_that_shrinks_after_open_gives_integrity_error_not_sigbus(tiny_capsule, tmp_path):
    # A mapped read of a truncated file raises SIGBUS and kills the process (rc 135); a pread
    # returns short and becomes a typed error. Run in a child so a signal would fail the test.
    path = tmp_path / "shrinking.capsule"
    shutil.copyfile(tiny_capsule.path, path)
    code = textwrap.dedent(f"""
        import os, sys
        from edge.container import ContainerFile
        from edge.errors import IntegrityError
        c = ContainerFile({str(path)!r})
        os.truncate({str(path)!r}, c.sections["VIDE"].offset + 10)
        try:
            c.read("VIDE")
        except IntegrityError as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "shrank after it was opened" in proc.stdout and "VIDE section" in proc.stdout


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "capsule.fifo"
    os.mkfifo(fifo)
    code = f"from edge.container import ContainerFile\nContainerFile({str(fifo)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 1
    assert "is not a regular file" in proc.stderr


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"])
def test_non_regular_files_are_refused(path):
    with pytest.raises(CapsuleFormatError, match="not a regular file|cannot open"):
        ContainerFile(path)


def test_replacing_the_file_by_path_after_open_changes_nothing_read(tiny_capsule, tmp_path):
    path = tmp_path / "c.capsule"
    shutil.copyfile(tiny_capsule.path, path)
    original = path.read_bytes()
    with ContainerFile(path) as container:
        replacement = tmp_path / "other"
        replacement.write_bytes(b"\0" * len(original))
        os.replace(replacement, path)
        assert container.read("MANI") == original[container.sections["MANI"].offset:container.sections["MANI"].end]


def test_short_file_and_closed_reads(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(fmt.MAGIC + b"\0" * 10)
    with pytest.raises(CapsuleFormatError, match="shorter than the 64-byte"):
        ContainerFile(short)


def test_read_after_close_is_a_caller_error(tiny_capsule):
    container = ContainerFile(tiny_capsule.path)
    container.close()
    container.close()
    with pytest.raises(RuntimeError):
        container.read("MANI")
