"""Tool calling through a real `tandem serve` and the official SDK: the stand-in
llama_cpp.server makes the calls (the bundled local models cannot), streamed and not, and the
tool results go back through the gateway and a session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.integration.gateway_proc import gateway_process

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# The request that makes the stand-in call get_weather.
CALL_WEATHER: dict[str, Any] = {
    "model": "tandem",
    "messages": ASK,
    "tools": [WEATHER],
    "tool_choice": NAMED,
    "temperature": 0.0,
    "max_tokens": 48,
}


@pytest.fixture(scope="module")
def url(standin_cloud: str) -> Iterator[str]:
    with gateway_process(standin_cloud, TANDEM_CLOUD_DIALECT="llama_cpp") as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("choice", [NAMED, "required"])
def test_the_cloud_calls_the_tool(client: openai.OpenAI, choice: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tandem",
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=choice,
        temperature=0.0,
        max_tokens=48,
    )
    assert (raw.headers["x-tandem-route"], raw.headers["x-tandem-reason"]) == (
        "cloud",
        "requires_tools",
    )
    choice_ = raw.parse().choices[0]
    assert choice_.finish_reason == "tool_calls"
    assert choice_.message.content is None
    (call,) = choice_.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_streamed_tool_call_has_openai_shape(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(**CALL_WEATHER, stream=True)
    items = []
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        items.extend(delta.tool_calls or [])
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(items) > 1 and all(isinstance(i.index, int) and i.index == 0 for i in items)
    # id, type and name once per call, on its first piece; arguments in fragments.
    assert items[0].id and items[0].type == "function" and items[0].function
    assert items[0].function.name == "get_weather"
    assert all(i.id is None and i.type is None for i in items[1:])
    assert all(i.function is not None and i.function.name is None for i in items[1:])
    arguments = "".join((i.function.arguments or "") for i in items if i.function)
    assert isinstance(json.loads(arguments)["city"], str)


def test_tool_result_goes_back_and_the_cloud_answers(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(**CALL_WEATHER)
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    result = {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}
    raw = client.chat.completions.with_raw_response.create(
        model="tandem",
        messages=[*ASK, message.model_dump(exclude_none=True), result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        temperature=0.0,
        max_tokens=24,
    )
    assert raw.headers["x-tandem-route"] == "cloud"
    answer = raw.parse().choices[0]
    assert answer.message.content and not answer.message.tool_calls


@pytest.mark.parametrize(
    ("tandem", "param"),
    [({"route": "local"}, "tandem.route"), ({"privacy": "local_only"}, "tools")],
)
def test_a_turn_that_must_stay_local_cannot_offer_tools(
    client: openai.OpenAI, tandem: dict[str, str], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tandem",
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            max_tokens=8,
            extra_body={"tandem": tandem},
        )
    error: Any = info.value.body
    assert error["param"] == param
    assert "cannot call tools" in error["message"]


def test_a_session_keeps_the_call_and_its_result(url: str) -> None:
    base = url.removesuffix("/v1")
    session = {"X-Session-Id": "tools-1"}
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": NAMED, "max_tokens": 48}
    r = httpx.post(f"{url}/chat/completions", json=body, headers=session, timeout=120)
    assert r.status_code == 200, r.text
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    result = {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"}
    body = {"messages": [result], "tools": [WEATHER], "max_tokens": 24}
    r = httpx.post(f"{url}/chat/completions", json=body, headers=session, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    transcript = httpx.get(f"{base}/v1/sessions/tools-1", timeout=10).json()
    roles = [m["role"] for m in transcript["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert transcript["messages"][1]["tool_calls"] == [call]
    assert transcript["messages"][2]["tool_call_id"] == call["id"]
