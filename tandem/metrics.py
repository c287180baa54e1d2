"""Prometheus metrics of one gateway, in a registry of its own (no module globals)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tandem.events import Finish

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Event-loop lag: fine at the bottom, where a healthy loop lives (the target is p99 <= 5 ms).
LOOP_LAG_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
LOOP_LAG_INTERVAL_S = 0.025
LOOP_LAG_WINDOW_S = 10.0


class GatewayMetrics:
    """Requests by route and reason, latencies, tokens, fallbacks, errors and queue depth."""

    def __init__(self, queue_depth: Callable[[], float] | None = None):
        """Every metric the gateway exports, declared in one place (long by nature: a table)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tandem_requests", "Completed chat turns", ["route", "reason"], registry=r
        )
        self.latency = Histogram(
            "tandem_request_seconds",
            "Turn latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tandem_time_to_first_token_seconds",
            "Time to first token",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("tandem_tokens", "Tokens", ["route", "kind"], registry=r)
        self.fallbacks = Counter(
            "tandem_fallbacks", "Turns moved to another tier", ["reason", "cause"], registry=r
        )
        self.errors = Counter("tandem_errors", "Failed requests", ["code"], registry=r)
        self.privacy = Histogram(
            "tandem_privacy_check_seconds",
            "Time to scan and redact a cloud-bound request, by outcome",
            ["outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.trimmed = Counter(
            "tandem_context_trimmed_messages",
            "Older session messages left out to fit a tier's window",
            ["route"],
            registry=r,
        )
        self.cascade = Counter(
            "tandem_cascade_checks",
            "Cascade confidence checks, by outcome (kept local or escalated to the cloud)",
            ["outcome"],
            registry=r,
        )
        self.hedges = Counter(
            "tandem_cascade_hedges",
            "Cloud calls started early by the hedged cascade: started, then used or cancelled",
            ["outcome"],
            registry=r,
        )
        self.cascade_tokens = Histogram(
            "tandem_cascade_checked_tokens",
            "Local tokens generated before the cascade's check",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.cascade_check = Histogram(
            "tandem_cascade_check_seconds",
            "Time of the cascade's confidence check",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
            registry=r,
        )
        self.loop_lag = Histogram(
            "tandem_event_loop_lag_seconds",
            "How late the event loop ran a timer (sleeps of a fixed interval, minus the "
            "interval): time something else held the loop",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        # (monotonic time, lag) of the last LOOP_LAG_WINDOW_S seconds, for the max gauge.
        self._recent_lags: collections.deque[tuple[float, float]] = collections.deque()
        Gauge(
            "tandem_event_loop_lag_max_seconds",
            f"Largest event-loop lag of the last {LOOP_LAG_WINDOW_S:.0f} s",
            registry=r,
        ).set_function(self.recent_max_loop_lag)
        self.queue_depth = Gauge(
            "tandem_local_queue_depth", "Requests queued or running locally", registry=r
        )
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)

    def observe_turn(self, route: str, reason: str, finish: Finish, started: float) -> None:
        self.requests.labels(route, reason).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)
        self.tokens.labels(route, "completion").inc(finish.completion_tokens)
        if finish.prompt_tokens is not None:
            self.tokens.labels(route, "prompt").inc(finish.prompt_tokens)

    def observe_first_token(self, route: str, started: float) -> None:
        self.ttft.labels(route).observe(time.perf_counter() - started)

    def count_fallback(self, reason: str, cause: str) -> None:
        self.fallbacks.labels(reason, cause).inc()

    def observe_privacy(self, outcome: str, started: float) -> None:
        self.privacy.labels(outcome).observe(time.perf_counter() - started)

    def observe_cascade(self, outcome: str, started: float, tokens: int) -> None:
        self.cascade.labels(outcome).inc()
        self.cascade_tokens.observe(tokens)
        self.cascade_check.observe(time.perf_counter() - started)

    def count_hedge(self, outcome: str) -> None:
        self.hedges.labels(outcome).inc()

    def count_trimmed(self, route: str, messages: int) -> None:
        self.trimmed.labels(route).inc(messages)

    def watch(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read when scraped (e.g. memory held by another component)."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def observe_loop_lag(self, lag_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.loop_lag.observe(lag_s)
        recent = self._recent_lags
        recent.append((now, lag_s))
        while recent and recent[0][0] < now - LOOP_LAG_WINDOW_S:
            recent.popleft()

    def recent_max_loop_lag(self) -> float:
        cutoff = time.monotonic() - LOOP_LAG_WINDOW_S
        return max((lag for at, lag in list(self._recent_lags) if at >= cutoff), default=0.0)

    def count_error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


async def probe_loop_lag(metrics: GatewayMetrics, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Sleep ``interval_s`` over and over, and record how late each wake-up came: the time the
    loop spent on something else (blocking work, a long callback) when the timer was due.
    Runs until cancelled (the app's lifespan starts and stops it)."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(interval_s)
        metrics.observe_loop_lag(max(0.0, time.perf_counter() - started - interval_s))
