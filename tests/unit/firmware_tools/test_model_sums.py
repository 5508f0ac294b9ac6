"""SHA256SUMS of the model folder: rewritten atomically, byte-identical to the committed one."""

from __future__ import annotations

from firmware_tools.model_export import SUMS_FILENAME, write_sums

from ...conftest import ROOT

MODEL_DIR = ROOT / "models" / "all-MiniLM-L6-v2"


def test_write_sums_reproduces_the_committed_sums_and_leaves_no_temporary_file(tmp_path):
    for path in MODEL_DIR.iterdir():
        if path.is_file() and path.name != SUMS_FILENAME:
            (tmp_path / path.name).symlink_to(path)
    write_sums(tmp_path)
    assert (tmp_path / SUMS_FILENAME).read_bytes() == (MODEL_DIR / SUMS_FILENAME).read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
