"""The two tiers as the request path sees them: what a local engine and a cloud client offer.

Typed protocols, so that the gateway, the runtime and the test doubles agree on one shape: the
lifecycle (``start``/``aclose``) is part of it, never reached with ``getattr``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

from tandem.cloud.breaker import CircuitBreaker
from tandem.cloud.stream import CloudChunk, CloudCount
from tandem.events import GenerationParams, LocalEvent
from tandem.local.chat import Message


class Tier(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"


class EngineState(StrEnum):
    """Where the local model is: unloaded after its keep-alive, loading, ready, or failed."""

    COLD = "cold"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class LocalTier(Protocol):
    model_name: str

    @property
    def n_ctx(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def fim(self) -> bool:
        """Whether the model has fill-in-the-middle tokens."""

    @property
    def tools(self) -> bool:
        """Whether the model's chat template calls tools."""

    @property
    def state(self) -> EngineState: ...

    def start(self) -> None:
        """Start the worker; the model loads in the background."""

    async def aclose(self) -> None:
        """Stop the worker and unload the model."""

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        """Blocking; safe from any thread, whatever the engine is doing."""

    def wake(self) -> None:
        """Start loading the model if it is not ready (cold, or failed with a retry due)."""

    def wait_ready(self, timeout_s: float = 60.0) -> EngineState:
        """Block until the model has loaded or failed (for CLIs and tests)."""

    def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        assistant_prefix: str = "",
        session: str | None = None,
    ) -> AsyncGenerator[LocalEvent, None]: ...

    def forget(self, session: str) -> None: ...

    def health(self) -> dict[str, Any]: ...


class CloudTier(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def available(self) -> bool: ...

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def window_tokens(self) -> int | None:
        """The window the endpoint says it serves, once it has said (None: unknown)."""

    async def count_tokens(self, messages: Sequence[Mapping[str, Any]]) -> CloudCount | None:
        """The endpoint's own token count of these (cloud-bound) messages, where it offers
        one."""

    def stream_chat(
        self, body: dict[str, Any], on_send: Callable[[bytes, str], None] | None = None
    ) -> AsyncIterator[CloudChunk]: ...

    async def run_probes(self, interval_s: float) -> None:
        """Probe the endpoint(s) every ``interval_s`` seconds until cancelled."""

    def health(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
