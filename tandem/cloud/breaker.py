"""A circuit breaker: stop calling an endpoint that keeps failing, retry it after a cooldown.

Closed (calls go through) → open after ``failure_threshold`` consecutive failures (calls are
refused without touching the network) → half-open once ``cooldown_s`` has passed (one trial call
goes through) → closed if it succeeds, open again if it fails.

:meth:`CircuitBreaker.trip` with ``until_probe=True`` opens it in a second mode, for an endpoint
that accepts connections and never answers: a trial call there would cost a user the whole
timeout, so there is no half-open state; the breaker stays open until a health probe sees the
endpoint answer (the probe's :meth:`~CircuitBreaker.record_success`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from enum import StrEnum

logger = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of one endpoint and decides whether a call may be tried.

    ``clock`` returns seconds (monotonic); tests pass a fake one to step through the cooldown.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_s: float = 15.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._until_probe = False  # open until record_success, with no half-open trial
        self.consecutive_failures = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has passed reads as half-open
        (unless it waits for a probe)."""
        if self._state is BreakerState.OPEN and not self._until_probe and self._cooldown_over():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def reopens_on(self) -> str | None:
        """What lets calls through again: ``"probe"`` (only a successful health probe),
        ``"cooldown"`` (a trial call once ``cooldown_s`` has passed), or None while closed."""
        if self._state is BreakerState.CLOSED:
            return None
        return "probe" if self._until_probe else "cooldown"

    @property
    def available(self) -> bool:
        """Whether a call may be tried now (without reserving the half-open trial)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._trial_in_flight

    def try_acquire(self) -> bool:
        """Reserve the right to make one call; in half-open state only one caller gets it.

        A caller that got ``True`` must end with :meth:`record_success`,
        :meth:`record_failure` or :meth:`release`.
        """
        if not self.available:
            return False
        if self.state is BreakerState.HALF_OPEN:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = True
        return True

    def release(self) -> None:
        """End a call that says nothing about the endpoint (e.g. the caller gave up)."""
        self._trial_in_flight = False

    def record_success(self) -> None:
        """The endpoint answered: close the breaker and forget past failures."""
        if self._state is not BreakerState.CLOSED:
            logger.info("Cloud circuit breaker closed: the endpoint answers again")
        self._state = BreakerState.CLOSED
        self._trial_in_flight = False
        self._until_probe = False
        self.consecutive_failures = 0

    def record_failure(self) -> None:
        """The endpoint failed: count it, and open (or re-open) the breaker when due. A breaker
        that waits for a probe keeps waiting."""
        self.consecutive_failures += 1
        self._trial_in_flight = False
        # A failure while not closed means the endpoint is still down: restart the cooldown.
        if self._state is not BreakerState.CLOSED or (
            self.consecutive_failures >= self.failure_threshold
        ):
            if self._state is BreakerState.CLOSED:
                logger.info(
                    "Cloud circuit breaker opened after %d consecutive failures; "
                    "retrying in %.1f s",
                    self.consecutive_failures,
                    self.cooldown_s,
                )
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def trip(self, *, until_probe: bool = False) -> None:
        """Open now, whatever the count: the endpoint is known to be down (it timed out or
        refused), and another endpoint can take the calls meanwhile.

        ``until_probe``: stay open until :meth:`record_success` (a health probe that sees the
        endpoint answer), with no half-open trial after the cooldown. For an endpoint that
        accepted a request and never sent a first token (a half-open link, a captive portal),
        where a trial request would make a user wait the whole deadline again.
        """
        self.consecutive_failures = max(self.consecutive_failures, self.failure_threshold)
        self._trial_in_flight = False
        if until_probe and not self._until_probe:
            logger.info("Cloud circuit breaker opened until a health probe sees the endpoint")
        elif self._state is BreakerState.CLOSED:
            logger.info("Cloud circuit breaker opened; retrying in %.1f s", self.cooldown_s)
        self._until_probe = self._until_probe or until_probe
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()

    def seconds_until_retry(self) -> float:
        """How long until a trial call is allowed (0 when one may be tried now; infinite while
        the breaker waits for a probe)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        if self._until_probe:
            return math.inf
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def _cooldown_over(self) -> bool:
        return self._clock() - self._opened_at >= self.cooldown_s
