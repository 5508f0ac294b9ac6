"""The runtime's public surface is listed in tests/unit/public_surface.txt: changing it is deliberate.

The list holds every name in ``edge.__all__`` and, for each public class among them, its public
methods and properties (with their parameters), and each public function's parameters. A change
to the API fails this test until the list is regenerated and committed with the change:

    EDGE_UPDATE_PUBLIC_SURFACE=1 python -m pytest tests/unit/test_public_surface.py
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import edge

SURFACE_FILE = Path(__file__).with_name("public_surface.txt")


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def current_surface() -> list[str]:
    """Return the public surface of ``edge`` as sorted lines."""
    lines = []
    for name in sorted(edge.__all__):
        obj = getattr(edge, name)
        if inspect.isclass(obj):
            bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
            lines.append(f"class {name}({bases})")
            for member, value in sorted(vars(obj).items()):
                if member.startswith("_") and member != "__init__":
                    continue
                if isinstance(value, property):
                    lines.append(f"class {name}.{member}: property")
                elif isinstance(value, (classmethod, staticmethod)):
                    lines.append(f"class {name}.{member}{_signature(getattr(obj, member))}")
                elif inspect.isfunction(value):
                    lines.append(f"class {name}.{member}{_signature(value)}")
        elif callable(obj):
            lines.append(f"def {name}{_signature(obj)}")
        else:
            lines.append(f"{name}: {type(obj).__name__}")
    return lines


def test_public_surface_matches_the_committed_list():
    lines = current_surface()
    if os.environ.get("EDGE_UPDATE_PUBLIC_SURFACE"):
        SURFACE_FILE.write_text("\n".join(lines) + "\n")
    committed = SURFACE_FILE.read_text().splitlines()
    added = sorted(set(lines) - set(committed))
    removed = sorted(set(committed) - set(lines))
    assert not added and not removed, f"public surface changed: added {added}, removed {removed}"


def test_every_public_name_has_a_docstring():
    missing = [name for name in edge.__all__ if not inspect.getdoc(getattr(edge, name))]
    assert not missing, missing
