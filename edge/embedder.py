"""Query embedder: text in, unit-norm float32 vector out, on the device.

This module owns loading the int8 sentence-embedding model and its
tokenizer from a model directory (``model.int8.onnx`` and/or
``model.int8.tflite``, ``tokenizer.json``, ``SHA256SUMS``), checking the
model's sha256 against the value the caller expects (the capsule manifest),
and running queries on the CPU through the engine of the model's family
(FORMAT.md §4.3): onnxruntime for ``onnx``, LiteRT (``ai-edge-litert``, or
``tflite-runtime`` where it is the one installed and can run the model) for
``tflite``. Mean pooling and L2 normalisation are inside both graphs. It
does not build or quantize models (``firmware_tools.model_export`` and
``firmware_tools.model_export_tflite`` do), does not download anything, and
does not read capsules.

Example::

    from edge.embedder import QueryEmbedder, find_model_dir

    model_dir = find_model_dir(sha256=manifest_model_sha256, family="tflite")
    embedder = QueryEmbedder.open(model_dir, family="tflite", expected_sha256=manifest_model_sha256)
    vectors = embedder.embed(["how do I read binary data?"])  # float32 [1, 384]

Source: models/all-MiniLM-L6-v2/MODEL.md.

Size: ~900 lines because the ONNX and LiteRT engines share the tokenizer, pooling, memory
figures and the known-answer check at open, which must agree across engines to the bit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge._files import read_regular_file
from edge.errors import ModelError
from edge.manifest import MODEL_FAMILIES

logger = logging.getLogger(__name__)

# Official onnxruntime wheels since 1.29 carry 1DS telemetry on Linux: the first session writes a
# device id and an event cache under ~/.cache/Microsoft/DeveloperTools/.onnxruntime (measured with
# 1.32.0) and uploads events. The device runtime must not reach the network, so it opts out before
# onnxruntime initializes; ORT_DISABLE_TELEMETRY=1 is onnxruntime's documented full opt-out (no
# uploader, events, device id or cache). An operator who sets the variable keeps their value.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2-int8"
"""Model id of the default embedder (recorded in capsule manifests)."""

MODEL_FILENAMES = {"onnx": "model.int8.onnx", "tflite": "model.int8.tflite"}
"""Model file name per family, inside a model directory."""
MODEL_FILENAME = MODEL_FILENAMES["onnx"]
MODEL_DATA_FILENAME = "model.int8.onnx.data"
"""External weights of the ONNX graph, memory-mapped by onnxruntime."""
TOKENIZER_FILENAME = "tokenizer.json"
MAX_TOKENIZER_BYTES = 16 << 20
"""Largest tokenizer.json read (the shipped one is 466 kB)."""
REFERENCE_FILENAME = "reference_embeddings.npz"
KNOWN_ANSWER_SENTENCES = 4
KNOWN_ANSWER_MIN_COS = 0.98
"""At open, the first sentences of ``reference_embeddings.npz`` must embed within this cosine of
their fp32 vectors (measured minimum: ONNX 0.991, LiteRT 0.996). It catches an engine that loads
a model and computes garbage: tflite-runtime 2.14 under NumPy 1.26 runs model.int8.tflite and
returns vectors at cos 0.02 to the reference (MODEL.md)."""
#: ``device`` names and the onnxruntime execution provider each one selects (builder only: a
#: device's runtime embeds on its CPU). A provider ships in its own onnxruntime package
#: (``onnxruntime-gpu`` for CUDA, ``onnxruntime-openvino``), installed in place of ``onnxruntime``.
EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
#: The onnxruntime package that carries each non-CPU provider.
_PROVIDER_PACKAGES = {"cuda": "onnxruntime-gpu", "openvino": "onnxruntime-openvino", "coreml": "onnxruntime (macOS)"}
SUMS_FILENAME = "SHA256SUMS"
MAX_SUMS_BYTES = 64 << 10
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
EXPECTED_DIM = 384
DEFAULT_MAX_TOKENS = 256
MAX_POSITIONS = 512  # BERT position table: the model cannot take longer inputs
MODEL_PATH_ENV = "EDGE_MODEL_PATH"

# Session memory options. Measured on x86_64 (2 cores, shared), onnxruntime
# 1.31.1, 1 thread, VmRSS from /proc/self/status in fresh processes (62.8 MiB
# after imports), two runs each:
#                          after open   after 100 queries   after 20 x 256-token texts
#   arena on,  pattern on  115.2-115.8  118.7-119.3 MiB     129.7-130.3 MiB
#   arena off, pattern off 115.3-115.8  117.2-117.7 MiB     127.8-128.3 MiB
# Query p50 was 3.4-7.1 ms in both settings (noise from the shared machine;
# no consistent difference). Both off: ~2 MiB less, no speed cost.
# Loading the model from a path rather than from Python bytes saves ~22 MiB.
# The weights live in an external-data file (model.int8.onnx.data) that
# onnxruntime memory-maps: measured in fresh processes (onnxruntime 1.31.1,
# 1 thread, after 200 queries), session cost in MiB of anonymous / total RSS:
#                          single-file model   external data
#   pre-packing on         38 / 48             14 / 26
#   pre-packing off        29 / 38              4 / 26
# The mapped weights are file-backed (page cache, evictable under pressure).
# Pre-packing is on by default (it is what onnxruntime tunes its int8 kernels
# for) and off when a memory budget cannot hold it (``prepack_weights``, chosen
# by ``edge.capsule``): 2026-12-07, onnxruntime 1.32.0, QueryEmbedder.open with
# the known-answer check and 200 SciFact queries, two fresh processes each:
#                          RssAnon growth   query p50 / p95
#   pre-packing on         23.4-23.5 MiB    3.05-3.19 / 4.78-5.01 ms
#   pre-packing off        13.3-13.5 MiB    3.66-4.32 / 5.45-6.33 ms
# The 200 embeddings were bit-identical (MLAS accumulates int8 products in
# int32 either way; packing only reorders the weights).
_ENABLE_CPU_MEM_ARENA = False
_ENABLE_MEM_PATTERN = False

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def _sha256_file(path: Path, block_bytes: int = 1 << 20) -> str:
    """Return a file's sha256, hashing it once per process while it is unchanged.

    Hashing the 22 MB weights costs ~20 ms on this x86 VM and more on a Cortex-A72 (no SHA
    instructions): ``find_model_dir`` and ``QueryEmbedder.open`` share the result, keyed by
    (device, inode, size, mtime). ``block_bytes``: bytes read and hashed per step (each step
    releases the GIL once).
    """
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _DIGESTS.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(block_bytes), b""):
            digest.update(block)
    _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _model_identity_of(model_dir: Path, family: str = "onnx", *, block_bytes: int = 1 << 20) -> str:
    """Return the identity of the ``family`` model in ``model_dir`` (FORMAT.md §4.3).

    ``onnx``: :func:`model_identity` of the graph and its external weights; ``tflite``: the
    sha256 of ``model.int8.tflite``. Raises OSError when a file cannot be read.
    """
    if family == "tflite":
        return _sha256_file(model_dir / MODEL_FILENAMES["tflite"], block_bytes)
    return model_identity(_sha256_file(model_dir / MODEL_FILENAME, block_bytes),
                          _sha256_file(model_dir / MODEL_DATA_FILENAME, block_bytes))


def model_identity(graph_sha256: str, data_sha256: str) -> str:
    """Return a model's identity digest from the digests of its two files.

    It is the SHA-256 of the two lines ``sha256sum model.int8.onnx model.int8.onnx.data``
    prints, so ``sha256sum model.int8.onnx model.int8.onnx.data | sha256sum`` checks it.

    Source: FORMAT.md §4.3; models/all-MiniLM-L6-v2/MODEL.md.
    """
    listing = f"{graph_sha256}  {MODEL_FILENAME}\n{data_sha256}  {MODEL_DATA_FILENAME}\n"
    return hashlib.sha256(listing.encode("ascii")).hexdigest()


def _check_sha256_arg(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha256.lower()


def check_device(device: str, family: str = "onnx") -> str:
    """Return the onnxruntime execution provider of ``device`` once it is known to be usable
    here, before any model loads (``QueryEmbedder.open(device=)``, the builder's ``--device``).

    Raises:
        ValueError: ``device`` is not a key of ``EXECUTION_PROVIDERS``, or is not ``cpu`` for a
            ``family`` other than ``onnx``.
        ModelError: this onnxruntime lacks the device's provider (it ships in another package).
    """
    if device not in EXECUTION_PROVIDERS:
        raise ValueError(f"device must be one of {', '.join(EXECUTION_PROVIDERS)}, got {device!r}")
    if device != "cpu" and family != "onnx":
        raise ValueError(f"device {device!r} runs onnx models only; the {family} family embeds on the CPU")
    provider = EXECUTION_PROVIDERS[device]
    if device == "cpu" or family != "onnx":
        return provider
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise ModelError(
            f"device {device!r} needs onnxruntime's {provider}, which onnxruntime {ort.__version__} here does "
            f"not have (it has {', '.join(available)}): install {_PROVIDER_PACKAGES[device]} in place of onnxruntime")
    return provider


def _check_family(family: str) -> str:
    if family not in MODEL_FAMILIES:
        raise ValueError(f"model family must be one of {', '.join(MODEL_FAMILIES)}, got {family!r}")
    return family


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _import_litert_interpreter() -> tuple[Any, str]:
    """Return (Interpreter class, "package version") of the installed LiteRT.

    ``ai-edge-litert`` first; then ``tflite-runtime``, whose last release
    (2.14) imports only under NumPy 1.x (MODEL.md).

    Raises:
        ModelError: neither imports; the message names both failures.
    """
    failures = []
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {_dist_version('ai-edge-litert')}"
    except ModuleNotFoundError as exc:
        logger.debug("ai-edge-litert not importable: %s", exc)
    except ImportError as exc:
        failures.append(f"ai-edge-litert does not import: {exc}")
    try:
        from tflite_runtime.interpreter import Interpreter

        # tflite-runtime 2.14 (its last release) is built against NumPy 1.x: under NumPy 2 it
        # imports, then every Interpreter() fails ("_ARRAY_API not found"). Say so up front.
        tflrt = _dist_version("tflite-runtime")
        if int(np.__version__.split(".")[0]) >= 2 and tflrt.startswith(("1.", "2.")):
            failures.append(f"tflite-runtime {tflrt} cannot run under NumPy {np.__version__} (it needs NumPy 1.x)")
        else:
            return Interpreter, f"tflite-runtime {tflrt}"
    except ModuleNotFoundError as exc:
        logger.debug("tflite-runtime not importable: %s", exc)
    except Exception as exc:  # noqa: BLE001 - under NumPy 2 its import fails in several ways
        first = str(exc).splitlines()[0] if str(exc) else ""
        failures.append(f"tflite-runtime does not import ({type(exc).__name__}: {first})")
    detail = "; ".join(failures) if failures else "neither ai-edge-litert nor tflite-runtime is installed"
    raise ModelError(f"no LiteRT interpreter is usable: {detail} (pip install 'edge-capsules[litert]')")


def engine_status(family: str) -> tuple[bool, str]:
    """Return whether this runtime can run models of ``family``, and its engine.

    Imports the engine (not the model): cheap enough for ``edge info``.

    Args:
        family: ``"onnx"`` or ``"tflite"`` (FORMAT.md §4.3).

    Returns:
        ``(True, "onnxruntime 1.31.1")``-style name and version, or
        ``(False, reason)`` when no engine for the family imports.

    Raises:
        ValueError: unknown family.

    Source: FORMAT.md §4.3 (family to engine table).
    """
    _check_family(family)
    if family == "onnx":
        try:
            import onnxruntime
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc})"
        return True, f"onnxruntime {onnxruntime.__version__}"
    try:
        _, name = _import_litert_interpreter()
    except ModelError as exc:
        return False, str(exc)
    return True, name


def check_engine(family: str) -> str:
    """Return the engine name for ``family``, or raise if none is installed.

    Raises:
        ModelError: no engine for ``family`` imports here; the one-line
            message names the family and the families this runtime can run.
        ValueError: unknown family.

    Source: FORMAT.md §4.3, §11 (model errors come before decryption).
    """
    ok, detail = engine_status(family)
    if ok:
        return detail
    others = [f for f in MODEL_FAMILIES if f != family and engine_status(f)[0]]
    have = f"this runtime runs only {', '.join(others)} models" if others else "this runtime runs no model family"
    raise ModelError(f"capsule needs model family {family} and {have}: {detail}")


class _OnnxEngine:
    """onnxruntime session: int64 [batch, seq] inputs, any seq up to 512.

    ``prepack_weights`` False keeps the int8 weights in the mapped external-data file instead
    of packed copies in anonymous memory (``session.disable_prepacking``): 10 MiB less
    RssAnon, about 0.6-1.1 ms more per query (table above).
    """

    family = "onnx"

    def __init__(self, load_path: str, model_path: Path, n_threads: int, *, prepack_weights: bool = True,
                 device: str = "cpu") -> None:
        import onnxruntime as ort

        provider = EXECUTION_PROVIDERS[device]  # checked by QueryEmbedder.open (check_device)
        self.device = device

        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = _ENABLE_CPU_MEM_ARENA
        options.enable_mem_pattern = _ENABLE_MEM_PATTERN
        options.log_severity_level = 3
        if not prepack_weights:
            options.add_session_config_entry("session.disable_prepacking", "1")
        # A non-CPU provider takes the nodes it supports; the CPU provider runs the rest.
        providers = [provider] if device == "cpu" else [provider, "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(load_path, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load model file {model_path} on {device}: {exc}") from exc
        if provider not in session.get_providers():  # onnxruntime falls back to the CPU quietly
            raise ModelError(f"onnxruntime could not start {provider} for {model_path} (no {device} device, or "
                             f"its libraries are missing); it would have run on the CPU")
        inputs = {node.name: node for node in session.get_inputs()}
        if sorted(inputs) != sorted(INPUT_NAMES):
            raise ModelError(
                f"model file {model_path} has inputs {sorted(inputs)}, expected {sorted(INPUT_NAMES)}"
            )
        for name in INPUT_NAMES:
            if inputs[name].type != "tensor(int64)" or len(inputs[name].shape) != 2:
                raise ModelError(
                    f"model input {name} is {inputs[name].type} {inputs[name].shape}, "
                    "expected tensor(int64) [batch, seq]"
                )
        outputs = session.get_outputs()
        if [node.name for node in outputs] != [OUTPUT_NAME]:
            raise ModelError(
                f"model file {model_path} has outputs {[node.name for node in outputs]}, "
                f"expected ['{OUTPUT_NAME}']"
            )
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or out_shape[1] != EXPECTED_DIM or outputs[0].type != "tensor(float)":
            raise ModelError(
                f"model output {OUTPUT_NAME} is {outputs[0].type} {out_shape}, "
                f"expected tensor(float) [batch, {EXPECTED_DIM}]"
            )
        self._session = session
        self.name = (f"onnxruntime {ort.__version__}" + ("" if device == "cpu" else f" on {device}")
                     + ("" if prepack_weights else " (weights mapped, not prepacked)"))
        self.max_seq = MAX_POSITIONS
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)

    def run(self, ids_rows: Sequence[Sequence[int]]) -> np.ndarray:
        longest = max(len(row) for row in ids_rows)
        input_ids = np.zeros((len(ids_rows), longest), dtype=np.int64)
        attention_mask = np.zeros((len(ids_rows), longest), dtype=np.int64)
        for row_index, row in enumerate(ids_rows):
            input_ids[row_index, : len(row)] = row
            attention_mask[row_index, : len(row)] = 1
        (out,) = self._session.run([OUTPUT_NAME], {"input_ids": input_ids, "attention_mask": attention_mask})
        return out


class _LiteRtEngine:
    """LiteRT interpreter over a model with one signature per fixed input length.

    Each signature takes ``input_ids`` and ``attention_mask`` (int32 or int64,
    ``[1, n]``) and returns one float32 ``[1, 384]`` tensor; a text runs in
    the signature with the smallest ``n`` that holds it, zero-padded and
    masked (padding changes nothing: the mask zeroes it in attention and in
    pooling). Rows run one at a time.
    """

    family = "tflite"
    device = "cpu"

    def __init__(self, load_path: str, model_path: Path, n_threads: int) -> None:
        interpreter_class, name = _import_litert_interpreter()
        try:
            interpreter = interpreter_class(model_path=load_path, num_threads=n_threads)
            keys = list(interpreter.get_signature_list())
            runners = {key: interpreter.get_signature_runner(key) for key in keys}
            details = {key: (r.get_input_details(), r.get_output_details()) for key, r in runners.items()}
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError/RuntimeError
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"{name} cannot load model file {model_path}: {first}") from exc
        if not runners:
            raise ModelError(f"model file {model_path} has no signatures")
        self._by_len: dict[int, tuple[Any, str, np.dtype]] = {}
        for key, (inputs, outputs) in details.items():
            if sorted(inputs) != sorted(INPUT_NAMES):
                raise ModelError(
                    f"model file {model_path} signature {key} has inputs {sorted(inputs)}, "
                    f"expected {sorted(INPUT_NAMES)}"
                )
            shapes = {tuple(int(d) for d in inputs[n]["shape"]) for n in INPUT_NAMES}
            dtypes = {np.dtype(inputs[n]["dtype"]) for n in INPUT_NAMES}
            shape, dtype = next(iter(shapes)), next(iter(dtypes))
            if len(shapes) != 1 or len(dtypes) != 1 or len(shape) != 2 or shape[0] != 1 or shape[1] < 3 \
                    or dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
                raise ModelError(
                    f"model file {model_path} signature {key} inputs are {sorted(shapes)} "
                    f"{sorted(d.name for d in dtypes)}, expected int32 or int64 [1, seq]"
                )
            if len(outputs) != 1:
                raise ModelError(f"model file {model_path} signature {key} has {len(outputs)} outputs, expected 1")
            (out_name, out_detail), = outputs.items()
            if tuple(int(d) for d in out_detail["shape"]) != (1, EXPECTED_DIM) \
                    or np.dtype(out_detail["dtype"]) != np.float32:
                raise ModelError(
                    f"model file {model_path} signature {key} output is {np.dtype(out_detail['dtype'])} "
                    f"{list(out_detail['shape'])}, expected float32 [1, {EXPECTED_DIM}]"
                )
            self._by_len[shape[1]] = (runners[key], out_name, dtype)
        self._lengths = sorted(self._by_len)
        self._interpreter = interpreter  # keeps the model mapped while the runners live
        self.max_seq = self._lengths[-1]
        self.name = name
        self.metadata: dict[str, str] = {}
        self._lock = threading.Lock()  # an interpreter is not thread-safe

    def run(self, ids_rows: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.empty((len(ids_rows), EXPECTED_DIM), dtype=np.float32)
        with self._lock:
            for row_index, row in enumerate(ids_rows):
                seq = next(n for n in self._lengths if n >= len(row))
                runner, out_name, dtype = self._by_len[seq]
                input_ids = np.zeros((1, seq), dtype=dtype)
                attention_mask = np.zeros((1, seq), dtype=dtype)
                input_ids[0, : len(row)] = row
                attention_mask[0, : len(row)] = 1
                result = runner(input_ids=input_ids, attention_mask=attention_mask)
                out[row_index] = result[out_name][0]
        return out


#: Characters per kept token of the first prefix a long text is tokenized by
#: (``QueryEmbedder._encode_ids``): 4,096 for 256 tokens, where English takes ~4.5
#: characters per token, so a text under that length is tokenized once, whole.
PREFIX_CHARS_PER_TOKEN = 16


def _cuts_only_the_last_word(tokenizer) -> bool:
    """Whether cutting a text can change only the tokens of the word at the cut: a BERT
    normalizer (per character) and pre-tokenizer (splits at whitespace and punctuation) in
    front of WordPiece, as the models here have (models/all-MiniLM-L6-v2/MODEL.md)."""
    from tokenizers import models, normalizers, pre_tokenizers

    return (isinstance(tokenizer.normalizer, normalizers.BertNormalizer)
            and isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
            and isinstance(tokenizer.model, models.WordPiece))


class QueryEmbedder:
    """Sentence embedder over an int8 model; create with :meth:`open`.

    The engine follows the model family (FORMAT.md §4.3): onnxruntime for
    ``onnx``, LiteRT for ``tflite``. Each text runs through the model on its
    own (batch 1) unless ``embed(..., batch_size=n)`` asks otherwise (the
    LiteRT graph has a fixed batch of 1 and always runs texts one by one),
    so a text's vector does not depend on the texts embedded with it. The
    object holds no mutable state after :meth:`open` beyond the engine's;
    ``embed`` may be called from several threads.

    Source: models/all-MiniLM-L6-v2/MODEL.md.
    """

    def __init__(
        self,
        *,
        engine,
        tokenizer,
        model_path: Path,
        sha256: str,
        tokenizer_path: Path,
        tokenizer_sha256: str,
        dim: int,
        max_tokens: int,
        n_threads: int,
    ) -> None:
        """Store an opened engine; use :meth:`open` instead of calling this."""
        self._engine = engine
        self._tokenizer = tokenizer
        self._model_path = model_path
        self._sha256 = sha256
        self._tokenizer_path = tokenizer_path
        self._tokenizer_sha256 = tokenizer_sha256
        self._dim = dim
        self._max_tokens = max_tokens
        self._n_threads = n_threads
        self._metadata = dict(engine.metadata)
        self._sep_id = tokenizer.token_to_id("[SEP]")
        self._prefix_tokenization = _cuts_only_the_last_word(tokenizer)

    @classmethod
    def open(
        cls,
        model_dir: Path,
        *,
        family: str = "onnx",
        expected_sha256: str | None = None,
        n_threads: int = 1,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        expected_tokenizer_sha256: str | None = None,
        prepack_weights: bool = True,
        device: str = "cpu",
    ) -> QueryEmbedder:
        """Return an embedder for the ``family`` model in ``model_dir``, hash-checked.

        The model's identity (FORMAT.md §4.3: ``model_identity`` of the ONNX
        graph and weights files, or the sha256 of the ``.tflite`` file) is
        computed before the engine loads it.

        Args:
            model_dir: directory holding the family's model files
                (``model.int8.onnx`` + ``model.int8.onnx.data``, or
                ``model.int8.tflite``) and ``tokenizer.json``.
            family: ``"onnx"`` (onnxruntime) or ``"tflite"`` (LiteRT), the
                manifest's ``model.family``.
            expected_sha256: lowercase hex model identity the files must have
                (from the capsule manifest); None skips the comparison.
            n_threads: engine intra-op threads, >= 1.
            max_tokens: tokens per text after truncation, [CLS] and [SEP]
                included; 3 <= max_tokens <= 512 (256 as trained); for
                ``tflite`` at most its longest signature (256).
            expected_tokenizer_sha256: lowercase hex sha256 ``tokenizer.json``
                must have (manifest ``model.tokenizer_sha256``); None skips it.
            prepack_weights: ``onnx`` only: let onnxruntime pack the int8 weights
                into anonymous memory (fastest; ``MODEL_SESSION_BYTES``). False
                keeps them in the mapped weights file (``MODEL_SESSION_MAPPED_BYTES``:
                10 MiB less, ~0.6-1.1 ms more per query, identical embeddings).
                LiteRT always repacks (XNNPACK).
            device: ``onnx`` only: where onnxruntime runs the model, a key of
                ``EXECUTION_PROVIDERS`` (``cpu``, ``cuda``, ``openvino``, ``coreml``); the builder's
                ``--device``. The known-answer check below is what holds another device's vectors
                to the model's tolerance (cos >= 0.98 to the reference).

        Returns:
            A ready :class:`QueryEmbedder`.

        Raises:
            ModelError: no engine for ``family`` is installed; the engine does not
                reproduce ``reference_embeddings.npz`` (when the directory has it)
                to cos >= 0.98; the directory,
                model file or tokenizer is missing or unreadable; the model's
                (or tokenizer's) sha256 differs from the expected one; the
                engine cannot load the model; its inputs are not
                ``input_ids``/``attention_mask`` (int64 [batch, seq] for
                ONNX; int32/int64 [1, seq] for LiteRT) or its output is not
                float32 of dim 384; ``max_tokens`` exceeds the longest LiteRT
                signature.
            ModelError: also when ``device``'s execution provider is not in this onnxruntime,
                or onnxruntime cannot start it.
            ValueError: unknown family or device, a device other than ``cpu`` with the
                ``tflite`` family, an expected sha256 is not 64 hex digits, or
                ``n_threads``/``max_tokens`` is out of range.

        Source: models/all-MiniLM-L6-v2/MODEL.md (inputs, outputs, max tokens).
        """
        opening = _Opening(cls, model_dir, family=family, expected_sha256=expected_sha256, n_threads=n_threads,
                           max_tokens=max_tokens, expected_tokenizer_sha256=expected_tokenizer_sha256,
                           prepack_weights=prepack_weights, device=device)
        opening.load_engine()
        return opening.finish()

    @classmethod
    def start_open(cls, model_dir: Path, **kwargs: Any) -> PendingEmbedder:
        """Start :meth:`open` (same arguments) with its engine loading on a thread of its own.

        The thread hashes the model files and builds the engine's session, the part of an open
        that releases the GIL (onnxruntime: ~30 ms of ~60 here). ``PendingEmbedder.result()``
        loads the tokenizer on the calling thread (tokenizers holds the GIL) while the thread
        still works, joins it, then runs the known-answer check, so a caller can open other
        things meanwhile.

        Raises:
            ValueError: as :meth:`open`, at once. Everything :meth:`open` raises after its
                argument checks is raised by ``PendingEmbedder.result()``.
        """
        opening = _Opening(cls, model_dir, hash_block_bytes=_BACKGROUND_HASH_BLOCK_BYTES, **kwargs)
        return PendingEmbedder(opening)

    def _check_known_answers(self, reference_path: Path) -> None:
        """Raise ModelError unless the engine reproduces the reference vectors.

        Skipped (DEBUG log) when the model directory has no reference file.
        """
        if not reference_path.is_file():
            logger.debug("no %s: known-answer check skipped", reference_path)
            return
        try:
            with np.load(reference_path, allow_pickle=False) as ref:
                texts = [str(t) for t in ref["sentences"][:KNOWN_ANSWER_SENTENCES]]
                want = np.asarray(ref["embeddings"][:KNOWN_ANSWER_SENTENCES], dtype=np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read reference file {reference_path}: {exc}") from exc
        # whole texts (the reference is untruncated), whatever this embedder's max_tokens
        rows = [self._tokenizer.encode(text).ids for text in texts]
        got = np.stack([self._run([row])[0] for row in rows]) if texts else np.zeros((0, self._dim))
        cos = (got * want).sum(axis=1)
        if not texts or float(cos.min()) < KNOWN_ANSWER_MIN_COS:
            logger.warning("refusing %s with %s: known-answer cos %s", self._model_path, self.engine, cos)
            raise ModelError(
                f"{self.engine} computes wrong embeddings with {self._model_path.name}: cos "
                f"{float(cos.min()):.3f} to the reference vectors, expected >= {KNOWN_ANSWER_MIN_COS}"
            )

    # ------------------------------------------------------------------
    # properties

    @property
    def family(self) -> str:
        """Model family in use: ``"onnx"`` or ``"tflite"`` (FORMAT.md §4.3)."""
        return self._engine.family

    @property
    def engine(self) -> str:
        """Inference engine and version, e.g. ``"ai-edge-litert 2.3.0"``."""
        return self._engine.name

    @property
    def device(self) -> str:
        """Where the engine runs the model: a key of ``EXECUTION_PROVIDERS`` (``"cpu"``...)."""
        return self._engine.device

    @property
    def n_threads(self) -> int:
        """Engine intra-op threads."""
        return self._n_threads

    @property
    def dim(self) -> int:
        """Embedding dimension (384)."""
        return self._dim

    @property
    def sha256(self) -> str:
        """Lowercase hex sha256 of the loaded model file's bytes."""
        return self._sha256

    @property
    def max_tokens(self) -> int:
        """Tokens per text after truncation, [CLS] and [SEP] included."""
        return self._max_tokens

    @property
    def model_path(self) -> Path:
        """Path of the loaded model file."""
        return self._model_path

    @property
    def tokenizer_path(self) -> Path:
        """Path of the loaded ``tokenizer.json``."""
        return self._tokenizer_path

    @property
    def tokenizer_sha256(self) -> str:
        """Lowercase hex sha256 of the loaded ``tokenizer.json`` bytes."""
        return self._tokenizer_sha256

    @property
    def metadata(self) -> dict[str, str]:
        """The model's ONNX metadata (``edge.*`` keys); empty for LiteRT."""
        return dict(self._metadata)

    # ------------------------------------------------------------------
    # tokens

    def _encode_ids(self, text: str) -> list[int]:
        """Return token ids with [CLS]/[SEP], truncated to max_tokens.

        Same result as the tokenizer's own ``LongestFirst`` truncation of a
        single sequence: content tokens are cut from the end, [SEP] kept.

        A long text is tokenized a prefix at a time (``PREFIX_CHARS_PER_TOKEN``
        characters per kept token, then 4x longer while needed), so a 64 KiB
        question costs what its first tokens cost: tokenizing all of it took
        ~15,000 tokens' worth of allocations, and glibc kept 13 MiB of RssAnon
        afterwards, outside the memory budget. The prefix's ids are taken only
        when the first token dropped comes from a word before the prefix's
        last one, which the cut may have split; with BERT's per-character
        normalizer and whitespace/punctuation pre-tokenizer, every earlier word
        then tokenizes as in the whole text (tested against it).
        """
        if self._prefix_tokenization:
            kept = self._max_tokens - 2  # content tokens between [CLS] and [SEP]
            cut = PREFIX_CHARS_PER_TOKEN * self._max_tokens
            while cut < len(text):
                encoding = self._tokenizer.encode(text[:cut])
                words = encoding.word_ids  # None for [CLS] and [SEP]
                if len(words) - 2 > kept and words[1 + kept] != words[-2]:
                    return encoding.ids[: 1 + kept] + [self._sep_id]
                cut *= 4
        ids = self._tokenizer.encode(text).ids
        if len(ids) > self._max_tokens:
            ids = ids[: self._max_tokens - 1] + [self._sep_id]
        return ids

    def token_count(self, text: str) -> int:
        """Return the number of model tokens in ``text``, before truncation.

        Args:
            text: UTF-8 text.

        Returns:
            Token count including [CLS] and [SEP], so a text fits the model
            untruncated when ``token_count(text) <= max_tokens``; equals
            ``len(tokenize_offsets(text)) + 2``.

        Source: models/all-MiniLM-L6-v2/MODEL.md (tokenizer).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return len(self._tokenizer.encode(text).ids)

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        """Return each content token's ``(start, end)`` character offsets.

        Args:
            text: UTF-8 text; not truncated.

        Returns:
            One ``(start, end)`` per token, [CLS]/[SEP] excluded, in text
            order; ``text[start:end]`` is the token's source span (Python
            str indices, end exclusive). Word pieces of one word have
            adjacent spans.

        Source: models/all-MiniLM-L6-v2/MODEL.md (tokenizer).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        encoding = self._tokenizer.encode(text)
        return [
            (int(start), int(end))
            for (start, end), is_special in zip(
                encoding.offsets, encoding.special_tokens_mask, strict=True
            )
            if not is_special
        ]

    # ------------------------------------------------------------------
    # inference

    def _run(self, ids_rows: Sequence[Sequence[int]]) -> np.ndarray:
        out = self._engine.run(ids_rows)
        if out.shape != (len(ids_rows), self._dim) or out.dtype != np.float32:
            raise ModelError(
                f"model output is {out.dtype} {out.shape}, expected float32 "
                f"({len(ids_rows)}, {self._dim})"
            )
        return out

    def embed(self, texts: Sequence[str], *, batch_size: int = 1) -> np.ndarray:
        """Return one unit-norm embedding per text, in input order.

        Texts longer than ``max_tokens`` tokens are truncated (their end is
        dropped). With ``batch_size=1`` (the default) each text runs alone,
        so its vector is the same whatever it is embedded with. With
        ``batch_size > 1`` texts are sorted by length, padded to the longest
        in each batch and run together; the int8 model quantizes
        activations with one scale per batch tensor, so vectors then shift
        with their batch-mates (cos >= 0.95 to the batch-1 vector on FAQ
        text, equally close to fp32 on average) and batching is no faster
        on one thread.

        Args:
            texts: UTF-8 strings (a list, not a single str).
            batch_size: texts per onnxruntime run, >= 1.

        Returns:
            float32 array ``[len(texts), dim]``, each row L2 norm 1
            (within 1e-6); ``[0, dim]`` for no texts.

        Raises:
            ModelError: the model returns an unexpected shape or dtype, or
                a non-finite value.
            TypeError: ``texts`` is a str or holds a non-str.
            ValueError: ``batch_size < 1``.

        Source: models/all-MiniLM-L6-v2/MODEL.md (pooling, normalisation,
        quantization).
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a str")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must hold str, got {type(text).__name__}")
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        ids = [self._encode_ids(text) for text in texts]
        if batch_size == 1:
            for row_index, row in enumerate(ids):
                out[row_index] = self._run([row])[0]
        else:
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                out[batch] = self._run([ids[i] for i in batch])
        if not np.isfinite(out).all():
            raise ModelError(f"model file {self._model_path} returned non-finite values")
        return out


# ----------------------------------------------------------------------
# finding the model on disk



#: Blocks the background thread hashes the model in: each block releases the GIL once and must
#: take it back (up to the 5 ms switch interval while the opening thread runs Python), so fewer,
#: larger blocks; 4 MiB is held only while it is hashed.
_BACKGROUND_HASH_BLOCK_BYTES = 4 << 20


class _Opening:
    """The steps of ``QueryEmbedder.open``: argument checks (constructor), ``load_engine`` (hash,
    then the engine's session) and ``finish`` (tokenizer, known-answer check)."""

    def __init__(self, cls: type[QueryEmbedder], model_dir: Path, *, family: str = "onnx",
                 expected_sha256: str | None = None, n_threads: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS,
                 expected_tokenizer_sha256: str | None = None, prepack_weights: bool = True, device: str = "cpu",
                 hash_block_bytes: int = 1 << 20) -> None:
        family = _check_family(family)
        check_device(device, family)
        self.expected_sha256 = _check_sha256_arg(expected_sha256)
        self.expected_tokenizer_sha256 = _check_sha256_arg(expected_tokenizer_sha256)
        if not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads must be an int >= 1, got {n_threads!r}")
        if not isinstance(max_tokens, int) or not 3 <= max_tokens <= MAX_POSITIONS:
            raise ValueError(
                f"max_tokens must be an int in [3, {MAX_POSITIONS}], got {max_tokens!r}"
            )
        self.cls, self.family, self.n_threads, self.max_tokens = cls, family, n_threads, max_tokens
        self.prepack_weights, self.device, self.hash_block_bytes = prepack_weights, device, hash_block_bytes
        self.model_dir = Path(model_dir)
        self.model_path = self.model_dir / MODEL_FILENAMES[family]
        self.tokenizer_path = self.model_dir / TOKENIZER_FILENAME
        self.engine: _OnnxEngine | _LiteRtEngine | None = None
        self.sha256 = ""

    def load_engine(self) -> None:
        """Check the files, hash the model against the expected identity, then load the engine."""
        model_dir, family, model_path = self.model_dir, self.family, self.model_path
        if not model_dir.is_dir():
            raise ModelError(f"model directory {model_dir} does not exist")
        needed = [model_path, self.tokenizer_path]
        if family == "onnx":
            needed.insert(1, model_dir / MODEL_DATA_FILENAME)
        for path in needed:
            if not path.is_file():
                raise ModelError(f"model file {path} is missing")

        try:
            sha256 = _model_identity_of(model_dir, family, block_bytes=self.hash_block_bytes)
        except OSError as exc:
            raise ModelError(f"cannot read model file {model_path}: {exc.strerror}") from exc
        expected_sha256 = self.expected_sha256
        if expected_sha256 is not None and sha256 != expected_sha256:
            logger.warning("refusing model %s: sha256 %s, expected %s", model_path, sha256, expected_sha256)
            raise ModelError(f"model {model_path} has sha256 {sha256}, expected {expected_sha256}")
        # Loaded by path so that onnxruntime maps the external weights file and LiteRT maps the
        # flatbuffer (see the table above). The files are hashed just before; a device keeps
        # its model folder on a read-only or root-owned file system, where nothing swaps them.
        n_threads = self.n_threads
        self.engine = (_OnnxEngine(str(model_path), model_path, n_threads, prepack_weights=self.prepack_weights,
                                   device=self.device)
                       if family == "onnx" else _LiteRtEngine(str(model_path), model_path, n_threads))
        self.sha256 = sha256

    def finish(self, tokenizer: tuple[Any, str] | BaseException | None = None) -> QueryEmbedder:
        """Check the engine against ``max_tokens``, take the tokenizer (``load_tokenizer``'s result
        or the exception it raised, when the caller loaded it already; else load it now), run the
        known-answer check; return the embedder. Errors come in that order, whichever ran first."""
        engine, model_path, max_tokens = self.engine, self.model_path, self.max_tokens
        assert engine is not None, "load_engine() first"
        if max_tokens > engine.max_seq:
            raise ModelError(
                f"model file {model_path} takes at most {engine.max_seq} tokens, {max_tokens} requested"
            )
        if isinstance(tokenizer, BaseException):
            raise tokenizer
        tokenizer, tokenizer_sha256 = tokenizer if tokenizer is not None else self.load_tokenizer()
        embedder = self.cls(
            engine=engine,
            tokenizer=tokenizer,
            model_path=model_path,
            sha256=self.sha256,
            tokenizer_path=self.tokenizer_path,
            tokenizer_sha256=tokenizer_sha256,
            dim=EXPECTED_DIM,
            max_tokens=max_tokens,
            n_threads=self.n_threads,
        )
        embedder._check_known_answers(self.model_dir / REFERENCE_FILENAME)
        logger.debug(
            "opened model %s sha256 %s with %s (%d threads, max %d tokens)",
            model_path,
            self.sha256,
            engine.name,
            self.n_threads,
            max_tokens,
        )
        return embedder

    def load_tokenizer(self) -> tuple[Any, str]:
        """Read, hash and load the tokenizer file; return ``(tokenizer, sha256)``. Needs no engine.

        Raises:
            ModelError: the file is missing, too large, not the expected one, or not a tokenizer.
        """
        from tokenizers import Tokenizer

        tokenizer_path, expected_tokenizer_sha256 = self.tokenizer_path, self.expected_tokenizer_sha256
        tokenizer_bytes = read_regular_file(tokenizer_path, max_bytes=MAX_TOKENIZER_BYTES, what="tokenizer file",
                                            error=ModelError)
        tokenizer_sha256 = hashlib.sha256(tokenizer_bytes).hexdigest()
        if expected_tokenizer_sha256 is not None and tokenizer_sha256 != expected_tokenizer_sha256:
            logger.warning(
                "refusing tokenizer %s: sha256 %s, expected %s",
                tokenizer_path,
                tokenizer_sha256,
                expected_tokenizer_sha256,
            )
            raise ModelError(
                f"tokenizer file {tokenizer_path} has sha256 {tokenizer_sha256}, "
                f"expected {expected_tokenizer_sha256}"
            )
        try:
            tokenizer = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a plain Exception
            raise ModelError(f"cannot load tokenizer file {tokenizer_path}: {exc}") from exc
        # The packaged tokenizer.json pads and truncates to 128; we pad per
        # batch ourselves and truncate in _encode_ids (so token_count and
        # tokenize_offsets can see the whole text).
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if tokenizer.token_to_id("[CLS]") is None or tokenizer.token_to_id("[SEP]") is None:
            raise ModelError(f"tokenizer file {tokenizer_path} has no [CLS]/[SEP] tokens")
        return tokenizer, tokenizer_sha256


class PendingEmbedder:
    """A ``QueryEmbedder.open`` under way (``QueryEmbedder.start_open``): its engine loads on a
    thread; ``result()`` joins it and finishes the open on the calling thread."""

    def __init__(self, opening: _Opening) -> None:
        self._opening: _Opening | None = opening
        self._error: BaseException | None = None

        def run() -> None:
            try:
                opening.load_engine()
            except BaseException as exc:  # raised again by result(), on the caller's thread
                self._error = exc

        self._thread = threading.Thread(target=run, name="edge-model-load", daemon=True)
        self._thread.start()

    def result(self) -> QueryEmbedder:
        """Join the loading thread and return the embedder.

        While the thread still works, the tokenizer loads here first (it holds the GIL; the
        thread's hashing and session building mostly do not), so the wait overlaps it. Errors
        are raised in ``QueryEmbedder.open``'s order all the same: the engine's first.

        Raises:
            ModelError: as ``QueryEmbedder.open``; also when called again after it raised.
        """
        opening = self._opening
        tokenizer: tuple[Any, str] | BaseException | None = None
        if opening is not None and self._thread.is_alive():
            try:
                tokenizer = opening.load_tokenizer()
            except Exception as exc:  # noqa: BLE001 - raised by finish(), after any engine error
                tokenizer = exc
        self._thread.join()
        opening, self._opening = self._opening, None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if opening is None:
            raise ModelError("the model's open already completed or failed")
        return opening.finish(tokenizer)

    def discard(self) -> None:
        """Join the loading thread and drop what it loaded (the caller's open failed elsewhere)."""
        self._thread.join()
        self._opening = self._error = None


def default_search_path() -> list[Path]:
    """Return the directories :func:`find_model_dir` searches, in order.

    Returns:
        When ``$EDGE_MODEL_PATH`` is set: its entries (``os.pathsep``-separated)
        and nothing else, so an operator decides exactly which models a device
        may use. Otherwise ``sys.prefix/share/edge-capsules/models``, then the
        source checkout's ``models`` directory (next to the ``edge`` package).
        Each entry is a model directory or a parent of model directories.
    """
    env = os.environ.get(MODEL_PATH_ENV, "")
    if env:
        return [Path(part) for part in env.split(os.pathsep) if part]
    roots: list[Path] = []
    roots.append(Path(sys.prefix) / "share" / "edge-capsules" / "models")
    roots.append(Path(__file__).resolve().parent.parent / "models")
    return roots


def _candidates(root: Path, filename: str) -> list[Path]:
    if (root / filename).is_file():
        return [root]
    if not root.is_dir():
        return []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    return [p for p in children if (p / filename).is_file()]


def _listed_sha256(model_dir: Path, family: str = "onnx") -> str | None:
    """Return the ``family`` model identity computed from SHA256SUMS's listing, or None."""
    try:
        lines = read_regular_file(model_dir / SUMS_FILENAME, max_bytes=MAX_SUMS_BYTES, what="checksum file",
                                  error=OSError).decode("ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    listed = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and _SHA256_RE.match(parts[0].lower()):
            listed[parts[1].lstrip("*")] = parts[0].lower()
    if family == "tflite":
        return listed.get(MODEL_FILENAMES["tflite"])
    if MODEL_FILENAME not in listed or MODEL_DATA_FILENAME not in listed:
        return None
    return model_identity(listed[MODEL_FILENAME], listed[MODEL_DATA_FILENAME])


def find_model_dir(
    sha256: str | None = None, search_path: list[Path] | None = None, *, family: str = "onnx", confirm: bool = True
) -> Path:
    """Return the model directory whose ``family`` model has identity ``sha256``.

    Candidates are checked in search order by the hash their
    ``SHA256SUMS`` lists; the first that lists ``sha256`` is confirmed by
    hashing its model file once (a candidate without ``SHA256SUMS`` is
    hashed directly). A candidate whose file does not match its listing is
    skipped with a warning. :meth:`QueryEmbedder.open` hashes the file
    again when it loads it.

    Args:
        sha256: lowercase hex sha256 of the model file (from the capsule
            manifest); None returns the first directory that holds a model
            of ``family``.
        search_path: directories to search instead of
            :func:`default_search_path`; each is a model directory or a
            parent of model directories.
        family: ``"onnx"`` looks for ``model.int8.onnx``, ``"tflite"`` for
            ``model.int8.tflite`` (FORMAT.md §4.3).
        confirm: False returns the first candidate whose ``SHA256SUMS`` lists ``sha256``
            without hashing it, for a caller whose ``QueryEmbedder.open`` hashes it anyway
            (on another thread: ``start_open``) and searches again, confirming, if it differs.

    Returns:
        The matching model directory.

    Raises:
        ModelError: no directory in the search path holds a model with
            ``sha256`` (or any model, when ``sha256`` is None); the message
            names the hash, the family and the directories searched.
        ValueError: ``sha256`` is not 64 hex digits, or unknown family.

    Source: models/all-MiniLM-L6-v2/MODEL.md (SHA256SUMS).
    """
    sha256 = _check_sha256_arg(sha256)
    filename = MODEL_FILENAMES[_check_family(family)]
    roots = [Path(p) for p in (default_search_path() if search_path is None else search_path)]
    unlisted: list[Path] = []
    for root in roots:
        for candidate in _candidates(root, filename):
            if sha256 is None:
                logger.debug("found model directory %s", candidate)
                return candidate
            listed = _listed_sha256(candidate, family)
            if listed is None:
                unlisted.append(candidate)
                continue
            if listed != sha256:
                continue
            if not confirm:
                logger.debug("found model %s listed in %s (not hashed yet)", sha256, candidate)
                return candidate
            try:
                actual = _model_identity_of(candidate, family)
            except OSError:
                actual = "unreadable"
            if actual == sha256:
                logger.debug("found model %s in %s", sha256, candidate)
                return candidate
            logger.warning("skipping %s: SHA256SUMS lists model %s but the files give %s", candidate, listed, actual)
    for candidate in unlisted:
        try:
            actual = _model_identity_of(candidate, family)
        except OSError:
            continue
        if actual == sha256:
            logger.debug("found model %s in %s (no SHA256SUMS)", sha256, candidate)
            return candidate
    searched = ", ".join(str(root) for root in roots) or "(none)"
    wanted = f"sha256 {sha256}" if sha256 else "any sha256"
    raise ModelError(f"no {family} model with {wanted} in: {searched}")


__all__ = [
    "DEFAULT_MODEL_NAME",
    "EXECUTION_PROVIDERS",
    "check_device",
    "MODEL_FAMILIES",
    "MODEL_FILENAMES",
    "check_engine",
    "engine_status",
    "DEFAULT_MAX_TOKENS",
    "EXPECTED_DIM",
    "QueryEmbedder",
    "default_search_path",
    "find_model_dir",
    "model_identity",
]
