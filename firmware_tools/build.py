"""Build a capsule: documents -> chunks -> embeddings -> sealed QR frames -> MP4 + index -> signed file.

The pipeline (FORMAT.md §1):

1. read documents (``documents.py``) and chunk them in model tokens (``chunking.py``);
2. embed every chunk with the quantized model the runtime uses (``edge.embedder``);
3. pack chunk records into frames, compress + encrypt each frame (``sealing.py``);
4. draw each frame payload as a QR code and encode an all-intra H.264 MP4 (``qr_video.py``);
5. decode every frame of that MP4 and check every payload byte-exact (a build error names the frame);
6. build the Annoy index and encrypt it; encrypt the document list; write the frame table;
7. write and sign the manifest, assemble the file in a temporary file beside the output,
   re-verify it with the runtime (``edge.verify_capsule``), and rename it into place.

Intermediate files (chunk text, vectors, the video before it is placed) live only in a private
folder under ``$TMPDIR`` (``tempfile.mkdtemp``, mode 0700, files 0600), never on the output's
medium; the output directory only ever sees the sealed capsule, as a mode-0600 temporary file
renamed into place. The folder is removed on every exit path except SIGKILL, which leaves
``$TMPDIR/firmware-tools-build-*`` behind (local disk, owner-only).

A failed build leaves no file at the output path. The same documents, keys, seed and
``issued_at`` give a byte-identical capsule.

Example::

    result = build_capsule([Path("docs/")], Path("manual.capsule"), signing_key=key,
                           recipients=[device_pub], expires_at=datetime(2027, 1, 1, tzinfo=timezone.utc))
    print(result.n_chunks, result.file_bytes)

Source: FORMAT.md.

Size: ~850 lines because the build is one pipeline over one private work folder with one
cleanup path and one place where a failure becomes a ``BuildError``; its stages live in
``chunking``, ``sealing``, ``qr_video``, ``mp4_writer`` and ``edge``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge import format as fmt
from edge.embedder import DEFAULT_MODEL_NAME, QueryEmbedder, check_device, find_model_dir
from edge.errors import CapsuleError
from edge.keys import Passphrase, keyid
from edge._files import atomic_replace
from edge.clock import utc_now
from edge.manifest import (FORMAT_ID, LEXICAL_NORMALISERS, MAX_DENSE_FIRST_MARGIN, SegmentsInfo, canonical_json,
                           format_time, segments_to_json, signatures_to_bytes, stanza_to_json)
from edge.hits import MAX_HEADING_CHARS, MAX_HEADINGS_PER_DOCUMENT, Document, documents_to_bytes
from edge.sealed import MAX_HEADING_BYTES_PER_CHUNK, derive_keys, seal_stream

from .delta import BaseVersion

if TYPE_CHECKING:
    from edge.hits import Hit

    from .compact import CompactedDocument

from . import __version__
from .chunking import Chunk, TokenizerOffsets, chunk_documents
from .documents import iter_documents, parse_document, plan_documents, read_document_bytes
from .container_writer import section_bytes, write_container
from ._spool import ByteSpool, VectorSpool, file_segments, write_blocks
from ._workers import cluster_map, connect_cluster, ordered_map
from .embedding import ChunkEmbedder
from .errors import BuildError, CapacityError, FrameCheckError, InputDocumentError
from .lexical_writer import lexical_writer
from .index_builder import (
    DEFAULT_ANN_DIM,
    DEFAULT_CODE_BITS,
    DEFAULT_N_CANDIDATES,
    DEFAULT_N_CANDIDATES_CODES,
    DEFAULT_REFINE_DIM,
    DEFAULT_SEARCH_K_FULL,
    DEFAULT_SEARCH_K_PROJECTED,
    DEFAULT_TREES_FULL,
    DEFAULT_TREES_PROJECTED,
    MIN_CHUNKS_FOR_PROJECTION,
    build_index,
)
from .qr_video import DEFAULT_VIDEO_PARAMS, VideoParams, check_mp4, encode_mp4_file
from .sealing import (
    PAYLOAD_ZSTD_LEVEL,
    FramePacker,
    Randomness,
    compress_documents,
    derive_content_key,
    encode_record,
    payload_compressor,
    seal_frame,
    sign_manifest,
    train_payload_dictionary,
    wrap_for_device,
    wrap_for_passphrase,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 32
DEFAULT_INDEX_SEED = 42
#: Hybrid search's fusion (manifest ``lexical.fusion``): RRF k = 5, dense weighted 3 to the
#: lexical 2, the top 20 of each ranking, identifiers first only in queries of at most 3 tokens.
#: Chosen by the joint sweep of bench/bench_hybrid.py over tantivy-7 capsules on development
#: splits of SciFact, the Python FAQ and PostgreSQL identifiers (225 settings, criterion fixed
#: before the test figures; bench/HYBRID.md). Held out: SciFact nDCG@10 0.699 (dense 0.656),
#: FAQ nDCG@10 0.855 (dense 0.874), identifiers top-1 0.957 (dense 0.478).
DEFAULT_FUSION = {"method": "rrf", "k": 5, "dense_weight": 3, "lexical_weight": 2, "depth": 20,
                  "exact_first_max_tokens": 3}
#: ``lexical.fusion.dense_first_margin`` a tantivy-7 build writes unless told otherwise (format
#: 1.4): the dense ranking's first chunk goes first when its cosine leads the second's by 0.080
#: and no exact identifier match goes first. Chosen by the same criterion on the same development
#: splits over margins 0.04-0.20 (bench/HYBRID.md, "Dense first"); held out: FAQ nDCG@10 0.855 ->
#: 0.868 (dense 0.874), SciFact and identifiers unchanged. 0 writes no margin (format 1.2/1.3, for
#: runtimes older than 1.4).
DEFAULT_DENSE_FIRST_MARGIN = 80
#: The lexical index a build writes unless told otherwise (FORMAT.md §5.6; bench/LEXICAL_ENGINES.md:
#: a third of FTS5's bytes, a tenth of its query time, and better BM25 with ident-v2's stemming).
DEFAULT_LEXICAL_ENGINE = "tantivy-7"
MAX_FRAME_PLAINTEXT_BYTES = 64 * 1024
#: Chunks embedded per block of the streaming build (memory: their texts and vectors).
_EMBED_BLOCK_CHUNKS = 1024

Progress = Callable[[str, int, int | None], None]


@dataclass
class BuildResult:
    """What a build produced.

    Attributes:
        path: the capsule written.
        capsule_id, version: identity of the capsule.
        n_documents, n_chunks, n_frames: counts.
        section_bytes: length of every section in bytes.
        file_bytes: total capsule size.
        raw_text_bytes: UTF-8 bytes of all document texts (for size ratios).
        payload_bytes: total bytes carried in QR codes.
        stage_s: seconds per build stage.
        n_embedded: chunks embedded by the model (the rest came from the embedding cache).
    """

    path: Path
    capsule_id: str
    version: int
    n_documents: int
    n_chunks: int
    n_frames: int
    section_bytes: dict[str, int]
    file_bytes: int
    raw_text_bytes: int
    payload_bytes: int
    stage_s: dict[str, float] = field(default_factory=dict)
    n_embedded: int = 0


@dataclass
class _DocumentMeta:
    """What the build keeps of a document once its chunks are spooled."""

    name: str
    n_bytes: int
    media_type: str
    sha256: str
    headings: tuple = ()
    n_chunks: int = 0


def derive_capsule_id(publisher_keyid: str, name: str) -> str:
    """Return the default capsule id: stable per (publisher key, capsule name), 32 hex chars."""
    return hashlib.sha256(f"edge-capsule/v1/capsule-id\0{publisher_keyid}\0{name}".encode()).hexdigest()[:32]


def build_capsule(
    inputs: Sequence[Path],
    output: Path,
    *,
    signing_key: Ed25519PrivateKey,
    recipients: Sequence[X25519PublicKey] = (),
    passphrase: Passphrase | None = None,
    expires_at: datetime,
    not_before: datetime | None = None,
    issued_at: datetime | None = None,
    version: int = 1,
    name: str | None = None,
    capsule_id: str | None = None,
    publisher_name: str = "",
    rules: dict | None = None,
    model_dir: Path | None = None,
    model_family: str = "onnx",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    n_trees: int | None = None,
    search_k: int | None = None,
    index_seed: int = DEFAULT_INDEX_SEED,
    projection: bool | None = None,
    ann_dim: int | None = None,
    refine_dim: int = DEFAULT_REFINE_DIM,
    n_candidates: int | None = None,
    index_format: str | None = None,
    encrypt_index: bool = True,
    video_params: VideoParams = DEFAULT_VIDEO_PARAMS,
    seed: bytes | None = None,
    scrypt_log_n: int = 15,
    n_threads: int | None = None,
    embedding_cache: Path | None = None,
    zstd_level: int = PAYLOAD_ZSTD_LEVEL,
    progress: Progress | None = None,
    base: BaseVersion | None = None,
    append: bool = False,
    prechunked: Iterable[tuple[CompactedDocument, Sequence[Hit]]] | None = None,
    cluster: str | None = None,
    lexical_engine: str | None = None,
    dense_first_margin: int | None = None,
    device: str = "cpu",
) -> BuildResult:
    """Build, check and atomically write a signed, encrypted capsule.

    Args:
        inputs: files and directories (.txt .md .rst .html .htm .pdf).
        output: capsule path; written only if the whole build succeeds.
        signing_key: the publisher's Ed25519 private key.
        recipients: device X25519 public keys that may open the capsule.
        passphrase: optional passphrase that also opens it (scrypt stanza).
        expires_at, not_before, issued_at: timezone-aware; ``not_before`` defaults to
            ``issued_at``, which defaults to the clock (or ``SOURCE_DATE_EPOCH``).
        version: capsule version, >= 1; devices refuse older versions of an id.
        name: capsule name; defaults to the output file's stem.
        capsule_id: 32 hex chars; defaults to ``derive_capsule_id(publisher, name)``.
        rules: the manifest's ``rules`` object (FORMAT.md §4.2).
        model_dir: folder of the quantized model; default: the installed one.
        model_family: ``"onnx"`` (default) or ``"tflite"``: which model file embeds the chunks,
            recorded as manifest ``model.family``; devices then need that family's engine
            (FORMAT.md §4.3).
        max_tokens, overlap_tokens: chunk size and overlap in model tokens.
        n_trees, search_k, index_seed: Annoy parameters; ``None`` picks the measured default
            for the index kind (16 trees / 4000 without projection, 8 / 8000 with).
        projection: PCA-project the embeddings (candidates from the first ``ann_dim``
            coordinates, int8 re-ranking over ``refine_dim``); ``None`` does so from 2048 chunks up.
        index_format: ``"binary-codes"`` (an exhaustive Hamming scan over ``ann_dim``-bit sign
            codes, FORMAT.md §4.4.1; needs the projection) or ``"annoy"``. ``None``: binary codes
            whenever the embeddings are projected (a delta: its base's format), else Annoy.
        ann_dim: Annoy dimension (default 64) or bits per code (default 128, a multiple of 64).
        n_candidates: candidates re-ranked per query with projection (default 200 for Annoy,
            400 for binary codes: bench/INDEX_SIZE.md).
        encrypt_index: encrypt INDX (default; FORMAT.md §4.4 explains the trade-off).
        video_params: QR and H.264 parameters.
        seed: bytes for reproducible builds; ``None`` takes randomness from the OS.
        n_threads: embedding worker processes, one onnxruntime thread each (default: all cores).
        embedding_cache: SQLite file of chunk vectors reused across builds (created if missing).
        zstd_level: zstd level of the frame payloads, 1..22 (default ``PAYLOAD_ZSTD_LEVEL``, 15:
            measured against 19, 9 and 3 in ``firmware_tools/sealing.py``). Readers do not depend
            on it.
        progress: ``progress(stage, done, total)`` callback.
        base: build a delta over this version (``firmware_tools.delta.read_base``): only the
            documents that are new or changed since it become the new segment; the base's chunks
            of changed and removed documents are tombstoned (FORMAT.md §4.7). ``name`` and
            ``capsule_id`` are the base's; ``version`` must be higher than the base's.
        append: with ``base``, keep the base's documents that the inputs do not name (grow the
            capsule by the inputs; ``firmware-tools append``) instead of removing them.
        prechunked: documents already chunked, instead of ``inputs`` (``firmware_tools.compact``:
            the live chunks of a version, packed again without re-chunking); ``inputs`` is then
            ignored and ``max_tokens``/``overlap_tokens`` are recorded as given.
        cluster: a Dask distributed scheduler (``tcp://HOST:PORT``, ``tls://...``) or a connected
            ``distributed.Client``: shards of documents are parsed and chunked
            (``_parse_and_chunk``), the chunks embedded (``embedding.ClusterPool``), packed into
            frames (``_pack_segment``) and their sealed payloads drawn as QR codes
            (``qr_video._render_batch``) on its workers (``_workers.cluster_map``); reading the
            files, sealing, the H.264 encode, the frame check, the indexes and signing stay in
            this process, and so do the keys. The workers need the model folder at the same path.
            The output is byte-identical to a local build when the workers' CPUs round the int8
            model as this one does (vectors/README.md explains when they do not).
        lexical_engine: the lexical index's format: ``"tantivy-7"`` (the default: FORMAT.md §5.6,
            capsule format 1.2) or ``"sqlite-fts5"`` (§5.5, format 1.1, for devices whose runtime
            reads 1.1 only); ``None`` takes the default, or the base's format for a delta.
        dense_first_margin: hybrid search puts a dense answer first when its cosine leads the
            next by this many thousandths (manifest ``lexical.fusion.dense_first_margin``,
            FORMAT.md §4.6), 0..1000; 0 turns it off and keeps the capsule readable by runtimes
            older than format 1.4. ``None``: ``DEFAULT_DENSE_FIRST_MARGIN`` (80) with tantivy-7,
            0 with sqlite-fts5 (format 1.1 has no such rule).
        device: where onnxruntime embeds the chunks: ``"cpu"`` (the default), ``"cuda"``,
            ``"openvino"`` or ``"coreml"`` (``edge.embedder.EXECUTION_PROVIDERS``; the provider's
            onnxruntime package installed in place of ``onnxruntime``). The model's known-answer
            check holds its vectors to cos >= 0.98 of the reference; they differ from the CPU's
            within that, so a build on another device is not byte-identical to a CPU build, and
            the embedding cache keeps the two apart. ``onnx`` family only.

    Returns:
        A ``BuildResult``.

    Raises:
        InputDocumentError: a document is missing, unreadable or unsupported.
        CapacityError: a chunk does not fit a QR symbol.
        FrameCheckError: a frame did not decode back byte-exact.
        BuildError: any other reason the build stopped; no output is left behind.
        ModelError: ``device``'s execution provider is not in this onnxruntime (before anything
            is read), or the model does not load or fails its known-answer check.
        ValueError: inconsistent arguments (no recipients, bad dates, bad name, unknown device).
    """
    check_device(device, model_family)  # before any document is read: a missing provider says so at once
    if not recipients and passphrase is None:
        raise ValueError("give at least one recipient device key or a passphrase")
    if recipients and passphrase is not None:
        raise ValueError("a passphrase capsule has no other recipients: a scrypt stanza must be the only stanza "
                         "(FORMAT.md §7, as age); build one capsule per way in")
    issued_at = issued_at or _default_issued_at()
    not_before = not_before or issued_at
    for label, value in (("expires_at", expires_at), ("not_before", not_before), ("issued_at", issued_at)):
        if value.tzinfo is None:
            raise ValueError(f"{label} must be timezone-aware")
    if expires_at <= not_before:
        raise ValueError(f"expires_at {format_time(expires_at)} is not after not_before {format_time(not_before)}")
    if version < 1:
        raise ValueError("version must be >= 1")
    if not 1 <= zstd_level <= 22:
        raise ValueError(f"zstd_level must be in 1..22, got {zstd_level}")
    if index_format not in (None, "annoy", "binary-codes"):
        raise ValueError(f"index_format must be annoy or binary-codes, got {index_format!r}")
    if index_format == "binary-codes":
        if projection is False:
            raise ValueError("a binary-codes index re-ranks projected int8 rows: it needs the projection")
        if ann_dim is not None and (ann_dim <= 0 or ann_dim % 64 or ann_dim > refine_dim):
            raise ValueError(f"binary codes are whole 64-bit words of at most refine_dim {refine_dim} bits, "
                             f"not {ann_dim}")
        if lexical_engine == "sqlite-fts5":
            raise ValueError("a binary-codes index goes with the tantivy-7 lexical index (format 1.3), not sqlite-fts5")
    if lexical_engine not in (None, *LEXICAL_NORMALISERS):
        raise ValueError(f"lexical_engine must be one of {', '.join(LEXICAL_NORMALISERS)}, got {lexical_engine!r}")
    if base is not None and base.lexical_format is not None:
        if lexical_engine not in (None, base.lexical_format):
            raise ValueError(f"a delta keeps its base's lexical index format ({base.lexical_format}): BM25 scores of "
                             "two engines do not compare")
        lexical_engine = base.lexical_format
    lexical_engine = lexical_engine or DEFAULT_LEXICAL_ENGINE
    if dense_first_margin is None:
        dense_first_margin = DEFAULT_DENSE_FIRST_MARGIN if lexical_engine == "tantivy-7" else 0
    if not 0 <= dense_first_margin <= MAX_DENSE_FIRST_MARGIN:
        raise ValueError(f"dense_first_margin must be in 0..{MAX_DENSE_FIRST_MARGIN}, got {dense_first_margin}")
    if dense_first_margin and lexical_engine != "tantivy-7":
        raise ValueError("dense_first_margin needs the tantivy-7 lexical index (format 1.4), not sqlite-fts5")
    output = Path(output)
    if base is not None:
        if version <= base.version:
            raise ValueError(f"a delta over v{base.version} needs a higher version, got {version}")
        if name not in (None, base.name) or capsule_id not in (None, base.capsule_id):
            raise ValueError(f"a delta keeps its base's name and id ({base.name}, {base.capsule_id})")
        name, capsule_id = base.name, base.capsule_id
    name = name or output.name.split(".")[0]
    publisher_keyid = keyid(signing_key.public_key())
    capsule_id = capsule_id or derive_capsule_id(publisher_keyid, name)
    if len(capsule_id) != 32 or any(c not in "0123456789abcdef" for c in capsule_id):
        raise ValueError("capsule_id must be 32 lowercase hex digits")
    capsule_id_bytes = bytes.fromhex(capsule_id)
    rng = Randomness(seed)
    report = progress or (lambda stage, done, total: None)

    if output.is_dir():  # refused before any work, not after the whole build at the final rename
        raise BuildError(f"cannot write {output}: it is a folder; give a capsule file path")
    # Only the sealed capsule ever touches the output's directory (a 0600 temporary file that
    # replaces the output atomically, or is removed on any failure: edge._files.atomic_replace).
    try:
        with _cluster_client(cluster) as client, atomic_replace(output, mode=0o600) as tmp_capsule, \
                _private_work_dir() as work:
            result = _build_into(
                tmp_capsule, work, inputs=inputs, signing_key=signing_key, recipients=recipients,
                passphrase=passphrase, expires_at=expires_at, not_before=not_before, issued_at=issued_at,
                version=version, name=name, capsule_id=capsule_id, capsule_id_bytes=capsule_id_bytes,
                publisher_keyid=publisher_keyid, publisher_name=publisher_name, rules=rules, model_dir=model_dir,
                max_tokens=max_tokens, overlap_tokens=overlap_tokens, n_trees=n_trees, search_k=search_k,
                index_seed=index_seed, projection=projection, ann_dim=ann_dim, refine_dim=refine_dim,
                n_candidates=n_candidates, index_format=index_format, encrypt_index=encrypt_index,
                video_params=video_params, rng=rng,
                scrypt_log_n=scrypt_log_n, n_workers=n_threads or os.cpu_count() or 1,
                embedding_cache=embedding_cache, report=report, model_family=model_family,
                zstd_level=zstd_level, base=base, append=append, prechunked=prechunked, cluster=client,
                lexical_engine=lexical_engine, dense_first_margin=dense_first_margin, device=device)
    except FileNotFoundError as exc:
        raise BuildError(f"cannot write {output}: {exc.strerror}") from None
    result.path = output
    result.file_bytes = output.stat().st_size
    return result


@contextlib.contextmanager
def _cluster_client(cluster) -> Iterator[object]:
    """Yield a ``distributed.Client`` for the whole build (connected here when ``cluster`` is an
    address, and closed after), the caller's client, or ``None`` for a local build."""
    if not isinstance(cluster, str):
        yield cluster
        return
    client = connect_cluster(cluster)
    try:
        yield client
    finally:
        client.close()


#: Prefix of the private spool folder in the temporary directory (``$TMPDIR``, else ``/tmp``).
WORK_DIR_PREFIX = "firmware-tools-build-"


@contextlib.contextmanager
def _private_work_dir() -> Iterator[Path]:
    """Yield a private spool folder on local temporary storage, removed on exit.

    The spool holds every chunk's plaintext (records, payloads before sealing, vectors), so it is
    never beside the output (which may be a USB stick): it is ``tempfile.mkdtemp`` in
    ``$TMPDIR`` (else ``/tmp``), mode 0700, its files mode 0600. It is removed on every exit
    Python sees (success, error, Ctrl-C, and SIGTERM/SIGHUP through the CLI). A SIGKILL leaves
    it behind as ``$TMPDIR/firmware-tools-build-*``: local disk, readable only by this user.
    """
    work = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_into(tmp_capsule: Path, work: Path, *, inputs, signing_key, recipients, passphrase, expires_at,
                not_before, issued_at, version, name, capsule_id, capsule_id_bytes, publisher_keyid, publisher_name,
                rules, model_dir, max_tokens, overlap_tokens, n_trees, search_k, index_seed, projection, ann_dim,
                refine_dim, n_candidates, index_format, encrypt_index, video_params, rng, scrypt_log_n, n_workers,
                embedding_cache, report, model_family="onnx", zstd_level=PAYLOAD_ZSTD_LEVEL,
                base: BaseVersion | None = None, append: bool = False, prechunked=None,
                cluster: str | None = None, lexical_engine: str = "tantivy-7", dense_first_margin: int = 0,
                device: str = "cpu") -> BuildResult:
    """The build pipeline; every large intermediate is a file in ``work``."""
    stage_s: dict[str, float] = {}

    # 1. documents -> chunks -> records and embeddings, streamed in blocks
    t = time.perf_counter()
    model_dir = model_dir or find_model_dir(family=model_family)
    embedder_info = QueryEmbedder.open(model_dir, family=model_family, n_threads=1)
    tokenizer_path = embedder_info.model_path.parent / "tokenizer.json"
    offsets = TokenizerOffsets.from_file(tokenizer_path)
    docs: list = []
    raw_text_bytes = 0
    seen: set[str] = set()  # documents of the inputs that the base holds (a delta build)
    replaced: list[str] = []  # base documents this version changes

    def changed(name: str, sha256: str) -> bool:
        """Whether a document goes into this build (a delta build skips those the base holds)."""
        if base is not None and name in base.documents:
            seen.add(name)
            if base.documents[name].sha256 == sha256:
                return False  # unchanged: its chunks stay in the base's segments
            replaced.append(name)
        return True

    def add_document(meta: _DocumentMeta, text_bytes: int) -> None:
        nonlocal raw_text_bytes
        docs.append(meta)
        raw_text_bytes += text_bytes
        report("read", len(docs), None)

    def documents():
        for doc in iter_documents(list(inputs)):
            if changed(doc.name, doc.sha256):
                add_document(_document_meta(doc), len(doc.text.encode("utf-8")))
                yield doc

    def chunks_from_cluster():
        """Read here, parse and chunk on the cluster's workers (``_parse_and_chunk``), in order."""
        tokenizer_sha256 = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
        tasks = ((str(tokenizer_path), tokenizer_sha256, max_tokens, overlap_tokens, shard)
                 for shard in _document_shards(plan_documents(list(inputs)), changed))
        chunk_id = 0
        for status, parsed in cluster_map(cluster, _parse_and_chunk, tasks):
            if status == "error":
                raise InputDocumentError(parsed)
            for meta, text_bytes, doc_chunks in parsed:
                add_document(meta, text_bytes)
                for chunk in doc_chunks:
                    yield replace(chunk, chunk_id=chunk_id, doc_index=len(docs) - 1)
                    chunk_id += 1

    records = ByteSpool(work / "records")
    vectors_spool = VectorSpool(work / "vectors.f32", embedder_info.dim)
    lexicon = lexical_writer(lexical_engine, work / "lexical.index")
    with lexicon, ChunkEmbedder(model_dir, family=model_family, n_workers=n_workers,
                                cache_path=embedding_cache, cluster=cluster, device=device) as chunk_embedder:
        chunk_embedder.start()
        block: list = []
        n_done = 0
        pending: list = []  # the block the workers embed while this process chunks the next

        def advance(n: int) -> None:
            nonlocal n_done
            n_done += n
            report("embed", n_done, None)

        def finish_pending() -> None:
            if pending:
                vectors_spool.append(pending.pop()(advance))

        def flush_block() -> None:
            finish_pending()  # one block in flight: bounded memory, vectors in chunk order
            pending.append(chunk_embedder.submit([c.text for c in block]))
            block.clear()

        def given_chunks():
            """The prechunked documents' chunks, numbered for this build."""
            nonlocal raw_text_bytes
            chunk_id = 0
            for meta, chunks in prechunked:
                docs.append(_DocumentMeta(meta.name, meta.n_bytes, meta.media_type, meta.sha256, meta.headings))
                covered = 0
                for given in chunks:
                    raw_text_bytes += len(given.text[max(0, covered - given.char_start):].encode("utf-8"))
                    covered = max(covered, given.char_end)
                    yield Chunk(chunk_id, len(docs) - 1, given.char_start, given.char_end, given.text, 0,
                                tuple(given.heading_path))
                    chunk_id += 1
                report("read", len(docs), None)

        if prechunked is not None:
            chunks = given_chunks()
        elif cluster is not None:
            chunks = chunks_from_cluster()
        else:
            chunks = chunk_documents(documents(), token_offsets=offsets, token_offsets_batch=offsets.batch,
                                     max_tokens=max_tokens, overlap_tokens=overlap_tokens)
        for chunk in chunks:
            records.append(encode_record(chunk.doc_index, chunk.char_start, chunk.char_end, chunk.text))
            lexicon.add(chunk.chunk_id, chunk.text, heading_path=getattr(chunk, "heading_path", ()))
            docs[chunk.doc_index].n_chunks += 1
            block.append(chunk)
            if len(block) >= _EMBED_BLOCK_CHUNKS:
                flush_block()
        if block:
            flush_block()
        finish_pending()
        n_embedded = chunk_embedder.n_embedded
    records.close_writing()
    report("read", len(docs), len(docs))
    vectors = vectors_spool.array()
    segments = None
    if base is not None:
        removed = [] if append else sorted(set(base.documents) - seen)
        tombstones = base.tombstones_for(replaced + removed)
        if not docs and tombstones == base.tombstones:
            raise BuildError(f"nothing changed since {base.name} v{base.version}: no delta to build")
        if not docs:
            raise BuildError(f"this version only removes documents ({', '.join(removed[:3])}): a delta needs at least "
                             "one new or changed document; build it in full")
        if embedder_info.sha256 != base.model_sha256:
            raise BuildError(f"the base was embedded with model {base.model_sha256[:12]}, this build uses "
                             f"{embedder_info.sha256[:12]}: scores would not compare; build in full")
        segments = SegmentsInfo(base.pins, tombstones)
        log.info("delta over v%d: %d new or changed documents, %d removed, %d chunks tombstoned", base.version,
                 len(docs), len(removed), segments.n_tombstoned)
    if not docs:
        raise BuildError("no documents found in the inputs")
    n_chunks = len(records)
    if n_chunks == 0:
        raise BuildError("the documents hold no text to index")
    report("embed", n_chunks, n_chunks)
    stage_s["read_chunk_embed"] = time.perf_counter() - t
    log.info("%d chunks from %d documents; %d embedded, %d from the cache", n_chunks, len(docs), n_embedded,
             n_chunks - n_embedded)

    # 2. content key, dictionary, frames
    t = time.perf_counter()
    lexical_info = lexicon.finish()
    docs_plain = documents_to_bytes([
        Document(d.name, d.n_bytes, d.media_type, n_chunks=d.n_chunks,
                 headings=_kept_headings(d), sha256=d.sha256)
        for d in docs])
    content_digest = hashlib.sha256(b"".join(bytes.fromhex(d.sha256) for d in docs) + canonical_json(
        {"capsule_id": capsule_id, "version": version, "max_tokens": max_tokens,
         "overlap_tokens": overlap_tokens})).digest()
    content_key = derive_content_key(rng.take("content-key", 32), content_digest)
    keys = derive_keys(content_key, capsule_id_bytes)
    dictionary = train_payload_dictionary(records, raw_text_bytes)
    payloads = ByteSpool(work / "payloads")
    first_chunk_ids = _seal_frames(records, payloads, dictionary, keys.payload, capsule_id_bytes, version,
                                   video_params, n_workers, report, zstd_level, cluster=cluster)
    payloads.close_writing()
    records.close()
    stage_s["pack_and_seal"] = time.perf_counter() - t

    # 3. video and frame check
    t = time.perf_counter()
    video_path = work / "video.mp4"
    video = encode_mp4_file(iter(payloads), video_path, video_params, n_frames_hint=len(payloads),
                            progress=lambda done: report("encode", done, len(payloads)), cluster=cluster)
    stage_s["encode_video"] = time.perf_counter() - t
    t = time.perf_counter()
    bad = check_mp4(video_path, payloads, video_params, video.extradata, video.sample_offsets, video.sample_sizes)
    if bad:
        shown = ", ".join(str(f) for f in bad[:10])
        raise FrameCheckError(f"{len(bad)} of {len(payloads)} frames did not decode byte-exact: frame(s) {shown}")
    payload_bytes = payloads.n_bytes
    n_frames = len(payloads)
    payloads.close()
    stage_s["check_frames"] = time.perf_counter() - t
    report("check", n_frames, n_frames)

    # 4. index, docs, frame table: each section a file in work/
    t = time.perf_counter()
    use_projection = n_chunks >= MIN_CHUNKS_FOR_PROJECTION if projection is None else projection
    use_projection = use_projection or index_format == "binary-codes"
    fixed_projection = None
    if base is not None and base.projection is not None and projection is not False:
        # a delta projects into its base's space: scores compare across segments, and a small
        # segment stores 370 + 256 bytes per chunk instead of a 1.5 KiB float row (bench/DELTA.md)
        use_projection, fixed_projection = True, base.projection
        refine_dim = base.projection.axes.shape[0]
        if index_format in (None, base.index_format):
            index_format, ann_dim = base.index_format, ann_dim or base.ann_dim
    elif base is not None and base.projection is None and projection is None:
        # over an unprojected base a delta stays unprojected, however large: a projected segment's
        # cosines (in PCA space) run lower than true ones and would lose every merge (bench/DELTA.md)
        use_projection = False
    index_format = index_format or ("binary-codes" if use_projection else "annoy")
    codes = index_format == "binary-codes"
    n_trees = n_trees or (DEFAULT_TREES_PROJECTED if use_projection else DEFAULT_TREES_FULL)
    search_k = search_k or (DEFAULT_SEARCH_K_PROJECTED if use_projection else DEFAULT_SEARCH_K_FULL)
    ann_dim = ann_dim or (DEFAULT_CODE_BITS if codes else DEFAULT_ANN_DIM)
    n_candidates = n_candidates or (DEFAULT_N_CANDIDATES_CODES if codes else DEFAULT_N_CANDIDATES)
    report("index", 0, 1)
    built = build_index(vectors, n_trees=n_trees, seed=index_seed, work_dir=work,
                        ann_dim=ann_dim if use_projection else None,
                        refine_dim=refine_dim if use_projection else None, projection=fixed_projection,
                        index_format=index_format)
    del vectors
    report("index", 1, 1)

    def sealed(tag: str, blocks, encrypt: bool = True) -> Path:
        path = work / f"section.{tag}"
        write_blocks(path, seal_stream(keys.section(tag), blocks) if encrypt else blocks)
        return path

    sections: dict[str, Path] = {
        "DOCS": sealed("DOCS", [compress_documents(docs_plain)]),
        "ZDIC": sealed("ZDIC", [dictionary]),
        "PROJ": sealed("PROJ", [built.projection_bytes]),
        "VECS": sealed("VECS", file_segments(built.vecs_path) if built.vecs_path else [], encrypt_index),
        "INDX": sealed("INDX", file_segments(built.index_path), encrypt_index),
        "LEXI": sealed("LEXI", file_segments(lexicon.path), encrypt_index),
    }
    ftab_path = work / "section.FTAB"
    ftab_path.write_bytes(fmt.FrameTable(np.asarray(video.sample_offsets, dtype=np.uint64),
                                         np.asarray(video.sample_sizes, dtype=np.uint32),
                                         np.asarray(first_chunk_ids, dtype=np.uint32), n_chunks).to_bytes())
    sections = {"DOCS": sections["DOCS"], "FTAB": ftab_path, **{k: sections[k] for k in ("ZDIC", "PROJ", "VECS", "INDX", "LEXI")},
                "VIDE": video_path}
    stage_s["index"] = time.perf_counter() - t

    # 5. manifest, signature, file
    t = time.perf_counter()
    stanzas = [wrap_for_device(content_key, r, capsule_id_bytes, rng) for r in recipients]
    if passphrase is not None:
        stanzas.append(wrap_for_passphrase(content_key, passphrase, capsule_id_bytes, rng, scrypt_log_n))
    digests = {}
    for tag, path in sections.items():
        digest, length = _hash_file(path)
        digests[tag] = {"length": length, "sha256": digest}
    manifest = {
        "format": FORMAT_ID,
        "capsule_id": capsule_id,
        "name": name,
        "version": version,
        "publisher": {"keyid": publisher_keyid, "name": publisher_name},
        "issued_at": format_time(issued_at),
        "not_before": format_time(not_before),
        "expires_at": format_time(expires_at),
        "rules": rules or {},
        "model": {"name": DEFAULT_MODEL_NAME, "family": embedder_info.family, "sha256": embedder_info.sha256,
                  "tokenizer_sha256": _hash_file(tokenizer_path)[0], "dim": embedder_info.dim, "pooling": "mean",
                  "normalization": "l2", "max_tokens": embedder_info.max_tokens},
        "chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap_tokens},
        "index": {"format": built.format, "dim": built.dim, "metric": "hamming" if codes else "angular",
                  "n_items": n_chunks,
                  **({} if codes else {"n_trees": n_trees, "seed": index_seed, "search_k": search_k}),
                  "n_candidates": n_candidates,
                  "projection": None if built.projection is None else
                  {"method": "pca", "dim_in": embedder_info.dim, "dim_out": refine_dim},
                  "encryption": "chacha20poly1305-stream" if encrypt_index else "none"},
        "video": _video_manifest(video_params, video),
        "lexical": {"format": lexical_engine, "normaliser": LEXICAL_NORMALISERS[lexical_engine], **lexical_info,
                    "fusion": {**DEFAULT_FUSION,
                               **({"dense_first_margin": dense_first_margin} if dense_first_margin else {})}},
        "payload": {"aead": "chacha20poly1305", "compression": "zstd", "dictionary_bytes": len(dictionary),
                    "layout": "frame-v1", "max_plaintext_bytes": MAX_FRAME_PLAINTEXT_BYTES},
        **({} if segments is None else {"segments": segments_to_json(segments)}),
        "n_chunks": n_chunks,
        "n_documents": len(docs),
        "sections": {tag: digests[tag] for tag in fmt.HASHED_SECTIONS},
        "recipients": [stanza_to_json(s) for s in stanzas],
        "builder": {"name": "firmware-tools", "version": __version__},
    }
    mani = canonical_json(manifest)
    sigs = signatures_to_bytes(sign_manifest(mani, [signing_key]))
    lengths = {"MANI": len(mani), "SIGS": len(sigs), **{tag: digests[tag]["length"] for tag in sections}}
    _write_capsule(tmp_capsule, lengths, {"MANI": mani, "SIGS": sigs}, sections,
                   format_minor=fmt.format_minor_for(index_format, lexical_engine,
                                                     dense_first=bool(dense_first_margin)))
    stage_s["write"] = time.perf_counter() - t

    # 6. self-check with the runtime's own reader (signature, manifest, every digest)
    t = time.perf_counter()
    from edge.capsule import verify_capsule

    try:
        verify_capsule(tmp_capsule, trusted_keys=[signing_key.public_key()], now=not_before, full=True,
                       device_rules=False)
    except CapsuleError as exc:
        raise BuildError(f"the runtime refuses the capsule just built: {exc}") from exc
    stage_s["self_check"] = time.perf_counter() - t
    return BuildResult(
        path=tmp_capsule, capsule_id=capsule_id, version=version, n_documents=len(docs), n_chunks=n_chunks,
        n_frames=n_frames, section_bytes=lengths, file_bytes=0, raw_text_bytes=raw_text_bytes,
        payload_bytes=payload_bytes, stage_s=stage_s, n_embedded=n_embedded,
    )


def _document_meta(doc) -> _DocumentMeta:
    headings = tuple((h.char_start, h.level, h.title) for h in getattr(doc, "headings", ()))
    return _DocumentMeta(doc.name, doc.n_bytes, doc.media_type, doc.sha256, headings)


#: A cluster build's document shard: at most this many documents or (once past it) bytes per task.
SHARD_DOCUMENTS = 256
SHARD_BYTES = 4 << 20


def _document_shards(planned: list[tuple[Path, str]], changed: Callable[[str, str], bool]):
    """Yield lists of ``(path as named, name, bytes)``: the planned files read here, in order,
    those ``changed`` refuses (unchanged in a delta) left out. Lazy: ``cluster_map`` takes a shard
    only when one is free, so at most a few shards of file bytes sit in memory."""
    shard, size = [], 0
    for shown_path, name in planned:
        data = read_document_bytes(shown_path)
        if not changed(name, hashlib.sha256(data).hexdigest()):
            continue
        shard.append((str(shown_path), name, data))
        size += len(data)
        if len(shard) >= SHARD_DOCUMENTS or size >= SHARD_BYTES:
            yield shard
            shard, size = [], 0
    if shard:
        yield shard


_worker_offsets: dict[str, TokenizerOffsets] = {}  # tokenizer sha256 -> offsets, per worker process


def _parse_and_chunk(task: tuple[str, str, int, int, list[tuple[str, str, bytes]]]) -> tuple[str, object]:
    """One cluster task: parse a shard of documents and chunk them as the local build does.

    Returns ``("ok", [(_DocumentMeta, text UTF-8 bytes, [Chunk])])`` with chunk ids and document
    indexes local to the shard (the coordinator renumbers them), or ``("error", message)`` for a
    document that does not parse (``InputDocumentError``: the coordinator raises it, a bad file
    is not a failed worker). The tokenizer opens once per worker process, and only if its digest
    is the coordinator's (other token counts would cut other chunks).
    """
    tokenizer_path, tokenizer_sha256, max_tokens, overlap_tokens, shard = task
    offsets = _worker_offsets.get(tokenizer_sha256)
    if offsets is None:
        from tokenizers import Tokenizer

        data = Path(tokenizer_path).read_bytes()
        if hashlib.sha256(data).hexdigest() != tokenizer_sha256:
            raise BuildError(f"{tokenizer_path} on this worker is not the coordinator's tokenizer")
        offsets = _worker_offsets[tokenizer_sha256] = TokenizerOffsets(Tokenizer.from_str(data.decode("utf-8")))
    try:
        docs = [parse_document(data, Path(shown_path), name=name) for shown_path, name, data in shard]
    except InputDocumentError as exc:
        return "error", str(exc)
    by_document: list[list[Chunk]] = [[] for _ in docs]
    for chunk in chunk_documents(docs, token_offsets=offsets, token_offsets_batch=offsets.batch,
                                 max_tokens=max_tokens, overlap_tokens=overlap_tokens):
        by_document[chunk.doc_index].append(chunk)
    return "ok", [(_document_meta(doc), len(doc.text.encode("utf-8")), chunks)
                  for doc, chunks in zip(docs, by_document, strict=True)]


def _kept_headings(doc: _DocumentMeta) -> tuple[tuple[int, int, str], ...]:
    """The document's headings as DOCS holds them: titles cut to ``MAX_HEADING_CHARS``, at most
    ``MAX_HEADINGS_PER_DOCUMENT``, and no more than ``MAX_HEADING_BYTES_PER_CHUNK`` JSON bytes per
    chunk of the document (the reader's bound on DOCS; later headings are dropped)."""
    budget = MAX_HEADING_BYTES_PER_CHUNK * doc.n_chunks
    kept, used = [], 0
    for start, level, title in doc.headings[:MAX_HEADINGS_PER_DOCUMENT]:
        title = title.strip()[:MAX_HEADING_CHARS]
        if not title:
            continue
        used += len(canonical_json([start, level, title])) + 1
        if used > budget:
            break
        kept.append((start, level, title))
    return tuple(kept)


def _video_manifest(params: VideoParams, video) -> dict:
    return {"container": "mp4", "codec": params.codec, "profile": video.profile, "width": params.width,
            "height": params.height, "pix_fmt": params.pix_fmt, "crf": params.crf, "gop": 1, "fps": params.fps,
            "n_frames": video.n_frames, "extradata": base64.b64encode(video.extradata).decode("ascii"),
            "qr": {"version": params.qr_version, "ec_level": params.qr_ec_level,
                   "pixels_per_module": params.pixels_per_module,
                   "quiet_zone_modules": params.quiet_zone_modules}}


def _default_issued_at() -> datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc)
    return utc_now().replace(microsecond=0)


#: Records packed per worker task. Segments are packed independently (in parallel); each
#: segment's last frame may be part-filled, about one frame in 300 on SciFact.
_PACK_SEGMENT_RECORDS = 4096

_packer_state = threading.local()


def _compressor(dictionary: bytes, level: int):
    """The payload compressor for ``(dictionary, level)``, one per thread: a zstd compressor must
    not be used by two threads at once, and a Dask worker may run tasks on several threads."""
    key = (hashlib.sha256(dictionary).digest(), level)
    if getattr(_packer_state, "key", None) != key:
        _packer_state.key, _packer_state.compressor = key, payload_compressor(dictionary, level)
    return _packer_state.compressor


def _pack_segment(args: tuple[int, int, int, list[bytes], bytes, int]) -> tuple[str, object]:
    """Pack one segment of records into frames: ``("ok", [(n_records, compressed), ...])``,
    or ``("error", (record_index, message))`` for a record that fits no frame.

    A task carries its records, the zstd dictionary and the level, so it runs the same in this
    process, a local worker or a cluster worker; only record plaintext goes out, never a key."""
    first_chunk_id, capacity, max_plaintext, records, dictionary, level = args
    packer = FramePacker(capacity, max_plaintext, _compressor(dictionary, level).compress)
    frames: list[tuple[int, bytes]] = []
    for offset, record in enumerate(records):
        try:
            frames.extend((len(rs), compressed) for rs, compressed in packer.add(record))
        except ValueError as exc:
            return "error", (first_chunk_id + offset, str(exc))
    frames.extend((len(rs), compressed) for rs, compressed in packer.finish())
    return "ok", frames


def _seal_frames(records: ByteSpool, payloads: ByteSpool, dictionary: bytes, payload_key: bytes, capsule_id: bytes,
                 version: int, params: VideoParams, n_workers: int, report: Progress,
                 zstd_level: int = PAYLOAD_ZSTD_LEVEL, cluster=None) -> list[int]:
    """Pack records into frames (segments in parallel: local workers, or the workers of the Dask
    ``cluster`` client), seal each frame in order here, append its payload; return each frame's
    first chunk id. The payload key never leaves this process: workers only compress."""
    capacity = params.payload_capacity_bytes
    tasks = ((start, capacity, MAX_FRAME_PLAINTEXT_BYTES, records[start:start + _PACK_SEGMENT_RECORDS],
              dictionary, zstd_level)
             for start in range(0, len(records), _PACK_SEGMENT_RECORDS))
    first_chunk_ids: list[int] = []
    next_chunk = 0
    parallel = n_workers > 1 and len(records) > 2 * _PACK_SEGMENT_RECORDS
    for status, value in ordered_map(_pack_segment, tasks, n_workers=n_workers if parallel else 0,
                                     cluster=cluster):
        if status == "error":
            chunk_id, message = value
            raise CapacityError(f"chunk {chunk_id} ({len(records[chunk_id])} bytes) does not fit one "
                                f"{capacity}-byte QR payload: {message}")
        for n_records, compressed in value:
            frame_index = len(first_chunk_ids)
            payloads.append(seal_frame(payload_key, compressed, capsule_id=capsule_id, version=version,
                                       frame_index=frame_index, first_chunk_id=next_chunk, n_slots=n_records))
            first_chunk_ids.append(next_chunk)
            next_chunk += n_records
        report("seal", len(first_chunk_ids), None)
    report("seal", len(first_chunk_ids), len(first_chunk_ids))
    return first_chunk_ids


def _hash_file(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    n = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
            n += len(block)
    return hasher.hexdigest(), n


def _write_capsule(path: Path, lengths: dict[str, int], small: dict[str, bytes], files: dict[str, Path], *,
                   format_minor: int) -> None:
    sources = {tag: section_bytes(small[tag]) if tag in small else (lengths[tag], file_segments(files[tag]))
               for tag in lengths}
    with open(path, "wb") as out:
        write_container(out, sources, format_minor=format_minor)
        out.flush()
        os.fsync(out.fileno())


