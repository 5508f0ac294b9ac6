"""Device paths end to end: LiteRT-family and HEVC capsules, engine refusals, what `edge info` shows."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from edge import open_capsule
from edge.capsule import verify_capsule
from firmware_tools.qr_video import HEVC_VIDEO_PARAMS

from ..conftest import BUILD_ISSUED_AT, ROOT, TINY_DOCS, build_test_capsule, run_cli

NOW = BUILD_ISSUED_AT.replace(day=15)
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert is not installed (pip install '.[litert]')")


def _keys(built):
    return ["--trust", str(built.publisher_pub_path), "--identity", str(built.device_key_path)]


def _open(built):
    return open_capsule(built.path, trusted_keys=[built.publisher_key.public_key()],
                        identities=[built.device_key], now=NOW)


@pytest.fixture(scope="module")
def tflite_capsule(tmp_path_factory):
    if not HAS_LITERT:
        pytest.skip("ai-edge-litert is not installed (pip install '.[litert]')")
    tmp = tmp_path_factory.mktemp("tflite")
    return build_test_capsule(TINY_DOCS / "good", tmp / "tiny-tflite.capsule", keys_dir=tmp / "keys",
                              model_family="tflite")


@pytest.fixture(scope="module")
def hevc_capsule(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hevc")
    return build_test_capsule(TINY_DOCS / "good", tmp / "tiny-hevc.capsule", keys_dir=tmp / "keys",
                              video_params=HEVC_VIDEO_PARAMS)


def _cli_without(blocked: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess:
    """Run the edge CLI in a process where importing ``blocked`` modules fails (engine absent)."""
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            "from edge.cli import main\n"
            f"sys.exit(main({list(argv)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge: error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert all(line.startswith("edge: ") for line in proc.stderr.splitlines() if line.strip()), proc.stderr


@needs_litert
def test_tflite_capsule_records_its_family_and_answers(tflite_capsule, tiny_capsule):
    sums = dict(line.split()[::-1] for line in (ROOT / "models/all-MiniLM-L6-v2/SHA256SUMS").read_text().splitlines())
    with _open(tflite_capsule) as capsule, _open(tiny_capsule) as onnx_capsule:
        assert capsule.manifest.model.family == "tflite"
        assert capsule.manifest.model.sha256 == sums["model.int8.tflite"]
        assert onnx_capsule.manifest.model.family == "onnx"
        assert capsule.embedder_engine.startswith("tflite (ai-edge-litert ")
        info = capsule.info()
        assert info["model"]["family"] == "tflite" and info["embedder"]["family"] == "tflite"
        for question in ("What is Python?", "What is the Python Software Foundation?",
                         "Why does Python use indentation?"):
            hits = capsule.search(question, k=3, mode="dense")  # the embedders are compared
            onnx_hits = onnx_capsule.search(question, k=3, mode="dense")
            assert hits[0].document == onnx_hits[0].document, question
            assert hits[0].text == onnx_hits[0].text


@needs_litert
def test_tflite_capsule_refused_by_a_runtime_without_litert(tflite_capsule):
    proc = _cli_without(("ai_edge_litert", "tflite_runtime"), "search", str(tflite_capsule.path), "What is Python?",
                        *_keys(tflite_capsule))
    _one_line_error(proc, "capsule needs model family tflite and this runtime runs only onnx models")
    assert proc.stdout == ""


def test_onnx_capsule_refused_by_a_runtime_without_onnxruntime(tiny_capsule):
    proc = _cli_without(("onnxruntime",), "search", str(tiny_capsule.path), "What is Python?", *_keys(tiny_capsule))
    _one_line_error(proc, "capsule needs model family onnx and this runtime runs ")
    assert "onnxruntime is not installed" in proc.stderr


def test_edge_info_shows_decoder_and_embedder_engine(tiny_capsule):
    proc = run_cli("edge", "info", str(tiny_capsule.path), "--trust", str(tiny_capsule.publisher_pub_path), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["decoder"] in ("h264", "h264_v4l2m2m")
    assert info["decoder_is_hardware"] == (info["decoder"] == "h264_v4l2m2m")
    assert info["embedder"]["family"] == "onnx" and info["embedder"]["engine"].startswith("onnxruntime ")
    proc = run_cli("edge", "info", str(tiny_capsule.path), *_keys(tiny_capsule))
    assert proc.returncode == 0, proc.stderr
    assert "decoder: h264" in proc.stdout and '"engine": "onnxruntime ' in proc.stdout


def test_hevc_capsule_full_verify_search_and_decoder(hevc_capsule, tiny_capsule):
    report = verify_capsule(hevc_capsule.path, trusted_keys=[hevc_capsule.publisher_key.public_key()],
                            identities=[hevc_capsule.device_key], now=NOW, full=True)
    assert report.n_frames_checked == hevc_capsule.result.n_frames
    assert report.n_chunks_checked == hevc_capsule.result.n_chunks == tiny_capsule.result.n_chunks
    with _open(hevc_capsule) as capsule, _open(tiny_capsule) as h264_capsule:
        assert capsule.manifest.video.codec == "hevc" and capsule.manifest.video.profile == "Main"
        assert capsule.decoder_name in ("hevc", "hevc_v4l2m2m")
        for chunk_id in range(capsule.manifest.n_chunks):  # every chunk, read by frame seek
            assert capsule.read(chunk_id).text == h264_capsule.read(chunk_id).text
    proc = run_cli("edge", "info", str(hevc_capsule.path), "--trust", str(hevc_capsule.publisher_pub_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["decoder"] in ("hevc", "hevc_v4l2m2m")


def test_hevc_and_tflite_build_options_from_the_cli(tmp_path, tiny_capsule):
    proc = run_cli("firmware_tools", "keygen", "--kind", "publisher", "-o", str(tmp_path / "pub.key"))
    assert proc.returncode == 0, proc.stderr
    family = "tflite" if HAS_LITERT else "onnx"
    proc = run_cli("firmware_tools", "build", str(TINY_DOCS / "good" / "faq-what-is-python.md"),
                   "-o", str(tmp_path / "one.capsule"), "--signing-key", str(tmp_path / "pub.key"),
                   "--recipient", str(tiny_capsule.publisher_pub_path.parent / "device.pub"), "--expires", "+30d",
                   "--codec", "hevc", "--model-family", family, "-q", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] >= 1
    proc = run_cli("edge", "info", str(tmp_path / "one.capsule"), "--trust", str(tmp_path / "pub.pub"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["model"]["family"] == family and info["decoder"] in ("hevc", "hevc_v4l2m2m")
