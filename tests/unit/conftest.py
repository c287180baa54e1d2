from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tandem.cloud.client import CloudClient
from tandem.gateway import Gateway
from tandem.metrics import GatewayMetrics
from tandem.server import create_app
from tandem.settings import Settings
from tests.unit.fakes import FakeEngine, cloud_transport


class CloudSwitch:
    """Flip ``down`` to make the fake cloud answer 500."""

    down = False


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def cloud_switch() -> CloudSwitch:
    return CloudSwitch()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        max_body_bytes=4096,
        max_tokens_limit=100,
        cloud_n_ctx=128,
        sessions_db=tmp_path / "sessions.db",
    )


@pytest.fixture
def gateway(engine: FakeEngine, cloud_switch: CloudSwitch, settings: Settings) -> Gateway:
    transport = cloud_transport(fail=lambda: cloud_switch.down)
    cloud = CloudClient.from_settings(settings, "http://cloud.test/v1", transport=transport)
    return Gateway(engine, cloud, GatewayMetrics(lambda: engine.queue_depth), settings.cloud_n_ctx)


@pytest.fixture
def client(gateway: Gateway, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, gateway)) as c:
        yield c
