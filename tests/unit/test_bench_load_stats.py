"""``tandem bench load``'s local-only check: p99 TTFT at 4 clients against the 1-client median."""

from __future__ import annotations

from typing import Any

from bench.load_stats import checks


def _level(p50: float, p99: float, tokens_per_s: float) -> dict[str, Any]:
    local = {"ttft_ms": {"p50": p50, "p95": p99, "p99": p99}, "total_ms": {"p50": 100.0},
             "tokens_per_s": tokens_per_s}
    cloud = {"ttft_ms": {"p50": 50.0, "p95": 50.0, "p99": 50.0}, "total_ms": {"p50": 100.0}}
    return {"routes": {"local": local, "cloud": cloud}, "unexpected_5xx": 0}


def _local_only(p99_at_4: float) -> dict[str, Any]:
    levels = {1: _level(40.0, 45.0, 100.0)}
    local_only = {1: _level(40.0, 45.0, 100.0), 4: _level(60.0, p99_at_4, 180.0),
                  16: _level(300.0, 900.0, 210.0)}
    result: dict[str, Any] = checks(levels, {}, local_only, None, queue_size=8)
    return result["local_only_p99_ttft_4_clients"]


def test_a_p99_within_three_times_the_single_median_passes() -> None:
    check = _local_only(p99_at_4=110.0)
    assert check["passed"]
    assert check["p99_over_single_median"] == 110.0 / 40.0
    assert check["tokens_per_s_over_single"] == {"4": 1.8, "16": 2.1}


def test_a_p99_beyond_three_times_the_single_median_fails() -> None:
    assert not _local_only(p99_at_4=130.0)["passed"]


def test_without_local_only_levels_there_is_no_check() -> None:
    levels = {1: _level(40.0, 45.0, 100.0)}
    assert "local_only_p99_ttft_4_clients" not in checks(levels, {}, {}, None, queue_size=8)
