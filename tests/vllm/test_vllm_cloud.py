"""A real vLLM server as the cloud tier: the openai SDK through `tandem serve --cloud-url`,
sessions across local ↔ cloud handoffs with vLLM's prefix cache, redaction and the audit,
tool calls and structured output passed through, and the cloud's own token count."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from tandem.cloud.vllm import VllmCloud
from tandem.local.engine import EngineState
from tandem.server import create_app
from tandem.sessions.store import SqliteSessionStore
from tests.integration.gateway_proc import GatewayServer, gateway_server
from tests.integration.test_sessions_e2e import app_parts
from tests.integration.test_tools_e2e import NAMED, WEATHER

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def vllm_env(cloud: VllmCloud) -> dict[str, str]:
    return {
        "TANDEM_CLOUD_API_KEY": cloud.api_key,
        "TANDEM_CLOUD_DIALECT": "openai",
        "TANDEM_CLOUD_N_CTX": str(cloud.n_ctx),
        "TANDEM_N_CTX": "2048",
    }


@pytest.fixture(scope="module")
def gateway(vllm_cloud: VllmCloud) -> Iterator[GatewayServer]:
    with gateway_server(vllm_cloud.base_url, **vllm_env(vllm_cloud)) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, text: str, route: str = "cloud", **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": text}],
        max_tokens=kw.pop("max_tokens", 16),
        temperature=0.0,
        extra_body={"tandem": {"route": route}},
        **kw,
    )


def test_the_server_needs_its_key(vllm_cloud: VllmCloud) -> None:
    assert httpx.get(f"{vllm_cloud.base_url}/models").status_code == 401
    keyed = {"Authorization": f"Bearer {vllm_cloud.api_key}"}
    r = httpx.get(f"{vllm_cloud.base_url}/models", headers=keyed)
    assert [m["id"] for m in r.json()["data"]] == ["cloud"]


def test_sdk_non_streaming_through_vllm(client: openai.OpenAI) -> None:
    raw = ask(client, "Say hello in one short sentence.")
    assert raw.headers["x-tandem-route"] == "cloud"
    completion = raw.parse()
    assert completion.choices[0].message.content.strip()
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    # vLLM's own count of cached prompt tokens is passed on (0 or more, never missing).
    assert completion.usage.prompt_tokens_details.cached_tokens is not None


def test_sdk_streaming_through_vllm(client: openai.OpenAI) -> None:
    raw = ask(client, "Name three colours.", stream=True, max_tokens=24)
    assert raw.headers["x-tandem-route"] == "cloud"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_a_session_across_handoffs_reuses_vllms_prefix_cache(gateway: GatewayServer) -> None:
    """local, cloud, local, cloud, local: every tier sees the whole conversation, and each cloud
    turn after the first finds what the previous cloud turn sent in vLLM's prefix cache."""
    session = {"X-Session-Id": "handoff-vllm"}
    background = "I keep a small vegetable garden on a sunny balcony in Lisbon. " * 6
    routes = ["local", "cloud", "local", "cloud", "local", "cloud"]
    usages = []
    for i, route in enumerate(routes):
        text = f"{background if i == 0 else ''}Question {i}: what should I plant next?"
        body = {
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 24,
            "temperature": 0.0,
            "tandem": {"route": route},
        }
        r = httpx.post(f"{gateway.url}/chat/completions", json=body, headers=session, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-tandem-route"] == route
        usages.append(r.json()["usage"])
    transcript = httpx.get(f"{gateway.url}/sessions/handoff-vllm").json()["messages"]
    assert [m["tier"] for m in transcript if m["role"] == "assistant"] == routes
    cloud = [u for u, route in zip(usages, routes, strict=True) if route == "cloud"]
    for before, now in itertools.pairwise(cloud):
        # Everything the previous cloud request sent is a prefix of this one: vLLM caches it
        # (in whole blocks of 32 tokens, so up to 31 tokens of it are prefilled again).
        assert now["prompt_tokens_details"]["cached_tokens"] >= before["prompt_tokens"] - 31
        assert now["prompt_tokens_details"]["cached_tokens"] >= 0.9 * before["prompt_tokens"]


def test_redaction_is_restored_and_every_call_is_audited(gateway: GatewayServer) -> None:
    email = "ana.lima@example.com"
    body = {
        "messages": [{
            "role": "user",
            "content": f"Repeat exactly this sentence: Please write to {email} today.",
        }],
        "max_tokens": 24,
        "temperature": 0.0,
        "tandem": {"route": "cloud", "privacy": "redact"},
    }
    headers = {"X-Session-Id": "privacy-vllm"}
    r = httpx.post(f"{gateway.url}/chat/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    # The model repeats the placeholder it was sent; the gateway puts the address back.
    assert email in r.json()["choices"][0]["message"]["content"]
    (record,) = SqliteSessionStore(gateway.sessions_db).audit("privacy-vllm")
    assert record["redacted"] == {"EMAIL_ADDRESS": 1}
    assert record["outcome"] == "ok" and record["endpoint"].endswith("/v1")
    assert email not in json.dumps(record)


def test_what_vllm_receives_is_redacted(tmp_path: Path, vllm_cloud: VllmCloud) -> None:
    given = vllm_cloud.gateway_settings()
    cloud = {k: v for k, v in given.items() if k not in ("cloud_n_ctx", "cloud_url")}
    gw, engine, transport, settings = app_parts(tmp_path, vllm_cloud.base_url, **cloud)
    with TestClient(create_app(settings, gw)) as api:
        assert engine.wait_ready() == EngineState.READY
        body = {
            "messages": [{"role": "user", "content": "Email ana.lima@example.com about Monday."}],
            "max_tokens": 4,
            "tandem": {"route": "cloud"},
        }
        assert api.post("/v1/chat/completions", json=body).status_code == 200
    (sent,) = transport.bodies
    assert "ana.lima" not in json.dumps(sent)
    assert "<EMAIL_ADDRESS_1>" in sent["messages"][-1]["content"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("choice", "finish_reason"), [(NAMED, "stop"), ("required", "tool_calls")])
def test_tool_calls_come_back_in_openais_shape(
    client: openai.OpenAI, stream: bool, choice: Any, finish_reason: str
) -> None:
    """As OpenAI does, vLLM ends a call of a named function with ``stop`` and a call the model
    had to choose with ``tool_calls``: the gateway passes both on."""
    kw: dict[str, Any] = {"tools": [WEATHER], "tool_choice": choice, "max_tokens": 96}
    raw = ask(client, "What is the weather in Paris?", stream=stream, **kw)
    assert raw.headers["x-tandem-route"] == "cloud"
    if not stream:
        answer = raw.parse().choices[0]
        assert answer.finish_reason == finish_reason
        (call,) = answer.message.tool_calls
        name, arguments = call.function.name, call.function.arguments
        assert call.id and call.type == "function"
    else:
        chunks = list(raw.parse())
        items = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        assert finish == finish_reason
        assert items[0].id and items[0].type == "function" and items[0].function
        name = items[0].function.name
        arguments = "".join(i.function.arguments or "" for i in items if i.function)
    assert name == "get_weather"
    assert isinstance(json.loads(arguments), dict)


def test_structured_output_passes_through(client: openai.OpenAI) -> None:
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    raw = ask(client, "Describe a person as JSON.", response_format=response_format,
              max_tokens=48)
    assert raw.headers["x-tandem-route"] == "cloud"
    person = json.loads(raw.parse().choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


def test_a_session_beyond_vllms_window_is_fitted_to_it(vllm_cloud: VllmCloud) -> None:
    """cloud_n_ctx says 32768; vLLM serves 4096 and says so in /models: a session's history
    that outgrows 4096 tokens is trimmed for the cloud, not refused by it."""
    env = {**vllm_env(vllm_cloud), "TANDEM_CLOUD_N_CTX": "32768"}
    background = "The garden has tomatoes, basil and a small lemon tree by the wall. " * 150
    with gateway_server(vllm_cloud.base_url, **env) as server:
        health = httpx.get(server.url.removesuffix("/v1") + "/healthz").json()
        assert health["cloud"]["window_tokens"] == vllm_cloud.n_ctx
        session = {"X-Session-Id": "long-vllm"}
        for i in range(2):
            body = {
                "messages": [{"role": "user", "content": f"{background} Part {i}: plan it."}],
                "max_tokens": 16,
                "temperature": 0.0,
                "tandem": {"route": "cloud"},
            }
            r = httpx.post(f"{server.url}/chat/completions", json=body, headers=session,
                           timeout=300)
            assert r.status_code == 200, r.text
            assert r.headers["x-tandem-route"] == "cloud"
            assert r.headers["x-tandem-reason"] != "cloud_failed"
        usage = r.json()["usage"]
        last = httpx.get(f"{server.url}/sessions/long-vllm").json()["messages"][-1]
    assert last["tier"] == "cloud" and last["context"]["dropped"] > 0
    assert usage["prompt_tokens"] + 16 <= vllm_cloud.n_ctx
