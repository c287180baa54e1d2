"""A chat turn as the gateway sees it, and where it is answered.

Kept apart from the gateway so that the HTTP layer, sessions and benchmarks can build and read
turns without the routing machinery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tandem.events import GenerationParams, StreamEvent
from tandem.local.chat import Message
from tandem.privacy.redact import Placeholders
from tandem.privacy.types import PrivacyMode
from tandem.prompt import text_body
from tandem.tiers import CloudTier, LocalTier, Tier
from tandem.tools import Tools, wire_message

__all__ = [
    "CloudTier",
    "GatewayEvent",
    "LocalTier",
    "RouteInfo",
    "RoutePreference",
    "Tier",
    "Turn",
    "cloud_body",
    "last_user_text",
]


class RoutePreference(StrEnum):
    AUTO = "auto"
    LOCAL = "local"
    CLOUD = "cloud"


@dataclass(frozen=True)
class RouteInfo:
    """Where a turn is (now) being answered, and why, as a short machine-readable reason."""

    tier: Tier
    reason: str
    model: str
    start: int = 0  # first non-system message sent to the tier (sessions trim the oldest)
    dropped: int = 0  # older messages left out to fit the tier's window
    scores: Mapping[str, float] = field(default_factory=dict)  # the routers' scores


@dataclass(frozen=True)
class Turn:
    """One validated chat request as the gateway sees it."""

    messages: Sequence[Message]
    params: GenerationParams
    route: RoutePreference = RoutePreference.AUTO
    fallback: bool = True  # may another tier answer when the chosen one fails?
    session_id: str | None = None
    # Set for session turns: the history is trimmed to each tier's window (starting no earlier
    # than these message indexes) instead of failing when it is too long.
    context_starts: Mapping[str, int] | None = None
    privacy: PrivacyMode = PrivacyMode.REDACT
    privacy_explicit: bool = False  # asked for by the request (not the gateway's default)
    placeholders: Placeholders | None = None  # a session's table; a fresh one per turn if None

    @property
    def tools(self) -> Tools | None:
        """The tools the answer may call (``params.tools``)."""
        return self.params.tools

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may call a tool (a local model that cannot leaves it to the
        cloud)."""
        return self.tools is not None and self.tools.callable

    @property
    def fills_middle(self) -> bool:
        """Whether this is a fill-in-the-middle completion (a text prompt with a suffix)."""
        return self.params.prompt is not None and self.params.prompt.fim


GatewayEvent = RouteInfo | StreamEvent


def last_user_text(messages: Sequence[Message]) -> str:
    """The latest user message: what the routers read."""
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return messages[-1]["content"] if messages else ""


def cloud_body(turn: Turn, messages: Sequence[Message] | None = None) -> dict[str, Any]:
    """The OpenAI request the cloud tier receives for a turn.

    Messages come first, as ``{"role", "content"}`` (and their tool calls) in stored order with
    their text untouched,
    so that consecutive turns of a conversation share a byte-identical prefix (which a server
    with prefix caching, such as vLLM, reuses).
    """
    p = turn.params
    if p.prompt is not None:  # a text prompt: /completions, its pieces from ``messages``
        return text_body(p.prompt if messages is None else p.prompt.with_texts(messages), p)
    body: dict[str, Any] = {
        "messages": [wire_message(m) for m in (turn.messages if messages is None else messages)],
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
    }
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.output is not None:
        body["response_format"] = p.output.wire()
    if turn.tools is not None:
        body.update(turn.tools.wire())
    if p.logprobs:  # the cloud's logprobs are passed on to the client
        body["logprobs"] = True
        if p.top_logprobs:
            body["top_logprobs"] = p.top_logprobs
    return body
