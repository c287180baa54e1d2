"""Fixtures for the tests against a real vLLM server as the cloud tier (``make test-vllm``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.cloud.vllm import VllmCloud

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``vllm`` and ``integration``."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.vllm)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def vllm_cloud() -> Iterator[VllmCloud]:
    """A vLLM server (SmolLM2 exported to a checkpoint) shared by the session, on loopback."""
    with VllmCloud("smollm2", n_ctx=4096) as cloud:
        yield cloud
