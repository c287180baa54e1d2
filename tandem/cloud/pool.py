"""Several cloud endpoints in priority order (say, a vLLM deployment, then a hosted API).

Each endpoint is a :class:`CloudClient` with its own circuit breaker. A request goes to the first
endpoint whose breaker allows it; if that endpoint fails before the answer starts, the next one
is tried. An endpoint that timed out or refused the connection is tripped at once (not after
``failure_threshold`` failures), so a dead primary costs one timeout, not one per request; its
health probe closes the breaker again when it answers. A failure after the answer started is
raised: the gateway continues the same answer locally.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from tandem.cloud.breaker import CircuitBreaker
from tandem.cloud.client import CloudClient, OnSend
from tandem.cloud.stream import CloudChunk
from tandem.errors import CloudError

# Failures that say the endpoint itself is down, not that one request went wrong.
_ENDPOINT_DOWN = {"cloud_timeout", "cloud_unreachable"}


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

    def _first_available(self) -> CloudClient:
        return next((c for c in self.clients if c.available), self.clients[0])

    async def stream_chat(
        self, body: dict[str, Any], on_send: OnSend | None = None
    ) -> AsyncGenerator[CloudChunk, None]:
        failures: list[str] = []
        for client in self.clients:
            if not client.available:
                failures.append(f"{client.base_url}: circuit open")
                continue
            started = False
            try:
                async with contextlib.aclosing(client.stream_chat(body, on_send)) as chunks:
                    async for chunk in chunks:
                        started = True
                        yield chunk
                return
            except CloudError as exc:
                if started:
                    raise
                if exc.code in _ENDPOINT_DOWN:
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
            "endpoints": [c.health() for c in self.clients],
        }

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
