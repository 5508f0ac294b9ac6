"""``edge``: the device command line (verify, info, search, documents, read, export; the store verbs
install, sync, serve, list, remove and trust are in ``edge.cli_device``).

Each verb is a library call plus argument parsing and printing. Results go to
stdout, diagnostics to stderr as ``edge: error: <message>`` (and sometimes
``edge: hint: ...``). Exit codes: 0 success, 1 refused or failed, 2 usage.
There is no flag that skips verification or overrides the clock.

Trusted publisher keys and the device identity come from flags, or from the
device configuration directory ``$EDGE_CONFIG_DIR`` (default
``/etc/edge-capsules``): ``trusted/*.pub``, ``device.key``, ``hardware-id``. Once a trust
document is installed in the store (``edge trust install``), capsules are judged by the keys it
delegates unless ``--trust`` names keys. Every command uses the device store
(``$EDGE_STORE_DIR``, ``--store``; see ``edge.store``) for the time floor, the version records and
the rate log; a CAPSULE argument that contains ``/`` or ends in ``.capsule`` is a file, anything
else is the name of an installed capsule.

Size: ~820 lines: one argparse tree, the shared key/store/budget helpers, the human and JSON
output of the capsule verbs and the one-line error policy, which are easiest to review together;
the verbs call the library API.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from ._files import read_regular_file
from ._process import harden_process, quiet_rust_panics, single_malloc_arena
from .budget import MemoryBudget, format_mib, model_query_peak_bytes, parse_size
from .errors import EdgeError
from .retrieval import SEARCH_MODES
from .keys import KeyFileError, load_identity, load_passphrase, load_public_key
from .clock import format_time

PROG = "edge"
DEFAULT_CONFIG_DIR = "/etc/edge-capsules"
RAM_BUDGET_ENV = "EDGE_RAM_BUDGET"

_HINTS = {
    "SignatureError": "check --trust: is this capsule from a publisher this device trusts?",
    "DecryptionError": "check --identity: the capsule may be for other devices, or it was altered (edge verify)",
    "ExpiredCapsuleError": "ask the publisher for a newer version of this capsule",
    "ModelError": "install the model the capsule names (see models/*/MODEL.md) or set EDGE_MODEL_PATH",
    "IntegrityError": "the file is damaged or incomplete; copy it again",
    "CapsuleFormatError": "is this an edge capsule, and is it complete?",
    "DeltaBaseError": "install the version this update applies to first (by path: give its files with --segment), or ask the publisher for a full capsule",
    "RollbackError": "this device accepted a newer version of this capsule; ask the publisher for it",
    "TrustError": "trust documents come from the operator's root key (firmware-tools trust); see README",
    "StoreError": "see `edge list`; the store is $EDGE_STORE_DIR or --store",
    "RateLimitedError": "this capsule limits how often it may be queried; wait and try again",
    "BudgetExceededError": "raise --ram-budget, or publish the capsule with a smaller or unencrypted index",
}
#: Files the hardware id is read from, in order, when $EDGE_CONFIG_DIR/hardware-id is absent.
HARDWARE_ID_FILES = ("/sys/firmware/devicetree/base/serial-number",)
MAX_HARDWARE_ID_BYTES = 128
#: Largest query ``edge search CAPSULE -`` reads from stdin: far more than the model's
#: max_tokens (at most 512 tokens) ever uses, small enough to hold without a budget.
MAX_STDIN_QUERY_BYTES = 64 * 1024
#: Between a hit's document and its headings: "manual.md › Fault codes › E-4021".
HEADING_SEPARATOR = " \u203a "
#: Largest --threads: more than any board this runs on has cores; onnxruntime starts one thread each.
MAX_THREADS = 256


#: Characters a terminal may act on: C0 and C1 controls and DEL (escape sequences, bell,
#: carriage return), Unicode bidirectional overrides and isolates (text shown reordered), and
#: lone surrogates (argv or file names that were not UTF-8). ``_BODY`` keeps tab and newline.
_BIDI_AND_SURROGATES = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_TERMINAL_UNSAFE = re.compile(rf"[\x00-\x1f\x7f-\x9f{_BIDI_AND_SURROGATES}]")
_TERMINAL_UNSAFE_BODY = re.compile(rf"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI_AND_SURROGATES}]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _printable(value: object, *, body: bool = False) -> str:
    """Return ``str(value)`` safe to print on a terminal: each control character (C0, C1, DEL),
    bidi override and lone surrogate becomes a visible escape (``\\x1b``, ``\\u202e``).

    Names, titles and messages (``body=False``) stay on one line; chunk text (``body=True``)
    keeps its newlines and tabs. Strings inside capsules are the publisher's, signed or not:
    human output passes them through here, JSON output (``--json``) prints them exactly.
    """
    return (_TERMINAL_UNSAFE_BODY if body else _TERMINAL_UNSAFE).sub(_escape_char, str(value))


def _config_dir() -> Path:
    return Path(os.environ.get("EDGE_CONFIG_DIR", DEFAULT_CONFIG_DIR))


def _trusted_config_dir() -> Path:
    """The configuration directory, refused when another local user could change it.

    Its provisioned publisher keys, hardware id and device key decide what this device trusts
    and which ``devices`` rules it meets, so it must be as safe as the store
    (``edge._files.check_safe_directory``). A directory that does not exist holds nothing.

    Raises:
        KeyFileError: it or a directory above it is owned by another user or writable by group
            or others without the sticky bit.
    """
    from ._files import check_safe_directory

    path = _config_dir()
    if path.is_dir():
        check_safe_directory(path, what="configuration directory", error=KeyFileError)
        if (path / "trusted").is_dir():
            check_safe_directory(path / "trusted", what="trusted-keys directory", error=KeyFileError)
    return path


def _hardware_id() -> str | None:
    """Return this device's hardware id: ``$EDGE_CONFIG_DIR/hardware-id``, else the board serial."""
    for path in (_trusted_config_dir() / "hardware-id", *map(Path, HARDWARE_ID_FILES)):
        try:  # sysfs may report st_size 4096 for a short attribute: read up to that, then judge
            raw = read_regular_file(path, max_bytes=4096, what="hardware id file", error=KeyFileError)
        except KeyFileError:
            continue
        text = raw.replace(b"\x00", b"").decode("ascii", errors="replace").strip()
        if text and len(raw) <= MAX_HARDWARE_ID_BYTES:
            return text
    return None


class _NoStore:
    """Stands in for the device store where none can exist (no --store, and the default
    location cannot be created, e.g. a read-only root with no store on it): capsules open by
    path with the device state in memory for this process only; names cannot be used."""

    def __init__(self, path: Path, reason: str, hardware_id: str | None) -> None:
        from .trust import DeviceState

        self.path = path
        self.reason = reason
        self.state = DeviceState(hardware_id=hardware_id)
        print(f"{PROG}: warning: no device store ({_printable(reason)}); the trusted time floor and version records "
              "are not kept between runs", file=sys.stderr)

    def close(self) -> None:
        """Nothing to close."""

    def open_set(self, targets, *, options, inspect_only: bool = False, **kwargs):
        """``Store.open_set`` for files only, judged with this process's in-memory state."""
        from dataclasses import replace

        from .capsule_set import CapsuleSet
        from .errors import StoreError

        if any(isinstance(t, str) for t in targets):
            raise StoreError(f"no device store: {self.reason}")
        device = self.state.inspection_view() if inspect_only else self.state
        return CapsuleSet.open(targets, options=replace(options, device=device), **kwargs)

    def __getattr__(self, name: str):
        from .errors import StoreError

        def unavailable(*args, **kwargs):
            raise StoreError(f"no device store: {self.reason}")

        return unavailable


def _store(args: argparse.Namespace):
    from .errors import StoreError
    from .store import Store, default_store_dir

    if getattr(args, "_store", None) is None:
        try:
            args._store = Store(args.store, hardware_id=_hardware_id())
        except StoreError as exc:
            path = Path(args.store) if args.store else default_store_dir()
            if args.store is not None or path.exists() or args.command not in _PATH_COMMANDS:
                raise
            args._store = _NoStore(path, str(exc), _hardware_id())
    return args._store


def _trusted_keys(args: argparse.Namespace):
    from .errors import TrustError
    from .keys import keyid

    paths: list[Path] = []
    for item in args.trust or []:
        p = Path(item)
        paths.extend(sorted(p.glob("*.pub")) if p.is_dir() else [p])
    root = _store(args).state.root
    if not args.trust:
        if root is not None:
            return []  # the installed trust document delegates the keys
        paths = _provisioned_key_paths()
    if not paths:
        raise KeyFileError(f"no trusted publisher keys: install a trust document (edge trust install), pass --trust "
                           f"KEY.pub or put keys in {_config_dir() / 'trusted'}")
    keys = [load_public_key(p) for p in paths]
    revoked = sorted({keyid(k) for k in keys} & root.revoked) if root is not None else []
    if revoked:
        raise TrustError(f"--trust key {revoked[0][:16]} is revoked by this device's trust document "
                         f"(version {root.version})")
    return keys


def _provisioned_key_paths() -> list[Path]:
    return sorted((_trusted_config_dir() / "trusted").glob("*.pub"))


def _ad_hoc(args: argparse.Namespace) -> bool:
    """Whether --trust names keys other than the device's own trust (its trust document, else
    the keys provisioned in $EDGE_CONFIG_DIR/trusted): those inspect, they never move device state."""
    from .keys import keyid

    if not getattr(args, "trust", None):
        return False
    if _store(args).state.root is not None:
        return True
    provisioned = {keyid(load_public_key(p)) for p in _provisioned_key_paths()}
    return not {keyid(k) for k in _trusted_keys(args)} <= provisioned


def _device(args: argparse.Namespace):
    """The device state to verify with: the store's, or a read-only view of it for ad-hoc keys."""
    state = _store(args).state
    if not _ad_hoc(args):
        return state
    if not getattr(args, "_noted_ad_hoc", False):
        args._noted_ad_hoc = True
        print(f"{PROG}: note: verified with ad-hoc keys (--trust); device state unchanged", file=sys.stderr)
    return state.inspection_view()


def _is_path(target: str) -> bool:
    return "/" in target or target.endswith(".capsule")


def _identities(args: argparse.Namespace, required: bool = True):
    identities = [load_identity(p) for p in (getattr(args, "identity", None) or [])]
    if getattr(args, "passphrase_file", None):
        identities.append(load_passphrase(args.passphrase_file))
    if not identities:
        default = _trusted_config_dir() / "device.key"
        if default.exists():
            identities.append(load_identity(default))
    if required and not identities:
        raise KeyFileError(f"no device identity: pass --identity DEVICE.key or --passphrase-file, or create {_config_dir() / 'device.key'}")
    return identities


def _budget(args: argparse.Namespace) -> MemoryBudget | None:
    limit = getattr(args, "ram_budget", None)
    if limit is None and os.environ.get(RAM_BUDGET_ENV):
        try:
            limit = parse_size(os.environ[RAM_BUDGET_ENV])
        except ValueError as exc:
            raise SystemExit(_usage_error(f"${RAM_BUDGET_ENV}: {exc}")) from None
    return MemoryBudget(limit) if limit else None


def _open(args: argparse.Namespace):
    from .capsule import OpenOptions, open_capsule

    store = _store(args)
    options = OpenOptions(n_threads=args.threads, device=_device(args), segment_files=_segment_files(args),
                          model_weights=args.model_weights)
    if _is_path(args.capsule):
        _no_version_for_files(args)
        return open_capsule(args.capsule, trusted_keys=_trusted_keys(args), identities=_identities(args),
                            budget=_budget(args), options=options)
    entry = store.get(args.capsule)
    return store.open(args.capsule, trusted_keys=_trusted_keys(args),
                      identities=_identities(args, required=not entry.content_key),
                      budget=_budget(args), options=options, inspect_only=options.device is not store.state,
                      version=getattr(args, "version", None))


def _segment_files(args: argparse.Namespace) -> tuple[Path, ...]:
    """``--segment`` files: the earlier segments of a delta opened by path (FORMAT.md §4.7)."""
    return tuple(Path(p) for p in getattr(args, "segment", None) or ())


def _no_version_for_files(args: argparse.Namespace) -> None:
    if getattr(args, "version", None) is not None:
        raise SystemExit(_usage_error("--version reads a past version the device store keeps: give an installed "
                                      "name, not a file"))


def _capsule_path(args: argparse.Namespace) -> str:
    if _is_path(args.capsule):
        _no_version_for_files(args)
        return args.capsule
    store = _store(args)
    entry = store.get(args.capsule)
    if getattr(args, "version", None) not in (None, entry.version):
        raise SystemExit(_usage_error("--version opens a past version to read it; verify and info without a key "
                                      "check the installed one"))
    path = store.capsule_path(entry)
    args.segment = [*(getattr(args, "segment", None) or ()), *sorted((path.parent / "segments").glob("*.capsule"))]
    return str(path)


def cmd_verify(args: argparse.Namespace) -> int:
    from .capsule import OpenOptions, verify_capsule

    path = _capsule_path(args)
    report = verify_capsule(path, trusted_keys=_trusted_keys(args),
                            identities=_identities(args, required=False), full=args.full,
                            options=OpenOptions(device=_device(args), segment_files=_segment_files(args)))
    m = report.manifest
    result = {"ok": True, "name": m.name, "version": m.version, "capsule_id": m.capsule_id,
              "expires_at": format_time(m.expires_at), "full": report.full,
              "frames_checked": report.n_frames_checked, "chunks_checked": report.n_chunks_checked,
              "notes": report.notes}
    if args.json:
        print(json.dumps(result))
    else:
        detail = (f"{report.n_frames_checked} frames / {report.n_chunks_checked} chunks decrypted"
                  if report.n_frames_checked else "signature, validity and section digests")
        print(f"ok: {_printable(m.name)} v{m.version} ({m.capsule_id}), expires {result['expires_at']}; checked {detail}")
        for note in report.notes:
            print(f"note: {_printable(note)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .capsule import OpenOptions, verify_capsule
    from .manifest import lexical_summary

    identities = _identities(args, required=False)
    if args.memory and not identities:
        raise KeyFileError("--memory opens the capsule: pass --identity DEVICE.key or --passphrase-file")
    if identities:
        with _open(args) as capsule:
            if args.memory:
                _memory_probe(capsule)
            info = capsule.info()
        if args.memory and not args.json:
            _print_memory(info["memory"], weights_mapped="weights mapped" in info["embedder"]["engine"],
                          query_tokens=info["model"]["max_tokens"] if info["model"]["family"] == "onnx" else None)
            return 0
    else:
        m = verify_capsule(_capsule_path(args), trusted_keys=_trusted_keys(args), full=False,
                           options=OpenOptions(device=_device(args))).manifest
        info = {"name": m.name, "capsule_id": m.capsule_id, "version": m.version,
                "publisher": {"keyid": m.publisher_keyid, "name": m.publisher_name},
                "issued_at": format_time(m.issued_at),
                "not_before": format_time(m.not_before),
                "expires_at": format_time(m.expires_at),
                "n_chunks": m.n_chunks, "n_documents": m.n_documents, "n_frames": m.video.n_frames,
                "n_recipients": len(m.recipients),
                "model": {"name": m.model.name, "family": m.model.family, "sha256": m.model.sha256,
                          "dim": m.model.dim},
                "lexical": lexical_summary(m.lexical),
                "sections": {t: {"length": s.length, "sha256": s.sha256} for t, s in m.sections.items()},
                **_runtime_probe(m)}
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else _printable(value)}")
    return 0


MEMORY_PROBE_QUERY = "memory probe: how much does one query use?"
MEMORY_PROBE_K = 5


def _memory_probe(capsule) -> None:
    """Do one query's work on ``capsule`` so that the memory it takes can be measured: embed
    ``MEMORY_PROBE_QUERY``, rank ``MEMORY_PROBE_K`` hits, read and authenticate their frames.

    This is not a use of the capsule: nothing it reads is printed or returned, so it spends no
    ``rate_limit`` use and is not held to ``query_limits.max_k`` or ``operations`` (a public
    ``search`` did both: ``info --memory`` took a kiosk's query and failed when max_k < 5).
    """
    vector = capsule.embedder.embed([MEMORY_PROBE_QUERY])[0]
    ids, scores = capsule._rank(vector, min(MEMORY_PROBE_K, capsule.n_live_chunks), -1)  # no policy: no use
    capsule.read_hits(ids, scores)


def _print_memory(memory: dict, *, weights_mapped: bool = False, query_tokens: int | None = None) -> None:
    plan = memory["plan_bytes"]
    reserved = memory["reserved_bytes"]
    measured = memory["measured"]
    limit = memory["limit_bytes"]
    print(f"budget: {format_mib(limit) if limit else 'unlimited'}; reserved {format_mib(memory['total_reserved_bytes'])}")
    runtime = next((n for name, n in reserved.items() if name == "runtime"), 0)
    print(f"  {'runtime (interpreter, libraries)':40s} {format_mib(runtime):>10s}")
    for name, n_bytes in plan.items():
        label = "model (weights mapped, not prepacked)" if name == "model" and weights_mapped and n_bytes else name
        print(f"  {label:40s} {format_mib(n_bytes):>10s}")
        if name == "model" and n_bytes and query_tokens:  # onnxruntime's activations for the longest query
            label = f"  of which a {query_tokens}-token query"
            print(f"  {label:40s} {format_mib(model_query_peak_bytes(query_tokens)):>10s}")
    print("measured after one query (kernel counts, /proc/self/status):")
    for key, label in (("data_bytes", "private writable (VmData, RLIMIT_DATA)"), ("rss_bytes", "resident (VmRSS)"),
                       ("anon_bytes", "  anonymous (RssAnon)"), ("file_bytes", "  file-backed (RssFile)"),
                       ("shmem_bytes", "  shared memory (RssShmem)"), ("peak_rss_bytes", "peak resident (VmHWM)")):
        value = measured.get(key)
        print(f"  {label:40s} {format_mib(value) if value is not None else 'n/a':>10s}")


def _runtime_probe(manifest) -> dict[str, object]:
    """Return the embedder engine and video decoder this device would use for ``manifest``.

    Opens the decoder with the manifest's extradata (no frame is read) and imports the
    engine of the model family (no model is loaded); nothing here needs the content key.
    """
    from .embedder import engine_status
    from .frames import FrameReader

    ok, engine = engine_status(manifest.model.family)
    probe: dict[str, object] = {"embedder": {"family": manifest.model.family,
                                             "engine": engine if ok else None,
                                             **({} if ok else {"unavailable": engine})}}
    try:
        reader = FrameReader(b"", extradata=manifest.video.extradata, sample_offsets=[], sample_sizes=[],
                             codec=manifest.video.codec)
    except EdgeError as exc:
        probe["decoder"] = None
        probe["decoder_unavailable"] = str(exc)
    else:
        probe["decoder"] = reader.decoder_name
        probe["decoder_is_hardware"] = reader.is_hardware
        reader.close()
    return probe


def _query(args: argparse.Namespace) -> str:
    """Return the search query: the argument, or stdin for ``-`` (at most ``MAX_STDIN_QUERY_BYTES``).

    Raises:
        SystemExit(2): the query is empty or whitespace, not valid UTF-8, or stdin holds more
            than ``MAX_STDIN_QUERY_BYTES`` (read no further than one byte past the limit).
    """
    if args.query == "-":
        raw = sys.stdin.buffer.read(MAX_STDIN_QUERY_BYTES + 1)
        if len(raw) > MAX_STDIN_QUERY_BYTES:
            raise SystemExit(_usage_error(f"the query on stdin is over {MAX_STDIN_QUERY_BYTES} bytes"))
        try:
            query = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SystemExit(_usage_error(f"the query on stdin is not valid UTF-8 (byte {exc.start})")) from None
    else:
        query = args.query
        try:
            query.encode("utf-8")  # argv bytes that are not UTF-8 arrive as lone surrogates
        except UnicodeEncodeError:
            raise SystemExit(_usage_error("the query is not valid UTF-8")) from None
    if not query.strip():
        raise SystemExit(_usage_error("the query is empty"))
    return query


def _batch_queries() -> Iterator[tuple[int, str | None, str]]:
    """Yield ``(line number, query or None, error)`` for each non-blank line of stdin.

    A line that is not UTF-8 yields ``None`` and the reason, and reading goes on.

    Raises:
        SystemExit(2): a line is over ``MAX_STDIN_QUERY_BYTES`` (reading stops there: the rest
            of an endless line is never read).
    """
    number = 0
    while True:
        raw = sys.stdin.buffer.readline(MAX_STDIN_QUERY_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_STDIN_QUERY_BYTES and not raw.endswith(b"\n"):
            raise SystemExit(_usage_error(f"line {number} on stdin is over {MAX_STDIN_QUERY_BYTES} bytes"))
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield number, None, f"line {number} is not valid UTF-8 (byte {exc.start})"
            continue
        if text.strip():
            yield number, text, ""


def cmd_search(args: argparse.Namespace) -> int:
    from .capsule import OpenOptions
    from .errors import QueryError

    if args.query is None and not args.stdin and len(args.capsules) >= 2:
        args.query = args.capsules.pop()  # argparse gives every positional to CAPSULE...
    batch = args.stdin or args.query == "-"
    if args.stdin and args.query is not None and args.query != "-":
        return _usage_error("give a query or --stdin, not both")
    if not batch and args.query is None:
        return _usage_error("give a query (or - / --stdin to read one query per line from stdin)")
    query = None if batch else _query(args)
    store = _store(args)
    targets = [Path(t) if _is_path(t) else t for t in args.capsules]
    cached = [t for t in targets if isinstance(t, str) and store.get(t).content_key]
    identities = _identities(args, required=len(cached) < len(targets))
    device = _device(args)
    if args.version is not None:
        if len(targets) != 1 or not isinstance(targets[0], str):
            return _usage_error("--version answers as a past version of one installed capsule: give one name")
        from .capsule_set import CapsuleSet

        args.capsule = targets[0]
        past = _open(args)
        opened = CapsuleSet([past], past.budget)
    else:
        opened = store.open_set(targets, trusted_keys=_trusted_keys(args), identities=identities, budget=_budget(args),
                                options=OpenOptions(n_threads=args.threads, segment_files=_segment_files(args),
                                                    model_weights=args.model_weights),
                                inspect_only=device is not store.state, skip_invalid=len(targets) > 1)
    with opened as capsules:
        for label, exc in capsules.skipped.items():
            print(f"{PROG}: warning: {_printable(label)} left out: {_printable(exc)}", file=sys.stderr)
        k = args.k if args.k is not None else min([5] + [c.rules.max_k for c in capsules.capsules if c.rules.max_k])
        if batch:
            # One model session for every line: JSON lines out, one object per query line.
            for number, text, problem in _batch_queries():
                if text is None:
                    print(json.dumps({"line": number, "error": "query", "message": problem}), flush=True)
                    continue
                try:
                    result = capsules.search(text, k=k, mode=args.mode, documents=args.document or None)
                except QueryError as exc:
                    print(json.dumps({"line": number, "error": exc.expect, "message": str(exc)}), flush=True)
                    continue
                print(json.dumps({"line": number, **result.to_json()}), flush=True)
            return 0
        result = capsules.search(query, k=k, mode=args.mode, documents=args.document or None)
        several = len(capsules.capsules) > 1
        if args.json:
            for rank, hit in enumerate(result, 1):
                print(json.dumps({"rank": rank, "mode": result.mode, "exact_match": result.exact_match,
                                  **hit.to_json()}))
            return 0
        if result.exact_match is False:
            wanted = " ".join(result.identifiers)
            print(f"no entry for {_printable(wanted)}: no chunk holds it; the nearest passages follow")
        bold = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        for rank, hit in enumerate(result, 1):
            where = f"{_printable(hit.capsule)}: " if several else ""
            path = HEADING_SEPARATOR.join(hit.heading_path)
            section = f"{HEADING_SEPARATOR}{_printable(path)}" if hit.heading_path else ""
            found_by = "+".join(hit.matched) + (", exact" if hit.exact else "")
            print(f"[{rank}] score {hit.score:.3f}  {where}{_printable(hit.document)}{section}  "
                  f"chars {hit.char_start}-{hit.char_end}  (chunk {hit.chunk_id}; {found_by})")
            if hit.answer is not None and hit.answer != (0, len(hit.text)):
                print("    > " + _highlighted(hit.text, hit.highlights, hit.answer, bold).replace("\n", " "))
            print("    " + _highlighted(hit.text, hit.highlights, (0, len(hit.text)), bold).replace("\n", "\n    "))
    return 0


def _highlighted(text: str, spans, window: tuple[int, int], bold: bool) -> str:
    """``text[window]`` made printable, with the highlight ``spans`` in bold on a terminal."""
    start, end = window
    if not bold:
        return _printable(text[start:end], body=True)
    out, pos = [], start
    for lo, hi in spans:
        if lo < pos or hi > end:
            continue
        out.append(_printable(text[pos:lo], body=True))
        out.append("\x1b[1m" + _printable(text[lo:hi], body=True) + "\x1b[0m")
        pos = hi
    out.append(_printable(text[pos:end], body=True))
    return "".join(out)


def cmd_documents(args: argparse.Namespace) -> int:
    with _open(args) as capsule:
        for document in capsule.documents():
            if args.json:
                print(json.dumps(document.to_json()))
            else:
                print(f"{_printable(document.name)}  {document.n_chunks} chunks  {_printable(document.title)}")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    with _open(args) as capsule:
        try:
            hit = capsule.read(args.chunk_id)
        except ValueError as exc:
            print(f"{PROG}: error: {_printable(exc)}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(hit.to_json()))
        else:
            print(f"# {_printable(hit.document)} chars {hit.char_start}-{hit.char_end} (chunk {hit.chunk_id})")
            print(_printable(hit.text, body=True))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _open(args) as capsule:
        for hit in capsule.export():
            print(json.dumps(hit.to_json()))
    return 0


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {_printable(message)}", file=sys.stderr)
    return 2


#: Commands that can work on a capsule file without a device store.
_PATH_COMMANDS = frozenset({"verify", "info", "search", "read", "export", "documents"})


def build_parser() -> argparse.ArgumentParser:
    """Return the ``edge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Verify, inspect and search signed, encrypted knowledge capsules offline.",
        epilog="example: edge search manual.capsule \"how do I reset the unit?\" --trust publisher.pub --identity device.key",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", metavar="DIR", help="device store directory (default $EDGE_STORE_DIR, else "
                                                      "/var/lib/edge-capsules for root, else ~/.local/share/edge-capsules)")

    def common(p: argparse.ArgumentParser, identity: bool = True, several: bool = False,
               segments: bool = False) -> None:
        if several:
            p.add_argument("capsules", nargs="+", metavar="CAPSULE",
                           help="a .capsule file (contains / or ends in .capsule) or an installed name; several "
                                "are searched together")
        else:
            p.add_argument("capsule", help="a .capsule file (contains / or ends in .capsule) or an installed name")
        store_arg(p)
        p.add_argument("--trust", action="append", metavar="KEY.pub",
                       help="trusted publisher public key (file or folder of *.pub); repeatable; "
                            "default $EDGE_CONFIG_DIR/trusted/*.pub")
        if identity:
            p.add_argument("--identity", action="append", metavar="DEVICE.key",
                           help="device private key (X25519, mode 600); repeatable; default $EDGE_CONFIG_DIR/device.key")
            p.add_argument("--passphrase-file", metavar="FILE", help="file whose first line is the capsule passphrase")
        p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
        if segments:
            p.add_argument("--segment", action="append", metavar="FILE",
                           help="an earlier segment of a delta given by path (the version it updates); repeatable")
            p.add_argument("--version", type=_int_arg(1), default=None, metavar="N",
                           help="answer as past version N of an installed capsule would (see edge history)")

    ram_help = (f"memory budget for this process (e.g. 192MiB): capsules whose plan does not fit are refused "
                f"before anything is mapped; default ${RAM_BUDGET_ENV}, else unlimited")
    parser.add_argument("--ram-budget", type=_size_arg, metavar="SIZE", help=ram_help)

    def runtime(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ram-budget", type=_size_arg, metavar="SIZE", default=argparse.SUPPRESS, help=ram_help)
        p.add_argument("--threads", type=_int_arg(1, MAX_THREADS), default=1, metavar="N",
                       help=f"threads for query embedding, 1-{MAX_THREADS} (default 1)")
        p.add_argument("--model-weights", choices=("auto", "packed", "mapped"), default="auto",
                       help="how the ONNX model holds its weights: packed (10 MiB more memory, ~1 ms faster per "
                            "query), mapped (page cache the kernel can evict), or auto: packed unless "
                            "--ram-budget cannot hold them (default auto)")

    p = sub.add_parser("verify", help="check signature, validity, digests and (with a key) every frame",
                       description="Verify a capsule. Without --identity: signature, validity window, rules and "
                                   "every section digest. With --identity: also decode and authenticate every frame.",
                       epilog="example: edge verify manual.capsule --trust publisher.pub --identity device.key")
    common(p, segments=True)
    p.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                   help="hash the video and decode every frame (verify_capsule(full=...)); --no-full skips them "
                        "(default --full)")
    p.add_argument("--quick", dest="full", action="store_false", help="same as --no-full")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", help="print the verified manifest summary",
                       description="Print what a capsule is, after verifying its signature and validity. "
                                   "--memory opens it and prints the memory plan (what is reserved, by "
                                   "component) and the memory measured after one probe query.",
                       epilog="example: edge info manual.capsule --trust publisher.pub --identity device.key --memory")
    common(p, segments=True)
    p.add_argument("--memory", action="store_true", help="print the memory plan and measured use")
    runtime(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("search", help="answer a question from one or more capsules",
                       description="Embed the question, find the nearest chunks, read them from the video\n"
                                   "frames. With several capsules, the best k hits over all of them (one memory\n"
                                   "budget, one model session per model); one outside its validity window is left\n"
                                   "out with a warning. A query of - (or --stdin) reads one question per line from\n"
                                   "stdin and prints one JSON object per line: the model loads once.",
                       epilog="example: edge search manual.capsule \"how do I reset it?\" -k 3 --trust publisher.pub "
                              "--identity device.key\n"
                              "example: printf 'E-4021\\nE-4022\\n' | edge search manual - -k 1",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p, several=True, segments=True)
    p.add_argument("query", nargs="?", help=f"the question, in quotes; - (or --stdin) reads one question per "
                                            f"line from stdin (UTF-8, at most {MAX_STDIN_QUERY_BYTES // 1024} KiB "
                                            "a line) and prints one JSON line per question")
    p.add_argument("--stdin", action="store_true", help="read one question per line from stdin (as -)")
    p.add_argument("-k", type=_int_arg(1), default=None,
                   help="number of results (default 5, or the capsule's query limit when lower)")
    p.add_argument("--mode", choices=SEARCH_MODES, default=None,
                   help="hybrid (default when the capsule has a lexical index: embeddings and BM25 fused, "
                        "exact codes first), dense (embeddings only) or lexical (BM25 only)")
    p.add_argument("--document", action="append", metavar="GLOB",
                   help="only hits from documents whose name matches GLOB (repeatable), e.g. 'faq/*'")
    runtime(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("documents", help="list a capsule's documents: name, title, chunks",
                       description="List the documents a capsule was built from (the rules must allow read).",
                       epilog="example: edge documents manual.capsule --trust publisher.pub --identity device.key\n"
                              "example: edge search manual \"E-4021\" --document 'faults/*'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p, segments=True)
    runtime(p)
    p.set_defaults(func=cmd_documents)

    p = sub.add_parser("read", help="print one chunk by id",
                       description="Read one chunk's text from its video frame.",
                       epilog="example: edge read manual.capsule 42 --trust publisher.pub --identity device.key")
    common(p, segments=True)
    p.add_argument("chunk_id", type=int, help="chunk id (as shown by search)")
    runtime(p)
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("export", help="print every chunk as JSON lines (if the capsule's rules allow export)",
                       description="Read every chunk from its frame, in id order, one JSON object per line.",
                       epilog="example: edge export manual > manual.jsonl")
    common(p, segments=True)
    runtime(p)
    p.set_defaults(func=cmd_export)

    from .cli_device import add_device_commands

    add_device_commands(sub, common=common, store_arg=store_arg, runtime=runtime)
    return parser


def _int_arg(low: int, high: int | None = None):
    """Return an argparse type: a decimal integer in ``low..high`` (no upper bound if ``None``)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}" if high is not None
                                             else f"{value} is below {low}")
        return value

    return parse


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Exit status after the reader of stdout went away (``edge list | head -1``): 128 + SIGPIPE,
#: what a shell reports for a Unix tool that SIGPIPE killed.
EXIT_BROKEN_PIPE = 128 + 13


def _stdout_closed() -> int:
    """Stop writing quietly once stdout's reader has gone (EPIPE), as Unix tools do.

    Python ignores SIGPIPE, so the write raises ``BrokenPipeError`` instead of killing the
    process mid-way (which could cut a store update short). stdout is pointed at /dev/null so
    that the interpreter's final flush of what is still buffered cannot fail again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout has no descriptor (replaced by a caller)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    """Run the ``edge`` CLI on ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Run as the program (``argv`` is ``None``: the ``edge`` script, ``python -m edge``), it first
    turns core dumps off for the process (``edge._process.harden_process``), since the commands
    hold decrypted chunk text and the device's private key in memory. A caller that passes
    ``argv`` runs it inside its own process and decides that for itself (``harden_process()``):
    the core limit cannot be raised again once lowered. It also sets ``RUST_BACKTRACE=0``
    (``edge._process.quiet_rust_panics``: a panic's backtrace would cost memory outside the budget),
    and keeps malloc to one arena (``edge._process.single_malloc_arena``: a thread's arena would keep
    what the model's loading thread freed).
    """
    if argv is None:
        harden_process()
        single_malloc_arena()
        quiet_rust_panics()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(name)s: %(message)s")
    try:
        code = _run(args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    finally:
        store = getattr(args, "_store", None)
        if store is not None:
            store.close()


def run() -> None:
    """The ``edge`` program (the console script, ``python -m edge``): ``main()``, then exit at once.

    Once the command has returned and its output is flushed, the process ends with ``os._exit``
    instead of the interpreter's teardown, which frees module after module and object after
    object only for the kernel to drop the whole address space: 35-45 ms after an ``edge search``
    with NumPy, onnxruntime and PyAV loaded (strace: no system call in that time), a tenth of a
    cold start. Nothing is lost by it: the commands sync what they write and release the store
    before they return, logging is shut down, and stdout and stderr are flushed here. An
    exception that escapes ``main`` takes the normal way out, traceback included.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away after main's own flush
            code = code or _stdout_closed()
        except (OSError, ValueError):  # closed or replaced stream: nothing left to write
            pass
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; turn the runtime's errors into one stderr line and an exit code."""
    try:
        return args.func(args)
    except BrokenPipeError:
        raise
    except (EdgeError, KeyFileError) as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": getattr(exc, "expect", "key"), "message": str(exc)}))
        print(f"{PROG}: error: {_printable(exc)}", file=sys.stderr)
        hint = _HINTS.get(type(exc).__name__)
        if hint:
            print(f"{PROG}: hint: {hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(_printable(f"{PROG}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["main", "run", "build_parser"]
