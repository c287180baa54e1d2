"""Summaries and checks of ``tandem bench load`` (see ``bench/load.py`` for the method)."""

from __future__ import annotations

import collections
import statistics
from typing import Any

MEMORY_GROWTH_LIMIT = 0.05
LOCAL_ONLY_TTFT_LIMIT = 3.0  # p99 local TTFT at 4 local-only clients, over the 1-client p50


def _pcts_ms(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 in ms (linear interpolation between samples); None without samples."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    cuts = statistics.quantiles(
        values * 2 if len(values) == 1 else values, n=100, method="inclusive"
    )
    return {f"p{q}": 1000 * cuts[q - 1] for q in (50, 95, 99)}


def _deliberate(r: dict[str, Any]) -> bool:
    return r["status"] == 503 and r["retry_after"] is not None


def _unexpected(r: dict[str, Any]) -> bool:
    """A server-side failure: a 5xx other than a deliberate 503, an in-band error, a drop."""
    if _deliberate(r):
        return False
    return (r["status"] or 0) >= 500 or (r["error"] or "").startswith(("stream_", "exception:"))


def _route_summary(ok: list[dict[str, Any]], route: str, elapsed: float) -> dict[str, Any]:
    rs = [r for r in ok if r["route"] == route]
    ttft = [r["ttft_s"] for r in rs if r["stream"] and r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in rs)
    return {
        "completed": len(rs),
        "answered_elsewhere": sum(r["answered"] != route for r in rs),
        "ttft_ms": _pcts_ms(ttft),
        "total_ms": _pcts_ms([r["total_s"] for r in rs]),
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
    }


def summary(level: dict[str, Any]) -> dict[str, Any]:
    records, samples, elapsed = level["records"], level["samples"], level["elapsed_s"]
    ok = [r for r in records if r["status"] == 200 and r["error"] is None]
    failed = [r for r in records if r["error"] is not None and not _deliberate(r)]
    depths = [s["queue_depth"] for s in samples if s["queue_depth"] is not None]
    return {
        "clients": level["clients"],
        "elapsed_s": elapsed,
        "requests": len(records),
        "completed": len(ok),
        "throughput_req_s": len(ok) / elapsed,
        "routes": {route: _route_summary(ok, route, elapsed) for route in ("local", "cloud")},
        "rejections_503": sum(_deliberate(r) for r in records),
        "errors": dict(collections.Counter(r["error"] for r in failed)),
        "unexpected_5xx": sum(_unexpected(r) for r in records),
        "queue_depth_max": max(depths, default=None),
        "queue_depth_mean": statistics.fmean(depths) if depths else None,
        "peak_rss_mb": max(s["rss"] for s in samples) / 1e6,
    }


def memory(samples: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    window = min(60.0, elapsed / 3)
    first = [s["rss"] for s in samples if s["t_s"] <= window]
    last = [s["rss"] for s in samples if s["t_s"] >= elapsed - window]
    first_mb, last_mb = statistics.median(first) / 1e6, statistics.median(last) / 1e6
    growth = (last_mb - first_mb) / first_mb
    return {
        "window_s": window,
        "first_median_rss_mb": first_mb,
        "last_median_rss_mb": last_mb,
        "growth": growth,
        "passed": growth <= MEMORY_GROWTH_LIMIT,
    }


# -- checks -------------------------------------------------------------------------------------


def checks(
    levels: dict[int, dict[str, Any]],
    cloud_only: dict[int, dict[str, Any]],
    local_only: dict[int, dict[str, Any]],
    soak: dict[str, Any] | None,
    queue_size: int,
) -> dict[str, Any]:
    unexpected: dict[str, int] = {str(n): s["unexpected_5xx"] for n, s in levels.items()}
    if soak is not None:
        unexpected["soak"] = soak["unexpected_5xx"]
    checks = {
        "no_unexpected_5xx": {"passed": sum(unexpected.values()) == 0, "by_level": unexpected},
        "cloud_not_blocked": _cloud_check(levels, cloud_only),
        "local_p99_ttft_4_clients": _local_check(levels, queue_size),
    }
    if 1 in local_only and 4 in local_only:
        checks["local_only_p99_ttft_4_clients"] = _local_only_check(local_only)
    if soak is not None:
        checks["memory_flat"] = soak["memory"]
    return checks


def _cloud_check(
    levels: dict[int, dict[str, Any]], cloud_only: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Cloud requests are not queued behind local generation: at each mixed level, the cloud
    route's median TTFT is at most 2x that of the cloud route alone with as many clients (the
    stand-in serves one request at a time, so its own queue is in both), and well below the
    local route's median TTFT whenever local requests queue."""

    def p50(level: dict[str, Any], route: str) -> float | None:
        value: float | None = level["routes"][route]["ttft_ms"]["p50"]
        return value

    by_level = {}
    for n, level in levels.items():
        if n == 1 or n // 2 not in cloud_only:
            continue
        by_level[n] = {
            "mixed_cloud_p50_ttft_ms": p50(level, "cloud"),
            "cloud_only_p50_ttft_ms": p50(cloud_only[n // 2], "cloud"),
            "ratio_to_cloud_only": _ratio(p50(level, "cloud"), p50(cloud_only[n // 2], "cloud")),
            "mixed_local_p50_ttft_ms": p50(level, "local"),
        }
    return {
        "passed": all(
            v["ratio_to_cloud_only"] is not None and v["ratio_to_cloud_only"] <= 2.0
            for v in by_level.values()
        ),
        "by_level": by_level,
        "single_client_median_ttft_ms": p50(levels[1], "cloud"),
    }


def _local_check(levels: dict[int, dict[str, Any]], queue_size: int) -> dict[str, Any]:
    base = levels[1]["routes"]["local"]
    ttft1, total1 = base["ttft_ms"]["p50"], base["total_ms"]["p50"]
    p99 = levels[4]["routes"]["local"]["ttft_ms"]["p99"] if 4 in levels else None
    allowance = None if total1 is None else queue_size * total1
    limit = None if ttft1 is None or allowance is None else 4 * ttft1 + allowance
    return {
        "passed": p99 is not None and limit is not None and p99 <= limit,
        "p99_ttft_ms": p99,
        "single_client_median_ttft_ms": ttft1,
        "queue_allowance_ms": allowance,
        "limit_ms": limit,
        "p99_over_single_median": _ratio(p99, ttft1),
        "p99_over_limit": _ratio(p99, limit),
    }


def _local_only_check(levels: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Local requests only: p99 TTFT at 4 clients within 3x the 1-client median, and the
    aggregate local tokens/s of each level over the 1-client level."""
    local = {n: level["routes"]["local"] for n, level in levels.items()}
    ttft1, p99 = local[1]["ttft_ms"]["p50"], local[4]["ttft_ms"]["p99"]
    ratio = _ratio(p99, ttft1)
    return {
        "passed": ratio is not None and ratio <= LOCAL_ONLY_TTFT_LIMIT,
        "p99_ttft_ms": p99,
        "single_client_median_ttft_ms": ttft1,
        "p99_over_single_median": ratio,
        "limit": LOCAL_ONLY_TTFT_LIMIT,
        "tokens_per_s_over_single": {
            str(n): _ratio(s["tokens_per_s"], local[1]["tokens_per_s"])
            for n, s in local.items()
            if n > 1
        },
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b
