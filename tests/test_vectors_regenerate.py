"""``python -m firmware_tools.vectors`` rebuilds tests/vectors/ byte for byte (FORMAT.md §14)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

VECTORS = ROOT / "tests" / "vectors"
#: Paths in tests/vectors/ that the generator does not write.
HAND_WRITTEN = ("src", "README.md", "__init__.py", "harness.py", "test_vectors.py", "__pycache__")


def _generated_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in HAND_WRITTEN}


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="checked where the vectors were generated (x86_64); not verified on other CPUs, where "
                           "onnxruntime and annoy may round floats differently (the vectors themselves still run)")
def test_regeneration_is_byte_identical(tmp_path):
    out = tmp_path / "vectors"
    proc = subprocess.run([sys.executable, "-m", "firmware_tools.vectors", "-o", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    committed, regenerated = _generated_files(VECTORS), _generated_files(out)
    assert sorted(committed) == sorted(regenerated)
    differ = [name for name in committed if committed[name] != regenerated[name]]
    assert not differ, differ
    assert len(committed) > 200
