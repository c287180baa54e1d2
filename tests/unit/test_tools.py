"""Tool calling: request validation, routing, the cloud's deltas in OpenAI's shape, privacy in
arguments, and the session schema that keeps tool messages."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.cloud.stream import _chunk_from_payload
from tandem.events import ToolCallDelta
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.sessions.schema import APPLICATION_ID, MIGRATIONS
from tandem.sessions.store import SqliteSessionStore
from tandem.settings import Settings
from tandem.tools import CallBuilder, choice_for_dialect, parse_deltas
from tests.unit.fakes import FakeEngine

USER = [{"role": "user", "content": "Email Jane Doe at jane.doe@example.org that I am late."}]
SEND = {
    "type": "function",
    "function": {
        "name": "send_email",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
        },
    },
}
NAMED = {"type": "function", "function": {"name": "send_email"}}


def tool_stream(arguments: list[str], *, repeat_ids: bool = True) -> bytes:
    """A cloud stream that calls send_email with ``arguments`` in fragments (llama.cpp's
    server repeats id and name on every fragment; OpenAI's sends them once)."""
    chunks: list[dict[str, Any]] = [{"choices": [{"delta": {"role": "assistant"}}]}]
    for i, fragment in enumerate(arguments):
        item: dict[str, Any] = {"index": 0, "function": {"arguments": fragment}}
        if i == 0 or repeat_ids:
            item.update(id="call_abc", type="function")
            item["function"]["name"] = "send_email"
        chunks.append({"choices": [{"delta": {"tool_calls": [item]}, "finish_reason": None}]})
    chunks.append({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


class ToolCloud:
    """A cloud that answers every chat with one tool call, and keeps the bodies it got."""

    def __init__(self, arguments: list[str]):
        self.arguments = arguments
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "cloud"}]})
        self.bodies.append(json.loads(request.content))
        return httpx.Response(
            200,
            content=tool_stream(self.arguments),
            headers={"content-type": "text/event-stream"},
        )


# The cloud writes the placeholder it was sent, split across fragments.
PLACEHOLDER_ARGS = ['{"to": "<EMAIL_', 'ADDRESS_1>", "body": "Hi <PER', 'SON_1>"}']


@pytest.fixture
def cloud() -> ToolCloud:
    return ToolCloud(PLACEHOLDER_ARGS)


@pytest.fixture
def api(settings: Settings, cloud: ToolCloud) -> Iterator[TestClient]:
    client = CloudClient.from_settings(
        settings, "http://cloud.test/v1", transport=httpx.MockTransport(cloud)
    )
    gw = Gateway(FakeEngine(), client, GatewayMetrics(), settings.cloud_n_ctx)
    with TestClient(create_app(settings, gw)) as c:
        yield c


def post(api: TestClient, **body: Any) -> httpx.Response:
    return api.post("/v1/chat/completions", json={"messages": USER, **body})


# -- routing and refusals ---------------------------------------------------------------------


def test_tools_go_to_the_cloud_redacted_and_the_call_comes_back_restored(
    api: TestClient, cloud: ToolCloud
) -> None:
    r = post(api, tools=[SEND], tool_choice=NAMED, parallel_tool_calls=False)
    assert r.status_code == 200, r.text
    assert (r.headers["x-tandem-route"], r.headers["x-tandem-reason"]) == (
        "cloud",
        "requires_tools",
    )
    (sent,) = cloud.bodies
    assert sent["tools"] == [SEND] and sent["tool_choice"] == NAMED
    assert sent["parallel_tool_calls"] is False
    assert "jane.doe@example.org" not in json.dumps(sent)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == (
        "call_abc",
        "function",
        "send_email",
    )
    arguments = json.loads(call["function"]["arguments"])
    assert arguments == {"to": "jane.doe@example.org", "body": "Hi Jane Doe"}


def test_streamed_calls_name_the_call_once_and_restore_split_placeholders(
    api: TestClient,
) -> None:
    r = post(api, tools=[SEND], tool_choice=NAMED, stream=True)
    assert r.status_code == 200, r.text
    events = [
        json.loads(line[6:])
        for line in r.text.splitlines()
        if line.startswith("data: {")
    ]
    items = [i for e in events for i in e["choices"][0]["delta"].get("tool_calls", [])]
    assert items[0]["id"] == "call_abc" and items[0]["function"]["name"] == "send_email"
    assert all("id" not in i and "name" not in i["function"] for i in items[1:])
    arguments = "".join(i["function"]["arguments"] for i in items)
    assert json.loads(arguments) == {"to": "jane.doe@example.org", "body": "Hi Jane Doe"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def sent_history(
    api: TestClient, cloud: ToolCloud, user: str, to: str, result: str
) -> list[dict[str, Any]]:
    """What the cloud receives for a history in which the model called send_email(to)."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "send_email", "arguments": json.dumps({"to": to})},
    }
    messages = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    r = api.post(
        "/v1/chat/completions",
        json={"messages": messages, "tools": [SEND], "tool_choice": "required"},
    )
    assert r.status_code == 200, r.text
    sent: list[dict[str, Any]] = cloud.bodies[0]["messages"]
    return sent


def test_history_arguments_are_redacted_like_the_text(api: TestClient, cloud: ToolCloud) -> None:
    email = "jane.doe@example.org"
    sent = sent_history(api, cloud, USER[0]["content"], email, f"Sent to {email}.")
    assert email not in json.dumps(sent)
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {
        "to": "<EMAIL_ADDRESS_1>"
    }
    assert sent[2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "Sent to <EMAIL_ADDRESS_1>.",
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tandem": {"route": "local"}}, "tandem.route"),
        ({"tandem": {"privacy": "local_only"}}, "tools"),
    ],
)
def test_a_turn_kept_local_cannot_offer_tools(
    api: TestClient, cloud: ToolCloud, body: dict[str, Any], param: str
) -> None:
    r = post(api, tools=[SEND], **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert "cannot call tools" in r.json()["error"]["message"]
    assert cloud.bodies == []


def test_tool_choice_none_is_answered_as_usual(api: TestClient) -> None:
    r = post(api, tools=[SEND], tool_choice="none", tandem={"route": "local"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from local"


def test_without_a_cloud_tools_are_a_client_error(settings: Settings) -> None:
    gw = Gateway(FakeEngine(), None, GatewayMetrics(), 128)
    with TestClient(create_app(settings, gw)) as c:
        r = post(c, tools=[SEND])
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "TANDEM_CLOUD_URL" in r.json()["error"]["message"]


def test_a_failed_cloud_is_a_503_not_a_local_answer_without_the_tools(settings: Settings) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "boom"}})

    client = CloudClient.from_settings(
        settings, "http://cloud.test/v1", transport=httpx.MockTransport(down)
    )
    gw = Gateway(FakeEngine(), client, GatewayMetrics(), 128)
    with TestClient(create_app(settings, gw)) as c:
        r = post(c, tools=[SEND])
    assert r.status_code == 503, r.text
    assert "cannot call tools" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [SEND], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice", "not among the tools"),
        ({"tool_choice": "required"}, "tool_choice", "offers no tools"),
        ({"tools": [SEND, SEND]}, "tools.1.function.name", "unique"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "objekt"}}}]}, "tools.0.function.parameters", "not a valid JSON schema"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
         "tools.0.function.name", ""),
    ],
)
def test_inconsistent_tools_are_refused_by_name(
    api: TestClient, body: dict[str, Any], param: str, words: str
) -> None:
    r = post(api, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "18 C"},  # no tool_call_id
        {"role": "user", "content": "hi", "tool_call_id": "call_1"},
        {"role": "user", "content": "hi", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ],
)
def test_tool_fields_belong_to_their_roles(api: TestClient, message: dict[str, Any]) -> None:
    r = api.post("/v1/chat/completions", json={"messages": [*USER, message]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("messages")


# -- pieces -----------------------------------------------------------------------------------


def test_cloud_deltas_parse_tool_calls_and_the_legacy_function_call() -> None:
    payload = {
        "choices": [{"delta": {"tool_calls": [
            {"index": 1, "id": "c1", "type": "function",
             "function": {"name": "f", "arguments": '{"a"'}},
        ]}}]
    }
    assert _chunk_from_payload(payload).tool_calls == (ToolCallDelta(1, '{"a"', "c1", "f"),)
    legacy = {"function_call": {"name": "f", "arguments": "{}"}}
    assert parse_deltas(legacy) == (ToolCallDelta(0, "{}", None, "f"),)
    with pytest.raises(TypeError):
        parse_deltas({"tool_calls": [{"index": 0, "function": {"arguments": {"a": 1}}}]})


def test_call_builder_names_each_call_once_and_collects_parallel_calls() -> None:
    calls = CallBuilder()
    out = [
        calls.delta(ToolCallDelta(0, '{"x":', "a", "f")),
        calls.delta(ToolCallDelta(1, "{}", None, "g")),  # no id: one is made up
        calls.delta(ToolCallDelta(0, " 1}", "a", "f")),
    ]
    assert out[0] == ToolCallDelta(0, '{"x":', "a", "f")
    assert out[1].id and out[1].id.startswith("call_") and out[1].name == "g"
    assert out[2] == ToolCallDelta(0, " 1}")
    collected = CallBuilder()
    assert [collected.delta(event) for event in out] == out  # its own output: unchanged
    assert [c["function"] for c in collected.calls()] == [
        {"name": "f", "arguments": '{"x": 1}'},
        {"name": "g", "arguments": "{}"},
    ]


def test_required_with_one_tool_names_it_for_llama_cpp_only() -> None:
    body = {"tools": [SEND], "tool_choice": "required"}
    assert choice_for_dialect(body, "llama_cpp")["tool_choice"] == NAMED
    assert choice_for_dialect(body, "openai") == body
    two = {"tools": [SEND, SEND], "tool_choice": "required"}
    assert choice_for_dialect(two, "llama_cpp") == two


def test_a_version_2_session_database_is_upgraded_with_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO sessions (id, created_at, updated_at) VALUES ('s', 1, 1)")
    db.execute(
        "INSERT INTO messages (session_id, seq, exchange, role, content, status, created_at) "
        "VALUES ('s', 0, 0, 'user', 'old question', 'complete', 1)"
    )
    db.commit()
    db.close()
    store = SqliteSessionStore(path)
    assert store.schema_version == len(MIGRATIONS) == 3
    assert store.context("s").messages == [{"role": "user", "content": "old question"}]
    store.close()


def test_a_session_recognises_a_resent_transcript_with_tool_calls(
    api: TestClient, cloud: ToolCloud
) -> None:
    session = {"X-Session-Id": "tools-resent"}
    body = {"messages": USER, "tools": [SEND], "tool_choice": NAMED}
    first = api.post("/v1/chat/completions", json=body, headers=session)
    assert first.status_code == 200, first.text
    message = first.json()["choices"][0]["message"]
    result = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sent"}
    # A stateless client sends the whole transcript again, the SDK's way (content null).
    body = {"messages": [*USER, message, result], "tools": [SEND], "tool_choice": NAMED}
    second = api.post("/v1/chat/completions", json=body, headers=session)
    assert second.status_code == 200, second.text
    sent = cloud.bodies[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == "call_abc"


def test_a_value_only_in_a_calls_arguments_is_redacted_too(
    api: TestClient, cloud: ToolCloud
) -> None:
    email = "sam.lee@example.com"
    sent = sent_history(api, cloud, "Tell my colleague I am late.", email, "Sent.")
    assert email not in json.dumps(sent)
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {
        "to": "<EMAIL_ADDRESS_1>"
    }
