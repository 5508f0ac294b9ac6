"""``edge install | sync | serve | list | remove | trust``: the verbs that change or serve the
device store. Split from ``edge.cli`` (which builds the parser, runs a verb and owns the error
policy and the shared helpers) to keep each file reviewable; the verbs call the library API.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .budget import format_mib
from .clock import format_time, utc_now
from ._files import read_regular_file
from .errors import EdgeError
from .keys import KeyFileError, load_public_key
from .cli import (
    PROG, _config_dir, _identities, _int_arg, _size_arg, _printable, _provisioned_key_paths, _ad_hoc, _budget, _store,
    _trusted_keys, _usage_error,
)

__all__ = ["add_device_commands"]

#: ``edge serve``'s decrypted-frame cache per capsule: a long-running service sees the same
#: questions again (a kiosk's popular ones), and a cached frame costs no decode (measured over
#: HTTP on the errcodes test capsule: 6.7 ms for a first query, 2.7 ms for its repeat).
SERVE_FRAME_CACHE_BYTES = 8 * 1024 * 1024


def cmd_install(args: argparse.Namespace) -> int:
    from .errors import TrustError

    store = _store(args)
    if store.state.root is None and _ad_hoc(args) and _provisioned_key_paths():
        raise TrustError(f"this device trusts the publisher keys in {_config_dir() / 'trusted'}: capsules are "
                         "installed only under those, not ad-hoc keys (--trust)")
    from .store_sync import find_capsule_files

    files: list[Path] = []
    for item in args.capsules:
        if Path(item).is_dir():
            found, left_out = find_capsule_files(item)
            if left_out:
                print(f"{PROG}: warning: {_printable(item)}: {left_out} more capsule files not installed", file=sys.stderr)
            if not found:
                print(f"{PROG}: warning: no .capsule files in {_printable(item)}", file=sys.stderr)
            files += found
        else:
            files.append(Path(item))
    identities, keys = _identities(args), _trusted_keys(args)
    failures = 0
    for path in files:
        try:
            entry = store.install(path, identities=identities, trusted_keys=keys)
        except EdgeError as exc:
            if len(files) == 1:
                raise
            failures += 1
            if args.json:
                print(json.dumps({"path": str(path), "error": exc.expect, "message": str(exc)}))
            print(f"{PROG}: error: {_printable(path)}: {_printable(exc)}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"installed": entry.name, "path": str(path), **entry.to_json()}))
        else:
            print(f"installed {_printable(entry.name)} v{entry.version} ({entry.capsule_id}), expires "
                  f"{format_time(entry.expires_at)}, {entry.file_bytes} bytes"
                  + ("; content key cached" if entry.content_key else ""))
    return 1 if failures else 0


def cmd_sync(args: argparse.Namespace) -> int:
    store = _store(args)
    identities = _identities(args, required=False)
    keys = _trusted_keys(args)

    def report(outcome) -> None:
        if args.json:
            print(json.dumps(outcome.to_json()), flush=True)
            return
        where = _printable(outcome.path)
        what = f"{_printable(outcome.name)} v{outcome.version}" if outcome.name else ""
        line = f"{outcome.outcome:<13} {where}" + (f"  {what}" if what and outcome.outcome != "installed" else "")
        if outcome.outcome != "up-to-date":
            line += f"  ({_printable(outcome.message)})" if outcome.outcome != "installed" else f"  {_printable(outcome.message)}"
        print(line, flush=True)

    outcomes = store.sync(args.directory, identities=identities, trusted_keys=keys, progress=report)
    if not outcomes and not args.json:
        print(f"no .capsule files in {_printable(args.directory)}")
    failed = [o for o in outcomes if o.failed]
    if not args.json and outcomes:
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        print("sync: " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())), file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .capsule import OpenOptions
    from .errors import StoreError
    from .server import ServeConfig, parse_listen

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        print(f"{PROG}: error: edge serve needs the 'serve' extra ({exc.name} is missing): "
              "pip install 'edge-capsules[serve]'", file=sys.stderr)
        return 1
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        return _usage_error(str(exc))
    from .server import serve
    from .service import CapsuleService

    store = _store(args)
    if not hasattr(store, "catalog_stamp"):
        raise StoreError(f"edge serve needs a device store: {store.reason}")
    budget = _budget(args)
    service = CapsuleService(store, identities=_identities(args, required=False), trusted_keys=_trusted_keys(args),
                             budget=budget, options=OpenOptions(n_threads=args.threads,
                                                                frame_cache_bytes=args.frame_cache,
                                                                model_weights=args.model_weights))
    config = ServeConfig(host=host, port=port, queue_depth=args.queue_depth, max_connections=args.max_connections,
                         header_timeout_s=float(args.header_timeout), log_queries=args.log_queries,
                         idle_reset_s=args.idle_reset, keyboard=args.keyboard,
                         title=args.title)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    query_logger = logging.getLogger("edge.serve.query")
    query_logger.addHandler(handler)
    query_logger.setLevel(logging.INFO)
    query_logger.propagate = False
    for name in ("edge.serve", "edge.service"):
        logging.getLogger(name).setLevel(logging.INFO)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"{PROG}: note: listening on {host}, not loopback: the API is read-only (nothing installs over HTTP)",
              file=sys.stderr)

    def ready(url: str) -> None:
        print(f"{PROG}: serving {store.path} at {url} (queue depth {config.queue_depth}"
              + (f", budget {format_mib(budget.limit_bytes)}" if budget is not None and budget.limit_bytes else "")
              + ")", file=sys.stderr, flush=True)

    try:
        serve(service, config, on_ready=ready)
    except OSError as exc:
        print(f"{PROG}: error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        service.close()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    entries = store.list()
    at = store.state.trusted_time(utc_now())
    if args.json:
        for entry in entries:
            print(json.dumps({"name": entry.name, "status": entry.status(at), **entry.to_json()}))
        return 0
    if not entries:
        print(f"no capsules installed in {_printable(store.path)}")
    for entry in entries:
        print(f"{_printable(entry.name)}  v{entry.version}  {entry.status(at)}  expires {format_time(entry.expires_at)}  "
              f"{entry.capsule_id}  {entry.file_bytes} bytes")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    store = _store(args)
    at = store.state.trusted_time(utc_now())
    for n, entry in enumerate(store.history(args.name)):
        if args.json:
            print(json.dumps({"name": entry.name, "installed": n == 0, "status": entry.status(at), **entry.to_json()}))
        else:
            print(f"{_printable(entry.name)}  v{entry.version}  {'installed' if n == 0 else 'kept'}  {entry.status(at)}  "
                  f"installed {format_time(entry.installed_at)}  expires {format_time(entry.expires_at)}  "
                  f"{entry.file_bytes} bytes")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.keep_versions is not None or args.quota is not None or args.no_quota:
        quota = None if args.no_quota else (args.quota if args.quota is not None else False)
        settings = store.configure(keep_versions=args.keep_versions, quota_bytes=quota)
    else:
        settings = store.settings
    used = store.used_bytes()
    if args.json:
        print(json.dumps({"keep_versions": settings.keep_versions, "quota_bytes": settings.quota_bytes,
                          "used_bytes": used}))
    else:
        quota = "none" if settings.quota_bytes is None else f"{settings.quota_bytes} bytes"
        print(f"keep versions: {settings.keep_versions}  quota: {quota}  used: {used} bytes")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    entry = _store(args).remove(args.name)
    if args.json:
        print(json.dumps({"removed": entry.name, **entry.to_json()}))
    else:
        print(f"removed {_printable(entry.name)} v{entry.version}; versions below {entry.version} stay refused on this device")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from .errors import TrustError
    from .trust import MAX_TRUST_BYTES

    store = _store(args)
    if args.action == "install":  # the API verb (Store.install_trust): first install with --root, else update
        args.action = "init" if args.root else "update"
    if args.action in ("init", "update"):
        if not args.file:
            raise SystemExit(_usage_error(f"edge trust {args.action} needs a trust document file"))
        if args.action == "init" and not args.root:
            raise SystemExit(_usage_error("edge trust init needs --root ROOT.pub (the provisioned root key)"))
        if args.action == "update" and store.state.root is None:
            raise SystemExit(_usage_error("no trust document is installed yet: the first install needs --root ROOT.pub"))
        if args.action == "update" and args.root:
            raise SystemExit(_usage_error("edge trust update takes no --root: the installed root signs updates"))
        if args.action == "init" and store.state.root is not None:
            raise SystemExit(_usage_error("a trust document is installed already; install an update without --root"))
        data = read_regular_file(args.file, max_bytes=MAX_TRUST_BYTES, what="trust document", error=TrustError)
        root = store.install_trust(data, root_keys=[load_public_key(p) for p in args.root or []])
    else:
        root = store.state.root
        if root is None:
            raise KeyFileError(f"no trust document is installed in {store.path}; see edge trust install")
    at = store.state.trusted_time(utc_now())
    info = {**root.to_json(), "floor": format_time(store.state.floor_at) if store.state.floor_at else None,
            "trusted_time": format_time(at)}
    if args.json:
        print(json.dumps(info))
    else:
        verb = {"init": "installed", "update": "installed"}.get(args.action, "installed")
        print(f"{verb} trust document version {root.version}, issued {format_time(root.issued_at)}; "
              f"root {root.root_threshold}-of-{len(root.root_keys)}, capsules need {root.threshold} signature(s)")
        for d in root.publishers.values():
            state = "valid" if at < d.expires_at else "expired"
            print(f"publisher {d.keyid}  {_printable(d.name or '-')}  until {format_time(d.expires_at)}  {state}")
        for kid in sorted(root.revoked):
            print(f"revoked   {kid}")
        print(f"trusted time {info['trusted_time']} (floor {info['floor']})")
    return 0



def add_device_commands(sub, *, common, store_arg, runtime) -> None:
    """Add the store verbs to the ``edge`` sub-command parser ``sub`` (``edge.cli.build_parser``)."""

    def key_args(p: argparse.ArgumentParser, trust_default: str) -> None:
        """--trust, --identity and --passphrase-file for verbs that take no CAPSULE argument."""
        p.add_argument("--trust", action="append", metavar="KEY.pub",
                       help=f"trusted publisher public key (file or folder of *.pub); {trust_default}")
        p.add_argument("--identity", action="append", metavar="DEVICE.key",
                       help="device private key; default $EDGE_CONFIG_DIR/device.key")
        p.add_argument("--passphrase-file", metavar="FILE", help="file whose first line is the capsule passphrase")
    p = sub.add_parser("install", help="verify capsules fully and install them into the device store",
                       description="Copy each capsule into the store, verify the copy fully (signature, validity, "
                                   "rules, version record, every section digest, every frame) and make it visible "
                                   "atomically. Refuses a version older than one this device accepted. A folder "
                                   "installs every *.capsule in it; one failure does not stop the others (exit 1).",
                       epilog="example: edge install /media/usb/manual.capsule --identity device.key\n"
                              "example: edge install a.capsule b.capsule /media/usb/updates",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p, several=True)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("sync", help="install every capsule on a stick that is newer than the installed one",
                       description="Look at every *.capsule under DIR (a mounted USB stick): install the ones newer "
                                   "than what is installed, and report per file the ones that are up to date, "
                                   "older, foreign (another publisher), expired or damaged. Exits 1 only when a "
                                   "capsule that should have been installed could not be.",
                       epilog="example: edge sync /media/usb\nexample: edge sync /run/edge-usb/sda1 --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="the folder to look in (searched 3 levels deep)")
    store_arg(p)
    key_args(p, "default $EDGE_CONFIG_DIR/trusted/*.pub")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("serve", help="serve the installed capsules over HTTP: JSON API and kiosk page",
                       description="Keep the installed capsules open (one model session per model, one memory "
                                   "budget) and answer over HTTP: the kiosk page at /, the JSON API under /api/, "
                                   "/healthz and /metrics (Prometheus). Follows the store: edge install, edge sync "
                                   "and edge remove take effect at the next request, without a restart. Binds "
                                   "loopback by default; the API is read-only wherever it is bound. One JSON log "
                                   "line per query on stderr (the query text only with --log-queries).",
                       epilog="example: edge serve\n"
                              "example: edge serve --listen 0.0.0.0:8080 --ram-budget 192MiB --keyboard\n"
                              "example: curl 'http://127.0.0.1:8080/api/search?q=E-4021&k=3'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(p)
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:8080; port 0 picks a free port)")
    key_args(p, "default: the trust document, else $EDGE_CONFIG_DIR/trusted/*.pub")
    p.add_argument("--queue-depth", type=_int_arg(1, 1024), default=16, metavar="N",
                   help="requests admitted at once (running and waiting); more get 503 with Retry-After (default 16)")
    p.add_argument("--max-connections", type=_int_arg(4, 4096), default=128, metavar="N",
                   help="open connections at most (default 128)")
    p.add_argument("--header-timeout", type=_int_arg(1, 600), default=10, metavar="SECONDS",
                   help="a client must send a request's headers within this long, or is cut off (default 10)")
    p.add_argument("--log-queries", action="store_true",
                   help="write the query text into the log lines (visitors' questions are personal data: off by default)")
    p.add_argument("--frame-cache", type=_size_arg, default=SERVE_FRAME_CACHE_BYTES, metavar="SIZE",
                   help="decrypted frames kept per capsule, charged to the budget (default 8MiB): a kiosk's "
                        "repeated questions are answered without decoding their frames again")
    p.add_argument("--keyboard", action="store_true", help="show the kiosk page's on-screen keyboard by default")
    p.add_argument("--idle-reset", type=_int_arg(10, 86400), default=90, metavar="SECONDS",
                   help="the kiosk page returns to its start after this long untouched (default 90)")
    p.add_argument("--title", default="Ask a question", help="the kiosk page's heading")
    runtime(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("list", help="list installed capsules (purges expired ones that ask for it)",
                       description="List the capsules in the device store with version, status and expiry.",
                       epilog="example: edge list --json")
    store_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("history", help="list the versions of a capsule this device keeps",
                       description="List the installed version of a capsule and the past versions the store keeps "
                                   "(edge settings --keep-versions). A past version can be read and searched "
                                   "(edge search NAME QUERY --version N) under its own rules and expiry; it is "
                                   "never installed again.",
                       epilog="example: edge history manual\nexample: edge search manual \"E-4021\" --version 3",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="installed capsule name")
    store_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("settings", help="show or set how many versions the store keeps, and its byte quota",
                       description="Show the store's settings, or change them (they apply from the next install): "
                                   "versions kept per capsule (1 = the installed one only) and a byte quota for "
                                   "everything installed. Past versions are dropped, oldest first, to stay inside "
                                   "the quota; an install that does not fit even then is refused.",
                       epilog="example: edge settings --keep-versions 3 --quota 2GiB")
    store_arg(p)
    p.add_argument("--keep-versions", type=_int_arg(1, 64), metavar="N", help="versions kept per capsule, 1-64")
    p.add_argument("--quota", type=_size_arg, metavar="SIZE", help="most bytes the store's capsules may take")
    p.add_argument("--no-quota", action="store_true", help="remove the quota")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("remove", help="remove an installed capsule (its version record stays)",
                       description="Delete an installed capsule and any content key cached for it. The device "
                                   "keeps refusing versions older than the one removed.",
                       epilog="example: edge remove manual")
    p.add_argument("name", help="installed capsule name (see edge list)")
    store_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("trust", help="install, update or show the device's root-signed trust document",
                       description="install (Store.install_trust): with --root, the first install, checked against "
                                   "the provisioned root key(s); without, a newer version signed by the installed "
                                   "root. init and update are the same two steps, each refusing the other. "
                                   "show: the delegations in force.",
                       epilog="example: edge trust install trust.json --root root.pub (first install); "
                              "edge trust install trust-v2.json (an update); edge trust show")
    p.add_argument("action", choices=("install", "init", "update", "show"), help="what to do")
    p.add_argument("file", nargs="?", help="trust document (install, init, update)")
    p.add_argument("--root", action="append", metavar="ROOT.pub", help="provisioned root public key (init); repeatable")
    store_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_trust)
