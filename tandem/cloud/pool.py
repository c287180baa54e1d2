"""Several cloud endpoints in priority order (say, a vLLM deployment, then a hosted API).

Each endpoint is a :class:`CloudClient` with its own circuit breaker. A request goes to the first
endpoint whose breaker allows it; if that endpoint fails before the answer starts, the next one
is tried. An endpoint that timed out or refused the connection is tripped at once (not after
``failure_threshold`` failures), so a dead primary costs one timeout, not one per request; its
health probe closes the breaker again when it answers. A failure after the answer started is
raised: the gateway continues the same answer locally.

The tier has one first-token budget per request (the longest first-token deadline of the
endpoints that may be tried): an endpoint that sends no first token in time is tripped until a
probe sees it answer, and the next one gets what is left of the budget, if anything. So the wait
for a cloud that is not answering is one deadline, however many endpoints are configured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import anyio

from tandem.cloud.breaker import CircuitBreaker
from tandem.cloud.client import CloudClient, OnSend
from tandem.cloud.errors import FIRST_TOKEN_TIMEOUT
from tandem.cloud.stream import CloudChunk, CloudCount
from tandem.errors import CloudError

# Failures that say the endpoint itself is down, not that one request went wrong.
_ENDPOINT_DOWN = {"cloud_timeout", "cloud_unreachable"}
# Less first-token budget than this left is not worth another endpoint's request.
_MIN_ATTEMPT_S = 0.1


class CloudPool:
    """The cloud tier over several endpoints, tried in order."""

    def __init__(self, clients: Sequence[CloudClient]):
        if not clients:
            raise ValueError("a cloud pool needs at least one endpoint")
        self.clients = list(clients)

    @property
    def model(self) -> str:
        return self._first_available().model

    @property
    def base_url(self) -> str:
        return self._first_available().base_url

    @property
    def breaker(self) -> CircuitBreaker:
        return self._first_available().breaker

    @property
    def available(self) -> bool:
        return any(c.available for c in self.clients)

    @property
    def window_tokens(self) -> int | None:
        return self._first_available().window_tokens

    async def count_tokens(self, messages: Sequence[Mapping[str, Any]]) -> CloudCount | None:
        """The count of the endpoint a request would go to first."""
        return await self._first_available().count_tokens(messages)

    def _first_available(self) -> CloudClient:
        return next((c for c in self.clients if c.available), self.clients[0])

    def first_token_budget_s(self, body: dict[str, Any] | None = None) -> float:
        """The tier's first-token budget for ``body`` (None: without a prompt allowance): the
        longest first-token deadline among the endpoints that may be tried (0 when none may)."""
        deadlines = [
            c.first_token_deadline_s() if body is None else c.first_token_deadline_for(body)
            for c in self.clients
            if c.available
        ]
        return max(deadlines, default=0.0)

    async def stream_chat(
        self, body: dict[str, Any], on_send: OnSend | None = None
    ) -> AsyncGenerator[CloudChunk, None]:
        """The first endpoint's answer that starts; raises CloudError ``cloud_unavailable``
        when none does. Waiting for first tokens that never came takes one budget in all
        (:meth:`first_token_budget_s`): each endpoint waits at most what is left of it. Other
        failures (a refused connection, an HTTP error, the read timeout) do not spend it."""
        failures: list[str] = []
        budget_s = self.first_token_budget_s(body)
        spent_s = 0.0  # waited on endpoints that sent no first token
        for client in self.clients:
            if not client.available:
                failures.append(f"{client.base_url}: circuit open")
                continue
            left_s = budget_s - spent_s
            if left_s < _MIN_ATTEMPT_S:
                failures.append(
                    f"{client.base_url}: not tried, the first-token budget of {budget_s:.3g} s "
                    "is spent"
                )
                continue
            started = False
            tried_at = anyio.current_time()
            try:
                stream = client.stream_chat(body, on_send, first_token_s=left_s)
                async with contextlib.aclosing(stream) as chunks:
                    async for chunk in chunks:
                        started = True
                        yield chunk
                return
            except CloudError as exc:
                if started:
                    raise
                if exc.code == FIRST_TOKEN_TIMEOUT:
                    # The client has tripped itself until a probe, if it had its whole deadline.
                    spent_s += anyio.current_time() - tried_at
                elif exc.code in _ENDPOINT_DOWN:
                    client.breaker.trip()
                failures.append(exc.message)
        raise CloudError(
            f"No cloud endpoint could answer ({len(self.clients)} tried or unavailable): "
            + " | ".join(failures),
            code="cloud_unavailable",
        )

    async def probe(self) -> bool:
        results = await asyncio.gather(*(c.probe() for c in self.clients))
        return any(results)

    async def run_probes(self, interval_s: float) -> None:
        await asyncio.gather(*(c.run_probes(interval_s) for c in self.clients))

    def health(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "model": self.model,
            "window_tokens": self.window_tokens,
            "first_token_budget_s": round(self.first_token_budget_s(), 3),
            "endpoints": [c.health() for c in self.clients],
        }

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
