"""The quality–memory frontier: which quantized variants are worth shipping.

Reads the per-model JSON results written by ``tandem evaluate ... --json``, marks the variants
that no other variant beats on both size and quality (the Pareto front) for mean KL divergence
against the reference and for task accuracy, and renders them as a terminal table and a PNG.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from tandem.errors import ConfigError

__all__ = [
    "Frontier",
    "FrontierPoint",
    "build_frontier",
    "load_results",
    "pareto_front",
    "run_frontier",
    "table",
]

PREFERRED_TASKS = ("arc_easy", "piqa")
_EVALUATE_HINT = (
    "run `tandem evaluate ... --json` first, writing one result file per model variant "
    "into that directory"
)


def _num(value: object) -> float | None:
    """``value`` as a finite float, or None (for None, NaN, ±inf, bools and non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _section(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``mapping[key]`` when it is a mapping, else an empty one (null or missing sections)."""
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


def pareto_front(
    points: Sequence[tuple[float | None, float | None]], *, maximize_y: bool = False
) -> list[int]:
    """Indices of the non-dominated points, minimizing x and minimizing (or maximizing) y.

    A point is dominated only when another is no worse on both axes and strictly better on
    one, so exact duplicates are both kept. Points with a None or NaN coordinate are left out.
    The indices come back sorted by x (then by index).
    """
    sign = -1.0 if maximize_y else 1.0
    valid: list[tuple[int, float, float]] = []
    for i, (x, y) in enumerate(points):
        fx, fy = _num(x), _num(y)
        if fx is not None and fy is not None:
            valid.append((i, fx, sign * fy))  # after the sign flip, lower y is better
    front = [
        (x, i)
        for i, x, y in valid
        if not any(xo <= x and yo <= y and (xo < x or yo < y) for j, xo, yo in valid if j != i)
    ]
    return [i for _, i in sorted(front)]


@dataclass
class FrontierPoint:
    """One evaluated model variant, flattened for the table, the plot and the JSON."""

    name: str
    path: str | None
    size_mb: float
    bits_per_weight: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    same_top: float | None = None
    ppl: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    accuracy_stderr: dict[str, float] = field(default_factory=dict)
    decode_tps: float | None = None
    prefill_tps: float | None = None
    peak_rss_mb: float | None = None
    is_reference: bool = False
    on_kld_front: bool = False
    on_acc_front: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> FrontierPoint:
        """Flatten one ``tandem evaluate`` result; missing or null sections become None."""
        model = _section(result, "model")
        size_bytes = _num(model.get("size_bytes"))
        path = model.get("path")
        name = model.get("name") or (Path(path).stem if isinstance(path, str) else None)
        if size_bytes is None or not name:
            raise ConfigError(
                "an evaluation result lacks model.size_bytes or a model name/path; "
                f"{_EVALUATE_HINT}",
                param="results",
            )
        kld = _section(result, "kld")
        accuracy: dict[str, float] = {}
        stderr: dict[str, float] = {}
        for task, scores in _section(result, "tasks").items():
            if not isinstance(scores, Mapping):
                continue
            acc = _num(scores.get("acc"))
            if acc is not None:
                accuracy[str(task)] = acc
                err = _num(scores.get("stderr"))
                if err is not None:
                    stderr[str(task)] = err
        speed = _section(result, "speed")
        return cls(
            name=str(name),
            path=path if isinstance(path, str) else None,
            size_mb=size_bytes / 1e6,
            bits_per_weight=_num(model.get("bits_per_weight")),
            kld_mean=_num(kld.get("mean")),
            kld_p99=_num(kld.get("p99")),
            same_top=_num(kld.get("same_top")),
            ppl=_num(_section(result, "perplexity").get("ppl")),
            accuracy=accuracy,
            accuracy_stderr=stderr,
            decode_tps=_num(speed.get("decode_tps")),
            prefill_tps=_num(speed.get("prefill_tps")),
            peak_rss_mb=_num(_section(result, "memory").get("peak_rss_mb")),
            is_reference=result.get("is_reference") is True,
        )


@dataclass
class Frontier:
    """The evaluated variants sorted by size, with their Pareto-front flags."""

    points: list[FrontierPoint]
    reference: FrontierPoint | None
    reference_name: str | None
    task: str | None  # the main task: the accuracy panel of the plot
    tasks: list[str]  # every task measured on at least one variant

    @property
    def kld_front(self) -> list[FrontierPoint]:
        """The size–KLD Pareto front, smallest first."""
        return [p for p in self.points if p.on_kld_front]

    def acc_front(self, task: str) -> list[FrontierPoint]:
        """The size–accuracy Pareto front for ``task``, smallest first."""
        return [p for p in self.points if p.on_acc_front.get(task, False)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``tandem frontier --json``."""
        return {
            "reference": self.reference_name,
            "reference_note": (
                f"KL divergence is measured against {self.reference_name}"
                if self.reference_name
                else "no reference recorded: KL divergence values are not comparable"
            ),
            "task": self.task,
            "points": [asdict(p) for p in self.points],
            "kld_front": [p.name for p in self.kld_front],
            "acc_front": {t: [p.name for p in self.acc_front(t)] for t in self.tasks},
        }


def _reference_name(results: Sequence[Mapping[str, Any]], ref: FrontierPoint | None) -> str | None:
    """The one reference every KLD was measured against; raise if the results mix several."""
    seen: dict[str, str] = {}  # identity (sha256, else name) -> name
    for result in results:
        section = _section(result, "reference")
        name = section.get("name") or section.get("path")
        if not name or result.get("is_reference") is True:
            continue
        identity = section.get("sha256") or name
        seen.setdefault(str(identity), str(name))
    if len(seen) > 1:
        raise ConfigError(
            "these results were measured against different references "
            f"({', '.join(sorted(seen.values()))}), so their KL divergences are not comparable; "
            "evaluate every variant against the same reference",
            param="results",
        )
    if ref is not None:
        return ref.name
    return next(iter(seen.values()), None)


def _main_task(points: Sequence[FrontierPoint], tasks: Sequence[str]) -> str | None:
    """Prefer a task every variant has (arc_easy, piqa, then by name); else the most common."""
    if not tasks:
        return None

    def rank(task: str) -> tuple[int, int, str]:
        count = sum(task in p.accuracy for p in points)
        preferred = PREFERRED_TASKS.index(task) if task in PREFERRED_TASKS else len(PREFERRED_TASKS)
        return (-count, preferred, task)

    return min(tasks, key=rank)


def build_frontier(results: Sequence[Mapping[str, Any]], *, task: str | None = None) -> Frontier:
    """Flatten ``results`` and mark the size–KLD and size–accuracy Pareto fronts.

    ``task`` picks the main task (the plot's accuracy panel); by default the first of
    arc_easy, piqa present in every result, else another task present in every result, else
    the most widely measured one. A reference without a measured KLD is kept as a point but
    left out of the KLD front (its KLD is 0 by definition).
    """
    points = sorted(
        (FrontierPoint.from_result(r) for r in results), key=lambda p: (p.size_mb, p.name)
    )
    reference = next((p for p in points if p.is_reference), None)
    reference_name = _reference_name(results, reference)

    kld_coords = [(p.size_mb, p.kld_mean) for p in points]
    for i in pareto_front(kld_coords):
        points[i].on_kld_front = True

    tasks = sorted({t for p in points for t in p.accuracy})
    for name in tasks:
        acc_coords = [(p.size_mb, p.accuracy.get(name)) for p in points]
        front = set(pareto_front(acc_coords, maximize_y=True))
        for i, p in enumerate(points):
            p.on_acc_front[name] = i in front

    if task is not None and task not in tasks:
        measured = ", ".join(tasks) or "none"
        raise ConfigError(
            f"no result has an accuracy for task {task!r} (measured: {measured})", param="task"
        )
    main = task if task is not None else _main_task(points, tasks)
    return Frontier(points, reference, reference_name, main, tasks)


def _is_result(data: object) -> bool:
    """Whether ``data`` has the shape of a ``tandem evaluate`` result."""
    if not isinstance(data, dict):
        return False
    model = data.get("model")
    return isinstance(model, dict) and _num(model.get("size_bytes")) is not None


def load_results(directory: Path) -> list[dict[str, Any]]:
    """Every evaluation result (``*.json`` with ``model.size_bytes``) in ``directory``, by name.

    Other JSON files, and files that are not JSON at all, are skipped silently.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"results directory {directory} does not exist (or is not a directory); "
            f"{_EVALUATE_HINT}",
            param="directory",
        )
    results: list[dict[str, Any]] = []
    for file in sorted(directory.glob("*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if _is_result(data):
            results.append(data)
    if not results:
        raise ConfigError(
            f"no evaluation results (*.json files with a model section) in {directory}; "
            f"{_EVALUATE_HINT}",
            param="directory",
        )
    return results


def _fmt(value: float | None, spec: str, *, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def _fmt_kld(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if value == 0 or value >= 1e-3 else f"{value:.2e}"


def table(frontier: Frontier) -> Table:
    """The frontier as a rich table: one row per variant, smallest first.

    "★" marks a variant on the size–KLD front or the main task's size–accuracy front (and
    follows each metric on whose front it sits); "ref" marks the reference.
    """
    ref = f" — KLD vs {frontier.reference_name}" if frontier.reference_name else ""
    main = frontier.task
    caption = "★ on the size–KLD" + (f" or size–{main} accuracy" if main else "") + " Pareto front"
    out = Table(title=f"Quality–memory frontier{ref}", caption=caption)
    out.add_column("", no_wrap=True)
    out.add_column("model", no_wrap=True)
    out.add_column("size MB", justify="right")
    out.add_column("bpw", justify="right")
    out.add_column("KLD mean", justify="right")
    out.add_column("KLD p99", justify="right")
    out.add_column("same top %", justify="right")
    out.add_column("PPL", justify="right")
    for task in frontier.tasks:
        out.add_column(f"{task} %", justify="right")
    out.add_column("decode tok/s", justify="right")
    out.add_column("peak RSS MB", justify="right")

    for p in frontier.points:
        starred = p.on_kld_front or (main is not None and p.on_acc_front.get(main, False))
        mark = ("ref" if p.is_reference else "") + ("★" if starred else "")
        kld = _fmt_kld(p.kld_mean) + (" ★" if p.on_kld_front else "")
        if p.is_reference and p.kld_mean is None:
            kld = "0 (ref)"
        accs = [
            _fmt(p.accuracy.get(t), ".1f", scale=100) + (" ★" if p.on_acc_front.get(t) else "")
            for t in frontier.tasks
        ]
        out.add_row(
            mark,
            p.name,
            _fmt(p.size_mb, ".1f"),
            _fmt(p.bits_per_weight, ".2f"),
            kld,
            _fmt_kld(p.kld_p99),
            _fmt(p.same_top, ".1f", scale=100),
            _fmt(p.ppl, ".2f"),
            *accs,
            _fmt(p.decode_tps, ".1f"),
            _fmt(p.peak_rss_mb, ".0f"),
            style="bold" if p.is_reference else None,
        )
    return out


def run_frontier(
    directory: Path,
    ref: Path | None,
    options: Any,
    *,
    plot: Path | None = None,
    out: Path | None = None,
    progress: Any = None,
) -> tuple[Frontier, dict[str, Any]]:
    """Evaluate every GGUF in ``directory`` (cached) and the reference; build, save, plot."""
    from tandem.optimize.evaluate import evaluate
    from tandem.optimize.frontier_plot import plot_frontier
    from tandem.optimize.gguf_io import summarize

    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a folder of GGUF files.")
    paths = sorted(directory.glob("*.gguf"))
    if not paths:
        raise ConfigError(f"No .gguf files in {directory}; make variants with `tandem quantize`.")
    if ref is None:
        floats = [p for p in paths if summarize(p).file_type == "ALL_F32"]
        if len(floats) != 1:
            raise ConfigError("Pass --ref: the folder does not hold exactly one F32 model "
                              f"({len(floats)} found).", param="ref")
        ref = floats[0]
    if ref.resolve() not in {p.resolve() for p in paths}:
        paths.append(ref)
    results = evaluate(paths, options, reference=ref, progress=progress)
    front = build_frontier(results)
    data = {**front.to_dict(), "reference_path": str(ref),
            "options": {"chunks": options.chunks, "items": options.items,
                        "n_ctx": options.n_ctx, "tasks": list(options.tasks)},
            "results": results}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2))
    if plot is not None:
        plot_frontier(front, plot, subtitle=f"KLD vs {ref.name}")
    return front, data
