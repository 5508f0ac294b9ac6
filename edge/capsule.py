"""Open a capsule: verify everything first, then plan the memory, unwrap, map and load.

The open path in layers: ``edge.container`` reads the header, table and bounds (no crypto);
``edge.verification`` turns MANI + SIGS + the trust + the time into a verified manifest and
hashes sections against it; this module then reserves the whole budget plan
(``memory_plan``), unwraps the content key, decrypts and parses the sections, and opens the
index, the model and the decoder; ``edge.opened.Capsule`` is what it returns.

``open_capsule`` is the only way to get a ``Capsule``; it returns one only after
the header, signatures, manifest, validity window, rules, model, key unwrap and
section digests have all checked out (FORMAT.md §11). Text only ever comes out of
a frame whose AEAD verified. Nothing is written to disk: the index is decrypted
into a memfd. A capsule opened by path is read with bounded preads
(``edge.container``): small sections are read once and parsed from the copy that
was hashed, an unencrypted index is hashed while it is copied, and each video
sample is read when its frame is decoded, so a file that shrinks or changes under
an open capsule gives a typed error, not SIGBUS. Only device-store objects, which
the runtime owns, are memory-mapped.

Example::

    capsule = open_capsule("manual.capsule", trusted_keys=[load_public_key("pub.pem")],
                           identities=[load_identity("device.key")])
    for hit in capsule.search("how do I reset the unit?", k=5):
        print(f"{hit.score:.3f} {hit.document}:{hit.char_start} {hit.text[:60]}")
    capsule.close()

Source: FORMAT.md §11 (open order), §5-§6 (frames).

Size: ~650 lines because the open path's order (budget plan, key unwrap, decrypt, parse, map,
model, decoder) is one sequence with one release-on-error path, and ``verify_capsule`` shares its
section parsers; the container, verification and the opened ``Capsule`` live apart.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import format as fmt
from .budget import (
    FRAME_DECODER_BASE_BYTES,
    LITERT_SESSION_BYTES,
    MODEL_SESSION_BYTES,
    MODEL_SESSION_MAPPED_BYTES,
    QUERY_BASE_BYTES,
    MemoryBudget,
    format_mib,
    model_query_peak_bytes,
)
from .clock import utc_now
from .container import ContainerFile
from .embedder import QueryEmbedder, check_engine, find_model_dir
from .errors import BudgetExceededError, CapsuleError, CapsuleFormatError, DeltaBaseError, IntegrityError, ModelError
from .frames import FrameReader
from .index import BinaryCodeIndex, Projection, VectorIndex, rerank_peak_bytes
from .lexical import LexicalEngine, lexical_loading_bytes, lexical_plan_bytes, open_lexical_index
from .lexical_tantivy import TANTIVY_OVERHEAD_BYTES
from .keys import Identity, Passphrase
from .manifest import Manifest
from .hits import (
    DOCS_TABLE_BASE_BYTES,
    DOCS_TABLE_PEAK_FACTOR,
    Document,
    DocumentTable,
    Hit,
    StageTimings,
    parse_document_table,
)
from .opened import Capsule
from .rules import MemoryUseLog, UsePolicy
from .sealed import (
    ContentKeys, MAX_DOCS_WINDOW_BYTES, decompress_bounded, docs_plaintext_limit,
    derive_keys, iter_open_stream, open_stream, stream_plaintext_bytes, unwrap_content_key, zstd_content_size,
    zstd_decompressor,
)
from .trust import DeviceState
from .verification import _check_trust, _compare_digest, _hash_video, _hashed_blocks, _read_section

log = logging.getLogger(__name__)

DEFAULT_FRAME_CACHE_BYTES = 1 << 20


_open_counter = itertools.count(1)


def _import_runtime_libraries() -> None:
    """Import what queries need, so that the ``runtime`` reservation measures it."""
    import annoy  # noqa: F401  (pyflakes: imported for its memory, not used)
    import av  # noqa: F401
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # a runtime with only LiteRT: check_engine() says what the capsule needs
        pass
    import zxingcpp  # noqa: F401


def memory_plan(manifest: Manifest, *, section_lengths: dict[str, int], frame_cache_bytes: int,
                include_model: bool, index_from_file: bool = False, model_weights: str = "packed") -> dict[str, int]:
    """Return the bytes a capsule will hold once open, by component (see ``edge.budget``).

    Args:
        manifest: the verified manifest.
        section_lengths: length of each section in the file.
        frame_cache_bytes: the decrypted-frame cache limit.
        include_model: whether this capsule loads its own model session.
        index_from_file: the capsule is a device-store object the runtime owns: an unencrypted
            index and VECS are mapped from files (not held in memory); an encrypted one is
            decrypted into memory all the same.
        model_weights: ``"packed"`` or ``"mapped"``: how an ``onnx`` session holds its
            weights (``OpenOptions.model_weights``); a ``tflite`` session is one size.

    Returns:
        Bytes per component; every value >= 0. The document list is not in it: the open charges
        it once parsed, at what its ``DocumentTable`` holds.

    Source: edge/budget.py (what each component costs, measured).
    """
    info = manifest.index
    # An unencrypted index and VECS of a store object are mapped (Annoy from its extracted file,
    # binary codes and VECS in place); anything encrypted, or opened by path, is held in memory.
    mapped = index_from_file and info.encryption == "none"
    index_bytes = section_lengths["INDX"] if info.encryption == "none" else stream_plaintext_bytes(
        section_lengths["INDX"])
    index_plan = 0 if mapped else index_bytes
    if info.format == "binary-codes":
        index_plan += BinaryCodeIndex.scratch_bytes(info.n_items)  # the scan's scratch, mapped or not
    projection = info.projection
    dim_out = projection.dim_out if projection else 0
    plan = {
        "model": _model_bytes(manifest.model.family, model_weights, manifest.model.max_tokens) if include_model else 0,
        "index": index_plan,
        "vecs": 0 if mapped else info.vecs_plaintext_bytes,
        "projection": 4 * (projection.dim_in * projection.dim_out + projection.dim_in + projection.dim_out)
        if projection else 0,
        "frame_table": 3 * section_lengths["FTAB"],
        # per-sample SHA-256 kept when opened by path (_hash_video)
        "sample_digests": 0 if index_from_file else 32 * manifest.video.n_frames,
        "dictionary": 2 * manifest.dictionary_bytes + (512 << 10),
        # two decoders (this thread's and the helper's twin, Capsule._read_frames), each with a
        # picture and a payload in flight (decompress_bounded: output + its checking pass)
        "frame_decoder": FRAME_DECODER_BASE_BYTES + 2 * (3 * manifest.video.width * manifest.video.height
                                                         + 2 * manifest.max_plaintext_bytes),
        "frame_cache": frame_cache_bytes,
        # the re-ranked candidates' rows in flight: int8 gathered, then float32 (edge.index.rerank)
        "query": QUERY_BASE_BYTES + rerank_peak_bytes(info.n_candidates, dim_out),
        # the lexical engine's copy of LEXI and what loading it takes (lexical_plan_bytes)
        "lexical": 0 if manifest.lexical is None else lexical_plan_bytes(
            manifest.lexical, _lexi_plaintext_bytes(section_lengths["LEXI"], info.encryption)),
    }
    return plan


def _model_bytes(family: str, model_weights: str, max_tokens: int) -> int:
    """The model's reservation: its session, and for onnxruntime what the longest query the
    capsule allows adds while it runs."""
    if family == "tflite":
        return LITERT_SESSION_BYTES
    session = MODEL_SESSION_MAPPED_BYTES if model_weights == "mapped" else MODEL_SESSION_BYTES
    return session + model_query_peak_bytes(max_tokens)


#: ``OpenOptions.model_weights`` values.
MODEL_WEIGHTS = ("auto", "packed", "mapped")


@dataclass(frozen=True)
class OpenOptions:
    """How ``open_capsule`` and ``verify_capsule`` open a capsule, beyond keys, budget and time.

    Attributes:
        threshold: distinct trusted signatures required (the trust document's when higher), >= 1.
        device: the device's state (trust document, time floor, version records, hardware id,
            rate log; FORMAT.md §13); ``None`` judges validity at ``now`` and keeps the rate in
            memory. A device store passes its own (``Store.open``).
        model_search_path: directories holding model folders (see ``find_model_dir``).
        n_threads: onnxruntime intra-op threads for query embedding, >= 1.
        prefer_hardware_decoder: try ``h264_v4l2m2m``/``hevc_v4l2m2m`` before software decoding.
        frame_cache_bytes: bytes of decrypted frames to keep (an LRU cache), reserved at open, >= 0;
            shared evenly by the segments of a version (FORMAT.md §4.7).
        segment_files: for a capsule built over earlier segments (a delta, FORMAT.md §4.7) opened
            by path: the files of those segments, in any order (each is matched to the version's
            pins by its manifest digest). A store finds them itself.
        model_weights: how an ``onnx`` model session holds its int8 weights: ``"packed"``
            (onnxruntime prepacks them into anonymous memory, ``MODEL_SESSION_BYTES``: the
            fastest), ``"mapped"`` (they stay in the mapped weights file, page cache the kernel
            can evict: ``MODEL_SESSION_MAPPED_BYTES``, 10 MiB less, ~0.6-1.1 ms more per query,
            the same embeddings) or ``"auto"`` (packed, unless a limited budget cannot hold the
            capsule's plan with packed weights: then mapped). A ``tflite`` model ignores it.

    Raises:
        ValueError: ``threshold`` or ``n_threads`` below 1, ``frame_cache_bytes`` negative, or
            ``model_weights`` not one of ``MODEL_WEIGHTS``.
    """

    threshold: int = 1
    device: DeviceState | None = None
    model_search_path: Sequence[Path] | None = None
    n_threads: int = 1
    prefer_hardware_decoder: bool = True
    frame_cache_bytes: int = DEFAULT_FRAME_CACHE_BYTES
    segment_files: Sequence[Path] = ()
    model_weights: str = "auto"

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.n_threads < 1 or self.frame_cache_bytes < 0:
            raise ValueError(f"OpenOptions: threshold ({self.threshold}) and n_threads ({self.n_threads}) must be "
                             f">= 1, frame_cache_bytes ({self.frame_cache_bytes}) >= 0")
        if self.model_weights not in MODEL_WEIGHTS:
            raise ValueError(f"OpenOptions: model_weights must be one of {', '.join(MODEL_WEIGHTS)}, "
                             f"not {self.model_weights!r}")


@dataclass(frozen=True)
class _InstalledObject:
    """What a device store verified at install; the store builds it (``Store._installed_object``).

    Attributes:
        manifest_sha256: SHA-256 (hex) of the MANI bytes the catalogue recorded: any other
            manifest is refused before its signatures are checked, so a swapped file moves no
            device state.
        verified_sections: sections hashed at install against that manifest; not hashed again.
        index_path: the verified, unencrypted Annoy plaintext extracted at install, mapped
            file-backed; ``None`` for an encrypted index.
        lexical_dir: the unencrypted ``tantivy-7`` lexical index's files extracted at install,
            checked again at each open and mapped by tantivy; ``None`` otherwise.
        segments: the earlier segments the store keeps for this version (FORMAT.md §4.7):
            manifest sha256 -> (file, what was verified of it).
    """

    manifest_sha256: str
    verified_sections: frozenset[str]
    index_path: Path | None = None
    segments: Mapping[str, "tuple[Path, _InstalledObject]"] = field(default_factory=dict)
    #: the unencrypted tantivy-7 LEXI's files, extracted at install (``lexical/``); ``None`` if none
    lexical_dir: Path | None = None
    #: only the pin: a file handed in by path (an earlier segment), read by pread and hashed as any such file
    by_path: bool = False
    #: a past version the store keeps for reading: pinned by its digest, so not refused as a rollback
    past_version: bool = False
    #: the document list parsed and authenticated at install (``documents.table``, FORMAT.md §13.8),
    #: read instead of DOCS; ``None``: DOCS is parsed
    documents_table: Path | None = None


def open_capsule(
    path: str | os.PathLike[str],
    *,
    trusted_keys: Sequence[Ed25519PublicKey],
    identities: Sequence[Identity],
    budget: MemoryBudget | None = None,
    now: datetime | None = None,
    options: OpenOptions | None = None,
) -> Capsule:
    """Verify and open a capsule; return it only if every open-level check passes.

    Args:
        path: the capsule file.
        trusted_keys: Ed25519 publisher keys this device trusts; empty to use the keys that
            ``options.device.root`` delegates (FORMAT.md §12).
        identities: X25519 device keys, passphrases or a cached ``ContentKey`` to unwrap the
            content key; X25519 keys also identify the device for the ``devices`` rule.
        budget: memory budget to charge; ``None`` is unlimited (still reported). The whole
            plan (``memory_plan``) is reserved before anything is mapped or allocated.
        now: timezone-aware time to judge validity; ``None`` reads the clock once.
        options: threshold, device state, model path, threads, decoder and frame cache
            (``OpenOptions``); ``None`` is ``OpenOptions()``.

    Returns:
        An open ``Capsule``.

    Raises:
        CapsuleFormatError: bad magic, version, table, manifest, limits, malformed rule.
        IntegrityError: truncated/extended file, section length or sha256 mismatch; for a
            store object, a manifest other than the installed one or an index file beside an
            encrypted index.
        SignatureError: too few valid trusted (delegated, unexpired, unrevoked) signatures.
        RollbackError: older than the version the device accepted, or the same version with
            another manifest.
        ExpiredCapsuleError, NotYetValidError: outside the validity window at the trusted time.
        RuleViolationError: a required rule this runtime lacks, a device not on the allow-list,
            or a runtime older than ``min_runtime``.
        ModelError: no engine for the manifest's model family is installed, or its
            model is not installed or does not load.
        DecryptionError: no identity opens the capsule, or a section fails authentication.
        BudgetExceededError: the plan does not fit the budget (nothing was mapped), or the
            process alone exceeds it.

    Source: FORMAT.md §11; edge/budget.py.
    """
    return _open_capsule(path, trusted_keys=trusted_keys, identities=identities, budget=budget, now=now,
                         options=options if options is not None else OpenOptions())


def _open_capsule(path: str | os.PathLike[str], *, trusted_keys: Sequence[Ed25519PublicKey],
                  identities: Sequence[Identity], budget: MemoryBudget | None, now: datetime | None,
                  options: OpenOptions, installed: _InstalledObject | None = None,
                  embedders: Mapping[str, QueryEmbedder] | None = None, segment_of: Manifest | None = None,
                  held_segments: Mapping[str, "tuple[Path, _InstalledObject]"] | None = None) -> Capsule:
    """``open_capsule`` with the internals of a device store and a capsule set.

    ``installed``: the object is a store's, verified at install (mapped, manifest pinned,
    large sections not hashed again). ``embedders``: open ``QueryEmbedder``s by model sha256
    to share (several capsules, one model session); when none matches, the capsule opens
    its own and reserves ``model`` for it. ``segment_of``: this file is an earlier segment of
    that (verified) version, pinned by ``installed.manifest_sha256`` (``_open_segments``).
    ``held_segments``: earlier segments a store holds (verified at their install), offered to a
    delta being installed: they open as store objects (``Store`` install, FORMAT.md §13.5).
    """
    threshold, device, n_threads = options.threshold, options.device, options.n_threads
    model_search_path, frame_cache_bytes = options.model_search_path, options.frame_cache_bytes
    prefer_hardware_decoder = options.prefer_hardware_decoder
    verified_sections: Collection[str] = installed.verified_sections if installed else ()
    index_path = installed.index_path if installed else None
    lexical_dir = installed.lexical_dir if installed and not installed.by_path else None
    expected_manifest_sha256 = installed.manifest_sha256 if installed else None
    now = utc_now(now)
    budget = budget if budget is not None else MemoryBudget(None)
    _import_runtime_libraries()
    budget.charge_runtime()
    # A device-store object (verified at install, owned by the runtime's user) may be mapped;
    # anything else is read with bounded preads, never through a mapping that can fault.
    owned_file = installed is not None and not installed.by_path
    cf = ContainerFile(path, mapping=owned_file)
    prefix = ""
    plan: dict[str, int] = {}
    index = lexical = None
    own_embedder = model_loading = None
    try:
        manifest, rules = _check_trust(cf, trusted_keys=trusted_keys, threshold=threshold, device=device, now=now,
                                       identities=identities, expected_manifest_sha256=expected_manifest_sha256,
                                       segment_of=segment_of,
                                       check_version=not (installed is not None and installed.past_version))
        if manifest.segments is not None and segment_of is None:
            frame_cache_bytes //= len(manifest.segments.base) + 1
        check_engine(manifest.model.family)
        embedder = (embedders or {}).get(manifest.model.sha256)
        # Unlimited: the weights are settled once planned, and no transient peak below borrows the
        # model's reservation, so the model is hashed and its session built on a thread while the
        # sections are opened here (QueryEmbedder.start_open). Under a limit it loads after them.
        # (glibc gives the thread an arena that keeps ~5 MiB it freed: the edge program limits
        # malloc to one arena, edge._process.single_malloc_arena; library callers may too.)
        load_in_background = embedder is None and budget.limit_bytes is None
        if embedder is None:
            model_dir = find_model_dir(manifest.model.sha256, model_search_path, family=manifest.model.family,
                                       confirm=not load_in_background)
        if index_path is not None and manifest.index.encryption != "none":
            raise IntegrityError(f"index file {index_path} was given for a capsule whose index is encrypted "
                                 "(a file planted beside it?); refusing both")
        prefix = f"{manifest.name}#{next(_open_counter)}/"
        section_lengths = {t: e.length for t, e in cf.sections.items()}
        extracted_lexical = (lexical_dir is not None and owned_file and manifest.index.encryption == "none"
                             and manifest.lexical is not None and manifest.lexical.format == "tantivy-7")

        def plan_with(weights: str) -> tuple[dict[str, int], int, int]:
            plan = memory_plan(manifest, section_lengths=section_lengths, frame_cache_bytes=frame_cache_bytes,
                               include_model=embedder is None, index_from_file=owned_file, model_weights=weights)
            # The document list is charged once parsed, at what it holds (below); its parse's
            # peak is charged beyond the reservations not yet in use.
            # Loading the lexical index peaks above what it keeps; that peak is freed before the
            # model, decoder, cache and query arrays are allocated, so it may use their reservations.
            loading = borrowed = 0
            if extracted_lexical:
                plan["lexical"] = TANTIVY_OVERHEAD_BYTES  # tantivy maps the store's files
            elif manifest.lexical is not None:
                loading = lexical_loading_bytes(manifest.lexical, _lexi_plaintext_bytes(
                    section_lengths["LEXI"], manifest.index.encryption))
                borrowed = min(loading, sum(plan[name] for name in _LOADED_AFTER_LEXICAL))
                plan["lexical"] -= borrowed
            return plan, loading, borrowed

        model_weights = "mapped" if options.model_weights == "mapped" else "packed"
        plan, lexical_loading, lexical_borrowed = plan_with(model_weights)
        available = budget.available_bytes
        if (options.model_weights == "auto" and embedder is None and available is not None
                and sum(plan.values()) > available and manifest.model.family == "onnx"):
            model_weights = "mapped"
            plan, lexical_loading, lexical_borrowed = plan_with(model_weights)
            log.info("capsule %s: the model's weights stay mapped (not prepacked) to fit the memory budget",
                     manifest.name)
        budget.acquire_all({prefix + name: n for name, n in plan.items()}, what=f"capsule {manifest.name}")
        if load_in_background:
            model_loading = QueryEmbedder.start_open(model_dir, **_embedder_options(manifest, n_threads,
                                                                                     model_weights))
        content_key = _unwrap_within_budget(manifest, identities, budget, prefix)
        keys = derive_keys(content_key, manifest.capsule_id_bytes)
        # Small sections are read once and parsed from the copy that was hashed.
        small = {tag: _read_section(cf, manifest, tag, verified_sections) for tag in ("DOCS", "FTAB", "ZDIC", "PROJ")}
        for tag in ("VECS", "INDX", "LEXI"):
            # Encrypted: hashed here, then read again through the AEAD. Plain and opened by path:
            # hashed while copied (_open_index), so what Annoy reads is what was hashed.
            if tag not in verified_sections and (manifest.index.encryption != "none" or owned_file):
                _compare_digest(cf.sha256(tag), manifest, tag)
        # The parse's transient peak may use what is reserved for the parts loaded after it.
        if installed is not None and installed.documents_table is not None:
            documents = _read_stored_documents(installed.documents_table, keys, manifest, budget=budget,
                                               reservation=prefix + "documents_inflate",
                                               reserved_unused=sum(plan[name] for name in _LOADED_AFTER_DOCUMENTS))
        else:
            documents = _read_documents(open_stream(keys.section("DOCS"), small["DOCS"]), manifest,
                                        budget=budget, reservation=prefix + "documents_inflate",
                                        reserved_unused=sum(plan[name] for name in _LOADED_AFTER_DOCUMENTS))
        held = documents.held_bytes()
        try:
            budget.acquire_all({prefix + "documents": held}, what=f"capsule {manifest.name}'s document list")
        except BudgetExceededError:
            # The model is not loaded yet: under "auto", its weights may still stay mapped.
            if not (options.model_weights == "auto" and model_weights == "packed" and embedder is None
                    and manifest.model.family == "onnx"):
                raise
            model_weights = "mapped"
            mapped_bytes = _model_bytes("onnx", "mapped", manifest.model.max_tokens)
            budget.release(prefix + "model", plan["model"] - mapped_bytes)
            plan["model"] = mapped_bytes
            # the lexical index's loading peak borrowed from the model's reservation: keep it covered
            short = lexical_borrowed - min(lexical_loading, sum(plan[name] for name in _LOADED_AFTER_LEXICAL))
            if short > 0:
                lexical_borrowed -= short
                plan["lexical"] += short
            budget.acquire_all({prefix + "documents": held, prefix + "lexical": max(short, 0)},
                               what=f"capsule {manifest.name}'s document list")
            log.info("capsule %s: the model's weights stay mapped (not prepacked) to fit the memory budget",
                     manifest.name)
        plan["documents"] = held
        frames = fmt.FrameTable.from_bytes(small["FTAB"], n_frames=manifest.video.n_frames,
                                           n_chunks=manifest.n_chunks, video_bytes=cf.sections["VIDE"].length)
        decompressor = _read_dictionary(small["ZDIC"], keys, manifest)
        _check_format_minor(cf, manifest)
        index = _open_index(cf, keys, manifest, small["PROJ"], index_path)
        lexical = _open_lexical(cf, keys, manifest, extracted=lexical_dir if extracted_lexical else None)
        if lexical is not None:
            # What only loading needed is freed once the engine holds its copy: keep what stays.
            budget.release(prefix + "lexical", lexical_loading - lexical_borrowed)
            plan["lexical"] -= lexical_loading - lexical_borrowed
        if model_loading is not None:
            pending, model_loading = model_loading, None
            try:
                embedder = own_embedder = pending.result()
            except ModelError:
                # model_dir was chosen by its SHA256SUMS alone: if its files differ, search on as
                # a confirming find_model_dir does (the digests it took are cached).
                confirmed = find_model_dir(manifest.model.sha256, model_search_path, family=manifest.model.family)
                if confirmed == model_dir:
                    raise
                embedder = own_embedder = QueryEmbedder.open(
                    confirmed, **_embedder_options(manifest, n_threads, model_weights))
        elif embedder is None:
            embedder = own_embedder = QueryEmbedder.open(model_dir,
                                                         **_embedder_options(manifest, n_threads, model_weights))
        if embedder.dim != manifest.model.dim:
            raise ModelError(f"model gives {embedder.dim}-d embeddings, capsule needs {manifest.model.dim}")
        # Opened by path, every sample is authenticated before a decoder sees it: VIDE is hashed
        # here and each sample is compared with its digest when it is read (FrameReader).
        sample_sha256 = None if owned_file else _hash_video(cf, manifest, frames)
        reader = FrameReader(cf.mapped_section("VIDE") if owned_file else cf.section("VIDE"),
                             extradata=manifest.video.extradata,
                             sample_offsets=frames.sample_offsets, sample_sizes=frames.sample_bytes,
                             codec=manifest.video.codec, prefer_hardware=prefer_hardware_decoder,
                             width=manifest.video.width, height=manifest.video.height, sample_sha256=sample_sha256)
    except BaseException as exc:
        if isinstance(exc, CapsuleError):
            log.warning("refused capsule %s: %s", cf.path, exc)
        if index is not None:
            index.close()
        if lexical is not None:
            lexical.close()
        if model_loading is not None:
            model_loading.discard()
        for name in plan:
            budget.release(prefix + name)
        cf.close()
        raise
    log.info("opened capsule %s v%d (%d chunks, decoder %s, %s reserved)", manifest.name, manifest.version,
             manifest.n_chunks, reader.decoder_name, format_mib(sum(plan.values())))
    if device is not None:
        policy = UsePolicy(manifest, rules, log=device, trusted_time=device.advance,
                           on_expired=lambda exc: device.capsule_expired(manifest, exc))
    else:
        policy = UsePolicy(manifest, rules, log=MemoryUseLog())
    capsule = Capsule(cf=cf, manifest=manifest, keys=keys, documents=documents, frames=frames, index=index,
                      lexical=lexical, reader=reader, embedder=embedder, owns_embedder=own_embedder is not None,
                      budget=budget, memory_plan=plan, reservation_prefix=prefix, frame_cache_bytes=frame_cache_bytes,
                      verified_at=now, decompressor=decompressor, policy=policy)
    if manifest.segments is not None and segment_of is None:
        try:
            capsule._attach_segments(_open_segments(manifest, installed=installed, options=options,
                                                    frame_cache_bytes=frame_cache_bytes, identities=identities,
                                                    budget=budget, now=now, embedder=embedder,
                                                    held=held_segments))
        except BaseException:
            capsule.close()
            raise
    return capsule


def _embedder_options(manifest: Manifest, n_threads: int, model_weights: str) -> dict[str, object]:
    """``QueryEmbedder.open``'s (and ``start_open``'s) keyword arguments for ``manifest``'s model."""
    return {"family": manifest.model.family, "expected_sha256": manifest.model.sha256, "n_threads": n_threads,
            "max_tokens": manifest.model.max_tokens, "prepack_weights": model_weights == "packed"}


def _open_segments(head: Manifest, *, installed: _InstalledObject | None, options: OpenOptions,
                   frame_cache_bytes: int, identities: Sequence[Identity], budget: MemoryBudget, now: datetime,
                   embedder: QueryEmbedder, held: Mapping[str, "tuple[Path, _InstalledObject]"] | None = None
                   ) -> list[Capsule]:
    """Open the earlier segments ``head`` pins, oldest first (FORMAT.md §4.7).

    Each one is found by its manifest digest (in the store's object, else among
    ``options.segment_files``), verified under that pin exactly as a capsule opened by the same
    route (sections hashed, every frame sample authenticated), and shares ``embedder``.

    Raises:
        DeltaBaseError: a pinned segment is not among the files (the base is not installed).
        Everything ``open_capsule`` raises, for the segment that fails; the ones opened are closed.
    """
    found: dict[str, tuple[Path, _InstalledObject | None]] = dict(installed.segments) if installed else {}
    for digest, item in (held or {}).items():
        found.setdefault(digest, item)
    for path in options.segment_files:
        try:
            with ContainerFile(path) as cf:
                digest = hashlib.sha256(cf.read("MANI")).hexdigest()
        except CapsuleError:
            continue  # not a capsule: it is simply not one of the segments
        found.setdefault(digest, (Path(path), None))
    opened: list[Capsule] = []
    segment_options = replace(options, frame_cache_bytes=frame_cache_bytes, segment_files=())
    try:
        for pin in head.segments.base:
            if pin.manifest_sha256 not in found:
                newest = head.segments.base[-1]
                raise DeltaBaseError(f"{head.name} v{head.version} is an update over v{newest.version}: its segment "
                                     f"from v{pin.version} (manifest {pin.manifest_sha256[:12]}) is not here; "
                                     f"install v{newest.version} first, or give its files",
                                     base_version=newest.version)
            path, verified = found[pin.manifest_sha256]
            pinned = (verified if verified is not None
                      else _InstalledObject(pin.manifest_sha256, frozenset(), None, by_path=True))
            segment = _open_capsule(path, trusted_keys=(), identities=identities, budget=budget, now=now,
                                    options=segment_options, installed=pinned, embedders={head.model.sha256: embedder},
                                    segment_of=head)
            opened.append(segment)
            if segment.manifest.version != pin.version or segment.manifest.n_chunks != pin.n_chunks:
                raise IntegrityError(f"segment {path} is v{segment.manifest.version} with {segment.manifest.n_chunks} "
                                     f"chunks; {head.name} v{head.version} pins v{pin.version} with {pin.n_chunks}")
            if segment.manifest.lexical is None and head.lexical is not None:
                raise IntegrityError(f"segment {path} has no lexical index, its version has one")
            if (segment.manifest.lexical is not None and head.lexical is not None
                    and segment.manifest.lexical.format != head.lexical.format):
                # BM25 scores of two engines do not compare: the merged ranking would be noise
                raise IntegrityError(f"segment {path} has a {segment.manifest.lexical.format} lexical index, "
                                     f"its version {head.lexical.format}")
    except BaseException:
        for segment in opened:
            segment.close()
        raise
    return opened


def _unwrap_within_budget(manifest: Manifest, identities: Sequence[Identity], budget: MemoryBudget,
                          prefix: str) -> bytes:
    """Unwrap the content key; scrypt's memory (128 * r * N bytes) is reserved while it runs."""
    scrypt_bytes = max((128 * 8 * (1 << s.log_n) for s in manifest.recipients if s.type == "scrypt"), default=0)
    if not any(isinstance(i, Passphrase) for i in identities):
        scrypt_bytes = 0
    with budget.reserve(prefix + "scrypt", scrypt_bytes):
        return unwrap_content_key(manifest, identities)


def _read_dictionary(section: bytes, keys: ContentKeys, manifest: Manifest):
    """Return the frame decompressor, with the ZDIC dictionary when there is one (FORMAT.md §5.4)."""
    if stream_plaintext_bytes(len(section)) != manifest.dictionary_bytes:
        raise CapsuleFormatError(f"dictionary section holds {stream_plaintext_bytes(len(section))} bytes, "
                                 f"manifest says {manifest.dictionary_bytes}")
    try:
        return zstd_decompressor(open_stream(keys.section("ZDIC"), section))
    except CapsuleError:
        raise
    except Exception as exc:  # noqa: BLE001 - zstd refuses a malformed dictionary in its own way
        raise CapsuleFormatError(f"dictionary is not a zstd dictionary ({type(exc).__name__})") from None


def _check_format_minor(cf: ContainerFile, manifest: Manifest) -> None:
    """Refuse a header minor version other than the one the capsule's index formats and fusion
    are written as (``fmt.format_minor_for``; FORMAT.md §2). A capsule with an Annoy index and no
    lexical index is read as 1.1 or 1.2 alike.

    Raises:
        CapsuleFormatError: the minor version does not match, or the formats do not go together.
    """
    lexical = manifest.lexical.format if manifest.lexical is not None else None
    if lexical is None and manifest.index.format == "annoy":
        return
    dense_first = manifest.lexical is not None and manifest.lexical.fusion.dense_first_margin > 0
    try:
        wanted_minor = fmt.format_minor_for(manifest.index.format, lexical, dense_first=dense_first)
    except ValueError as exc:
        raise CapsuleFormatError(str(exc)) from None
    if cf.header.format_minor != wanted_minor:
        what = ("fusion with dense_first_margin" if dense_first else
                "binary-codes index" if manifest.index.format == "binary-codes" else f"{lexical} lexical index")
        raise CapsuleFormatError(f"a {what} belongs in format {fmt.FORMAT_MAJOR}.{wanted_minor}, "
                                 f"this capsule is {fmt.FORMAT_MAJOR}.{cf.header.format_minor}")


def _open_index(cf: ContainerFile, keys: ContentKeys, manifest: Manifest, proj_section: bytes,
                index_path: Path | None) -> VectorIndex | BinaryCodeIndex:
    """Decrypt PROJ, VECS and INDX (lengths checked before anything is allocated); load the index.

    The bytes are already reserved by ``open_capsule``'s plan, so the index reserves nothing.
    An unencrypted index is copied into the index's memfd, and unencrypted VECS into memory,
    while they are hashed, unless ``cf`` is a mapped store object (then VECS is used in place
    and ``index_path`` is the store's extracted, verified copy).
    """
    info = manifest.index
    unreserved = MemoryBudget(None)
    expected_proj = 0 if info.projection is None else info.projection.plaintext_bytes
    if stream_plaintext_bytes(len(proj_section)) != expected_proj:
        raise CapsuleFormatError(f"projection section holds {stream_plaintext_bytes(len(proj_section))} bytes, "
                                 f"manifest needs {expected_proj}")
    projection = Projection.from_bytes(open_stream(keys.section("PROJ"), proj_section), info=info)
    vecs_length = cf.sections["VECS"].length
    index_length = cf.sections["INDX"].length
    if info.format == "binary-codes":
        return _open_binary_codes(cf, keys, manifest, projection, index_path)
    if info.encryption == "none":
        if vecs_length != info.vecs_plaintext_bytes:
            raise CapsuleFormatError(f"re-ranking vectors are {vecs_length} bytes, "
                                     f"manifest needs {info.vecs_plaintext_bytes}")
        if index_path is not None and os.stat(index_path).st_size != index_length:
            raise IntegrityError(f"index file {index_path} is {os.stat(index_path).st_size} bytes, "
                                 f"manifest says {index_length}")
        if cf.is_mapped:
            vecs = {"vecs_view": cf.mapped_section("VECS")} if info.projection is not None else {}
            segments: Iterable[bytes] = [] if index_path is not None else cf.iter_blocks("INDX")
        else:
            vecs = {"vecs_segments": _hashed_blocks(cf, manifest, "VECS")} if info.projection is not None else {}
            segments = _hashed_blocks(cf, manifest, "INDX")
            if info.projection is None:
                _compare_digest(cf.sha256("VECS"), manifest, "VECS")  # empty
        return VectorIndex.from_segments(segments, n_bytes=index_length, info=info, budget=unreserved,
                                         projection=projection, index_path=index_path, **vecs)
    if stream_plaintext_bytes(vecs_length) != info.vecs_plaintext_bytes:
        raise CapsuleFormatError(f"re-ranking vectors are {stream_plaintext_bytes(vecs_length)} bytes, "
                                 f"manifest needs {info.vecs_plaintext_bytes}")
    vecs_section = cf.section("VECS")
    if info.projection is None:
        open_stream(keys.section("VECS"), vecs_section)  # authenticate the empty section
        vecs = {}
    else:
        vecs = {"vecs_segments": iter_open_stream(keys.section("VECS"), vecs_section)}
    return VectorIndex.from_segments(iter_open_stream(keys.section("INDX"), cf.section("INDX")),
                                     n_bytes=stream_plaintext_bytes(index_length), info=info, budget=unreserved,
                                     projection=projection, **vecs)


def _open_binary_codes(cf: ContainerFile, keys: ContentKeys, manifest: Manifest, projection: Projection,
                       index_path: Path | None) -> BinaryCodeIndex:
    """Load a ``binary-codes`` index (FORMAT.md §4.4.1): lengths checked before anything is allocated;
    unencrypted codes and rows are mapped in place from a store object, else copied while hashed."""
    info = manifest.index
    if index_path is not None:
        raise IntegrityError(f"index file {index_path} was given for a capsule whose index is binary codes "
                             "(a file planted beside it?); refusing both")
    unreserved = MemoryBudget(None)
    encrypted = info.encryption != "none"
    lengths = {tag: cf.sections[tag].length for tag in ("VECS", "INDX")}
    for tag, wanted, what in (("VECS", info.vecs_plaintext_bytes, "re-ranking vectors"),
                              ("INDX", info.codes_plaintext_bytes, "binary codes")):
        held = stream_plaintext_bytes(lengths[tag]) if encrypted else lengths[tag]
        if held != wanted:
            raise CapsuleFormatError(f"{what} are {held} bytes, manifest needs {wanted}")
    if encrypted:
        return BinaryCodeIndex.from_segments(
            iter_open_stream(keys.section("INDX"), cf.section("INDX")), info=info, budget=unreserved,
            projection=projection, vecs_segments=iter_open_stream(keys.section("VECS"), cf.section("VECS")))
    if cf.is_mapped:
        return BinaryCodeIndex.from_segments(None, codes_view=cf.mapped_section("INDX"), info=info,
                                             budget=unreserved, projection=projection,
                                             vecs_view=cf.mapped_section("VECS"))
    return BinaryCodeIndex.from_segments(_hashed_blocks(cf, manifest, "INDX"), info=info, budget=unreserved,
                                         projection=projection, vecs_segments=_hashed_blocks(cf, manifest, "VECS"))


def _lexi_plaintext_bytes(section_length: int, encryption: str) -> int:
    """The LEXI section's plaintext length: the section itself, or what its STREAM holds."""
    return section_length if encryption == "none" else stream_plaintext_bytes(section_length)


def _open_lexical(cf: ContainerFile, keys: ContentKeys, manifest: Manifest,
                  extracted: Path | None = None) -> LexicalEngine | None:
    """Authenticate LEXI and open it (``None`` when the manifest has no lexical index).

    ``extracted``: the folder a device store unpacked this (unencrypted, ``tantivy-7``) LEXI
    into at install; its files are checked again and mapped by tantivy instead.

    Encrypted (``index.encryption`` not ``none``): LEXI was hashed against the manifest by the
    caller and is read again through the AEAD. Plain: hashed while it is read. Its length is
    checked against the manifest before a byte is collected; the engine sees the bytes only after
    its own checks (FORMAT.md §5.5 SQLite header, §5.6 archive, meta.json and footers).
    """
    info = manifest.lexical
    length = cf.sections["LEXI"].length
    encrypted = manifest.index.encryption != "none"
    if info is None:
        if length != (16 if encrypted else 0):
            raise CapsuleFormatError(f"lexical section is {length} bytes, but the manifest has no lexical index")
        if encrypted:
            open_stream(keys.section("LEXI"), cf.section("LEXI"))  # authenticate the empty section
        return None
    if extracted is not None:
        from .lexical_tantivy import TantivyLexicalIndex

        if info.n_rows != manifest.n_chunks:
            raise CapsuleFormatError(f"lexical index has {info.n_rows} rows, capsule has {manifest.n_chunks} chunks")
        return TantivyLexicalIndex.open_extracted(extracted, info=info, n_chunks=manifest.n_chunks)
    plaintext_bytes = _lexi_plaintext_bytes(length, manifest.index.encryption)
    if info.format == "sqlite-fts5" and plaintext_bytes != info.plaintext_bytes:
        raise CapsuleFormatError(f"lexical section holds {plaintext_bytes} bytes, manifest says {info.plaintext_bytes}")
    if encrypted:
        blocks = iter_open_stream(keys.section("LEXI"), cf.section("LEXI"))
    elif cf.is_mapped:
        blocks = cf.iter_blocks("LEXI")
    else:
        blocks = _hashed_blocks(cf, manifest, "LEXI")
    return open_lexical_index(blocks, info=info, n_chunks=manifest.n_chunks, section_bytes=plaintext_bytes)


#: Plan components reserved at open but allocated only after DOCS is parsed (``_open_capsule``'s
#: order: documents, frame table, dictionary, index, vecs, projection, lexical, model, decoder;
#: the cache and query arrays at the first search).
_LOADED_AFTER_DOCUMENTS = ("index", "vecs", "projection", "lexical", "model", "frame_decoder", "frame_cache",
                           "query")
#: Plan components allocated only after the lexical index is loaded.
_LOADED_AFTER_LEXICAL = ("model", "frame_decoder", "frame_cache", "query")


def _read_documents(sealed_plaintext: bytes, manifest: Manifest, *, budget: MemoryBudget,
                    reservation: str, reserved_unused: int = 0) -> DocumentTable:
    """Inflate DOCS and parse it, in batches of entries, into a ``DocumentTable``.

    The size the zstd header declares, bounded by ``n_documents``, is checked and the parse's
    peak (``DOCS_TABLE_PEAK_FACTOR`` times it, plus ``DOCS_TABLE_BASE_BYTES``) is charged to
    ``budget`` before anything is inflated; it stays charged until the table is built. An entry
    over ``DOCS_SMALL_ENTRY_BYTES`` is charged ``JSON_PARSE_PEAK_FACTOR`` times its length
    while it is parsed. ``reserved_unused``: bytes this open has reserved but not yet allocated
    (the parts loaded after the documents); the peak is charged only beyond them, since it is
    freed before they are allocated. SciFact (858 kB of DOCS): 5.3 MiB charged, a 1.7 MiB peak
    measured by tracemalloc with the plaintext (the whole list parsed at once peaked at 9.3 MiB
    and was charged 26.2); the table keeps 0.53 MiB."""
    limit = docs_plaintext_limit(manifest.n_documents, fmt.MAX_DOCS_PLAINTEXT_BYTES, manifest.n_chunks)
    declared = zstd_content_size(sealed_plaintext, limit, what="document list")
    peak = DOCS_TABLE_PEAK_FACTOR * declared + DOCS_TABLE_BASE_BYTES
    with budget.reserve(reservation, max(0, peak - reserved_unused)):
        plaintext = decompress_bounded(sealed_plaintext, declared,
                                       zstd_decompressor(max_window_bytes=MAX_DOCS_WINDOW_BYTES),
                                       what="document list", require_content_size=True)
        try:
            return parse_document_table(plaintext, n_documents=manifest.n_documents, n_chunks=manifest.n_chunks,
                                        reserve_entry=lambda n: budget.reserve(reservation + "_entry", n))
        except MemoryError:
            raise BudgetExceededError(f"parsing the {declared}-byte document list ran out of memory",
                                      requested_bytes=peak, available_bytes=0) from None


def _read_stored_documents(path: Path, keys: ContentKeys, manifest: Manifest, *, budget: MemoryBudget,
                           reservation: str, reserved_unused: int = 0) -> DocumentTable:
    """Read the document list a device store parsed and sealed at install (``documents.table``,
    FORMAT.md §13.8) instead of inflating and parsing DOCS: its tag is checked before any of it
    is read as a table, and the table's columns are checked against the manifest.

    Its size is bounded first (the columns take at most ``DOCS_TABLE_PEAK_FACTOR`` times the
    largest DOCS the manifest allows), and twice its size (the file, and the columns copied out
    of it; the tag is checked over a view of the file) is charged as the parse's peak is. 41,464 documents (SciFact x8): 0.4 ms to read
    the 3.4 MB of columns, against 131 ms to parse the 7.2 MB of DOCS (AMD EPYC, 2026-12-08).

    Raises:
        IntegrityError: the file is too large, or its tag does not match (changed, or another
            capsule's).
        CapsuleFormatError: the authenticated columns do not make this manifest's table.
    """
    from .hits import table_columns_from_bytes
    from .sealed import open_store_table

    limit = DOCS_TABLE_PEAK_FACTOR * docs_plaintext_limit(manifest.n_documents, fmt.MAX_DOCS_PLAINTEXT_BYTES,
                                                          manifest.n_chunks) + DOCS_TABLE_BASE_BYTES
    try:
        file = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW))
    except OSError as exc:
        raise IntegrityError(f"cannot read the store's document table {path}: {exc.strerror}") from None
    with file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise IntegrityError(f"the store's document table {path} is {size} bytes, more than the {limit} "
                                 "its capsule's documents can take")
        with budget.reserve(reservation, max(0, 2 * size - reserved_unused)):
            data = file.read(size + 1)
            return table_columns_from_bytes(open_store_table(data, keys, manifest),
                                            n_documents=manifest.n_documents, n_chunks=manifest.n_chunks)


@dataclass
class VerifyReport:
    """What ``verify_capsule`` checked.

    Attributes:
        manifest: the verified manifest.
        full: whether the MP4 was hashed (and frames decoded, when an identity was given).
        n_frames_checked: frames decoded and authenticated (0 without identities).
        n_chunks_checked: chunk records read from those frames.
    """

    manifest: Manifest
    full: bool
    n_frames_checked: int = 0
    n_chunks_checked: int = 0
    notes: list[str] = field(default_factory=list)


def verify_capsule(
    path: str | os.PathLike[str],
    *,
    trusted_keys: Sequence[Ed25519PublicKey],
    identities: Sequence[Identity] = (),
    now: datetime | None = None,
    full: bool = True,
    progress: Callable[[int, int], None] | None = None,
    options: OpenOptions | None = None,
    device_rules: bool = True,
) -> VerifyReport:
    """Check a capsule without searching it; return what was checked.

    Without identities it checks everything a key is not needed for: header, table,
    signatures, manifest, validity, rules and every section digest (``full``). With
    identities it also opens the capsule and, when ``full``, decodes every frame and
    authenticates every payload.

    Args:
        path, trusted_keys, identities, now: as for ``open_capsule``.
        full: also hash ``VIDE`` and, with identities, decode and authenticate every frame.
        progress: optional callable ``progress(n_frames_done, n_frames)``.
        options: as for ``open_capsule`` (threshold, device, model path); the decoder is
            software and the frame cache off whatever they say.
        device_rules: ``False`` skips the rules that bind a capsule to a device (``devices``,
            ``min_runtime``): for the publisher's self-check after a build, never on a device.

    Raises:
        Everything ``open_capsule`` raises, plus ``FrameDecodeError``/``DecryptionError``
        for a frame that does not decode or authenticate (``full`` with identities).

    Source: FORMAT.md §11 (full verify).
    """
    now = utc_now(now)
    options = options if options is not None else OpenOptions()
    threshold, device = options.threshold, options.device
    if not device_rules and identities:
        raise ValueError("device_rules=False is for a publisher's self-check, without identities")
    if not identities:
        cf = ContainerFile(path)
        try:
            manifest, _ = _check_trust(cf, trusted_keys=trusted_keys, threshold=threshold, device=device, now=now,
                                       identities=identities, device_rules=device_rules)
            for tag in fmt.HASHED_SECTIONS if full else fmt.HASHED_SECTIONS[:-1]:
                _compare_digest(cf.sha256(tag), manifest, tag)
            return VerifyReport(manifest, full, notes=["no identity given: frames not decrypted"])
        except CapsuleError as exc:
            log.warning("refused capsule %s: %s", cf.path, exc)
            raise
        finally:
            cf.close()
    capsule = open_capsule(path, trusted_keys=trusted_keys, identities=identities, now=now,
                           options=replace(options, prefer_hardware_decoder=False, frame_cache_bytes=0))
    try:
        report = VerifyReport(capsule.manifest, full)
        if full:
            report.n_frames_checked, report.n_chunks_checked = capsule.check_frames(progress)
        return report
    except CapsuleError as exc:
        log.warning("refused capsule %s: %s", capsule.path, exc)
        raise
    finally:
        capsule.close()


__all__ = ["Capsule", "Document", "Hit", "OpenOptions", "StageTimings", "VerifyReport", "open_capsule",
           "verify_capsule"]
