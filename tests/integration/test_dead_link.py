"""A cloud that accepts connections and never answers (a half-open link, a captive portal, a dead
uplink), with default settings: the first request waits one first-token deadline (seconds, not
the minute of the read timeout) and is answered locally; after it, no request touches the cloud
until a probe sees it answer. A real `tandem serve` process with the real local model."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.integration.gateway_proc import gateway_server

ANSWER_WITHIN_S = 5.0


class BlackHole:
    """A TCP server on loopback that accepts every connection, reads and records what arrives,
    and never answers; the connections stay open until it stops."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._first_lines: list[str] = []
        self.chat_arrivals: list[float] = []  # time.monotonic() of each chat request
        self._connections: list[socket.socket] = []
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, method: str, path_end: str) -> int:
        """How many requests arrived whose first line is ``METHOD .../path_end HTTP/...``."""
        with self._lock:
            lines = list(self._first_lines)
        return sum(
            1
            for line in lines
            if line.split(" ")[0] == method and line.split(" ")[1].endswith(path_end)
        )

    def first_lines(self) -> list[str]:
        with self._lock:
            return list(self._first_lines)

    def __enter__(self) -> BlackHole:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                conn.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        recorded = False
        while not self._stopped.is_set():
            try:
                piece = conn.recv(65536)
            except OSError:
                return
            if not piece:
                return  # the client gave up; it still got no answer
            data += piece
            if not recorded and b"\r\n" in data:
                recorded = True
                line = data.split(b"\r\n", 1)[0].decode("latin-1")
                with self._lock:
                    self._first_lines.append(line)
                    if "/chat/completions" in line:
                        self.chat_arrivals.append(time.monotonic())


def chat(base: str, text: str, **tandem: Any) -> tuple[httpx.Response, float]:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,  # a short local answer: the wait for the cloud is what is measured
        "tandem": {"route": "auto", **tandem},
    }
    started = time.monotonic()
    r = httpx.post(f"{base}/chat/completions", json=body, timeout=120)
    return r, time.monotonic() - started


@pytest.mark.timeout(180)
def test_a_cloud_that_never_answers_costs_one_short_wait_then_is_left_alone() -> None:
    with BlackHole() as hole, gateway_server(hole.url) as server:
        # The local model's first answer pays one-off costs (warm caches, a start-up still
        # settling): not what is measured here.
        warm, _ = chat(server.url, "Hello!", route="local")
        assert warm.status_code == 200
        # The cloud path, forced (with fallback) so the first request surely tries the cloud.
        sent_at = time.monotonic()
        first = chat(server.url, "What is the capital of France?", route="cloud", fallback=True)
        answered_at = time.monotonic()
        rest = [
            chat(server.url, text)
            for text in (
                "Prove that there are infinitely many primes, step by step.",
                "Write a haiku about the sea.",
                "Explain the difference between TCP and UDP in detail.",
            )
        ]
        forced = chat(server.url, "Cloud please?", route="cloud", fallback=True)
        health = httpx.get(server.url.removesuffix("/v1") + "/healthz").json()["cloud"]
        time.sleep(0.5)  # anything still on its way to the black hole arrives
        chats = hole.requests("POST", "/chat/completions")
        probes = hole.requests("GET", "/models")
        lines = hole.first_lines()
        log = server.log.read_text()
    replies = [first, *rest, forced]
    seen: list[Any] = [
        (round(t, 2), r.status_code, r.headers.get("x-tandem-reason")) for r, t in replies
    ]
    if hole.chat_arrivals:  # where the first request's time went: before the cloud, after it
        arrived = hole.chat_arrivals[0]
        seen.append({"to_cloud_s": arrived - sent_at, "after_s": answered_at - arrived})
    for r, elapsed in replies:
        assert r.status_code == 200, r.text
        assert elapsed < ANSWER_WITHIN_S, seen
        assert r.headers["x-tandem-route"] == "local"
        assert r.json()["choices"][0]["message"]["content"]
    # The first waited for the cloud's first token and fell back; the others knew it was down.
    assert first[0].headers["x-tandem-reason"] == "cloud_failed"
    for r, _ in [*rest, forced]:
        assert r.headers["x-tandem-reason"] == "cloud_unavailable"
    assert chats == 1, lines  # after the first request, only probes reach the black hole
    assert probes >= 1, lines
    assert len(lines) == chats + probes  # nothing else was sent
    assert (health["breaker"], health["reopens_on"], health["available"]) == (
        "open",
        "probe",
        False,
    )
    # One line in the log when the endpoint goes down, not one per request or probe (at most
    # one here: whether the start-up probe or the first request sees it first is a race, and
    # test_reliability's offline start-up test checks the line itself).
    problems = [
        line
        for line in log.splitlines()
        if hole.url in line and not line.startswith("Tandem gateway on")
    ]
    assert len(problems) <= 1, problems
