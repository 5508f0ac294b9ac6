"""The device store: install, list, remove, open by name, rollback records, floor, purge, unsafe paths.

Uses the vector capsules (tests/vectors/README.md): ``older-version`` is alpha v1, ``ok`` alpha v2.
Crash and disk-full behaviour of a real install process is in ``tests/test_store_crash.py``.
"""

from __future__ import annotations

import logging
import os
import stat
from datetime import datetime, timezone

import pytest

from edge.errors import ExpiredCapsuleError, IntegrityError, RateLimitedError, RollbackError, RuleViolationError, StoreError
from edge.keys import Passphrase
from edge.store import Store, default_store_dir
from edge.capsule import OpenOptions

from ...vectors.harness import VECTORS, private_key, public_key

UTC = timezone.utc
NOW = datetime(2026, 3, 1, tzinfo=UTC)
LATER = datetime(2030, 1, 1, tzinfo=UTC)
V1, V2 = VECTORS / "older-version" / "capsule", VECTORS / "ok" / "capsule"
KEYS = dict(identities=[private_key("test-device")], trusted_keys=[public_key("test-publisher-1")])
QUERY = "How do I reset the kiosk?"


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as opened:
        yield opened


def test_install_makes_the_capsule_searchable_by_name(store):
    entry = store.install(V2, now=NOW, **KEYS)
    assert (entry.name, entry.version) == ("alpha", 2)
    assert [e.name for e in store.list(now=NOW)] == ["alpha"]
    path = store.capsule_path(entry)
    assert path.read_bytes() == V2.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    with store.open("alpha", now=NOW, **KEYS) as capsule:
        assert "power button" in " ".join(h.text for h in capsule.search(QUERY, k=2, now=NOW))


def test_open_of_a_name_not_installed_is_a_store_error(store):
    with pytest.raises(StoreError, match="no capsule named 'nope' is installed"):
        store.open("nope", **KEYS)


def test_newer_version_replaces_the_older_one_and_its_file(store):
    first = store.install(V1, now=NOW, **KEYS)
    second = store.install(V2, now=NOW, **KEYS)
    assert [(e.name, e.version) for e in store.list(now=NOW)] == [("alpha", 2)]
    assert not store.capsule_path(first).exists() and store.capsule_path(second).exists()


def test_install_refuses_an_older_version(store):
    store.install(V2, now=NOW, **KEYS)
    with pytest.raises(RollbackError, match="version 1 is older than version 2 accepted on this device") as info:
        store.install(V1, now=NOW, **KEYS)
    assert (info.value.version, info.value.accepted_version) == (1, 2)
    assert [e.version for e in store.list(now=NOW)] == [2]


def test_rollback_record_survives_remove_and_restart(tmp_path):
    with Store(tmp_path / "s") as store:
        store.install(V2, now=NOW, **KEYS)
        store.remove("alpha")
        assert store.list(now=NOW) == []
        with pytest.raises(RollbackError):
            store.install(V1, now=NOW, **KEYS)
    with Store(tmp_path / "s") as restarted:  # a new process reads the record from disk
        with pytest.raises(RollbackError):
            restarted.install(V1, now=NOW, **KEYS)
        from edge.capsule import open_capsule

        with pytest.raises(RollbackError):  # opening the old file by path is refused too
            open_capsule(V1, now=NOW, options=OpenOptions(device=restarted.state), **KEYS)


def test_same_version_with_another_manifest_is_refused(store):
    store.install(V2, now=NOW, **KEYS)
    other = VECTORS / "rule-unknown-optional" / "capsule"  # alpha v2, different rules, validly signed
    with pytest.raises(RollbackError, match="differs from the version 2 accepted"):
        store.install(other, now=NOW, **KEYS)


def test_reinstalling_the_same_file_is_harmless(store):
    a = store.install(V2, now=NOW, **KEYS)
    b = store.install(V2, now=NOW, **KEYS)
    assert a.object_name == b.object_name and store.capsule_path(b).exists()


def test_floor_is_persisted_and_a_clock_set_back_is_judged_at_the_floor(tmp_path):
    with Store(tmp_path / "s") as store:
        store.install(V2, now=NOW, **KEYS)
        store.state.observe(datetime(2095, 1, 1, tzinfo=UTC))  # the clock once read 2095
        store.flush_floor()
    with Store(tmp_path / "s") as restarted:
        assert restarted.state.floor_at == datetime(2095, 1, 1, tzinfo=UTC)
        assert restarted.list(now=NOW)[0].status(restarted.state.trusted_time(NOW)) == "expired"
        with pytest.raises(ExpiredCapsuleError, match="trusted time floor 2095-01-01T00:00:00Z"):
            restarted.open("alpha", now=NOW, **KEYS)


def test_verified_issued_at_raises_the_floor(store):
    store.install(V2, now=datetime(1970, 1, 1, tzinfo=UTC), **KEYS)  # a Pi without RTC boots at 1970
    assert store.state.floor_at == datetime(2026, 1, 1, tzinfo=UTC)  # the capsule's issued_at


def test_expired_capsule_with_purge_rule_is_deleted_with_its_key_material(store, caplog):
    vector = VECTORS / "rule-purge-on-expiry" / "capsule"  # expires 2026-06-01
    entry = store.install(vector, now=NOW, **KEYS)
    obj = store.path / "objects" / entry.object_name
    assert obj.is_dir()
    with caplog.at_level(logging.WARNING, logger="edge.store"):
        assert store.list(now=LATER) == []
    assert not obj.exists()
    assert "purged expired capsule alpha v2" in caplog.text and "expired at 2026-06-01T00:00:00Z" in caplog.text
    assert store.state.version_record(entry.capsule_id).version == 2  # the record stays


def test_opening_an_expired_purge_capsule_purges_it_and_refuses(store):
    store.install(VECTORS / "rule-purge-on-expiry" / "capsule", now=NOW, **KEYS)
    with pytest.raises(ExpiredCapsuleError, match="purged from the store"):
        store.open("alpha", now=LATER, **KEYS)
    with pytest.raises(StoreError):
        store.get("alpha")


def test_a_capsule_that_expires_while_open_is_purged_at_its_next_use(store):
    store.install(VECTORS / "rule-purge-on-expiry" / "capsule", now=NOW, **KEYS)
    with store.open("alpha", now=NOW, **KEYS) as capsule:
        assert capsule.search(QUERY, k=1, now=NOW)
        with pytest.raises(ExpiredCapsuleError):
            capsule.search(QUERY, k=1, now=LATER)
    assert store.list(now=LATER) == []


def test_expired_capsule_without_purge_rule_stays_listed_and_refuses_use(store):
    store.install(VECTORS / "expired" / "capsule", now=NOW, **KEYS)
    entry = store.list(now=LATER)[0]
    assert entry.status(store.state.trusted_time(LATER)) == "expired"
    with pytest.raises(ExpiredCapsuleError):
        store.open("alpha", now=LATER, **KEYS)


def test_passphrase_install_caches_the_content_key_and_remove_deletes_it(store):
    vector = VECTORS / "passphrase" / "capsule"
    secret = Passphrase(b"correct horse battery staple (test only)")
    entry = store.install(vector, identities=[secret], trusted_keys=KEYS["trusted_keys"], now=NOW)
    key = store.path / "objects" / entry.object_name / "content.key"
    assert entry.content_key and stat.S_IMODE(key.stat().st_mode) == 0o400 and len(key.read_bytes()) == 32
    with store.open("alpha", trusted_keys=KEYS["trusted_keys"], now=NOW) as capsule:  # no passphrase needed
        assert capsule.read(0, now=NOW).text
    store.remove("alpha")
    assert not key.exists()


def test_device_key_install_caches_no_key(store):
    entry = store.install(VECTORS / "ok" / "capsule", now=NOW, **KEYS)
    assert not entry.content_key
    assert not (store.path / "objects" / entry.object_name / "content.key").exists()


def test_rate_limit_holds_across_store_instances(tmp_path):
    vector = VECTORS / "rule-rate-limit" / "capsule"  # 2 queries per hour
    with Store(tmp_path / "s") as store:
        store.install(vector, now=NOW, **KEYS)
        with store.open("alpha", now=NOW, **KEYS) as capsule:
            capsule.search(QUERY, k=1, now=NOW)
    with Store(tmp_path / "s") as other_process:
        with other_process.open("alpha", now=NOW, **KEYS) as capsule:
            capsule.search(QUERY, k=1, now=NOW)
            with pytest.raises(RateLimitedError, match="limit 2 per 3600 s") as info:
                capsule.search(QUERY, k=1, now=NOW)
            assert info.value.retry_after_s == 3600
            assert capsule.search(QUERY, k=1, now=datetime(2026, 3, 1, 1, 0, 1, tzinfo=UTC))


def test_a_failed_install_leaves_nothing_behind(store):
    with pytest.raises(Exception):
        store.install(VECTORS / "flip-video" / "EXPECT", now=NOW, **KEYS)
    assert list((store.path / "tmp").iterdir()) == [] and list((store.path / "objects").iterdir()) == []


@pytest.mark.parametrize("source", ["fifo", "/dev/zero"])
def test_install_refuses_anything_but_a_regular_file(store, tmp_path, source):
    if source == "fifo":
        source = tmp_path / "pipe"
        os.mkfifo(source)
    with pytest.raises(StoreError, match="not a regular file"):  # and does not hang or read forever
        store.install(source, now=NOW, **KEYS)


def test_symlink_planted_where_the_object_goes_is_removed_not_followed(store, tmp_path):
    import hashlib

    victim = tmp_path / "victim"
    victim.mkdir()
    object_name = "a1" * 16 + "-v2-" + hashlib.sha256(V2.read_bytes()).hexdigest()[:12]
    os.symlink(victim, store.path / "objects" / object_name)
    entry = store.install(V2, now=NOW, **KEYS)
    assert list(victim.iterdir()) == []
    assert not (store.path / "objects" / entry.object_name).is_symlink()
    assert (store.path / "objects" / entry.object_name / "capsule").is_file()


def test_an_installed_object_replaced_by_a_symlink_is_refused(store, tmp_path):
    entry = store.install(V2, now=NOW, **KEYS)
    obj = store.path / "objects" / entry.object_name
    elsewhere = tmp_path / "elsewhere"
    os.rename(obj, elsewhere)
    os.symlink(elsewhere, obj)
    with pytest.raises(StoreError, match="symbolic link"):
        store.open("alpha", now=NOW, **KEYS)
    store.remove("alpha")  # removes the link itself, never what it points to
    assert (elsewhere / "capsule").is_file() and not obj.exists()


def test_store_refuses_symlinked_state_files_and_directories(tmp_path):
    for name in ("catalog.json", "tmp"):
        root = tmp_path / name.replace(".", "-")
        Store(root).close()
        target = tmp_path / f"elsewhere-{name}"
        os.rename(root / name, target)
        os.symlink(target, root / name)
        with pytest.raises(StoreError, match="symbolic link"):
            Store(root)


def test_a_non_store_directory_is_never_taken_over(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an edge store"):
        Store(tmp_path / "home")


def test_leftovers_of_a_killed_install_are_removed_by_the_next_writer(store):
    (store.path / "tmp" / "install-1-dead").mkdir()
    (store.path / "tmp" / "install-1-dead" / "capsule").write_bytes(b"half")
    (store.path / "objects" / ("ff" * 16 + "-v9-000000000000")).mkdir()
    store.install(V2, now=NOW, **KEYS)
    assert list((store.path / "tmp").iterdir()) == []
    assert [p.name for p in (store.path / "objects").iterdir()] == [store.get("alpha").object_name]


def test_trust_document_install_and_update_are_persisted(tmp_path):
    from edge.errors import TrustError

    with Store(tmp_path / "s") as store:
        doc = (VECTORS / "trust-rotated-key" / "installed-trust.json").read_bytes()
        store.install_trust(doc, root_keys=[public_key("test-root-1")], now=NOW)
        store.install_trust((VECTORS / "trust-rotated-key" / "trust.json").read_bytes(), now=NOW)
    with Store(tmp_path / "s") as restarted:
        assert restarted.state.root.version == 2
        with pytest.raises(TrustError, match="older than the installed version 2"):
            restarted.install_trust(doc, now=NOW)
        entry = restarted.install(VECTORS / "trust-rotated-key" / "capsule", identities=KEYS["identities"], now=NOW)
        assert entry.version == 2


def test_record_version_only_raises(store):
    store.record_version("a1" * 16, 3, "00" * 32)
    with pytest.raises(StoreError, match="higher than 2"):
        store.record_version("a1" * 16, 2, "00" * 32)
    with pytest.raises(RollbackError):
        store.install(V2, now=NOW, **KEYS)


def test_default_store_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_STORE_DIR", str(tmp_path / "x"))
    assert default_store_dir() == tmp_path / "x"
    monkeypatch.delenv("EDGE_STORE_DIR")
    expected = "/var/lib/edge-capsules" if os.geteuid() == 0 else None
    if expected:
        assert str(default_store_dir()) == expected
    else:
        assert default_store_dir().name == "edge-capsules"


def test_capsule_set_search_counts_as_a_search_of_every_capsule(store):
    from edge.capsule_set import CapsuleSet
    from edge.errors import RuleViolationError

    paths = [VECTORS / "rule-max-k-exceeded" / "capsule"]  # query_limits.max_k 2
    with CapsuleSet.open(paths, now=NOW, options=OpenOptions(device=store.state), **KEYS) as capsules:
        assert len(capsules.search(QUERY, k=2)) == 2
        with pytest.raises(RuleViolationError, match="asks for 3 results"):
            capsules.search(QUERY, k=3)
        capsule = capsules.capsules[0]
        ids, scores = capsule.rank(capsule.embedder.embed([QUERY])[0], 1)
        with pytest.raises(ValueError, match="not returned by the last rank"):
            capsule.read_hits([i for i in range(capsule.manifest.n_chunks) if i not in ids][:1], [0.0])
        assert capsule.read_hits(ids, scores)[0].text


def test_open_set_opens_installed_names_and_files_together(store, tiny_capsule):
    store.install(VECTORS / "passphrase" / "capsule", identities=[Passphrase(b"correct horse battery staple (test only)")],
                  trusted_keys=KEYS["trusted_keys"], now=NOW)
    # an installed name (its cached content key opens it) beside a file opened by path
    at = datetime(2027, 1, 1, tzinfo=UTC)
    with store.open_set(["alpha", tiny_capsule.path], now=at, identities=[tiny_capsule.device_key],
                        trusted_keys=[*KEYS["trusted_keys"], tiny_capsule.publisher_key.public_key()]) as capsules:
        assert [c.manifest.name for c in capsules.capsules] [0] == "alpha"
        assert [c._cf.is_mapped for c in capsules.capsules] == [True, False]  # store object mapped, file read
        assert "power button" in capsules.search(QUERY, k=1)[0].text


def test_read_only_store_refuses_a_rate_limited_capsule_instead_of_counting_per_process(tmp_path):
    """A per-process count on a read-only store would let a kiosk (one process per query) query
    without limit: fail closed. (Detection of a real read-only mount: tests/test_memory.py.)"""
    vector = VECTORS / "rule-rate-limit" / "capsule"
    with Store(tmp_path / "s") as store:
        store.install(vector, now=NOW, **KEYS)
    with Store(tmp_path / "s") as store:
        store.read_only = True  # what Store() sets on a read-only mount
        with store.open("alpha", now=NOW, **KEYS) as capsule:
            with pytest.raises(RuleViolationError, match="rate_limit rule .* cannot be enforced.* read-only"):
                capsule.search(QUERY, k=1, now=NOW)
        with pytest.raises(StoreError, match="read-only file system"):
            store.remove("alpha")


def _replace_object_file(store, entry, name: str, data: bytes) -> None:
    path = store.capsule_path(entry).with_name(name)
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(data)


def test_a_validly_signed_file_swapped_into_an_object_is_refused_and_moves_no_state(store, tiny_capsule, faq_capsule):
    # two real capsules, two capsule ids, one trusted publisher: the swapped-in file verifies
    keys = dict(identities=[tiny_capsule.device_key], trusted_keys=[tiny_capsule.publisher_key.public_key()])
    at = datetime(2026, 6, 1, tzinfo=UTC)
    entry = store.install(tiny_capsule.path, now=at, **keys)
    versions_before = store._read_catalog().versions
    floor_before = store.state.trusted_time(at)
    _replace_object_file(store, entry, "capsule", faq_capsule.path.read_bytes())
    with pytest.raises(IntegrityError, match="holds another manifest than the one installed under its name"):
        store.open(entry.name, now=at, **keys)
    assert store._read_catalog().versions == versions_before
    assert store.state.trusted_time(at) == floor_before


def test_an_index_file_planted_beside_an_encrypted_index_is_refused(store):
    entry = store.install(V2, now=NOW, **KEYS)
    assert not store.capsule_path(entry).with_name("index.annoy").exists()
    _replace_object_file(store, entry, "index.annoy", b"\0" * 4096)
    with pytest.raises(IntegrityError, match="index is encrypted"):
        store.open("alpha", now=NOW, **KEYS)


def test_installed_object_options_are_only_for_installed_objects(store, tmp_path):
    store.install(V2, now=NOW, **KEYS)
    with pytest.raises(StoreError, match="is not the capsule of any installed entry"):
        store._installed_object(tmp_path / "elsewhere" / "capsule")


def test_a_store_directory_other_users_can_write_is_refused(tmp_path):
    path = tmp_path / "store"
    Store(path).close()
    path.chmod(0o777)
    with pytest.raises(StoreError, match=r"store directory .* is not safe: .* has mode 777, writable by group or "
                                         r"others; run chmod go-w"):
        Store(path)
    path.chmod(0o755)
    Store(path).close()


def test_a_store_below_a_directory_other_users_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)  # another user in the group could rename the store away and plant its own
    with pytest.raises(StoreError, match=f"{shared} has mode 775"):
        Store(shared / "store")
    shared.chmod(0o1777)  # sticky, as /tmp: others cannot rename what they do not own
    Store(shared / "store").close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_store_directory_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "store"
    Store(path).close()
    os.chown(path, 4242, 4242)
    with pytest.raises(StoreError, match="is owned by uid 4242, not by root or this user"):
        Store(path)


def _documents(capsule):
    return [(d.name, d.n_bytes, d.media_type, d.n_chunks, d.first_chunk_id, d.headings, d.sha256)
            for d in capsule.documents()]


def test_install_keeps_the_parsed_document_list_and_an_open_reads_it_instead_of_docs(store, monkeypatch):
    import edge.capsule

    entry = store.install(V2, now=NOW, **KEYS)
    table = store.capsule_path(entry).with_name("documents.table")
    assert table.is_file() and stat.S_IMODE(table.stat().st_mode) == 0o444
    from edge.capsule import open_capsule

    with open_capsule(V2, now=NOW, **KEYS) as by_path:
        parsed = _documents(by_path)

    def no_docs_parse(*args, **kwargs):
        raise AssertionError("DOCS parsed although the store keeps its table")

    monkeypatch.setattr(edge.capsule, "_read_documents", no_docs_parse)
    with store.open("alpha", now=NOW, **KEYS) as capsule:
        assert _documents(capsule) == parsed
        assert capsule.memory_plan["documents"] == capsule._documents.held_bytes()
        assert {h.document for h in capsule.search(QUERY, k=2, now=NOW)} <= {d[0] for d in parsed}


def test_an_object_without_a_document_table_parses_docs_as_before(store):
    entry = store.install(V2, now=NOW, **KEYS)
    table = store.capsule_path(entry).with_name("documents.table")
    table.chmod(0o644)
    table.unlink()  # an object installed before 2026-12-08
    with store.open("alpha", now=NOW, **KEYS) as capsule:
        assert "power button" in " ".join(h.text for h in capsule.search(QUERY, k=2, now=NOW))


@pytest.mark.parametrize("edit", ["flip a column byte", "flip the tag", "truncate", "append", "another version's",
                                  "too large"])
def test_a_changed_document_table_is_refused_at_open(store, tmp_path, edit):
    entry = store.install(V2, now=NOW, **KEYS)
    table = store.capsule_path(entry).with_name("documents.table")
    data = bytearray(table.read_bytes())
    if edit == "flip a column byte":
        data[100] ^= 1
    elif edit == "flip the tag":
        data[-1] ^= 1
    elif edit == "truncate":
        data = data[:-40]
    elif edit == "append":
        data += b"\0"
    elif edit == "another version's":  # alpha v1's genuine table: same capsule id and key, another manifest
        with Store(tmp_path / "other") as other:
            data = bytearray(other.capsule_path(other.install(V1, now=NOW, **KEYS)).with_name("documents.table")
                             .read_bytes())
    else:  # past what a table of 2 documents can take (3x the largest DOCS they allow, plus 2 MiB)
        data += b"\0" * (4 << 20)
    _replace_object_file(store, entry, "documents.table", bytes(data))
    message = "more than the" if edit == "too large" else "fails its authentication tag"
    with pytest.raises(IntegrityError, match=message):
        store.open("alpha", now=NOW, **KEYS)
