"""What the command groups share: naming a model file, and a progress bar per phase."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tandem.errors import ConfigError


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
