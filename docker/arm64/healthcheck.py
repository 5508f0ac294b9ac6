"""Container health check for the Edge Capsules runtime image; exit 0 healthy, 1 not.

Checks, offline and without any capsule: every installed model file matches its SHA256SUMS
entry and its family's engine (onnxruntime, LiteRT) opens it and embeds one sentence into a
unit vector; the H.264 and HEVC decoders open (hardware V4L2 M2M if present, else software).
A family whose engine is not installed is reported, not failed (an onnxruntime-only image is
healthy). Prints one JSON line.

Usage: ``python healthcheck.py`` (the image's HEALTHCHECK; docker/arm64/test.sh runs it too).
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    """Run the checks; print one JSON object; return the exit status."""
    import numpy as np

    from edge.embedder import MODEL_FAMILIES, QueryEmbedder, engine_status, find_model_dir, model_identity
    from edge.errors import EdgeError
    from edge.frames import FrameReader

    report: dict[str, object] = {"ok": True}
    n_engines = 0
    for family in MODEL_FAMILIES:
        ok, engine = engine_status(family)
        if not ok:
            report[family] = {"engine": None, "note": engine}
            continue
        try:
            model_dir = find_model_dir(family=family)
            listed = {name: digest for digest, name in
                      (line.split() for line in (model_dir / "SHA256SUMS").read_text().splitlines())}
            expected = (listed["model.int8.tflite"] if family == "tflite" else
                        model_identity(listed["model.int8.onnx"], listed["model.int8.onnx.data"]))
            embedder = QueryEmbedder.open(model_dir, family=family, expected_sha256=expected)
            norm = float(np.linalg.norm(embedder.embed(["is the device healthy?"])[0]))
            if abs(norm - 1.0) > 1e-3:
                raise EdgeError(f"{family} embedding has norm {norm:.4f}")
            report[family] = {"engine": engine, "sha256": embedder.sha256}
            n_engines += 1
        except (EdgeError, KeyError, OSError) as exc:
            report[family] = {"engine": engine, "error": str(exc)}
            report["ok"] = False
    if n_engines == 0:
        report["ok"] = False
    for codec in ("h264", "hevc"):
        try:
            with FrameReader(b"", extradata=b"", sample_offsets=[], sample_sizes=[], codec=codec) as reader:
                report[f"decoder_{codec}"] = reader.decoder_name
        except EdgeError as exc:
            report[f"decoder_{codec}"] = {"error": str(exc)}
            report["ok"] = False
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
