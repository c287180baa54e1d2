"""Structured output: response_format accepted as OpenAI defines it, compiled or refused by
keyword, sent to each cloud dialect, and checked by the cascade before the client sees it."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.errors import UnsupportedParameterError
from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.privacy.types import PrivacyMode
from tandem.request.cascade import Cascade
from tandem.request.plan import check_structured
from tandem.routing.policy import Action, RouteDecision, RoutingConfig, RoutingPolicy
from tandem.server import create_app
from tandem.settings import Settings
from tandem.structured import OutputFormat, canonical, for_dialect, parse_response_format
from tandem.turn import RouteInfo, Turn, cloud_body
from tests.unit.fakes import FakeEngine, RecordingCloud
from tests.unit.test_cascade import cascade_policy

USER = [{"role": "user", "content": "Extract the person: Maria, 31, lives in Rome."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "enum": ["Rome", "Paris"]},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


def person_format() -> OutputFormat:
    fmt = parse_response_format(SCHEMA_FORMAT)
    assert fmt is not None
    return fmt


# -- the request field ------------------------------------------------------------------------


def test_text_is_no_constraint_and_json_object_is_any_object() -> None:
    assert parse_response_format({"type": "text"}) is None
    fmt = parse_response_format({"type": "json_object"})
    assert fmt is not None and fmt.kind == "json_object" and fmt.schema == {"type": "object"}


def test_schema_keeps_the_property_order_and_its_grammar_is_cached() -> None:
    a = person_format()
    b = parse_response_format(json.loads(json.dumps(SCHEMA_FORMAT)))
    assert b is not None and a.schema_json == b.schema_json
    assert list(json.loads(a.schema_json)["properties"]) == ["name", "age", "city", "email"]
    assert a.grammar() is b.grammar()  # compiled once per schema


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "object", "properties": {"a": {"type": "string", "format": "bogus"}}}, "bogus"),
    ],
)
def test_a_schema_that_cannot_be_enforced_is_refused_naming_the_keyword(
    schema: dict[str, Any], keyword: str
) -> None:
    with pytest.raises(UnsupportedParameterError) as caught:
        parse_response_format(
            {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        )
    assert keyword in caught.value.message
    assert caught.value.param == "response_format.json_schema.schema"


def test_openai_shape_goes_to_openai_clouds_and_llama_cpp_shape_to_the_stand_in() -> None:
    wire = person_format().wire()
    assert wire == {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    assert for_dialect(wire, "openai") == wire
    assert for_dialect(wire, "llama_cpp") == {"type": "json_object", "schema": PERSON}
    assert for_dialect({"type": "json_object"}, "llama_cpp") == {"type": "json_object"}


# -- checking a finished answer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ('{"name":"Maria","age":31,"city":"Rome"}', None),
        ('{"name":"Maria","age":31,"city":"Rome","email":"maria@example.com"}', None),
        ('{"name":"Maria","age":31,"city":"Milan"}', "$.city: 'Milan' is not one of"),
        ('{"name":"Maria","age":310,"city":"Rome"}', "$.age: 310 is greater than"),
        ('{"name":"Maria","age":31,"city":"Rome","email":"nope"}', "$.email: 'nope' is not a"),
        ('{"name":"","age":31,"city":"Rome"}', "$.name: required but empty"),
        ('{"name":"Maria","age":31}', "'city' is a required property"),
        ('{"name":"Maria","age":31,', "not JSON"),
    ],
)
def test_problems_name_what_is_wrong(answer: str, problem: str | None) -> None:
    found = person_format().problems(answer)
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


def test_json_object_mode_wants_an_object() -> None:
    fmt = OutputFormat("json_object")
    assert fmt.problems('{"a": 1}') == []
    assert fmt.problems("[1, 2]") == ["not a JSON object"]


def test_empty_required_values_are_found_in_nested_items() -> None:
    schema = {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                },
            }
        },
        "required": ["people"],
    }
    fmt = OutputFormat("json_schema", canonical(schema))
    assert fmt.problems('{"people":[{"name":"A"},{"name":""}]}') == [
        "$.people[1].name: required but empty"
    ]
    assert fmt.problems('{"people":[]}') == ["$.people: required but empty"]


# -- the cascade's check ----------------------------------------------------------------------


def held(cascade: Cascade, pieces: list[str], reason: str = "stop") -> None:
    async def events() -> Any:
        for piece in pieces:
            yield TokenEvent(piece, logprob=-0.01)
        yield Finish(reason, prompt_tokens=4, completion_tokens=len(pieces))

    anyio.run(cascade.hold, events())


def cascade_for(output: OutputFormat | None) -> Cascade:
    decision = RouteDecision(Action.CASCADE, "cascade", cascade_tokens=2)
    return Cascade(cascade_policy(cut=0.9, tokens=2), decision, "prompt", output)


def test_a_structured_answer_is_held_whole_and_checked_against_its_schema() -> None:
    pieces = ['{"name":', '"Maria",', '"age":31,', '"city":"Milan"}']
    plain = cascade_for(None)
    held(plain, pieces)
    assert len(plain.held) == 2  # a plain answer is held only up to the check
    structured = cascade_for(person_format())
    held(structured, pieces)
    assert len(structured.held) == len(pieces) + 1 and structured.finished
    assert structured.tokens == 2  # the confidence features still read the first K tokens
    verdict = structured.check()
    assert verdict.escalate and verdict.escalate_reason == "schema_invalid"
    assert verdict.scores["schema_valid"] == 0.0


def test_a_valid_structured_answer_goes_to_the_confidence_check() -> None:
    structured = cascade_for(person_format())
    held(structured, ['{"name":"Maria",', '"age":31,', '"city":"Rome"}'])
    verdict = structured.check()
    assert not verdict.escalate and verdict.scores["schema_valid"] == 1.0


def test_a_structured_answer_cut_by_max_tokens_escalates() -> None:
    structured = cascade_for(person_format())
    held(structured, ['{"name":"Maria",', '"age":31,'], reason="length")
    assert structured.schema_problems() == [
        "max_tokens ended the answer before the JSON document was complete"
    ]
    assert structured.check().escalate_reason == "schema_invalid"


def run_gateway(
    engine: FakeEngine,
    cloud: RecordingCloud,
    output: OutputFormat,
    policy: RoutingPolicy | None = None,
) -> list[Any]:
    client = CloudClient.from_settings(
        Settings(cloud_dialect="llama_cpp"),
        "http://cloud.test/v1",
        transport=httpx.MockTransport(cloud),
    )
    policy = policy or cascade_policy(cut=0.9)
    gw = Gateway(engine, client, GatewayMetrics(), 128, policy=policy)

    async def go() -> list[Any]:
        turn = Turn(USER, GenerationParams(32, output=output))
        return [e async for e in gw.stream(turn)]

    return anyio.run(go)


def test_gateway_escalates_an_invalid_local_document_with_the_schema_translated() -> None:
    engine = FakeEngine(['{"name":"Maria",', '"age":31,', '"city":"Milan"}'])
    cloud = RecordingCloud(('{"name":"Maria","age":31,"city":"Rome"}',))
    events = run_gateway(engine, cloud, person_format())
    routes = [(e.tier.value, e.reason) for e in events if isinstance(e, RouteInfo)]
    assert routes[-1] == ("cloud", "schema_invalid")
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == (
        '{"name":"Maria","age":31,"city":"Rome"}'
    )
    sent = json.loads(cloud.bodies[0])
    assert sent["response_format"] == {"type": "json_object", "schema": PERSON}
    assert engine.calls[0][1].output == person_format()  # the local tier was constrained


def test_gateway_keeps_a_valid_local_document() -> None:
    engine = FakeEngine(['{"name":"Maria",', '"age":31,', '"city":"Rome"}'])
    cloud = RecordingCloud()
    events = run_gateway(engine, cloud, person_format())
    routes = [(e.tier.value, e.reason) for e in events if isinstance(e, RouteInfo)]
    assert routes[-1][0] == "local" and cloud.bodies == []


@pytest.mark.parametrize("valid", [True, False])
def test_a_local_decision_without_a_cascade_still_checks_the_schema(valid: bool) -> None:
    city = "Rome" if valid else "Milan"
    engine = FakeEngine(['{"name":"Maria",', '"age":31,', f'"city":"{city}"}}'])
    cloud = RecordingCloud(('{"name":"Maria","age":31,"city":"Rome"}',))
    policy = RoutingPolicy(RoutingConfig(mode="local_first"))
    events = run_gateway(engine, cloud, person_format(), policy)
    routes = [(e.tier.value, e.reason) for e in events if isinstance(e, RouteInfo)]
    if valid:
        assert routes == [("local", "default_local")] and cloud.bodies == []
    else:
        assert routes[-1] == ("cloud", "schema_invalid") and len(cloud.bodies) == 1


def test_local_only_never_escalates_an_invalid_document() -> None:
    engine = FakeEngine(['{"name":"Maria",', '"age":31,', '"city":"Milan"}'])
    cloud = RecordingCloud()
    client = CloudClient.from_settings(
        Settings(), "http://cloud.test/v1", transport=httpx.MockTransport(cloud)
    )
    gw = Gateway(engine, client, GatewayMetrics(), 128, policy=cascade_policy(cut=0.9))
    turn = Turn(USER, GenerationParams(32, output=person_format()), privacy=PrivacyMode.LOCAL_ONLY)

    async def go() -> list[Any]:
        return [e async for e in gw.stream(turn)]

    events = anyio.run(go)
    routes = [(e.tier.value, e.reason) for e in events if isinstance(e, RouteInfo)]
    assert routes == [("local", "privacy_local_only")] and cloud.bodies == []


def test_plain_local_decisions_are_left_alone() -> None:
    decision = RouteDecision(Action.LOCAL, "default_local")
    plain = Turn(USER, GenerationParams(8))
    structured = Turn(USER, GenerationParams(8, output=person_format()))
    assert check_structured(plain, decision) is decision
    assert check_structured(structured, decision).action == Action.CASCADE
    offline = RouteDecision(Action.LOCAL, "cloud_unavailable")
    assert check_structured(structured, offline) is offline


def test_cloud_body_carries_openai_shape() -> None:
    body = cloud_body(Turn(USER, GenerationParams(8, output=person_format())))
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == PERSON


# -- over HTTP --------------------------------------------------------------------------------


@pytest.fixture
def http() -> tuple[TestClient, FakeEngine]:
    engine = FakeEngine(['{"a":', "1}"])
    gw = Gateway(engine, None, GatewayMetrics(), 128)
    return TestClient(create_app(Settings(standin=False), gateway=gw)), engine


def test_http_passes_the_format_to_the_engine(http: tuple[TestClient, FakeEngine]) -> None:
    client, engine = http
    body = {"messages": USER, "response_format": SCHEMA_FORMAT}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert engine.calls[0][1].output == person_format()


@pytest.mark.parametrize(
    ("response_format", "param", "code"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}},
            "response_format.json_schema.schema",
            "unsupported_parameter",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": PERSON}},
            "response_format.json_schema.json_schema.name",
            "invalid_request",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "has space", "schema": PERSON}},
            "response_format.json_schema.json_schema.name",
            "invalid_request",
        ),
        ({"type": "yaml"}, "response_format", "invalid_request"),
    ],
)
def test_http_refuses_a_bad_format_by_name(
    http: tuple[TestClient, FakeEngine], response_format: Any, param: str, code: str
) -> None:
    client, engine = http
    r = client.post(
        "/v1/chat/completions", json={"messages": USER, "response_format": response_format}
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert engine.calls == []
