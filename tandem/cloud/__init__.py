"""The cloud tier: an OpenAI-compatible client with a circuit breaker, and a local stand-in."""

from tandem.cloud.breaker import BreakerState, CircuitBreaker
from tandem.cloud.client import CloudChunk, CloudClient, CloudCompletion, TokenLogprob
from tandem.cloud.standin import StandinCloud

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CloudChunk",
    "CloudClient",
    "CloudCompletion",
    "StandinCloud",
    "TokenLogprob",
]
