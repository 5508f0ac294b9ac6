"""``python -m tests.vectors.generate`` rebuilds tests/vectors/ byte for byte on any CPU (FORMAT.md §14).

The genuine capsules are built from the committed chunk embeddings (tests/vectors/src/
chunk-embeddings.npz), not from the model on this CPU: onnxruntime's int8 kernels round
differently per instruction set. What the model gives here is checked against those embeddings
within the model's cross-CPU tolerance instead (models/all-MiniLM-L6-v2/MODEL.md, "Cross-CPU drift").
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import ROOT

VECTORS = ROOT / "tests" / "vectors"
#: Paths in tests/vectors/ that the generator does not write.
HAND_WRITTEN = ("src", "README.md", "__init__.py", "harness.py", "test_vectors.py", "generate.py", "__pycache__")


def _generated_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in HAND_WRITTEN}


def test_regeneration_is_byte_identical(tmp_path):
    out = tmp_path / "vectors"
    proc = subprocess.run([sys.executable, "-m", "tests.vectors.generate", "-o", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    committed, regenerated = _generated_files(VECTORS), _generated_files(out)
    assert sorted(committed) == sorted(regenerated)
    differ = [name for name in committed if committed[name] != regenerated[name]]
    assert not differ, differ
    assert len(committed) > 200


#: Least cosine between an embedding made on this CPU and the pinned one made on another
#: (measured: MODEL.md, "Cross-CPU drift").
CROSS_CPU_MIN_COS = 0.98


def test_pinned_embeddings_are_this_models_within_cross_cpu_tolerance():
    from edge.embedder import QueryEmbedder, find_model_dir
    from firmware_tools.chunking import TokenizerOffsets, chunk_documents
    from firmware_tools.documents import iter_documents
    from tests.vectors.generate import BUILD_OPTIONS, DOCS_DIR, EMBEDDINGS_FILE

    model_dir = find_model_dir(None)
    embedder = QueryEmbedder.open(model_dir, n_threads=1)
    offsets = TokenizerOffsets.from_file(model_dir / "tokenizer.json")
    texts = [c.text for c in chunk_documents(iter_documents([DOCS_DIR]), token_offsets=offsets,
                                             token_offsets_batch=offsets.batch, max_tokens=BUILD_OPTIONS["max_tokens"],
                                             overlap_tokens=BUILD_OPTIONS["overlap_tokens"])]
    with np.load(EMBEDDINGS_FILE) as pinned:
        by_key = {bytes(k): v for k, v in zip(pinned["keys"], pinned["vectors"])}
    prefix = bytes.fromhex(embedder.sha256)
    keys = [hashlib.sha256(prefix + t.encode("utf-8")).digest() for t in texts]
    assert set(keys) == set(by_key), "tests/vectors/src/chunk-embeddings.npz does not match the documents' chunks"
    here = embedder.embed(texts)
    cos = [float(np.dot(by_key[k], v) / (np.linalg.norm(by_key[k]) * np.linalg.norm(v))) for k, v in zip(keys, here)]
    assert min(cos) >= CROSS_CPU_MIN_COS, cos
