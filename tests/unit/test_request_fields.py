"""Which OpenAI request fields the gateway accepts, and what a cloud answer keeps.

Fields the gateway does not honour are refused by name (never silently dropped), unless sent
with their neutral value; metadata fields are accepted and ignored. Cloud answers keep the
cloud's finish_reason and pass its logprobs on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.api import IGNORED_FIELDS, UNSUPPORTED_FIELDS, ChatCompletionRequest
from tandem.cloud.client import CloudClient
from tandem.events import GenerationParams
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.settings import Settings
from tandem.turn import Turn, cloud_body
from tests.unit.fakes import FakeEngine, RecordingCloud, sse_body

USER = [{"role": "user", "content": "Hello there"}]


def post(client: TestClient, body: Any) -> Any:
    return client.post("/v1/chat/completions", json=body)


def refused(r: Any, param: str, code: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    return error


# -- top-level fields -------------------------------------------------------------------------

# (field, value): each refused with param == field, code unsupported_parameter.
REFUSED = [
    ("logit_bias", {"50256": -100}),
    ("frequency_penalty", 0.5),
    ("frequency_penalty", False),  # not a number: not the neutral 0
    ("presence_penalty", -1),
    ("n", 2),
    ("n", True),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
    ("function_call", {"name": "f"}),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("web_search_options", {}),
    ("service_tier", "flex"),
    ("service_tier", "priority"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=lambda v: json.dumps(v)[:40])
def test_unsupported_field_is_refused_by_name(
    client: TestClient, engine: FakeEngine, field: str, value: Any
) -> None:
    error = refused(post(client, {"messages": USER, field: value}), field, "unsupported_parameter")
    assert f"'{field}'" in error["message"]
    assert "not supported" in error["message"] and "Drop it" in error["message"]
    assert engine.calls == []  # refused before anything ran


def test_every_unsupported_field_is_in_the_refusal_table() -> None:
    assert {field for field, _ in REFUSED} == set(UNSUPPORTED_FIELDS)


# (field, value): accepted, and the answer is the usual one.
NEUTRAL = [
    ("n", 1),
    ("frequency_penalty", 0),
    ("frequency_penalty", 0.0),
    ("presence_penalty", 0),
    ("logit_bias", {}),
    ("response_format", {"type": "text"}),
    ("tools", []),
    ("tool_choice", "none"),
    ("parallel_tool_calls", True),
    ("parallel_tool_calls", False),
    ("functions", []),
    ("function_call", "none"),
    ("modalities", ["text"]),
    ("service_tier", "auto"),
    ("service_tier", "default"),
    *((field, None) for field in sorted(UNSUPPORTED_FIELDS)),  # null is always neutral
]


@pytest.mark.parametrize(("field", "value"), NEUTRAL, ids=lambda v: json.dumps(v)[:40])
def test_neutral_value_is_accepted(client: TestClient, field: str, value: Any) -> None:
    r = post(client, {"messages": USER, field: value})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from local"


METADATA = {
    "user": "user-42",
    "metadata": {"team": "search"},
    "store": True,
    "safety_identifier": "hash-1",
    "prompt_cache_key": "k",
}


def test_metadata_fields_are_accepted_and_ignored(client: TestClient) -> None:
    assert set(METADATA) == IGNORED_FIELDS
    r = post(client, {"messages": USER, **METADATA})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from local"


@pytest.mark.parametrize("field", ["top_k", "repetition_penalty", "min_p", "guided_json"])
def test_field_outside_the_openai_api_is_refused_as_unknown(
    client: TestClient, field: str
) -> None:
    error = refused(post(client, {"messages": USER, field: 1}), field, "unknown_parameter")
    assert f"'{field}'" in error["message"] and "tandem" in error["message"]


def test_unknown_tandem_option_is_refused_by_name(client: TestClient) -> None:
    body = {"messages": USER, "tandem": {"route": "local", "routing": "fast"}}
    refused(post(client, body), "tandem.routing", "unknown_parameter")


def test_first_refused_field_is_named_and_validation_errors_stay_clear(
    client: TestClient,
) -> None:
    body = {"messages": USER, "temperature": 0.2, "logit_bias": {"1": 5}, "n": 2}
    refused(post(client, body), "logit_bias", "unsupported_parameter")
    error = refused(post(client, {"messages": USER, "temperature": 9}), "temperature",
                    "invalid_request")
    assert "Invalid request at 'temperature'" in error["message"]


def test_refusals_come_out_of_plain_model_validation_too() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"messages": USER, "logit_bias": {"1": 5}})
    (error,) = info.value.errors()
    assert error["type"] == "unsupported_parameter"
    assert error["ctx"]["param"] == "logit_bias"


# -- message-level fields ---------------------------------------------------------------------


def with_assistant(**fields: Any) -> list[dict[str, Any]]:
    return [*USER, {"role": "assistant", "content": "Hi.", **fields}, *USER]


# (messages, param, code)
MESSAGE_REFUSALS = [
    ([{"role": "user", "content": "hi", "name": "ada"}], "messages.0.name", "unsupported"),
    (with_assistant(function_call={"name": "f"}), "messages.1.function_call", "unsupported"),
    (with_assistant(audio={"id": "audio_1"}), "messages.1.audio", "unsupported"),
    (with_assistant(refusal="I can't."), "messages.1.refusal", "unsupported"),
    (with_assistant(annotations=[{"type": "url_citation"}]), "messages.1.annotations",
     "unsupported"),
    ([*USER, {"role": "function", "name": "f", "content": "18C"}], "messages.1.role",
     "unsupported"),
    ([{"role": "user", "content": "hi", "weight": 2}], "messages.0.weight", "unknown"),
    (
        [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ]}],
        "messages.0.content.1.type",
        "unsupported",
    ),
    (
        [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
        ]}],
        "messages.0.content.0.type",
        "unsupported",
    ),
    (
        [{"role": "user", "content": [
            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
        ]}],
        "messages.0.content.0.cache_control",
        "unknown",
    ),
]


@pytest.mark.parametrize(("messages", "param", "code"), MESSAGE_REFUSALS,
                         ids=[p for _, p, _ in MESSAGE_REFUSALS])
def test_message_field_is_refused_by_name(
    client: TestClient, messages: list[dict[str, Any]], param: str, code: str
) -> None:
    error = refused(post(client, {"messages": messages}), param, f"{code}_parameter")
    if param.endswith(".role"):
        assert "role 'tool'" in error["message"] and "tool_call_id" in error["message"]
    if param.endswith(".type"):
        part = messages[0]["content"][int(param.split(".")[3])]["type"]
        assert f"'{part}'" in error["message"] and "text" in error["message"]


def test_replayed_assistant_message_with_neutral_fields_is_accepted(client: TestClient) -> None:
    # What an OpenAI SDK's message.model_dump() holds for a plain text answer.
    replayed: dict[str, Any] = {
        "name": None,
        "tool_calls": None,
        "function_call": None,
        "audio": None,
        "refusal": None,
        "annotations": [],
    }
    r = post(client, {"messages": with_assistant(**replayed)})
    assert r.status_code == 200, r.text
    r = post(client, {"messages": with_assistant(tool_calls=[])})
    assert r.status_code == 200, r.text


def test_text_parts_are_still_accepted(client: TestClient, engine: FakeEngine) -> None:
    content = [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]
    r = post(client, {"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    assert engine.calls[0][0][-1]["content"] == "Hello there"


# -- cloud answers: finish_reason and logprobs ------------------------------------------------

CLOUD_TOKENS = [
    # (text of the chunk, [(token, logprob, [(alternative, logprob)])])
    ("Hi", [("Hi", -0.25, [("Hi", -0.25), ("Hey", -1.5)])]),
    (" from cloud", [(" from", -0.5, [(" from", -0.5), (" at", -2.0)]),
                     (" cloud", -0.75, [(" cloud", -0.75), (" sky", -3.0)])]),
]


def logprob_sse(finish: str) -> bytes:
    chunks: list[dict[str, Any]] = []
    for text, tokens in CLOUD_TOKENS:
        content = [
            {
                "token": t,
                "logprob": lp,
                "bytes": list(t.encode()),
                "top_logprobs": [{"token": a, "logprob": alp} for a, alp in top],
            }
            for t, lp, top in tokens
        ]
        choice = {"index": 0, "delta": {"content": text}, "logprobs": {"content": content},
                  "finish_reason": None}
        chunks.append({"choices": [choice]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


class LogprobCloud:
    """Streams CLOUD_TOKENS, with logprobs only when asked for them; keeps request bodies."""

    def __init__(self, finish: str = "stop"):
        self.finish = finish
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "cloud"}]})
        body = json.loads(request.content)
        self.bodies.append(body)
        content = (
            logprob_sse(self.finish)
            if body.get("logprobs")
            else sse_body(["Hi", " from cloud"], self.finish)
        )
        return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})


@pytest.fixture
def cloud() -> LogprobCloud:
    return LogprobCloud()


@pytest.fixture
def api(settings: Settings, engine: FakeEngine, cloud: LogprobCloud) -> Iterator[TestClient]:
    client = CloudClient.from_settings(
        settings, "http://cloud.test/v1", transport=httpx.MockTransport(cloud)
    )
    gw = Gateway(engine, client, GatewayMetrics(), settings.cloud_n_ctx)
    with TestClient(create_app(settings, gw)) as c:
        yield c


def ask_cloud(api: TestClient, **fields: Any) -> Any:
    body = {"messages": USER, "tandem": {"route": "cloud", "privacy": "allow"}, **fields}
    return post(api, body)


def sse_events(text: str) -> list[dict[str, Any]]:
    lines = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("reason", ["content_filter", "tool_calls", "length", "stop"])
@pytest.mark.parametrize("stream", [False, True])
def test_cloud_finish_reason_is_passed_through(
    api: TestClient, cloud: LogprobCloud, reason: str, stream: bool
) -> None:
    cloud.finish = reason
    r = ask_cloud(api, stream=stream)
    assert r.status_code == 200, r.text
    assert r.headers["x-tandem-route"] == "cloud"
    if stream:
        assert sse_events(r.text)[-1]["choices"][0]["finish_reason"] == reason
    else:
        assert r.json()["choices"][0]["finish_reason"] == reason


def test_cloud_logprobs_are_asked_for_and_passed_on(api: TestClient, cloud: LogprobCloud) -> None:
    body = ask_cloud(api, logprobs=True, top_logprobs=2).json()
    assert (cloud.bodies[0]["logprobs"], cloud.bodies[0]["top_logprobs"]) == (True, 2)
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Hi from cloud"
    content = choice["logprobs"]["content"]
    assert [(c["token"], c["logprob"]) for c in content] == [
        ("Hi", -0.25), (" from", -0.5), (" cloud", -0.75)
    ]
    assert [a["token"] for a in content[2]["top_logprobs"]] == [" cloud", " sky"]
    assert content[1]["bytes"] == list(b" from")


def test_cloud_logprobs_stream_one_chunk_per_token(api: TestClient) -> None:
    r = ask_cloud(api, logprobs=True, top_logprobs=2, stream=True)
    events = [e for e in sse_events(r.text)[1:-1]]  # without the role and final chunks
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == "Hi from cloud"
    tokens = [e["choices"][0]["logprobs"]["content"][0]["token"] for e in events]
    assert tokens == ["Hi", " from", " cloud"]


def test_without_logprobs_the_cloud_is_not_asked(api: TestClient, cloud: LogprobCloud) -> None:
    body = ask_cloud(api).json()
    assert "logprobs" not in cloud.bodies[0] and "top_logprobs" not in cloud.bodies[0]
    assert body["choices"][0]["logprobs"] is None


def test_cloud_body_carries_logprobs_only_when_the_turn_asks() -> None:
    def body(**params: Any) -> dict[str, Any]:
        return cloud_body(Turn(USER, GenerationParams(max_tokens=4, **params)))

    assert "logprobs" not in body() and "top_logprobs" not in body()
    assert body(logprobs=True)["logprobs"] is True and "top_logprobs" not in body(logprobs=True)
    assert body(logprobs=True, top_logprobs=3)["top_logprobs"] == 3


def test_to_turn_sets_logprobs() -> None:
    req = ChatCompletionRequest.model_validate({"messages": USER, "logprobs": True})
    assert req.to_turn(8, 100).params.logprobs is True
    req = ChatCompletionRequest.model_validate({"messages": USER, "top_logprobs": 3})
    params = req.to_turn(8, 100).params
    assert (params.logprobs, params.top_logprobs) == (False, 0)


def test_cached_tokens_are_reported_from_either_tier() -> None:
    from tandem.cloud.stream import _chunk_from_payload
    from tandem.events import Finish
    from tandem.responses import usage

    local = usage(Finish("stop", prompt_tokens=40, completion_tokens=5, cached_tokens=32))
    assert local["prompt_tokens_details"] == {"cached_tokens": 32}
    assert "prompt_tokens_details" not in usage(Finish("stop", 40, 5))  # nothing to say
    details = {"prompt_tokens": 40, "completion_tokens": 5,
               "prompt_tokens_details": {"cached_tokens": 24}}
    assert _chunk_from_payload({"choices": [], "usage": details}).cached_tokens == 24


def test_the_clouds_cached_tokens_reach_the_client() -> None:
    class CachingCloud(RecordingCloud):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            response = super().__call__(request)
            if request.url.path.endswith("/models"):
                return response
            usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3,
                                              "prompt_tokens_details": {"cached_tokens": 7}}}
            body = response.content.replace(
                b"data: [DONE]", f"data: {json.dumps(usage)}\n\ndata: [DONE]".encode()
            )
            return httpx.Response(200, content=body, headers=response.headers)

    cloud = CloudClient.from_settings(Settings(), "http://cloud.test/v1",
                                      transport=httpx.MockTransport(CachingCloud()))
    gw = Gateway(FakeEngine(), cloud, GatewayMetrics(), 128)
    with TestClient(create_app(Settings(standin=False), gateway=gw)) as c:
        r = post(c, {"messages": USER, "tandem": {"route": "cloud"}})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 7}
