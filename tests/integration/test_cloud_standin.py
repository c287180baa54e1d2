"""CloudClient against the real stand-in cloud (llama_cpp.server serving Gemma-3-270M)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tandem.cloud.breaker import BreakerState, CircuitBreaker
from tandem.cloud.client import CloudClient
from tandem.cloud.standin import StandinCloud
from tandem.cloud.stream import CloudCompletion
from tandem.errors import CloudError
from tandem.settings import load_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def body(max_tokens: int = 12, content: str = "What is the capital of France?") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so that mypy does not narrow it across state changes


@pytest.mark.anyio
async def test_chat_returns_text(standin_cloud: str) -> None:
    async with CloudClient(standin_cloud) as client:
        answer = await client.chat(body())
    assert answer.text.strip()
    assert answer.finish_reason in ("stop", "length")


@pytest.mark.anyio
async def test_stream_chat_yields_text_then_a_finish_reason(standin_cloud: str) -> None:
    async with CloudClient(standin_cloud) as client:
        chunks = [chunk async for chunk in client.stream_chat(body())]
        assert client.rtt_ms is not None  # time to response headers
    assert "".join(c.text for c in chunks).strip()
    assert sum(1 for c in chunks if c.text) > 1
    assert chunks[-1].finish_reason in ("stop", "length")


@pytest.mark.anyio
async def test_concurrent_streams_are_not_cut_short(standin_cloud: str) -> None:
    # llama_cpp.server by default ends a running stream when another request arrives.
    answers: list[CloudCompletion] = []
    async with CloudClient(standin_cloud) as client:

        async def ask(n: int) -> None:
            answers.append(await client.chat(body(24, f"Count from {n} upwards.")))

        async with anyio.create_task_group() as tg:
            for n in (1, 100):
                tg.start_soon(ask, n)
        assert await client.probe()
    assert [a.finish_reason is not None for a in answers] == [True, True]


@pytest.mark.anyio
async def test_probe_is_healthy_with_an_rtt(standin_cloud: str) -> None:
    async with CloudClient(standin_cloud) as client:
        assert await client.probe()
        health = client.health()
    assert health["healthy"] is True
    assert health["rtt_ms"] is not None and health["rtt_ms"] > 0
    assert health["breaker"] == "closed"


@pytest.mark.anyio
async def test_killed_cloud_raises_and_opens_the_breaker() -> None:
    with StandinCloud.from_settings(load_settings(), port=0) as cloud:
        client = CloudClient(cloud.base_url, failure_threshold=2, cooldown_s=60.0)
        assert (await client.chat(body(4))).text
        cloud.kill()
        assert not cloud.running
        for _ in range(2):
            with pytest.raises(CloudError) as info:
                await client.chat(body(4))
            assert info.value.code == "cloud_unreachable"
        assert state(client.breaker) is BreakerState.OPEN
        assert not client.available
        with pytest.raises(CloudError) as info:
            await client.chat(body(4))
        assert info.value.code == "circuit_open"
        assert not await client.probe()
        assert client.health()["healthy"] is False
        await client.aclose()
    assert cloud.pid is None


def test_a_broken_model_fails_to_start_with_the_log_tail(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    standin = StandinCloud(str(bad), port=0, startup_timeout_s=30.0)
    with pytest.raises(CloudError) as info:
        standin.start()
    assert info.value.code == "standin_failed"
    assert "Log tail" in info.value.message
    assert not standin.running


def test_a_busy_port_is_refused(standin_cloud: str) -> None:
    port = int(standin_cloud.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(CloudError, match="in use"):
        StandinCloud(load_settings().standin_model, port=port).start()


def test_command_line() -> None:
    standin = StandinCloud(port=8123, n_ctx=512, n_threads=2, alias="cloud")
    cmd = standin.command(Path("/m.gguf"), "gemma")
    assert cmd[1:5] == ["-m", "llama_cpp.server", "--model", "/m.gguf"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert flags["--port"] == "8123"
    assert flags["--n_ctx"] == "512"
    assert flags["--chat_format"] == "gemma"
    assert flags["--interrupt_requests"] == "False"
    assert flags["--n_threads"] == "2"
    assert flags["--model_alias"] == "cloud"
