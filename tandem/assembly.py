"""Wiring: settings → engine, cloud client, metrics, gateway; and their start/stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics, probe_loop_lag
from tandem.privacy.policy import PrivacyGuard
from tandem.routing.policy import RoutingConfig, RoutingPolicy
from tandem.sessions.service import SessionService
from tandem.sessions.store import SqliteSessionStore
from tandem.settings import Settings, default_sessions_db

SWITCH_INTERVAL_S = 0.001


def build_gateway(settings: Settings) -> Gateway:
    """The gateway the settings describe (the model is not loaded until the app starts)."""
    from tandem.catalog import resolve_model
    from tandem.cloud.client import CloudClient
    from tandem.cloud.pool import CloudPool
    from tandem.local.engine import LocalEngine

    path, chat_format = resolve_model(settings.local_model)
    engine = LocalEngine(settings, path, chat_format)
    cloud: CloudClient | CloudPool | None = None
    urls = [u for u in (settings.cloud_url, *settings.cloud_fallback_urls) if u]
    if len(urls) == 1:
        cloud = CloudClient.from_settings(settings, urls[0])
    elif urls:
        cloud = CloudPool([CloudClient.from_settings(settings, u) for u in urls])
    metrics = GatewayMetrics(queue_depth=lambda: engine.queue_depth)
    metrics.watch(
        "tandem_session_kv_bytes",
        "Bytes of KV-cache snapshots held for idle sessions",
        lambda: engine.sessions.used_bytes,
    )
    privacy = PrivacyGuard(
        settings.privacy_categories, settings.privacy_keep_local, settings.privacy_threshold
    )
    return Gateway(
        engine, cloud, metrics, settings.cloud_n_ctx, privacy, policy=build_policy(settings)
    )


def build_policy(settings: Settings) -> RoutingPolicy:
    """The routing policy: the config file (or the shipped one) with the settings' overrides."""
    config = RoutingConfig.load(settings.routing_config)
    if settings.routing_mode is not None:
        config = replace(config, mode=settings.routing_mode)
    if settings.cascade_tokens is not None:
        config = replace(config, cascade_tokens=settings.cascade_tokens)
    if settings.cascade_hedge_band is not None:
        config = replace(config, hedge_band=settings.cascade_hedge_band)
    return RoutingPolicy(config)


def build_store(settings: Settings) -> SqliteSessionStore:
    """The SQLite file that holds sessions and the audit of cloud calls."""
    return SqliteSessionStore(settings.sessions_db or default_sessions_db())


def attach_store(
    settings: Settings, gw: Gateway, store: SqliteSessionStore
) -> SessionService | None:
    """Audit the gateway's cloud calls into ``store``; the session service over it (None when
    sessions are off)."""
    if gw.audit is None:
        gw.audit = store.record_audit
    return SessionService(store, gw) if settings.sessions else None


async def _freeze_heap_after(*startup: asyncio.Task[Any]) -> None:
    """Move what start-up built (the privacy model, presidio's registry, the libraries) out of
    the garbage collector's reach once it is built (``gc.freeze``).

    A full collection walks every tracked object while holding the GIL: with spaCy and presidio
    loaded that is 50-120 ms during which no thread runs Python, the event loop included; it was
    the only source of loop stalls over 25 ms in ``tandem bench load --event-loop-only``. Frozen
    objects are never scanned, so later collections walk only what requests allocate. (Garbage
    frozen with them is never freed: a one-off, start-up-sized cost.)
    """
    await asyncio.gather(*startup, return_exceptions=True)  # their errors are theirs to report
    gc.freeze()


def gateway_lifespan(
    gw: Gateway, settings: Settings, store: SqliteSessionStore | None = None
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Start the engine (loading in the background) and the cloud probes; stop them after."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        # Threads doing Python work (template rendering, the privacy scan, the decode loop)
        # hold the GIL for up to the switch interval (5 ms by default) before the event loop
        # gets it back; 1 ms keeps the loop's latency below what the engine's steps cost.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        start = getattr(gw.local, "start", None)
        if start is not None:
            start()
        # The privacy detector takes a few seconds to import and build: do it before the
        # first cloud-bound request needs it.
        warm = asyncio.create_task(asyncio.to_thread(gw.privacy.detector.warm))
        # The device sensors' first reading (and their refresh thread), off the loop, so that
        # no request's routing decision reads sysfs.
        device = asyncio.create_task(asyncio.to_thread(gw.device.read))
        frozen = asyncio.create_task(_freeze_heap_after(warm, device))
        # How late the loop runs timers (tandem_event_loop_lag_seconds): blocking work on it.
        lag = asyncio.create_task(probe_loop_lag(gw.metrics))
        probes = None
        if gw.cloud is not None and hasattr(gw.cloud, "run_probes"):
            probes = asyncio.create_task(gw.cloud.run_probes(settings.cloud_probe_interval_s))
        try:
            yield
        finally:
            for started in (warm, device, frozen):
                with contextlib.suppress(Exception):
                    await started
            for task in (lag, probes):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            close_device = getattr(gw.device, "close", None)
            if close_device is not None:
                await asyncio.to_thread(close_device)  # its sensor-refresh thread
            close = getattr(gw.local, "close", None)
            if close is not None:
                await asyncio.to_thread(close)
            aclose = getattr(gw.cloud, "aclose", None)
            if aclose is not None:
                await aclose()
            if store is not None:
                store.close()

    return lifespan
