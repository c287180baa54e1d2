"""The official openai SDK against a real `tandem serve` with the real stand-in cloud."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tandem.cloud.standin import StandinCloud
from tandem.settings import load_settings
from tests.integration.gateway_proc import gateway_process

MESSAGES: Any = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture(scope="module")
def gateway_url(standin_cloud: str) -> Iterator[str]:
    with gateway_process(standin_cloud) as url:
        yield url


@pytest.fixture(scope="module")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url, api_key="unused", max_retries=0)


def create(client: openai.OpenAI, route: str, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="auto",
        messages=MESSAGES,
        max_tokens=16,
        temperature=0.0,
        extra_body={"tandem": {"route": route}},
        **kw,
    )


@pytest.mark.parametrize("route", ["local", "cloud"])
def test_sdk_non_streaming(client: openai.OpenAI, route: str) -> None:
    raw = create(client, route)
    assert raw.headers["x-tandem-route"] == route
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0
    assert completion.model_extra["tandem"]["route"] == route


@pytest.mark.parametrize("route", ["local", "cloud"])
def test_sdk_streaming(client: openai.OpenAI, route: str) -> None:
    raw = create(client, route, stream=True)
    assert raw.headers["x-tandem-route"] == route
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sdk_local_logprobs(client: openai.OpenAI) -> None:
    completion = create(client, "local", logprobs=True, top_logprobs=2).parse()
    content = completion.choices[0].logprobs.content
    assert content and all(t.logprob <= 0 for t in content)
    assert all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)


def test_sdk_error_case(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=-3)
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_killing_the_cloud_mid_run_loses_no_request() -> None:
    """Requests keep succeeding when the stand-in cloud dies, answered locally with a reason."""
    standin = StandinCloud.from_settings(load_settings(), port=0)
    standin.start()
    try:
        with gateway_process(standin.base_url, TANDEM_CLOUD_FAILURE_THRESHOLD="2") as url:
            results = _run_while_killing(url, standin)
    finally:
        standin.stop()
    assert all(status == 200 for status, _, _ in results), results
    before = [r for r in results[:3]]
    after = [r for r in results[3:]]
    assert any(route == "cloud" for _, route, _ in before)
    assert all(route == "local" for _, route, _ in after), after
    reasons = {reason for _, _, reason in after}
    assert reasons & {"cloud_failed", "cloud_unavailable", "cloud_failed_midstream"}, reasons
    # auto requests kept going locally, whatever the cascade made of their confidence
    auto_reasons = {reason for i, (_, _, reason) in enumerate(results) if i >= 3 and i % 2}
    assert auto_reasons <= {"cloud_failed", "cloud_unavailable", "cascade_confident",
                            "cascade_abstained", "prompt_router_local",
                            "prompt_router_abstained"}, reasons


def _run_while_killing(url: str, standin: StandinCloud) -> list[tuple[int, str, str]]:
    results = []
    with httpx.Client(timeout=60) as http:
        for i in range(10):
            if i == 3:
                threading.Thread(target=standin.kill).start()
            route = "auto" if i % 2 else "cloud"
            r = http.post(
                f"{url}/chat/completions",
                json={"messages": MESSAGES, "max_tokens": 12, "tandem": {"route": route}},
            )
            results.append(
                (
                    r.status_code,
                    r.headers.get("x-tandem-route", ""),
                    r.headers.get("x-tandem-reason", ""),
                )
            )
    return results


def test_cloud_dying_mid_stream_is_continued_locally() -> None:
    """The client sees one answer: cloud text first, then the local model takes over."""
    standin = StandinCloud.from_settings(load_settings(), port=0)
    standin.start()
    try:
        with gateway_process(standin.base_url) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            stream = client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": "Count from 1 to 100."}],
                max_tokens=200,
                temperature=0.0,
                stream=True,
                extra_body={"tandem": {"route": "cloud"}},
            )
            chunks = []
            for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 3:
                    standin.kill()
    finally:
        standin.stop()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1].model_extra["tandem"]
    assert final == {"route": "local", "reason": "cloud_failed_midstream"}
    assert len(text) > 10
