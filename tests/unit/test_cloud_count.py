"""The cloud's own token count (vLLM's /tokenize) and served window fit a prompt to the cloud."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.cloud.stream import CloudCount
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.settings import Settings
from tests.unit.fakes import FakeEngine, RecordingCloud


class CountingCloud(RecordingCloud):
    """A vLLM-like cloud: ``/tokenize`` counts ``per_word`` tokens per word of the messages,
    ``/models`` lists ``window``; it keeps what it was asked to count."""

    def __init__(self, per_word: float, window: int | None = None):
        super().__init__()
        self.per_word = per_word
        self.window = window
        self.counted: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            body = json.loads(request.content)
            self.counted.append(body)
            words = sum(len(m["content"].split()) for m in body["messages"])
            return httpx.Response(
                200, json={"count": int(words * self.per_word), "max_model_len": self.window}
            )
        if request.url.path.endswith("/models") and self.window is not None:
            listed = {"id": "cloud", "max_model_len": self.window}
            return httpx.Response(200, json={"data": [listed]})
        return super().__call__(request)


def client_for(cloud: RecordingCloud, settings: Settings | None = None) -> CloudClient:
    return CloudClient.from_settings(
        settings or Settings(_env_file=None), "http://cloud.test/v1",
        transport=httpx.MockTransport(cloud),
    )


def test_the_count_comes_from_the_servers_root_tokenize() -> None:
    cloud = CountingCloud(per_word=2, window=512)
    client = client_for(cloud)
    messages = [{"role": "user", "content": "one two three"}]
    assert asyncio.run(client.count_tokens(messages)) == CloudCount(6, 512)
    (asked,) = cloud.counted
    assert asked == {"model": "cloud", "messages": messages, "add_generation_prompt": True}
    assert client.window_tokens == 512


@pytest.mark.parametrize("status", [404, 401])
def test_a_server_without_tokenize_is_not_asked_again(status: int) -> None:
    cloud = RecordingCloud()
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == "/tokenize":
            return httpx.Response(status, json={"error": {"message": "no"}})
        return cloud(request)

    client = CloudClient(
        "http://cloud.test/v1", transport=httpx.MockTransport(handler)
    )
    messages = [{"role": "user", "content": "hi"}]
    assert asyncio.run(client.count_tokens(messages)) is None
    assert asyncio.run(client.count_tokens(messages)) is None
    assert asked == ["/tokenize"]


def test_the_probe_learns_the_window_the_server_lists() -> None:
    assert asyncio.run(_probed(CountingCloud(1, window=300))) == 300
    assert asyncio.run(_probed(RecordingCloud())) is None  # not listed: unknown


async def _probed(cloud: RecordingCloud) -> int | None:
    client = client_for(cloud)
    assert await client.probe()
    return client.window_tokens


def make_api(settings: Settings, cloud: RecordingCloud) -> TestClient:
    client = client_for(cloud, settings)
    gw = Gateway(FakeEngine(n_ctx=64), client, GatewayMetrics(), settings.cloud_n_ctx)
    return TestClient(create_app(settings, gw))


def turn(api: TestClient, words: int, session: str | None = "s1") -> httpx.Response:
    body = {
        "messages": [{"role": "user", "content": " ".join(["garden"] * words)}],
        "max_tokens": 8,
        "tandem": {"route": "cloud"},
    }
    headers = {} if session is None else {"X-Session-Id": session}
    return api.post("/v1/chat/completions", json=body, headers=headers)


@pytest.mark.parametrize("per_word", [1.0, 2.0])
def test_a_session_is_trimmed_to_the_clouds_own_count(settings: Settings, per_word: float) -> None:
    # cloud_n_ctx 128: a budget of 120 tokens. Four turns of 25 words (+ 3-word answers): the
    # local estimate (109) stays under it; a cloud that counts two tokens a word needs a trim.
    cloud = CountingCloud(per_word)
    with make_api(settings, cloud) as api:
        for _ in range(4):
            assert turn(api, 25).status_code == 200
        last = api.get("/v1/sessions/s1").json()["messages"][-1]
    sent = cloud.messages(len(cloud.bodies) - 1)
    assert cloud.counted  # near the window, the cloud was asked
    assert all(m["content"] != "" for m in sent)
    if per_word == 1.0:
        assert len([m for m in sent if m["role"] == "user"]) == 4
        assert last["context"]["dropped"] == 0
    else:
        assert last["context"]["dropped"] > 0
        counted = sum(len(m["content"].split()) for m in sent) * per_word
        assert counted <= 120


def test_a_short_prompt_is_not_counted_by_the_cloud(settings: Settings) -> None:
    cloud = CountingCloud(2.0)
    with make_api(settings, cloud) as api:
        assert turn(api, 10).status_code == 200
    assert cloud.counted == [] and len(cloud.bodies) == 1


def test_a_prompt_that_is_not_a_session_and_does_not_fit_is_refused(settings: Settings) -> None:
    cloud = CountingCloud(2.0)
    with make_api(settings, cloud) as api:
        r = turn(api, 90, session=None)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "messages" and "cloud's own count" in error["message"]
    assert cloud.bodies == []  # nothing was sent to be answered


def test_the_served_window_narrows_a_larger_setting(settings: Settings) -> None:
    # cloud_n_ctx says 4096, the server lists 128: the history is fitted to 128.
    wide = settings.model_copy(update={"cloud_n_ctx": 4096})
    cloud = CountingCloud(1.0, window=128)
    with make_api(wide, cloud) as api:
        for _ in range(8):
            assert turn(api, 25).status_code == 200
        last = api.get("/v1/sessions/s1").json()["messages"][-1]
    assert last["context"]["dropped"] > 0
    assert sum(len(m["content"].split()) for m in cloud.messages(len(cloud.bodies) - 1)) <= 120
