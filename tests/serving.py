"""Test helpers for ``edge serve``: a device (store + config dir) and a real server process on a
loopback port, called over real HTTP (``http.client``)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .conftest import ROOT, run_cli


class Device:
    """A fresh store and ``$EDGE_CONFIG_DIR`` holding one device key and the trusted publisher keys."""

    def __init__(self, root: Path, *, device_key: Path, publisher_pubs: list[Path]) -> None:
        self.root = root
        self.store = root / "store"
        self.config = root / "config"
        (self.config / "trusted").mkdir(parents=True)
        for pub in publisher_pubs:
            shutil.copy(pub, self.config / "trusted" / pub.name)
        shutil.copy(device_key, self.config / "device.key")
        os.chmod(self.config / "device.key", 0o600)
        self.env = {"EDGE_STORE_DIR": str(self.store), "EDGE_CONFIG_DIR": str(self.config)}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli("edge", *args, env=self.env)

    def install(self, *paths: Path) -> None:
        proc = self.cli("install", *map(str, paths))
        assert proc.returncode == 0, proc.stderr


class Server:
    """``python -m edge serve --listen 127.0.0.1:0 ...`` as a subprocess; stderr collected."""

    def __init__(self, device: Device, *args: str, timeout_s: float = 90.0, env: dict | None = None) -> None:
        extra = env or {}
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(device.env)
        env.update(extra)
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT,
                                     text=True, encoding="utf-8", errors="replace")
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise AssertionError("edge serve did not start:\n" + "\n".join(self.lines))
        if not self.url:
            self.stop()
            raise AssertionError("edge serve exited:\n" + "\n".join(self.lines))
        host_port = self.url.split("//", 1)[1].rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            if " at http://" in line and "serving" in line:
                self.url = line.split(" at ", 1)[1].split(" ", 1)[0]
                self._ready.set()
        self._ready.set()

    def request(self, path: str, *, method: str = "GET", timeout_s: float = 30.0) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get_json(self, path: str, **kwargs) -> tuple[int, dict]:
        status, headers, body = self.request(path, **kwargs)
        assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
        return status, json.loads(body)

    def query_log(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith('{"event": "query"')]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2):
    """Poll ``predicate`` until it returns a true value (returned) or ``timeout_s`` passes (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None
