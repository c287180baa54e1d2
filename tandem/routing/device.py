"""The device's state as a routing signal: heat, battery, memory, and the local model's speed.

A hot or throttled device, a low battery or memory pressure make local generation slow or
costly, so the router leans to the cloud. Readings come from ``/sys/class/thermal`` (Linux,
Android), ``psutil`` (battery, memory), and the local engine's own sustained decode speed.
Every sensor is a plain callable, so tests inject their own. Readings are cached for a moment:
a routing decision must not wait on sysfs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

THERMAL_DIR = Path("/sys/class/thermal")


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


def read_thermal(directory: Path = THERMAL_DIR) -> float | None:
    """The hottest thermal zone in °C (sysfs reports millidegrees), or None without sensors."""
    hottest: float | None = None
    for zone in directory.glob("thermal_zone*/temp"):
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
    """Reads the sensors at most every ``ttl_s`` seconds; tracks the local decode speed."""

    def __init__(
        self,
        thermal: Callable[[], float | None] = read_thermal,
        battery: Callable[[], tuple[float | None, bool | None]] = read_battery,
        memory: Callable[[], float | None] = read_memory,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = 2.0,
        speed_alpha: float = 0.3,
        min_speed_tokens: int = 8,
    ):
        self._thermal = thermal
        self._battery = battery
        self._memory = memory
        self._clock = clock
        self._ttl_s = ttl_s
        self._alpha = speed_alpha
        self._min_tokens = min_speed_tokens
        self._cached: DeviceState | None = None
        self._read_at = -float("inf")
        self._speed: float | None = None
        self._best: float | None = None

    def record_decode(self, tokens: int, seconds: float) -> None:
        """One local generation's decode; short ones are too noisy to count."""
        if tokens < self._min_tokens or seconds <= 0:
            return
        rate = tokens / seconds
        self._speed = rate if self._speed is None else (
            self._alpha * rate + (1 - self._alpha) * self._speed)
        self._best = rate if self._best is None else max(self._best, rate)
        self._cached = None

    def read(self) -> DeviceState:
        now = self._clock()
        if self._cached is not None and now - self._read_at < self._ttl_s:
            return self._cached
        percent, plugged = self._battery()
        self._cached = DeviceState(
            temperature_c=self._thermal(),
            battery_percent=percent,
            on_power=plugged,
            memory_available_fraction=self._memory(),
            tokens_per_s=self._speed,
            best_tokens_per_s=self._best,
        )
        self._read_at = now
        return self._cached
