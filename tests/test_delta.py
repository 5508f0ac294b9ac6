"""Delta capsules end to end (FORMAT.md §4.7, §13.5): real builds, real frames, a real store.

v1 is the Python FAQ. v2 is a delta over v1: one document changed (an error code appended), one
removed, one added. v3 is a delta over v2 (so over two earlier segments). Every check reads text
from the frames and compares with what the documents say.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from .conftest import FAQ_DOCS, build_test_capsule
from edge import DeltaBaseError, ExpiredCapsuleError, IntegrityError, RollbackError, Store, StoreError, open_capsule
from edge.capsule import OpenOptions
from edge.errors import CapsuleError, CapsuleFormatError
from firmware_tools.delta import merge_ranges, read_base
from firmware_tools.errors import BuildError

NOW = datetime(2027, 1, 1, tzinfo=timezone.utc)
CHANGED, REMOVED, ADDED = "design.txt", "extending.txt", "parts.md"
NEW_FACT = "Fault code E-4021 means the flux capacitor of the unit is misaligned."
PART_FACT = "Part number 6ES7 214-1AG40-0XB0 is the CPU module of the controller."
QUERIES = ("E-4021 flux capacitor", "6ES7 214-1AG40-0XB0", "how do I install python on windows",
           "why are floating point numbers inexact", "what is the GIL")


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("delta")
    v1_docs = tmp / "v1"
    shutil.copytree(FAQ_DOCS, v1_docs)
    v1 = build_test_capsule(v1_docs, tmp / "faq-v1.capsule", keys_dir=tmp / "keys", name="faq")
    v2_docs = tmp / "v2"
    shutil.copytree(v1_docs, v2_docs)
    changed = v2_docs / CHANGED
    changed.write_text(changed.read_text() + f"\n\n{NEW_FACT}\n")
    (v2_docs / REMOVED).unlink()
    (v2_docs / ADDED).write_text(f"# Parts\n\n{PART_FACT}\n")
    base1 = read_base(v1.path, signing_key=v1.publisher_key, identities=[v1.device_key])
    v2 = build_test_capsule(v2_docs, tmp / "faq-v2.capsule", keys_dir=tmp / "keys", name="faq", version=2, base=base1)
    full2 = build_test_capsule(v2_docs, tmp / "faq-v2-full.capsule", keys_dir=tmp / "keys", name="faq", version=2)
    v3_docs = tmp / "v3"
    shutil.copytree(v2_docs, v3_docs)
    (v3_docs / "general.txt").write_text((v3_docs / "general.txt").read_text() + "\n\nError ZX-9931 first appeared in version three.\n")
    base2 = read_base(v2.path, signing_key=v1.publisher_key, identities=[v1.device_key], segment_files=[v1.path])
    v3 = build_test_capsule(v3_docs, tmp / "faq-v3.capsule", keys_dir=tmp / "keys", name="faq", version=3, base=base2)
    return {"tmp": tmp, "v1": v1, "v2": v2, "full2": full2, "v3": v3, "base1": base1, "v2_docs": v2_docs}


def _open(built, segment_files=(), **kwargs):
    return open_capsule(built.path, trusted_keys=[built.publisher_key.public_key()], identities=[built.device_key],
                        now=NOW, options=OpenOptions(segment_files=tuple(segment_files)), **kwargs)


def _results(capsule, mode=None):
    return {q: [h.to_json() for h in capsule.search(q, k=5, mode=mode, now=NOW)] for q in QUERIES}


def _store(tmp: Path, name: str) -> Store:
    path = tmp / name
    shutil.rmtree(path, ignore_errors=True)
    return Store(path, hardware_id="test-device")


def test_a_delta_carries_only_the_changed_documents_and_is_smaller(lineage):
    v1, v2, full2 = lineage["v1"], lineage["v2"], lineage["full2"]
    assert v2.result.n_documents == 2  # the changed one and the added one, nothing else
    assert v2.result.file_bytes < 0.5 * full2.result.file_bytes
    with _open(v2, [v1.path]) as capsule:
        segments = capsule.manifest.segments
        removed = [d for d in lineage["base1"].documents.values() if d.name in (CHANGED, REMOVED)]
        assert segments.tombstones == merge_ranges([(d.start, d.end) for d in removed])
        assert [p.version for p in segments.base] == [1]
        assert segments.base[0].manifest_sha256 == hashlib.sha256(_open(v1).manifest.raw).hexdigest()
        names = sorted(d.name for d in capsule.documents(now=NOW))
        assert names == sorted(p.name for p in lineage["v2_docs"].iterdir())
        assert capsule.n_live_chunks == full2.result.n_chunks


def test_search_over_base_and_delta_reads_the_new_text_and_never_a_tombstoned_chunk(lineage):
    v1, v2 = lineage["v1"], lineage["v2"]
    dead = lineage["base1"].tombstones_for([CHANGED, REMOVED])
    with _open(v2, [v1.path]) as capsule:
        top = capsule.search("E-4021 flux capacitor", k=1, now=NOW)[0]
        assert NEW_FACT in top.text and top.document == CHANGED and top.chunk_id >= v1.result.n_chunks
        assert capsule.search("6ES7 214-1AG40-0XB0", k=1, mode="lexical", now=NOW)[0].document == ADDED
        for mode in ("hybrid", "dense", "lexical"):
            for hits in _results(capsule, mode).values():
                assert not any(lo <= h["chunk_id"] < hi for h in hits for lo, hi in dead)
                assert not any(h["document"] == REMOVED for h in hits)
        exported = list(capsule.export(now=NOW))
        assert len(exported) == capsule.n_live_chunks
        assert not any(lo <= h.chunk_id < hi for h in exported for lo, hi in dead)
        with pytest.raises(ValueError, match="removed by version 2"):
            capsule.read(dead[0][0], now=NOW)
        assert capsule.read(exported[-1].chunk_id, now=NOW).text == exported[-1].text


def test_a_delta_of_a_delta_fans_out_over_three_segments(lineage):
    v1, v2, v3 = lineage["v1"], lineage["v2"], lineage["v3"]
    with _open(v3, [v2.path, v1.path]) as capsule:  # any order: matched by manifest digest
        assert [p.manifest.version for p in capsule.parts] == [1, 2, 3]
        assert "ZX-9931" in capsule.search("ZX-9931", k=1, now=NOW)[0].text
        assert NEW_FACT in capsule.search("E-4021 flux capacitor", k=1, now=NOW)[0].text
        assert capsule.check_frames()[1] == sum(p.manifest.n_chunks for p in capsule.parts)


def test_a_delta_without_its_base_is_refused_naming_the_version_it_needs(lineage):
    v1, v2, v3 = lineage["v1"], lineage["v2"], lineage["v3"]
    with pytest.raises(DeltaBaseError, match=r"update over v1.*install v1 first") as caught:
        _open(v2)
    assert caught.value.base_version == 1
    with pytest.raises(DeltaBaseError, match="update over v2"):
        _open(v3, [v1.path])  # one of its two earlier segments is missing


def test_a_segment_from_another_capsule_is_refused(lineage, tmp_path):
    v1, v2, full2 = lineage["v1"], lineage["v2"], lineage["full2"]
    with pytest.raises(DeltaBaseError):  # by path: another file simply is not the pinned segment
        _open(v2, [full2.path])
    store = _store(tmp_path, "store")
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store.install(v1.path, **keys)
    entry = store.install(v2.path, **keys)
    segment = store.path / "objects" / entry.object_name / "segments" / f"{v2_pin(v2)}.capsule"
    assert segment.is_file()
    os.chmod(segment.parent, 0o755)
    segment.unlink()
    shutil.copyfile(full2.path, segment)  # mix and match: a validly signed capsule of the same name
    with pytest.raises(IntegrityError, match="another manifest than the segment"):
        store.open("faq", **keys)


def v2_pin(built) -> str:
    """The manifest digest a delta pins for its newest earlier segment, read from its signed manifest."""
    from edge.container import ContainerFile
    from edge.manifest import parse_manifest

    with ContainerFile(built.path) as cf:
        return parse_manifest(cf.read("MANI")).segments.base[-1].manifest_sha256


def test_store_installs_a_delta_atomically_and_answers_as_the_full_version(lineage, tmp_path):
    v1, v2, full2 = lineage["v1"], lineage["v2"], lineage["full2"]
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    with pytest.raises(DeltaBaseError, match="update over v1"):
        store.install(v2.path, **keys)  # nothing installed yet
    assert store.list(now=NOW) == []
    store.install(v1.path, **keys)
    entry = store.install(v2.path, **keys)
    assert entry.version == 2
    objects = os.listdir(store.path / "objects")
    assert objects == [entry.object_name]  # v1's object is gone; its file lives on as v2's segment
    with store.open("faq", **keys) as installed, _open(v2, [v1.path]) as by_path:
        assert [p.manifest.version for p in installed.parts] == [1, 2]
        for mode in ("hybrid", "dense", "lexical"):
            assert _results(installed, mode) == _results(by_path, mode)
    with store.open("faq", **keys) as installed, _open(full2) as full:
        # the compacted equivalent answers the same facts (its index is another, so not byte for byte)
        for query in ("E-4021 flux capacitor", "6ES7 214-1AG40-0XB0"):
            assert installed.search(query, k=1, now=NOW)[0].text == full.search(query, k=1, now=NOW)[0].text


def test_an_installed_delta_reads_every_segments_stored_document_table(lineage, tmp_path, monkeypatch):
    """The delta's object keeps its own document table and links its base's beside the base's
    segment file (FORMAT.md §13.8): opening the version parses no DOCS, and answers as by path."""
    import edge.capsule

    v1, v2 = lineage["v1"], lineage["v2"]
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    store.install(v1.path, **keys)
    entry = store.install(v2.path, **keys)
    directory = store.path / "objects" / entry.object_name
    assert (directory / "documents.table").is_file()
    assert [p.suffix for p in sorted((directory / "segments").iterdir())] == [".capsule", ".table"]
    with _open(v2, [v1.path]) as by_path:
        expected = {mode: _results(by_path, mode) for mode in ("hybrid", "lexical")}
        documents = [d.name for d in by_path.documents()]

    def no_docs_parse(*args, **kwargs):
        raise AssertionError("DOCS parsed although the store keeps every segment's table")

    monkeypatch.setattr(edge.capsule, "_read_documents", no_docs_parse)
    with store.open("faq", **keys) as installed:
        assert [d.name for d in installed.documents()] == documents
        assert {mode: _results(installed, mode) for mode in ("hybrid", "lexical")} == expected


def test_replayed_truncated_and_foreign_deltas_leave_the_installed_version_serving(lineage, tmp_path):
    v1, v2, v3 = lineage["v1"], lineage["v2"], lineage["v3"]
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    store.install(v1.path, **keys)
    with pytest.raises(DeltaBaseError, match="update over v2.*not here"):
        store.install(v3.path, **keys)  # built over v2, the device has v1
    truncated = tmp_path / "truncated.capsule"
    truncated.write_bytes(v2.path.read_bytes()[:-4096])
    with pytest.raises(CapsuleError):
        store.install(truncated, **keys)
    store.install(v2.path, **keys)
    with pytest.raises(DeltaBaseError, match="installed already"):
        store.install(v2.path, **keys)  # replayed
    with pytest.raises(RollbackError):
        store.install(v1.path, **keys)
    with store.open("faq", **keys) as capsule:
        assert capsule.manifest.version == 2
        assert NEW_FACT in capsule.search("E-4021 flux capacitor", k=1, now=NOW)[0].text
    store.install(v3.path, **keys)  # and the next delta still applies
    with store.open("faq", **keys) as capsule:
        assert [p.manifest.version for p in capsule.parts] == [1, 2, 3]


def test_append_adds_documents_and_keeps_every_one_of_the_base(lineage, tmp_path):
    v1 = lineage["v1"]
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "bulletin.md").write_text("# Bulletin\n\nService bulletin SB-0042 replaces the door seal.\n")
    grown = build_test_capsule(extra, tmp_path / "faq-v2-grown.capsule", keys_dir=lineage["tmp"] / "keys", name="faq",
                               version=2, base=lineage["base1"], append=True)
    assert grown.result.n_documents == 1
    with _open(grown, [v1.path]) as capsule:
        assert capsule.manifest.segments.tombstones == ()
        names = {d.name for d in capsule.documents(now=NOW)}
        assert names == set(lineage["base1"].documents) | {"bulletin.md"}
        assert "SB-0042" in capsule.search("SB-0042", k=1, now=NOW)[0].text


def test_builder_refuses_a_delta_with_nothing_new(lineage, tmp_path):
    v1 = lineage["v1"]
    docs = tmp_path / "same"
    shutil.copytree(FAQ_DOCS, docs)
    with pytest.raises(BuildError, match="nothing changed since faq v1"):
        build_test_capsule(docs, tmp_path / "same.capsule", keys_dir=lineage["tmp"] / "keys", name="faq", version=2,
                           base=lineage["base1"])
    with pytest.raises(ValueError, match="needs a higher version"):
        build_test_capsule(docs, tmp_path / "same.capsule", keys_dir=lineage["tmp"] / "keys", name="faq", version=1,
                           base=lineage["base1"])
    assert not (tmp_path / "same.capsule").exists()
    assert v1.path.is_file()


def test_manifest_segments_are_parsed_strictly(manifest_dict):
    from edge.manifest import canonical_json, parse_manifest

    good = {"base": [{"version": 1, "manifest_sha256": "a" * 64, "n_chunks": 10}], "tombstones": [[0, 2], [5, 10]]}
    manifest_dict["version"] = 2
    parsed = parse_manifest(canonical_json({**manifest_dict, "segments": good}))
    assert parsed.segments.base_chunks == 10 and parsed.segments.n_tombstoned == 7
    assert parse_manifest(parsed.to_bytes()) == parsed
    bad = {
        "names chunks that do not exist": {**good, "tombstones": [[5, 11]]},
        "not after the range before it": {**good, "tombstones": [[5, 10], [0, 2]]},
        "not after the range before it ": {**good, "tombstones": [[0, 5], [5, 10]]},
        "versions must increase": {**good, "base": [{**good["base"][0], "version": 2}]},
        "not a \\[start, end\\] pair": {**good, "tombstones": [[1]]},
        "must be a list": {**good, "base": []},
    }
    for message, segments in bad.items():
        with pytest.raises(CapsuleFormatError, match=message.strip()):
            parse_manifest(canonical_json({**manifest_dict, "segments": segments}))
    twice = {**good, "base": [good["base"][0], {**good["base"][0], "version": 2}]}
    with pytest.raises(CapsuleFormatError, match="names one segment twice"):
        parse_manifest(canonical_json({**manifest_dict, "version": 3, "segments": twice}))


def test_cli_builds_a_delta_and_edge_installs_it_over_the_base(tmp_path):
    from .conftest import TINY_DOCS, run_cli

    def ok(*args, **kwargs):
        proc = run_cli(*args, **kwargs)
        assert proc.returncode == 0, proc.stderr
        return proc

    for kind, name in (("publisher", "p"), ("device", "d")):
        ok("firmware_tools", "keygen", "--kind", kind, "-o", str(tmp_path / f"{name}.key"))
    docs = tmp_path / "docs"
    shutil.copytree(TINY_DOCS / "good", docs)
    common = ["--signing-key", str(tmp_path / "p.key"), "--recipient", str(tmp_path / "d.pub"), "--expires", "+30d",
              "-q", "--name", "tiny"]
    ok("firmware_tools", "build", str(docs), "-o", str(tmp_path / "v1.capsule"), *common)
    (docs / "filters.md").write_text("# Filters\n\nReplacement filter QX-7788 fits every model.\n")
    proc = run_cli("firmware_tools", "build", str(docs), "-o", str(tmp_path / "v2.capsule"), *common,
                   "--base", str(tmp_path / "v1.capsule"))
    assert proc.returncode == 2 and "--base-identity" in proc.stderr
    built = json.loads(ok("firmware_tools", "build", str(docs), "-o", str(tmp_path / "v2.capsule"), *common[:-2],
                          "--base", str(tmp_path / "v1.capsule"), "--base-identity", str(tmp_path / "d.key"),
                          "--json").stdout)
    assert built["version"] == 2 and built["documents"] == 1
    env = {"EDGE_STORE_DIR": str(tmp_path / "store")}
    keys = ["--trust", str(tmp_path / "p.pub"), "--identity", str(tmp_path / "d.key")]
    proc = run_cli("edge", "install", str(tmp_path / "v2.capsule"), *keys, env=env)
    assert proc.returncode == 1 and "edge: error: " in proc.stderr and "update over v1" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok("edge", "install", str(tmp_path / "v1.capsule"), *keys, env=env)
    ok("edge", "install", str(tmp_path / "v2.capsule"), *keys, env=env)
    hits = [json.loads(line) for line in ok("edge", "search", "tiny", "QX-7788", "-k", "1", "--json", *keys,
                                            env=env).stdout.splitlines()]
    assert "QX-7788" in hits[0]["text"]


def test_store_keeps_past_versions_to_read_never_to_reinstall(lineage, tmp_path):
    v1, v2, v3 = lineage["v1"], lineage["v2"], lineage["v3"]
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    assert store.configure(keep_versions=3).keep_versions == 3
    for built in (v1, v2, v3):
        store.install(built.path, **keys)
    assert [e.version for e in store.history("faq")] == [3, 2, 1]
    with store.open("faq", version=1, **keys) as past:
        assert past.manifest.version == 1 and past.manifest.segments is None
        assert all(NEW_FACT not in h.text for h in past.search("E-4021 flux capacitor", k=5, now=NOW))
        assert any(d.name == REMOVED for d in past.documents(now=NOW))
    with store.open("faq", version=2, **keys) as past, _open(v2, [v1.path]) as by_path:
        assert _results(past) == _results(by_path)  # as version 2 answered
    with pytest.raises(RollbackError):
        store.install(v1.path, **keys)  # history is for reading: never installed again
    with pytest.raises(StoreError, match="v7 is not kept"):
        store.open("faq", version=7, **keys)
    store.configure(keep_versions=1)
    store.remove("faq")
    assert os.listdir(store.path / "objects") == []


def test_a_delta_past_the_store_quota_is_refused_and_changes_nothing(lineage, tmp_path):
    v1, v2, v3 = lineage["v1"], lineage["v2"], lineage["v3"]
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    store.configure(keep_versions=2)
    store.install(v1.path, **keys)
    store.install(v2.path, **keys)
    used = store.used_bytes()
    assert used < v1.path.stat().st_size + v2.path.stat().st_size + 8192  # v1's file is shared, not copied
    store.configure(quota_bytes=used + v3.path.stat().st_size // 2)
    with pytest.raises(StoreError, match="past its quota"):
        store.install(v3.path, **keys)  # dropping v1 from the history frees nothing: v2 needs its file
    assert store.used_bytes() == used
    assert [e.version for e in store.history("faq")] == [2, 1]
    with store.open("faq", **keys) as capsule:
        assert NEW_FACT in capsule.search("E-4021 flux capacitor", k=1, now=NOW)[0].text
    store.configure(quota_bytes=None)
    store.install(v3.path, **keys)
    assert [e.version for e in store.history("faq")] == [3, 2]


def test_an_expired_past_version_is_not_revived(tmp_path):
    from .conftest import TINY_DOCS

    docs = tmp_path / "docs"
    shutil.copytree(TINY_DOCS / "good", docs)
    v1 = build_test_capsule(docs, tmp_path / "t1.capsule", keys_dir=tmp_path / "keys", name="tiny",
                            expires_at=datetime(2027, 6, 1, tzinfo=timezone.utc))
    (docs / "more.md").write_text("# More\n\nValve V-311 closes at 4 bar.\n")
    base = read_base(v1.path, signing_key=v1.publisher_key, identities=[v1.device_key])
    v2 = build_test_capsule(docs, tmp_path / "t2.capsule", keys_dir=tmp_path / "keys", name="tiny", version=2,
                            base=base)
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()])
    store = _store(tmp_path, "store")
    store.configure(keep_versions=2)
    store.install(v1.path, now=NOW, **keys)
    store.install(v2.path, now=NOW, **keys)
    later = datetime(2028, 1, 1, tzinfo=timezone.utc)
    with store.open("tiny", now=later, **keys) as capsule:  # v2 is valid, and its earlier segment serves in it
        assert "V-311" in capsule.search("V-311", k=1, now=later)[0].text
    with pytest.raises(ExpiredCapsuleError):
        store.open("tiny", version=1, now=later, **keys)


def test_edge_serve_answers_from_a_delta_and_as_a_past_version(lineage, tmp_path):
    import urllib.parse

    from .serving import Device, Server

    v1, v2 = lineage["v1"], lineage["v2"]
    device = Device(tmp_path / "device", device_key=v1.device_key_path, publisher_pubs=[v1.publisher_pub_path])
    assert device.cli("settings", "--keep-versions", "2").returncode == 0
    device.install(v1.path)
    device.install(v2.path)
    history = device.cli("history", "faq", "--json")
    assert [json.loads(line)["version"] for line in history.stdout.splitlines()] == [2, 1], history.stderr

    def search(**params):
        return server.get_json("/api/search?" + urllib.parse.urlencode({"q": "E-4021 flux capacitor", "k": 3,
                                                                         "capsule": "faq", **params}))

    with Server(device) as server:
        status, now_body = search()
        assert status == 200 and NEW_FACT in now_body["hits"][0]["text"]
        status, past_body = search(version=1)
        assert status == 200 and past_body["capsules"] == {"faq": 1}
        assert all(NEW_FACT not in hit["text"] for hit in past_body["hits"])
        assert search(version=9)[0] == 404
        assert search(version="x")[0] == 400
    cli = device.cli("search", "faq", "E-4021 flux capacitor", "-k", "1", "--version", "1", "--json")
    assert cli.returncode == 0 and NEW_FACT not in json.loads(cli.stdout.splitlines()[0])["text"]


def test_compact_merges_the_segments_into_one_capsule_with_the_same_live_chunks(lineage, tmp_path):
    from .conftest import BUILD_EXPIRES_AT, BUILD_ISSUED_AT, _SESSION_EMBEDDING_CACHE
    from firmware_tools.compact import compact

    v1, v2, v3 = lineage["v1"], lineage["v2"], lineage["v3"]
    result = compact(v3.path, tmp_path / "faq-v4.capsule", signing_key=v1.publisher_key, identities=[v1.device_key],
                     segment_files=[v1.path, v2.path], recipients=[v1.device_key.public_key()],
                     expires_at=BUILD_EXPIRES_AT, issued_at=BUILD_ISSUED_AT, seed=b"test-seed", n_threads=2,
                     embedding_cache=_SESSION_EMBEDDING_CACHE[0])
    assert result.version == 4 and result.n_embedded == 0  # every chunk's vector came from the cache
    with _open(v3, [v1.path, v2.path]) as segmented, open_capsule(
            result.path, trusted_keys=[v1.publisher_key.public_key()], identities=[v1.device_key], now=NOW) as full:
        assert full.manifest.segments is None and full.n_chunks == segmented.n_live_chunks
        assert [(h.document, h.char_start, h.char_end, h.text, h.heading_path) for h in full.export(now=NOW)] == \
               [(h.document, h.char_start, h.char_end, h.text, h.heading_path) for h in segmented.export(now=NOW)]
        assert [(d.name, d.sha256, d.headings) for d in full.documents(now=NOW)] == \
               [(d.name, d.sha256, d.headings) for d in segmented.documents(now=NOW)]
        assert full.manifest.rules == segmented.manifest.rules
        for query in ("E-4021 flux capacitor", "ZX-9931", "6ES7 214-1AG40-0XB0"):
            assert full.search(query, k=1, now=NOW)[0].text == segmented.search(query, k=1, now=NOW)[0].text
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    for built in (v1.path, v2.path, v3.path, result.path):  # a device holding the deltas takes it as an update
        store.install(built, **keys)
    with store.open("faq", **keys) as capsule:
        assert capsule.manifest.version == 4 and len(capsule.parts) == 1
    assert len(os.listdir(store.path / "objects")) == 1


def test_a_delta_projects_into_its_bases_space(lineage, tmp_path):
    import numpy as np

    keys_dir = lineage["tmp"] / "keys"
    docs = tmp_path / "docs"
    shutil.copytree(FAQ_DOCS, docs)
    v1 = build_test_capsule(docs, tmp_path / "p1.capsule", keys_dir=keys_dir, name="projected", projection=True)
    (docs / ADDED).write_text(f"# Parts\n\n{PART_FACT}\n")
    base = read_base(v1.path, signing_key=v1.publisher_key, identities=[v1.device_key])
    assert base.projection is not None
    v2 = build_test_capsule(docs, tmp_path / "p2.capsule", keys_dir=keys_dir, name="projected", version=2, base=base)
    with _open(v2, [v1.path]) as capsule:
        old, new = (part.projection for part in capsule.parts)
        assert np.array_equal(old.mean, new.mean) and np.array_equal(old.axes, new.axes)
        assert capsule.manifest.index.projection is not None and capsule.manifest.n_chunks == 1
        # a projected base has binary codes (the default wherever the builder projects); the delta keeps them
        assert [part.manifest.index.format for part in capsule.parts] == ["binary-codes", "binary-codes"]
        assert PART_FACT in capsule.search("6ES7 214-1AG40-0XB0", k=1, now=NOW)[0].text
        assert PART_FACT in capsule.search("which part is the CPU module", k=1, mode="dense", now=NOW)[0].text


def test_a_passphrase_capsule_takes_deltas_and_serves_them_without_the_passphrase(tmp_path):
    from edge.keys import Passphrase

    from .conftest import TINY_DOCS

    secret = Passphrase(b"correct horse battery staple")
    docs = tmp_path / "docs"
    shutil.copytree(TINY_DOCS / "good", docs)
    v1 = build_test_capsule(docs, tmp_path / "s1.capsule", keys_dir=tmp_path / "keys", name="secret", recipients=[],
                            passphrase=secret, scrypt_log_n=10)
    (docs / "more.md").write_text("# More\n\nPump P-17 primes in 30 seconds.\n")
    base = read_base(v1.path, signing_key=v1.publisher_key, identities=[secret])
    v2 = build_test_capsule(docs, tmp_path / "s2.capsule", keys_dir=tmp_path / "keys", name="secret", version=2,
                            recipients=[], passphrase=secret, scrypt_log_n=10, base=base)
    trust = dict(trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    store.configure(keep_versions=2)
    store.install(v1.path, identities=[secret], **trust)
    store.install(v2.path, identities=[secret], **trust)
    with store.open("secret", **trust) as capsule:  # no passphrase: each segment's cached key, bound to its manifest
        assert "P-17" in capsule.search("P-17", k=1, now=NOW)[0].text
        assert len(capsule.parts) == 2
    with store.open("secret", version=1, **trust) as past:
        assert all("P-17" not in h.text for h in past.search("P-17", k=3, now=NOW))
    objects = store.path / "objects"
    keys = sorted(p for p in objects.rglob("*.key"))
    assert len(keys) == 3 and all(p.stat().st_mode & 0o777 == 0o400 for p in keys)


def test_installing_a_delta_decodes_only_its_own_frames(lineage, tmp_path, monkeypatch):
    from edge.opened import Capsule

    v1, v2 = lineage["v1"], lineage["v2"]
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    store = _store(tmp_path, "store")
    decoded: list[int] = []
    original = Capsule._frame_records

    def counting(self, frame_index, timings):
        decoded.append(self.manifest.version)
        return original(self, frame_index, timings)

    monkeypatch.setattr(Capsule, "_frame_records", counting)
    store.install(v1.path, **keys)
    assert decoded.count(1) == v1.result.n_frames  # a full install decodes every frame
    decoded.clear()
    store.install(v2.path, **keys)
    assert decoded == [2] * v2.result.n_frames  # v1's frames were decoded when v1 was installed


def test_a_bundle_brings_a_fresh_device_to_the_same_files_and_answers(lineage, tmp_path):
    import tarfile

    from firmware_tools.bundle import write_bundle

    v1, v2, v3 = lineage["v1"], lineage["v2"], lineage["v3"]
    keys = dict(identities=[v1.device_key], trusted_keys=[v1.publisher_key.public_key()], now=NOW)
    bundle = tmp_path / "faq-v3.bundle"
    assert write_bundle(v3.path, [v2.path, v1.path], bundle) == ["000-v1.capsule", "001-v2.capsule", "002-v3.capsule"]
    again = tmp_path / "again.bundle"
    write_bundle(v3.path, [v1.path, v2.path], again)
    assert again.read_bytes() == bundle.read_bytes()  # deterministic
    fresh, stepwise, halfway = _store(tmp_path, "fresh"), _store(tmp_path, "stepwise"), _store(tmp_path, "halfway")
    assert fresh.install(bundle, **keys).version == 3
    for built in (v1, v2, v3):
        stepwise.install(built.path, **keys)
    halfway.install(v1.path, **keys)
    assert halfway.install(bundle, **keys).version == 3  # v1 is held: skipped
    with fresh.open("faq", **keys) as a, stepwise.open("faq", **keys) as b, halfway.open("faq", **keys) as c:
        assert [p.manifest.raw for p in a.parts] == [p.manifest.raw for p in b.parts] == [p.manifest.raw for p in c.parts]
        assert _results(a) == _results(b) == _results(c)
    assert fresh.install(bundle, **keys).version == 3  # everything held: nothing to do
    with pytest.raises(StoreError, match="not a capsule file"):
        evil = tmp_path / "evil.bundle"
        with tarfile.open(evil, "w", format=tarfile.USTAR_FORMAT) as archive:
            info = tarfile.TarInfo("../../etc/passwd")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            archive.addfile(info)
        fresh.install(evil, **keys)
    with pytest.raises(BuildError, match="pins its segment from v2"):
        write_bundle(v3.path, [v1.path], tmp_path / "missing.bundle")
    assert not (tmp_path / "missing.bundle").exists()
