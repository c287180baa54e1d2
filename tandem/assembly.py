"""Wiring: settings → engine, cloud client, metrics, gateway; and their start/stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.sessions.service import SessionService
from tandem.settings import Settings, default_sessions_db


def build_gateway(settings: Settings) -> Gateway:
    """The gateway the settings describe (the model is not loaded until the app starts)."""
    from tandem.catalog import resolve_model
    from tandem.cloud.client import CloudClient
    from tandem.local.engine import LocalEngine

    path, chat_format = resolve_model(settings.local_model)
    engine = LocalEngine(settings, path, chat_format)
    cloud = None
    if settings.cloud_url:
        cloud = CloudClient.from_settings(settings, settings.cloud_url)
    metrics = GatewayMetrics(queue_depth=lambda: engine.queue_depth)
    metrics.watch(
        "tandem_session_kv_bytes",
        "Bytes of KV-cache snapshots held for idle sessions",
        lambda: engine.sessions.used_bytes,
    )
    return Gateway(engine, cloud, metrics, settings.cloud_n_ctx)


def build_sessions(settings: Settings, gw: Gateway) -> SessionService | None:
    """The session service over the configured SQLite file (None when sessions are off)."""
    from tandem.sessions.store import SqliteSessionStore

    if not settings.sessions:
        return None
    store = SqliteSessionStore(settings.sessions_db or default_sessions_db())
    return SessionService(store, gw)


def gateway_lifespan(
    gw: Gateway, settings: Settings, sessions: SessionService | None = None
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Start the engine (loading in the background) and the cloud probes; stop them after."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        start = getattr(gw.local, "start", None)
        if start is not None:
            start()
        probes = None
        if gw.cloud is not None and hasattr(gw.cloud, "run_probes"):
            probes = asyncio.create_task(gw.cloud.run_probes(settings.cloud_probe_interval_s))
        try:
            yield
        finally:
            if probes is not None:
                probes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probes
            close = getattr(gw.local, "close", None)
            if close is not None:
                await asyncio.to_thread(close)
            aclose = getattr(gw.cloud, "aclose", None)
            if aclose is not None:
                await aclose()
            if sessions is not None:
                sessions.store.close()

    return lifespan
