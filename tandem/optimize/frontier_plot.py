"""The frontier as a PNG: size vs KL divergence and size vs accuracy, Pareto fronts marked.

matplotlib is an optional dependency (``tandem[optimize]``); it is imported only when plotting.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tandem.errors import ConfigError
from tandem.optimize.frontier import Frontier

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _label(ax: Axes, x: float, y: float, text: str, *, transform: Any = None) -> None:
    ax.annotate(
        text,
        (x, y),
        xycoords=transform if transform is not None else "data",
        xytext=(4, 4),
        textcoords="offset points",
        fontsize=7,
    )


def _size_axis(ax: Axes, frontier: Frontier) -> None:
    """Size on x; logarithmic when the sizes span more than 3× (an F32 reference would
    otherwise squeeze every quantized variant into one corner)."""
    ax.set_xlabel("model file size (MB)")
    sizes = [p.size_mb for p in frontier.points if p.size_mb > 0]
    if sizes and max(sizes) / min(sizes) > 3:
        ax.set_xscale("log")


def _plot_kld(ax: Axes, frontier: Frontier) -> None:
    """Panel (a): size vs mean KLD, the front joined by a line."""
    from matplotlib.transforms import blended_transform_factory

    _size_axis(ax, frontier)
    ax.set_ylabel("mean KL divergence (lower is better)")
    ref_name = frontier.reference_name or "the reference"
    ax.set_title(f"(a) KL divergence vs {ref_name}", fontsize=10)
    positive = [p for p in frontier.points if p.kld_mean is not None and p.kld_mean > 0]
    zero = [p for p in frontier.points if p.kld_mean == 0 and not p.is_reference]
    ref = frontier.reference
    if not positive and not zero:
        ax.text(
            0.5, 0.5, "no KL divergence measured", ha="center", va="center", transform=ax.transAxes
        )
    values = [p.kld_mean for p in positive if p.kld_mean is not None]
    log = bool(values) and max(values) / min(values) > 10
    if log:
        ax.set_yscale("log")
    else:  # on a linear axis a KLD of 0 is just a point at 0
        positive, zero = positive + zero, []
        positive.sort(key=lambda p: p.size_mb)

    ax.scatter(
        [p.size_mb for p in positive], [p.kld_mean or 0.0 for p in positive], color="tab:gray", s=25
    )
    for p in positive:
        _label(ax, p.size_mb, p.kld_mean or 0.0, p.name)
    shown = {id(p) for p in positive}
    front = [(p.size_mb, p.kld_mean or 0.0) for p in frontier.kld_front if id(p) in shown]
    if front:
        ax.plot(
            [x for x, _ in front],
            [y for _, y in front],
            "-o",
            color="tab:blue",
            markersize=6,
            zorder=3,
            label="Pareto front",
        )
    # A KLD of exactly 0 cannot sit on a log axis: draw those variants on the bottom edge.
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    for p in zero:
        ax.plot(
            [p.size_mb],
            [0.0],
            "v",
            color="tab:blue" if p.on_kld_front else "tab:gray",
            transform=edge,
            clip_on=False,
            zorder=3,
        )
        _label(ax, p.size_mb, 0.0, f"{p.name} (KLD 0)", transform=edge)
    if ref is not None and (ref.kld_mean is None or ref.kld_mean == 0):
        ax.axvline(
            ref.size_mb,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"reference {ref.name} (KLD 0)",
        )
        _label(ax, ref.size_mb, 0.02, ref.name, transform=edge)
    if not log and (positive or zero):
        ax.set_ylim(bottom=0)
    ax.margins(x=0.08)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _plot_accuracy(ax: Axes, frontier: Frontier) -> None:
    """Panel (b): size vs the main task's accuracy, the front joined by a line."""
    task = frontier.task
    _size_axis(ax, frontier)
    if task is None:
        ax.set_title("(b) task accuracy", fontsize=10)
        ax.text(
            0.5, 0.5, "no task accuracy measured", ha="center", va="center", transform=ax.transAxes
        )
        return
    ax.set_ylabel(f"{task} accuracy (%, higher is better)")
    ax.set_title(f"(b) {task} accuracy", fontsize=10)
    measured = [p for p in frontier.points if task in p.accuracy]
    ax.errorbar(
        [p.size_mb for p in measured],
        [100 * p.accuracy[task] for p in measured],
        yerr=[100 * p.accuracy_stderr.get(task, 0.0) for p in measured],
        fmt="o",
        color="tab:gray",
        markersize=5,
        capsize=2,
        zorder=2,
    )
    for p in measured:
        _label(ax, p.size_mb, 100 * p.accuracy[task], p.name)
    front = frontier.acc_front(task)
    if front:
        ax.plot(
            [p.size_mb for p in front],
            [100 * p.accuracy[task] for p in front],
            "-o",
            color="tab:green",
            markersize=6,
            zorder=3,
            label="Pareto front",
        )
    ref = frontier.reference
    if ref is not None and task in ref.accuracy:
        ax.axhline(
            100 * ref.accuracy[task],
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"reference {ref.name}",
        )
    ax.margins(x=0.08)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_frontier(frontier: Frontier, out: Path, *, subtitle: str | None = None) -> None:
    """Write a two-panel PNG: size vs mean KLD, and size vs the main task's accuracy."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
            "plotting the frontier needs matplotlib: pip install 'tandem[optimize]'",
            param="plot",
        ) from exc
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.5), layout="constrained")
    ax_kld, ax_acc = fig.subplots(1, 2)
    _plot_kld(ax_kld, frontier)
    _plot_accuracy(ax_acc, frontier)
    title = "Quality–memory frontier"
    if subtitle:
        title += f"\n{subtitle}"
    fig.suptitle(title, fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
