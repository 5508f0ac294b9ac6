"""The deployment files under deploy/ are checked by the real systemd tools, not by reading them.

``systemd-analyze verify`` loads a unit the way the manager does and prints every directive it
cannot parse ("Unknown key", "Failed to parse ... ignoring"), every missing dependency and every
``Exec*=`` binary that does not exist. Two things make it usable on a clean CI machine that has
none of our users or binaries installed:

- **System units: ``--root=DIR``.** The tests build a throw-away root: the host's own unit
  directory copied in (so ``sysinit.target``, ``graphical.target`` ... resolve), our units copied
  *verbatim* into ``DIR/etc/systemd/system``, and one tiny executable stub at each absolute path
  our ``Exec*=`` lines name (``/usr/local/bin/edge``, ``/usr/bin/chromium``, ...). Under
  ``--root`` the manager looks up both units and executables inside DIR, so the file that ships is
  the file checked. ``verify`` does not look users up (``User=edge-capsules``/``pi`` need not
  exist).
- **User units: ``--user`` cannot be combined with ``--root``** (systemd 252: "Failed to
  initialize unit search paths ... Invalid argument"). The user unit is verified by file path
  with ``XDG_RUNTIME_DIR``/``HOME`` pointed into tmp, and its ``Exec*=`` binaries rewritten to
  stubs in tmp (only the executable path changes).

``verify`` exits 0 even when it ignored a misspelt directive, so a check fails on any line of
output as well as on a non-zero status. The negative tests feed the same helpers a unit with
``ProtectSystem=stric`` and others, and require a failure: the harness can fail.

Also: ``systemd-analyze security --offline`` (exposure score of edge-serve), ``systemd-sysusers``
and ``systemd-tmpfiles`` into a tmp root, ``udevadm verify`` on the udev rule where udevadm has
it (systemd >= 254), and the hardening directives issue 11 requires, read from the unit.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SYSTEM_UNITS_DIR = DEPLOY / "systemd"
USER_UNITS_DIR = DEPLOY / "systemd" / "user"
UDEV_RULES = DEPLOY / "udev" / "99-edge-capsules-usb.rules"
SYSUSERS = DEPLOY / "sysusers.d" / "edge-capsules.conf"
TMPFILES = DEPLOY / "tmpfiles.d" / "edge-capsules.conf"
USB_MOUNT = DEPLOY / "bin" / "edge-usb-mount"

UNIT_SUFFIXES = (".service", ".socket", ".path", ".timer", ".target", ".mount")
#: The instance verified for a template unit (a USB partition's kernel name).
TEMPLATE_INSTANCE = "sda1"


def _tool(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.access(p, os.X_OK)), None)


SYSTEMD_ANALYZE = _tool("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(Debian: package systemd); the units cannot be verified here")


def _systemd_version() -> int | None:
    if SYSTEMD_ANALYZE is None:
        return None
    out = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True).stdout
    match = re.match(r"systemd (\d+)", out)
    return int(match.group(1)) if match else None


def _host_unit_dir() -> Path | None:
    for d in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(d, "sysinit.target").exists():
            return Path(d)
    return None


def _unit_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(UNIT_SUFFIXES))


def _instance_name(unit_file: str) -> str:
    """``edge-usb-sync@.service`` -> ``edge-usb-sync@sda1.service``; others unchanged."""
    stem, dot, suffix = unit_file.rpartition(".")
    return f"{stem}{TEMPLATE_INSTANCE}.{suffix}" if stem.endswith("@") else unit_file


_EXEC_LINE = re.compile(r"^(?P<key>Exec[A-Za-z]+)=(?P<prefix>[-@:+!]*)(?P<path>/\S+)(?P<rest>.*)$")


def _exec_paths(text: str) -> set[str]:
    """Absolute executables named by the ``Exec*=`` lines (prefixes ``-@:+!`` stripped)."""
    return {m.group("path") for line in text.splitlines() if (m := _EXEC_LINE.match(line.strip()))}


def _stub(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def _system_root(tmp_path: Path, units: dict[str, str], *, stub_exec: bool = True) -> Path:
    """A root directory holding the host's units, ``units`` (name -> text) and exec stubs."""
    host = _host_unit_dir()
    if host is None:
        pytest.skip("no systemd unit directory (/usr/lib/systemd/system) on this machine to resolve targets against")
    root = tmp_path / "root"
    shutil.copytree(host, root / "usr/lib/systemd/system", symlinks=True)
    # Alias symlinks in the host directory point at /lib/systemd/system/...; under --root they
    # resolve inside the root, so give it the merged-/usr link too.
    (root / "lib").symlink_to("usr/lib")
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for name, text in units.items():
        (etc / name).write_text(text)
        if stub_exec:
            for exe in _exec_paths(text):
                _stub(root / exe.lstrip("/"))
    return root


def _problems(proc: subprocess.CompletedProcess) -> list[str]:
    """What a systemd tool reported: every output line, plus its exit status when not 0.

    ``verify`` prints nothing at all for a clean unit, so nothing is filtered out.
    """
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0:
        lines.append(f"exit status {proc.returncode}")
    return lines


def _verify_system(root: Path, names: list[str]) -> list[str]:
    # --recursive-errors=yes (the default, spelt out): a dependency that cannot be loaded is an
    # error too; "no" would hide a Requires= on a unit that does not exist.
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "--recursive-errors=yes", f"--root={root}", *names],
                          capture_output=True, text=True, timeout=60)
    return _problems(proc)


def _verify_user(tmp_path: Path, name: str, text: str, *, stub_exec: bool = True) -> list[str]:
    """Verify a user unit by file path, its executables rewritten to stubs under tmp."""
    stubs = tmp_path / "stubs"
    lines = []
    for line in text.splitlines():
        m = _EXEC_LINE.match(line)
        if m:
            if stub_exec:
                _stub(stubs / m.group("path").lstrip("/"))
            line = f"{m.group('key')}={m.group('prefix')}{stubs}{m.group('path')}{m.group('rest')}"
        lines.append(line)
    unit_dir = tmp_path / "user-units"
    unit_dir.mkdir(exist_ok=True)
    (unit_dir / name).write_text("\n".join(lines) + "\n")
    # The runtime directory holds the user's sockets, whose paths must fit sun_path (108 bytes):
    # a short directory of its own, not one under tmp_path (pytest-xdist's is already ~70 bytes).
    with tempfile.TemporaryDirectory(prefix="xdg-") as runtime:
        os.chmod(runtime, 0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "HOME": str(tmp_path / "home"),
               "XDG_CONFIG_HOME": str(tmp_path / "home/.config"), "XDG_DATA_HOME": str(tmp_path / "home/.local/share")}
        proc = subprocess.run([SYSTEMD_ANALYZE, "--user", "verify", "--man=no", "--recursive-errors=yes",
                               str(unit_dir / name)], capture_output=True, text=True, timeout=60, env=env)
    return _problems(proc)


def _replace_line(text: str, old: str, new: str) -> str:
    """Replace the one directive line ``old`` (a whole line, not a mention in a comment)."""
    pattern = re.compile(rf"^{re.escape(old)}$", re.MULTILINE)
    assert len(pattern.findall(text)) == 1, f"expected one line {old!r}"
    return pattern.sub(lambda _: new, text)


def _read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (continuation lines joined; comments dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    for line in logical:
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _size_bytes(text: str) -> int:
    """``192MiB``, ``256M`` (systemd: 1024-based), ``1G`` -> bytes."""
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    assert m, f"not a size: {text!r}"
    return int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())


SYSTEM_UNITS = [p.name for p in _unit_files(SYSTEM_UNITS_DIR)]
USER_UNITS = [p.name for p in _unit_files(USER_UNITS_DIR)] if USER_UNITS_DIR.is_dir() else []


def test_the_deployment_files_exist():
    assert {"edge-serve.service", "edge-usb-sync@.service", "edge-kiosk.service"} <= set(SYSTEM_UNITS)
    for path in (UDEV_RULES, SYSUSERS, TMPFILES, USB_MOUNT, DEPLOY / "README.md"):
        assert path.is_file(), path


# ---------------------------------------------------------------- systemd-analyze verify

@needs_analyze
@pytest.mark.parametrize("unit", SYSTEM_UNITS)
def test_system_unit_passes_systemd_analyze_verify(unit, tmp_path):
    root = _system_root(tmp_path, {unit: (SYSTEM_UNITS_DIR / unit).read_text()})
    assert _verify_system(root, [_instance_name(unit)]) == []


@needs_analyze
def test_all_system_units_verify_together(tmp_path):
    """Loaded side by side, as on the device: their dependencies on each other resolve."""
    root = _system_root(tmp_path, {u: (SYSTEM_UNITS_DIR / u).read_text() for u in SYSTEM_UNITS})
    assert _verify_system(root, [_instance_name(u) for u in SYSTEM_UNITS]) == []


@needs_analyze
@pytest.mark.parametrize("unit", USER_UNITS)
def test_user_unit_passes_systemd_analyze_verify(unit, tmp_path):
    assert _verify_user(tmp_path, unit, (USER_UNITS_DIR / unit).read_text()) == []


# The harness must be able to fail: each mutation of a real unit must be reported.
MUTATIONS = [
    ("ProtectSystem=strict", "ProtectSystem=stric", "stric"),          # a bad value
    ("NoNewPrivileges=yes", "NoNewPrivilege=yes", "NoNewPrivilege"),    # a misspelt key
    ("Restart=on-failure", "Restart=on-failur", "on-failur"),
    ("MemoryMax=256M", "MemoryMax=256Q", "256Q"),
    ("[Service]", "[Servic]", "Servic"),                                # a misspelt section
]


@needs_analyze
@pytest.mark.parametrize("old,new,reported", MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_verify_reports_a_broken_directive(old, new, reported, tmp_path):
    text = _replace_line((SYSTEM_UNITS_DIR / "edge-serve.service").read_text(), old, new)
    root = _system_root(tmp_path, {"edge-serve.service": text})
    problems = _verify_system(root, ["edge-serve.service"])
    assert problems, f"systemd-analyze verify accepted {new!r}"
    assert any(reported in line for line in problems), problems


@needs_analyze
def test_verify_reports_a_missing_executable(tmp_path):
    """Without the stubs, ``/usr/local/bin/edge`` does not exist in the root: an error, exit 1."""
    root = _system_root(tmp_path, {"edge-serve.service": (SYSTEM_UNITS_DIR / "edge-serve.service").read_text()},
                        stub_exec=False)
    problems = _verify_system(root, ["edge-serve.service"])
    assert any("/usr/local/bin/edge" in line and "not executable" in line for line in problems), problems


@needs_analyze
def test_verify_reports_a_missing_dependency(tmp_path):
    text = _replace_line((SYSTEM_UNITS_DIR / "edge-serve.service").read_text(),
                         "[Unit]", "[Unit]\nRequires=edge-no-such-unit.service")
    problems = _verify_system(_system_root(tmp_path, {"edge-serve.service": text}), ["edge-serve.service"])
    assert any("edge-no-such-unit.service" in line for line in problems), problems


@needs_analyze
@pytest.mark.skipif(not USER_UNITS, reason="no user units under deploy/systemd/user")
def test_user_verify_reports_a_broken_directive(tmp_path):
    name = USER_UNITS[0]
    text = _replace_line((USER_UNITS_DIR / name).read_text(), "Restart=always", "Restart=alway")
    problems = _verify_user(tmp_path, name, text)
    assert any("alway" in line for line in problems), problems


@needs_analyze
def test_edge_serve_security_exposure_is_low(tmp_path):
    """``systemd-analyze security --offline``: exposure at most 2.0 of 10 ("OK"; 1.2 when written)."""
    version = _systemd_version()
    if version is not None and version < 250:
        pytest.skip(f"systemd-analyze security --offline needs systemd >= 250 (this is {version})")
    root = _system_root(tmp_path, {"edge-serve.service": (SYSTEM_UNITS_DIR / "edge-serve.service").read_text()})
    proc = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", f"--root={root}", "--threshold=20",
                           "--no-pager", "edge-serve.service"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "Overall exposure level for edge-serve.service" in proc.stdout


# ---------------------------------------------------------------- what issue 11 requires of the units

def test_edge_serve_has_the_required_hardening():
    unit = _read_unit(SYSTEM_UNITS_DIR / "edge-serve.service")
    svc = unit["Service"]
    one = lambda key: svc.get(key, [None])[-1]  # noqa: E731  (the last assignment wins)
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("WatchdogSec") and int(one("WatchdogSec")) > 0
    assert one("Restart") == "on-failure"
    assert one("User") == "edge-capsules" and one("DynamicUser") in (None, "no")
    assert one("StateDirectory") == "edge-capsules"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert one("LockPersonality") == "yes" and one("RestrictRealtime") == "yes"
    assert "@system-service" in svc["SystemCallFilter"]
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "/etc/edge-capsules" in one("ReadOnlyPaths")
    assert one("ExecStart").split() == ["/usr/local/bin/edge", "serve", "--listen", "127.0.0.1:8080"]
    env = dict(item.split("=", 1) for value in svc["Environment"] for item in value.split())
    assert env["EDGE_STORE_DIR"] == "/var/lib/edge-capsules"
    assert env["EDGE_CONFIG_DIR"] == "/etc/edge-capsules"
    # MemoryMax "matching the RAM budget": above it by a margin for page cache the budget does
    # not charge (mapped weights and capsule), and not absurdly above (at most 2x).
    budget, memory_max = _size_bytes(env["EDGE_RAM_BUDGET"]), _size_bytes(one("MemoryMax"))
    assert budget < memory_max <= 2 * budget


def test_usb_sync_runs_edge_sync_as_the_store_owner_and_mounts_as_root():
    serve = _read_unit(SYSTEM_UNITS_DIR / "edge-serve.service")["Service"]
    sync_unit = _read_unit(SYSTEM_UNITS_DIR / "edge-usb-sync@.service")
    sync = sync_unit["Service"]
    assert sync["Type"] == ["oneshot"]
    assert sync["User"] == serve["User"] and sync["StateDirectory"] == serve["StateDirectory"]
    env = lambda s: dict(i.split("=", 1) for v in s["Environment"] for i in v.split())  # noqa: E731
    assert env(sync)["EDGE_STORE_DIR"] == env(serve)["EDGE_STORE_DIR"]
    assert sync["ExecStart"] == ["/usr/local/bin/edge sync /run/edge-usb/%I"]
    assert all(cmd.startswith("+") for cmd in sync["ExecStartPre"] + sync["ExecStopPost"])  # root for mount
    assert "mount %I" in sync["ExecStartPre"][0] and "umount %I" in sync["ExecStopPost"][0]
    assert sync_unit["Unit"]["BindsTo"] == ["dev-%i.device"]


def test_kiosk_opens_the_page_edge_serve_listens_on():
    serve = _read_unit(SYSTEM_UNITS_DIR / "edge-serve.service")["Service"]
    listen = serve["ExecStart"][-1].split("--listen", 1)[1].split()[0]
    for path in [SYSTEM_UNITS_DIR / "edge-kiosk.service", *(USER_UNITS_DIR / u for u in USER_UNITS)]:
        unit = _read_unit(path)
        argv = unit["Service"]["ExecStart"][-1].split()
        assert argv[0] in ("/usr/bin/chromium", "/usr/bin/chromium-browser"), path
        assert "--kiosk" in argv and f"--app=http://{listen}/" in argv, path
        assert "--incognito" in argv and "--disable-background-networking" in argv, path
        assert unit["Service"]["Restart"] == ["always"], path
    kiosk = _read_unit(SYSTEM_UNITS_DIR / "edge-kiosk.service")
    assert "edge-serve.service" in kiosk["Unit"]["After"][-1].split()
    assert kiosk["Service"]["User"] != ["root"]


# ---------------------------------------------------------------- sysusers.d, tmpfiles.d

def test_sysusers_creates_the_service_user_in_a_tmp_root(tmp_path):
    tool = _tool("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run([tool, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    entry = next(line for line in (tmp_path / "etc/passwd").read_text().splitlines()
                 if line.startswith("edge-capsules:"))
    name, _, uid, gid, _, home, shell = entry.split(":")
    assert int(uid) < 1000, "a system user"
    assert (home, shell) == ("/var/lib/edge-capsules", "/usr/sbin/nologin")
    assert any(line.startswith(f"edge-capsules:x:{gid}:") for line in (tmp_path / "etc/group").read_text().splitlines())


def test_tmpfiles_gives_the_config_the_modes_the_runtime_requires(tmp_path):
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers or systemd-tmpfiles is not installed")
    (tmp_path / "etc").mkdir()
    subprocess.run([sysusers, f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True, timeout=30)
    conf = tmp_path / "etc/edge-capsules"
    (conf / "trusted").mkdir(parents=True)
    key = conf / "device.key"
    key.write_text("not a key\n")
    key.chmod(0o644)  # too open: tmpfiles' "z" line corrects it
    proc = subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES)],
                          capture_output=True, text=True, timeout=30)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if os.geteuid() != 0:
        # Unprivileged, only the chown()s may fail; anything else (a parse error, an unknown
        # user) is a real problem. Owners cannot be checked then, modes and paths can.
        assert all("Operation not permitted" in line for line in lines), lines
    else:
        assert proc.returncode == 0 and lines == [], lines
        uid = int(next(line for line in (tmp_path / "etc/passwd").read_text().splitlines()
                       if line.startswith("edge-capsules:")).split(":")[2])
        assert key.stat().st_uid == uid
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for directory in (conf, conf / "trusted", tmp_path / "run/edge-usb"):
        assert directory.is_dir() and not stat.S_IMODE(directory.stat().st_mode) & 0o022, directory


# ---------------------------------------------------------------- udev rule

def _udevadm_verify_supported() -> tuple[str | None, str]:
    udevadm = _tool("udevadm") or (os.access("/usr/sbin/udevadm", os.X_OK) and "/usr/sbin/udevadm") or None
    if udevadm is None:
        return None, "udevadm is not installed"
    probe = subprocess.run([udevadm, "verify", "--help"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        version = subprocess.run([udevadm, "--version"], capture_output=True, text=True).stdout.strip()
        return None, f"udevadm {version} has no 'verify' command (added in systemd 254)"
    return udevadm, ""


def test_udev_rule_passes_udevadm_verify(tmp_path):
    udevadm, why = _udevadm_verify_supported()
    if udevadm is None:
        pytest.skip(why)
    proc = subprocess.run([udevadm, "verify", str(UDEV_RULES)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The negative case: an operator udev rejects (systemd's own test of `udevadm verify`,
    # test/units/testsuite-17.11.sh: 'ACTION:="b"' -> "Invalid operator for ACTION.").
    broken = tmp_path / "99-broken.rules"
    broken.write_text(_replace_line(UDEV_RULES.read_text(), 'ACTION!="add", GOTO="edge_capsules_usb_end"',
                                    'ACTION:="add", GOTO="edge_capsules_usb_end"'))
    proc = subprocess.run([udevadm, "verify", str(broken)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, "udevadm verify accepted ACTION:="
    assert "Invalid operator" in proc.stdout + proc.stderr


_UDEV_PAIR = re.compile(r'\s*(?P<key>[A-Z_]+(?:\{[^}]*\})?)\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*(?:,|$)')
_UDEV_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ENV", "TAG", "GOTO", "LABEL", "ATTRS", "SUBSYSTEMS", "DRIVERS"}


def _udev_rules(text: str) -> list[list[tuple[str, str, str]]]:
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs, pos = [], 0
        while pos < len(line):
            m = _UDEV_PAIR.match(line, pos)
            assert m, f"{UDEV_RULES.name}:{number}: cannot parse at column {pos + 1}: {line[pos:]!r}"
            pairs.append((m.group("key"), m.group("op"), m.group("value")))
            pos = m.end()
        rules.append(pairs)
    return rules


def test_udev_rule_parses_and_starts_the_sync_unit_for_usb_filesystems_only():
    """Runs everywhere (udevadm 252 here has no ``verify``): the syntax udev accepts, the GOTO
    target exists, and the unit it wants is our template."""
    rules = _udev_rules(UDEV_RULES.read_text())
    for pairs in rules:
        for key, op, _ in pairs:
            assert key.split("{")[0] in _UDEV_KEYS, key
            if key in ("GOTO", "LABEL"):
                assert op == "=", key
    labels = {v for pairs in rules for k, _, v in pairs if k == "LABEL"}
    assert {v for pairs in rules for k, _, v in pairs if k == "GOTO"} <= labels
    guards = {(k, v) for pairs in rules for k, op, v in pairs if op == "!="}
    assert {("ACTION", "add"), ("SUBSYSTEM", "block"), ("ENV{ID_BUS}", "usb"),
            ("ENV{ID_FS_USAGE}", "filesystem")} <= guards
    (wants,) = [v for pairs in rules for k, _, v in pairs if k == "ENV{SYSTEMD_WANTS}"]
    assert wants == "edge-usb-sync@%k.service"
    assert (SYSTEM_UNITS_DIR / "edge-usb-sync@.service").is_file()
    assert any(("TAG", "+=", "systemd") in pairs for pairs in rules)


# ---------------------------------------------------------------- the mount helper

def test_usb_mount_helper_is_valid_sh_and_refuses_paths_before_touching_anything():
    assert os.access(USB_MOUNT, os.X_OK)
    subprocess.run(["sh", "-n", str(USB_MOUNT)], check=True)
    for args, status in ((["mount", "../sda1"], 2), (["mount", "-o"], 2), (["mount", "sd/a"], 2),
                         (["mount", ""], 2), (["eject", "sda1"], 2), (["mount"], 2)):
        proc = subprocess.run([str(USB_MOUNT), *args], capture_output=True, text=True, timeout=10)
        assert proc.returncode == status, (args, proc.stderr)
    # A device that is not there: refused before mkdir or mount.
    proc = subprocess.run([str(USB_MOUNT), "mount", "edge-test-no-such-device"], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and "not a block device" in proc.stderr
