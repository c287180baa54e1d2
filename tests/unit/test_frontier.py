from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tandem.errors import ConfigError
from tandem.optimize.frontier import (
    Frontier,
    build_frontier,
    load_results,
    pareto_front,
    table,
)
from tandem.optimize.frontier_plot import plot_frontier

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def result(
    name: str,
    size_mb: float,
    *,
    kld: float | None = None,
    acc: dict[str, float] | None = None,
    is_reference: bool = False,
    reference: str = "ref-f32",
) -> dict[str, Any]:
    """A result in the shape ``tandem evaluate --json`` writes."""
    kld_section = None
    if kld is not None:
        kld_section = {"mean": kld, "median": kld / 3, "p99": kld * 10, "same_top": 0.93}
    return {
        "model": {
            "path": f"/x/{name}.gguf",
            "name": name,
            "sha256": "0" * 64,
            "size_bytes": int(size_mb * 1e6),
            "bits_per_weight": 32.0 if is_reference else 4.5,
            "n_params": 134515008,
            "file_type": "MOSTLY_Q4_0",
            "type_counts": {"Q4_0": 210, "F32": 61},
        },
        "reference": {"path": f"/x/{reference}.gguf", "name": reference, "sha256": reference},
        "is_reference": is_reference,
        "perplexity": {"ppl": 18.2, "stderr": 0.2, "n_chunks": 40, "n_ctx": 512},
        "kld": kld_section,
        "tasks": {t: {"acc": a, "stderr": 0.014, "n": 1000} for t, a in (acc or {}).items()},
        "memory": {"peak_rss_mb": 210.0, "n_ctx": 512},
        "speed": {"prefill_tps": 1500.0, "decode_tps": 120.0},
        "limit": None,
    }


def sample_results() -> list[dict[str, Any]]:
    return [
        result("ref-f32", 538, acc={"arc_easy": 0.50, "piqa": 0.62}, is_reference=True),
        result("q8_0", 145, kld=0.002, acc={"arc_easy": 0.50, "piqa": 0.61}),
        result("q4_0", 85, kld=0.03, acc={"arc_easy": 0.49, "piqa": 0.60}),
        # Bigger and worse than q4_0 on both axes: dominated.
        result("q4_bad", 90, kld=0.05, acc={"arc_easy": 0.45, "piqa": 0.55}),
        result("q2_k", 60, kld=0.4, acc={"arc_easy": 0.40, "piqa": 0.58}),
    ]


# --- pareto_front ------------------------------------------------------------------------------


def test_pareto_excludes_dominated_point_and_sorts_by_x() -> None:
    points = [(10.0, 0.1), (5.0, 0.5), (12.0, 0.3), (1.0, 2.0)]
    # (12, 0.3) is beaten by (10, 0.1) on both axes.
    assert pareto_front(points) == [3, 1, 0]


def test_pareto_ties_keep_duplicates_but_drop_weakly_dominated() -> None:
    # Identical points: neither strictly better, both stay.
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]
    # Same size, worse y: dominated (equal on x, strictly worse on y).
    assert pareto_front([(1.0, 1.0), (1.0, 2.0)]) == [0]
    # Same y, bigger: dominated.
    assert pareto_front([(1.0, 1.0), (2.0, 1.0)]) == [0]


def test_pareto_maximize_flips_the_y_direction() -> None:
    points = [(1.0, 0.4), (2.0, 0.6), (3.0, 0.5)]
    assert pareto_front(points, maximize_y=False) == [0]
    assert pareto_front(points, maximize_y=True) == [0, 1]


def test_pareto_excludes_nan_and_none() -> None:
    points: list[tuple[float | None, float | None]] = [
        (math.nan, 0.0),  # would dominate everything if it counted
        (0.5, None),
        (None, 0.1),
        (2.0, 1.0),
        (3.0, math.inf),
    ]
    assert pareto_front(points) == [3]
    assert pareto_front([]) == []


# --- build_frontier ----------------------------------------------------------------------------


def test_build_frontier_flags_and_reference() -> None:
    frontier = build_frontier(sample_results())
    names = [p.name for p in frontier.points]
    assert names == ["q2_k", "q4_0", "q4_bad", "q8_0", "ref-f32"]  # sorted by size
    assert frontier.reference is not None and frontier.reference.name == "ref-f32"
    assert frontier.task == "arc_easy"
    by_name = {p.name: p for p in frontier.points}
    assert by_name["q4_0"].size_mb == pytest.approx(85.0)
    assert by_name["q4_0"].kld_p99 == pytest.approx(0.3)
    assert by_name["q4_0"].accuracy == {"arc_easy": 0.49, "piqa": 0.60}

    # The reference has no KLD: kept as a point, left out of the KLD front.
    assert by_name["ref-f32"].kld_mean is None
    assert not by_name["ref-f32"].on_kld_front
    assert [p.name for p in frontier.kld_front] == ["q2_k", "q4_0", "q8_0"]
    assert not by_name["q4_bad"].on_kld_front

    # Accuracy front: q8_0 ties the reference on arc_easy while being smaller.
    assert [p.name for p in frontier.acc_front("arc_easy")] == ["q2_k", "q4_0", "q8_0"]
    assert by_name["ref-f32"].on_acc_front == {"arc_easy": False, "piqa": True}
    assert by_name["q4_bad"].on_acc_front == {"arc_easy": False, "piqa": False}

    data = frontier.to_dict()
    json.dumps(data)  # serializable
    assert data["reference"] == "ref-f32"
    assert data["reference_note"] == "KL divergence is measured against ref-f32"
    assert data["kld_front"] == ["q2_k", "q4_0", "q8_0"]
    assert data["acc_front"]["piqa"] == ["q2_k", "q4_0", "q8_0", "ref-f32"]
    assert len(data["points"]) == 5
    assert data["points"][0]["name"] == "q2_k"


def test_build_frontier_task_choice() -> None:
    results = [
        result("a", 10, kld=0.1, acc={"piqa": 0.6, "hellaswag": 0.3}),
        result("b", 20, kld=0.05, acc={"piqa": 0.65, "arc_easy": 0.5}),
    ]
    # arc_easy is not in every result; piqa is.
    assert build_frontier(results).task == "piqa"
    assert build_frontier(results, task="hellaswag").task == "hellaswag"
    with pytest.raises(ConfigError, match="winogrande"):
        build_frontier(results, task="winogrande")
    assert build_frontier([result("c", 5, kld=0.1)]).task is None


def test_build_frontier_without_reference_point_uses_recorded_reference_name() -> None:
    frontier = build_frontier([result("q4_0", 85, kld=0.03)])
    assert frontier.reference is None
    assert frontier.to_dict()["reference"] == "ref-f32"
    assert frontier.points[0].on_kld_front


def test_build_frontier_rejects_mixed_references() -> None:
    results = [result("a", 10, kld=0.1), result("b", 20, kld=0.05, reference="other-f16")]
    with pytest.raises(ConfigError, match="different references"):
        build_frontier(results)


# --- load_results ------------------------------------------------------------------------------


def test_load_results_skips_other_json(tmp_path: Path) -> None:
    for r in sample_results()[:2]:
        (tmp_path / f"{r['model']['name']}.json").write_text(json.dumps(r))
    (tmp_path / "settings.json").write_text(json.dumps({"model": {"name": "no size"}}))
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text(json.dumps(sample_results()[2]))
    loaded = load_results(tmp_path)
    assert sorted(r["model"]["name"] for r in loaded) == ["q8_0", "ref-f32"]


def test_load_results_raises_on_empty_or_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tandem evaluate"):
        load_results(tmp_path)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="no evaluation results"):
        load_results(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_results(tmp_path / "missing")


# --- table and plot ----------------------------------------------------------------------------


def render(frontier: Frontier) -> str:
    console = Console(width=250, record=True, color_system=None)
    console.print(table(frontier))
    return console.export_text()


def test_table_has_a_row_per_point_with_markers() -> None:
    frontier = build_frontier(sample_results())
    tbl = table(frontier)
    assert tbl.row_count == len(frontier.points) == 5
    headers = [str(c.header) for c in tbl.columns]
    assert "arc_easy %" in headers and "piqa %" in headers
    marks = list(tbl.columns[0].cells)
    names = list(tbl.columns[1].cells)
    assert dict(zip(names, marks, strict=True)) == {
        "q2_k": "★",
        "q4_0": "★",
        "q4_bad": "",
        "q8_0": "★",
        "ref-f32": "ref",
    }
    text = render(frontier)
    assert "q4_bad" in text and "0 (ref)" in text


def test_plot_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "frontier.png"
    plot_frontier(build_frontier(sample_results()), out, subtitle="KLD vs ref-f32 (dequantized)")
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 20_000


def test_plot_handles_missing_metrics_and_zero_kld(tmp_path: Path) -> None:
    results = [
        result("only-size", 50),
        result("lossless", 100, kld=0.0),
        result("q4", 80, kld=0.03),
    ]
    out = tmp_path / "frontier.png"
    plot_frontier(build_frontier(results), out)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
