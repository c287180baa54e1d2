"""DeviceMonitor.read(): a cached state, refreshed off the caller's thread."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient

from tandem.gateway import Gateway
from tandem.routing import device
from tandem.routing.device import DeviceMonitor
from tandem.server import create_app
from tandem.settings import Settings


class Sensors:
    """Counting sensors that note which thread read them."""

    def __init__(self) -> None:
        self.temperature = 50.0
        self.threads: list[str] = []

    def thermal(self) -> float:
        self.threads.append(threading.current_thread().name)
        return self.temperature

    def battery(self) -> tuple[float | None, bool | None]:
        return 80.0, True

    def memory(self) -> float:
        return 0.5

    def on(self, thread: threading.Thread) -> int:
        return self.threads.count(thread.name)


def _wait_for(condition: object, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_reads_with_a_fresh_cache_do_no_sensor_io() -> None:
    sensors = Sensors()
    mon = DeviceMonitor(sensors.thermal, sensors.battery, sensors.memory, ttl_s=2.0)
    try:
        first = mon.read()  # nothing cached yet: read once
        assert sensors.on(threading.current_thread()) == 1
        for _ in range(10_000):
            assert mon.read() is first
        assert sensors.on(threading.current_thread()) == 1
    finally:
        mon.close()


def test_the_default_sensors_are_not_read_on_a_cached_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: dict[str, int] = {"memory": 0, "battery": 0}
    vm = psutil.virtual_memory()

    def virtual_memory() -> object:
        calls["memory"] += 1
        return vm

    def sensors_battery() -> None:
        calls["battery"] += 1

    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("45000")
    monkeypatch.setattr(psutil, "virtual_memory", virtual_memory)
    monkeypatch.setattr(psutil, "sensors_battery", sensors_battery)
    monkeypatch.setattr(device, "THERMAL_DIR", tmp_path)
    mon = DeviceMonitor(ttl_s=60.0)
    try:
        state = mon.read()
        assert state.temperature_c == 45.0
        assert calls == {"memory": 1, "battery": 1}
        (tmp_path / "thermal_zone0" / "temp").write_text("95000")
        for _ in range(1000):
            assert mon.read().temperature_c == 45.0
        assert calls == {"memory": 1, "battery": 1}
    finally:
        mon.close()


def test_the_background_refresh_keeps_the_cache_fresh() -> None:
    sensors = Sensors()
    mon = DeviceMonitor(sensors.thermal, sensors.battery, sensors.memory, ttl_s=0.1)
    try:
        assert mon.read().temperature_c == 50.0
        sensors.temperature = 90.0
        _wait_for(lambda: sensors.threads.count("tandem-device-monitor") >= 2)
        assert mon.read().temperature_c == 90.0
        # Every reading after the first came from the refresher, none from this thread.
        for _ in range(20):
            mon.read()
            time.sleep(0.01)
        assert sensors.on(threading.current_thread()) == 1
    finally:
        mon.close()


def test_decode_speed_shows_at_once_without_a_sensor_read() -> None:
    sensors = Sensors()
    mon = DeviceMonitor(sensors.thermal, sensors.battery, sensors.memory, ttl_s=60.0)
    try:
        assert mon.read().tokens_per_s is None
        mon.record_decode(100, 1.0)
        assert mon.read().tokens_per_s == 100.0
        assert len(sensors.threads) == 1
    finally:
        mon.close()


def test_the_refresher_stops_when_idle_closed_or_dropped() -> None:
    # Each monitor's own thread is watched: monitors that other tests left alive have
    # refreshers of their own, which start and stop on their own schedule.
    sensors = Sensors()
    idle = DeviceMonitor(
        sensors.thermal, sensors.battery, sensors.memory, ttl_s=0.05, idle_stop_s=0.1
    )
    idle.read()
    _wait_for(lambda: idle._refresher is None)  # nobody read for 0.1 s: it stopped
    assert idle.read().temperature_c == 50.0  # ... and a read starts it again
    restarted = idle._refresher
    assert restarted is not None and restarted.is_alive()
    idle.close()
    assert not restarted.is_alive()
    dropped = DeviceMonitor(sensors.thermal, sensors.battery, sensors.memory, ttl_s=0.05)
    dropped.read()
    thread = dropped._refresher
    assert thread is not None and thread.is_alive()
    del dropped
    gc.collect()
    _wait_for(lambda: not thread.is_alive())


def test_the_app_reads_the_sensors_at_start_off_the_loop_and_stops_the_refresher(
    gateway: Gateway, settings: Settings
) -> None:
    sensors = Sensors()
    gateway.device = DeviceMonitor(sensors.thermal, sensors.battery, sensors.memory)
    with TestClient(create_app(settings, gateway)) as client:
        _wait_for(lambda: gateway.device._snapshot is not None)
        assert (
            client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
            ).status_code
            == 200
        )
        # The first reading on a worker thread of the loop (asyncio.to_thread), later ones on
        # the refresher: none on the event loop's thread, the request's included.
        assert sensors.threads[0].startswith("asyncio_")
        assert set(sensors.threads[1:]) <= {"tandem-device-monitor"}
        assert gateway.device._refresher is not None
    assert gateway.device._refresher is None  # closed with the app
