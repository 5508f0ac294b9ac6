"""``edge serve`` as a real process on a loopback port, called over real HTTP: the JSON API, the
kiosk page without JavaScript, metrics and logs, bad requests, slow clients, a full queue (503),
hot installs under concurrent queries, removal and expiry (README "Device service")."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("starlette", reason="edge serve needs the 'serve' extra (pip install '.[serve]')")
pytest.importorskip("uvicorn", reason="edge serve needs the 'serve' extra (pip install '.[serve]')")

from .conftest import TINY_DOCS, build_test_capsule  # noqa: E402
from .serving import Device, Server, wait_until  # noqa: E402
from .vectors.harness import KEYS, VECTORS  # noqa: E402

EXPIRES_IN_S = 10  # about when the expired-capsule test comes (the tests before it take ~10 s here)


@pytest.fixture(scope="module")
def expiring(tmp_path_factory, errcodes_capsule):
    """A tiny capsule that expires ``EXPIRES_IN_S`` seconds after this module starts (same keys
    as the errcodes capsule), and the time it expires."""
    tmp = tmp_path_factory.mktemp("expiring")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    built = build_test_capsule(TINY_DOCS / "good", tmp / "soon.capsule", keys_dir=errcodes_capsule.publisher_pub_path.parent,
                               name="soon", issued_at=now - timedelta(hours=1),
                               expires_at=now + timedelta(seconds=EXPIRES_IN_S))
    return built, now + timedelta(seconds=EXPIRES_IN_S)


@pytest.fixture(scope="module")
def device(tmp_path_factory, errcodes_capsule, expiring):
    """A device with the errcodes capsule and the soon-expiring one installed."""
    device = Device(tmp_path_factory.mktemp("device"), device_key=errcodes_capsule.device_key_path,
                    publisher_pubs=[errcodes_capsule.publisher_pub_path])
    device.install(errcodes_capsule.path, expiring[0].path)
    return device


@pytest.fixture(scope="module")
def server(device):
    with Server(device) as running:
        yield running


def _q(**params) -> str:
    return "/api/search?" + urllib.parse.urlencode(params, doseq=True)


def test_search_returns_hits_with_text_heading_highlights_source_position_and_timings(server):
    status, body = server.get_json(_q(q="22P02", k=3, capsule="errcodes"))
    assert status == 200, body
    assert body["mode"] == "hybrid" and body["exact_match"] is True and body["capsules"] == {"errcodes": 1}
    first = body["hits"][0]
    assert first["rank"] == 1 and first["capsule"] == "errcodes" and first["exact"] is True
    assert "invalid_text_representation" in first["text"]
    assert first["heading_path"] and first["document"].endswith(".html")
    assert first["char_end"] > first["char_start"] >= 0
    assert any(first["text"][a:b].casefold() == "22p02" for a, b in first["highlights"])
    assert first["matched"] == ["dense", "lexical"] or "lexical" in first["matched"]
    assert body["timings_ms"]["search"] > 0 and "embed_ms" in body["timings_ms"] and "highlight_ms" in body["timings_ms"]


def test_shape_array_returns_only_the_hits(server):
    status, body = server.get_json(_q(q="22P02", k=2, capsule="errcodes", _shape="array"))
    assert status == 200 and isinstance(body, list) and len(body) == 2


def test_an_absent_code_is_no_entry_in_json_and_on_the_page(server):
    status, body = server.get_json(_q(q="E-9999", capsule="errcodes"))
    assert status == 200 and body["exact_match"] is False
    status, _, page = server.request("/?q=E-9999")
    assert status == 200 and b"No entry for <strong>E-9999</strong>" in page
    assert b'class="hit"' not in page  # no near-looking passage shown as if it were the answer


def test_the_page_without_javascript_renders_results_on_the_server(server):
    status, headers, page = server.request("/?" + urllib.parse.urlencode({"q": "invalid_text_representation"}))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<mark>invalid_text_representation</mark>' in page and b"<details>" in page
    assert b'http-equiv="refresh"' in page  # the idle reset without JavaScript
    assert b'value="invalid_text_representation"' in page
    status, _, page = server.request("/")
    assert status == 200 and b'<label for="q">' in page and b'class="hit"' not in page
    for asset in ("/static/kiosk.css", "/static/kiosk.js"):
        status, _, body = server.request(asset)
        assert status == 200 and body


def test_a_query_is_escaped_in_the_page(server):
    status, _, page = server.request("/?" + urllib.parse.urlencode({"q": '"><script>alert(1)</script>'}))
    assert status == 200 and b"<script>alert(1)" not in page and b"&lt;script&gt;" in page


def test_capsules_chunks_health_and_metrics(server):
    status, body = server.get_json("/api/capsules")
    assert status == 200
    by_name = {c["name"]: c for c in body["capsules"]}
    assert by_name["errcodes"]["status"] == "ok" and by_name["errcodes"]["version"] == 1
    assert by_name["errcodes"]["days_left"] > 300 and by_name["errcodes"]["n_chunks"] > 10
    status, chunk = server.get_json("/api/capsules/errcodes/chunks/0")
    assert status == 200 and chunk["chunk_id"] == 0 and chunk["text"]
    status, health = server.get_json("/healthz")
    assert status == 200 and health["status"] == "ok" and health["capsules_served"] >= 1
    server.get_json(_q(q="k=0 refusal", k=0))
    status, _, metrics = server.request("/metrics")
    text = metrics.decode()
    assert status == 200 and 'edge_queries_total{mode="hybrid"}' in text
    assert 'edge_refusals_total{reason="bad-request"}' in text and "edge_query_seconds_bucket" in text
    assert "edge_budget_reserved_bytes" in text and "process_resident_memory_bytes" in text


def test_one_log_line_per_query_without_the_query_text(server):
    server.get_json(_q(q="a private question about 42601", capsule="errcodes"))
    line = wait_until(lambda: [r for r in server.query_log() if r.get("hits") and r.get("capsules") == ["errcodes"]],
                      10)[-1]
    assert set(line) >= {"time", "capsules", "k", "mode", "ms", "hits", "refusal"} and line["refusal"] is None
    assert not any("private question" in raw for raw in server.lines)


@pytest.mark.parametrize("path, status, word", [
    ("/api/search", 400, "query"),
    ("/api/search?q=", 400, "query"),
    ("/api/search?q=" + "x" * 5000, 400, "query"),
    ("/api/search?q=a&k=0", 400, "query"),
    ("/api/search?q=a&k=51", 400, "query"),
    ("/api/search?q=a&k=ten", 400, "query"),
    ("/api/search?q=a&k=1&k=2", 400, "query"),
    ("/api/search?q=a&mode=fuzzy", 400, "query"),
    ("/api/search?q=a&capsule=nothing", 404, "store"),
    ("/api/search?q=a&capsule=../etc", 400, "query"),
    ("/api/search?q=%zz", 400, "query"),
    ("/api/search?q=%ff%fe", 400, "query"),
    ("/api/search?q=%C3", 400, "query"),
    ("/api/capsules/nothing/chunks/0", 404, "store"),
    ("/api/capsules/errcodes/chunks/-1", 400, "query"),
    ("/api/capsules/errcodes/chunks/abc", 400, "query"),
    ("/api/capsules/errcodes/chunks/999999", 400, "query"),
    ("/api/capsules/..%2F..%2Fetc%2Fpasswd/chunks/0", 404, "not-found"),
    ("/static/../../../etc/passwd", 404, "not-found"),
    ("/no/such/page", 404, "not-found"),
])
def test_bad_requests_get_a_json_4xx_and_the_server_goes_on(server, path, status, word):
    got, headers, body = server.request(path)
    assert got == status, body[:300]
    if word != "not-found" or headers.get("content-type", "").startswith("application/json"):
        import json

        assert json.loads(body)["error"] == word
    assert server.get_json("/healthz")[0] == 200


def test_other_methods_are_refused_read_only(server):
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = server.request("/api/search?q=a", method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD"


def test_a_slow_client_is_cut_off_and_does_not_hold_up_others(device):
    with Server(device, "--header-timeout", "2") as server:
        slow = [socket.create_connection((server.host, server.port)) for _ in range(20)]
        for sock in slow:
            sock.sendall(b"GET /api/search?q=22P02 HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        started = time.monotonic()
        assert server.get_json(_q(q="22P02", capsule="errcodes"))[0] == 200  # served meanwhile
        trickling, closed = list(slow), 0
        while trickling and time.monotonic() - started < 10:  # one header line per socket every 0.25 s
            for sock in list(trickling):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:  # the server cut it off (the send after its close fails)
                    closed += 1
                    trickling.remove(sock)
                    sock.close()
            time.sleep(0.25)
        for sock in trickling:
            sock.close()
        assert closed == len(slow) and time.monotonic() - started < 10


def test_a_full_queue_answers_503_with_retry_after_and_nothing_else_fails(device):
    with Server(device, "--queue-depth", "1") as server:
        barrier = threading.Barrier(24)

        def one(i: int):
            barrier.wait()
            if i % 4 == 3:  # the kiosk page too: a visitor reads "busy", not an error
                status, headers, body = server.request("/?" + urllib.parse.urlencode({"q": f"syntax error {i}"}))
            else:
                status, headers, body = server.request(_q(q=f"syntax error number {i}", k=10, capsule="errcodes"))
            return status, headers.get("retry-after"), body

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(one, range(24)))
        statuses = [s for s, _, _ in results]
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
        import json

        for status, retry_after, body in results:
            if status == 503:
                assert retry_after == "1"
                if body.startswith(b"{"):
                    assert json.loads(body)["error"] == "busy"
                else:
                    assert b"Busy. Please try again in a moment." in body
        assert server.get_json("/healthz")[0] == 200


def test_hot_install_under_concurrent_queries_switches_versions_without_a_failed_request(tmp_path):
    device = Device(tmp_path, device_key=KEYS / "test-device.key", publisher_pubs=[KEYS / "test-publisher-1.pub"])
    device.install(VECTORS / "older-version" / "capsule")  # alpha v1
    with Server(device) as server:
        assert server.get_json(_q(q="reset the kiosk"))[1]["capsules"] == {"alpha": 1}
        stop = threading.Event()
        seen: list[list[tuple[int, dict]]] = [[] for _ in range(4)]

        def client(n: int) -> None:
            while not stop.is_set():
                status, body = server.get_json(_q(q="How do I reset the kiosk?", k=2))
                seen[n].append((status, body.get("capsules")))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            device.install(VECTORS / "ok" / "capsule")  # alpha v2, while the clients query
            assert wait_until(lambda: server.get_json("/api/capsules")[1]["capsules"][0]["version"] == 2, 20)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        for answers in seen:
            assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
            versions = [caps["alpha"] for _, caps in answers]
            assert set(versions) <= {1, 2} and versions == sorted(versions)  # never back, never mixed
        assert any(2 in [caps["alpha"] for _, caps in answers] for answers in seen)
        # removal stops serving at once
        assert device.cli("remove", "alpha").returncode == 0
        status, body = server.get_json(_q(q="reset"))
        assert status == 404 and body["reason"] == "no-capsule"
        status, _, page = server.request("/?q=reset")
        assert status == 404 and b"No information is installed yet" in page


def test_an_empty_store_says_no_capsule(tmp_path):
    device = Device(tmp_path, device_key=KEYS / "test-device.key", publisher_pubs=[KEYS / "test-publisher-1.pub"])
    with Server(device) as server:
        status, body = server.get_json(_q(q="anything"))
        assert status == 404 and body == {"error": "store", "reason": "no-capsule", "message": "no capsule is installed"}
        assert server.get_json("/api/capsules") == (200, {"capsules": []})


def test_an_expired_capsule_is_left_out_and_alone_it_is_410(server, expiring):
    _, expires_at = expiring
    assert server.get_json(_q(q="reset", capsule="soon"))[0] in (200, 410)
    delay = (expires_at - datetime.now(timezone.utc)).total_seconds() + 1
    if delay > 0:
        time.sleep(delay)
    status, body = server.get_json(_q(q="reset", capsule="soon"))
    assert status == 410 and body["error"] == "expired" and body["reason"] == "expired"
    status, _, page = server.request("/?q=reset&capsule=soon")
    assert status == 410 and b"This information has expired. Please ask staff." in page
    status, body = server.get_json(_q(q="22P02"))  # all capsules: the expired one is skipped
    assert status == 200 and body["capsules"] == {"errcodes": 1} and body["skipped"] == {"soon": "expired"}
    statuses = {c["name"]: c["status"] for c in server.get_json("/api/capsules")[1]["capsules"]}
    assert statuses == {"errcodes": "ok", "soon": "expired"}


def test_systemd_notify_ready_and_watchdog_over_a_real_notify_socket(device, tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(30)
        with Server(device, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}):
            messages = [notify.recv(4096).decode()]
            while not any(m == "WATCHDOG=1" for m in messages):
                messages.append(notify.recv(4096).decode())  # every 0.5 s while the worker answers
        assert messages[0].startswith("READY=1\nSTATUS=serving http://127.0.0.1:")
        assert notify.recv(4096).decode() in ("WATCHDOG=1", "STOPPING=1")


def test_the_server_stops_cleanly_on_sigterm(device):
    server = Server(device)
    assert server.stop() == 0


_ALPHABET = [b"q=", b"k=", b"mode=", b"capsule=", b"document=", b"&", b"=", b"%", b"%2", b"%zz", b"%ff", b"%C3%A9",
             b"%00", b"%0A", b"22P02", b"E-9999", b"*", b"..", b"/", b"+", b"0", b"50", b"-1", b"hybrid", b"x" * 300]


def _raw_get(server, target: bytes) -> tuple[int, bytes]:
    """GET with a request target sent byte for byte (http.client refuses some of these)."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_random_query_strings_get_an_answer_or_a_json_4xx_never_a_5xx(server):
    import json
    import random

    rng = random.Random(20261204)
    for _ in range(150):
        query = b"".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 12)))
        status, body = _raw_get(server, b"/api/search?" + query)
        assert status in (200, 400, 404, 410), (query, status, body[:200])
        if status != 200:
            assert json.loads(body)["error"] in ("query", "store", "expired", "not-found"), (query, body[:200])
    assert server.get_json("/healthz")[0] == 200


def test_a_trust_update_that_revokes_the_publisher_stops_serving_its_capsule(tmp_path):
    import os
    import shutil

    from .conftest import run_cli

    device = Device(tmp_path / "device", device_key=KEYS / "test-device.key", publisher_pubs=[])
    assert run_cli("firmware_tools", "keygen", "--kind", "root", "-o", str(tmp_path / "root.key")).returncode == 0

    def trust(version_file: str, *args: str) -> None:
        proc = run_cli("firmware_tools", "trust", "-o", str(tmp_path / version_file), "--root-key",
                       str(tmp_path / "root.key"), *args)
        assert proc.returncode == 0, proc.stderr

    trust("trust-v1.json", "--delegate", str(KEYS / "test-publisher-1.pub"), "--expires", "2090-01-01")
    proc = device.cli("trust", "install", str(tmp_path / "trust-v1.json"), "--root", str(tmp_path / "root.pub"))
    assert proc.returncode == 0, proc.stderr
    shutil.copy(KEYS / "test-device.key", tmp_path / "d.key")
    os.chmod(tmp_path / "d.key", 0o600)
    device.install(VECTORS / "ok" / "capsule")  # alpha, signed by publisher 1
    with Server(device) as server:
        assert server.get_json(_q(q="reset the kiosk"))[0] == 200
        trust("trust-v2.json", "--previous", str(tmp_path / "trust-v1.json"), "--delegate",
              str(KEYS / "test-publisher-3.pub"), "--expires", "2090-01-01", "--revoke", str(KEYS / "test-publisher-1.pub"))
        assert device.cli("trust", "install", str(tmp_path / "trust-v2.json")).returncode == 0
        status, body = server.get_json(_q(q="reset the kiosk"))
        assert status == 404 and body["reason"] == "no-capsule" and "revoked" in body["message"]
        capsules = server.get_json("/api/capsules")[1]["capsules"]
        assert [(c["name"], c["status"]) for c in capsules] == [("alpha", "error")] and "revoked" in capsules[0]["error"]
