"""The fault-injecting proxy, against a tiny threaded HTTP upstream."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from bench.faultproxy import Fault, FaultProxy

MODELS = {"object": "list", "data": [{"id": "stand-in", "object": "model"}]}
MODELS_BODY = json.dumps(MODELS).encode()
SSE_EVENTS = [
    b"data: " + json.dumps({"choices": [{"delta": {"content": f"tok{i} "}}]}).encode() + b"\n\n"
    for i in range(50)
] + [b"data: [DONE]\n\n"]
SSE_BODY = b"".join(SSE_EVENTS)


class Upstream(BaseHTTPRequestHandler):
    """Writes each response head and body in one write, so the proxy sees one chunk."""

    protocol_version = "HTTP/1.1"
    hits = 0

    def do_GET(self) -> None:
        Upstream.hits += 1
        if self.path == "/v1/models":
            self._send(MODELS_BODY, "application/json")
        elif self.path.startswith("/v1/blob/"):
            self._send(b"x" * int(self.path.rsplit("/", 1)[1]), "application/octet-stream")
        else:
            self._send(b"{}", "application/json", status="404 Not Found")

    def do_POST(self) -> None:
        Upstream.hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.wfile.write(_head(len(SSE_BODY), "text/event-stream"))
        for event in SSE_EVENTS:
            self.wfile.write(event)

    def _send(self, body: bytes, content_type: str, status: str = "200 OK") -> None:
        self.wfile.write(_head(len(body), content_type, status) + body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _head(length: int, content_type: str, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the proxy resets upstream connections on purpose (cut, refuse)


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = QuietServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream) as started:
        yield started


def client(timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(timeout=timeout, trust_env=False)


def get(proxy: FaultProxy, path: str = "/models", timeout: float = 5.0) -> httpx.Response:
    with client(timeout) as http:
        return http.get(proxy.base_url + path)


def chat(proxy: FaultProxy) -> httpx.Response:
    with client() as http:
        return http.post(proxy.base_url + "/chat/completions", json={"stream": True})


def timed_get(proxy: FaultProxy, path: str = "/models") -> float:
    start = time.monotonic()
    assert get(proxy, path).status_code == 200
    return time.monotonic() - start


def test_healthy_proxy_passes_responses_through(proxy: FaultProxy, upstream: int) -> None:
    assert proxy.base_url == f"http://127.0.0.1:{proxy.port}/v1"
    assert proxy.port not in (0, upstream)
    models = get(proxy)
    assert models.status_code == 200
    assert models.json() == MODELS
    stream = chat(proxy)
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.content == SSE_BODY
    stats = proxy.stats
    assert stats["accepted"] == 2
    assert stats["bytes_down"] > len(SSE_BODY) + len(MODELS_BODY)
    assert stats["bytes_up"] > 0
    assert stats["cut"] == 0


def test_latency_and_bounded_jitter(proxy: FaultProxy) -> None:
    baseline = max(timed_get(proxy) for _ in range(2))
    assert baseline < 0.25
    proxy.set(latency_s=0.25, jitter_s=0.1)
    times = [timed_get(proxy) for _ in range(8)]
    assert all(0.25 <= t < baseline + 0.25 + 0.1 + 0.1 for t in times), (baseline, times)
    # Eight uniform draws over 0.1 s all within 10 ms of each other: chance below 1e-6.
    assert max(times) - min(times) > 0.01, "jitter should vary the delay"


def test_bandwidth_cap_sets_the_transfer_time(proxy: FaultProxy) -> None:
    proxy.set(bandwidth_bps=20_000)
    elapsed = timed_get(proxy, "/blob/20000")
    assert 0.9 <= elapsed < 1.5, elapsed


def test_bandwidth_change_applies_to_a_flowing_stream(proxy: FaultProxy) -> None:
    proxy.set(bandwidth_bps=5_000)  # 40 kB would take 8 s at this rate
    start = time.monotonic()
    with client() as http, http.stream("GET", proxy.base_url + "/blob/40000") as response:
        chunks = response.iter_bytes()
        received = len(next(chunks))
        proxy.set(bandwidth_bps=None)
        received += sum(len(chunk) for chunk in chunks)
    assert received == 40_000
    assert time.monotonic() - start < 1.5


def test_refuse_then_recover_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.set(refuse=True)
    start = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        get(proxy)
    assert time.monotonic() - start < 0.5
    with socket.socket() as raw, pytest.raises(ConnectionRefusedError):
        raw.connect(("127.0.0.1", port))
    proxy.set(None)
    assert proxy.port == port
    assert get(proxy).json() == MODELS


def test_refuse_resets_pooled_keep_alive_connections(proxy: FaultProxy) -> None:
    with client() as http:
        assert http.get(proxy.base_url + "/models").status_code == 200
        proxy.set(refuse=True)
        with pytest.raises(httpx.ConnectError):
            http.get(proxy.base_url + "/models")


def test_blackhole_reads_the_request_and_never_answers(proxy: FaultProxy) -> None:
    proxy.set(blackhole=True)
    with pytest.raises(httpx.ReadTimeout):
        get(proxy, timeout=0.5)
    assert proxy.stats["bytes_up"] > 0
    assert proxy.stats["bytes_down"] == 0


def test_cut_after_bytes_ends_the_stream_early(proxy: FaultProxy) -> None:
    proxy.set(cut_after_bytes=500)
    body = b""
    with (
        client() as http,
        http.stream("POST", proxy.base_url + "/chat/completions", json={}) as response,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            body += chunk
    assert 0 < len(body) < 500
    assert b"[DONE]" not in body
    assert proxy.stats["cut"] == 1
    assert proxy.stats["bytes_down"] == 500


@pytest.mark.parametrize("status", [500, 429, 503])
def test_http_status_is_answered_without_upstream(proxy: FaultProxy, status: int) -> None:
    hits = Upstream.hits
    proxy.set(Fault(http_status=status))
    response = chat(proxy)
    assert response.status_code == status
    assert response.json() == {"error": {"message": f"injected {status}"}}
    assert response.headers["connection"] == "close"
    assert response.headers.get("retry-after") == (None if status == 500 else "1")
    assert Upstream.hits == hits


def test_flap_alternates_between_healthy_and_refusing(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.set(flap_period_s=0.3)
    outcomes: list[str] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            outcomes.append(str(get(proxy, timeout=0.5).status_code))
        except httpx.ConnectError:
            outcomes.append("refused")
        except (httpx.ReadError, httpx.RemoteProtocolError):
            outcomes.append("dropped")  # in flight when the refusing half began
        time.sleep(0.05)
    assert outcomes[0] == "200", "flapping starts healthy"
    assert "200" in outcomes[1:] and "refused" in outcomes, outcomes
    proxy.set(None)
    assert proxy.port == port
    assert get(proxy).status_code == 200


def test_set_updates_fields_and_validates(proxy: FaultProxy) -> None:
    proxy.set(Fault(latency_s=0.1))
    proxy.set(jitter_s=0.05)
    assert proxy.fault == Fault(latency_s=0.1, jitter_s=0.05)
    proxy.set()
    assert proxy.fault == Fault()
    with pytest.raises(ValueError):
        proxy.set(bandwidth_bps=0)
    with pytest.raises(TypeError):
        proxy.set(no_such_field=1)


def test_stop_returns_quickly_with_a_blackholed_connection_open(upstream: int) -> None:
    proxy = FaultProxy("127.0.0.1", upstream).start()
    try:
        proxy.set(blackhole=True)
        raw = socket.create_connection(("127.0.0.1", proxy.port))
        raw.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 2.0
        while proxy.stats["bytes_up"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.stats["accepted"] == 1
        start = time.monotonic()
        proxy.stop()
        assert time.monotonic() - start < 2.0
    finally:
        proxy.stop()  # a no-op once stopped
    raw.settimeout(2.0)
    with raw, contextlib.suppress(ConnectionResetError):
        assert raw.recv(1) == b"", "the proxy should have closed the connection"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1.0).close()
