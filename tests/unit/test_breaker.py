"""The circuit breaker's state machine, stepped with a fake clock."""

from __future__ import annotations

import pytest

from tandem.cloud.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, so that mypy does not narrow the property across the state changes under test.
    return breaker.state


def make(threshold: int = 3, cooldown_s: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(threshold, cooldown_s, clock=clock), clock


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make(threshold=3)
    for _ in range(2):
        assert breaker.try_acquire()
        breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.available
    assert not breaker.try_acquire()
    assert breaker.consecutive_failures == 3


def test_success_resets_the_failure_count() -> None:
    breaker, _ = make(threshold=2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 1


def test_half_open_after_cooldown_allows_exactly_one_trial() -> None:
    breaker, clock = make(threshold=1, cooldown_s=10.0)
    breaker.record_failure()
    clock.now += 9.9
    assert state(breaker) is BreakerState.OPEN
    assert breaker.seconds_until_retry() == pytest.approx(0.1)
    clock.now += 0.1
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.try_acquire()
    assert not breaker.available
    assert not breaker.try_acquire()


def test_trial_success_closes() -> None:
    breaker, clock = make(threshold=1)
    breaker.record_failure()
    clock.now += 10
    assert breaker.try_acquire()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


def test_trial_failure_reopens_for_a_full_cooldown() -> None:
    breaker, clock = make(threshold=2, cooldown_s=10.0)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 15
    assert breaker.try_acquire()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    clock.now += 9
    assert not breaker.available
    clock.now += 1
    assert breaker.available


def test_released_trial_lets_another_caller_try() -> None:
    breaker, clock = make(threshold=1)
    breaker.record_failure()
    clock.now += 10
    assert breaker.try_acquire()
    breaker.release()
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.try_acquire()


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, -1.0)


def test_a_probe_gated_trip_never_half_opens_and_only_a_success_closes_it() -> None:
    breaker, clock = make(threshold=3, cooldown_s=10.0)
    breaker.trip(until_probe=True)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.reopens_on == "probe"
    clock.now += 1000.0  # far past the cooldown: still no trial call
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.available
    assert not breaker.try_acquire()
    assert breaker.seconds_until_retry() == float("inf")
    breaker.record_failure()  # a failed probe: still waiting for a good one
    clock.now += 1000.0
    assert not breaker.available
    assert breaker.reopens_on == "probe"
    breaker.record_success()  # the probe saw the endpoint answer
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available
    assert breaker.reopens_on is None
    assert breaker.consecutive_failures == 0


def test_after_a_probe_gated_trip_closes_other_failures_use_the_cooldown_again() -> None:
    breaker, clock = make(threshold=1, cooldown_s=10.0)
    breaker.trip(until_probe=True)
    breaker.record_success()
    breaker.record_failure()
    assert breaker.reopens_on == "cooldown"
    clock.now += 10.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.try_acquire()


def test_a_plain_trip_still_half_opens_after_the_cooldown() -> None:
    breaker, clock = make(threshold=3, cooldown_s=10.0)
    breaker.trip()
    assert breaker.reopens_on == "cooldown"
    assert not breaker.available
    clock.now += 10.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.available
