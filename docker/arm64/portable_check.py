"""Record on one machine, check on another: capsules answer the same everywhere.

``record`` runs on the machine that built the capsules (x86_64); ``check`` runs the runtime
alone (no builder installed) on the target (linux/aarch64) against the same capsule files and
compares. For each capsule: full verification (every frame decoded and authenticated), the
sha256 of every chunk's text read back frame by frame (byte-exact, in chunk order), and the
top-k hits of real questions. Check rules: the same frames and chunks verified, the same text
digest, the same top-1 chunk for every question, the same chunk text for every hit both runs
returned, and scores within ``SCORE_TOLERANCE`` (the two machines' int8 kernels round
differently, so vectors are close, not identical).

Usage::

    python portable_check.py record DIR OUT.json     # DIR: *.capsule, publisher.pub, device.key
    python portable_check.py check DIR EXPECTED.json [--report OUT.json]

Prints one JSON line per capsule; exit 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

QUESTIONS = {
    "faq": ["Why is Python slow compared to C?", "How do I make an executable from a Python script?",
            "Is there a tool to help find bugs or perform static analysis?",
            "How do I copy a file?", "Why are there separate tuple and list data types?"],
    "tiny": ["What is Python?", "Why does Python use indentation?", "What is the Python Software Foundation?"],
}
SCORE_TOLERANCE = 0.05
K = 3


def _measure(capsule_path: Path, trusted, identities, now: datetime) -> dict:
    from edge import open_capsule, verify_capsule

    report = verify_capsule(capsule_path, trusted_keys=trusted, identities=identities, now=now, full=True)
    out: dict = {"capsule": capsule_path.name, "frames_checked": report.n_frames_checked,
                 "chunks_checked": report.n_chunks_checked}
    with open_capsule(capsule_path, trusted_keys=trusted, identities=identities, now=now) as capsule:
        m = capsule.manifest
        out.update({"family": m.model.family, "codec": m.video.codec, "decoder": capsule.decoder_name,
                    "engine": capsule.embedder_engine})
        digest = hashlib.sha256()
        for chunk_id in range(m.n_chunks):
            digest.update(capsule.read(chunk_id).text.encode("utf-8") + b"\0")
        out["text_sha256"] = digest.hexdigest()
        questions = QUESTIONS["faq" if capsule_path.name.startswith("faq") else "tiny"]
        out["hits"] = {q: [{"chunk_id": h.chunk_id, "score": round(h.score, 6),
                            "text_sha256": hashlib.sha256(h.text.encode("utf-8")).hexdigest()}
                           for h in capsule.search(q, k=K)] for q in questions}
    return out


def _compare(expected: dict, got: dict) -> list[str]:
    problems = []
    for key in ("frames_checked", "chunks_checked", "text_sha256", "family", "codec"):
        if expected[key] != got[key]:
            problems.append(f"{key}: expected {expected[key]!r}, got {got[key]!r}")
    for question, want in expected["hits"].items():
        have = got["hits"].get(question, [])
        if not have or have[0]["chunk_id"] != want[0]["chunk_id"]:
            problems.append(f"top-1 for {question!r}: expected chunk {want[0]['chunk_id']}, "
                            f"got {[h['chunk_id'] for h in have]}")
        by_id = {h["chunk_id"]: h for h in want}
        for hit in have:
            ref = by_id.get(hit["chunk_id"])
            if ref is None:
                continue
            if ref["text_sha256"] != hit["text_sha256"]:
                problems.append(f"chunk {hit['chunk_id']} text differs")
            if abs(ref["score"] - hit["score"]) > SCORE_TOLERANCE:
                problems.append(f"chunk {hit['chunk_id']} score {hit['score']} vs {ref['score']} for {question!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run ``record`` or ``check``; return the exit status."""
    parser = argparse.ArgumentParser(prog="portable_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("record", "check"))
    parser.add_argument("dir", type=Path, help="folder with *.capsule, publisher.pub, device.key")
    parser.add_argument("json", type=Path, help="record: file to write; check: expected results")
    parser.add_argument("--report", type=Path, help="check: also write what this machine measured")
    args = parser.parse_args(argv)

    from edge import load_identity, load_public_key

    trusted = [load_public_key(args.dir / "publisher.pub")]
    identities = [load_identity(args.dir / "device.key")]
    now = datetime.now(timezone.utc)
    machine = {"machine": platform.machine(), "python": platform.python_version()}
    capsules = sorted(args.dir.glob("*.capsule"))
    if not capsules:
        print(f"portable_check: error: no *.capsule in {args.dir}", file=sys.stderr)
        return 1
    results = {p.name: _measure(p, trusted, identities, now) for p in capsules}
    if args.mode == "record":
        args.json.write_text(json.dumps({"recorded_on": machine, "capsules": results}, indent=1, sort_keys=True))
        for r in results.values():
            print(json.dumps({"recorded": r["capsule"], **machine, "decoder": r["decoder"], "engine": r["engine"]}))
        return 0
    expected = json.loads(args.json.read_text())
    if args.report:
        args.report.write_text(json.dumps({"checked_on": machine, "capsules": results}, indent=1, sort_keys=True))
    failed = False
    for name, want in expected["capsules"].items():
        got = results.get(name)
        problems = ["capsule missing"] if got is None else _compare(want, got)
        failed |= bool(problems)
        print(json.dumps({"capsule": name, "built_on": expected["recorded_on"]["machine"], "checked_on": machine,
                          "ok": not problems, "problems": problems,
                          **({} if got is None else {"decoder": got["decoder"], "engine": got["engine"],
                                                     "chunks_read": got["chunks_checked"],
                                                     "max_score_diff": _max_diff(want, got)})}))
    return 1 if failed else 0


def _max_diff(want: dict, got: dict) -> float:
    diffs = [abs(a["score"] - b["score"]) for q in want["hits"] for a in want["hits"][q]
             for b in got["hits"].get(q, []) if a["chunk_id"] == b["chunk_id"]]
    return round(max(diffs), 6) if diffs else 0.0


if __name__ == "__main__":
    sys.exit(main())
