"""The CLI reports Tandem's own errors as one clear line and a non-zero exit, and adds the
benchmark commands exactly when the ``bench`` package is importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.cli import app


def test_serve_refuses_a_file_that_is_not_a_session_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("not a database\n" * 100)
    monkeypatch.setenv("TANDEM_SESSIONS_DB", str(bad))
    result = CliRunner().invoke(app, ["serve", "--no-standin", "--port", "1"])
    assert result.exit_code == 1
    assert "not a usable session database" in result.output
    assert "Traceback" not in result.output
    assert bad.read_text().startswith("not a database")


BENCH_REGISTERED = (
    "from tandem.cli import app\nprint(any(g.name == 'bench' for g in app.registered_groups))"
)


def _bench_registered(prelude: str) -> bool:
    """Whether ``tandem bench`` exists in a fresh interpreter after running ``prelude``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{prelude}\n{BENCH_REGISTERED}"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return out.strip().splitlines()[-1] == "True"


def test_a_checkout_has_the_bench_commands_whatever_is_imported_first() -> None:
    assert _bench_registered("")
    assert _bench_registered("import bench.cli")


def test_without_the_bench_package_there_is_no_bench_command() -> None:
    assert not _bench_registered("import sys; sys.modules['bench'] = None")
