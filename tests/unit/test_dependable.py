"""The request path never loses a request silently: hedges are cancelled with their client, a
local failure escalates, a streamed bug ends in-band, the cold engine is woken."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi.testclient import TestClient

from tandem.cloud.breaker import CircuitBreaker
from tandem.cloud.client import CloudClient
from tandem.cloud.stream import CloudChunk
from tandem.errors import TandemError
from tandem.events import GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.privacy.policy import PrivacyMode
from tandem.routing.model import LinearRouter
from tandem.routing.policy import RoutingConfig, RoutingPolicy, ScoredRouter
from tandem.server import create_app
from tandem.settings import Settings
from tandem.turn import GatewayEvent, RouteInfo, Turn
from tests.unit.fakes import FakeEngine, cloud_transport

USER = [{"role": "user", "content": "Tell me something"}]
TOKENS = [" one", " two", " three", " four", " five", " six"]


class SlowCloud:
    """A cloud tier that streams ``pieces`` one every ``delay_s``, recording how it ended."""

    model = "slow-cloud"
    available = True
    breaker = CircuitBreaker()
    window_tokens = None

    async def count_tokens(self, messages: Any) -> None:
        return None  # a server without /tokenize

    def __init__(self, pieces: int = 50, delay_s: float = 0.02):
        self.pieces = pieces
        self.delay_s = delay_s
        self.started = 0
        self.sent = 0
        self.completed = False
        self.closed_early = False

    async def stream_chat(
        self, body: dict[str, Any], on_send: Callable[[bytes, str], None] | None = None
    ) -> AsyncGenerator[CloudChunk, None]:
        self.started += 1
        try:
            for i in range(self.pieces):
                await anyio.sleep(self.delay_s)
                self.sent += 1
                yield CloudChunk(text=f" c{i}")
            yield CloudChunk(finish_reason="stop")
            self.completed = True
        finally:
            self.closed_early = not self.completed

    def health(self) -> dict[str, Any]:
        return {"model": self.model}


def hedging_policy() -> RoutingPolicy:
    # score = sigmoid(-lp_mean); cut 0.6 and band 0.05: lp -0.5 is borderline, then escalates.
    router = LinearRouter(("lp_mean",), np.zeros(1), np.ones(1), np.array([[-1.0]]),
                          np.zeros(1), (0, 1))
    return RoutingPolicy(RoutingConfig(mode="cascade", cascade=ScoredRouter(router, 0.6),
                                       cascade_tokens=4, hysteresis=0.0, hedge_band=0.05))


def test_a_hedged_cloud_call_stops_when_its_client_goes_away() -> None:
    engine = FakeEngine(TOKENS)
    engine.logprobs = [-0.5] * len(TOKENS)
    engine.delay_s = 0.01
    cloud = SlowCloud()
    gw = Gateway(engine, cloud, GatewayMetrics(), 128, policy=hedging_policy())

    async def go() -> list[GatewayEvent]:
        seen: list[GatewayEvent] = []
        events = gw.stream(Turn(USER, GenerationParams(16)))
        async for event in events:
            seen.append(event)
            if isinstance(event, TokenEvent) and event.text.startswith(" c"):
                break  # the client disconnects after the first cloud token
        await events.aclose()  # type: ignore[attr-defined]
        await anyio.sleep(0.3)  # long enough for an orphaned call to run on
        return seen

    seen = anyio.run(go)
    assert [e.reason for e in seen if isinstance(e, RouteInfo)] == ["cascade_low_confidence"]
    assert cloud.started == 1
    assert cloud.closed_early and not cloud.completed
    assert cloud.sent < 10


def test_a_hedge_cancelled_by_a_confident_answer_does_not_run_on() -> None:
    engine = FakeEngine(TOKENS)
    engine.logprobs = [-0.5, -0.5, -0.01, -0.01, -0.01, -0.01]  # borderline, then sure
    engine.delay_s = 0.01
    cloud = SlowCloud()
    gw = Gateway(engine, cloud, GatewayMetrics(), 128, policy=hedging_policy())

    async def go() -> list[GatewayEvent]:
        events = [e async for e in gw.stream(Turn(USER, GenerationParams(16)))]
        await anyio.sleep(0.2)
        return events

    events = anyio.run(go)
    assert [e.reason for e in events if isinstance(e, RouteInfo)] == ["cascade_confident"]
    assert cloud.started == 1 and cloud.closed_early


def local_failing_gateway(error: BaseException, privacy: PrivacyMode = PrivacyMode.REDACT
                          ) -> tuple[Gateway, Turn]:
    engine = FakeEngine(TOKENS)
    engine.error = error  # type: ignore[assignment]
    cloud = CloudClient.from_settings(Settings(), "http://cloud.test/v1",
                                      transport=cloud_transport())
    gw = Gateway(engine, cloud, GatewayMetrics(), 128, policy=RoutingPolicy())
    return gw, Turn(USER, GenerationParams(8), privacy=privacy)


def collect(gw: Gateway, turn: Turn) -> list[GatewayEvent]:
    async def go() -> list[GatewayEvent]:
        return [e async for e in gw.stream(turn)]

    return anyio.run(go)


def test_a_generic_local_failure_in_auto_escalates_to_the_cloud() -> None:
    gw, turn = local_failing_gateway(TandemError("Local generation failed: llama_decode -3"))
    events = collect(gw, turn)
    routes = [(e.tier.value, e.reason) for e in events if isinstance(e, RouteInfo)]
    assert routes == [("local", "default_local"), ("cloud", "local_failed")]
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "Hi from cloud"


def test_a_local_failure_under_local_only_is_an_error_not_an_escalation() -> None:
    gw, turn = local_failing_gateway(TandemError("boom"), PrivacyMode.LOCAL_ONLY)
    try:
        collect(gw, turn)
    except TandemError as exc:
        assert exc.message == "boom"
    else:
        raise AssertionError("local_only must not escalate")


def test_a_bad_request_is_not_escalated() -> None:
    from tandem.errors import InvalidRequestError

    gw, turn = local_failing_gateway(InvalidRequestError("bad stop string"))
    try:
        collect(gw, turn)
    except InvalidRequestError:
        pass
    else:
        raise AssertionError("a client error must reach the client")


class Exploding(Exception):
    """Not a TandemError: a bug somewhere on the request path."""


def test_an_unexpected_error_mid_stream_ends_in_band(tmp_path: Path) -> None:
    engine = FakeEngine(TOKENS)
    engine.error = Exploding("bug")  # type: ignore[assignment]
    engine.fail_after = 2
    settings = Settings(_env_file=None, sessions_db=tmp_path / "s.db")
    gw = Gateway(engine, None, GatewayMetrics(), 128)
    with TestClient(create_app(settings, gw)) as client:
        body = {"messages": USER, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        metrics = client.get("/metrics").text
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))
    assert error["error"]["type"] == "server_error"
    assert 'tandem_errors_total{code="internal_error"} 1.0' in metrics


def test_a_turn_that_finds_the_engine_cold_wakes_it() -> None:
    engine = FakeEngine(TOKENS)
    engine.state = "cold"
    cloud = CloudClient.from_settings(Settings(), "http://cloud.test/v1",
                                      transport=cloud_transport())
    gw = Gateway(engine, cloud, GatewayMetrics(), 128, policy=RoutingPolicy())
    events = collect(gw, Turn(USER, GenerationParams(8)))
    assert [(e.tier.value, e.reason) for e in events if isinstance(e, RouteInfo)] == [
        ("cloud", "local_cold")
    ]
    assert engine.wakes == 1
    engine.state = "ready"
    collect(gw, Turn(USER, GenerationParams(8)))
    assert engine.wakes == 1  # a ready engine is left alone


def test_the_engine_thread_runs_at_a_lower_priority() -> None:
    import os
    import threading

    from tandem.local.engine import _lower_priority

    seen: list[int] = []

    def worker() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        _lower_priority(5)
        seen.extend([before, os.getpriority(os.PRIO_PROCESS, tid)])

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen[1] == min(seen[0] + 5, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == seen[0]  # only it
