"""The runtime never imports the builder (STYLE.md §1)."""

import ast
from pathlib import Path

EDGE = Path(__file__).resolve().parents[2] / "edge"


def test_edge_never_imports_firmware_tools():
    offenders = []
    for path in sorted(EDGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "firmware_tools"]
    assert offenders == []
    assert len(list(EDGE.rglob("*.py"))) > 5
