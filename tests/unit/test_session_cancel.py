"""A session stream cancelled mid-answer: the interrupted row is written off the event loop."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tandem.events import GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.local.chat import Message
from tandem.metrics import GatewayMetrics
from tandem.sessions.service import SessionService
from tandem.sessions.store import Answer, SqliteSessionStore
from tandem.turn import RoutePreference, Turn
from tests.unit.fakes import FakeEngine

WRITE_S = 0.3


class SlowStore(SqliteSessionStore):
    """Writing an interrupted answer takes ``WRITE_S`` (a slow disk, a busy database)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.interrupted_written: float | None = None

    def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        answer: Answer,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if answer.status == "interrupted":
            time.sleep(WRITE_S)
        super().append(session_id, messages, answer, *args, **kwargs)
        if answer.status == "interrupted":
            self.interrupted_written = time.monotonic()


@pytest.fixture
def service(tmp_path: Path) -> SessionService:
    engine = FakeEngine(tokens=[f" w{i}" for i in range(200)], n_ctx=4096)
    engine.delay_s = 0.01
    gw = Gateway(engine, None, GatewayMetrics(), 4096)
    return SessionService(SlowStore(tmp_path / "s.db"), gw)


def _turn(text: str, max_tokens: int = 200) -> Turn:
    return Turn(
        [{"role": "user", "content": text}],
        GenerationParams(max_tokens=max_tokens),
        RoutePreference.LOCAL,
    )


async def _answer_until_cancelled(
    service: SessionService, started: asyncio.Event, text: str = "question"
) -> None:
    tokens = 0
    async for event in service.stream("s1", _turn(text)):
        if isinstance(event, TokenEvent):
            tokens += 1
            if tokens == 3:
                started.set()


async def _ticker(ticks: list[float]) -> None:
    while True:
        await asyncio.sleep(0.01)
        ticks.append(time.monotonic())


def _statuses(service: SessionService) -> list[tuple[str, str, str]]:
    transcript = service.store.transcript("s1")
    assert transcript is not None
    return [(m["role"], m["status"], m["content"]) for m in transcript["messages"]]


def test_a_cancelled_stream_writes_the_interrupted_row_without_blocking_the_loop(
    service: SessionService,
) -> None:
    async def main() -> list[float]:
        started = asyncio.Event()
        task = asyncio.create_task(_answer_until_cancelled(service, started))
        await started.wait()
        ticks: list[float] = []
        ticker = asyncio.create_task(_ticker(ticks))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ticker.cancel()
        return ticks

    ticks = asyncio.run(main())
    store = service.store
    assert isinstance(store, SlowStore) and store.interrupted_written is not None
    # The ticker went on while the row was being written (0.3 s): the loop was not blocked.
    during = [t for t in ticks if t < store.interrupted_written]
    assert len(during) >= 10
    assert max(b - a for a, b in itertools.pairwise(during)) < 0.2  # (blocked: 0.3 s)
    rows = _statuses(service)
    assert [(role, status) for role, status, _ in rows] == [
        ("user", "interrupted"),
        ("assistant", "interrupted"),
    ]
    assert rows[1][2].startswith(" w0 w1 w2")
    assert service._locks == {}


def test_a_cancel_repeated_during_the_write_still_writes_the_row_before_the_next_turn(
    service: SessionService,
) -> None:
    """A cancel scope that cancels again while the row is written (as anyio's do): the
    cancellation goes on at once, the thread finishes the row, and the session's next turn
    waits for it."""

    async def main() -> float:
        started = asyncio.Event()
        task = asyncio.create_task(_answer_until_cancelled(service, started))
        await started.wait()
        task.cancel()
        await asyncio.sleep(0.05)  # the task is now awaiting the write
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        done_at = time.monotonic()
        assert done_at - cancelled_at < WRITE_S / 2  # not held until the write ended
        async for _ in service.stream("s1", _turn("next", max_tokens=2)):
            pass
        return done_at

    done_at = asyncio.run(main())
    store = service.store
    assert isinstance(store, SlowStore) and store.interrupted_written is not None
    assert store.interrupted_written > done_at  # written after the task had ended
    assert [(role, status) for role, status, _ in _statuses(service)] == [
        ("user", "interrupted"),
        ("assistant", "interrupted"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert service._locks == {}
