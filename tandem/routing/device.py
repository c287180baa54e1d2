"""The device's state as a routing signal: heat, battery, memory, and the local model's speed.

A hot or throttled device, a low battery or memory pressure make local generation slow or
costly, so the router leans to the cloud. Readings come from ``/sys/class/thermal`` (Linux,
Android), ``psutil`` (battery, memory), and the local engine's own sustained decode speed.
Every sensor is a plain callable, so tests inject their own. Readings are cached and refreshed
by a background thread: a routing decision, on the event loop, must not wait on sysfs.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

THERMAL_DIR = Path("/sys/class/thermal")
log = logging.getLogger("tandem.device")


@dataclass(frozen=True)
class DeviceLimits:
    """Where the router starts leaning to the cloud."""

    hot_c: float = 80.0  # hottest thermal zone, °C
    low_battery_percent: float = 20.0  # on battery (not charging) below this
    low_memory_fraction: float = 0.10  # available / total memory below this
    slow_fraction: float = 0.5  # sustained decode speed below this fraction of the best seen


@dataclass(frozen=True)
class DeviceState:
    temperature_c: float | None = None
    battery_percent: float | None = None
    on_power: bool | None = None
    memory_available_fraction: float | None = None
    tokens_per_s: float | None = None  # sustained (moving average) local decode speed
    best_tokens_per_s: float | None = None

    def pressure(self, limits: DeviceLimits) -> str | None:
        """The first reason to spare the device, as a route reason, or None."""
        if self.temperature_c is not None and self.temperature_c >= limits.hot_c:
            return "device_hot"
        if (self.battery_percent is not None and self.on_power is False
                and self.battery_percent < limits.low_battery_percent):
            return "battery_low"
        if (self.memory_available_fraction is not None
                and self.memory_available_fraction < limits.low_memory_fraction):
            return "memory_pressure"
        if (self.tokens_per_s is not None and self.best_tokens_per_s
                and self.tokens_per_s < limits.slow_fraction * self.best_tokens_per_s):
            return "local_throttled"
        return None


def read_thermal(directory: Path | None = None) -> float | None:
    """The hottest thermal zone in °C (sysfs reports millidegrees), or None without sensors."""
    hottest: float | None = None
    for zone in (THERMAL_DIR if directory is None else directory).glob("thermal_zone*/temp"):
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if value > -50 and (hottest is None or value > hottest):  # -273 = sensor absent
            hottest = value
    return hottest


def read_battery() -> tuple[float | None, bool | None]:
    try:
        battery = psutil.sensors_battery()
    except (AttributeError, OSError, RuntimeError):
        battery = None
    if battery is None:
        return None, None
    return float(battery.percent), battery.power_plugged


def read_memory() -> float:
    vm = psutil.virtual_memory()
    return float(vm.available) / float(vm.total)


class DeviceMonitor:
    """The device's state for every routing decision, without I/O on the caller's thread.

    ``read()`` returns a cached ``DeviceState``: a daemon thread, started on the first read,
    reads the sensors every ``ttl_s / 2`` seconds, so the cache is never older than ``ttl_s``
    while the thread keeps up. Only a cache older than that (the first read, a stalled or
    stopped refresher) is read on the caller's thread. The thread stops once nobody has read
    for ``idle_stop_s`` seconds, or when the monitor is dropped or closed; the next read
    restarts it. ``record_decode`` tracks the local model's sustained speed (no I/O).
    """

    def __init__(
        self,
        thermal: Callable[[], float | None] = read_thermal,
        battery: Callable[[], tuple[float | None, bool | None]] = read_battery,
        memory: Callable[[], float | None] = read_memory,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = 2.0,
        speed_alpha: float = 0.3,
        min_speed_tokens: int = 8,
        idle_stop_s: float = 30.0,
    ):
        self._thermal = thermal
        self._battery = battery
        self._memory = memory
        self._clock = clock
        self._ttl_s = ttl_s
        self._alpha = speed_alpha
        self._min_tokens = min_speed_tokens
        self._idle_stop_s = idle_stop_s
        self._lock = threading.Lock()  # guards the fields below and the refresher's start
        self._sensors: DeviceState | None = None
        self._read_at = -float("inf")
        self._speed: float | None = None
        self._best: float | None = None
        # What ``read`` returns: the sensors with the decode speed, and when they were read.
        self._snapshot: tuple[DeviceState, float] | None = None
        self._last_read = time.monotonic()
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()

    def record_decode(self, tokens: int, seconds: float) -> None:
        """One local generation's decode; short ones are too noisy to count."""
        if tokens < self._min_tokens or seconds <= 0:
            return
        rate = tokens / seconds
        with self._lock:
            self._speed = rate if self._speed is None else (
                self._alpha * rate + (1 - self._alpha) * self._speed)
            self._best = rate if self._best is None else max(self._best, rate)
            self._publish()

    def read(self) -> DeviceState:
        self._last_read = time.monotonic()
        snapshot = self._snapshot
        if snapshot is not None and self._clock() - snapshot[1] < self._ttl_s:
            if self._refresher is None:
                self._start_refresher()
            return snapshot[0]
        # No reading yet, or the refresher has fallen behind: read here, once.
        self.refresh()
        self._start_refresher()
        snapshot = self._snapshot
        assert snapshot is not None
        return snapshot[0]

    def refresh(self) -> None:
        """Read the sensors now (the refresher's work; blocking I/O)."""
        now = self._clock()
        percent, plugged = self._battery()
        sensors = DeviceState(
            temperature_c=self._thermal(),
            battery_percent=percent,
            on_power=plugged,
            memory_available_fraction=self._memory(),
        )
        with self._lock:
            if now >= self._read_at:  # a slower, older reading does not replace a newer one
                self._sensors, self._read_at = sensors, now
                self._publish()

    def close(self) -> None:
        """Stop the refresher (a later ``read`` starts it again)."""
        with self._lock:
            thread, self._refresher = self._refresher, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _publish(self) -> None:  # under self._lock
        if self._sensors is None:
            return
        state = replace(self._sensors, tokens_per_s=self._speed, best_tokens_per_s=self._best)
        self._snapshot = (state, self._read_at)

    def _start_refresher(self) -> None:
        with self._lock:
            if self._refresher is not None and self._refresher.is_alive():
                return
            self._stop = threading.Event()
            self._refresher = threading.Thread(
                target=_refresh_loop,
                args=(weakref.ref(self), self._stop, self._ttl_s / 2),
                name="tandem-device-monitor",
                daemon=True,
            )
            self._refresher.start()


def _refresh_loop(ref: weakref.ref[DeviceMonitor], stop: threading.Event, every_s: float) -> None:
    """Refresh the monitor every ``every_s`` seconds until it is stopped, idle or dropped (the
    thread holds only a weak reference, so it does not keep a dropped monitor alive)."""
    while not stop.wait(every_s):
        monitor = ref()
        if monitor is None or stop.is_set():
            return
        if time.monotonic() - monitor._last_read > monitor._idle_stop_s:
            with monitor._lock:
                if monitor._stop is stop:
                    monitor._refresher = None
            return
        try:
            monitor.refresh()
        except Exception:  # a failing sensor: keep the last reading, try again next time
            log.debug("device sensors could not be read", exc_info=True)
        del monitor
