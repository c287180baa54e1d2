"""Keystroke-speed completions: a newer request supersedes the one it replaces, and the
infill stopping rules end an answer early.

An editor sends an infill request per keystroke; only the newest one's answer will be shown.
``Lanes`` gives each editor (client address and user agent) one lane: a request entering a
lane ends the one still running there, so the engine frees its slot at its next token (or
drops it from the queue) instead of finishing an answer nobody reads. The superseded request
ends with what it had generated, as a normal answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Hashable
from typing import TYPE_CHECKING

from tandem.events import Finish, TokenEvent

if TYPE_CHECKING:
    from tandem.completions import InfillLimits
    from tandem.turn import GatewayEvent


class Lanes:
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def supersede(
        self, lane: Hashable, events: AsyncGenerator[GatewayEvent, None]
    ) -> AsyncGenerator[GatewayEvent, None]:
        """``events`` until they end or a newer request enters ``lane``."""
        if (previous := self._running.get(lane)) is not None:
            previous.set()
        superseded = self._running[lane] = asyncio.Event()
        tokens = 0
        waiter = asyncio.ensure_future(superseded.wait())
        try:
            while True:
                step = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    with contextlib.suppress(BaseException):
                        await step
                    yield Finish("stop", None, tokens)
                    return
                try:
                    event = step.result()
                except StopAsyncIteration:
                    return
                tokens += isinstance(event, TokenEvent)
                yield event
        finally:
            waiter.cancel()
            if self._running.get(lane) is superseded:
                del self._running[lane]
            await events.aclose()


async def limited(
    events: AsyncGenerator[GatewayEvent, None], limits: InfillLimits
) -> AsyncGenerator[GatewayEvent, None]:
    """``events`` with the text cut where ``limits`` end the answer (which then stops)."""
    tokens = 0
    try:
        async for event in events:
            if not isinstance(event, TokenEvent):
                yield event
                continue
            tokens += 1
            text = limits.feed(event.text)
            yield TokenEvent(text, event.logprob, event.token, event.top_logprobs)
            if limits.stopped is not None:
                yield Finish("stop", None, tokens)
                return
    finally:
        await events.aclose()
