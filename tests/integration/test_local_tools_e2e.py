"""Local tool calls with a tool-capable local model: the shipped stand-in's Qwen2.5-Coder as the
local model of a real `tandem serve`, through the official SDK, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.integration.conftest import SHIPPED_STANDIN
from tests.integration.gateway_proc import gateway_process
from tests.integration.test_tools_e2e import ASK, WEATHER


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    with gateway_process(None, TANDEM_LOCAL_MODEL=SHIPPED_STANDIN) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def test_the_local_model_calls_the_tool(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tandem", messages=ASK, tools=[WEATHER], tool_choice="required",  # type: ignore[arg-type, list-item]
        temperature=0.0, max_tokens=48,
    )
    assert raw.headers["x-tandem-route"] == "local"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "paris" in json.loads(call.function.arguments)["city"].lower()  # type: ignore[union-attr]


def test_the_streamed_local_call_has_openai_shape(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tandem", messages=ASK, tools=[WEATHER],  # type: ignore[arg-type, list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0.0, max_tokens=48, stream=True,
    )
    items, finish = [], None
    for chunk in stream:
        items += chunk.choices[0].delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert items and all(i.index == 0 for i in items)
    assert items[0].id and items[0].function and items[0].function.name == "get_weather"
    arguments = "".join((i.function.arguments or "") for i in items if i.function)
    assert json.loads(arguments)["city"]
