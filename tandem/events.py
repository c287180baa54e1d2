"""Typed events shared by the tiers: what a generation streams and how it ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tandem.prompt import TextPrompt
    from tandem.structured import OutputFormat
    from tandem.tools import Tools

# Why a generation ended: the local tier says "stop" or "length"; a cloud answer keeps the
# cloud's own string ("content_filter", "tool_calls", ...), passed through unchanged.
FinishReason = Literal["stop", "length"] | str


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one request, already validated at the edge."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0  # alternatives reported per token (0: only the chosen token's)
    logprobs: bool = False  # the client asked for logprobs (the cloud is asked for them too)
    output: OutputFormat | None = None  # response_format: JSON, or JSON matching a schema
    # A text prompt (completions, infill): the model continues it without a chat template.
    prompt: TextPrompt | None = None
    top_k: int | None = None  # None: the engine's default (llama.cpp server's, 40)
    tools: Tools | None = None  # the tools the answer may call


@dataclass(frozen=True)
class TokenEvent:
    """One generated piece of text.

    ``logprob`` is the log-probability of the chosen token under the model's distribution at
    that step (temperature 1, before sampling filters), or None when the tier does not say.
    """

    text: str
    logprob: float | None = None
    token: str | None = None  # the token's own text (may differ from ``text`` mid-UTF-8)
    top_logprobs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call the answer makes, in OpenAI's streaming shape: ``index``
    says which call; ``id`` and ``name`` come once, on the call's first piece; ``arguments``
    is a fragment of the JSON arguments (the fragments concatenate to the whole)."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Finish:
    """The end of a generation, with token accounting."""

    reason: FinishReason
    prompt_tokens: int | None
    completion_tokens: int
    prefill_tokens: int | None = None  # prompt tokens actually evaluated (not reused from KV)
    cached_tokens: int | None = None  # prompt tokens reused from a cache (KV, or the cloud's)
    timings: dict[str, float] = field(default_factory=dict)


LocalEvent = TokenEvent | Finish  # what the local tier streams
StreamEvent = TokenEvent | ToolCallDelta | Finish  # a cloud answer may also call tools
