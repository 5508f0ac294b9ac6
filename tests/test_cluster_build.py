"""Builds whose chunks are embedded on a real Dask cluster (``firmware-tools build --cluster``).

A real ``distributed.LocalCluster`` on this machine: a scheduler and two worker processes over
TCP on loopback, each loading the model itself. The capsule must be byte-identical to a local
build of the same inputs, keys, seed and clock, also when a worker is killed in the middle.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from firmware_tools.embedding import TASK_TEXTS

from .conftest import FAQ_DOCS, build_test_capsule

distributed = pytest.importorskip("distributed", reason="the cluster extra (pip install '.[tools,cluster]')")

DOCS = ["design.txt", "extending.txt", "gui.txt", "windows.txt"]  # 110 chunks: four tasks of TASK_TEXTS


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  scheduler_port=0, silence_logs=40) as running:
        yield running


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster-docs")
    for name in DOCS:
        shutil.copy(FAQ_DOCS / name, folder / name)
    return folder


def _build(docs, out, keys_dir, **kwargs):
    # no embedding cache: every chunk is embedded where the build says
    return build_test_capsule(docs, out, keys_dir=keys_dir, name="faq-part", embedding_cache=None, **kwargs)


def test_a_cluster_build_is_byte_identical_to_a_local_one(cluster, docs, tmp_path):
    local = _build(docs, tmp_path / "local.capsule", tmp_path / "keys")
    remote = _build(docs, tmp_path / "cluster.capsule", tmp_path / "keys", cluster=cluster.scheduler_address)
    assert remote.result.n_embedded == local.result.n_embedded == local.result.n_chunks > 2 * TASK_TEXTS
    assert remote.path.read_bytes() == local.path.read_bytes()


def test_a_worker_killed_mid_build_is_survived_and_the_output_is_the_same(cluster, docs, tmp_path):
    local = _build(docs, tmp_path / "local.capsule", tmp_path / "keys")
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    pids = sorted(client.run(os.getpid).values())
    killed: list[int] = []

    def progress(stage, done, total):
        if stage == "embed" and done and not killed:  # the first task is back: others are in flight
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    try:
        remote = _build(docs, tmp_path / "cluster.capsule", tmp_path / "keys", cluster=cluster.scheduler_address,
                        progress=progress)
    finally:
        client.close()
    assert killed
    assert remote.path.read_bytes() == local.path.read_bytes()


def test_an_unreachable_scheduler_is_one_clear_error_and_no_output(docs, tmp_path, monkeypatch):
    from firmware_tools import embedding
    from firmware_tools.errors import BuildError

    monkeypatch.setattr(embedding, "CONNECT_TIMEOUT_S", 1)  # Dask retries a refused connection until then

    with pytest.raises(BuildError, match="cannot reach the Dask scheduler"):
        _build(docs, tmp_path / "never.capsule", tmp_path / "keys", cluster="tcp://127.0.0.1:9")
    assert not (tmp_path / "never.capsule").exists()
