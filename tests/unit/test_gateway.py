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


def test_cloud_finish_reason_is_kept() -> None:
    from tests.unit.fakes import sse_body

    def filtered(request: httpx.Request) -> httpx.Response:
        body = sse_body(["Hi"], finish="content_filter")
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    events = collect(make_gateway(FakeEngine(), filtered), turn(RoutePreference.CLOUD))
    assert isinstance(events[-1], Finish)
    assert events[-1].reason == "content_filter"


def test_audit_row_is_written_when_the_request_is_cancelled_mid_cloud_stream() -> None:
    """The client goes away mid-answer, and the cancellation is delivered again while the audit
    row is being written (as anyio's cancel scopes do): the row must still be written before
    the cancelled task ends."""
    import asyncio
    import threading

    first_piece = json.dumps({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})

    async def hanging_body() -> Any:
        yield f"data: {first_piece}\n\n".encode()
        await asyncio.sleep(60)  # the cloud never finishes

    def hanging(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, content=hanging_body(), headers=headers)

    rows: list[dict[str, Any]] = []
    writing = threading.Event()
    release = threading.Event()

    def slow_audit(row: dict[str, Any]) -> None:
        writing.set()
        release.wait(5)
        rows.append(row)

    gw = make_gateway(FakeEngine(), hanging)
    gw.audit = slow_audit

    async def main() -> None:
        got_text = asyncio.Event()

        async def consume() -> None:
            async for event in gw.stream(turn(RoutePreference.CLOUD)):
                if isinstance(event, TokenEvent) and event.text:
                    got_text.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_text.wait(), 5)
        task.cancel()  # the client went away
        assert await asyncio.to_thread(writing.wait, 5)
        task.cancel()  # delivered again while the row is being written
        asyncio.get_running_loop().call_later(0.2, release.set)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(rows) == 1, "the cancelled task ended before its audit row was written"

    asyncio.run(main())
    (row,) = rows
    assert row["outcome"] not in ("ok", "failed_over")
    assert row["endpoint"] == "http://cloud.test/v1" and row["body_bytes"] > 0
