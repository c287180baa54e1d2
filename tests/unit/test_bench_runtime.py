"""``tandem bench runtime``'s ratios: paired by round, and the gateway's decode target."""

from __future__ import annotations

from typing import Any

import pytest

from bench.runtime import DECODE_TARGET, _checks, _ratios


def _mode(decode: float) -> dict[str, Any]:
    return {"decode_tok_s": decode, "prefill_tok_s": 2 * decode, "ttft_ms": 40.0,
            "cold_start_s": 1.0, "peak_rss_mib": 300.0}


def _rounds(bare: list[float], http: list[float], server: list[float] | None) -> dict[str, Any]:
    rounds: dict[str, Any] = {
        "bare": [_mode(d) for d in bare],
        "engine": [{**_mode(d), "conversation": {"prefill_over_new": 1.0}} for d in bare],
        "http": [_mode(d) for d in http],
    }
    if server is not None:
        rounds["llama_server"] = [_mode(d) for d in server]
    return rounds


def test_each_round_is_compared_with_bare_of_the_same_round() -> None:
    # A machine twice as fast in round 2: pairing by round keeps the ratio, pooling would not.
    ratios = _ratios(_rounds([100.0, 200.0, 100.0], [90.0, 180.0, 95.0], [95.0, 190.0, 90.0]))
    assert ratios["http"]["decode_vs_bare"] == pytest.approx(0.90)
    assert ratios["llama_server"]["decode_vs_bare"] == pytest.approx(0.95)
    assert ratios["http_vs_llama_server"]["decode_per_round"] == [
        round(90 / 95, 4), round(180 / 190, 4), round(95 / 90, 4)
    ]
    assert ratios["http_vs_llama_server"]["decode"] == pytest.approx(180 / 190)


def test_the_gateway_check_says_how_far_it_is_from_its_target() -> None:
    below = _checks(_ratios(_rounds([100.0], [90.0], [92.0])))["http_decode_vs_bare"]
    assert below == {"target": DECODE_TARGET, "value": 0.9, "passed": False,
                     "llama_server_vs_bare": 0.92}
    above = _checks(_ratios(_rounds([100.0], [95.0], None)))["http_decode_vs_bare"]
    assert above["passed"] and above["llama_server_vs_bare"] is None
    assert "llama_server" not in _ratios(_rounds([100.0], [95.0], None))
