"""A chat turn as the gateway sees it, where it is answered, and the two tiers' interfaces.

Kept apart from the gateway so that the HTTP layer, sessions and benchmarks can build and read
turns without the routing machinery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from tandem.events import GenerationParams, StreamEvent
from tandem.local.chat import Message
from tandem.privacy.policy import PrivacyMode
from tandem.privacy.redact import Placeholders


class Tier(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"


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


GatewayEvent = RouteInfo | StreamEvent


class LocalTier(Protocol):
    model_name: str

    @property
    def n_ctx(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def state(self) -> Any: ...

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        """Blocking; safe from any thread, whatever the engine is doing."""

    def wake(self) -> None:
        """Start loading the model if it is not ready (cold, or failed with a retry due)."""

    def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        assistant_prefix: str = "",
        session: str | None = None,
    ) -> AsyncIterator[StreamEvent]: ...

    def forget(self, session: str) -> None: ...

    def health(self) -> dict[str, Any]: ...


class CloudTier(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def available(self) -> bool: ...

    def stream_chat(
        self, body: dict[str, Any], on_send: Callable[[bytes, str], None] | None = None
    ) -> AsyncIterator[Any]: ...

    def health(self) -> dict[str, Any]: ...


def last_user_text(messages: Sequence[Message]) -> str:
    """The latest user message: what the routers read."""
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return messages[-1]["content"] if messages else ""


def cloud_body(turn: Turn, messages: Sequence[Message] | None = None) -> dict[str, Any]:
    """The OpenAI request the cloud tier receives for a turn.

    Messages come first, as ``{"role", "content"}`` in stored order with their text untouched,
    so that consecutive turns of a conversation share a byte-identical prefix (which a server
    with prefix caching, such as vLLM, reuses).
    """
    p = turn.params
    body: dict[str, Any] = {
        "messages": [
            {"role": m["role"], "content": m["content"]}
            for m in (turn.messages if messages is None else messages)
        ],
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
    }
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.logprobs:  # the cloud's logprobs are passed on to the client
        body["logprobs"] = True
        if p.top_logprobs:
            body["top_logprobs"] = p.top_logprobs
    return body
