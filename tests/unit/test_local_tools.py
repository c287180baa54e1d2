"""Tool calls by a local model whose chat template knows tools (the Hermes form): parsing its
answers, the grammar of a required call, routing, and escalation of an invalid call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.events import Finish, LocalEvent, TokenEvent, ToolCallDelta
from tandem.gateway import Gateway
from tandem.local.toolcalls import (
    as_tool_calls,
    call_format,
    forced_opening,
    hermes_template,
    parse_calls,
    template_messages,
    tool_call_problems,
)
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.settings import Settings
from tandem.tools import Tools, encode_calls
from tests.unit.fakes import FakeEngine, sse_body

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
AUTO = Tools((WEATHER,))
NAMED = Tools((WEATHER,), {"type": "function", "function": {"name": "get_weather"}})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_a_hermes_template_is_recognised() -> None:
    assert hermes_template("{% if tools %}<tools>{% endif %} ... <tool_call>")
    assert not hermes_template("{{ messages }}")
    assert not hermes_template(None)


def test_calls_are_parsed_and_bad_blocks_named() -> None:
    content, calls, problems = parse_calls("Let me check." + CALL)
    assert content == "Let me check."
    assert calls == [("get_weather", '{"city": "Paris"}')]
    assert problems == []
    _, calls, problems = parse_calls("<tool_call>\n{not json}\n</tool_call>")
    assert calls == [] and "cannot be read" in problems[0]
    assert parse_calls("plain text") == ("plain text", [], [])


def test_a_required_call_is_written_under_its_tools_schema() -> None:
    assert forced_opening(AUTO) == "" and call_format(AUTO) is None
    assert forced_opening(NAMED) == "<tool_call>\n"
    fmt = call_format(NAMED)
    assert fmt is not None
    assert fmt.problems('{"name": "get_weather", "arguments": {"city": "Rome"}}') == []
    assert fmt.problems('{"name": "other", "arguments": {"city": "Rome"}}')
    assert fmt.problems('{"name": "get_weather", "arguments": {}}')


def test_history_calls_reach_the_template_as_objects() -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = template_messages(
        [{"role": "assistant", "content": "", "tool_calls": encode_calls([call])}]
    )
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


async def _events(pieces: list[str]) -> AsyncGenerator[LocalEvent, None]:
    for p in pieces:
        yield TokenEvent(p)
    yield Finish("stop", 10, len(pieces))


def _collect(pieces: list[str], tools: Tools) -> list[object]:
    async def run() -> list[object]:
        return [e async for e in as_tool_calls(_events(pieces), tools)]

    return asyncio.run(run())


def test_an_answer_becomes_tool_call_events() -> None:
    events = _collect([CALL[:20], CALL[20:]], AUTO)
    (delta,) = [e for e in events if isinstance(e, ToolCallDelta)]
    assert delta.name == "get_weather" and json.loads(delta.arguments) == {"city": "Paris"}
    assert delta.id and delta.index == 0
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
    assert tool_call_problems(events, AUTO) == []  # type: ignore[arg-type]
    text = _collect(["It is sunny."], AUTO)
    assert [e.text for e in text if isinstance(e, TokenEvent)] == ["It is sunny."]


def test_invalid_calls_are_named() -> None:
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {"town": 1}}\n</tool_call>'
    problems = tool_call_problems(_collect([bad], AUTO), AUTO)  # type: ignore[arg-type]
    assert any("city" in p for p in problems)
    unknown = '<tool_call>\n{"name": "book", "arguments": {}}\n</tool_call>'
    assert "does not offer" in tool_call_problems(_collect([unknown], AUTO), AUTO)[0]  # type: ignore[arg-type]
    assert tool_call_problems(_collect(["no call"], NAMED), NAMED)  # type: ignore[arg-type]


def _client(tmp_path: Path, tokens: list[str]) -> tuple[TestClient, list[str]]:
    settings = Settings(_env_file=None, cloud_n_ctx=512, sessions_db=tmp_path / "s.db")
    engine = FakeEngine(tokens, n_ctx=512)
    engine.tools = True  # type: ignore[misc]
    cloud_paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": []})
        cloud_paths.append(request.url.path)
        return httpx.Response(200, content=sse_body(["cloud"]),
                              headers={"content-type": "text/event-stream"})

    cloud = CloudClient.from_settings(settings, "http://c.test/v1",
                                      transport=httpx.MockTransport(handler))
    gw = Gateway(engine, cloud, GatewayMetrics(), settings.cloud_n_ctx)
    return TestClient(create_app(settings, gw)), cloud_paths


ASK = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]}


def test_a_tool_capable_local_model_calls_locally(tmp_path: Path) -> None:
    client, cloud = _client(tmp_path, [CALL])
    with client:
        r = client.post("/v1/chat/completions", json={**ASK, "tandem": {"route": "local"}})
    choice = r.json()["choices"][0]
    assert r.headers["x-tandem-route"] == "local"
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert cloud == []


def test_an_invalid_local_call_escalates(tmp_path: Path) -> None:
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    client, cloud = _client(tmp_path, [bad])
    with client:
        r = client.post("/v1/chat/completions", json={**ASK, "tool_choice": "required"})
    assert (r.headers["x-tandem-route"], r.headers["x-tandem-reason"]) == (
        "cloud",
        "tool_call_invalid",
    )
    assert cloud == ["/v1/chat/completions"]
