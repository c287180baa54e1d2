"""Fixtures for tests against the real bundled models and the real stand-in cloud server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.cloud.standin import StandinCloud
from tandem.settings import load_settings

_HERE = Path(__file__).parent

# Tests of the cloud path's mechanics (streaming, faults, breakers, fallbacks) run against the
# light Gemma-3-270M stand-in: the same llama_cpp.server, about five times faster than the
# shipped Qwen2.5-Coder-1.5B one. Tests of answer quality and routing name the shipped model
# themselves (SHIPPED_STANDIN).
MECHANICS_STANDIN = "gemma3-270m"
SHIPPED_STANDIN = "qwen2.5-coder-1.5b"
os.environ.setdefault("TANDEM_STANDIN_MODEL", MECHANICS_STANDIN)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``integration`` (so ``-m "not integration"`` skips it)."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def standin_cloud() -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT/v1``) of a stand-in cloud shared by the session."""
    with StandinCloud.from_settings(load_settings(), port=0) as cloud:
        yield cloud.base_url
