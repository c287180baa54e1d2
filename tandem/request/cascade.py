"""The cascade: start locally, hold the first K tokens back, then keep them or escalate.

``Cascade`` is the strategy for one turn (hold the start, check it); ``Hedge`` is the early
cloud call of the hedged mode, an async context manager that always cancels what it started.
The gateway chains them with the tiers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from tandem.events import Finish, StreamEvent, TokenEvent
from tandem.local.toolcalls import tool_call_problems
from tandem.routing.policy import RouteDecision, RoutingPolicy
from tandem.routing.signals import RunningConfidence, prompt_features
from tandem.structured import OutputFormat
from tandem.tools import Tools


@dataclass(frozen=True)
class Verdict:
    escalate: bool
    scores: dict[str, float]  # the plan's scores and the cascade's
    reason: str  # the route reason if the local start is kept
    escalate_reason: str = "cascade_low_confidence"  # the route reason if it escalates


class Cascade:
    """One turn's local start, held back until the check.

    The check reads the confidence statistics of the first ``decision.cascade_tokens``
    tokens; if the local answer ends sooner, the whole answer is checked. A structured answer
    (``output``) is held whole: a JSON document is checked against its schema only once it is
    complete, and one that fails escalates (``schema_invalid``) before the client sees it. So
    is an answer that may call ``tools``: its calls are checked against the tools' parameters
    (``tool_call_invalid``).
    """

    def __init__(
        self,
        policy: RoutingPolicy,
        decision: RouteDecision,
        prompt: str,
        output: OutputFormat | None = None,
        tools: Tools | None = None,
    ):
        self.policy = policy
        self.decision = decision
        self.output = output
        self.tools = tools
        self.confidence = RunningConfidence(prompt)
        self.about_prompt = decision.prompt_features or prompt_features(prompt)
        self.held: list[StreamEvent] = []
        self.finished = False  # the local answer ended within the start

    @property
    def holds_whole(self) -> bool:
        """Whether the answer is checked only once it is complete."""
        return self.output is not None or self.tools is not None

    @property
    def tokens(self) -> int:
        return len(self.confidence)

    @property
    def hedge_at(self) -> int | None:
        """The token count at which the hedged mode may start the cloud (None: it is off)."""
        if self.policy.config.hedge_band <= 0 or self.holds_whole:
            return None
        return max(1, self.decision.cascade_tokens // 2)

    async def hold(
        self,
        local: AsyncIterator[StreamEvent],
        at_hedge: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Read ``local`` up to the check (``at_hedge`` runs once, at the hedge's token)."""
        hedge_at = self.hedge_at if at_hedge is not None else None
        async for event in local:
            self.held.append(event)
            if isinstance(event, Finish):
                self.finished = True
                return
            held_on = self.tokens < self.decision.cascade_tokens  # a checked answer is held on
            if held_on and isinstance(event, TokenEvent):
                self.confidence.add(event.logprob, event.text)
            if self.tokens >= self.decision.cascade_tokens and not self.holds_whole:
                return
            if at_hedge is not None and self.tokens == hedge_at:
                await at_hedge()

    async def rest(self, local: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        """The kept local answer: the held start, then the rest of ``local``."""
        for event in self.held:
            yield event
        if not self.finished:
            async for event in local:
                yield event

    def features(self) -> dict[str, float]:
        return {**self.confidence.features(), **self.about_prompt}

    def borderline(self) -> bool:
        """Is the start so far within the hedge band of escalating?"""
        margin = self.policy.config.hedge_band
        borderline, _ = self.policy.cascade_check(self.decision, self.features(), margin=margin)
        return borderline

    def check(self) -> Verdict:
        if self.decision.cascade_tokens <= 0:  # a schema check alone (see plan.py)
            escalate, scores, reason = False, dict(self.decision.scores), self.decision.reason
        else:
            features = self.features()
            escalate, score = self.policy.cascade_check(self.decision, features)
            scores = {**self.decision.scores, "cascade": round(score, 4)}
            knows = self.policy.cascade_knows(features)
            reason = "cascade_confident" if knows else "cascade_abstained"
        if self.output is not None:
            problems = self.schema_problems()
            scores["schema_valid"] = 0.0 if problems else 1.0
            if problems:
                return Verdict(True, scores, reason, "schema_invalid")
        if self.tools is not None:
            problems = self.tool_problems()
            scores["tool_calls_valid"] = 0.0 if problems else 1.0
            if problems:
                return Verdict(True, scores, reason, "tool_call_invalid")
        return Verdict(escalate, scores, reason)

    def tool_problems(self) -> list[str]:
        """Why the held answer's tool calls are not acceptable (empty: they are)."""
        assert self.tools is not None
        cut = self._unfinished("its tool call")
        return cut if cut else tool_call_problems(self.held, self.tools)

    def _unfinished(self, what: str) -> list[str]:
        """Why the held answer is not complete enough to check (empty: it is)."""
        end = self.held[-1] if self.held else None
        if not isinstance(end, Finish):
            return ["the answer did not end"]
        if end.reason == "length":
            return [f"max_tokens ended the answer before {what} was complete"]
        return []

    def schema_problems(self) -> list[str]:
        """Why the held structured answer is not acceptable (empty: it is)."""
        assert self.output is not None
        if cut := self._unfinished("the JSON document"):
            return cut
        text = "".join(e.text for e in self.held if isinstance(e, TokenEvent))
        return self.output.problems(text)


class Hedge:
    """A cloud answer started early, buffered until it is used; cancelled on exit if not done.

    ``async with Hedge() as hedge``: ``hedge.start(source)`` begins pumping ``source`` in a
    task; ``hedge.events()`` replays it. Leaving the block (an answer, an error, a client that
    goes away) cancels the task if it still runs.
    """

    def __init__(self) -> None:
        self._events: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self, source: AsyncIterator[StreamEvent]) -> None:
        assert self._task is None, "a hedge starts once"
        self._task = asyncio.create_task(self._pump(source))

    async def _pump(self, source: AsyncIterator[StreamEvent]) -> None:
        try:
            async for event in source:
                self._events.put_nowait(event)
        except Exception as exc:  # handed to the consumer, which falls back
            self._events.put_nowait(exc)
            return
        self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            while (item := await self._events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # a client that goes away mid-answer must not leave the cloud call running
            await self.cancel()

    async def cancel(self) -> None:
        """Stop the cloud call if it is still running (idempotent)."""
        if self._task is None or self._task.done():
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> Hedge:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cancel()
