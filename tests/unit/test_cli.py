"""The CLI reports Tandem's own errors as one clear line and a non-zero exit."""

from __future__ import annotations

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
