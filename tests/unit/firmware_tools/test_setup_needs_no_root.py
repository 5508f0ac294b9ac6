"""The README's two setup commands need no root, and nothing installs zbar (issue 9 §4).

The setup used to ``sudo apt-get install libzbar0`` for pyzbar, which nothing imports: QR codes
are read by zxing-cpp, bundled in its wheel. Checked statically: the scripts the README's two
commands run (and what they source) call no package manager and no sudo.
"""

from __future__ import annotations

import re

from ...conftest import ROOT

_ROOT_ONLY = re.compile(r"\b(sudo|apt-get|apt|dpkg|su)\b")


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^bash (scripts/\S+\.sh)", section, flags=re.M)


def _with_sourced(script: str) -> list[str]:
    seen = [script]
    for name in re.findall(r'source "\$\(dirname "\$0"\)/(\S+?)"', (ROOT / script).read_text()):
        seen.append(f"scripts/{name}")
    return seen


def _code_lines(path: str) -> list[str]:
    return [line for line in (ROOT / path).read_text().splitlines() if not line.lstrip().startswith("#")]


def test_the_two_readme_commands_call_no_package_manager_and_no_sudo():
    commands = _readme_commands()
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    scripts = sorted({s for c in commands for s in _with_sourced(c)})
    assert "scripts/_setup.sh" in scripts
    offending = [(s, line) for s in scripts for line in _code_lines(s) if _ROOT_ONLY.search(line)]
    assert offending == []


def test_nothing_imports_zbar_and_nothing_installs_it():
    imports = re.compile(r"^\s*(import|from)\s+(pyzbar|zbar)\b", re.M)
    users = [str(p.relative_to(ROOT)) for folder in ("edge", "firmware_tools", "scripts", "bench")
             for p in (ROOT / folder).rglob("*.py") if imports.search(p.read_text())]
    assert users == []
    for path in ("scripts/_setup.sh", "docker/arm64/Dockerfile", "pyproject.toml"):
        assert not any("zbar" in line for line in _code_lines(path)), path
