"""Annoy structure checks of edge/index.py on a genuine capsule's index (ISSUE9 §1, FORMAT.md §4.4).

Annoy 1.17.3 follows its file's child pointers and item ids without any check (annoylib.h
``_get_all_nns``), so a publisher-signed index with a bad pointer used to verify and then make
every search SIGSEGV. The index here is the decrypted INDX of ``tests/vectors/ok`` (6 items,
2 trees, dim 2, so ``K = 4``: nodes 0-5 items, buckets of 3 items, the roots copied to the end).
The end-to-end cases run in a child process, so a segfault fails the test instead of pytest.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge.budget import MemoryBudget
from edge.errors import CapsuleFormatError
from edge.index import Projection, VectorIndex, check_annoy_structure
from edge.manifest import parse_manifest
from tests.vectors.generate import Draft

ROOT = Path(__file__).resolve().parents[3]
OK = ROOT / "tests" / "vectors" / "ok" / "capsule"


@pytest.fixture(scope="module")
def genuine():
    draft = Draft(OK.read_bytes())
    info = parse_manifest(draft.build_mani()).index
    return draft, info, draft.plaintext("INDX")


def _nodes(plaintext: bytes, info) -> np.ndarray:
    return np.frombuffer(plaintext, dtype="<i4").reshape(-1, info.node_bytes // 4).copy()


def _check(nodes: np.ndarray, info) -> int:
    data = nodes.astype("<i4").tobytes()
    return check_annoy_structure(lambda offset, size: data[offset:offset + size], n_bytes=len(data), info=info)


def _first(nodes: np.ndarray, info, kind: str) -> int:
    k = info.dim + 2
    nd = nodes[:, 0]
    idx = np.arange(len(nodes))
    mask = {"split": (idx >= info.n_items) & (nd > k), "bucket": (idx >= info.n_items) & (nd <= k)}[kind]
    return int(np.flatnonzero(mask)[0])


def test_genuine_index_passes_with_the_manifest_tree_count(genuine):
    _, info, plaintext = genuine
    assert _check(_nodes(plaintext, info), info) == info.n_trees == 2


def _f32_bits(value: float) -> int:
    return int(np.array([value], dtype="<f4").view("<i4")[0])


def _root_child_out_of_range(nodes, info):
    nodes[nodes[:, 0] == info.n_items, 1] = 1 << 30  # the roots, their copies alike


def _every_root_child_negative(nodes, info):
    nodes[nodes[:, 0] == info.n_items, 2] = -7


def _split_points_at_itself(nodes, info):
    nodes[-1, 1] = len(nodes) - 1


def _bucket_item_id_too_big(nodes, info):
    nodes[_first(nodes, info, "bucket"), 1] = info.n_items


def _bucket_item_id_negative(nodes, info):
    nodes[_first(nodes, info, "bucket"), 2] = -1


def _bucket_count_zero(nodes, info):
    nodes[_first(nodes, info, "bucket"), 0] = 0


def _bucket_count_negative(nodes, info):
    nodes[_first(nodes, info, "bucket"), 0] = -5


def _count_above_n_items(nodes, info):
    nodes[_first(nodes, info, "bucket"), 0] = info.n_items + 1


def _item_is_a_split(nodes, info):
    nodes[0, 0] = info.dim + 3


def _split_children_identical(nodes, info):
    nodes[-1, 2] = nodes[-1, 1]  # both children the same bucket: visited twice


def _two_trees_share_a_subtree(nodes, info):
    nodes[-2, 1] = nodes[-1, 1]


def _root_is_a_child(nodes, info):
    nodes[-1, 2] = len(nodes) - 2


def _last_node_not_n_items(nodes, info):
    nodes[-1, 0] = info.n_items - 1


def _item_vector_nan(nodes, info):
    nodes[3, 3] = _f32_bits(float("nan"))


def _item_norm_inf(nodes, info):
    nodes[2, 1] = _f32_bits(float("inf"))


def _hyperplane_nan(nodes, info):
    nodes[-1, 3] = _f32_bits(float("nan"))


CORRUPTIONS = [_root_child_out_of_range, _every_root_child_negative, _split_points_at_itself,
               _bucket_item_id_too_big, _bucket_item_id_negative, _bucket_count_zero, _bucket_count_negative,
               _count_above_n_items, _item_is_a_split, _split_children_identical,
               _two_trees_share_a_subtree, _root_is_a_child, _last_node_not_n_items, _item_vector_nan,
               _item_norm_inf, _hyperplane_nan]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[c.__name__.strip("_") for c in CORRUPTIONS])
def test_corrupted_structure_is_refused_in_one_line(genuine, corrupt):
    _, info, plaintext = genuine
    nodes = _nodes(plaintext, info)
    corrupt(nodes, info)
    with pytest.raises(CapsuleFormatError) as err:
        _check(nodes, info)
    assert "\n" not in str(err.value) and str(err.value).startswith(("annoy node", "index has"))


@pytest.mark.parametrize("n_trees", [1, 3])
def test_root_count_must_match_the_manifest(genuine, n_trees):
    _, info, plaintext = genuine
    with pytest.raises(CapsuleFormatError, match=r"index has \d+ annoy roots?"):
        _check(_nodes(plaintext, info), dataclasses.replace(info, n_trees=n_trees))


def test_extra_root_in_front_of_the_copies_is_refused(genuine):
    _, info, plaintext = genuine
    nodes = _nodes(plaintext, info)
    nodes[-1, 1:3] = nodes[-1, 2], nodes[-1, 1]  # the copy no longer matches its original: 3 roots
    with pytest.raises(CapsuleFormatError, match="index has 3 annoy roots, manifest n_trees is 2"):
        _check(nodes, info)


def test_short_read_is_refused(genuine):
    _, info, plaintext = genuine
    with pytest.raises(CapsuleFormatError, match="index read returned"):
        check_annoy_structure(lambda offset, size: plaintext[offset:offset + size - 1], n_bytes=len(plaintext),
                              info=info)


def _open(draft, info, plaintext):
    projection = Projection.from_bytes(draft.plaintext("PROJ"), info=info)
    return VectorIndex.from_segments([plaintext], n_bytes=len(plaintext), info=info, budget=MemoryBudget(None),
                                     projection=projection, vecs_segments=[draft.plaintext("VECS")])


def test_vector_index_refuses_before_annoy_loads(genuine):
    draft, info, plaintext = genuine
    nodes = _nodes(plaintext, info)
    _root_child_out_of_range(nodes, info)
    budget = MemoryBudget(None)
    with pytest.raises(CapsuleFormatError, match="has child 1073741824"):
        VectorIndex.from_segments([nodes.tobytes()], n_bytes=len(plaintext), info=info, budget=budget,
                                  projection=Projection.from_bytes(draft.plaintext("PROJ"), info=info),
                                  vecs_segments=[draft.plaintext("VECS")])
    assert budget.reserved_bytes == 0


def test_index_memfd_is_sealed_against_writes(genuine):
    draft, info, plaintext = genuine
    index = _open(draft, info, plaintext)
    try:
        with pytest.raises(PermissionError):
            os.pwrite(index._fd, b"\xff\xff\xff\x7f", 0)
        ids, _ = index.search(np.full(info.projection.dim_in, 1 / np.sqrt(info.projection.dim_in),
                                      dtype=np.float32), 3)
        assert len(ids) == 3 and all(0 <= i < info.n_items for i in ids)
    finally:
        index.close()


def test_huge_search_k_and_k_are_capped_to_what_annoy_takes(genuine):
    draft, info, plaintext = genuine
    index = _open(draft, info, plaintext)
    try:
        q = np.full(info.projection.dim_in, 1 / np.sqrt(info.projection.dim_in), dtype=np.float32)
        ids, _ = index.search(q, 1 << 40, search_k=1 << 40)
        assert sorted(ids) == list(range(info.n_items))
        with pytest.raises(ValueError, match="non-finite"):
            index.search(np.full_like(q, np.nan), 1)
        with pytest.raises(ValueError, match="chunk id -1"):
            index.item_vector(-1)
    finally:
        index.close()


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from cryptography.hazmat.primitives import serialization
    from edge import open_capsule
    from edge.errors import EdgeError
    keys = Path(sys.argv[2])
    pub = serialization.load_pem_public_key((keys / "test-publisher-1.pub").read_bytes())
    dev = serialization.load_pem_private_key((keys / "test-device.key").read_bytes(), password=None)
    from datetime import datetime, timezone
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    try:
        capsule = open_capsule(sys.argv[1], trusted_keys=[pub], identities=[dev], now=now)
        q = np.full(capsule.manifest.model.dim, capsule.manifest.model.dim ** -0.5, dtype=np.float32)
        capsule.rank(q, 3, now=now)
        print("searched")
    except EdgeError as exc:
        print(type(exc).__name__, exc)
""")


@pytest.mark.parametrize("corrupt", [_every_root_child_negative, _root_child_out_of_range, _bucket_item_id_too_big],
                         ids=["root-children-negative", "root-child-out-of-range", "bucket-item-id-too-big"])
def test_signed_capsule_with_crafted_index_is_refused_in_a_child_process(genuine, corrupt, tmp_path):
    draft, info, plaintext = genuine
    nodes = _nodes(plaintext, info)
    corrupt(nodes, info)
    evil = draft.copy()
    evil.reseal("INDX", nodes.tobytes())
    path = tmp_path / "evil.capsule"
    path.write_bytes(evil.build())  # re-signed by test-publisher-1: verifies
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(OK.parents[1] / "keys")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("CapsuleFormatError annoy node"), proc.stdout
