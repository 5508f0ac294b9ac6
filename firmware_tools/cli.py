"""``firmware-tools``: the desktop builder's command line (keygen, build, sign, trust, export-model).

Errors print as one line, ``firmware-tools: error: <message>``, with exit code 1; usage
errors exit 2. No traceback is printed (``-vv`` logs one for an unexpected error). Progress
bars go to stderr; key material is never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge.clock import utc_now
from edge.errors import EdgeError
from edge.keys import KeyFileError, load_passphrase, load_private_key, load_recipient_key

from .errors import BuildError, describe

PROG = "firmware-tools"
log = logging.getLogger(PROG)


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """Parse ``2027-01-31``, ``2027-01-31T12:00:00Z`` or a relative ``+90d`` / ``+12h`` into UTC.

    Raises:
        ValueError: any other form.
    """
    now = now or utc_now().replace(microsecond=0)
    rel = re.fullmatch(r"\+?(\d+)([dh])", text.strip())
    if rel:
        amount = int(rel.group(1))
        return now + (timedelta(days=amount) if rel.group(2) == "d" else timedelta(hours=amount))
    if _WHEN_RE.fullmatch(text.strip()):
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"no such date or time: {text!r}") from None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    raise ValueError(f"cannot read date {text!r}; use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or +90d")


#: The absolute forms ``parse_when`` reads (ISO 8601 shapes; ``datetime.fromisoformat`` reads the
#: value): a date (midnight UTC), or a time with ``Z`` or an offset such as ``+01:00``.
_WHEN_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:?\d{2}))?", re.ASCII)


def _int_at_least(low: int):
    """Return an argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, not {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _hex_arg(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex digits") from None


def _date_arg(text: str) -> datetime:
    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_UNITS = {"read": "doc", "embed": "chunk", "seal": "frame", "encode": "frame", "check": "frame", "index": "step"}


class _Bars:
    """tqdm progress bars per build stage, on stderr; silent when not a terminal unless forced."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>7}", unit=_UNITS.get(stage, "chunk"), file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def cmd_keygen(args: argparse.Namespace) -> int:
    from .keys import generate_keypair

    private_path, public_path, kid = generate_keypair(args.kind, Path(args.output), args.public)
    print(f"wrote {args.kind} private key {private_path} (mode 600) and public key {public_path}")
    print(f"key id {kid}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .build import build_capsule

    if args.codec == "hevc" and args.entropy_coding == "cavlc":
        raise SystemExit(_usage("--entropy-coding cavlc is for h264: HEVC codes with CABAC only"))
    if args.overlap_tokens >= args.max_tokens:
        raise SystemExit(_usage(f"--overlap-tokens {args.overlap_tokens} must be below --max-tokens {args.max_tokens}"))
    signing_key = load_private_key(args.signing_key)
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise KeyFileError(f"{args.signing_key} is not an Ed25519 publisher key (make one with keygen --kind publisher)")
    recipients = [load_recipient_key(p) for p in args.recipient or []]
    passphrase = load_passphrase(args.passphrase_file) if args.passphrase_file else None
    if not recipients and passphrase is None:
        raise SystemExit(_usage("give at least one --recipient DEVICE.pub or a --passphrase-file"))
    if recipients and passphrase is not None:
        raise SystemExit(_usage("--passphrase-file cannot be combined with --recipient: a passphrase capsule has "
                                "no other recipients (FORMAT.md §7, as age)"))
    rules = json.loads(Path(args.rules).read_text()) if args.rules else None
    base = None
    append = getattr(args, "append", False)
    compacting = getattr(args, "compact", False)
    if compacting:
        if args.base is not None or len(args.documents) != 1:
            raise SystemExit(_usage("compact takes one capsule, the version to compact (with --segment for its "
                                    "earlier segments)"))
        if args.base_identity is None and args.base_passphrase_file is None:
            raise SystemExit(_usage("compact needs --base-identity DEVICE.key or --base-passphrase-file to read "
                                    "the version it compacts"))
    if append:
        if args.base is not None:
            raise SystemExit(_usage("append takes its base as the first argument, not --base"))
        args.base = args.documents[0]
        args.documents = args.documents[1:]
        if not args.documents:
            raise SystemExit(_usage("append BASE DOCS...: give the documents to add after the base"))
    if args.base is not None:
        from .delta import read_base

        if args.base_identity is None and args.base_passphrase_file is None:
            raise SystemExit(_usage("--base needs --base-identity DEVICE.key or --base-passphrase-file: the builder "
                                    "reads the base's document list, which only a recipient can decrypt"))
        from edge.keys import load_identity

        identities = ([load_identity(args.base_identity)] if args.base_identity else []) + (
            [load_passphrase(args.base_passphrase_file)] if args.base_passphrase_file else [])
        base = read_base(args.base, signing_key=signing_key, identities=identities, segment_files=args.segment or ())
    elif args.segment and not compacting:
        raise SystemExit(_usage("--segment goes with --base"))
    version = args.version if args.version is not None else (base.version + 1 if base is not None else 1)
    seed = args.seed
    bars = _Bars(enabled=not args.quiet)
    # SIGTERM / SIGHUP unwind like Ctrl-C, so the private spool and the partial capsule are removed.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        if compacting:
            from edge.keys import load_identity

            from .compact import compact

            result = compact(
                args.documents[0], Path(args.output), signing_key=signing_key,
                identities=([load_identity(args.base_identity)] if args.base_identity else []) + (
                    [load_passphrase(args.base_passphrase_file)] if args.base_passphrase_file else []),
                segment_files=args.segment or (), expires_at=args.expires, version=args.version,
                recipients=recipients, passphrase=passphrase, not_before=args.not_before, issued_at=args.issued_at,
                publisher_name=args.publisher_name, **({"rules": rules} if rules is not None else {}),
                n_trees=args.n_trees, encrypt_index=not args.plain_index, seed=seed, progress=bars,
                index_format=_index_format(args),
                embedding_cache=args.embedding_cache, n_threads=args.workers, model_family=args.model_family,
                **({"zstd_level": args.zstd_level} if args.zstd_level is not None else {}),
                lexical_engine=args.lexical_engine, dense_first_margin=args.dense_first_margin, device=args.device,
                video_params=_video_params(args))
        else:
            result = build_capsule(
                args.documents, Path(args.output), signing_key=signing_key, recipients=recipients,
                passphrase=passphrase, expires_at=args.expires, not_before=args.not_before, issued_at=args.issued_at,
                version=version, name=args.name, capsule_id=args.capsule_id, publisher_name=args.publisher_name,
                rules=rules, max_tokens=args.max_tokens, overlap_tokens=args.overlap_tokens, n_trees=args.n_trees,
                index_format=_index_format(args),
                encrypt_index=not args.plain_index, seed=seed, progress=bars, embedding_cache=args.embedding_cache,
                **({"zstd_level": args.zstd_level} if args.zstd_level is not None else {}), n_threads=args.workers, model_family=args.model_family,
                video_params=_video_params(args), base=base,
                append=append, cluster=args.cluster, lexical_engine=args.lexical_engine,
                dense_first_margin=args.dense_first_margin, device=args.device,
            )
    finally:
        bars.close()
    summary = {"path": str(result.path), "capsule_id": result.capsule_id, "version": result.version,
               "documents": result.n_documents, "chunks": result.n_chunks, "frames": result.n_frames,
               "file_bytes": result.file_bytes, "raw_text_bytes": result.raw_text_bytes,
               "size_ratio": round(result.file_bytes / max(1, result.raw_text_bytes), 3),
               "section_bytes": result.section_bytes,
               "seconds": {k: round(v, 3) for k, v in result.stage_s.items()}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {result.path}: {result.n_chunks} chunks from {result.n_documents} documents in "
              f"{result.n_frames} frames, {result.file_bytes} bytes "
              f"({summary['size_ratio']}x the {result.raw_text_bytes} bytes of text)")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import write_bundle

    names = write_bundle(args.capsule, args.segment or (), args.output)
    print(json.dumps({"path": args.output, "members": names}) if args.json else
          f"wrote {args.output}: {', '.join(names)}")
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _ed25519_private(path: str, what: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = load_private_key(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 {what} key (make one with keygen --kind {what})")
    return key


def cmd_sign(args: argparse.Namespace) -> int:
    from .cosign import add_signatures

    keys = [_ed25519_private(p, "publisher") for p in args.signing_key]
    keyids = add_signatures(Path(args.capsule), keys, Path(args.output) if args.output else None)
    print(f"wrote {args.output or args.capsule}: signed by {len(keyids)} key(s): {', '.join(k[:16] for k in keyids)}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from edge.keys import keyid, load_public_key

    from .trust_writer import Delegate, next_trust_document, write_trust_document

    roots = [_ed25519_private(p, "root") for p in args.root_key]
    delegates = args.delegate or []
    expires = args.expires or []
    names = args.name or []
    if len(expires) != len(delegates) or len(names) > len(delegates):
        raise SystemExit(_usage("give one --expires (and at most one --name) per --delegate, in order"))
    add = [Delegate(load_public_key(p), names[i] if i < len(names) else Path(p).stem, expires[i])
           for i, p in enumerate(delegates)]
    revoke = [r if len(r) == 64 and all(c in "0123456789abcdef" for c in r) else keyid(load_public_key(r))
              for r in args.revoke or []]
    new_root = [load_public_key(p) for p in args.new_root] if args.new_root else None
    issued_at = args.issued_at or utc_now().replace(microsecond=0)
    if args.previous:
        data = next_trust_document(Path(args.previous).read_bytes(), root_signing_keys=roots, issued_at=issued_at,
                                   add=add, revoke=revoke, threshold=args.threshold, root_public_keys=new_root,
                                   root_threshold=args.root_threshold)
    else:
        data = write_trust_document(root_signing_keys=roots, publishers=add, version=1, issued_at=issued_at,
                                    threshold=args.threshold or 1, revoked=revoke, root_public_keys=new_root,
                                    root_threshold=args.root_threshold or 1)
    out = Path(args.output)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    out.write_bytes(data)
    from edge.trust import parse_trust_document

    doc, _ = parse_trust_document(data)
    print(f"wrote {out}: trust document version {doc.version}, {len(doc.publishers)} publisher key(s), "
          f"threshold {doc.threshold}, {len(doc.revoked)} revoked, root {doc.root_threshold}-of-{len(doc.root_keys)}")
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    if args.family == "tflite":
        from .model_export_tflite import main as export_main
    else:
        from .model_export import main as export_main

    return export_main(["-o", str(args.output)])


def _usage(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


_BUILD_EXAMPLES = """\
example: firmware-tools build docs/ -o manual.capsule --signing-key publisher.key \\
             --recipient kiosk-7.pub --expires 2027-06-30 --version 3

more examples:
  two devices, valid for 90 days, rules from a file, summary as JSON:
    firmware-tools build docs/ faq.md -o manual.capsule --signing-key publisher.key \\
        --recipient kiosk-7.pub --recipient kiosk-8.pub --expires +90d --rules rules.json --json
  opened by a passphrase instead of device keys (the file is mode 600):
    firmware-tools build docs/ -o manual.capsule --signing-key publisher.key \\
        --passphrase-file pass.txt --expires +30d
  a Pi 5 (HEVC decoder), reusing embeddings from the last build:
    firmware-tools build docs/ -o manual.capsule --signing-key publisher.key \\
        --recipient pi5.pub --expires +90d --codec hevc --embedding-cache embed.sqlite
  faster answers on the device (CAVLC frames: 14% more video bytes), embedding on an NVIDIA GPU
  (onnxruntime-gpu installed in place of onnxruntime):
    firmware-tools build docs/ -o manual.capsule --signing-key publisher.key \\
        --recipient kiosk-7.pub --expires +90d --entropy-coding cavlc --device cuda
  an update that carries only what changed since v3 (a delta; devices holding v3 install it):
    firmware-tools build docs/ -o manual-v4.capsule --signing-key publisher.key \
        --recipient kiosk-7.pub --expires +90d --base manual-v3.capsule --base-identity publisher-device.key
  a byte-identical rebuild (same documents, keys, seed, issue time and embeddings):
    firmware-tools build docs/ -o manual.capsule --signing-key publisher.key \\
        --recipient kiosk-7.pub --expires 2027-06-30 --issued-at 2026-12-01 --seed 00 \\
        --embedding-cache embed.sqlite

Errors print one line, "firmware-tools: error: ...", exit 1 (usage errors exit 2);
a failed build leaves nothing at or beside the output path.
"""


def _index_format(args) -> str | None:
    """``--index``: ``None`` for auto (the builder decides), else the format named."""
    return None if args.index == "auto" else args.index


def _video_params(args: argparse.Namespace):
    """The ``VideoParams`` that ``--codec``, ``--entropy-coding`` and ``--qr-version`` choose."""
    from .qr_video import CAVLC_VIDEO_PARAMS, DEFAULT_VIDEO_PARAMS, HEVC_VIDEO_PARAMS, with_qr_version

    if args.codec == "hevc":
        params = HEVC_VIDEO_PARAMS
    else:
        params = CAVLC_VIDEO_PARAMS if args.entropy_coding == "cavlc" else DEFAULT_VIDEO_PARAMS
    if args.qr_version is None or args.qr_version == params.qr_version:
        return params
    return with_qr_version(params, args.qr_version)


#: ``firmware_tools.qr_video.MIN_QR_VERSION``, kept here so that ``--help`` imports no NumPy or PyAV
#: (a test checks that the two agree).
MIN_QR_VERSION = 15


def _add_build_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``build`` (and ``append``, whose first DOCS is the base)."""
    p.add_argument("documents", nargs="+", type=Path, help="files or folders to pack")
    p.add_argument("-o", "--output", required=True, help="capsule path to write (replaced atomically)")
    p.add_argument("--signing-key", required=True, help="publisher Ed25519 private key (mode 600)")
    p.add_argument("--recipient", action="append", metavar="DEVICE.pub", help="device X25519 public key; repeatable")
    p.add_argument("--passphrase-file", help="let this passphrase, and nothing else, open the capsule (scrypt; "
                                                 "not with --recipient)")
    p.add_argument("--expires", type=_date_arg, required=True, help="expiry: YYYY-MM-DD, ISO time, or +90d")
    p.add_argument("--not-before", type=_date_arg, help="start of validity (default: issue time)")
    p.add_argument("--issued-at", type=_date_arg, help="issue time (default: now, or $SOURCE_DATE_EPOCH)")
    p.add_argument("--version", type=_positive_int, default=None,
                   help="capsule version, >= 1 (default 1, or the base's + 1 with --base)")
    p.add_argument("--name", help="capsule name (default: output file name)")
    p.add_argument("--capsule-id", help="32 hex chars (default: derived from the publisher key and name)")
    p.add_argument("--publisher-name", default="", help="human-readable publisher name")
    p.add_argument("--rules", help="JSON file with the manifest's rules object")
    p.add_argument("--max-tokens", type=_positive_int, default=200, help="chunk size in model tokens (default 200)")
    p.add_argument("--overlap-tokens", type=_non_negative_int, default=32, help="chunk overlap in model tokens (default 32)")
    p.add_argument("--index", choices=("auto", "binary-codes", "annoy"), default="auto",
                   help="dense index: binary-codes (128-bit sign codes scanned exhaustively, int8 re-rank; "
                        "format 1.3) or annoy (format 1.2, which older runtimes read); auto: binary codes "
                        "from 2,048 chunks up (where the embeddings are projected), else Annoy; a delta "
                        "keeps its base's (default auto)")
    p.add_argument("--n-trees", type=_positive_int, default=None,
                   help="Annoy trees (default: 16 over full embeddings, 8 over the projection)")
    p.add_argument("--plain-index", action="store_true",
                   help="do not encrypt the index (embeddings leak content; see FORMAT.md 4.4)")
    p.add_argument("--model-family", choices=("onnx", "tflite"), default="onnx",
                   help="embed with the ONNX model (onnxruntime on the device) or the LiteRT one "
                        "(ai-edge-litert on the device); devices need that engine (default onnx)")
    p.add_argument("--codec", choices=("h264", "hevc"), default="h264",
                   help="h264 (Pi 4 hardware decoder) or hevc (all-IDR HEVC Main, for the Pi 5's "
                        "HEVC decoder) (default h264)")
    p.add_argument("--entropy-coding", choices=("cabac", "cavlc"), default="cabac",
                   help="H.264 entropy coding (default cabac). cavlc decodes 1.5x faster per frame for about 14%% "
                        "more video bytes (bench/QR_VIDEO.md 7): for devices where query time matters more than "
                        "capsule size; any H.264 decoder reads it (h264 only)")
    p.add_argument("--qr-version", type=int, choices=range(MIN_QR_VERSION, 41), default=None,
                   metavar=f"{MIN_QR_VERSION}-40",
                   help="QR version of each frame's symbol (default 24 for h264: 1,171 bytes in 128x128 frames; "
                        "40 for hevc). Smaller symbols make smaller frames, cheaper to decode per hit, for more "
                        "video bytes; 40 (192x192) makes the smallest capsule: on SciFact 0.84x the bytes, 1.41-1.48x "
                        "the query time (bench/QR_VIDEO.md 9)")
    p.add_argument("--seed", type=_hex_arg, help="hex seed for a reproducible build (default: OS randomness)")
    p.add_argument("--embedding-cache", type=Path, metavar="FILE",
                   help="SQLite file of chunk embeddings kept between builds: a rebuild embeds only new or "
                        "changed chunks (created if missing)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="embedding worker processes (default: one per CPU)")
    p.add_argument("--zstd-level", type=int, choices=range(1, 23), default=None, metavar="1-22",
                   help="zstd level of the frame payloads (default 15: within 0.3%% of level 19's size at 0.7x "
                        "its packing time; 9 packs 3.4x faster than 19 for 4.6%% more video)")
    p.add_argument("--lexical-engine", choices=("tantivy-7", "sqlite-fts5"), default=None,
                   help="the lexical (BM25) index: tantivy-7 (capsule format 1.2 and later, the default: a third of the "
                        "bytes, stemmed terms) or sqlite-fts5 (format 1.1, for devices whose edge reads only 1.1); "
                        "a delta keeps its base's")
    p.add_argument("--dense-first-margin", type=int, choices=range(0, 1001), default=None, metavar="0-1000",
                   help="hybrid search puts the dense ranking's first chunk first when its cosine leads the "
                        "second's by this many thousandths (default 80 with tantivy-7: on the Python FAQ's "
                        "held-out questions nDCG@10 0.855 -> 0.868, SciFact unchanged; capsule format 1.4). "
                        "0 turns it off, so runtimes older than 1.4 read the capsule")
    p.add_argument("--device", choices=("cpu", "cuda", "openvino", "coreml"), default="cpu",
                   help="where onnxruntime embeds the chunks (default cpu). cuda, openvino and coreml need "
                        "that provider's onnxruntime package (onnxruntime-gpu, onnxruntime-openvino) in place "
                        "of onnxruntime; the vectors then differ from the CPU's within the model's tolerance "
                        "(checked at start). OpenVINO on a CPU without a GPU measured about half the CPU "
                        "provider's speed here (models/all-MiniLM-L6-v2/MODEL.md)")
    p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="parse, chunk, embed, pack and QR-draw on this Dask distributed cluster's workers "
                        "(pip install '.[tools,cluster]'); sealing, the video, the indexes, signing and "
                        "every key stay on this machine")
    p.add_argument("--base", type=Path, metavar="BASE.capsule",
                   help="build a delta over this version: only new and changed documents are packed, the base's "
                        "chunks of changed and removed ones are tombstoned (FORMAT.md §4.7)")
    p.add_argument("--base-identity", metavar="DEVICE.key", help="a device key that opens the base (with --base)")
    p.add_argument("--base-passphrase-file", metavar="FILE", help="the base's passphrase (with --base)")
    p.add_argument("--segment", action="append", type=Path, metavar="FILE",
                   help="an earlier segment of the base, when the base is itself a delta; repeatable")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


_APPEND_EXAMPLES = """\
example: firmware-tools append manual-v3.capsule new-bulletins/ -o manual-v4.capsule \\
             --signing-key publisher.key --recipient kiosk-7.pub --expires +90d \\
             --base-identity publisher-device.key
"""


_COMPACT_EXAMPLES = """\
example: firmware-tools compact manual-v6.capsule --segment manual-v5.capsule --segment manual-v4.capsule \\
             -o manual-v7.capsule --signing-key publisher.key --recipient kiosk-7.pub --expires +90d \\
             --base-identity publisher-device.key --embedding-cache embed.sqlite
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the ``firmware-tools`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Build signed, encrypted knowledge capsules for edge devices.",
        epilog="example: firmware-tools build docs/ -o manual.capsule --signing-key publisher.key "
               "--recipient device.pub --expires +90d")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="make a publisher signing key or a device key",
                       description="Generate a key pair. The private key is written with mode 600 and never printed; "
                                   "the public key goes beside it with the .pub suffix.",
                       epilog="example: firmware-tools keygen --kind device -o kiosk-7.key")
    p.add_argument("--kind", choices=("publisher", "device", "root"), default="publisher",
                   help="publisher: Ed25519, signs capsules; device: X25519, receives them; root: Ed25519, signs "
                        "trust documents, keep it offline (default publisher)")
    p.add_argument("-o", "--output", required=True, help="private key path (must not exist)")
    p.add_argument("--public", type=Path, help="public key path (default: OUTPUT with .pub)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("build", help="build a capsule from documents",
                       description="Chunk, embed, encrypt and pack documents (.txt .md .rst .html .pdf, or folders of "
                                   "them) into one signed capsule file.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_BUILD_EXAMPLES)
    _add_build_arguments(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("append", help="add documents to a capsule as a new segment (a delta)",
                       description="Grow a capsule: pack DOCS as a new segment over BASE without re-embedding BASE. "
                                   "Documents of BASE that DOCS does not name are kept; one with the same name is "
                                   "replaced. Devices holding BASE install the result (FORMAT.md 4.7).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_APPEND_EXAMPLES)
    _add_build_arguments(p)
    p.set_defaults(func=cmd_build, append=True)

    p = sub.add_parser("compact", help="merge the segments of a version into one full capsule",
                       description="Read the live chunks of VERSION (a delta: give its earlier segments with "
                                   "--segment) and pack them again, unchanged, into one capsule without segments, "
                                   "as the next version (--version to choose). Chunking, names, digests, headings "
                                   "and, unless --rules, the rules are the version's; with --embedding-cache "
                                   "nothing is embedded again.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_COMPACT_EXAMPLES)
    _add_build_arguments(p)
    p.set_defaults(func=cmd_build, compact=True)

    p = sub.add_parser("bundle", help="put a version's segments into one file, for devices that lack its base",
                       description="Write CAPSULE and the earlier segments it pins (found among --segment files), "
                                   "oldest first, into one file. `edge install X.bundle` installs each in turn, "
                                   "skipping what the device holds already (FORMAT.md 13.7).",
                       epilog="example: firmware-tools bundle manual-v5.capsule --segment manual-v4.capsule "
                              "--segment manual-v3.capsule -o manual-v5.bundle")
    p.add_argument("capsule", help="the version's newest segment (a delta)")
    p.add_argument("--segment", action="append", metavar="FILE", help="an earlier segment; repeatable")
    p.add_argument("-o", "--output", required=True, help="the bundle to write (replaced atomically)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("sign", help="add a signature to a built capsule (k-of-n co-signing)",
                       description="Verify the capsule's sections against its manifest, add an Ed25519 signature "
                                   "over the manifest with each key, verify the result and write it atomically.",
                       epilog="example: firmware-tools sign manual.capsule --signing-key second-publisher.key")
    p.add_argument("capsule", help="the capsule to co-sign")
    p.add_argument("--signing-key", action="append", required=True, help="publisher Ed25519 private key; repeatable")
    p.add_argument("-o", "--output", help="write here instead of replacing the capsule")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("trust", help="write a root-signed trust document (delegate, rotate, revoke keys)",
                       description="Write the trust document devices install with `edge trust`: which publisher "
                                   "keys may sign capsules and until when, which are revoked, how many signatures a "
                                   "capsule needs. With --previous, write its next version.",
                       epilog="example: firmware-tools trust -o trust.json --root-key root.key --delegate "
                              "publisher.pub --expires 2027-12-31")
    p.add_argument("-o", "--output", required=True, help="trust document to write")
    p.add_argument("--root-key", action="append", required=True, help="root Ed25519 private key; repeatable")
    p.add_argument("--previous", help="the current trust document; write its next version")
    p.add_argument("--delegate", action="append", metavar="PUB.pub", help="publisher public key to delegate to")
    p.add_argument("--expires", action="append", type=_date_arg, help="expiry of the matching --delegate")
    p.add_argument("--name", action="append", help="label of the matching --delegate (default: file name)")
    p.add_argument("--revoke", action="append", metavar="PUB.pub|KEYID", help="key to revoke; repeatable")
    p.add_argument("--threshold", type=int, help="signatures each capsule needs (default 1, or keep)")
    p.add_argument("--new-root", action="append", metavar="ROOT.pub", help="rotate the root to these keys")
    p.add_argument("--root-threshold", type=int, help="root signatures the next version needs")
    p.add_argument("--issued-at", type=_date_arg, help="signing time (default: now)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_trust)

    p = sub.add_parser("export-model", help="rebuild the quantized ONNX or LiteRT model from the pinned source package",
                       description="Export all-MiniLM-L6-v2 to int8 ONNX or int8 LiteRT "
                                   "(see models/all-MiniLM-L6-v2/MODEL.md).",
                       epilog="example: firmware-tools export-model -o models/all-MiniLM-L6-v2")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--family", choices=("onnx", "tflite"), default="onnx",
                   help="onnx: int8 ONNX (needs .[export]); tflite: int8 LiteRT from the ONNX model's "
                        "weights (needs the LiteRT export environment in MODEL.md) (default onnx)")
    p.set_defaults(func=cmd_export_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``firmware-tools`` CLI; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO if args.verbose == 1
                        else logging.DEBUG, format=f"{PROG}: %(levelname)s: %(name)s: %(message)s")
    try:
        return args.func(args)
    except (BuildError, EdgeError, KeyFileError, ValueError, FileExistsError) as exc:
        print(f"{PROG}: error: {describe(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a library error no step typed: still one line, never a traceback
        log.debug("unexpected error", exc_info=True)
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {describe(exc)} (run with -vv for details)",
              file=sys.stderr)
        return 1
