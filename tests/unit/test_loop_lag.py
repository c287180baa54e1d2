"""The event-loop lag probe: tandem_event_loop_lag_seconds in /metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi.testclient import TestClient

from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics, probe_loop_lag
from tandem.server import create_app
from tandem.settings import Settings


def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_a_blocked_loop_shows_as_lag() -> None:
    metrics = GatewayMetrics()

    async def main() -> None:
        probe = asyncio.create_task(probe_loop_lag(metrics, interval_s=0.005))
        await asyncio.sleep(0.05)  # a few on-time wake-ups first
        time.sleep(0.05)  # blocking work on the loop
        await asyncio.sleep(0.05)
        probe.cancel()

    asyncio.run(main())
    count = _value(metrics, "tandem_event_loop_lag_seconds_count")
    under_25ms = _value(metrics, "tandem_event_loop_lag_seconds_bucket", le="0.025")
    assert count >= 5
    assert count - under_25ms >= 1  # the blocked wake-up, in a bucket above 25 ms
    assert _value(metrics, "tandem_event_loop_lag_seconds_sum") >= 0.04
    assert metrics.recent_max_loop_lag() >= 0.04
    assert _value(metrics, "tandem_event_loop_lag_max_seconds") >= 0.04


def test_the_app_runs_the_probe_and_stops_it(gateway: Gateway, settings: Settings) -> None:
    with TestClient(create_app(settings, gateway)) as client:
        time.sleep(0.2)
        text = client.get("/metrics").text
        count = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("tandem_event_loop_lag_seconds_count")
        )
        assert count >= 2  # a probe every 25 ms
        assert "tandem_event_loop_lag_max_seconds" in text
    after = _value(gateway.metrics, "tandem_event_loop_lag_seconds_count")
    time.sleep(0.1)
    assert _value(gateway.metrics, "tandem_event_loop_lag_seconds_count") == after  # stopped
