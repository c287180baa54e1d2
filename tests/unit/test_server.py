"""The HTTP surface over a fake engine and a mock-transport cloud."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tandem.errors import OverloadedError
from tests.unit.conftest import CloudSwitch
from tests.unit.fakes import FakeEngine

USER = [{"role": "user", "content": "Hello there"}]


def post(client: TestClient, body: Any, **kw: Any) -> Any:
    return client.post("/v1/chat/completions", json=body, **kw)


def sse_events(text: str) -> list[Any]:
    lines = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_local_completion_says_where_it_was_answered(client: TestClient) -> None:
    r = post(client, {"messages": USER})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "Hello from local"
    assert r.headers["x-tandem-route"] == "local" == body["tandem"]["route"]
    assert r.headers["x-tandem-reason"] == body["tandem"]["reason"] == "default_local"
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 3


def test_streaming_ends_with_done_and_reports_route(client: TestClient) -> None:
    r = post(client, {"messages": USER, "stream": True, "stream_options": {"include_usage": True}})
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "Hello from local"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["tandem"]["route"] == "local"
    assert events[-1]["usage"]["completion_tokens"] == 3


def test_logprobs_are_reported_per_token(client: TestClient) -> None:
    body = post(client, {"messages": USER, "logprobs": True}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["Hello", " from", " local"]
    assert all(c["logprob"] < 0 for c in content)


def test_forced_cloud_route(client: TestClient) -> None:
    r = post(client, {"messages": USER, "tandem": {"route": "cloud"}})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hi from cloud"
    assert r.headers["x-tandem-route"] == "cloud"
    assert r.headers["x-tandem-reason"] == "requested_cloud"


@pytest.mark.parametrize("stream", [False, True])
def test_failed_cloud_falls_back_to_local(
    client: TestClient, cloud_switch: CloudSwitch, stream: bool
) -> None:
    cloud_switch.down = True
    r = post(client, {"messages": USER, "stream": stream, "tandem": {"route": "cloud"}})
    assert r.status_code == 200
    assert r.headers["x-tandem-route"] == "local"
    assert r.headers["x-tandem-reason"] == "cloud_failed"
    if stream:
        events = sse_events(r.text)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    else:
        text = r.json()["choices"][0]["message"]["content"]
    assert text == "Hello from local"
    metrics = client.get("/metrics").text
    assert 'tandem_fallbacks_total{cause="cloud_http_error",reason="cloud_failed"} 1.0' in metrics


def test_cloud_only_request_fails_when_cloud_fails(
    client: TestClient, cloud_switch: CloudSwitch
) -> None:
    cloud_switch.down = True
    r = post(client, {"messages": USER, "tandem": {"route": "cloud", "fallback": False}})
    assert r.status_code in (502, 503)
    assert r.json()["error"]["type"] == "server_error"


def test_auto_goes_to_cloud_when_prompt_exceeds_local_window(client: TestClient) -> None:
    long = [{"role": "user", "content": "word " * 100}]  # 100 > local 64, < cloud 128
    r = post(client, {"messages": long})
    assert r.headers["x-tandem-route"] == "cloud"
    assert r.headers["x-tandem-reason"] == "exceeds_local_context"


def test_auto_goes_to_cloud_while_local_model_loads(client: TestClient, engine: FakeEngine) -> None:
    engine.state = "loading"
    r = post(client, {"messages": USER})
    assert (r.headers["x-tandem-route"], r.headers["x-tandem-reason"]) == ("cloud", "local_loading")


def test_overloaded_local_engine_answers_503_with_retry_after(
    client: TestClient, engine: FakeEngine
) -> None:
    engine.error = OverloadedError("busy", retry_after_s=2)
    r = post(client, {"messages": USER, "tandem": {"route": "local"}})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "overloaded"


def test_overloaded_auto_request_escalates_to_cloud(client: TestClient, engine: FakeEngine) -> None:
    engine.error = OverloadedError("busy")
    r = post(client, {"messages": USER})
    assert (r.headers["x-tandem-route"], r.headers["x-tandem-reason"]) == (
        "cloud",
        "local_overloaded",
    )


BAD_BODIES = {
    "wrong_type_messages": ({"messages": "hi"}, "messages"),
    "empty_messages": ({"messages": []}, "messages"),
    "unknown_role": ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    "negative_max_tokens": ({"messages": USER, "max_tokens": -5}, "max_tokens"),
    "absurd_max_tokens": ({"messages": USER, "max_tokens": 10**9}, "max_tokens"),
    "string_temperature": ({"messages": USER, "temperature": "hot"}, "temperature"),
    "bad_route": ({"messages": USER, "tandem": {"route": "moon"}}, "tandem.route"),
    "several_choices": ({"messages": USER, "n": 3}, "n"),
    "no_user_message": ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
    "too_long_for_every_tier": (
        {"messages": [{"role": "user", "content": "w " * 500}]},
        "messages",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_input_gets_openai_shaped_4xx(client: TestClient, name: str) -> None:
    body, param = BAD_BODIES[name]
    r = post(client, body)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert client.get("/healthz").status_code == 200  # the server is still up


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null"])
def test_malformed_json_gets_400(client: TestClient, raw: bytes) -> None:
    r = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_gets_413(client: TestClient) -> None:
    r = post(client, {"messages": [{"role": "user", "content": "x" * 10_000}]})
    assert r.status_code == 413
    assert "TANDEM_MAX_BODY_BYTES" in r.json()["error"]["message"]


def test_unknown_path_is_openai_shaped_404(client: TestClient) -> None:
    r = client.get("/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "http_404"


def test_models_health_and_metrics(client: TestClient) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["fake-local", "cloud"]
    health = client.get("/healthz").json()
    assert health["local"]["state"] == "ready"
    assert health["cloud"]["url"] == "http://cloud.test/v1"
    post(client, {"messages": USER})
    metrics = client.get("/metrics").text
    assert 'tandem_requests_total{reason="default_local",route="local"} 1.0' in metrics
    assert "tandem_local_queue_depth 0.0" in metrics
    assert 'tandem_tokens_total{kind="completion",route="local"} 3.0' in metrics
