"""The one composition root: settings → engine, cloud, policy, privacy, store, gateway.

``Runtime`` is an async context manager, as ``httpx.AsyncClient`` is: constructing it wires the
parts (nothing loads yet); entering it starts the engine (loading in the background), the
cloud probes, the privacy warm-up and the device sensors; leaving it stops them in reverse and
closes the store. ``tandem serve`` (as the app's lifespan), ``tandem chat``, the benchmarks
and the integration tests all run through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from dataclasses import replace
from types import TracebackType
from typing import Any

from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics, probe_loop_lag
from tandem.privacy.policy import PrivacyGuard
from tandem.routing.policy import RoutingConfig, RoutingPolicy
from tandem.sessions.service import SessionService
from tandem.sessions.store import SqliteSessionStore
from tandem.settings import Settings, default_sessions_db
from tandem.tiers import CloudTier

SWITCH_INTERVAL_S = 0.001


def build_gateway(settings: Settings) -> Gateway:
    """The gateway the settings describe (the model is not loaded until the runtime starts)."""
    from tandem.catalog import resolve_model
    from tandem.cloud.client import CloudClient
    from tandem.cloud.pool import CloudPool
    from tandem.local.engine import LocalEngine

    path, chat_format = resolve_model(settings.local_model)
    engine = LocalEngine(settings, path, chat_format)
    cloud: CloudTier | None = None
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
        engine,
        cloud,
        metrics,
        settings.cloud_n_ctx,
        privacy,
        policy=build_policy(settings),
        cloud_fim=settings.cloud_fim,
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


def open_store(settings: Settings) -> SqliteSessionStore:
    """The SQLite file that holds sessions and the audit of cloud calls."""
    return SqliteSessionStore(settings.sessions_db or default_sessions_db())


class Runtime:
    """What one gateway process owns, and its start-up and shutdown.

    ``gateway`` replaces the one the settings describe (tests pass one over test doubles);
    the store is opened either way, audits the gateway's cloud calls and, when sessions are
    on, backs ``sessions``.
    """

    def __init__(self, settings: Settings, gateway: Gateway | None = None):
        self.settings = settings
        self.gateway = gateway or build_gateway(settings)
        self.store = open_store(settings)
        if self.gateway.audit is None:
            self.gateway.audit = self.store.record_audit
        self.sessions = SessionService(self.store, self.gateway) if settings.sessions else None
        self._startup: list[asyncio.Task[Any]] = []
        self._background: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        gw = self.gateway
        # Threads doing Python work (template rendering, the privacy scan, the decode loop)
        # hold the GIL for up to the switch interval (5 ms by default) before the event loop
        # gets it back; 1 ms keeps the loop's latency below what the engine's steps cost.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        gw.local.start()
        # The privacy detector takes a few seconds to import and build: do it before the
        # first cloud-bound request needs it.
        warm = asyncio.create_task(asyncio.to_thread(gw.privacy.detector.warm))
        # The device sensors' first reading (and their refresh thread), off the loop, so that
        # no request's routing decision reads sysfs.
        device = asyncio.create_task(asyncio.to_thread(gw.device.read))
        self._startup = [warm, device, asyncio.create_task(_freeze_heap_after(warm, device))]
        # How late the loop runs timers (tandem_event_loop_lag_seconds): blocking work on it.
        self._background = [asyncio.create_task(probe_loop_lag(gw.metrics))]
        if gw.cloud is not None:
            interval = self.settings.cloud_probe_interval_s
            self._background.append(asyncio.create_task(gw.cloud.run_probes(interval)))

    async def wait_local_ready(self, timeout_s: float) -> None:
        """Wait (off the loop) until the local model has loaded or failed."""
        await asyncio.to_thread(self.gateway.local.wait_ready, timeout_s)

    async def aclose(self) -> None:
        gw = self.gateway
        for started in self._startup:
            with contextlib.suppress(Exception):
                await started
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(gw.device.close)  # its sensor-refresh thread
        await gw.local.aclose()
        if gw.cloud is not None:
            await gw.cloud.aclose()
        self.store.close()


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
