"""The cloud tier: an OpenAI-compatible client with a circuit breaker, and a local stand-in."""

from tandem.cloud.breaker import BreakerState, CircuitBreaker
from tandem.cloud.client import CloudClient
from tandem.cloud.standin import StandinCloud
from tandem.cloud.stream import CloudChunk, CloudCompletion, TokenLogprob

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CloudChunk",
    "CloudClient",
    "CloudCompletion",
    "StandinCloud",
    "TokenLogprob",
]
