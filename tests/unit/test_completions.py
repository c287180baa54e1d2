"""Text completions and infill: request validation, routing (FIM needs FIM tokens or a FIM
cloud), the OpenAI and llama.cpp response shapes, the cloud's /completions, infill stopping
rules and superseded requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.cloud.stream import _chunk_from_payload
from tandem.completions import InfillLimits
from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.prompt import ExtraChunk, TextPrompt, fim_for_llama_cpp, text_body
from tandem.server import create_app
from tandem.settings import Settings
from tandem.supersede import Lanes
from tandem.turn import GatewayEvent, RouteInfo, Tier
from tests.unit.fakes import FakeEngine

FIM_TOKENS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]


def text_stream(pieces: list[str]) -> bytes:
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "text": p, "finish_reason": None}]} for p in pieces
    ]
    chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


class TextCloud:
    """A cloud whose /completions streams ``pieces``; it keeps what it was sent."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "cloud"}]})
        self.requests.append((request.url.path, json.loads(request.content)))
        return httpx.Response(
            200, content=text_stream(self.pieces), headers={"content-type": "text/event-stream"}
        )


def make_client(
    tmp_path: Path, cloud: TextCloud, engine: FakeEngine | None = None, **overrides: Any
) -> TestClient:
    settings = Settings(
        _env_file=None,
        max_tokens_limit=100,
        cloud_n_ctx=512,
        sessions_db=tmp_path / "s.db",
        **overrides,
    )
    transport = httpx.MockTransport(cloud.handler)
    client = CloudClient.from_settings(settings, "http://cloud.test/v1", transport=transport)
    gw = Gateway(
        engine or FakeEngine(),
        client,
        GatewayMetrics(),
        settings.cloud_n_ctx,
        cloud_fim=settings.cloud_fim,
    )
    return TestClient(create_app(settings, gw))


@pytest.fixture
def cloud() -> TextCloud:
    return TextCloud(["    return", " a + b"])


@pytest.fixture
def api(tmp_path: Path, cloud: TextCloud) -> Iterator[TestClient]:
    with make_client(tmp_path, cloud, cloud_fim=True) as c:
        yield c


def local(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "tandem": {"route": "local"}}


# -- /v1/completions --------------------------------------------------------------------------


def test_completion_in_openai_shape(api: TestClient) -> None:
    r = api.post("/v1/completions", json=local({"prompt": "Once upon a time", "max_tokens": 2}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["text"] == "Hello from"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    assert r.headers["x-tandem-route"] == "local"


def test_the_local_engine_gets_the_prompt_as_text(tmp_path: Path, cloud: TextCloud) -> None:
    engine = FakeEngine()
    with make_client(tmp_path, cloud, engine) as c:
        c.post("/v1/completions", json=local({"prompt": ["def f():"], "stop": "\n"}))
    messages, params, _ = engine.calls[0]
    assert params.prompt == TextPrompt("def f():")
    assert params.stop == ("\n",)
    assert params.max_tokens == 16  # OpenAI's default for completions
    assert messages == [{"role": "user", "content": "def f():"}]  # what the routers read


def test_echo_and_streaming(api: TestClient) -> None:
    body = local({"prompt": "Say:", "max_tokens": 3, "echo": True})
    assert (
        api.post("/v1/completions", json=body).json()["choices"][0]["text"].startswith("Say:Hello")
    )
    with api.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert texts[0] == "Say:"  # the echoed prompt comes first
    assert "".join(texts) == "Say:Hello from local"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_logprobs_in_the_legacy_shape(api: TestClient) -> None:
    body = local({"prompt": "Hi", "max_tokens": 3, "logprobs": 1})
    lp = api.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["Hello", " from", " local"]
    assert lp["token_logprobs"] == pytest.approx([-0.1, -0.2, -0.3])
    assert lp["text_offset"] == [0, 5, 10]
    assert len(lp["top_logprobs"]) == 3


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("n", 2, "unsupported_parameter"),
        ("best_of", 3, "unsupported_parameter"),
        ("presence_penalty", 0.5, "unsupported_parameter"),
        ("messages", [], "unknown_parameter"),
    ],
)
def test_fields_not_honoured_are_refused_by_name(
    api: TestClient, field: str, value: Any, code: str
) -> None:
    r = api.post("/v1/completions", json={"prompt": "x", field: value})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["param"] == field


def test_neutral_values_and_metadata_are_accepted(api: TestClient) -> None:
    body = local({"prompt": "x", "n": 1, "best_of": 1, "user": "u1", "max_tokens": 1})
    assert api.post("/v1/completions", json=body).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ["a", "b"]},  # one prompt per request
        {"prompt": ""},  # nothing to continue
        {"prompt": "x", "echo": True, "logprobs": 1},
        {"prompt": "x", "tandem": {"session_id": "s1"}},
        {"prompt": "x", "max_tokens": 101},
        {"prompt": "x", "logprobs": 6},
    ],
)
def test_requests_it_cannot_serve_are_400(api: TestClient, body: dict[str, Any]) -> None:
    r = api.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text


def test_a_session_header_is_refused(api: TestClient) -> None:
    r = api.post("/v1/completions", json={"prompt": "x"}, headers={"X-Session-Id": "abc"})
    assert r.status_code == 400
    assert "no sessions" in r.json()["error"]["message"]


def test_the_cloud_gets_completions_with_the_prompt_redacted(
    api: TestClient, cloud: TextCloud
) -> None:
    prompt = "Write to jane.doe@example.org about the invoice:"
    r = api.post("/v1/completions", json={"prompt": prompt, "tandem": {"route": "cloud"}})
    assert r.json()["choices"][0]["text"] == "    return a + b"
    path, sent = cloud.requests[0]
    assert path == "/v1/completions"
    assert "jane.doe@example.org" not in sent["prompt"] and "<EMAIL_ADDRESS_1>" in sent["prompt"]
    assert "messages" not in sent and sent["stream"] is True


# -- fill in the middle -----------------------------------------------------------------------


def test_fim_goes_to_a_fim_cloud_when_the_local_model_has_no_fim_tokens(
    api: TestClient, cloud: TextCloud
) -> None:
    r = api.post("/v1/completions", json={"prompt": "def add(a, b):\n", "suffix": "\n"})
    assert r.status_code == 200, r.text
    assert r.headers["x-tandem-reason"] == "requires_fim"
    assert cloud.requests[0][1]["suffix"] == "\n"


@pytest.mark.parametrize(
    ("tandem", "overrides", "fragment"),
    [
        ({}, {}, "not marked as FIM-capable"),
        ({"route": "local"}, {"cloud_fim": True}, "tandem.route is 'local'"),
        ({"privacy": "local_only"}, {"cloud_fim": True}, "local_only"),
    ],
)
def test_fim_that_no_tier_can_serve_says_why(
    tmp_path: Path,
    cloud: TextCloud,
    tandem: dict[str, Any],
    overrides: dict[str, Any],
    fragment: str,
) -> None:
    with make_client(tmp_path, cloud, **overrides) as c:
        r = c.post("/v1/completions", json={"prompt": "a", "suffix": "b", "tandem": tandem})
    assert r.status_code == 400
    assert fragment in r.json()["error"]["message"]
    assert "no fill-in-the-middle tokens" in r.json()["error"]["message"]
    assert cloud.requests == []


def test_a_local_model_with_fim_tokens_keeps_fim_local(tmp_path: Path, cloud: TextCloud) -> None:
    engine = FakeEngine()
    engine.fim = True
    with make_client(tmp_path, cloud, engine) as c:
        r = c.post("/v1/completions", json=local({"prompt": "a", "suffix": "b"}))
    assert r.status_code == 200
    assert engine.calls[0][1].prompt == TextPrompt("a", "b")


def test_the_llama_cpp_dialect_writes_the_fim_prompt_itself(tmp_path: Path) -> None:
    cloud = TextCloud(["x"])
    overrides = {"cloud_fim": True, "cloud_dialect": "llama_cpp", "cloud_fim_tokens": FIM_TOKENS}
    with make_client(tmp_path, cloud, **overrides) as c:
        c.post("/v1/completions", json={"prompt": "def f():\n", "suffix": "\nf()"})
    sent = cloud.requests[0][1]
    assert "suffix" not in sent  # llama_cpp.server's own suffix path uses token id 0
    assert sent["prompt"] == "<|fim_prefix|>def f():\n<|fim_suffix|>\nf()<|fim_middle|>"


def test_fim_with_the_llama_cpp_dialect_needs_the_tokens() -> None:
    with pytest.raises(ValueError, match="TANDEM_CLOUD_FIM_TOKENS"):
        Settings(_env_file=None, cloud_fim=True, cloud_dialect="llama_cpp")
    with pytest.raises(ValueError):
        fim_for_llama_cpp({"prompt": "a", "suffix": "b"}, None)


def test_a_text_prompt_round_trips_through_its_messages() -> None:
    prompt = TextPrompt("pre", "suf", (ExtraChunk("a.py", "one"), ExtraChunk("b.py", "two")), "mid")
    messages = prompt.messages()
    assert messages[-1]["content"] == "pre"  # the routers read the prefix
    redacted = [{**m, "content": m["content"].upper()} for m in messages]
    assert prompt.with_texts(redacted) == TextPrompt(
        "PRE", "SUF", (ExtraChunk("a.py", "ONE"), ExtraChunk("b.py", "TWO")), "MID"
    )
    with pytest.raises(ValueError):
        prompt.with_texts(messages[:2])
    body = text_body(prompt, GenerationParams(max_tokens=5, logprobs=True, top_logprobs=2))
    assert body["prompt"].startswith("one") and body["prompt"].endswith("premid")
    assert body["suffix"] == "suf" and body["logprobs"] == 2


def test_legacy_cloud_logprobs_are_read() -> None:
    chunk = _chunk_from_payload(
        {
            "choices": [
                {
                    "text": " a",
                    "logprobs": {
                        "tokens": [" a"],
                        "token_logprobs": [-0.5],
                        "top_logprobs": [{" a": -0.5, " b": -1.5}],
                    },
                }
            ]
        }
    )
    assert chunk.text == " a"
    assert chunk.logprobs[0].logprob == -0.5
    assert dict(chunk.logprobs[0].top) == {" a": -0.5, " b": -1.5}


# -- llama.cpp's /infill ----------------------------------------------------------------------


def test_infill_in_llama_cpp_shape(api: TestClient, cloud: TextCloud) -> None:
    body = {
        "id_slot": 0,
        "input_prefix": "def add(a, b):\n",
        "input_suffix": "\n",
        "input_extra": [{"filename": "util.py", "text": "import math\n"}],
        "prompt": "",
        "n_predict": 16,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 500,
        "response_fields": ["content", "timings/predicted_n", "tokens_cached"],
    }
    r = api.post("/infill", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"content": "    return a + b", "timings/predicted_n": 2, "tokens_cached": 0}
    sent = cloud.requests[0][1]
    assert sent["prompt"].startswith("import math\n") and sent["suffix"] == "\n"


def test_infill_streams_llama_cpp_events(api: TestClient) -> None:
    body = {"input_prefix": "x = ", "input_suffix": "", "stream": True}
    with api.stream("POST", "/infill", json=body) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    assert [e["content"] for e in events[:-1]] == ["    return", " a + b"]
    assert all(e["stop"] is False for e in events[:-1])
    assert events[-1]["stop"] is True and "timings" in events[-1]


def test_unknown_infill_fields_are_refused(api: TestClient) -> None:
    r = api.post("/infill", json={"input_prefix": "x", "mirostat": 2})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "mirostat"


def test_n_indent_ends_the_answer_at_a_line_indented_less() -> None:
    limits = InfillLimits(n_indent=4, t_max_predict_ms=0)
    pieces = ["if x:\n", "        y()\n", "    z()\n", "w()"]
    out = "".join(limits.feed(p) for p in pieces)
    assert out == "if x:\n        y()\n    z()\n"
    assert limits.stopped == "indent"


def test_the_time_limit_ends_the_answer_at_a_newline() -> None:
    now = [0.0]
    limits = InfillLimits(n_indent=0, t_max_predict_ms=100, clock=lambda: now[0])
    assert limits.feed("a = 1\n") == "a = 1\n" and limits.stopped is None
    now[0] = 0.2
    assert limits.feed("b = 2") == "b = 2" and limits.stopped is None  # no newline yet
    assert limits.feed("\nc = 3") == "\n"
    assert limits.stopped == "time_limit"


def test_a_newer_request_in_a_lane_supersedes_the_running_one() -> None:
    route = RouteInfo(Tier.LOCAL, "requested_local", "m")
    closed: list[str] = []

    async def slow(name: str) -> AsyncGenerator[GatewayEvent, None]:
        try:
            yield route
            for i in range(50):
                await asyncio.sleep(0.01)
                yield TokenEvent(f"{name}{i} ")
            yield Finish("length", 1, 50)
        finally:
            closed.append(name)

    async def scenario() -> tuple[list[GatewayEvent], list[GatewayEvent]]:
        lanes = Lanes()
        first = [e async for e in _take(lanes.supersede("editor", slow("a")), 3)]

        async def rest_of_first() -> list[GatewayEvent]:
            return [e async for e in lanes.supersede("editor", slow("a"))]

        task = asyncio.create_task(rest_of_first())
        await asyncio.sleep(0.05)
        second = [e async for e in lanes.supersede("editor", slow("b"))]
        superseded = await task
        assert len(lanes) == 0
        return first + superseded, second

    superseded, second = asyncio.run(scenario())
    assert isinstance(superseded[-1], Finish) and superseded[-1].completion_tokens < 50
    assert isinstance(second[-1], Finish) and second[-1].completion_tokens == 50
    assert closed.count("a") == 2 and "b" in closed  # every upstream stream was closed


async def _take(
    events: AsyncGenerator[GatewayEvent, None], n: int
) -> AsyncGenerator[GatewayEvent, None]:
    try:
        for _ in range(n):
            yield await anext(events)
    finally:
        await events.aclose()
