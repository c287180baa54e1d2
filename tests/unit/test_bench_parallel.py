"""``tandem bench parallel``'s HTTP runs: the two servers take turns, and the ratio pairs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench import parallel
from tandem.settings import Settings


def _row(runtime: str, slots: int, streams: int, tokens_per_s: float) -> dict[str, Any]:
    return {"runtime": runtime, "slots": slots, "streams": streams, "tokens_per_s": tokens_per_s}


def _engine(slots: int, streams: int, tokens_per_s: float) -> dict[str, Any]:
    return {"slots": slots, "streams": streams, "tokens_per_s": tokens_per_s,
            "ttft": {"p50_ms": 40.0, "p99_ms": 120.0}}


def test_at_four_slots_the_servers_run_in_the_order_a_b_b_a(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    order: list[tuple[str, int, str]] = []

    def server(*args: Any, flash: str = "off") -> list[dict[str, Any]]:
        order.append(("llama-server", args[-1], flash))
        return []

    def gateway(*args: Any) -> list[dict[str, Any]]:
        order.append(("tandem serve", args[-1], "off"))
        return []

    monkeypatch.setattr(parallel, "_server_run", server)
    monkeypatch.setattr(parallel, "_gateway_run", gateway)
    conf = {"http_slots": [1, 4]}
    parallel._http_runs(Settings(_env_file=None), tmp_path / "m.gguf", conf, tmp_path, Console())
    assert order == [
        ("llama-server", 1, "off"), ("tandem serve", 1, "off"),
        ("llama-server", 4, "off"), ("tandem serve", 4, "off"),
        ("tandem serve", 4, "off"), ("llama-server", 4, "off"),
        ("llama-server", 4, "auto"),
    ]


def test_the_gateway_ratio_is_the_mean_of_each_servers_runs() -> None:
    engine = [_engine(1, 1, 100.0), _engine(4, 4, 150.0), _engine(1, 1, 120.0)]
    http = [
        _row("llama-server", 4, 1, 90.0),
        _row("llama-server", 4, 4, 200.0), _row("tandem serve", 4, 4, 190.0),
        _row("tandem serve", 4, 4, 170.0), _row("llama-server", 4, 4, 160.0),
        _row("llama-server -fa auto", 4, 4, 400.0),
    ]
    checks = parallel._checks(engine, http)
    assert checks["gateway_vs_llama_server_4_streams"] == round(180.0 / 180.0, 3)
    assert checks["engine_vs_llama_server_4_streams"] == round(150.0 / 180.0, 3)
    assert checks["aggregate_4_streams_vs_1"] == round(150.0 / 110.0, 3)
    assert checks["ttft_p99_4_vs_p50_1"] == 3.0


def test_without_a_gateway_run_there_is_no_gateway_ratio() -> None:
    engine = [_engine(1, 1, 100.0), _engine(4, 4, 150.0)]
    checks = parallel._checks(engine, [_row("llama-server", 4, 4, 200.0)])
    assert "gateway_vs_llama_server_4_streams" not in checks
    assert checks["engine_vs_llama_server_4_streams"] == 0.75
