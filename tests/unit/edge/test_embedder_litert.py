"""The LiteRT (tflite family) embedder against the committed int8 .tflite, and its parity with ONNX.

Runs wherever ai-edge-litert installs (x86_64 and aarch64 wheels; scripts/_setup.sh installs the
``litert`` extra, and docker/arm64/test.sh does too). No mocks: a runtime without an engine is a
real subprocess in which the engine's import fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.embedder import MODEL_FILENAMES, QueryEmbedder, check_engine, engine_status, find_model_dir
from edge.errors import ModelError

pytest.importorskip(
    "ai_edge_litert.interpreter",
    reason="ai-edge-litert is not installed (pip install '.[litert]'; no wheel for this platform?)",
)

ROOT = Path(__file__).resolve().parents[3]
MODELS_PATH = ROOT / "models"
MODEL_DIR = MODELS_PATH / "all-MiniLM-L6-v2"


def _listed(filename: str) -> str:
    for line in (MODEL_DIR / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        digest, name = line.split()
        if name == filename:
            return digest
    raise AssertionError(f"SHA256SUMS does not list {filename}")


TFLITE_SHA256 = _listed("model.int8.tflite")


@pytest.fixture(scope="module")
def tflite() -> QueryEmbedder:
    return QueryEmbedder.open(MODEL_DIR, family="tflite", expected_sha256=TFLITE_SHA256)


@pytest.fixture(scope="module")
def onnx() -> QueryEmbedder:
    return QueryEmbedder.open(MODEL_DIR, family="onnx")


@pytest.fixture(scope="module")
def sentences() -> tuple[list[str], np.ndarray]:
    """Real text: the 32 reference sentences (with fp32 vectors) and 40 FAQ questions."""
    with np.load(MODEL_DIR / "reference_embeddings.npz", allow_pickle=False) as ref:
        texts, fp32 = [str(t) for t in ref["sentences"]], ref["embeddings"].astype(np.float32)
    rows = (ROOT / "examples/python-faq/questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in rows if line.strip()][:40]
    return texts, fp32, questions


def test_tflite_embedder_properties(tflite: QueryEmbedder) -> None:
    assert tflite.family == "tflite"
    assert tflite.engine.startswith(("ai-edge-litert ", "tflite-runtime "))
    assert tflite.sha256 == TFLITE_SHA256
    assert tflite.model_path == MODEL_DIR / MODEL_FILENAMES["tflite"]
    assert tflite.dim == 384 and tflite.max_tokens == 256
    assert engine_status("tflite") == (True, tflite.engine)
    assert check_engine("tflite") == tflite.engine


def test_tflite_close_to_fp32_reference(tflite: QueryEmbedder, sentences) -> None:
    texts, fp32, _ = sentences
    cos = (tflite.embed(texts) * fp32).sum(axis=1)
    assert cos.mean() >= 0.995, cos.mean()  # measured 0.9986
    assert cos.min() >= 0.99, cos.min()  # measured 0.9963


def test_parity_onnx_vs_tflite_on_real_sentences(tflite: QueryEmbedder, onnx: QueryEmbedder, sentences) -> None:
    texts, _, questions = sentences
    every = texts + questions
    a, b = onnx.embed(every), tflite.embed(every)
    cos = (a * b).sum(axis=1)
    assert cos.mean() >= 0.99, cos.mean()
    # Per text the two int8 models differ by both quantization errors; most of it is ONNX's
    # (min 0.991 vs fp32, MODEL.md), so the floor per text is 0.98.
    assert cos.min() >= 0.98, cos.min()


def test_tflite_output_is_unit_norm_and_batch_independent(tflite: QueryEmbedder, sentences) -> None:
    texts, _, questions = sentences
    batch = texts[:3] + questions[:3] + ["", "a"]
    together = tflite.embed(batch, batch_size=8)
    assert together.shape == (8, 384) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.stack([tflite.embed([t])[0] for t in batch])
    np.testing.assert_array_equal(together, alone)


def test_tflite_padding_to_a_longer_signature_changes_nothing(tflite: QueryEmbedder, sentences) -> None:
    # 15 tokens fit seq_16; the same 15 tokens padded into seq_256 must give the same vector.
    text = next(t for t in sentences[0] if tflite.token_count(t) > 20)
    ids = tflite._encode_ids(text)[:14] + [tflite._sep_id]
    assert len(ids) == 15
    engine = tflite._engine
    short = engine.run([ids])[0]
    runner, out_name, dtype = engine._by_len[256]
    input_ids = np.zeros((1, 256), dtype=dtype)
    mask = np.zeros((1, 256), dtype=dtype)
    input_ids[0, :15], mask[0, :15] = ids, 1
    padded = runner(input_ids=input_ids, attention_mask=mask)[out_name][0]
    assert float(short @ padded) > 0.9999


def test_tflite_truncates_long_text_like_onnx(tflite: QueryEmbedder, sentences) -> None:
    long_text = " ".join(sentences[0] * 3)
    assert tflite.token_count(long_text) > 600
    ids = tflite._encode_ids(long_text)
    assert len(ids) == 256
    vector = tflite.embed([long_text])[0]
    assert float(vector @ tflite._engine.run([ids])[0]) == pytest.approx(1.0, abs=1e-6)


def test_tflite_max_tokens_beyond_the_longest_signature_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="takes at most 256 tokens, 300 requested"):
        QueryEmbedder.open(MODEL_DIR, family="tflite", max_tokens=300)


def test_tflite_wrong_sha256_is_refused() -> None:
    with pytest.raises(ModelError, match="has sha256"):
        QueryEmbedder.open(MODEL_DIR, family="tflite", expected_sha256="0" * 64)


def test_tflite_family_needs_its_own_file(tmp_path: Path) -> None:
    shutil.copy(MODEL_DIR / "model.int8.onnx", tmp_path)
    shutil.copy(MODEL_DIR / "tokenizer.json", tmp_path)
    with pytest.raises(ModelError, match=r"model\.int8\.tflite is missing"):
        QueryEmbedder.open(tmp_path, family="tflite")
    with pytest.raises(ModelError, match=f"no tflite model with sha256 {TFLITE_SHA256}"):
        find_model_dir(TFLITE_SHA256, search_path=[tmp_path], family="tflite")
    assert find_model_dir(TFLITE_SHA256, search_path=[MODELS_PATH], family="tflite") == MODEL_DIR


def test_not_a_tflite_file_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "model.int8.tflite").write_bytes(b"not a flatbuffer" * 64)
    shutil.copy(MODEL_DIR / "tokenizer.json", tmp_path)
    with pytest.raises(ModelError, match="cannot load model file"):
        QueryEmbedder.open(tmp_path, family="tflite")


@pytest.mark.parametrize(("blocked", "family", "message"), [
    (("ai_edge_litert", "tflite_runtime"), "tflite",
     "capsule needs model family tflite and this runtime runs only onnx models: no LiteRT interpreter"),
    (("onnxruntime",), "onnx",
     "capsule needs model family onnx and this runtime runs only tflite models: onnxruntime is not installed"),
])
def test_runtime_without_the_familys_engine_raises_one_line_model_error(blocked, family, message) -> None:
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # the import now fails, as if not installed\n"
        "from edge.embedder import check_engine\n"
        "from edge.errors import ModelError\n"
        "try:\n"
        f"    check_engine({family!r})\n"
        "except ModelError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith(message), proc.stdout
