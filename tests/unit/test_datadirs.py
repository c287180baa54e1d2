"""Where evaluation data and result caches live: the setting, else a source checkout's data,
else an error that says how to give it."""

from __future__ import annotations

from pathlib import Path

import pytest
from platformdirs import user_cache_path
from typer.testing import CliRunner

from tandem import datadirs
from tandem.cli import app
from tandem.datadirs import cache_dir, default_data_dir
from tandem.errors import ConfigError


@pytest.fixture
def no_checkout_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As installed from a wheel: no ../shared/data, nothing configured."""
    monkeypatch.delenv("TANDEM_DATA_DIR", raising=False)
    monkeypatch.setattr(datadirs, "CHECKOUT_DATA", tmp_path / "missing")


def test_the_configured_data_dir_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_a_checkout_uses_its_shared_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_DATA_DIR", raising=False)
    monkeypatch.setattr(datadirs, "CHECKOUT_DATA", tmp_path)
    assert default_data_dir() == tmp_path


@pytest.mark.usefixtures("no_checkout_data")
def test_without_data_the_error_says_how_to_give_it() -> None:
    with pytest.raises(ConfigError, match="--data-dir") as info:
        default_data_dir()
    assert "TANDEM_DATA_DIR" in info.value.message


@pytest.mark.usefixtures("no_checkout_data")
def test_a_command_without_data_fails_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "sanity.json"
    result = CliRunner().invoke(app, ["bench", "routing-sanity", "--out", str(out)])
    assert result.exit_code == 1
    assert "--data-dir" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_caches_follow_their_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_EVAL_CACHE", str(tmp_path / "e"))
    monkeypatch.setenv("TANDEM_ROUTE_CACHE", str(tmp_path / "r"))
    assert (cache_dir("evaluate"), cache_dir("route-eval")) == (tmp_path / "e", tmp_path / "r")
    monkeypatch.delenv("TANDEM_EVAL_CACHE")
    assert cache_dir("evaluate") == user_cache_path("tandem") / "evaluate"
