"""The memory budget, proven on real processes: prlimit, read-only mounts, shared budgets."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from edge import CapsuleSet, MemoryBudget, open_capsule
from edge.budget import (
    ADDRESS_SPACE_MARGIN_BYTES,
    MODEL_SESSION_BYTES,
    MODEL_SESSION_MAPPED_BYTES,
    format_mib,
    model_query_peak_bytes,
    parse_size,
    read_process_memory,
)
from edge.capsule import OpenOptions
from edge.embedder import DEFAULT_MAX_TOKENS
from edge.errors import BudgetExceededError, CapsuleFormatError
from edge.sealed import stream_plaintext_bytes

from .conftest import FAQ_DOCS, ROOT, build_test_capsule, run_cli
from .e2e.test_real_corpus import NOW, QUESTIONS

MiB = 1 << 20
QUESTION = QUESTIONS[0]
#: The model's reservation for the test capsules (``model.max_tokens`` 256): its session and
#: what a 256-token query adds while it runs.
PACKED_MODEL_BYTES = MODEL_SESSION_BYTES + model_query_peak_bytes(DEFAULT_MAX_TOKENS)
MAPPED_MODEL_BYTES = MODEL_SESSION_MAPPED_BYTES + model_query_peak_bytes(DEFAULT_MAX_TOKENS)


def _keys(built):
    return ["--trust", str(built.publisher_pub_path), "--identity", str(built.device_key_path)]


@pytest.fixture(scope="module")
def big_capsule(tmp_path_factory):
    """The FAQ cut into ~1,700 short chunks: an index about 2.5 MiB larger than the FAQ's."""
    tmp = tmp_path_factory.mktemp("big")
    return build_test_capsule(FAQ_DOCS, tmp / "faq-fine.capsule", keys_dir=tmp / "keys", max_tokens=48,
                              overlap_tokens=0, projection=False)


def _memory_json(built, *extra):
    proc = run_cli("edge", "info", str(built.path), *_keys(built), "--memory", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["memory"]


def test_plan_is_an_upper_bound_of_what_the_kernel_counts(faq_capsule):
    memory = _memory_json(faq_capsule)
    plan = memory["plan_bytes"]
    assert memory["total_reserved_bytes"] == memory["reserved_bytes"]["runtime"] + sum(plan.values())
    assert plan["model"] > 0 and plan["index"] == stream_plaintext_bytes(faq_capsule.result.section_bytes["INDX"])
    # after opening and one query, the process holds no more resident anonymous memory than was
    # reserved, and its address space no more than that plus the documented untouched margin
    assert memory["measured"]["anon_bytes"] <= memory["total_reserved_bytes"]
    assert memory["measured"]["data_bytes"] <= memory["total_reserved_bytes"] + ADDRESS_SPACE_MARGIN_BYTES


def test_info_memory_prints_the_plan_and_measured_use(faq_capsule):
    proc = run_cli("edge", "info", str(faq_capsule.path), *_keys(faq_capsule), "--memory")
    assert proc.returncode == 0, proc.stderr
    for word in ("budget: unlimited", "runtime (interpreter, libraries)", "model", "index", "frame_cache",
                 "VmData, RLIMIT_DATA", "RssAnon", "RssFile"):
        assert word in proc.stdout


def test_query_process_under_rlimit_data_answers_and_a_bigger_capsule_is_refused(faq_capsule, big_capsule, tmp_path):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    budget = _memory_json(faq_capsule)["total_reserved_bytes"] + MiB
    # what costs RAM (RssAnon) is charged, not untouched address space: VmData alone is ~110 MiB
    assert budget < 96 * MiB, budget
    assert _memory_json(big_capsule)["total_reserved_bytes"] > budget  # the bigger index does not fit packed
    limit = ["prlimit", f"--data={budget + ADDRESS_SPACE_MARGIN_BYTES}", "--"]  # RLIMIT_DATA also counts untouched reservations
    env = dict(os.environ, PYTHONPATH=str(ROOT), EDGE_STORE_DIR=str(tmp_path / "store"))
    search = [sys.executable, "-m", "edge", "--ram-budget", str(budget), "search"]
    ok = subprocess.run(limit + search + [str(faq_capsule.path), QUESTION["question"], "--json",
                                          *_keys(faq_capsule)], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    hits = [json.loads(line) for line in ok.stdout.splitlines()]
    assert any(QUESTION["answer_snippet"] in h["text"] for h in hits)

    refused = subprocess.run(limit + search + [str(big_capsule.path), QUESTION["question"], "--model-weights", "packed",
                                               *_keys(big_capsule)], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr and "MemoryError" not in refused.stderr
    error = [line for line in refused.stderr.splitlines() if line.startswith("edge: error: ")]
    assert len(error) == 1 and "capsule faq-fine needs" in error[0] and "budget has" in error[0], refused.stderr
    assert f"model {format_mib(PACKED_MODEL_BYTES)}" in error[0]

    # By default the model's weights stay mapped when the packed session does not fit: the same
    # capsule then answers under the same limits.
    mapped = subprocess.run(limit + search + [str(big_capsule.path), QUESTION["question"], "--json",
                                              *_keys(big_capsule)], capture_output=True, text=True, env=env, timeout=300)
    assert mapped.returncode == 0, mapped.stderr
    assert any(QUESTION["answer_snippet"] in json.loads(line)["text"] for line in mapped.stdout.splitlines())
    memory = _memory_json(big_capsule, "--ram-budget", str(budget))
    assert memory["plan_bytes"]["model"] == MAPPED_MODEL_BYTES
    assert memory["measured"]["anon_bytes"] <= memory["total_reserved_bytes"] <= budget
    text = run_cli("edge", "info", str(big_capsule.path), *_keys(big_capsule), "--memory", "--ram-budget", str(budget))
    assert f"model (weights mapped, not prepacked)      {format_mib(MAPPED_MODEL_BYTES)}" in text.stdout, text.stdout
    query_share = format_mib(model_query_peak_bytes(DEFAULT_MAX_TOKENS))
    assert f"\n    of which a {DEFAULT_MAX_TOKENS}-token query".ljust(43) + f" {query_share:>10s}\n" in text.stdout, text.stdout


#: Opens a capsule (unlimited budget: everything is still charged), asks a short question and
#: then the longest the CLI takes (a 64 KiB line: the model reads 256 tokens of it) at k=50,
#: and prints RssAnon and what was reserved. One malloc arena, as the ``edge`` program runs.
_LONGEST_QUERY_PROBE = r"""
import json, sys
from edge import MemoryBudget, OpenOptions, load_identity, load_public_key, open_capsule
from edge._process import single_malloc_arena
from edge.budget import read_process_memory
single_malloc_arena()
path, publisher, device, question, weights = sys.argv[1:6]
words = "package install error E-4021 0x1F max_wal_senders 日本語の文書 Störung naïve".split()
longest = " ".join(words[i % len(words)] for i in range(20_000))[:65_536]
budget = MemoryBudget(None)
with open_capsule(path, trusted_keys=[load_public_key(publisher)], identities=[load_identity(device)],
                  budget=budget, options=OpenOptions(model_weights=weights)) as capsule:
    capsule.search(question, k=5)
    for mode in ("hybrid", "dense", "hybrid"):
        capsule.clear_cache()
        capsule.search(longest, k=50, mode=mode)
    print(json.dumps({"anon_bytes": read_process_memory().anon_bytes,
                      "reserved_bytes": budget.report()["total_reserved_bytes"]}))
"""


@pytest.mark.parametrize("weights", ["packed", "mapped"])
def test_the_longest_query_stays_within_what_is_reserved(faq_capsule, weights):
    # Before the model's reservation counted a 256-token query's activations (12-13 MiB), this
    # ended past what was reserved: FAQ 72.7 against 68.4 MiB, SciFact 87.8 against 76.5. (That
    # the tokenizer reads only a prefix of the 64 KiB, which glibc would keep 13 MiB of, is
    # tests/unit/edge/test_embedder.py's.)
    proc = subprocess.run([sys.executable, "-c", _LONGEST_QUERY_PROBE, str(faq_capsule.path),
                           str(faq_capsule.publisher_pub_path), str(faq_capsule.device_key_path),
                           QUESTION["question"], weights],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    memory = json.loads(proc.stdout.splitlines()[-1])
    assert memory["anon_bytes"] <= memory["reserved_bytes"], (format_mib(memory["anon_bytes"]),
                                                               format_mib(memory["reserved_bytes"]))


def test_a_longer_query_limit_reserves_more_for_the_model():
    assert [model_query_peak_bytes(n) // (MiB // 2) for n in (16, 64, 128, 192, 256)] == [2, 2, 9, 18, 28]
    assert model_query_peak_bytes(160) == (9 * MiB // 2 + 9 * MiB) // 2  # halfway between 128 and 192
    assert model_query_peak_bytes(512) == 4 * model_query_peak_bytes(256)  # the square beyond the table
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        model_query_peak_bytes(0)


def test_budget_below_the_runtime_floor_is_one_clear_error(faq_capsule):
    proc = run_cli("edge", "--ram-budget", "16MiB", "search", str(faq_capsule.path), "python", *_keys(faq_capsule))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "below this runtime's floor" in proc.stderr and "16.0 MiB" in proc.stderr


@pytest.mark.parametrize("text", ["lots", "-5MiB", "0", "12 parsecs"])
def test_unparsable_budget_is_a_usage_error(faq_capsule, text):
    proc = run_cli("edge", "search", str(faq_capsule.path), "python", "--ram-budget", text, *_keys(faq_capsule))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--ram-budget" in proc.stderr


def test_budget_from_environment(faq_capsule):
    proc = run_cli("edge", "search", str(faq_capsule.path), "python", *_keys(faq_capsule),
                   env={"EDGE_RAM_BUDGET": "20MiB"})
    assert proc.returncode == 1 and "below this runtime's floor" in proc.stderr


def test_parse_size_units():
    assert parse_size("64MiB") == 64 * MiB and parse_size("1.5 GiB") == 3 * (1 << 29)
    assert parse_size("512M") == 512_000_000 and parse_size("4096") == 4096
    for bad in ("", "MiB", "1 parsec", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_refused_open_reserves_nothing_and_maps_nothing(faq_capsule, big_capsule):
    budget = MemoryBudget(None)
    trusted = [faq_capsule.publisher_key.public_key()]
    with open_capsule(faq_capsule.path, trusted_keys=trusted, identities=[faq_capsule.device_key], now=NOW,
                      budget=budget) as capsule:
        needed = budget.reserved_bytes
        plan = dict(capsule.memory_plan)
    assert set(budget.report()["reserved_bytes"]) == {"runtime"}
    # room for this process as it is now (the runtime is charged its RssAnon, which earlier
    # tests in this process may have grown) and half the plan: the runtime fits, the capsule not
    assert needed > sum(plan.values())
    tight = MemoryBudget(read_process_memory().anon_bytes + 4 * MiB + sum(plan.values()) // 2)
    with pytest.raises(BudgetExceededError) as info:
        open_capsule(big_capsule.path, trusted_keys=trusted, identities=[big_capsule.device_key], now=NOW,
                     budget=tight)
    assert info.value.requested_bytes > info.value.available_bytes
    assert set(tight.report()["reserved_bytes"]) == {"runtime"}
    maps = open("/proc/self/maps").read()
    assert str(big_capsule.path) not in maps and "edge-capsule-index" not in maps


def test_several_capsules_share_one_budget_and_one_model_session(faq_capsule, big_capsule):
    budget = MemoryBudget(None)
    trusted = [faq_capsule.publisher_key.public_key()]
    with CapsuleSet.open([faq_capsule.path, big_capsule.path], trusted_keys=trusted,
                         identities=[faq_capsule.device_key], now=NOW, budget=budget) as capsules:
        first, second = capsules.capsules
        assert first.embedder is second.embedder
        assert first.memory_plan["model"] > 0 and second.memory_plan["model"] == 0
        reserved = budget.report()["reserved_bytes"]
        assert sum(1 for name in reserved if name.endswith("/model") and reserved[name]) == 1
        hits = capsules.search(QUESTION["question"], k=8)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert {h.capsule for h in hits} == {"python-faq", "faq-fine"}
        assert any(QUESTION["answer_snippet"] in h.text for h in hits)
        for hit in hits:  # each hit is that capsule's own chunk, read from its frames
            source = first if hit.capsule == "python-faq" else second
            assert source.read(hit.chunk_id).text == hit.text
    assert set(budget.report()["reserved_bytes"]) == {"runtime"}


def test_search_several_capsules_from_the_cli(faq_capsule, big_capsule):
    proc = run_cli("edge", "search", str(faq_capsule.path), str(big_capsule.path), QUESTION["question"], "-k", "4",
                   "--json", *_keys(faq_capsule))
    assert proc.returncode == 0, proc.stderr
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(hits) == 4 and {h["capsule"] for h in hits} <= {"python-faq", "faq-fine"}


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "read-only mount test needs root (mount in a private namespace)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare and mount (util-linux)"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount here: {probe.stderr.strip()}"


def test_runtime_works_from_a_read_only_filesystem(faq_capsule, tmp_path):
    """Capsules, model, keys and an installed store on a real read-only mount; /var/lib read-only
    and empty too, so the default store cannot be created (a Pi with a read-only root)."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "ro"
    mount.mkdir()
    models = ROOT / "models"
    edge = f"env -u EDGE_STORE_DIR EDGE_MODEL_PATH={mount}/models PYTHONPATH={ROOT} {sys.executable} -B -m edge"
    keys = f"--trust {mount}/keys/publisher.pub --identity {mount}/keys/device.key"
    question = QUESTION["question"]
    script = f"""
set -e
mount -t tmpfs -o size=64m tmpfs {mount}
mkdir {mount}/capsules {mount}/models {mount}/keys
cp {faq_capsule.path} {mount}/capsules/
cp -r {models}/all-MiniLM-L6-v2 {mount}/models/
cp {faq_capsule.publisher_pub_path} {faq_capsule.device_key_path} {mount}/keys/
{edge} install {mount}/capsules/{faq_capsule.path.name} {keys} --store {mount}/store >&2
mount -o remount,ro {mount}
mount -t tmpfs -o ro,size=1m tmpfs /var/lib
if touch {mount}/capsules/probe 2>/dev/null; then echo "mount is writable" >&2; exit 3; fi
cd {mount}
echo "== by path, no store"
{edge} search {mount}/capsules/{faq_capsule.path.name} "{question}" --json {keys}
echo "== by name, read-only store"
{edge} search python-faq "{question}" --json {keys} --store {mount}/store
echo "== install into the read-only store"
{edge} install {mount}/capsules/{faq_capsule.path.name} {keys} --store {mount}/store 2>&1 && exit 4 || echo "exit $?"
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parts = proc.stdout.split("== ")
    by_path, by_name, install = parts[1], parts[2], parts[3]
    for part in (by_path, by_name):
        hits = [json.loads(line) for line in part.splitlines()[1:] if line.startswith("{")]
        assert any(QUESTION["answer_snippet"] in h["text"] for h in hits), proc.stderr
    assert "edge: warning: no device store" in proc.stderr
    assert "exit 1" in install and "read-only file system" in install and "Traceback" not in install


def test_read_process_memory_reads_proc():
    memory = read_process_memory()
    assert memory.data_bytes and memory.rss_bytes and memory.rss_bytes >= memory.anon_bytes


@pytest.fixture(scope="module")
def plain_capsule(tmp_path_factory):
    """The FAQ capsule published with an unencrypted index (``--plain-index``)."""
    tmp = tmp_path_factory.mktemp("plain")
    return build_test_capsule(FAQ_DOCS, tmp / "plain.capsule", keys_dir=tmp / "keys", encrypt_index=False,
                              name="faq-plain")


def test_store_maps_an_unencrypted_index_from_its_own_file(plain_capsule, tmp_path):
    from edge.store import Store

    built = plain_capsule
    keys = dict(identities=[built.device_key], trusted_keys=[built.publisher_key.public_key()])
    with Store(tmp_path / "store") as store:
        entry = store.install(built.path, now=NOW, **keys)
        index_file = store.capsule_path(entry).with_name("index.annoy")
        assert stat.S_IMODE(index_file.stat().st_mode) == 0o444
        assert index_file.stat().st_size == built.result.section_bytes["INDX"]
        with store.open("faq-plain", now=NOW, **keys) as from_store, \
                open_capsule(built.path, now=NOW, **keys) as from_file:
            assert from_store.info()["index"]["mapped_from"] == "file" and from_store.memory_plan["index"] == 0
            assert from_file.info()["index"]["mapped_from"] == "memory" and from_file.memory_plan["index"] > 0
            assert str(index_file) in open("/proc/self/maps").read()
            a = from_store.search(QUESTION["question"], k=5)
            b = from_file.search(QUESTION["question"], k=5)
            assert [(h.chunk_id, h.text) for h in a] == [(h.chunk_id, h.text) for h in b]


def test_auto_model_weights_stay_mapped_only_when_the_packed_session_does_not_fit(faq_capsule):
    trusted = [faq_capsule.publisher_key.public_key()]
    kwargs = dict(trusted_keys=trusted, identities=[faq_capsule.device_key], now=NOW)
    with open_capsule(faq_capsule.path, budget=MemoryBudget(None), **kwargs) as capsule:
        assert capsule.memory_plan["model"] == PACKED_MODEL_BYTES  # unlimited: packed, the fastest
        packed_plan = sum(capsule.memory_plan.values())
        packed_hits = [(h.chunk_id, round(h.score, 4)) for h in capsule.search(QUESTION["question"], k=5)]
    # Room for this process now and the plan less 5 MiB: the packed session does not fit, the
    # mapped one (10 MiB less) does, and answers the same.
    room = read_process_memory().anon_bytes + packed_plan - 5 * MiB
    with pytest.raises(BudgetExceededError, match=f"model {format_mib(PACKED_MODEL_BYTES)}"):
        open_capsule(faq_capsule.path, budget=MemoryBudget(room), options=OpenOptions(model_weights="packed"),
                     **kwargs)
    with open_capsule(faq_capsule.path, budget=MemoryBudget(room), **kwargs) as capsule:
        assert capsule.memory_plan["model"] == MAPPED_MODEL_BYTES
        assert "weights mapped" in capsule.embedder_engine
        assert [(h.chunk_id, round(h.score, 4)) for h in capsule.search(QUESTION["question"], k=5)] == packed_hits
    with pytest.raises(ValueError, match="model_weights must be one of auto, packed, mapped"):
        OpenOptions(model_weights="squeezed")


def test_a_document_list_that_does_not_fit_beside_packed_weights_leaves_them_mapped(faq_capsule, monkeypatch):
    # The document list is charged once parsed, before the model loads; under "auto" a list
    # that does not fit beside the packed session's reservation makes the weights stay mapped.
    # (A large list is stood in for by its charge: 8 MiB, the rest of the capsule is real.)
    from edge.hits import DocumentTable

    trusted = [faq_capsule.publisher_key.public_key()]
    kwargs = dict(trusted_keys=trusted, identities=[faq_capsule.device_key], now=NOW)
    with open_capsule(faq_capsule.path, budget=MemoryBudget(None), **kwargs) as capsule:
        plan = dict(capsule.memory_plan)
    assert plan["model"] == PACKED_MODEL_BYTES
    monkeypatch.setattr(DocumentTable, "held_bytes", lambda self: 8 * MiB)
    without_documents = sum(plan.values()) - plan["documents"]
    room = read_process_memory().anon_bytes + without_documents + 8 * MiB - 5 * MiB
    with pytest.raises(BudgetExceededError, match="document list"):
        open_capsule(faq_capsule.path, budget=MemoryBudget(room), options=OpenOptions(model_weights="packed"),
                     **kwargs)
    budget = MemoryBudget(room)
    with open_capsule(faq_capsule.path, budget=budget, **kwargs) as capsule:
        assert capsule.memory_plan["model"] == MAPPED_MODEL_BYTES
        assert capsule.memory_plan["documents"] == 8 * MiB
        assert "weights mapped" in capsule.embedder_engine
        assert capsule.search(QUESTION["question"], k=3)
        assert budget.reserved_bytes <= room


def test_store_maps_an_unencrypted_lexical_index_from_its_own_files(plain_capsule, tmp_path):
    from edge.lexical_tantivy import TANTIVY_OVERHEAD_BYTES
    from edge.store import Store

    built = plain_capsule
    keys = dict(identities=[built.device_key], trusted_keys=[built.publisher_key.public_key()])
    with Store(tmp_path / "store") as store:
        entry = store.install(built.path, now=NOW, **keys)
        folder = store.capsule_path(entry).with_name("lexical")
        files = sorted(folder.iterdir())
        assert files[0].name != "meta.json" and any(f.name == "meta.json" for f in files)
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o444 for f in files)
        with store.open("faq-plain", now=NOW, **keys) as from_store, \
                open_capsule(built.path, now=NOW, **keys) as from_file:
            assert from_store.memory_plan["lexical"] == TANTIVY_OVERHEAD_BYTES < from_file.memory_plan["lexical"]
            maps = open("/proc/self/maps").read()
            assert any(str(f) in maps for f in files if f.suffix == ".idx")  # tantivy maps the store's files
            for mode in ("lexical", "hybrid"):
                a = from_store.search(QUESTION["question"], k=5, mode=mode)
                b = from_file.search(QUESTION["question"], k=5, mode=mode)
                assert [(h.chunk_id, h.score, h.text) for h in a] == [(h.chunk_id, h.score, h.text) for h in b]
        # A file changed after the install is refused at the next open, with its name, and nothing leaks.
        idx = next(f for f in files if f.suffix == ".idx")
        idx.chmod(0o644)
        data = bytearray(idx.read_bytes())
        data[len(data) // 3] ^= 0x01
        idx.write_bytes(bytes(data))
        with pytest.raises(CapsuleFormatError, match=rf"lexical file {idx.name} fails its CRC-32"):
            store.open("faq-plain", now=NOW, **keys)
