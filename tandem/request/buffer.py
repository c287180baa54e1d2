"""What a turn has sent its client so far."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tandem.events import StreamEvent, TokenEvent, ToolCallDelta


class AnswerBuffer:
    """The answer's text as streamed, whichever tier produced it.

    A tier that fails mid-answer is continued by the other from this text (the local engine
    takes it as the assistant prefix), and a failure before any text may still move the turn.
    """

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._called = False  # a tool call has begun: no other tier can continue it

    def __bool__(self) -> bool:
        return bool(self._pieces) or self._called

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    async def tee(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        """``events`` unchanged, their text recorded as it passes."""
        async for event in events:
            self.record(event)
            yield event

    def record(self, event: StreamEvent) -> None:
        if isinstance(event, TokenEvent) and event.text:
            self._pieces.append(event.text)
        elif isinstance(event, ToolCallDelta):
            self._called = True
