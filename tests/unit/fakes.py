"""Test doubles: a local engine that replays scripted tokens, and an SSE cloud transport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import httpx

from tandem.errors import TandemError
from tandem.events import Finish, GenerationParams, StreamEvent, TokenEvent
from tandem.local.chat import Message
from tandem.tiers import EngineState


class FakeEngine:
    """Replays ``tokens`` for every request; counts prompt tokens as whitespace words.

    ``error`` makes requests fail (at once, or after ``fail_after`` tokens).
    """

    model_name = "fake-local"
    fim = False  # no fill-in-the-middle tokens, like the bundled models
    tools = False  # no tools in its chat template, like the bundled models

    def __init__(self, tokens: Sequence[str] = ("Hello", " from", " local"), n_ctx: int = 64):
        self.tokens = list(tokens)
        self._n_ctx = n_ctx
        self.state = EngineState.READY
        self.started = False  # start() called (by the runtime)
        self.closed = False  # aclose() called
        self.queue_depth = 0
        self.error: TandemError | None = None
        self.fail_after: int | None = None  # with ``error``: raise after this many tokens
        self.delay_s = 0.0  # pause before each token
        self.calls: list[tuple[list[Message], GenerationParams, str]] = []
        self.sessions: list[str | None] = []
        self.forgotten: list[str] = []
        self.yielded = 0  # tokens handed out (a cancelled stream stops early)
        self.logprobs: Sequence[float] | None = None  # per token (default: -0.1 * position)
        self.wakes = 0  # calls to wake()

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        if self.state != "ready":
            return None
        return sum(len(m["content"].split()) for m in messages)

    async def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        assistant_prefix: str = "",
        session: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        self.calls.append((list(messages), params, assistant_prefix))
        self.sessions.append(session)
        if self.error is not None and self.fail_after is None:
            raise self.error
        emitted = self.tokens[: params.max_tokens]
        for i, text in enumerate(emitted):
            if self.error is not None and i == self.fail_after:
                raise self.error
            if self.delay_s:
                await anyio.sleep(self.delay_s)
            self.yielded += 1
            lp = self.logprobs[i] if self.logprobs is not None else -0.1 * (i + 1)
            yield TokenEvent(text=text, logprob=lp, token=text)
        reason = "length" if len(emitted) < len(self.tokens) else "stop"
        yield Finish(reason, self.count_tokens(messages), len(emitted), prefill_tokens=0)

    def forget(self, session: str) -> None:
        self.forgotten.append(session)

    def wake(self) -> None:
        self.wakes += 1

    def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.closed = True

    def wait_ready(self, timeout_s: float = 60.0) -> EngineState:
        return self.state

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "model": self.model_name}


def sse_body(pieces: Sequence[str], finish: str = "stop") -> bytes:
    """An OpenAI-style SSE stream of ``pieces``."""
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces
    ]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


def cloud_transport(
    pieces: Sequence[str] = ("Hi", " from", " cloud"),
    fail: Callable[[], bool] = lambda: False,
) -> httpx.MockTransport:
    """A cloud that streams ``pieces``; answers 500 whenever ``fail()`` is true."""

    def handler(request: httpx.Request) -> httpx.Response:
        if fail():
            return httpx.Response(500, json={"error": {"message": "boom"}})
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "cloud"}]})
        return httpx.Response(
            200, content=sse_body(pieces), headers={"content-type": "text/event-stream"}
        )

    return httpx.MockTransport(handler)


class RecordingCloud:
    """A mock cloud transport that keeps every chat request body it receives."""

    def __init__(self, pieces: tuple[str, ...] = ("Hi", " from", " cloud")):
        self.bodies: list[bytes] = []
        self.pieces = pieces

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "cloud"}]})
        if request.url.path == "/tokenize":  # as llama_cpp.server: no such endpoint
            return httpx.Response(404, json={"detail": "Not Found"})
        self.bodies.append(request.content)
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, content=sse_body(self.pieces), headers=headers)

    def messages(self, i: int) -> list[dict[str, str]]:
        return list(json.loads(self.bodies[i])["messages"])
