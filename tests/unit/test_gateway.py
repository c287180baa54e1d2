"""Gateway decisions and fallbacks, over a fake engine and mock-transport clouds."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from tandem.cloud.client import CloudClient
from tandem.errors import ContextLengthError, TierUnavailableError
from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.settings import Settings
from tandem.turn import GatewayEvent, RouteInfo, RoutePreference, Turn
from tests.unit.fakes import FakeEngine

USER = [{"role": "user", "content": "hi there"}]


def broken_stream(request: httpx.Request) -> httpx.Response:
    """Two pieces of an answer, then the connection ends without [DONE]."""
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in ("Hi", " from")]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode()
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def make_gateway(engine: FakeEngine, handler: Any, cloud_n_ctx: int = 128) -> Gateway:
    cloud = CloudClient.from_settings(
        Settings(), "http://cloud.test/v1", transport=httpx.MockTransport(handler)
    )
    return Gateway(engine, cloud, GatewayMetrics(), cloud_n_ctx)


def collect(gw: Gateway, turn: Turn) -> list[GatewayEvent]:
    async def run() -> list[GatewayEvent]:
        return [e async for e in gw.stream(turn)]

    return anyio.run(run)


def turn(route: RoutePreference, fallback: bool = True) -> Turn:
    return Turn(USER, GenerationParams(max_tokens=8), route, fallback)


def test_cloud_stream_breaking_midway_is_continued_locally() -> None:
    engine = FakeEngine(tokens=[" local", " end"])
    events = collect(make_gateway(engine, broken_stream), turn(RoutePreference.CLOUD))
    routes = [e for e in events if isinstance(e, RouteInfo)]
    assert [(r.tier.value, r.reason) for r in routes] == [
        ("cloud", "requested_cloud"),
        ("local", "cloud_failed_midstream"),
    ]
    text = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert text == "Hi from local end"
    assert engine.calls[0][2] == "Hi from"  # the local model continues the same answer
    assert isinstance(events[-1], Finish)


def test_midstream_failure_without_fallback_is_an_error() -> None:
    engine = FakeEngine()
    with pytest.raises(TierUnavailableError):
        collect(make_gateway(engine, broken_stream), turn(RoutePreference.CLOUD, fallback=False))


def test_prompt_too_long_for_every_tier() -> None:
    gw = make_gateway(FakeEngine(n_ctx=4), broken_stream, cloud_n_ctx=4)
    with pytest.raises(ContextLengthError, match="TANDEM_N_CTX"):
        gw.decide(Turn([{"role": "user", "content": "a b c d e f"}], GenerationParams(4)))


def test_open_breaker_sends_cloud_requests_local_without_waiting() -> None:
    calls = []

    def failing(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    gw = make_gateway(FakeEngine(), failing)
    for _ in range(3):  # the default failure threshold
        collect(gw, turn(RoutePreference.CLOUD))
    assert len(calls) == 3
    info = gw.decide(turn(RoutePreference.CLOUD))
    assert (info.tier.value, info.reason) == ("local", "cloud_unavailable")
    collect(gw, turn(RoutePreference.CLOUD))
    assert len(calls) == 3  # the open breaker kept the request off the network
