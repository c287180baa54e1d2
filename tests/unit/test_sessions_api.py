"""Server-side sessions over HTTP: history, tier handoff, transcript, deletion, failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.errors import TandemError
from tandem.events import GenerationParams
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.sessions.service import SessionService, new_messages
from tandem.sessions.store import SqliteSessionStore
from tandem.settings import Settings
from tandem.turn import RoutePreference, Turn
from tests.unit.fakes import FakeEngine, RecordingCloud


@pytest.fixture
def cloud() -> RecordingCloud:
    return RecordingCloud()


@pytest.fixture
def gw(engine: FakeEngine, cloud: RecordingCloud, settings: Settings) -> Gateway:
    client = CloudClient.from_settings(
        settings, "http://cloud.test/v1", transport=httpx.MockTransport(cloud)
    )
    return Gateway(engine, client, GatewayMetrics(), settings.cloud_n_ctx)


@pytest.fixture
def api(gw: Gateway, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, gw)) as c:
        yield c


def say(api: TestClient, text: str, session: str = "s1", **extra: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return api.post("/v1/chat/completions", json=body, headers={"X-Session-Id": session})


def test_each_turn_sees_the_whole_conversation(api: TestClient, engine: FakeEngine) -> None:
    assert say(api, "first question").headers["x-session-id"] == "s1"
    say(api, "second question")
    sent = engine.calls[-1][0]
    assert [m["content"] for m in sent] == ["first question", "Hello from local", "second question"]
    assert engine.sessions == ["s1", "s1"]


def test_without_a_session_the_gateway_is_stateless(api: TestClient, engine: FakeEngine) -> None:
    api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}]})
    api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "b"}]})
    assert [m["content"] for m in engine.calls[-1][0]] == ["b"]
    assert engine.sessions == [None, None]
    assert api.get("/v1/sessions").json()["data"] == []


def test_local_and_cloud_answers_hand_over_in_both_directions(
    api: TestClient, engine: FakeEngine, cloud: RecordingCloud
) -> None:
    say(api, "one")
    say(api, "two", tandem={"route": "cloud"})
    say(api, "three")
    # The cloud saw the local answer; the local model then saw the cloud's.
    assert cloud.messages(0) == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Hello from local"},
        {"role": "user", "content": "two"},
    ]
    assert [m["content"] for m in engine.calls[-1][0]] == [
        "one",
        "Hello from local",
        "two",
        "Hi from cloud",
        "three",
    ]
    transcript = api.get("/v1/sessions/s1").json()
    answers = [m for m in transcript["messages"] if m["role"] == "assistant"]
    assert [(a["tier"], a["reason"]) for a in answers] == [
        ("local", "default_local"),
        ("cloud", "requested_cloud"),
        ("local", "default_local"),
    ]


def test_cloud_requests_of_a_session_share_a_byte_identical_prefix(
    api: TestClient, cloud: RecordingCloud
) -> None:
    for text in ("one", "two", "three"):
        say(api, text, tandem={"route": "cloud"})
    for earlier, later in zip(cloud.bodies, cloud.bodies[1:], strict=False):
        messages_end = earlier.index(b"],")  # the messages array closes here
        assert later[:messages_end] == earlier[:messages_end]
        assert len(later) > len(earlier)


def test_a_client_resending_the_whole_transcript_is_not_duplicated(
    api: TestClient, engine: FakeEngine
) -> None:
    say(api, "one")
    history = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Hello from local"},
        {"role": "user", "content": "two"},
    ]
    api.post("/v1/chat/completions", json={"messages": history}, headers={"X-Session-Id": "s1"})
    assert engine.calls[-1][0] == history
    assert len(api.get("/v1/sessions/s1").json()["messages"]) == 4


def test_session_id_in_the_body_works_like_the_header(api: TestClient, engine: FakeEngine) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tandem": {"session_id": "b1"}}
    assert api.post("/v1/chat/completions", json=body).headers["x-session-id"] == "b1"
    assert api.get("/v1/sessions/b1").status_code == 200


def test_conflicting_and_malformed_session_ids_are_rejected(api: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tandem": {"session_id": "b1"}}
    r = api.post("/v1/chat/completions", json=body, headers={"X-Session-Id": "other"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tandem.session_id"
    r = say(api, "hi", session="bad id!")
    assert r.status_code == 400
    assert "session id" in r.json()["error"]["message"]


def test_delete_forgets_the_session_and_its_cached_state(
    api: TestClient, engine: FakeEngine
) -> None:
    say(api, "one")
    r = api.delete("/v1/sessions/s1")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert engine.forgotten == ["s1"]
    assert api.get("/v1/sessions/s1").status_code == 404
    assert api.delete("/v1/sessions/s1").status_code == 404
    say(api, "fresh start")
    assert [m["content"] for m in engine.calls[-1][0]] == ["fresh start"]


def test_streaming_turns_are_committed_too(api: TestClient, engine: FakeEngine) -> None:
    r = say(api, "one", stream=True)
    assert r.status_code == 200 and "[DONE]" in r.text
    say(api, "two")
    assert [m["content"] for m in engine.calls[-1][0]][:2] == ["one", "Hello from local"]


def test_an_answer_cut_midway_is_recorded_as_interrupted_and_left_out(
    api: TestClient, engine: FakeEngine
) -> None:
    say(api, "one")
    engine.error, engine.fail_after = TandemError("engine crashed"), 2
    r = say(api, "two", stream=True, tandem={"route": "local"})
    assert '"error"' in r.text  # reported in-band
    engine.error = None
    messages = api.get("/v1/sessions/s1").json()["messages"]
    assert [m["status"] for m in messages] == ["complete"] * 2 + ["interrupted"] * 2
    assert messages[-1]["content"] == "Hello from"
    say(api, "three")
    assert [m["content"] for m in engine.calls[-1][0]] == ["one", "Hello from local", "three"]


def test_a_request_that_fails_before_any_output_leaves_the_session_as_it_was(
    api: TestClient, engine: FakeEngine
) -> None:
    say(api, "one")
    engine.error = TandemError("no")
    assert say(api, "two", tandem={"route": "local"}).status_code == 500
    engine.error = None
    assert len(api.get("/v1/sessions/s1").json()["messages"]) == 2


def test_history_beyond_the_local_window_is_trimmed_and_recorded(
    settings: Settings, tmp_path: Path
) -> None:
    engine = FakeEngine(tokens=["word "] * 20, n_ctx=64)  # windows counted in words
    gw = Gateway(engine, None, GatewayMetrics(), settings.cloud_n_ctx)
    with TestClient(create_app(settings, gw)) as api:
        for i in range(8):
            r = say(api, f"question {i} " * 3, max_tokens=20)
            assert r.status_code == 200, r.text
        sent = engine.calls[-1][0]
        assert sent[-1]["content"] == "question 7 " * 3
        assert sum(len(m["content"].split()) for m in sent) <= 64 - 16
        last = api.get("/v1/sessions/s1").json()["messages"][-1]
        assert last["context"]["dropped"] > 0
        assert last["context"]["dropped"] + len(sent) - 1 == 2 * 7
        assert last["reason"] == "cloud_not_configured"  # else the cloud would have answered
        trimmed = next(
            line
            for line in api.get("/metrics").text.splitlines()
            if line.startswith('tandem_context_trimmed_messages_total{route="local"}')
        )
        assert float(trimmed.split()[-1]) >= last["context"]["dropped"]  # summed over turns


def test_concurrent_requests_on_one_session_are_serialized(
    engine: FakeEngine, gw: Gateway, tmp_path: Path
) -> None:
    engine.delay_s = 0.01
    service = SessionService(SqliteSessionStore(tmp_path / "c.db"), gw)
    params = GenerationParams(max_tokens=10)

    async def turn(text: str) -> None:
        t = Turn([{"role": "user", "content": text}], params, RoutePreference.LOCAL)
        async for _ in service.stream("s1", t):
            pass

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(turn, "first")
            tg.start_soon(turn, "second")

    anyio.run(both)
    # Whichever ran second saw the other's complete exchange.
    later = engine.calls[1][0]
    assert len(later) == 3 and later[1]["content"] == "Hello from local"
    assert service._locks == {}  # no lock left behind


def test_new_messages_only_strips_an_exact_prefix() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    fresh = [{"role": "user", "content": "c"}]
    assert new_messages(history, fresh) == fresh
    assert new_messages(history, [*history, *fresh]) == fresh
    edited = [{"role": "user", "content": "A"}, history[1], *fresh]
    assert new_messages(history, edited) == edited
    assert new_messages([], fresh) == fresh


def test_a_structured_session_turn_is_constrained_and_stored(
    api: TestClient, engine: FakeEngine, cloud: RecordingCloud
) -> None:
    """response_format reaches the tier on a session turn, and the JSON answer is history."""
    import json

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    engine.tokens = ['{"a":', " 1}"]
    r = say(api, "give a", response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"a": 1}
    output = engine.calls[-1][1].output
    assert output is not None and output.schema == schema
    say(api, "again", tandem={"route": "cloud"})
    sent = json.loads(cloud.bodies[-1])
    assert [m["content"] for m in sent["messages"]] == ["give a", '{"a": 1}', "again"]
    assert "response_format" not in sent  # a format applies to its own turn only
