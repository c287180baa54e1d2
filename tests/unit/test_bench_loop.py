"""The event-loop scenario's arithmetic: quantiles from histogram bucket deltas."""

from __future__ import annotations

import math

import pytest

from bench.load_loop import histogram_quantile, lag_summary


def _scrape(counts: dict[float, float], total_s: float) -> dict[str, object]:
    return {"buckets": counts, "count": counts[math.inf], "sum": total_s, "trimmed": 0.0}


def test_quantiles_come_from_the_deltas_between_scrapes() -> None:
    before = _scrape({0.001: 100, 0.005: 100, 0.025: 100, math.inf: 100}, 0.05)
    # Then 100 probes: 90 under 1 ms, 8 in (1, 5] ms, 2 in (5, 25] ms.
    after = _scrape({0.001: 190, 0.005: 198, 0.025: 200, math.inf: 200}, 0.15)
    s = lag_summary(before, after)
    assert s["probes"] == 100
    assert s["p50_ms"] == pytest.approx(1000 * 0.001 * 50 / 90)
    assert s["p99_ms"] == pytest.approx(5 + 20 * 0.5)  # halfway into the (5, 25] bucket
    assert s["p99_bucket_upper_ms"] == pytest.approx(25)
    assert s["over_5ms"] == 2 and s["over_25ms"] == 0
    assert s["mean_ms"] == pytest.approx(1.0)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, {0.5: 1, 1.0: 1, math.inf: 10}) == 1.0
    assert histogram_quantile(0.5, {0.5: 0, math.inf: 0}) is None
    assert lag_summary(_scrape({math.inf: 0}, 0), {"buckets": {}})["exposed"] is False
