"""The local engine's lifecycle on the real model: cold → reloaded by traffic, failed → retried,
a dead worker → its requests fail fast and it restarts; token counting never races the worker."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tandem.catalog import resolve_model
from tandem.cloud.client import CloudClient
from tandem.errors import ModelLoadError
from tandem.events import Finish, GenerationParams
from tandem.gateway import Gateway
from tandem.local.engine import LocalEngine
from tandem.metrics import GatewayMetrics
from tandem.runtime import build_policy
from tandem.settings import Settings
from tandem.tiers import EngineState
from tandem.turn import RouteInfo, Turn

QUESTION = [{"role": "user", "content": "Name a color."}]
PARAMS = GenerationParams(max_tokens=4, temperature=0.0)


@pytest.fixture(scope="module")
def model_path() -> Path:
    return resolve_model("smollm2")[0]


def wait_for(engine: LocalEngine, state: EngineState, timeout_s: float) -> float:
    started = time.monotonic()
    while engine.state != state and time.monotonic() - started < timeout_s:
        time.sleep(0.02)
    assert engine.state == state, (engine.state, engine.last_error)
    return time.monotonic() - started


@pytest.fixture
def short_keep_alive(model_path: Path) -> Iterator[LocalEngine]:
    engine = LocalEngine(Settings(n_ctx=512, keep_alive_s=2.0, n_threads=2), model_path)
    engine.start()
    assert engine.wait_ready() == EngineState.READY, engine.last_error
    yield engine
    engine.close()


def test_an_auto_turn_on_a_cold_engine_reloads_it(
    short_keep_alive: LocalEngine, standin_cloud: str
) -> None:
    engine = short_keep_alive
    load_time = engine.load_time_s or 0.0
    wait_for(engine, EngineState.COLD, 10)
    settings = Settings(_env_file=None, n_ctx=512)
    cloud = CloudClient.from_settings(settings, standin_cloud)
    gw = Gateway(engine, cloud, GatewayMetrics(), settings.cloud_n_ctx,
                 policy=build_policy(settings))

    async def first_route(turn: Turn) -> RouteInfo:
        async for event in gw.stream(turn):
            if isinstance(event, RouteInfo):
                return event
        raise AssertionError("no route")

    asked = time.monotonic()
    route = anyio.run(first_route, Turn(QUESTION, PARAMS))
    assert (route.tier.value, route.reason) == ("cloud", "local_cold")
    # The turn went to the cloud, and the engine loads meanwhile: ready within its load time
    # (plus scheduling slack on a busy 2-core machine), with no local request forcing it.
    wait_for(engine, EngineState.READY, 3 * load_time + 2.0)
    assert time.monotonic() - asked < 3 * load_time + 2.0
    route = anyio.run(first_route, Turn(QUESTION, PARAMS))
    assert route.reason != "local_cold"
    anyio.run(cloud.aclose)


def test_a_failed_load_is_retried_with_backoff(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "model.gguf"
    engine = LocalEngine(Settings(n_ctx=256, keep_alive_s=None, n_threads=2), missing)
    with caplog.at_level(logging.DEBUG, logger="tandem.local"):
        engine.start()
        wait_for(engine, EngineState.FAILED, 5)
        health = engine.health()
        assert health["state"] == "failed" and health["retry_in_s"] is not None
        started = time.monotonic()
        with pytest.raises(ModelLoadError, match="unavailable"):
            engine.submit(QUESTION, PARAMS, lambda _: None)
        assert time.monotonic() - started < 0.1  # fails fast: the gateway escalates at once
        time.sleep(1.6)  # the first retry (after 1 s) fails too; the next waits 2 s
        assert engine.state == EngineState.FAILED
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one line, not one per try
        assert str(missing) in warnings[0].getMessage()
        shutil.copy(model_path, missing)  # the model appears (a download finished, a disk back)
        wait_for(engine, EngineState.READY, 6)
    events = list(engine.stream_sync(QUESTION, PARAMS))
    assert isinstance(events[-1], Finish)
    assert engine.health()["last_error"] is None
    engine.close()


class Crash(BaseException):
    """Escapes every ``except Exception``: the worker thread dies."""


def test_a_dead_worker_fails_its_requests_fast_and_restarts(model_path: Path) -> None:
    engine = LocalEngine(Settings(n_ctx=256, keep_alive_s=None, n_threads=2), model_path)
    engine.start()
    assert engine.wait_ready() == EngineState.READY
    original = engine._prepare
    crashed = threading.Event()

    def crash_once(job: Any) -> Any:
        if not crashed.is_set():
            crashed.set()
            time.sleep(0.3)  # a second request queues meanwhile
            raise Crash("boom")
        return original(job)

    engine._prepare = crash_once  # type: ignore[method-assign]
    outcomes: list[BaseException | None] = [None, None]

    def ask(i: int) -> None:
        try:
            list(engine.stream_sync(QUESTION, PARAMS))
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    started = time.monotonic()
    threads[0].start()
    crashed.wait(5)
    threads[1].start()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads), "a request waited on a dead worker"
    assert time.monotonic() - started < 3
    assert all(isinstance(o, ModelLoadError) for o in outcomes), outcomes
    assert engine.state in (EngineState.FAILED, EngineState.LOADING)
    wait_for(engine, EngineState.READY, 10)  # restarted after its backoff
    assert isinstance(list(engine.stream_sync(QUESTION, PARAMS))[-1], Finish)
    engine.close()


def test_token_counts_never_race_the_worker(model_path: Path) -> None:
    """Counting runs on other threads while the worker unloads and reloads the model."""
    engine = LocalEngine(Settings(n_ctx=256, keep_alive_s=0.05, n_threads=2), model_path)
    engine.start()
    assert engine.wait_ready() == EngineState.READY
    counts: list[int | None] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            counts.append(engine.count_tokens(QUESTION))

    counter = threading.Thread(target=count)
    counter.start()
    prompt_tokens = set()
    cycles = 0
    deadline = time.monotonic() + 20
    while cycles < 4 and time.monotonic() < deadline:
        events = list(engine.stream_sync(QUESTION, PARAMS))
        finish = events[-1]
        assert isinstance(finish, Finish)
        prompt_tokens.add(finish.prompt_tokens)
        wait_for(engine, EngineState.COLD, 5)  # unloaded while counts go on
        cycles += 1
    stop.set()
    counter.join()
    engine.close()
    assert cycles == 4
    assert len(counts) > 10
    assert set(counts) == prompt_tokens  # cold or ready: the same, exact count
