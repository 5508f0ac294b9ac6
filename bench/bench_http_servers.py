"""Benchmark: candidate HTTP server libraries for ``edge serve``, chosen by measured RSS.

Not a test, and not imported by the project. Each candidate serves the same three routes:

    GET /healthz              -> {"ok": true}
    GET /api/echo?q=...       -> {"q": "..."}
    GET /static/index.html    -> a ~20 KB HTML file from disk

Candidates (run from scratch virtualenvs, never the project's .venv):

    starlette_uvicorn          Starlette under plain ``uvicorn`` (h11 + asyncio loop)
    starlette_uvicorn_standard Starlette under ``uvicorn[standard]`` (httptools + uvloop)
    aiohttp                    aiohttp.web's own server
    falcon_asgi_uvicorn        falcon.asgi.App under plain uvicorn (h11 + asyncio)
    falcon_wsgi_waitress       falcon.App (WSGI) under waitress (4 worker threads, its default)
    stdlib_threading           http.server.ThreadingHTTPServer (baseline only, HTTP/1.1 keep-alive)

For each, a fresh server process on 127.0.0.1 (free port) is measured for:

 1. seconds from ``Popen`` (interpreter start + imports + bind) to the first 200 on /healthz;
 2. VmRSS / RssAnon from /proc/PID/status after startup plus one request to each route;
 3. ``wrk -t2 -c50 -d20s --latency`` on /api/echo?q=x: requests/s, p50/p99, errors, and
    VmRSS / RssAnon / VmHWM right after the load (wrk and the server share this machine's CPUs);
 4. slow-client probes (server defaults): how long a connection that sends nothing, and one that
    sends half a request line, or one that got a response and then goes quiet, stays open (capped at --probe-cap seconds); the reply to a
    64 KiB and a 1 MiB header; for uvicorn candidates, a short wrk run with ``limit_concurrency=10`` counting 503s;
 5. installed size (RECORD of each dist in the dependency closure) and, per dist, whether a
    manylinux2014_aarch64 / py3-none-any wheel exists (``pip download --only-binary=:all:``).

Documentation facts (OpenAPI, timeout and limit settings) are recorded as notes, not measured.

    python bench/bench_http_servers.py --python /tmp/srvbench/bin/python \
        --std-python /tmp/srvbench-std/bin/python --out bench/results/http_servers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HOST = "127.0.0.1"

# --------------------------------------------------------------------------- server apps

STARLETTE_APP = r'''
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, Mount
from starlette.staticfiles import StaticFiles

async def healthz(request):
    return JSONResponse({"ok": True})

async def echo(request):
    return JSONResponse({"q": request.query_params.get("q", "")})

app = Starlette(routes=[
    Route("/healthz", healthz),
    Route("/api/echo", echo),
    Mount("/static", StaticFiles(directory=sys.argv[2])),
])

if __name__ == "__main__":
    std = sys.argv[3] == "standard"
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]),
                loop="auto" if std else "asyncio", http="auto" if std else "h11",
                ws="none", log_level="warning", access_log=False, limit_concurrency=limit)
'''

AIOHTTP_APP = r'''
import sys
from aiohttp import web

async def healthz(request):
    return web.json_response({"ok": True})

async def echo(request):
    return web.json_response({"q": request.query.get("q", "")})

app = web.Application()
app.add_routes([web.get("/healthz", healthz), web.get("/api/echo", echo),
                web.static("/static", sys.argv[2])])

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''

FALCON_ASGI_APP = r'''
import sys, uvicorn
import falcon.asgi

class Health:
    async def on_get(self, req, resp):
        resp.media = {"ok": True}

class Echo:
    async def on_get(self, req, resp):
        resp.media = {"q": req.get_param("q", default="")}

app = falcon.asgi.App()
app.add_route("/healthz", Health())
app.add_route("/api/echo", Echo())
app.add_static_route("/static", sys.argv[2])

if __name__ == "__main__":
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="asyncio", http="h11",
                ws="none", log_level="warning", access_log=False, limit_concurrency=limit)
'''

FALCON_WSGI_APP = r'''
import sys, logging
import falcon, waitress

class Health:
    def on_get(self, req, resp):
        resp.media = {"ok": True}

class Echo:
    def on_get(self, req, resp):
        resp.media = {"q": req.get_param("q", default="")}

app = falcon.App()
app.add_route("/healthz", Health())
app.add_route("/api/echo", Echo())
app.add_static_route("/static", sys.argv[2])

if __name__ == "__main__":
    logging.getLogger("waitress").setLevel(logging.ERROR)
    waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=4, _quiet=True)
'''

STDLIB_APP = r'''
import sys, json, os
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlsplit, parse_qs

STATIC = os.path.realpath(sys.argv[2])

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers+body as two writes hit the 40 ms delayed ACK
    def log_message(self, *a):
        pass
    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        u = urlsplit(self.path)
        if u.path == "/healthz":
            return self._send(200, b'{"ok": true}', "application/json")
        if u.path == "/api/echo":
            q = parse_qs(u.query).get("q", [""])[0]
            return self._send(200, json.dumps({"q": q}).encode(), "application/json")
        if u.path.startswith("/static/"):
            p = os.path.realpath(os.path.join(STATIC, u.path[len("/static/"):]))
            if p.startswith(STATIC + os.sep) and os.path.isfile(p):
                with open(p, "rb") as f:
                    return self._send(200, f.read(), "text/html; charset=utf-8")
        self._send(404, b'{"error": "not found"}', "application/json")

if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''

CANDIDATES = [
    {"name": "starlette_uvicorn", "venv": "main", "app": STARLETTE_APP, "mode": "plain",
     "roots": ["starlette", "uvicorn"], "uvicorn": True,
     "desc": "Starlette + uvicorn (no extras: h11, asyncio loop)"},
    {"name": "starlette_uvicorn_standard", "venv": "std", "app": STARLETTE_APP,
     "mode": "standard", "roots": ["starlette", "uvicorn[standard]"], "uvicorn": True,
     "desc": "Starlette + uvicorn[standard] (httptools, uvloop; ws='none')"},
    {"name": "aiohttp", "venv": "main", "app": AIOHTTP_APP, "mode": "-", "roots": ["aiohttp"],
     "uvicorn": False, "desc": "aiohttp.web own server"},
    {"name": "falcon_asgi_uvicorn", "venv": "main", "app": FALCON_ASGI_APP, "mode": "plain",
     "roots": ["falcon", "uvicorn"], "uvicorn": True,
     "desc": "falcon.asgi.App + uvicorn (h11, asyncio)"},
    {"name": "falcon_wsgi_waitress", "venv": "main", "app": FALCON_WSGI_APP, "mode": "-",
     "roots": ["falcon", "waitress"], "uvicorn": False,
     "desc": "falcon.App (WSGI) + waitress, threads=4"},
    {"name": "stdlib_threading", "venv": "main", "app": STDLIB_APP, "mode": "-", "roots": [],
     "uvicorn": False, "desc": "http.server.ThreadingHTTPServer (baseline only)"},
]

# Documentation facts, as of the versions measured (see the respective docs).
NOTES = {
    "starlette_uvicorn": {
        "wheels": "all seven dists are pure Python (py3-none-any): nothing to compile on ARM.",
        "openapi": "Partial: starlette.schemas.SchemaGenerator builds an OpenAPI dict from "
                   "route docstrings (YAML, written by hand) and can serve it via "
                   "OpenApiResponse; no request/response models are derived (FastAPI adds "
                   "that, at the cost of pydantic).",
        "slow_clients": "uvicorn: --timeout-keep-alive (default 5 s) closes idle keep-alive "
                        "connections; h11 caps an incomplete request head at "
                        "h11_max_incomplete_event_size (default 16 KiB, then 400); "
                        "--limit-max-requests, --backlog; no separate header-read/body-read "
                        "deadline (see slow-client probe for what the defaults do).",
        "overload": "uvicorn limit_concurrency=N: beyond N concurrent connections+tasks it "
                    "answers 503 Service Unavailable (measured below).",
    },
    "aiohttp": {
        "openapi": "None built-in; third-party aiohttp-apispec / aiohttp-swagger "
                   "(less maintained).",
        "slow_clients": "AppRunner/run_app keepalive_timeout (default 75 s); handler_args / "
                        "run_app kwargs max_line_size (8190), max_field_size (8190), "
                        "max_headers (32768 total in 3.x); read_bufsize; client_max_size for "
                        "bodies (default 1 MiB). No header-read deadline other than keep-alive.",
        "wheels": "aiohttp, multidict, yarl, frozenlist, propcache ship aarch64 wheels and "
                  "also py3-none-any fallbacks (pure-Python, slower).",
        "overload": "No built-in concurrency cap / 503; a middleware with an asyncio.Semaphore "
                    "is needed (backlog= bounds the accept queue only).",
    },
    "falcon_asgi_uvicorn": {
        "wheels": "falcon ships Cython-compiled aarch64 wheels and a py3-none-any wheel.",
        "openapi": "None built-in (falcon-apispec / spectree are third-party).",
        "slow_clients": "As uvicorn (timeout_keep_alive, h11 head-size limit).",
        "overload": "uvicorn limit_concurrency=N -> 503 (measured below).",
    },
    "falcon_wsgi_waitress": {
        "wheels": "falcon ships Cython-compiled aarch64 wheels and a py3-none-any wheel.",
        "openapi": "None built-in (falcon-apispec / spectree are third-party).",
        "slow_clients": "waitress: channel_timeout (default 120 s inactivity), "
                        "max_request_header_size (default 256 KiB -> 431), "
                        "max_request_body_size (1 GiB); request bodies are buffered by the "
                        "async I/O thread before a worker thread sees them, so slow clients "
                        "do not tie up workers.",
        "overload": "connection_limit (default 100) stops accepting beyond N connections "
                    "(they wait in backlog), no 503; requests queue for the `threads` workers.",
    },
    "stdlib_threading": {
        "wheels": "stdlib.",
        "openapi": "None.",
        "slow_clients": "Only BaseHTTPRequestHandler.timeout (socket timeout, default None = "
                        "none); 65536-byte request-line limit, 100 headers. One thread per "
                        "connection, unbounded.",
        "overload": "None; a thread per connection without limit.",
    },
}
NOTES["starlette_uvicorn_standard"] = dict(
    NOTES["starlette_uvicorn"],
    wheels="httptools, uvloop, websockets, watchfiles, pyyaml are compiled (aarch64 wheels "
           "exist); uvicorn picks them automatically when installed.",
    slow_clients="uvicorn with httptools: --timeout-keep-alive (default 5 s); "
                 "no h11 head-size limit applies (httptools parser limits instead).")

# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_mem(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
                v = v.split()[0]
                out[k] = int(v) if k == "Threads" else round(int(v) / 1024, 1)
    return out


def get(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_first_200(url: str, proc, limit: float = 30.0) -> float | None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            return None
        try:
            st, _ = get(url, timeout=0.5)
            if st == 200:
                return time.perf_counter()
        except Exception:
            time.sleep(0.005)
    return None


def to_ms(s: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    v, u = float(m.group(1)), m.group(2)
    return round(v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[u], 3)


def run_wrk(url: str, threads: int, conns: int, duration: int) -> dict:
    p = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", url],
                       capture_output=True, text=True, timeout=duration + 30)
    txt = p.stdout
    res = {"cmd": f"wrk -t{threads} -c{conns} -d{duration}s --latency {url}"}
    m = re.search(r"Requests/sec:\s+([\d.]+)", txt)
    res["requests_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", txt)
    res["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", txt, re.M)
        res[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
    res["socket_errors"] = ({k: int(v) for k, v in zip(("connect", "read", "write", "timeout"),
                                                         m.groups())} if m else
                            {"connect": 0, "read": 0, "write": 0, "timeout": 0})
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", txt)
    res["non_2xx"] = int(m.group(1)) if m else 0
    res["errors_total"] = res["non_2xx"] + sum(res["socket_errors"].values())
    return res


def open_duration(port: int, payload: bytes, cap: float) -> dict:
    """Seconds until the server closes a connection that sent ``payload`` then nothing."""
    s = socket.create_connection((HOST, port))
    s.settimeout(cap)
    got = b""
    if payload.endswith(b"\r\n\r\n"):  # a whole request: read its response, then idle
        s.sendall(payload)
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        payload, got = b"", b""
    t0 = time.perf_counter()
    if payload:
        s.sendall(payload)
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        s.close()
        return {"closed_after_s": None, "still_open_at_cap_s": cap, "reply": got[:60].decode(
            "latin-1").split("\r\n")[0] or None}
    except OSError as e:
        got = got or repr(e).encode()
    s.close()
    return {"closed_after_s": round(time.perf_counter() - t0, 2),
            "reply": got[:60].decode("latin-1").split("\r\n")[0] or None}


def big_header(port: int, size: int) -> str:
    s = socket.create_connection((HOST, port))
    s.settimeout(10)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        data = s.recv(200)
        return data.decode("latin-1").split("\r\n")[0] or "closed without reply"
    except OSError as e:
        return f"connection error: {type(e).__name__}"
    finally:
        s.close()


# --------------------------------------------------------------------------- package info

PKG_SNIPPET = r'''
import json, sys, importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
roots = json.loads(sys.argv[1])
seen = {}
todo = [(Requirement(r).name, set(Requirement(r).extras)) for r in roots]
while todo:
    name, extras = todo.pop()
    key = canonicalize_name(name)
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    if key in seen and extras <= seen[key]["extras"]:
        continue
    ent = seen.setdefault(key, {"extras": set()})
    ent["extras"] |= extras
    ent["version"] = d.version
    size = 0
    for f in d.files or []:
        p = f.locate()
        try:
            size += p.stat().st_size
        except OSError:
            pass
    ent["bytes"] = size
    for r in d.requires or []:
        req = Requirement(r)
        env_ok = any(req.marker is None or req.marker.evaluate({"extra": e})
                     for e in (extras or {""})) if req.marker else True
        if env_ok:
            todo.append((req.name, set(req.extras)))
print(json.dumps({k: {"version": v["version"], "bytes": v["bytes"]} for k, v in seen.items()}))
'''

_AARCH64_CACHE: dict = {}


def aarch64_wheel(py: str, name: str, version: str) -> str:
    key = (name, version)
    if key in _AARCH64_CACHE:
        return _AARCH64_CACHE[key]
    d = tempfile.mkdtemp(prefix="whl-")
    try:
        subprocess.run([py, "-m", "pip", "download", "-q", "--only-binary=:all:",
                        "--platform", "manylinux2014_aarch64", "--python-version", "3.11",
                        "--no-deps", "-d", d, f"{name}=={version}"],
                       capture_output=True, text=True, timeout=120)
        files = os.listdir(d)
        if not files:
            res = "no aarch64 wheel"
        elif files[0].endswith("-none-any.whl"):
            res = "pure Python (py3-none-any)"
        else:
            res = "aarch64 wheel: " + files[0].split("-", 2)[2]
    except Exception as e:  # noqa: BLE001
        res = f"check failed: {e}"
    finally:
        shutil.rmtree(d, ignore_errors=True)
    _AARCH64_CACHE[key] = res
    return res


def package_info(py: str, roots: list[str], check_aarch64: bool) -> dict:
    if not roots:
        return {"dists": {}, "count": 0, "installed_mib": 0.0}
    out = subprocess.run([py, "-c", PKG_SNIPPET, json.dumps(roots)], capture_output=True,
                         text=True, check=True).stdout
    dists = json.loads(out)
    for name, d in dists.items():
        d["mib"] = round(d.pop("bytes") / 2**20, 2)
        if check_aarch64:
            d["aarch64"] = aarch64_wheel(py, name, d["version"])
    return {"dists": dists, "count": len(dists),
            "installed_mib": round(sum(d["mib"] for d in dists.values()), 2)}


# --------------------------------------------------------------------------- one candidate


def start(py: str, app_file: str, port: int, static: str, mode: str, extra: list[str]):
    return subprocess.Popen([py, app_file, str(port), static, mode, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc) -> str:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return (proc.stderr.read() or b"").decode(errors="replace")[-500:]


def bench_one(c: dict, py: str, workdir: str, static: str, html: bytes, args) -> dict:
    app_file = os.path.join(workdir, f"app_{c['name']}.py")
    with open(app_file, "w") as f:
        f.write(c["app"])
    port = free_port()
    base = f"http://{HOST}:{port}"
    res: dict = {"description": c["desc"], "python": py}
    t0 = time.perf_counter()
    proc = start(py, app_file, port, static, c["mode"], [])
    t1 = wait_first_200(base + "/healthz", proc)
    if t1 is None:
        res["error"] = "server did not start: " + stop(proc)
        return res
    try:
        res["start_to_first_200_s"] = round(t1 - t0, 3)
        st_h, body_h = get(base + "/healthz")
        st_e, body_e = get(base + "/api/echo?q=hello%20world")
        st_s, body_s = get(base + "/static/index.html")
        res["checks"] = {
            "healthz": st_h == 200 and json.loads(body_h) == {"ok": True},
            "echo": st_e == 200 and json.loads(body_e) == {"q": "hello world"},
            "static": st_s == 200 and body_s == html,
        }
        time.sleep(1.0)
        res["idle"] = proc_mem(proc.pid)
        res["load"] = run_wrk(base + "/api/echo?q=x", 2, args.connections, args.duration)
        res["after_load"] = proc_mem(proc.pid)
        time.sleep(2.0)
        res["after_load_plus_2s"] = proc_mem(proc.pid)
        # slow-client probes, run concurrently (defaults of each server)
        probes: dict = {}

        def run_probe(key, payload):
            probes[key] = open_duration(port, payload, args.probe_cap)

        th = [threading.Thread(target=run_probe, args=("idle_connection_no_bytes", b"")),
              threading.Thread(target=run_probe, args=("partial_request_line",
                                                       b"GET /healthz HTT")),
              threading.Thread(target=run_probe, args=(
                  "idle_after_one_response",
                  b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))]
        for t in th:
            t.start()
        probes["header_64KiB"] = big_header(port, 64 * 1024)
        probes["header_1MiB"] = big_header(port, 1024 * 1024)
        for t in th:
            t.join()
        res["slow_client_probes"] = probes
    finally:
        err = stop(proc)
    if err.strip():
        res["stderr_tail"] = err
    if c["uvicorn"]:
        port2 = free_port()
        p2 = start(py, app_file, port2, static, c["mode"], [str(args.limit_concurrency)])
        if wait_first_200(f"http://{HOST}:{port2}/healthz", p2) is not None:
            w = run_wrk(f"http://{HOST}:{port2}/api/echo?q=x", 2, args.connections, 3)
            res["overload_probe"] = {"limit_concurrency": args.limit_concurrency,
                                     "wrk": w["cmd"], "requests": w["requests"],
                                     "non_2xx_responses (503)": w["non_2xx"],
                                     "socket_errors": w["socket_errors"]}
        stop(p2)
    return res


# --------------------------------------------------------------------------- main


def machine() -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cpu_model": cpu, "nproc": os.cpu_count(), "mem_total_mib": int(mem) // 1024,
            "kernel": platform.release(), "arch": platform.machine(), "wrk": wrk.strip(),
            "note": "wrk (2 threads) and the server run on the same vCPUs, so requests/s and "
                    "latency are relative figures, not device figures; RSS is what matters."}


def html_page() -> bytes:
    row = ("<tr><td>capsule-{i:03d}</td><td>Lorem ipsum dolor sit amet, consectetur "
           "adipiscing elit.</td><td>{i}</td></tr>\n")
    body = "".join(row.format(i=i) for i in range(200))
    page = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Edge kiosk</title>"
            "</head><body><h1>Edge Capsules</h1><table>\n" + body + "</table></body></html>\n")
    page = page[: 20 * 1024 - 16] if len(page) > 20 * 1024 else page
    return page.encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default="/tmp/srvbench/bin/python",
                    help="venv with starlette, uvicorn, aiohttp, falcon, waitress")
    ap.add_argument("--std-python", default="/tmp/srvbench-std/bin/python",
                    help="venv with starlette + uvicorn[standard] (skipped if missing)")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--probe-cap", type=float, default=12.0)
    ap.add_argument("--limit-concurrency", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="candidate names to run")
    ap.add_argument("--no-aarch64-check", action="store_true")
    ap.add_argument("--out", help="write the JSON here as well as printing it")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found")
    pys = {"main": args.python, "std": args.std_python}
    workdir = tempfile.mkdtemp(prefix="srvbench-")
    static = os.path.join(workdir, "static")
    os.makedirs(static)
    html = html_page()
    with open(os.path.join(static, "index.html"), "wb") as f:
        f.write(html)
    results: dict = {
        "benchmark": "bench/bench_http_servers.py",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "python": subprocess.run([args.python, "-c", "import sys; print(sys.version)"],
                                 capture_output=True, text=True).stdout.strip(),
        "static_file_bytes": len(html),
        "settings": {"wrk_threads": 2, "connections": args.connections,
                     "duration_s": args.duration, "probe_cap_s": args.probe_cap,
                     "log": "access logs off, log level warning, for every candidate"},
        "candidates": {},
    }
    try:
        for c in CANDIDATES:
            if args.only and c["name"] not in args.only:
                continue
            py = pys[c["venv"]]
            if not os.path.exists(py):
                results["candidates"][c["name"]] = {"skipped": f"{py} missing"}
                continue
            print(f"[bench] {c['name']} ...", file=sys.stderr, flush=True)
            r = bench_one(c, py, workdir, static, html, args)
            r["packages"] = package_info(py, c["roots"], not args.no_aarch64_check)
            r["docs"] = NOTES[c["name"]]
            results["candidates"][c["name"]] = r
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
