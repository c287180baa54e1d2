"""Privacy modes and gateway security over HTTP: fake local engine, recording mock cloud."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tandem.cloud.client import CloudClient
from tandem.errors import ConfigError
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.settings import Settings
from tests.unit.fakes import FakeEngine, RecordingCloud

SECRET = "Ana Lima's card is 4111 1111 1111 1111, mail ana.lima@example.com."


@pytest.fixture
def echo_cloud() -> RecordingCloud:
    # The cloud answers with the placeholders it was given, split across chunks.
    return RecordingCloud(("Sure, <PERS", "ON_1> — I'll write to <EMAIL_ADD", "RESS_1>."))


def make_api(settings: Settings, engine: FakeEngine, cloud: RecordingCloud) -> TestClient:
    client = CloudClient.from_settings(
        settings, "http://cloud.test/v1", transport=httpx.MockTransport(cloud)
    )
    gw = Gateway(engine, client, GatewayMetrics(), settings.cloud_n_ctx)
    return TestClient(create_app(settings, gw))


@pytest.fixture
def api(settings: Settings, engine: FakeEngine, echo_cloud: RecordingCloud) -> Iterator[TestClient]:
    with make_api(settings, engine, echo_cloud) as c:
        yield c


def ask(api: TestClient, text: str, **tandem: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], "tandem": tandem}
    return api.post("/v1/chat/completions", json=body)


def test_redact_sends_placeholders_and_restores_the_answer(
    api: TestClient, echo_cloud: RecordingCloud
) -> None:
    r = ask(api, SECRET, route="cloud")
    assert r.status_code == 200
    sent = echo_cloud.bodies[0].decode()
    for value in ("Ana Lima", "4111 1111 1111 1111", "ana.lima@example.com"):
        assert value not in sent
    assert "<PERSON_1>" in sent and "<CREDIT_CARD_1>" in sent and "<EMAIL_ADDRESS_1>" in sent
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer == "Sure, Ana Lima — I'll write to ana.lima@example.com."


def test_restoring_works_when_streaming(api: TestClient) -> None:
    body = {
        "messages": [{"role": "user", "content": SECRET}],
        "stream": True,
        "tandem": {"route": "cloud"},
    }
    r = api.post("/v1/chat/completions", json=body)
    lines = [line[6:] for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(json.loads(x)["choices"][0]["delta"].get("content") or "" for x in lines)
    assert text == "Sure, Ana Lima — I'll write to ana.lima@example.com."


def test_local_only_never_reaches_the_cloud(
    api: TestClient, engine: FakeEngine, echo_cloud: RecordingCloud
) -> None:
    r = ask(api, SECRET, privacy="local_only")
    assert r.status_code == 200
    assert r.headers["x-tandem-reason"] == "privacy_local_only"
    r = ask(api, SECRET, privacy="local_only", route="cloud")
    assert r.status_code == 400 and r.json()["error"]["param"] == "tandem.route"
    engine.error = __import__("tandem.errors").errors.OverloadedError("busy")
    r = ask(api, SECRET, privacy="local_only")
    assert r.status_code == 503  # no silent escalation
    assert echo_cloud.bodies == []


def test_health_content_stays_local_even_when_cloud_is_requested(
    api: TestClient, echo_cloud: RecordingCloud
) -> None:
    r = ask(api, "My PSA came back at 6.2 and I'm on tamoxifen; what now?", route="cloud")
    assert r.status_code == 200
    assert (r.headers["x-tandem-route"], r.headers["x-tandem-reason"]) == (
        "local",
        "privacy_keep_local",
    )
    assert echo_cloud.bodies == []


def test_allow_sends_the_text_as_is(api: TestClient, echo_cloud: RecordingCloud) -> None:
    ask(api, SECRET, route="cloud", privacy="allow")
    assert SECRET in json.loads(echo_cloud.bodies[0])["messages"][0]["content"]


def test_a_session_keeps_its_placeholders_and_its_strictest_mode(
    api: TestClient, echo_cloud: RecordingCloud
) -> None:
    def say(text: str, **tandem: Any) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": text}], "tandem": tandem}
        return api.post("/v1/chat/completions", json=body, headers={"X-Session-Id": "p1"})

    say("Please remember Ana Lima.", route="cloud")
    say("And Rui Costa, her colleague.", route="cloud")
    second = echo_cloud.messages(1)
    assert second[0]["content"] == "Please remember <PERSON_1>."  # same placeholder again
    assert "<PERSON_2>" in second[-1]["content"]
    say("Now a private note about Ana Lima.", privacy="local_only")
    r = say("Write her a card.", route="cloud", privacy="allow")
    assert r.status_code == 400  # the session is local_only from now on: cloud refused
    r = say("Write her a card.")
    assert r.headers["x-tandem-reason"] == "privacy_local_only"
    assert len(echo_cloud.bodies) == 2


def test_every_cloud_call_is_audited_without_its_text(api: TestClient, settings: Settings) -> None:
    from tandem.sessions.store import SqliteSessionStore

    ask(api, SECRET, route="cloud")
    assert settings.sessions_db is not None
    store = SqliteSessionStore(settings.sessions_db)
    (record,) = store.audit()
    assert record["redacted"] == {"PERSON": 1, "CREDIT_CARD": 1, "EMAIL_ADDRESS": 1}
    assert record["mode"] == "redact" and record["outcome"] == "ok"
    assert len(record["body_sha256"]) == 64 and record["body_bytes"] > 0
    raw = settings.sessions_db.read_bytes()
    assert b"Ana Lima" not in raw  # stateless request: nothing of it is stored
    assert not any(v in json.dumps(record) for v in ("Ana", "4111", "ana.lima"))


# -- security ---------------------------------------------------------------------------------

KEY = "k" * 8 + "-gateway-secret"


@pytest.fixture
def keyed(settings: Settings, engine: FakeEngine) -> Iterator[TestClient]:
    keyed = settings.model_copy(update={"api_key": SecretStr(KEY)})
    with make_api(keyed, engine, RecordingCloud()) as c:
        yield c


def test_requests_need_the_key_when_one_is_set(keyed: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = keyed.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert KEY not in r.text
    ok = keyed.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/healthz").status_code == 200


def test_binding_beyond_loopback_needs_a_key(settings: Settings, engine: FakeEngine) -> None:
    exposed = settings.model_copy(update={"host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="TANDEM_API_KEY"):
        make_api(exposed, engine, RecordingCloud())
    short = exposed.model_copy(update={"api_key": SecretStr("short")})
    with pytest.raises(ConfigError, match="shorter than 16"):
        make_api(short, engine, RecordingCloud())
    make_api(exposed.model_copy(update={"api_key": SecretStr(KEY)}), engine, RecordingCloud())


def test_cors_is_closed_by_default(api: TestClient) -> None:
    r = api.options(
        "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = api.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}] * 300}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 250_000}]}, "messages.0.content"),
    ],
)
def test_limits_are_4xx_with_the_field(
    settings: Settings, engine: FakeEngine, body: dict[str, Any], param: str
) -> None:
    roomy = settings.model_copy(update={"max_body_bytes": 10_000_000})
    with make_api(roomy, engine, RecordingCloud()) as api:
        r = api.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_deeply_nested_json_is_a_400(settings: Settings, engine: FakeEngine) -> None:
    deep = '{"messages": [{"role": "user", "content": "x"}], "extra": ' + "[" * 3000 + "]" * 3000
    roomy = settings.model_copy(update={"max_body_bytes": 100_000})
    with make_api(roomy, engine, RecordingCloud()) as api:
        r = api.post(
            "/v1/chat/completions",
            content=deep + "}",
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_secrets_never_reach_logs_or_metrics(
    settings: Settings, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    cloud_key = "sk-cloud-" + "z" * 20
    s = settings.model_copy(
        update={"api_key": SecretStr(KEY), "cloud_api_key": SecretStr(cloud_key)}
    )

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"bad key {cloud_key}"}})

    client = CloudClient.from_settings(
        s, "http://cloud.test/v1", transport=httpx.MockTransport(failing)
    )
    gw = Gateway(engine, client, GatewayMetrics(), s.cloud_n_ctx)
    auth = {"Authorization": f"Bearer {KEY}"}
    with caplog.at_level(logging.DEBUG), TestClient(create_app(s, gw)) as api:
        body = {"messages": [{"role": "user", "content": "hi"}], "tandem": {"route": "cloud"}}
        r = api.post("/v1/chat/completions", json=body, headers=auth)
        metrics = api.get("/metrics", headers=auth).text
        health = api.get("/healthz").text
    everything = r.text + metrics + health + caplog.text
    assert cloud_key not in everything and KEY not in everything


@pytest.mark.parametrize("stream", [False, True])
def test_placeholders_the_cloud_rewrites_or_invents_never_reach_the_client(
    settings: Settings, engine: FakeEngine, stream: bool
) -> None:
    cloud = RecordingCloud(("Dear PERS", "ON_1, I asked [Pers", "on_1] and <PERSON_", "2> too."))
    with make_api(settings, engine, cloud) as api:
        body = {
            "messages": [{"role": "user", "content": SECRET}],
            "stream": stream,
            "tandem": {"route": "cloud"},
        }
        r = api.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    if stream:
        lines = [line[6:] for line in r.text.splitlines() if line.startswith("data: {")]
        text = "".join(json.loads(x)["choices"][0]["delta"].get("content") or "" for x in lines)
    else:
        text = r.json()["choices"][0]["message"]["content"]
    assert text == "Dear Ana Lima, I asked Ana Lima and that person too."
