"""What the command groups share: the console, the one-line report of Tandem's own errors,
naming a model file, and a progress bar per phase. ``tandem.cli`` and the optional
``bench.cli`` both import from here, so neither imports the other's module."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tandem.errors import ConfigError, TandemError

console = Console()


@contextlib.contextmanager
def clear_errors() -> Iterator[None]:
    """Report Tandem's own errors (bad settings, unusable files) as one line, not a traceback."""
    try:
        yield
    except TandemError as exc:
        console.print(f"[red]error:[/red] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from None


def model_file(spec: str) -> Path:
    """A bundled model's file, or the GGUF file at ``spec``; a clear error otherwise."""
    from tandem.catalog import BUNDLED, bundled_path

    if spec in BUNDLED:
        return bundled_path(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"No model {spec!r}: not a file, and not a bundled model "
                          f"({', '.join(sorted(BUNDLED))}).")
    return path


@contextlib.contextmanager
def progress_bar(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar with one row per phase label."""
    rows: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        def update(label: str, done: int, total: int) -> None:
            if label not in rows:
                rows[label] = bar.add_task(label, total=total)
            bar.update(rows[label], completed=done, total=total)

        yield update
