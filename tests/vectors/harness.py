"""Read a vector directory (tests/vectors/README.md) and run it through the library or the CLI.

Shared by ``tests/vectors/test_vectors.py`` (concrete vectors) and ``tests/corruption/``
(mutation families). Outcomes are ``expect`` words (FORMAT.md §11): ``"ok"`` or the ``expect``
attribute of the ``EdgeError`` raised. Anything else raised is a bug and propagates.
"""

from __future__ import annotations

import json
import os
import shutil
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edge import format as fmt
from edge.budget import MemoryBudget
from edge.capsule import OpenOptions, open_capsule, verify_capsule
from edge.errors import EdgeError
from edge.keys import Passphrase
from edge.trust import DeviceState, VersionRecord

VECTORS = Path(__file__).resolve().parent
KEYS = VECTORS / "keys"


@dataclass
class Expect:
    """The parsed EXPECT file: every key maps to its values in file order."""

    fields: dict[str, list[str]]

    @classmethod
    def read(cls, path: Path) -> "Expect":
        fields: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            key, _, value = line.partition(": ")
            fields.setdefault(key.strip(), []).append(value.strip())
        return cls(fields)

    def get(self, key: str, default: str | None = None) -> str | None:
        values = self.fields.get(key)
        return values[0] if values else default

    def all(self, key: str) -> list[str]:
        return list(self.fields.get(key, []))

    @property
    def now(self) -> datetime:
        return parse_time(self.get("now"))

    def words(self, key: str = "expect") -> set[str]:
        return set(self.get(key).split("|"))

    def open_words(self) -> set[str]:
        return set((self.get("open") or self.get("expect")).split("|"))


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def vector_dirs(*, families: bool) -> list[Path]:
    """Return vector directories: concrete ones, or mutation families (``mutate:``)."""
    out = []
    for d in sorted(VECTORS.iterdir()):
        if (d / "EXPECT").is_file():
            if (Expect.read(d / "EXPECT").get("mutate") is not None) == families:
                out.append(d)
    return out


def capsule_bytes(vector: Path) -> bytes:
    """Return the vector's capsule: its own file, or its base with patches/truncation/append applied."""
    expect = Expect.read(vector / "EXPECT")
    base = expect.get("base")
    data = bytearray((VECTORS / base / "capsule").read_bytes() if base else (vector / "capsule").read_bytes())
    for patch in expect.all("patch"):
        offset, hexdata = patch.split()
        raw = bytes.fromhex(hexdata)
        data[int(offset):int(offset) + len(raw)] = raw
    if expect.get("truncate") is not None:
        del data[int(expect.get("truncate")):]
    if expect.get("append") is not None:
        data += bytes.fromhex(expect.get("append"))
    return bytes(data)


def public_key(name: str):
    return serialization.load_pem_public_key((KEYS / f"{name}.pub").read_bytes())


def private_key(name: str):
    return serialization.load_pem_private_key((KEYS / f"{name}.key").read_bytes(), password=None)


def identities(expect: Expect) -> list:
    if expect.get("passphrase") is not None:
        return [Passphrase(expect.get("passphrase").encode())]
    return [private_key(name) for name in expect.get("identity", "").split()]


def trusted_keys(expect: Expect) -> list:
    return [public_key(name) for name in (expect.get("trusted_keys") or "").split()]


def device_state(vector: Path, expect: Expect) -> DeviceState:
    """Return the device state the vector asks for; trust documents are installed here.

    Raises:
        TrustError: a trust document is refused (the vector's outcome is then ``trust``).
    """
    device = DeviceState(hardware_id=expect.get("hardware_id"))
    if expect.get("root_keys"):
        roots = [public_key(n) for n in expect.get("root_keys").split()]
        installed = expect.get("installed_trust")
        if installed:
            device.install_trust((vector / installed).read_bytes(), root_keys=roots)
            device.install_trust((vector / "trust.json").read_bytes())
        else:
            device.install_trust((vector / "trust.json").read_bytes(), root_keys=roots)
    if expect.get("floor"):
        device.observe(parse_time(expect.get("floor")))
    if expect.get("installed"):
        capsule_id, version, sha = expect.get("installed").split()
        device._versions[capsule_id] = VersionRecord(int(version), sha)
    return device


def segment_files(vector: Path, expect: Expect) -> tuple[Path, ...]:
    """The files given as earlier segments of a delta (``segment``, relative to the vector)."""
    return tuple((vector / name).resolve() for name in expect.all("segment"))


def outcome(fn: Callable[[], object]) -> str:
    """Return ``"ok"`` if ``fn()`` returns, else the ``expect`` word of the EdgeError it raises."""
    try:
        fn()
    except EdgeError as exc:
        return exc.expect
    return "ok"


def _operation(expect: Expect) -> tuple[str, list[str]]:
    op = (expect.get("operation") or "verify").split(" ", 2)
    return op[0], op[1:]


def run_library(vector: Path, path: Path) -> tuple[str, str]:
    """Run the vector at ``path`` through ``open_capsule`` and its operation; return (open, final) words.

    The final outcome of ``verify`` is ``verify_capsule(full=True)``; of ``search``/``read``/``export``
    the last of ``repeat`` uses on one opened capsule (all earlier uses must succeed).
    """
    expect = Expect.read(vector / "EXPECT")
    now = expect.now
    if _operation(expect)[0] == "install":
        word = run_store_install(vector, path, path.parent / "store")
        return word, word
    try:
        device = device_state(vector, expect)
    except EdgeError as exc:
        return exc.expect, exc.expect
    budget = MemoryBudget(int(expect.get("budget_bytes"))) if expect.get("budget_bytes") else None
    kwargs = dict(trusted_keys=trusted_keys(expect), identities=identities(expect), now=now)
    segments = segment_files(vector, expect)
    holder: list = []

    def do_open():
        holder.append(open_capsule(path, budget=budget, options=OpenOptions(device=device, segment_files=segments),
                                   **kwargs))

    opened = outcome(do_open)
    if budget is not None:
        return opened, opened
    name, args = _operation(expect)
    if name == "verify":
        final = outcome(lambda: verify_capsule(path, full=True, options=OpenOptions(
            device=device_state(vector, expect), segment_files=segments), **kwargs))
        if holder:
            holder[0].close()
        return opened, final
    if not holder:
        return opened, opened
    capsule = holder[0]
    try:
        n = int(expect.get("repeat") or 1)
        results: list[str] = []
        found: list = []
        for _ in range(n):
            if name in ("search", "lexical"):
                results.append(outcome(lambda: found.append(capsule.search(
                    args[1], k=int(args[0]), now=now, mode="lexical" if name == "lexical" else None))))
            elif name == "read":
                results.append(outcome(lambda: capsule.read(int(args[0]), now=now)))
            elif name == "export":
                results.append(outcome(lambda: list(capsule.export(now=now))))
            else:
                raise ValueError(f"unknown operation {name!r}")
        assert results[:-1] == ["ok"] * (n - 1), results
        if results[-1] == "ok" and expect.get("first_hit") is not None:
            first = found[-1][0].chunk_id if found and len(found[-1]) else None
            if first != int(expect.get("first_hit")):
                return opened, f"wrong-hit:{first}"
        return opened, results[-1]
    finally:
        capsule.close()


def run_store_install(vector: Path, path: Path, store_dir: Path) -> str:
    """Operation ``install``: a fresh device store gets each ``store`` capsule, then ``store_quota_bytes``,
    then the vector's capsule is installed; return that install's word. A refused install must
    leave the version installed before it serving (it opens and answers a search)."""
    from edge.store import Store

    expect = Expect.read(vector / "EXPECT")
    kwargs = dict(trusted_keys=trusted_keys(expect), identities=identities(expect), now=expect.now)
    with Store(store_dir) as store:
        for name in expect.all("store"):
            store.install(vector / name, **kwargs)
        if expect.get("store_quota_bytes"):
            store.configure(quota_bytes=int(expect.get("store_quota_bytes")))
        before = {e.name: e.version for e in store.list(now=expect.now)}
        word = outcome(lambda: store.install(path, **kwargs))
        if word != "ok":
            assert {e.name: e.version for e in store.list(now=expect.now)} == before
            for name in before:
                with store.open(name, **kwargs) as capsule:
                    assert capsule.search("kiosk", k=1, now=expect.now)
    return word


def run_cli(vector: Path, path: Path, tmp: Path, monkeypatch, capsys) -> str:
    """Run the vector through ``edge`` (in-process ``main``) with a fresh store; return the final word.

    The CLI reads the real clock (it has no clock flag): vectors are built so that any time between
    2026-07 and 2088 gives the same outcome as their ``now``.
    """
    from edge.cli import main
    from edge.store import Store

    expect = Expect.read(vector / "EXPECT")
    store_dir, config = tmp / "store", tmp / "config"
    config.mkdir(exist_ok=True)
    monkeypatch.setenv("EDGE_STORE_DIR", str(store_dir))
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(config))
    if expect.get("hardware_id"):
        (config / "hardware-id").write_text(expect.get("hardware_id") + "\n")

    last_out: list[str] = []

    def call(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        last_out[:] = [out.out]
        assert "Traceback" not in out.err
        errors = [line for line in out.err.splitlines() if line.startswith("edge: error: ")]
        if code == 0:
            return 0, "ok"
        assert code == 1 and len(errors) == 1, out.err
        return code, json.loads(out.out.splitlines()[-1])["error"]

    key_args: list[str] = []
    if expect.get("root_keys"):
        roots = [str(KEYS / f"{n}.pub") for n in expect.get("root_keys").split()]
        installed = expect.get("installed_trust")
        first = vector / (installed or "trust.json")
        code, word = call("trust", "init", str(first), *sum((["--root", r] for r in roots), []), "--json")
        if code == 0 and installed:
            code, word = call("trust", "update", str(vector / "trust.json"), "--json")
        if code:
            return word
    else:
        # the device's own trust: provisioned publisher keys (ad-hoc --trust keys move no state)
        (config / "trusted").mkdir(exist_ok=True)
        for name in expect.get("trusted_keys").split():
            shutil.copyfile(KEYS / f"{name}.pub", config / "trusted" / f"{name}.pub")
    if expect.get("passphrase") is not None:
        secret = tmp / "passphrase.txt"
        secret.write_text(expect.get("passphrase") + "\n")
        os.chmod(secret, 0o600)
        key_args += ["--passphrase-file", str(secret)]
    for name in (expect.get("identity") or "").split():
        key_path = tmp / f"{name}.key"
        if not key_path.exists():
            key_path.write_bytes((KEYS / f"{name}.key").read_bytes())
            os.chmod(key_path, 0o600)
        key_args += ["--identity", str(key_path)]
    store = Store(store_dir)
    try:
        if expect.get("floor"):
            store.state.observe(parse_time(expect.get("floor")))
            store.flush_floor()
        if expect.get("installed"):
            capsule_id, version, sha = expect.get("installed").split()
            store.record_version(capsule_id, int(version), sha)
    finally:
        store.close()
    target = str(path)
    name, args = _operation(expect)
    for installed in expect.all("store"):
        code, word = call("install", str(vector / installed), *key_args, "--json")
        assert code == 0, word
    if expect.get("store_quota_bytes"):
        assert call("settings", "--quota", expect.get("store_quota_bytes"), "--json")[0] == 0
    if name == "install":
        return call("install", target, *key_args, "--json")[1]
    if name == "verify":
        argv = ["verify", target]
    elif name in ("search", "lexical"):
        argv = ["search", target, args[1], "-k", args[0]] + (["--mode", "lexical"] if name == "lexical" else [])
    elif name == "read":
        argv = ["read", target, args[0]]
    else:
        argv = ["export", target]
    if expect.get("budget_bytes"):
        argv = ["info", target, "--ram-budget", expect.get("budget_bytes")]
    for segment in segment_files(vector, expect):
        argv += ["--segment", str(segment)]
    words = [call(*argv, *key_args, "--json")[1] for _ in range(int(expect.get("repeat") or 1))]
    assert words[:-1] == ["ok"] * (len(words) - 1), words
    if words[-1] == "ok" and expect.get("first_hit") is not None:
        lines = last_out[0].splitlines()
        first = json.loads(lines[0]).get("chunk_id") if lines else None
        if first != int(expect.get("first_hit")):
            return f"wrong-hit:{first}"
    return words[-1]


# ---------------------------------------------------------------------------
# Mutation families (tests/vectors/README.md, "mutate")


def section_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    header = fmt.parse_header(data[:64], file_bytes=len(data))
    table = fmt.parse_section_table(data[64:64 + header.table_bytes], header)
    return {tag: (e.offset, e.end) for tag, e in table.items()}


def stanza_range(data: bytes) -> tuple[int, int]:
    """Return the file byte range of the manifest's ``"recipients":[...]`` value."""
    start, end = section_ranges(data)["MANI"]
    mani = data[start:end]
    i = mani.index(b'"recipients":[') + len(b'"recipients":')
    j = mani.index(b"]", i) + 1
    return start + i, start + j


def mutations(vector: Path) -> list[tuple[str, bytes, bool]]:
    """Return the family's inputs as (label, capsule bytes, needs re-signing)."""
    expect = Expect.read(vector / "EXPECT")
    data = capsule_bytes(vector)
    spec = expect.get("mutate").split()
    kind, resign = spec[0], spec[-1] == "resign"
    out: list[tuple[str, bytes, bool]] = []
    ranges = section_ranges(data)
    if kind == "truncate-at-section-boundaries":
        cuts = {64 + 32 * len(ranges)} | {s for s, _ in ranges.values()} | {e for _, e in ranges.values()}
        cuts.discard(len(data))
        for cut in sorted(cuts):
            for at in (cut, cut - 1):
                out.append((f"cut at {at}", data[:at], False))
        return out
    if kind == "flip-each-byte":
        where = spec[1]
        if where == "header-and-table":
            span, masks = (0, 64 + 32 * len(ranges)), (0x01, 0x80)
        elif where == "stanzas":
            span, masks = stanza_range(data), (0x01,)
        else:
            span, masks = ranges[where], (0x01,)
        for offset in range(*span):
            for mask in masks:
                mutated = bytearray(data)
                mutated[offset] ^= mask
                out.append((f"byte {offset} ^ {mask:#04x}", bytes(mutated), resign))
        return out
    if kind == "flip-random":
        tags, count, seed = spec[1].split(","), int(spec[2]), int(spec[3])
        rng = random.Random(seed)
        for tag in tags:
            start, end = ranges[tag]
            for _ in range(count):
                offset = rng.randrange(start, end)
                mutated = bytearray(data)
                mutated[offset] ^= 1 << rng.randrange(8)
                out.append((f"{tag} byte {offset}", bytes(mutated), resign))
        return out
    raise ValueError(f"unknown mutation {kind!r}")


def resign(data: bytes, signer: str = "test-publisher-1") -> bytes:
    """Sign ``data``'s manifest again (a compromised publisher key), after fixing its section digests.

    When a section changed, the manifest's digests are recomputed; otherwise (the manifest
    itself was mutated) its bytes are signed exactly as they are.
    """
    from edge.manifest import canonical_json, signatures_to_bytes
    from edge.sealed import sha256_hex
    from firmware_tools.cosign import assemble_capsule, read_sections
    from firmware_tools.sealing import sign_manifest

    sections = read_sections(data)
    try:
        manifest = json.loads(sections["MANI"])
        digests = {tag: {"length": len(sections[tag]), "sha256": sha256_hex(sections[tag])}
                   for tag in manifest["sections"]}
        if digests != manifest["sections"]:  # a section changed: the manifest must say so
            manifest["sections"] = digests
            sections["MANI"] = canonical_json(manifest)
    except (ValueError, KeyError, TypeError):
        pass  # the manifest itself is what was mutated: sign its bytes as they are
    sections["SIGS"] = signatures_to_bytes(sign_manifest(sections["MANI"], [private_key(signer)]))
    return assemble_capsule(sections)
