"""The cascade in the gateway: hold the local start, check confidence, keep it or escalate."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.local.chat import Message
from tandem.metrics import GatewayMetrics
from tandem.privacy.policy import CloudShield, PrivacyGuard, PrivacyMode
from tandem.privacy.redact import Placeholders
from tandem.routing.model import LinearRouter
from tandem.routing.policy import RoutingConfig, RoutingPolicy, ScoredRouter
from tandem.server import create_app
from tandem.settings import Settings
from tandem.turn import GatewayEvent, RouteInfo, Turn
from tests.unit.fakes import FakeEngine, cloud_transport

USER = [{"role": "user", "content": "Tell me something"}]
TOKENS = [" one", " two", " three", " four", " five", " six"]


def cascade_policy(cut: float = 0.5, tokens: int = 3, hedge: float = 0.0) -> RoutingPolicy:
    # score = sigmoid(-lp_mean): sure answers (lp near 0) score 0.5, unsure ones more.
    router = LinearRouter(("lp_mean",), np.zeros(1), np.ones(1), np.array([[-1.0]]),
                          np.zeros(1), (0, 1))
    return RoutingPolicy(RoutingConfig(mode="cascade", cascade=ScoredRouter(router, cut),
                                       cascade_tokens=tokens, hysteresis=0.0,
                                       hedge_band=hedge))


class KeepLocal(PrivacyGuard):
    """A privacy policy that keeps everything on the device."""

    def shield(self, messages: Sequence[Message], mode: PrivacyMode,
               table: Placeholders | None) -> CloudShield | None:
        return None


def gateway(engine: FakeEngine, fail: bool = False, privacy: PrivacyGuard | None = None,
            cut: float = 0.6, policy: RoutingPolicy | None = None,
            cloud_calls: list[int] | None = None) -> Gateway:
    def failing() -> bool:
        if cloud_calls is not None:
            cloud_calls.append(engine.yielded)  # how far the local model was at the call
        return fail

    cloud = CloudClient.from_settings(Settings(), "http://cloud.test/v1",
                                      transport=cloud_transport(fail=failing))
    return Gateway(engine, cloud, GatewayMetrics(), 128, privacy,
                   policy=policy or cascade_policy(cut))


def run(gw: Gateway, max_tokens: int = 16) -> list[GatewayEvent]:
    async def go() -> list[GatewayEvent]:
        return [e async for e in gw.stream(Turn(USER, GenerationParams(max_tokens)))]

    return anyio.run(go)


def routes(events: list[GatewayEvent]) -> list[tuple[str, str]]:
    return [(e.tier.value, e.reason) for e in events if isinstance(e, RouteInfo)]


def text(events: list[GatewayEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent))


def test_confident_start_is_kept_and_shown_whole() -> None:
    engine = FakeEngine(TOKENS)
    engine.logprobs = [-0.05] * len(TOKENS)  # score sigmoid(0.05) ≈ 0.51 < 0.6
    events = run(gateway(engine))
    assert routes(events) == [("local", "cascade_confident")]
    assert text(events) == "".join(TOKENS)  # the held tokens and the rest, once each
    route = next(e for e in events if isinstance(e, RouteInfo))
    assert 0.5 < route.scores["cascade"] < 0.6
    assert isinstance(events[-1], Finish)


def test_unsure_start_escalates_and_the_client_sees_only_the_cloud() -> None:
    engine = FakeEngine(TOKENS)
    engine.logprobs = [-3.0] * len(TOKENS)  # sigmoid(3) ≈ 0.95
    gw = gateway(engine)
    events = run(gw)
    assert routes(events) == [("cloud", "cascade_low_confidence")]
    assert text(events) == "Hi from cloud"
    assert engine.yielded == 3  # the local generation was cancelled after the check
    metrics = gw.metrics.render().decode()
    assert 'tandem_cascade_checks_total{outcome="escalated"} 1.0' in metrics
    assert 'reason="cascade_low_confidence",route="cloud"' in metrics


def test_short_local_answer_is_checked_whole() -> None:
    engine = FakeEngine([" yes"])
    engine.logprobs = [-0.01]
    events = run(gateway(engine))
    assert routes(events) == [("local", "cascade_confident")]
    assert text(events) == " yes"


def test_privacy_keeps_an_unsure_answer_local() -> None:
    engine = FakeEngine(TOKENS)
    engine.logprobs = [-3.0] * len(TOKENS)
    events = run(gateway(engine, privacy=KeepLocal()))
    assert routes(events) == [("local", "privacy_keep_local")]
    assert text(events) == "".join(TOKENS)


def test_failed_escalation_falls_back_to_a_fresh_local_answer() -> None:
    engine = FakeEngine(TOKENS)
    engine.logprobs = [-3.0] * len(TOKENS)
    events = run(gateway(engine, fail=True))
    assert routes(events) == [("cloud", "cascade_low_confidence"), ("local", "cloud_failed")]
    assert text(events) == "".join(TOKENS)  # nothing of the dropped start is repeated
    assert engine.calls[-1][2] == ""


def hedged(logprobs: list[float]) -> tuple[Gateway, list[int]]:
    engine = FakeEngine(TOKENS)
    engine.logprobs = logprobs
    engine.delay_s = 0.01  # let the early cloud call run while the local model goes on
    calls: list[int] = []
    # cut 0.6, band 0.05: half-way (2 of 4 tokens), a score above 0.55 starts the cloud.
    gw = gateway(engine, policy=cascade_policy(0.6, tokens=4, hedge=0.05), cloud_calls=calls)
    return gw, calls


def test_hedged_cascade_starts_the_cloud_early_and_uses_it() -> None:
    gw, calls = hedged([-0.5] * 6)  # sigmoid(0.5) = 0.62: borderline, then escalates
    events = run(gw)
    assert routes(events) == [("cloud", "cascade_low_confidence")]
    assert text(events) == "Hi from cloud"
    assert calls and calls[0] < 4  # the cloud was asked before the local check
    assert len(calls) == 1  # and only once
    metrics = gw.metrics.render().decode()
    assert 'tandem_cascade_hedges_total{outcome="used"} 1.0' in metrics


def test_hedged_cascade_cancels_the_cloud_when_the_local_answer_holds() -> None:
    gw, calls = hedged([-0.5, -0.5, -0.01, -0.01, -0.01, -0.01])  # 0.563 at the check
    events = run(gw)
    assert routes(events) == [("local", "cascade_confident")]
    assert len(calls) == 1  # the early call was made, then dropped
    assert text(events) == "".join(TOKENS)
    metrics = gw.metrics.render().decode()
    assert 'tandem_cascade_hedges_total{outcome="cancelled"} 1.0' in metrics
    assert 'tandem_cascade_hedges_total{outcome="used"}' not in metrics


def test_confident_start_does_not_hedge() -> None:
    gw, calls = hedged([-0.01] * 6)  # 0.5025: below the band
    events = run(gw)
    assert routes(events) == [("local", "cascade_confident")]
    assert calls == []


@pytest.fixture
def cascade_client(tmp_path: Any) -> Iterator[tuple[TestClient, FakeEngine]]:
    settings = Settings(_env_file=None, cloud_n_ctx=128, sessions_db=tmp_path / "s.db")
    engine = FakeEngine(TOKENS)
    engine.logprobs = [-3.0] * len(TOKENS)
    cloud = CloudClient.from_settings(settings, "http://cloud.test/v1",
                                      transport=cloud_transport())
    gw = Gateway(engine, cloud, GatewayMetrics(), 128, policy=cascade_policy(0.6))
    with TestClient(create_app(settings, gw)) as c:
        yield c, engine


def test_streaming_client_gets_one_coherent_answer_and_the_reason(
    cascade_client: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = cascade_client
    r = client.post("/v1/chat/completions",
                    json={"messages": USER, "stream": True, "max_tokens": 16})
    assert r.status_code == 200
    assert r.headers["x-tandem-route"] == "cloud"
    assert r.headers["x-tandem-reason"] == "cascade_low_confidence"
    chunks = [line for line in r.text.splitlines() if line.startswith("data: {")]
    content = "".join(
        json.loads(c[6:])["choices"][0]["delta"].get("content") or ""
        for c in chunks
    )
    assert content == "Hi from cloud"
    engine.logprobs = [-0.01] * len(TOKENS)
    r = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 16})
    assert r.headers["x-tandem-reason"] == "cascade_confident"
    assert r.json()["choices"][0]["message"]["content"] == "".join(TOKENS)

