"""Builds on a real Dask cluster (``firmware-tools build --cluster``): shards of documents are
parsed and chunked, the chunks embedded, packed (zstd) and drawn as QR codes on its workers;
reading the files, sealing, encoding, checking and signing stay on the coordinator.

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


def _task_counts(client) -> dict[str, int]:
    """Tasks a worker has finished, by task prefix (the function's name without leading ``_``):
    how many times the scheduler saw a task of that prefix enter the ``memory`` state."""
    return client.run_on_scheduler(lambda dask_scheduler: {
        name: prefix.state_counts.get("memory", 0) for name, prefix in dask_scheduler.task_prefixes.items()})


def test_a_cluster_build_is_byte_identical_to_a_local_one(cluster, docs, tmp_path, monkeypatch):
    from firmware_tools import build

    monkeypatch.setattr(build, "SHARD_DOCUMENTS", 1)  # four shards: their chunks are renumbered in order
    local = _build(docs, tmp_path / "local.capsule", tmp_path / "keys")
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        before = _task_counts(client)
        remote = _build(docs, tmp_path / "cluster.capsule", tmp_path / "keys", cluster=cluster.scheduler_address)
        after = _task_counts(client)
    finally:
        client.close()
    assert remote.result.n_embedded == local.result.n_embedded == local.result.n_chunks > 2 * TASK_TEXTS
    assert remote.path.read_bytes() == local.path.read_bytes()
    ran = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert ran.get("parse_and_chunk", 0) == len(DOCS)  # each document was parsed and chunked on a worker,
    assert ran.get("embed_on_cluster", 0) >= 1  # the embedding ran on the workers,
    assert ran.get("pack_segment", 0) >= 1  # the zstd packing too,
    assert ran.get("render_batch", 0) >= 1  # and the QR drawing


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
    from firmware_tools import _workers
    from firmware_tools.errors import BuildError

    monkeypatch.setattr(_workers, "CONNECT_TIMEOUT_S", 1)  # Dask retries a refused connection until then

    with pytest.raises(BuildError, match="cannot reach the Dask scheduler"):
        _build(docs, tmp_path / "never.capsule", tmp_path / "keys", cluster="tcp://127.0.0.1:9")
    assert not (tmp_path / "never.capsule").exists()


def test_a_task_that_fails_on_the_workers_runs_on_the_coordinator_in_order(cluster, caplog):
    from firmware_tools._workers import cluster_map

    def double_off_workers(x: int) -> int:  # pickled by value (cloudpickle): a closure
        import distributed as dd

        try:
            dd.get_worker()
        except ValueError:  # not on a worker: the coordinator's fallback
            return 2 * x
        if x % 3 == 0:
            raise RuntimeError("this worker refuses")
        return 2 * x

    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        with caplog.at_level("WARNING", logger="firmware_tools._workers"):
            assert list(cluster_map(client, double_off_workers, range(10), max_in_flight=3)) == \
                [2 * x for x in range(10)]
    finally:
        client.close()
    assert sum("running it in this process" in r.getMessage() for r in caplog.records) == 4  # 0, 3, 6, 9


def test_a_client_that_stops_taking_tasks_mid_map_leaves_the_rest_to_the_coordinator(cluster, caplog):
    from firmware_tools._workers import cluster_map

    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    results = []
    with caplog.at_level("WARNING", logger="firmware_tools._workers"):
        for n, result in enumerate(cluster_map(client, abs, range(-10, 0), max_in_flight=2)):
            results.append(result)
            if n == 2:
                client.close()  # as when the scheduler goes away: submit raises from now on
    assert results == [abs(x) for x in range(-10, 0)]
    assert sum("takes no more tasks" in r.getMessage() for r in caplog.records) == 1


def test_a_document_that_does_not_parse_on_a_worker_is_one_clear_error_and_no_output(cluster, docs, tmp_path):
    from firmware_tools.errors import InputDocumentError

    bad = tmp_path / "docs"
    shutil.copytree(docs, bad)
    (bad / "latin1.txt").write_bytes("Caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(InputDocumentError, match=r"latin1\.txt.*UTF-8"):
        _build(bad, tmp_path / "never.capsule", tmp_path / "keys", cluster=cluster.scheduler_address)
    assert not (tmp_path / "never.capsule").exists()


def test_a_delta_built_on_the_cluster_is_byte_identical_to_a_local_delta(cluster, docs, tmp_path):
    from firmware_tools.delta import read_base

    v1 = _build(docs, tmp_path / "v1.capsule", tmp_path / "keys")
    v2_docs = tmp_path / "v2"
    shutil.copytree(docs, v2_docs)
    (v2_docs / "gui.txt").write_text((v2_docs / "gui.txt").read_text() + "\n\nFault E-4021: encoder signal lost.\n")
    (v2_docs / "windows.txt").unlink()
    base = read_base(v1.path, signing_key=v1.publisher_key, identities=[v1.device_key])
    local = _build(v2_docs, tmp_path / "v2-local.capsule", tmp_path / "keys", version=2, base=base)
    remote = _build(v2_docs, tmp_path / "v2-cluster.capsule", tmp_path / "keys", version=2, base=base,
                    cluster=cluster.scheduler_address)
    assert remote.result.n_documents == local.result.n_documents == 1  # only the changed document
    assert remote.path.read_bytes() == local.path.read_bytes()
