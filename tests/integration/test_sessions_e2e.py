"""Sessions with the real local model and the real stand-in cloud: handoffs, overflow, failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.catalog import resolve_model
from tandem.cloud.client import CloudClient
from tandem.gateway import Gateway
from tandem.local.engine import EngineState, LocalEngine
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.settings import Settings
from tests.integration.gateway_proc import gateway_server


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real HTTP transport, keeping a copy of every chat request body sent to the cloud."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append(json.loads(request.content))
        return await super().handle_async_request(request)


def app_parts(
    tmp_path: Path, cloud_url: str | None, **overrides: Any
) -> tuple[Gateway, LocalEngine, RecordingTransport, Settings]:
    defaults: dict[str, Any] = {"n_ctx": 1024, "keep_alive_s": None, "n_threads": 2}
    settings = Settings(
        sessions_db=tmp_path / "sessions.db", cloud_n_ctx=2048, **{**defaults, **overrides}
    )
    path, fmt = resolve_model("smollm2")
    engine = LocalEngine(settings, path, fmt)
    transport = RecordingTransport()
    cloud = None
    if cloud_url:
        cloud = CloudClient.from_settings(settings, cloud_url, transport=transport)
    gw = Gateway(engine, cloud, GatewayMetrics(), settings.cloud_n_ctx)
    return gw, engine, transport, settings


@pytest.fixture
def parts(
    tmp_path: Path, standin_cloud: str
) -> Iterator[tuple[TestClient, LocalEngine, RecordingTransport]]:
    gw, engine, transport, settings = app_parts(tmp_path, standin_cloud)
    with TestClient(create_app(settings, gw), base_url="http://testserver/v1/") as api:
        assert engine.wait_ready() == EngineState.READY
        yield api, engine, transport


def say(api: Any, text: str, route: str = "auto", session: str = "s1", **kw: Any) -> Any:
    body = {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 24,
        "temperature": 0.0,
        "tandem": {"route": route},
        **kw,
    }
    r = api.post("chat/completions", json=body, headers={"X-Session-Id": session})
    assert r.status_code == 200, r.text
    return r


def complete_messages(api: Any, session: str = "s1") -> list[dict[str, str]]:
    transcript = api.get(f"sessions/{session}").json()
    return [
        {"role": m["role"], "content": m["content"]}
        for m in transcript["messages"]
        if m["status"] == "complete"
    ]


def test_forced_tier_switches_keep_one_conversation(
    parts: tuple[TestClient, LocalEngine, RecordingTransport],
) -> None:
    api, engine, transport = parts
    routes = ["local", "cloud", "local", "cloud", "local"]
    usages = []
    for i, route in enumerate(routes):
        before = complete_messages(api) if i else []
        question = f"Question {i}: name one {['fruit', 'city', 'river', 'tree', 'bird'][i]}."
        r = say(api, question, route)
        assert r.headers["x-tandem-route"] == route
        expected = [*before, {"role": "user", "content": question}]
        body = r.json()
        usages.append(body["usage"])
        if route == "cloud":
            # The cloud received the whole conversation, local answers included.
            assert transport.bodies[-1]["messages"] == expected
        else:
            # The local model saw the cloud's answers: its prompt is exactly this conversation.
            assert body["usage"]["prompt_tokens"] == engine.count_tokens(expected)
    transcript = api.get("sessions/s1").json()["messages"]
    answers = [m for m in transcript if m["role"] == "assistant"]
    assert [a["tier"] for a in answers] == routes
    assert all(a["content"] for a in answers)
    # Turn 5 (local) prefilled only what the local model had not seen: the turns since its last
    # answer, not the whole history.
    prev, last = answers[2]["usage"], answers[4]["usage"]
    unseen = last["prompt_tokens"] - (prev["prompt_tokens"] + prev["completion_tokens"])
    assert last["prefill_tokens"] <= 1.3 * unseen + 4, (last, prev)
    assert last["prefill_tokens"] < 0.8 * last["prompt_tokens"]


def test_history_beyond_the_local_window_goes_to_the_cloud_or_is_trimmed(
    tmp_path: Path, standin_cloud: str
) -> None:
    gw, engine, transport, settings = app_parts(tmp_path, standin_cloud, n_ctx=384)
    filler = "Here is some background about my garden and the plants in it. " * 3
    with TestClient(create_app(settings, gw), base_url="http://testserver/v1/") as api:
        assert engine.wait_ready() == EngineState.READY
        reasons = []
        for i in range(8):
            r = say(api, f"{filler} Point {i}: what should I plant?", "auto", max_tokens=40)
            reasons.append(r.headers["x-tandem-reason"])
        # Once the history outgrew the local window, auto sent it to the (larger) cloud.
        assert reasons[0] == "default_local"
        assert reasons[-1] == "exceeds_local_context"
        assert transport.bodies[-1]["messages"] == complete_messages(api)[:-1]
        # Forced local: the oldest exchanges are dropped to fit, and the drop is recorded.
        r = say(api, "Summarise my plan in one line.", "local", max_tokens=40)
        last = api.get("sessions/s1").json()["messages"][-1]
        assert last["tier"] == "local" and last["context"]["dropped"] > 0
        assert last["usage"]["prompt_tokens"] <= 384 - 40
        assert r.json()["choices"][0]["message"]["content"]


def test_disconnect_mid_stream_and_concurrent_turns_on_a_real_server(standin_cloud: str) -> None:
    with gateway_server(standin_cloud) as server:
        base = server.url
        # A client that goes away after the first chunks of a long answer.
        body = {
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "max_tokens": 400,
            "stream": True,
            "tandem": {"route": "local"},
        }
        headers = {"X-Session-Id": "cut"}
        with httpx.stream(
            "POST", f"{base}/chat/completions", json=body, headers=headers, timeout=30
        ) as r:
            for n, _ in enumerate(r.iter_lines()):
                if n >= 6:
                    break
        transcript = _wait_for_settled(base, "cut")
        # Either nothing was kept, or the partial answer is marked interrupted.
        assert all(m["status"] == "interrupted" for m in transcript)
        follow = httpx.post(
            f"{base}/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
            headers=headers,
            timeout=60,
        )
        assert follow.status_code == 200
        sent = httpx.get(f"{base}/sessions/cut").json()["messages"]
        complete = [m for m in sent if m["status"] == "complete"]
        assert complete[0]["content"] == "Hi"  # the cut turn is not in the context

        # Two requests on one session at once: serialized, the later sees the earlier.
        results: list[httpx.Response] = []

        def ask(text: str) -> None:
            results.append(
                httpx.post(
                    f"{base}/chat/completions",
                    json={"messages": [{"role": "user", "content": text}], "max_tokens": 12,
                          "tandem": {"route": "local"}},  # usage counts come from the engine
                    headers={"X-Session-Id": "both"},
                    timeout=60,
                )
            )

        threads = [threading.Thread(target=ask, args=(t,)) for t in ("One?", "Two?")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200]
        messages = httpx.get(f"{base}/sessions/both").json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        assert [m["exchange"] for m in messages] == [0, 0, 1, 1]
        first, second = (messages[1]["usage"], messages[3]["usage"])
        assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]


def _wait_for_settled(base: str, session: str) -> list[dict[str, Any]]:
    """The session's messages once the server has noticed the client left (or none)."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/sessions/{session}")
        if r.status_code == 200:
            return list(r.json()["messages"])
        health = httpx.get(f"{base.removesuffix('/v1')}/healthz").json()
        if health["local"]["queue_depth"] == 0:
            r = httpx.get(f"{base}/sessions/{session}")
            return list(r.json()["messages"]) if r.status_code == 200 else []
        time.sleep(0.1)
    raise AssertionError("the cut request was still running after 20 s")
