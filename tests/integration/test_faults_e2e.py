"""Each network fault between the gateway and the real stand-in cloud, and what must happen.

The gateway runs in process (real local model), its cloud tier pointed at a fault-injecting proxy
in front of the stand-in. Timeouts are short so every case finishes quickly: connect 1 s, read
2 s, a whole answer 15 s; the breaker opens after 2 failures and retries after 2 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient

from bench.faultproxy import Fault, FaultProxy
from tandem.server import create_app
from tandem.settings import Settings

DEADLINE_S = 15.0
HEALTH = "http://testserver/healthz"


@pytest.fixture(scope="module")
def proxy(standin_cloud: str) -> Iterator[FaultProxy]:
    url = urlparse(standin_cloud)
    assert url.hostname is not None and url.port is not None
    with FaultProxy(url.hostname, url.port) as p:
        yield p


@pytest.fixture(scope="module")
def api(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        n_ctx=1024,
        keep_alive_s=None,
        n_threads=2,
        sessions_db=Path(tmp_path_factory.mktemp("faults")) / "s.db",
        cloud_url=proxy.base_url,
        cloud_connect_timeout_s=1.0,
        cloud_read_timeout_s=2.0,
        cloud_deadline_s=DEADLINE_S,
        cloud_failure_threshold=2,
        cloud_cooldown_s=2.0,
        cloud_probe_interval_s=0.5,
    )
    with TestClient(create_app(settings), base_url="http://testserver/v1/") as client:
        state = client.get(HEALTH).json()["local"]["state"]
        deadline = time.monotonic() + 60
        while state != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
            state = client.get(HEALTH).json()["local"]["state"]
        yield client


@pytest.fixture(autouse=True)
def healthy_again(proxy: FaultProxy, api: TestClient) -> Iterator[None]:
    """Each test starts with a healthy network and a closed breaker."""
    proxy.set(None)
    _wait_for_breaker(api, "closed")
    yield
    proxy.set(None)


def _wait_for_breaker(api: TestClient, state: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if api.get(HEALTH).json()["cloud"]["breaker"] == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"the breaker did not become {state} within {within_s} s")


def inject(proxy: FaultProxy, fault: Fault) -> None:
    """Apply ``fault`` to every connection: refusing first drops the kept-alive ones, which
    would otherwise carry on as if healthy."""
    proxy.set(Fault(refuse=True))
    proxy.set(fault)


def ask(api: TestClient, route: str = "cloud", *, stream: bool = False, **tandem: Any) -> Any:
    body = {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": stream,
        "tandem": {"route": route, **tandem},
    }
    started = time.monotonic()
    r = api.post("chat/completions", json=body)
    r.elapsed_s = time.monotonic() - started  # type: ignore[attr-defined]
    return r


def sse(r: Any) -> tuple[str, list[dict[str, Any]]]:
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
    assert r.text.rstrip().endswith("data: [DONE]")
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if "choices" in e)
    return text, events


def test_latency_and_jitter_slow_the_cloud_but_it_still_answers(
    api: TestClient, proxy: FaultProxy
) -> None:
    fastest = min(ask(api).elapsed_s for _ in range(3))
    proxy.set(Fault(latency_s=0.5, jitter_s=0.05))
    slow = ask(api)
    assert slow.status_code == 200 and slow.headers["x-tandem-route"] == "cloud"
    assert slow.elapsed_s > fastest + 0.4  # at least one delayed chunk, less timing noise


def test_a_bandwidth_cap_delivers_the_whole_answer(api: TestClient, proxy: FaultProxy) -> None:
    proxy.set(Fault(bandwidth_bps=4000))
    text, events = sse(ask(api, stream=True))
    assert text and events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-1]["tandem"]["route"] == "cloud"


def test_refused_connections_fall_back_locally_or_fail_clearly(
    api: TestClient, proxy: FaultProxy
) -> None:
    proxy.set(Fault(refuse=True))
    r = ask(api)
    assert r.status_code == 200
    assert (r.headers["x-tandem-route"], r.headers["x-tandem-reason"]) == ("local", "cloud_failed")
    strict = ask(api, fallback=False)
    assert strict.status_code == 503 and "Retry-After" in strict.headers
    error = strict.json()["error"]
    assert error["code"] in ("cloud_failed", "cloud_unavailable") and "fallback" in error["message"]


def test_a_black_hole_costs_one_read_timeout_not_a_hang(api: TestClient, proxy: FaultProxy) -> None:
    inject(proxy, Fault(blackhole=True))
    r = ask(api)
    assert r.status_code == 200 and r.headers["x-tandem-route"] == "local"
    assert r.elapsed_s < 2.0 + 10.0  # the read timeout plus a local answer
    strict = ask(api, fallback=False)
    assert strict.status_code == 503 and strict.elapsed_s < 2.0 + 2.0


def test_a_stream_cut_midway_is_continued_locally(api: TestClient, proxy: FaultProxy) -> None:
    inject(proxy, Fault(cut_after_bytes=900))  # the headers and a few chunks
    text, events = sse(ask(api, stream=True))
    last = events[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["tandem"] == {"route": "local", "reason": "cloud_failed_midstream"}
    assert text  # one answer: the cloud's start, the local model's continuation


def test_a_stream_cut_without_fallback_ends_with_an_error_event(
    api: TestClient, proxy: FaultProxy
) -> None:
    inject(proxy, Fault(cut_after_bytes=900))
    _, events = sse(ask(api, stream=True, fallback=False))
    assert "error" in events[-1]  # explicit, never a silent truncation
    assert events[-1]["error"]["code"] == "cloud_failed_midstream"


@pytest.mark.parametrize("status", [500, 429, 503])
def test_http_errors_open_the_breaker_which_closes_when_the_cloud_is_back(
    api: TestClient, proxy: FaultProxy, status: int
) -> None:
    inject(proxy, Fault(http_status=status))
    first = ask(api)
    assert first.headers["x-tandem-reason"] == "cloud_failed"
    ask(api)
    _wait_for_breaker(api, "open", within_s=2.0)
    quick = ask(api)  # decided without calling the cloud
    assert quick.headers["x-tandem-reason"] == "cloud_unavailable"
    proxy.set(None)
    _wait_for_breaker(api, "closed")  # the probe after the cooldown closes it
    assert ask(api).headers["x-tandem-route"] == "cloud"


def test_a_flapping_cloud_never_leaves_a_request_unanswered(
    api: TestClient, proxy: FaultProxy
) -> None:
    proxy.set(Fault(flap_period_s=1.0))
    replies = []
    started = time.monotonic()
    while time.monotonic() - started < 5.0:
        replies.append(ask(api, "auto" if len(replies) % 2 else "cloud"))
    assert all(r.status_code == 200 for r in replies)
    assert max(r.elapsed_s for r in replies) < DEADLINE_S


def test_sessions_hold_no_half_turns_under_cuts(api: TestClient, proxy: FaultProxy) -> None:
    inject(proxy, Fault(cut_after_bytes=900))
    headers = {"X-Session-Id": "cut-session"}
    for i, fallback in enumerate((True, False, True)):
        body = {
            "messages": [{"role": "user", "content": f"Question {i}?"}],
            "max_tokens": 12,
            "stream": True,
            "tandem": {"route": "cloud", "fallback": fallback},
        }
        api.post("chat/completions", json=body, headers=headers)
    messages = api.get("sessions/cut-session").json()["messages"]
    pairs = list(zip(messages[::2], messages[1::2], strict=True))
    for user, answer in pairs:  # every exchange whole, both halves with one status
        assert (user["role"], answer["role"]) == ("user", "assistant")
        assert user["exchange"] == answer["exchange"] and user["status"] == answer["status"]
    complete = [u["content"] for u, a in pairs if a["status"] == "complete"]
    assert complete == ["Question 0?", "Question 2?"]  # the turns allowed to fall back
    # The turn without fallback is absent (cut before any text) or marked interrupted.
    assert all(a["status"] == "interrupted" for u, a in pairs if u["content"] == "Question 1?")
    # The next turn's context holds the two complete exchanges only.
    proxy.set(None)
    body = {"messages": [{"role": "user", "content": "Done?"}], "max_tokens": 4}
    r = api.post("chat/completions", json=body, headers=headers)
    assert r.status_code == 200


def test_a_dead_primary_endpoint_costs_one_attempt_then_the_backup_answers(
    proxy: FaultProxy, standin_cloud: str, tmp_path: Path
) -> None:
    settings = Settings(
        n_ctx=512,
        keep_alive_s=None,
        n_threads=2,
        sessions_db=tmp_path / "s.db",
        cloud_url=proxy.base_url,
        cloud_fallback_urls=[standin_cloud],
        cloud_connect_timeout_s=1.0,
        cloud_read_timeout_s=2.0,
        cloud_cooldown_s=30.0,
    )
    inject(proxy, Fault(blackhole=True))  # the primary accepts and never answers
    with TestClient(create_app(settings), base_url="http://testserver/v1/") as api:
        first = ask(api)
        later = [ask(api) for _ in range(3)]
        health = api.get(HEALTH).json()["cloud"]
    assert first.headers["x-tandem-route"] == "cloud"  # answered by the backup
    assert first.elapsed_s >= 2.0  # it paid the primary's read timeout once
    assert all(r.headers["x-tandem-route"] == "cloud" for r in later)
    assert max(r.elapsed_s for r in later) < 2.0  # and never again
    assert [e["breaker"] for e in health["endpoints"]] == ["open", "closed"]
