"""Fitting a long conversation into a tier's context window.

System messages are always kept; the oldest exchanges (a user message and what follows it) are
dropped first; the last exchange is never dropped. When something must be dropped, enough is
dropped that the prompt fills only ``slack`` of the budget, and the cut is remembered: the next
turns start from the same message, so the prompt keeps one stable prefix for several turns (the
local KV cache and a cloud's prefix cache both depend on that) instead of shifting every turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tandem.errors import ContextLengthError
from tandem.local.chat import Message

SLACK = 0.7


@dataclass(frozen=True)
class Fitted:
    messages: list[Message]
    start: int  # index (in the full list) of the first non-system message kept
    dropped: int  # non-system messages left out
    tokens: int


def kept(messages: Sequence[Message], start: int) -> list[Message]:
    return [m for i, m in enumerate(messages) if m["role"] == "system" or i >= start]


def fit_messages(
    messages: Sequence[Message],
    count: Callable[[Sequence[Message]], int],
    budget: int,
    start: int = 0,
    slack: float = SLACK,
) -> Fitted:
    """The messages from ``start`` on if they fit ``budget`` tokens, else a later cut."""
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    start = min(start, last_user)  # never drop the current exchange
    tokens = count(kept(messages, start))
    if tokens <= budget:
        return _fitted(messages, start, tokens)
    cuts = [i for i, m in enumerate(messages) if m["role"] == "user" and i > start]
    # Binary search for the earliest cut that fills at most ``slack`` of the budget; the token
    # count falls as the cut moves later, and each count re-renders the prompt.
    target = int(budget * slack)
    lo, hi = 0, len(cuts) - 1
    best: tuple[int, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        n = count(kept(messages, cuts[mid]))
        if n <= target:
            best = (cuts[mid], n)
            hi = mid - 1
        else:
            lo = mid + 1
    if best is None:  # even the last exchange alone exceeds the slack target
        last = cuts[-1] if cuts else start
        n = count(kept(messages, last))
        if n > budget:
            raise ContextLengthError(
                f"The latest message alone is about {n} tokens with the system prompt; the "
                f"window allows {budget}. Send a shorter message or raise the context size.",
                param="messages",
            )
        best = (last, n)
    return _fitted(messages, *best)


def _fitted(messages: Sequence[Message], start: int, tokens: int) -> Fitted:
    dropped = sum(1 for m in messages[:start] if m["role"] != "system")
    return Fitted(kept(messages, start), start, dropped, tokens)


def fit_window(
    messages: Sequence[Message],
    count: Callable[[Sequence[Message]], int],
    window: int,
    max_tokens: int,
    start: int = 0,
) -> Fitted:
    """A session's history fitted to a tier's ``window``, leaving room for the answer (never
    more than a quarter of the window)."""
    return fit_messages(messages, count, window - min(max_tokens, window // 4), start)
