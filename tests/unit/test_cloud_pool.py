"""Several cloud endpoints in priority order, each behind its own breaker."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from tandem.cloud.client import CloudClient
from tandem.cloud.pool import CloudPool
from tandem.errors import CloudError
from tests.unit.fakes import sse_body


class Endpoint:
    """A mock endpoint whose behaviour can change between calls; counts chat calls."""

    def __init__(self, pieces: tuple[str, ...]):
        self.pieces = pieces
        self.mode = "ok"  # ok | 500 | down | midstream | silent
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        if self.mode == "silent" and not request.url.path.endswith("/models"):
            self.calls += 1
            return self._never()  # accepts the request, never answers (a half-open link)
        if self.mode == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        self.calls += 1
        if self.mode == "500":
            return httpx.Response(500, json={"error": {"message": "boom"}})
        if self.mode == "midstream":
            chunk = {"choices": [{"index": 0, "delta": {"content": self.pieces[0]}}]}
            body = f"data: {json.dumps(chunk)}\n\n".encode()
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, content=sse_body(self.pieces), headers=headers)

    async def _never(self) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def client(
    url: str,
    endpoint: Endpoint,
    clock: Callable[[], float] = lambda: 0.0,
    first_token_s: float | None = None,
) -> CloudClient:
    deadline = {} if first_token_s is None else {"first_token_s": first_token_s}
    return CloudClient(
        url,
        transport=httpx.MockTransport(endpoint),
        failure_threshold=3,
        cooldown_s=10.0,
        clock=clock,
        **deadline,
    )


def answer(pool: CloudPool, sent: list[str] | None = None) -> str:
    async def run() -> str:
        def on_send(body: bytes, url: str) -> None:
            if sent is not None:
                sent.append(url)

        return "".join([c.text async for c in pool.stream_chat({"messages": []}, on_send)])

    return anyio.run(run)


@pytest.fixture
def endpoints() -> tuple[Endpoint, Endpoint]:
    return Endpoint(("from", " primary")), Endpoint(("from", " backup"))


def test_the_primary_answers_while_it_is_up(endpoints: tuple[Endpoint, Endpoint]) -> None:
    primary, backup = endpoints
    pool = CloudPool([client("http://a/v1", primary), client("http://b/v1", backup)])
    assert answer(pool) == "from primary"
    assert (primary.calls, backup.calls) == (1, 0)


def test_a_failing_primary_hands_over_and_both_attempts_are_reported(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    primary, backup = endpoints
    primary.mode = "500"
    pool = CloudPool([client("http://a/v1", primary), client("http://b/v1", backup)])
    sent: list[str] = []
    assert answer(pool, sent) == "from backup"
    assert sent == ["http://a/v1", "http://b/v1"]


def test_a_dead_primary_costs_one_attempt_then_is_skipped(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    primary, backup = endpoints
    now = [0.0]
    pool = CloudPool(
        [client("http://a/v1", primary, lambda: now[0]), client("http://b/v1", backup)]
    )
    primary.mode = "down"
    sent: list[str] = []
    for _ in range(3):
        assert answer(pool, sent) == "from backup"
    assert sent.count("http://a/v1") == 1  # tripped at once, not after three timeouts
    assert pool.health()["endpoints"][0]["breaker"] == "open"
    # Back up, and the cooldown is over: its probe closes the breaker and it is primary again.
    primary.mode = "ok"
    now[0] = 11.0
    assert anyio.run(pool.clients[0].probe) is True
    assert answer(pool) == "from primary"


def test_a_failure_after_the_answer_started_is_raised(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    primary, backup = endpoints
    primary.mode = "midstream"
    pool = CloudPool([client("http://a/v1", primary), client("http://b/v1", backup)])
    with pytest.raises(CloudError):
        answer(pool)
    assert backup.calls == 0  # the gateway, not the pool, continues a started answer


def test_no_endpoint_left_is_one_clear_error(endpoints: tuple[Endpoint, Endpoint]) -> None:
    primary, backup = endpoints
    primary.mode = backup.mode = "down"
    pool = CloudPool([client("http://a/v1", primary), client("http://b/v1", backup)])
    with pytest.raises(CloudError) as err:
        answer(pool)
    assert err.value.code == "cloud_unavailable"
    assert "http://a/v1" in err.value.message and "http://b/v1" in err.value.message
    assert pool.available is False


def test_health_lists_every_endpoint(endpoints: tuple[Endpoint, Endpoint]) -> None:
    pool = CloudPool([client("http://a/v1", endpoints[0]), client("http://b/v1", endpoints[1])])
    health: dict[str, Any] = pool.health()
    assert [e["url"] for e in health["endpoints"]] == ["http://a/v1", "http://b/v1"]
    assert health["available"] is True


def timed_failure(pool: CloudPool, sent: list[str]) -> tuple[CloudError, float]:
    started = time.monotonic()
    with pytest.raises(CloudError) as err:
        anyio.run(_within(5, lambda: answer_async(pool, sent)))
    return err.value, time.monotonic() - started


async def answer_async(pool: CloudPool, sent: list[str]) -> str:
    def on_send(body: bytes, url: str) -> None:
        sent.append(url)

    return "".join([c.text async for c in pool.stream_chat({"messages": []}, on_send)])


def _within(seconds: float, run: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[str]]:
    async def bounded() -> str:
        with anyio.fail_after(seconds):  # a hang fails the test instead of stalling it
            return await run()

    return bounded


def test_silent_endpoints_share_one_first_token_budget(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    primary, backup = endpoints
    primary.mode = backup.mode = "silent"
    # The budget is the longest deadline, 0.6 s: the primary waits its 0.3 s, the backup what
    # is left (0.3 s), not its own 0.6 s.
    pool = CloudPool(
        [
            client("http://a/v1", primary, first_token_s=0.3),
            client("http://b/v1", backup, first_token_s=0.6),
        ]
    )
    sent: list[str] = []
    error, elapsed = timed_failure(pool, sent)
    assert error.code == "cloud_unavailable"
    assert sent == ["http://a/v1", "http://b/v1"]
    assert 0.55 <= elapsed < 0.85  # one budget in all, not 0.3 + 0.6
    first, second = pool.health()["endpoints"]
    assert (first["breaker"], first["reopens_on"]) == ("open", "probe")
    # The backup had less than its own deadline: no proof of a black hole, one failure counted.
    assert (second["breaker"], second["consecutive_failures"]) == ("closed", 1)


def test_a_silent_primary_spends_the_budget_then_is_skipped_until_its_probe(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    primary, backup = endpoints
    primary.mode = "silent"
    now = [0.0]
    pool = CloudPool(
        [
            client("http://a/v1", primary, lambda: now[0], first_token_s=0.3),
            client("http://b/v1", backup, first_token_s=0.3),
        ]
    )
    sent: list[str] = []
    error, elapsed = timed_failure(pool, sent)
    assert elapsed < 0.55  # the primary's wait was the whole budget: the backup is not tried
    assert sent == ["http://a/v1"]
    assert "budget" in error.message and "http://b/v1" in error.message
    now[0] += 1000.0  # no cooldown re-admits a black hole
    assert answer(pool, sent) == "from backup"
    assert answer(pool, sent) == "from backup"
    assert sent == ["http://a/v1", "http://b/v1", "http://b/v1"]
    primary.mode = "ok"
    assert anyio.run(pool.clients[0].probe) is True
    assert answer(pool) == "from primary"


def test_health_shows_the_tiers_first_token_budget(endpoints: tuple[Endpoint, Endpoint]) -> None:
    pool = CloudPool(
        [
            client("http://a/v1", endpoints[0], first_token_s=0.3),
            client("http://b/v1", endpoints[1], first_token_s=0.6),
        ]
    )
    assert pool.health()["first_token_budget_s"] == 0.6
