"""``edge serve``: the device store over HTTP, a JSON API and the kiosk page.

Starlette (routing, responses, static files) on uvicorn (HTTP/1.1 over h11 and asyncio),
chosen by measured memory (README "Device service", ``bench/bench_http_servers.py``). The event
loop parses and checks requests, renders responses and never touches a capsule; every capsule
call runs on **one worker thread** (``CapsuleService`` is single-threaded by design), behind a
bounded queue: with ``queue_depth`` requests admitted, the next gets ``503`` with
``Retry-After``, so waiting requests cannot grow memory. Slow clients are cut off: a request's
headers must arrive within ``header_timeout_s`` of the connection (or of the previous response),
at most ``max_connections`` connections are open, and a header block is at most 16 KiB.

Endpoints (all ``GET``; nothing changes state over HTTP, wherever it is bound):

- ``/``: the kiosk page; ``/?q=...`` renders results on the server (works without JavaScript);
- ``/api/search?q=&k=&mode=&capsule=&document=``: hits as JSON;
- ``/api/capsules``, ``/api/capsules/{name}/chunks/{id}``, ``/healthz``, ``/metrics``.

Errors are JSON ``{"error": <expect word>, "reason": <visitor state>, "message": ...}`` with the
same ``expect`` words as ``edge --json`` (FORMAT.md §11).

Size: ~630 lines: request parsing, the status-code policy, the worker queue, metrics and the
uvicorn glue (slow-client deadline, sd_notify) belong together; the page's HTML is in
``edge.kiosk_page``.

Source: RFC 9110 (status codes, ``Retry-After``), Prometheus text exposition format 0.0.4,
systemd ``sd_notify(3)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import re
import socket
import string
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .clock import format_time, utc_now
from .errors import (
    EdgeError, ExpiredCapsuleError, NotYetValidError, QueryError, RateLimitedError, RuleViolationError,
)
from .lexical import MAX_QUERY_CHARS
from .kiosk_page import asset, render_hits, render_state
from .service import CapsuleService, NoCapsuleError, UnknownCapsuleError

if TYPE_CHECKING:
    from starlette.responses import Response

__all__ = ["ServeConfig", "create_app", "serve", "parse_listen"]

log = logging.getLogger("edge.serve")
query_log = logging.getLogger("edge.serve.query")

#: Largest ``k`` a request may ask for (a capsule's own ``query_limits.max_k`` may be lower).
MAX_K = 50
#: Longest raw query string accepted, in bytes (a query of ``MAX_QUERY_CHARS`` CJK characters,
#: percent-encoded, is 36 KiB).
MAX_QUERY_STRING_BYTES = 40 * 1024
#: Most parameters in one query string.
MAX_PARAMS = 32
_MODES = ("hybrid", "dense", "lexical")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]-]{1,64}")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: Latency histogram buckets, seconds.
_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ServeConfig:
    """How ``edge serve`` runs.

    Attributes:
        host, port: where to listen (``127.0.0.1:8080`` by default; port 0 picks a free one).
        queue_depth: requests admitted to the worker at once (running plus waiting); more get 503.
        max_connections: open connections at most; more get 503 from uvicorn.
        header_timeout_s: seconds a connection may take to send a request's headers.
        keep_alive_s: seconds an idle keep-alive connection stays open.
        log_queries: write the query text into the per-query log line (personal data: off).
        idle_reset_s: seconds of no touch after which the kiosk page returns to its start.
        keyboard: show the on-screen keyboard on the kiosk page by default.
        title: the kiosk page's heading.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    queue_depth: int = 16
    max_connections: int = 128
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    log_queries: bool = False
    idle_reset_s: int = 90
    keyboard: bool = False
    title: str = "Ask a question"


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[IPv6]:PORT`` or ``PORT``.

    Raises:
        ValueError: not of that form, or the port is outside 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


class BadRequest(Exception):
    """A request parameter is missing, malformed or out of range (HTTP 400)."""


# -- request parsing --------------------------------------------------------------------------
def parse_query_string(raw: bytes) -> dict[str, list[str]]:
    """Parse a raw query string strictly: percent-encoded ASCII, valid UTF-8 after decoding.

    Raises:
        BadRequest: too long, too many parameters, a malformed ``%`` escape, raw non-ASCII
            bytes, or bytes that are not UTF-8 once decoded.
    """
    if len(raw) > MAX_QUERY_STRING_BYTES:
        raise BadRequest(f"the query string is over {MAX_QUERY_STRING_BYTES} bytes")
    if _BAD_PERCENT.search(raw):
        raise BadRequest("malformed percent-encoding in the query string")
    try:
        text = raw.decode("ascii")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                                       max_num_fields=MAX_PARAMS)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not percent-encoded UTF-8") from None
    except ValueError:
        raise BadRequest(f"more than {MAX_PARAMS} parameters in the query string") from None
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


@dataclass(frozen=True)
class SearchParams:
    """A checked search request."""

    q: str
    k: int
    mode: str | None
    capsules: tuple[str, ...] | None
    documents: tuple[str, ...] | None
    version: int | None = None


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"parameter {name!r} is given more than once")
    return values[0]


def search_params(params: dict[str, list[str]], *, default_k: int = 5) -> SearchParams:
    """Check ``q``, ``k``, ``mode``, ``capsule``, ``document`` and ``version``.

    Raises:
        BadRequest: ``q`` missing, empty or over ``MAX_QUERY_CHARS``; ``k`` not an integer in
            1..``MAX_K``; an unknown ``mode``; a capsule name or document glob that is malformed.
    """
    q = _one(params, "q")
    if q is None or not q.strip():
        raise BadRequest("parameter 'q' (the query) is missing or empty")
    if len(q) > MAX_QUERY_CHARS:
        raise BadRequest(f"the query is {len(q)} characters; at most {MAX_QUERY_CHARS}")
    k_text = _one(params, "k")
    k = default_k
    if k_text not in (None, ""):
        if not k_text.isascii() or not k_text.isdigit() or not 1 <= int(k_text) <= MAX_K:
            raise BadRequest(f"parameter 'k' must be an integer from 1 to {MAX_K}")
        k = int(k_text)
    mode = _one(params, "mode") or None
    if mode is not None and mode not in _MODES:
        raise BadRequest(f"parameter 'mode' must be one of {', '.join(_MODES)}")
    capsules = tuple(params.get("capsule", ())) or None
    for name in capsules or ():
        if not _NAME_PATTERN.fullmatch(name):
            raise BadRequest("parameter 'capsule' must be an installed name or a glob of one")
    documents = tuple(params.get("document", ())) or None
    for pattern in documents or ():
        if not pattern or len(pattern) > 256 or any(ord(c) < 32 for c in pattern):
            raise BadRequest("parameter 'document' must be a glob of 1-256 printable characters")
    version_text = _one(params, "version")
    version = None
    if version_text not in (None, ""):
        if not version_text.isascii() or not version_text.isdigit() or not 1 <= int(version_text) <= 1 << 53:
            raise BadRequest("parameter 'version' must be a version number, 1 or more")
        version = int(version_text)
    return SearchParams(q, k, mode, capsules, documents, version)


# -- errors -----------------------------------------------------------------------------------
class _Busy(Exception):
    """The worker's queue is full (HTTP 503)."""

    def __str__(self) -> str:
        return "the server is busy: too many requests are waiting; retry shortly"


def error_status(exc: BaseException) -> tuple[int, str, str]:
    """Map an exception to ``(HTTP status, expect word, visitor reason)``."""
    if isinstance(exc, _Busy):
        return 503, "busy", "busy"
    if isinstance(exc, BadRequest):
        return 400, "query", "bad-request"
    if isinstance(exc, UnknownCapsuleError):
        return 404, "store", "unknown-capsule"
    if isinstance(exc, NoCapsuleError):
        return 404, "store", "no-capsule"
    if isinstance(exc, QueryError):
        return 400, "query", "bad-request"
    if isinstance(exc, ExpiredCapsuleError):
        return 410, "expired", "expired"
    if isinstance(exc, NotYetValidError):
        return 403, "not-yet-valid", "not-yet-valid"
    if isinstance(exc, RateLimitedError):
        return 429, exc.expect, "busy"
    if isinstance(exc, RuleViolationError):
        return 403, exc.expect, "refused"
    if isinstance(exc, EdgeError):
        if exc.expect == "over-budget":
            return 503, exc.expect, "busy"
        return 500, exc.expect, "error"
    return 500, "internal", "error"


def _log_line(fields: dict[str, Any]) -> None:
    """One JSON line on the query log: ``event``, ``time`` (UTC), then ``fields``."""
    line = {"event": "query", "time": format_time(utc_now()), **fields}
    query_log.info(json.dumps(line, ensure_ascii=False))


# -- metrics ----------------------------------------------------------------------------------
class _Metrics:
    def __init__(self, service: CapsuleService) -> None:
        import prometheus_client as prom

        prom.disable_created_metrics()  # no *_created series: nothing here needs them
        self.registry = prom.CollectorRegistry()
        self.queries = prom.Counter("edge_queries", "Searches answered", ["mode"], registry=self.registry)
        self.refusals = prom.Counter("edge_refusals", "Requests refused, by reason", ["reason"], registry=self.registry)
        self.latency = prom.Histogram("edge_query_seconds", "Search latency (queue wait included), seconds",
                                      buckets=_BUCKETS, registry=self.registry)
        self.queue = prom.Gauge("edge_queue_requests", "Requests admitted to the worker now", registry=self.registry)
        budget = service.budget
        limit = prom.Gauge("edge_budget_limit_bytes", "Memory budget (0: unlimited)", registry=self.registry)
        limit.set_function(lambda: budget.limit_bytes or 0)
        reserved = prom.Gauge("edge_budget_reserved_bytes", "Memory reserved in the budget", registry=self.registry)
        reserved.set_function(lambda: budget.reserved_bytes)
        served = prom.Gauge("edge_capsules_served", "Capsules open and served", registry=self.registry)
        served.set_function(lambda: len(service.served))
        prom.ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, ...
        self._generate = prom.generate_latest
        self.content_type = prom.CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        return self._generate(self.registry)


# -- the application --------------------------------------------------------------------------
class EdgeApp:
    """The HTTP front of one ``CapsuleService``; builds the Starlette application (``app``)."""

    def __init__(self, service: CapsuleService, config: ServeConfig) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        self.service = service
        self.config = config
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-worker")
        self.pending = 0
        self.metrics = _Metrics(service)
        self._page = string.Template(asset("index.html"))
        routes = [
            Route("/", self.page, methods=["GET", "HEAD"]),
            Route("/api/search", self.api_search, methods=["GET", "HEAD"]),
            Route("/api/capsules", self.api_capsules, methods=["GET", "HEAD"]),
            Route("/api/capsules/{name}/chunks/{chunk_id}", self.api_chunk, methods=["GET", "HEAD"]),
            Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
            Route("/metrics", self.metrics_page, methods=["GET", "HEAD"]),
            Mount("/static", app=StaticFiles(packages=[("edge", "kiosk")]), name="static"),
        ]
        self.app = Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed,
                                                                  500: self._internal},
                             lifespan=self._lifespan)
        self._refresher: asyncio.Task | None = None

    # -- worker ----------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., Any], *args: Any, admit: bool = True) -> Any:
        """Run ``fn`` on the worker thread; with ``admit``, refuse past the queue depth."""
        if admit and self.pending >= self.config.queue_depth:
            raise _Busy()
        self.pending += 1
        self.metrics.queue.set(self.pending)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)
        finally:
            self.pending -= 1
            self.metrics.queue.set(self.pending)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        await self._startup()
        try:
            yield
        finally:
            await self._shutdown()

    async def _startup(self) -> None:
        await self._run(self.service.refresh, admit=False)
        self._refresher = asyncio.create_task(self._follow_store())

    async def _follow_store(self) -> None:
        """Look at the store every 2 s when idle, so removals and expiry close capsules promptly."""
        while True:
            await asyncio.sleep(2.0)
            if self.pending == 0:
                try:
                    await self._run(self.service.refresh, admit=False)
                except Exception as exc:  # logged; the next request reports it
                    log.error("following the store failed: %s", exc)

    async def _shutdown(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await asyncio.get_running_loop().run_in_executor(self.worker, self.service.close)
        self.worker.shutdown(wait=True)

    async def worker_alive(self, timeout_s: float) -> bool:
        """Whether the worker thread runs a no-op within ``timeout_s`` (health, watchdog)."""
        try:
            await asyncio.wait_for(self._run(lambda: None, admit=False), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    # -- responses ---------------------------------------------------------------------------
    def _error(self, exc: BaseException, *, what: str) -> "Response":
        from starlette.responses import JSONResponse

        status, expect, reason = error_status(exc)
        self.metrics.refusals.labels(reason=reason).inc()
        message = str(exc) or type(exc).__name__
        if status >= 500 and expect != "busy":
            log.error("%s failed: %s: %s", what, type(exc).__name__, message)
            if status == 500 and expect == "internal":
                message = "internal error (see the service log)"
        headers = {}
        if status in (503, 429):
            retry = getattr(exc, "retry_after_s", None)
            headers["Retry-After"] = str(max(1, int(retry + 0.999))) if retry else "1"
        return JSONResponse({"error": expect, "reason": reason, "message": message}, status_code=status,
                            headers=headers)

    async def _not_found(self, request, exc) -> "Response":
        from starlette.responses import JSONResponse

        self.metrics.refusals.labels(reason="not-found").inc()
        return JSONResponse({"error": "not-found", "reason": "not-found", "message": f"no such page: {request.url.path}"},
                            status_code=404)

    async def _not_allowed(self, request, exc) -> "Response":
        from starlette.responses import JSONResponse

        self.metrics.refusals.labels(reason="method").inc()
        return JSONResponse({"error": "method", "reason": "bad-request",
                             "message": f"{request.method} is not allowed: this service is read-only"},
                            status_code=405, headers={"Allow": "GET, HEAD"})

    async def _internal(self, request, exc) -> "Response":
        return self._error(exc, what=request.url.path)

    # -- search -----------------------------------------------------------------------------
    def _search_payload(self, params: SearchParams) -> dict[str, Any]:
        found = self.service.search(params.q, params.k, mode=params.mode, capsules=params.capsules,
                                    documents=params.documents, version=params.version)
        result = found.result
        timings = result.timings
        return {
            "query": params.q, "k": params.k, "mode": result.mode, "exact_match": result.exact_match,
            "identifiers": list(result.identifiers), "capsules": found.capsules, "skipped": found.skipped,
            "hits": [{"rank": rank, **hit.to_json()} for rank, hit in enumerate(result, 1)],
            "timings_ms": {"search": round(found.elapsed_ms, 3),
                           **({k: round(v, 3) for k, v in vars(timings).items()} if timings is not None else {})},
        }

    async def _search(self, params: SearchParams) -> dict[str, Any]:
        started = time.perf_counter()
        refusal = None
        payload: dict[str, Any] | None = None
        try:
            payload = await self._run(self._search_payload, params)
            self.metrics.queries.labels(mode=payload["mode"]).inc()
            return payload
        except BaseException as exc:
            refusal = error_status(exc)[2]
            raise
        finally:
            elapsed = time.perf_counter() - started
            if refusal is None:
                self.metrics.latency.observe(elapsed)
            self._log_query(params, payload, elapsed, refusal)

    def _log_query(self, params: SearchParams, payload: dict[str, Any] | None, elapsed: float,
                   refusal: str | None) -> None:
        line = {"capsules": sorted(payload["capsules"]) if payload else list(params.capsules or ["*"]),
                "k": params.k, "mode": payload["mode"] if payload else params.mode, "ms": round(elapsed * 1e3, 2),
                "hits": len(payload["hits"]) if payload else 0,
                "exact_match": payload["exact_match"] if payload else None, "refusal": refusal}
        if self.config.log_queries:
            line["query"] = params.q
        _log_line(line)

    async def api_search(self, request) -> "Response":
        from starlette.responses import JSONResponse

        try:
            params = search_params(parse_query_string(request.scope["query_string"]))
        except BadRequest as exc:
            _log_line({"refusal": "bad-request", "message": str(exc)})
            return self._error(exc, what="search")
        try:
            payload = await self._search(params)
        except Exception as exc:
            return self._error(exc, what="search")
        shape = request.query_params.get("_shape")
        if shape == "array":
            return JSONResponse(payload["hits"])
        return JSONResponse(payload)

    async def api_capsules(self, request) -> "Response":
        from starlette.responses import JSONResponse

        try:
            statuses = await self._run(self.service.statuses)
        except Exception as exc:
            return self._error(exc, what="capsules")
        return JSONResponse({"capsules": [s.to_json() for s in statuses]})

    async def api_chunk(self, request) -> "Response":
        from starlette.responses import JSONResponse

        name, chunk_text = request.path_params["name"], request.path_params["chunk_id"]
        try:
            if not _NAME_PATTERN.fullmatch(name) or any(c in name for c in "*?[]"):
                raise BadRequest("malformed capsule name")
            if not chunk_text.isascii() or not chunk_text.isdigit() or len(chunk_text) > 12:
                raise BadRequest("the chunk id must be a non-negative integer")
            hit = await self._run(self.service.read, name, int(chunk_text))
        except Exception as exc:
            return self._error(exc, what="read")
        return JSONResponse(hit.to_json())

    async def healthz(self, request) -> "Response":
        from starlette.responses import JSONResponse

        alive = await self.worker_alive(5.0)
        served = len(self.service.served)
        return JSONResponse({"status": "ok" if alive else "stalled", "capsules_served": served,
                             "queue": self.pending}, status_code=200 if alive else 503)

    async def metrics_page(self, request) -> "Response":
        from starlette.responses import Response

        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    # -- the page ----------------------------------------------------------------------------
    async def page(self, request) -> "Response":
        from starlette.responses import HTMLResponse

        status = 200
        q = ""
        results = ""
        fragment = b"_fragment=1" in request.scope["query_string"]  # kiosk.js asks for the results block
        try:
            params = parse_query_string(request.scope["query_string"])
            q = _one(params, "q") or ""
            if q.strip():
                payload = await self._search(search_params(params))
                results = render_hits(payload)
        except Exception as exc:
            status, expect, reason = error_status(exc)
            self.metrics.refusals.labels(reason=reason).inc()
            if status >= 500 and expect != "busy":
                log.error("page search failed: %s: %s", type(exc).__name__, exc)
            results = render_state(reason)
        headers = {"Retry-After": "1"} if status == 503 else {}
        if fragment:
            return HTMLResponse(results, status_code=status, headers=headers)
        body = self._page.safe_substitute(
            title=html.escape(self.config.title), query=html.escape(q, quote=True), results=results,
            idle_reset_s=str(self.config.idle_reset_s), keyboard="on" if self.config.keyboard else "off",
            refresh=(f'<noscript><meta http-equiv="refresh" content="{self.config.idle_reset_s};url=/"></noscript>'
                     if q else ""))
        return HTMLResponse(body, status_code=status, headers=headers)


def create_app(service: CapsuleService, config: ServeConfig | None = None) -> EdgeApp:
    """Return the ``EdgeApp`` (its ``.app`` is the ASGI application) for ``service``."""
    return EdgeApp(service, config or ServeConfig())


# -- uvicorn, slow clients, systemd -------------------------------------------------------------
def _bounded_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol with a deadline for each request's headers (slowloris).

    uvicorn bounds a header block's size (``h11_max_incomplete_event_size``) and idle keep-alive
    time, but not the time a client takes to send headers: a client sending a byte every few
    seconds holds its connection for ever. This subclass closes a connection whose request
    headers are not complete ``header_timeout_s`` after it opened or after the last response.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._deadline_passed)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _deadline_passed(self) -> None:
            self._deadline = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                log.info("closing a connection from %s: no complete request within %.0f s",
                         self.client[0] if self.client else "?", header_timeout_s)
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers are in; the response is ours to finish

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedH11Protocol


def _sd_notify(message: str) -> None:
    """Send one ``sd_notify(3)`` datagram to ``$NOTIFY_SOCKET``, if set (no libsystemd needed:
    the protocol is one datagram on a Unix socket, ``@`` meaning the abstract namespace)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


def serve(service: CapsuleService, config: ServeConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; closes the service's capsules on the way out.

    Binds the socket first (so port 0 resolves to a real port before ``on_ready`` is called
    with the URL), then runs uvicorn. Under systemd (``Type=notify``) it sends ``READY=1`` once
    serving and ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while the worker thread answers.

    Raises:
        OSError: the address cannot be bound (in use, not local, no permission).
    """
    import uvicorn

    edge_app = create_app(service, config)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(128)
    sock.set_inheritable(False)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    uv_config = uvicorn.Config(
        edge_app.app, http=_bounded_protocol(config.header_timeout_s), lifespan="on", access_log=False,
        log_config=None, limit_concurrency=config.max_connections, timeout_keep_alive=int(config.keep_alive_s),
        h11_max_incomplete_event_size=16 * 1024, server_header=False, timeout_graceful_shutdown=5)

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            if on_ready is not None:
                on_ready(url)
            _sd_notify("READY=1\nSTATUS=serving " + url)
            watchdog_us = os.environ.get("WATCHDOG_USEC", "")
            if watchdog_us.isdigit() and int(watchdog_us) > 0:
                asyncio.get_running_loop().create_task(self._watchdog(int(watchdog_us) / 2e6))

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets=sockets)
            # uvicorn re-raises SIGTERM/SIGINT once shut down, which would end the process before
            # the store is closed; the shutdown was graceful, so the exit status is 0.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

        async def _watchdog(self, interval_s: float) -> None:
            while not self.should_exit:
                if await edge_app.worker_alive(interval_s):
                    _sd_notify("WATCHDOG=1")
                await asyncio.sleep(interval_s)

    try:
        _Server(uv_config).run(sockets=[sock])
    finally:
        sock.close()
        _sd_notify("STOPPING=1")
