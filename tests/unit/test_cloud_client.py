"""CloudClient against httpx.MockTransport: SSE parsing, errors, breaker, health, secrecy."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr

from tandem.cloud.breaker import BreakerState, CircuitBreaker
from tandem.cloud.client import CloudClient
from tandem.errors import CloudError
from tandem.settings import load_settings

BASE = "http://cloud.test/v1"
KEY = "sk-very-secret-0123456789"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, so that mypy does not narrow the property across the state changes under test.
    return breaker.state


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(event)}\n\n" for event in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def delta(text: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    content = {} if text is None else {"content": text}
    choice = {"index": 0, "delta": content, "finish_reason": finish, **extra}
    return {"object": "chat.completion.chunk", "choices": [choice]}


HELLO = sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
    delta("Hel"),
    delta("lo"),
    delta(finish="stop"),
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
)


def stream_response(body: bytes = HELLO) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def make_client(handler: Handler, clock: FakeClock | None = None, **kw: Any) -> CloudClient:
    kw.setdefault("failure_threshold", 2)
    kw.setdefault("cooldown_s", 10.0)
    return CloudClient(
        BASE,
        api_key=SecretStr(KEY),
        model="big-model",
        transport=httpx.MockTransport(handler),
        clock=clock or FakeClock(),
        **kw,
    )


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=request)


def chat_body() -> dict[str, Any]:
    return {"model": "whatever", "messages": [{"role": "user", "content": "hi"}]}


# --- streaming and collection ------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_chat_parses_sse_and_sends_the_configured_model() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return stream_response()

    client = make_client(handler)
    chunks = [chunk async for chunk in client.stream_chat(chat_body())]
    assert [c.text for c in chunks] == ["", "Hel", "lo", "", ""]
    assert chunks[3].finish_reason == "stop"
    assert (chunks[4].prompt_tokens, chunks[4].completion_tokens) == (5, 2)
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/chat/completions"
    sent = json.loads(request.content)
    assert sent["model"] == "big-model"
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == chat_body()["messages"]
    assert request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
async def test_chat_collects_the_stream() -> None:
    client = make_client(lambda request: stream_response())
    answer = await client.chat(chat_body())
    assert answer.text == "Hello"
    assert answer.finish_reason == "stop"
    assert (answer.prompt_tokens, answer.completion_tokens) == (5, 2)


@pytest.mark.anyio
async def test_chat_without_usage_has_no_token_counts() -> None:
    body = sse(delta("Hi"), delta(finish="length"))
    client = make_client(lambda request: stream_response(body))
    answer = await client.chat(chat_body())
    assert answer.text == "Hi"
    assert answer.finish_reason == "length"
    assert answer.prompt_tokens is None
    assert answer.completion_tokens is None


@pytest.mark.anyio
async def test_sse_comments_and_other_fields_are_ignored() -> None:
    body = b": ping - 2024\n\nevent: message\ndata: " + json.dumps(delta("ok")).encode()
    body += b"\r\n\r\n" + sse(delta(finish="stop"))
    client = make_client(lambda request: stream_response(body))
    assert (await client.chat(chat_body())).text == "ok"


@pytest.mark.anyio
async def test_logprobs_are_parsed() -> None:
    info = {
        "content": [
            {"token": "Hi", "logprob": -0.5, "top_logprobs": [{"token": "Hi", "logprob": -0.5}]}
        ]
    }
    body = sse(delta("Hi", logprobs=info), delta(finish="stop"))
    client = make_client(lambda request: stream_response(body))
    answer = await client.chat(chat_body())
    assert len(answer.logprobs) == 1
    assert answer.logprobs[0].token == "Hi"
    assert answer.logprobs[0].logprob == -0.5
    assert answer.logprobs[0].top == (("Hi", -0.5),)


@pytest.mark.anyio
async def test_stream_without_done_is_accepted_once_finished() -> None:
    body = sse(delta("Hi"), delta(finish="stop"), done=False)
    client = make_client(lambda request: stream_response(body))
    assert (await client.chat(chat_body())).text == "Hi"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_http_500_raises_cloud_error_with_the_servers_message() -> None:
    error = {"error": {"message": "model exploded", "type": "server_error"}}
    client = make_client(lambda request: httpx.Response(500, json=error))
    with pytest.raises(CloudError) as info:
        await client.chat(chat_body())
    assert info.value.code == "cloud_http_error"
    assert "HTTP 500" in info.value.message
    assert "model exploded" in info.value.message
    assert client.healthy is False
    assert client.health()["last_error"] == info.value.message


@pytest.mark.anyio
async def test_connect_error_raises_cloud_error_saying_what_to_check() -> None:
    client = make_client(refuse)
    with pytest.raises(CloudError) as info:
        await client.chat(chat_body())
    assert info.value.code == "cloud_unreachable"
    assert BASE in info.value.message
    assert "server is up" in info.value.message
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.anyio
async def test_read_timeout_raises_cloud_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(CloudError) as info:
        await make_client(handler).chat(chat_body())
    assert info.value.code == "cloud_timeout"
    assert "cloud_read_timeout_s" in info.value.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"data: {not json\n\n",
        b'data: ["a list"]\n\n',
        b'data: {"choices": [{"delta": "oops"}]}\n\n',
        b'data: {"choices": [{"delta": {"content": [1]}}]}\n\n',
        sse(delta("cut off"), done=False),
    ],
    ids=["bad-json", "not-an-object", "bad-delta", "bad-content", "truncated"],
)
async def test_malformed_stream_raises_cloud_error(body: bytes) -> None:
    client = make_client(lambda request: stream_response(body))
    with pytest.raises(CloudError) as info:
        await client.chat(chat_body())
    assert info.value.code == "cloud_bad_response"


@pytest.mark.anyio
async def test_error_event_mid_stream_raises_cloud_error() -> None:
    body = sse(delta("Hi"), {"error": {"message": "out of memory"}})
    with pytest.raises(CloudError, match="out of memory"):
        await make_client(lambda request: stream_response(body)).chat(chat_body())


@pytest.mark.anyio
async def test_bad_request_is_surfaced_but_does_not_trip_the_breaker() -> None:
    error = {"error": {"message": "max_tokens is too large"}}
    client = make_client(lambda request: httpx.Response(400, json=error), failure_threshold=1)
    with pytest.raises(CloudError, match="max_tokens is too large") as info:
        await client.chat(chat_body())
    assert info.value.code == "cloud_rejected_request"
    assert client.available
    assert client.breaker.consecutive_failures == 0


# --- circuit breaker ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_breaker_opens_after_threshold_and_stops_touching_the_network() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, text="busy")

    client = make_client(handler, failure_threshold=2)
    for _ in range(2):
        with pytest.raises(CloudError):
            await client.chat(chat_body())
    assert not client.available
    with pytest.raises(CloudError) as info:
        await client.chat(chat_body())
    assert info.value.code == "circuit_open"
    assert calls == 2
    assert client.health()["breaker"] == "open"


@pytest.mark.anyio
async def test_breaker_half_opens_after_cooldown_and_closes_on_success() -> None:
    clock = FakeClock()
    failing = True

    def handler(request: httpx.Request) -> httpx.Response:
        return refuse(request) if failing else stream_response()

    client = make_client(handler, clock, failure_threshold=2, cooldown_s=10.0)
    for _ in range(2):
        with pytest.raises(CloudError):
            await client.chat(chat_body())
    clock.now += 10.0
    assert state(client.breaker) is BreakerState.HALF_OPEN
    assert client.available
    with pytest.raises(CloudError, match="Cannot connect"):  # the trial fails: open again
        await client.chat(chat_body())
    assert state(client.breaker) is BreakerState.OPEN
    clock.now += 10.0
    failing = False
    assert (await client.chat(chat_body())).text == "Hello"
    assert state(client.breaker) is BreakerState.CLOSED
    assert client.health()["consecutive_failures"] == 0


@pytest.mark.anyio
async def test_half_open_admits_one_trial_and_an_abandoned_trial_frees_the_slot() -> None:
    clock = FakeClock()
    client = make_client(lambda request: stream_response(), clock, failure_threshold=1)
    client.breaker.record_failure()
    clock.now += 10.0
    stream = client.stream_chat(chat_body())
    await stream.__anext__()  # the trial is in flight
    with pytest.raises(CloudError) as info:
        await client.chat(chat_body())
    assert info.value.code == "circuit_open"
    await stream.aclose()  # the caller gave up: says nothing about the endpoint
    assert state(client.breaker) is BreakerState.HALF_OPEN
    assert client.available


# --- health ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_probe_records_rtt_as_an_ewma() -> None:
    clock = FakeClock()
    delays = iter([0.050, 0.150])

    def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == f"{BASE}/models"
        clock.now += next(delays)
        return httpx.Response(200, json={"object": "list", "data": []})

    client = make_client(handler, clock)
    assert client.health()["healthy"] is None
    assert await client.probe()
    assert client.rtt_ms == pytest.approx(50.0)
    assert await client.probe()
    assert client.rtt_ms == pytest.approx(0.3 * 150.0 + 0.7 * 50.0)
    assert client.health()["healthy"] is True


@pytest.mark.anyio
async def test_requests_record_time_to_headers() -> None:
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        clock.now += 0.020
        return stream_response()

    client = make_client(handler, clock)
    await client.chat(chat_body())
    assert client.rtt_ms == pytest.approx(20.0)


@pytest.mark.anyio
async def test_failed_probes_open_the_breaker_and_a_good_probe_closes_it() -> None:
    up = False

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": []}) if up else refuse(request)

    client = make_client(handler, failure_threshold=2)
    assert not await client.probe()
    assert not await client.probe()
    assert state(client.breaker) is BreakerState.OPEN
    assert client.health()["healthy"] is False
    up = True
    assert await client.probe()
    assert state(client.breaker) is BreakerState.CLOSED
    assert client.available


@pytest.mark.anyio
async def test_run_probes_probes_repeatedly() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"data": []})

    client = make_client(handler)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.run_probes, 0.0)
            while calls < 3:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    await client.aclose()


def test_health_reports_the_endpoint() -> None:
    client = make_client(refuse)
    assert client.health() == {
        "url": BASE,
        "model": "big-model",
        "window_tokens": None,  # until the server lists its window
        "healthy": None,
        "available": True,
        "rtt_ms": None,
        "breaker": "closed",
        "reopens_on": None,
        "consecutive_failures": 0,
        "first_token_deadline_s": 2.5,
        "last_error": None,
    }


def test_from_settings_takes_the_cloud_settings() -> None:
    settings = load_settings(
        cloud_api_key=SecretStr(KEY),
        cloud_model="m",
        cloud_failure_threshold=7,
        cloud_cooldown_s=3.0,
    )
    client = CloudClient.from_settings(settings, "http://x.test/v1/")
    assert client.base_url == "http://x.test/v1"
    assert client.model == "m"
    assert client.breaker.failure_threshold == 7
    assert client.breaker.cooldown_s == 3.0
    assert client.first_token_deadline_s() == 2.5  # the default floor
    floor = CloudClient.from_settings(load_settings(cloud_first_token_floor_s=4.0), "http://x")
    assert floor.first_token_deadline_s() == 4.0
    fixed = CloudClient.from_settings(load_settings(cloud_first_token_s=1.5), "http://x")
    assert fixed.first_token_deadline_s(10_000) == 1.5


# --- the API key stays secret ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 500, 400])
async def test_api_key_never_appears_in_errors_health_or_logs(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # A careless server that echoes the Authorization header back in its error message.
    def handler(request: httpx.Request) -> httpx.Response:
        echoed = {"error": {"message": f"bad header {request.headers['authorization']}"}}
        return httpx.Response(status, json=echoed)

    caplog.set_level(logging.DEBUG)
    client = make_client(handler, failure_threshold=1)
    with pytest.raises(CloudError) as info:
        await client.chat(chat_body())
    assert "bad header Bearer ***" in info.value.message
    with pytest.raises(CloudError) as reopened:
        await client.chat(chat_body())
    texts = [str(info.value), repr(info.value), str(reopened.value), repr(client)]
    texts += [json.dumps(client.health()), caplog.text, json.dumps(info.value.to_openai())]
    for text in texts:
        assert KEY not in text


@pytest.mark.anyio
async def test_api_key_absent_when_the_endpoint_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(refuse)
    with pytest.raises(CloudError) as info:
        await client.chat(chat_body())
    assert not await client.probe()
    for text in (str(info.value), str(info.value.__cause__), caplog.text, str(client.health())):
        assert KEY not in text


# --- the first-token deadline (a half-open link: the request is accepted, nothing comes back) ---


class Silent:
    """An endpoint that accepts every request and never answers it (after ``head``, if given:
    the response headers and those bytes of its stream); answers probes while ``probes_ok``."""

    def __init__(self, head: bytes | None = None) -> None:
        self.head = head
        self.probes_ok = False
        self.chats = 0
        self.probes = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            self.probes += 1
            if self.probes_ok:
                return httpx.Response(200, json={"data": []})
            raise httpx.ReadTimeout("timed out", request=request)
        self.chats += 1
        if self.head is None:
            await anyio.sleep_forever()
        head = self.head

        async def stalled() -> Any:
            yield head
            await anyio.sleep_forever()

        return httpx.Response(200, content=stalled(), headers={"content-type": "text/event-stream"})


async def timed_chat(client: CloudClient) -> tuple[CloudError, float]:
    started = time.monotonic()
    with anyio.fail_after(5), pytest.raises(CloudError) as info:  # fails, not hangs, without it
        await client.chat(chat_body())
    return info.value, time.monotonic() - started


ROLE_ONLY = sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}, done=False
)


@pytest.mark.anyio
@pytest.mark.parametrize("head", [None, ROLE_ONLY], ids=["no-headers", "role-chunk-only"])
async def test_no_first_token_within_the_deadline_raises_the_first_token_timeout(
    head: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = Silent(head)
    client = make_client(endpoint, first_token_s=0.2)
    error, elapsed = await timed_chat(client)
    assert error.code == "cloud_first_token_timeout"
    assert 0.19 <= elapsed < 1.0
    assert BASE in error.message and "first token" in error.message
    assert "cloud_first_token_s" in error.message  # the setting that changes it
    assert endpoint.chats == 1
    assert client.healthy is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "first token" in warnings[0].getMessage()
    assert KEY not in caplog.text and KEY not in error.message


@pytest.mark.anyio
async def test_the_derived_deadline_applies_when_none_is_set() -> None:
    client = make_client(Silent(), first_token_floor_s=0.2)
    error, elapsed = await timed_chat(client)
    assert error.code == "cloud_first_token_timeout"
    assert "cloud_first_token_floor_s" in error.message
    assert 0.19 <= elapsed < 1.0


@pytest.mark.anyio
async def test_after_a_first_token_timeout_only_a_probe_lets_requests_through_again() -> None:
    clock = FakeClock()
    endpoint = Silent()
    client = make_client(endpoint, clock, first_token_s=0.2, failure_threshold=3, cooldown_s=10.0)
    await timed_chat(client)
    assert state(client.breaker) is BreakerState.OPEN
    assert not client.available
    clock.now += 1000.0  # long past the cooldown: no half-open trial for a black hole
    assert not client.available
    with pytest.raises(CloudError) as refused:
        await client.chat(chat_body())
    assert refused.value.code == "circuit_open"
    assert "probe" in refused.value.message
    assert endpoint.chats == 1  # the refused request never touched the network
    health = client.health()
    assert (health["breaker"], health["reopens_on"]) == ("open", "probe")
    assert health["available"] is False
    assert not await client.probe()  # still silent: stays open
    assert not client.available
    endpoint.probes_ok = True
    assert await client.probe()
    assert client.available
    assert client.health()["breaker"] == "closed" and client.health()["reopens_on"] is None


@pytest.mark.anyio
async def test_the_first_token_deadline_does_not_cut_a_slow_answer_once_started() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        async def slow() -> Any:
            yield sse(delta("Hi"), done=False)
            await anyio.sleep(0.3)  # longer than the first-token deadline
            yield sse(delta(" there"), delta(finish="stop"))

        return httpx.Response(200, content=slow(), headers={"content-type": "text/event-stream"})

    client = make_client(handler, first_token_s=0.1)
    with anyio.fail_after(5):
        assert (await client.chat(chat_body())).text == "Hi there"
    assert client.available


@pytest.mark.anyio
async def test_chunks_before_the_first_token_are_held_back_then_delivered_in_order() -> None:
    client = make_client(lambda request: stream_response(), first_token_s=1.0)
    with anyio.fail_after(5):
        chunks = [chunk async for chunk in client.stream_chat(chat_body())]
    assert [c.text for c in chunks] == ["", "Hel", "lo", "", ""]


def test_the_derived_first_token_deadline() -> None:
    client = make_client(refuse)
    assert client.first_token_deadline_s() == 2.5  # no round trip measured yet: the floor
    client.rtt_ms = 100.0  # 8 round trips = 0.8 s: the floor still rules
    assert client.first_token_deadline_s() == 2.5
    client.rtt_ms = 500.0  # a slow link: 8 round trips
    assert client.first_token_deadline_s() == pytest.approx(4.0)
    # The prompt's prefill: (bytes / 4) tokens at 2000 tokens per second.
    assert client.first_token_deadline_s(80_000) == pytest.approx(4.0 + 10.0)
    body = chat_body()
    sent = len(json.dumps({**body, "model": "big-model"}, separators=(",", ":")))
    assert client.first_token_deadline_for(body) > client.first_token_deadline_s(sent)
    assert make_client(refuse, first_token_floor_s=1.0).first_token_deadline_s() == 1.0
    fixed = make_client(refuse, first_token_s=0.7)
    fixed.rtt_ms = 500.0
    assert fixed.first_token_deadline_s(80_000) == 0.7  # an explicit deadline is the deadline
    assert fixed.health()["first_token_deadline_s"] == 0.7


# --- probes: bounded, and skipped while a stream shows the endpoint is up ----------------------


@pytest.mark.anyio
async def test_the_probe_waits_the_first_token_deadline_not_the_read_timeout() -> None:
    read_timeouts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        read_timeouts.append(request.extensions["timeout"]["read"])
        return httpx.Response(200, json={"data": []})

    client = make_client(handler, read_timeout_s=60.0)
    await client.probe()
    client.rtt_ms = 1000.0  # a slow link: 8 round trips
    await client.probe()
    client.rtt_ms = 20_000.0  # never beyond the read timeout
    await client.probe()
    fixed = make_client(handler, first_token_s=0.5)  # never below the floor
    await fixed.probe()
    assert read_timeouts == [2.5, pytest.approx(8.0), 60.0, 2.5]


class Streaming:
    """An endpoint whose chat stream sends one chunk, then waits for ``go`` to finish; counts
    probes (which fail, like a single-slot server busy generating)."""

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.probes = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            self.probes += 1
            raise httpx.ReadTimeout("busy generating", request=request)
        go = self.go

        async def answer() -> Any:
            yield sse(delta("Hel"), done=False)
            await go.wait()
            yield sse(delta("lo"), delta(finish="stop"))

        return httpx.Response(200, content=answer(), headers={"content-type": "text/event-stream"})


@pytest.mark.anyio
async def test_the_probe_is_skipped_while_a_stream_is_producing_chunks() -> None:
    clock = FakeClock()
    endpoint = Streaming()
    client = make_client(endpoint, clock, failure_threshold=1)
    with anyio.fail_after(5):
        stream = client.stream_chat(chat_body())
        assert (await stream.__anext__()).text == "Hel"
        assert client.healthy is None
        assert await client.probe()  # the stream is proof enough: no request, no failure
        assert endpoint.probes == 0
        assert client.available and client.breaker.consecutive_failures == 0
        clock.now += 60.0  # the stream has gone quiet: probes run again
        assert not await client.probe()
        assert endpoint.probes == 1
        endpoint.go.set()
        assert [c.text async for c in stream] == ["lo", ""]
    clock.now += 1.0  # the stream is over: a probe is a probe again
    assert not await client.probe()
    assert endpoint.probes == 2


@pytest.mark.anyio
async def test_a_probe_that_fails_while_a_stream_answers_is_not_counted() -> None:
    clock = FakeClock()
    probe_started = anyio.Event()
    chunk_sent = anyio.Event()
    probes = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal probes
        if request.url.path.endswith("/models"):
            probes += 1
            probe_started.set()
            await chunk_sent.wait()  # a single-slot server: /models waits for the generation
            raise httpx.ReadTimeout("busy generating", request=request)

        async def answer() -> Any:
            await probe_started.wait()
            clock.now += 1.0
            yield sse(delta("Hi"), delta(finish="stop"))

        return httpx.Response(200, content=answer(), headers={"content-type": "text/event-stream"})

    client = make_client(handler, clock, failure_threshold=1)
    results: list[bool] = []

    async def read_answer() -> None:
        async for chunk in client.stream_chat(chat_body()):
            if chunk.text:
                chunk_sent.set()

    async def probe() -> None:
        results.append(await client.probe())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_answer)
            await anyio.sleep(0.05)
            tg.start_soon(probe)
    assert probes == 1 and results == [True]
    assert client.available and client.breaker.consecutive_failures == 0
    assert client.healthy is True


@pytest.mark.anyio
async def test_requests_do_not_wait_for_a_probe_in_flight() -> None:
    probing = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            probing.set()
            await anyio.sleep_forever()
        return stream_response()

    client = make_client(handler)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.probe)
            await probing.wait()
            assert (await client.chat(chat_body())).text == "Hello"
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_request_queued_behind_a_streaming_answer_keeps_waiting() -> None:
    # A single-slot server (the stand-in): the second request waits for the first's whole
    # answer, longer than the first-token deadline, while the first shows the endpoint is up.
    slot = anyio.Semaphore(1)

    async def handler(request: httpx.Request) -> httpx.Response:
        await slot.acquire()

        async def answer() -> Any:
            for piece in ("a", "b", "c", "d", "e", "f"):
                yield sse(delta(piece), done=False)
                await anyio.sleep(0.1)
            slot.release()  # done generating: the next request's turn
            yield sse(delta(finish="stop"))

        return httpx.Response(200, content=answer(), headers={"content-type": "text/event-stream"})

    client = make_client(handler, first_token_s=0.25)
    answers: list[str] = []

    async def ask() -> None:
        answers.append((await client.chat(chat_body())).text)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            tg.start_soon(ask)
    assert answers == ["abcdef", "abcdef"]
    assert client.available and client.breaker.consecutive_failures == 0
