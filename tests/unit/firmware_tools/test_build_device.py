"""The builder's --device: an accelerator through onnxruntime's execution providers (issue 15).

No accelerator runs here (no GPU, and onnxruntime-openvino replaces the onnxruntime package), so
these tests check what a publisher without one sees: a missing provider stops the build at once,
with one line naming the package to install, and nothing is written. The OpenVINO path itself was
run in a venv of its own (models/all-MiniLM-L6-v2/MODEL.md, "Accelerators").
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import ModelError
from firmware_tools.embedding import EmbeddingCache

from ...conftest import FAQ_DOCS, absent_onnx_device, build_test_capsule, run_cli


def test_a_missing_provider_stops_the_build_before_anything_is_read_or_written(tmp_path, monkeypatch):
    device = absent_onnx_device()
    import firmware_tools.build as build

    def no_reading(*args, **kwargs):
        raise AssertionError("documents were read")

    monkeypatch.setattr(build, "_build_into", no_reading)
    with pytest.raises(ModelError, match=f"device '{device}' needs"):
        build_test_capsule(FAQ_DOCS, tmp_path / "x.capsule", keys_dir=tmp_path / "keys", device=device)
    assert not (tmp_path / "x.capsule").exists()


def test_the_cli_says_which_package_to_install_in_one_line(tmp_path):
    device = absent_onnx_device()
    for kind in ("publisher", "device"):
        assert run_cli("firmware_tools", "keygen", "--kind", kind, "-o", str(tmp_path / f"{kind}.key")).returncode == 0
    out = tmp_path / "out.capsule"
    proc = run_cli("firmware_tools", "build", str(FAQ_DOCS), "-o", str(out), "--device", device,
                   "--signing-key", str(tmp_path / "publisher.key"), "--recipient", str(tmp_path / "device.pub"),
                   "--expires", "+1d", "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "install onnxruntime-" in proc.stderr, proc.stderr
    assert not out.exists() and not list(tmp_path.glob("out.capsule*"))
    usage = run_cli("firmware_tools", "build", str(FAQ_DOCS), "-o", str(out), "--device", "gpu",
                    "--signing-key", "k", "--recipient", "r", "--expires", "+1d")
    assert usage.returncode == 2 and "--device" in usage.stderr and "Traceback" not in usage.stderr


def test_the_embedding_cache_keeps_another_device_s_vectors_apart(tmp_path):
    model, dim = "ab" * 32, 4
    texts, vectors = ["reset the encoder"], np.ones((1, dim), np.float32)
    cpu = EmbeddingCache(tmp_path / "cache.sqlite", model, dim)
    cpu.put_many(texts, vectors)
    cpu.close()
    openvino = EmbeddingCache(tmp_path / "cache.sqlite", model, dim, "openvino")
    assert openvino.get_many(texts) == [None]  # not the CPU's vector
    openvino.put_many(texts, 2 * vectors)
    openvino.close()
    again = EmbeddingCache(tmp_path / "cache.sqlite", model, dim)
    assert np.array_equal(again.get_many(texts)[0], vectors[0])  # and the CPU's is still its own
    again.close()


def test_a_cluster_worker_kept_from_a_cpu_build_opens_the_model_again_for_another_device(monkeypatch):
    # Dask workers outlive a build: one that embedded on the CPU must not serve a build on
    # another device with its CPU session (it tries the device, which is missing here).
    from edge.embedder import QueryEmbedder, find_model_dir
    from firmware_tools import embedding

    device = absent_onnx_device()
    monkeypatch.setattr(embedding, "_worker_embedder", None)  # this process's state is put back after
    model_dir = find_model_dir()
    sha256 = QueryEmbedder.open(model_dir).sha256
    vectors = embedding._embed_on_cluster(str(model_dir), "onnx", sha256, ["reset the encoder"])
    assert vectors.shape == (1, 384)
    with pytest.raises(ModelError, match=f"device '{device}' needs"):
        embedding._embed_on_cluster(str(model_dir), "onnx", sha256, ["reset the encoder"], device)
