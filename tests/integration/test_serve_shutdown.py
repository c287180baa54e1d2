"""`tandem serve` with its own stand-in cloud leaves no process behind, however it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tandem.net import free_port


def _standin_alive(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_stand_in_stops_with_the_gateway(sig: signal.Signals, tmp_path: Path) -> None:
    port, standin_port = free_port(), free_port()
    env = {
        **os.environ,
        "TANDEM_STANDIN_PORT": str(standin_port),
        "TANDEM_SESSIONS_DB": str(tmp_path / "s.db"),
        "TANDEM_N_THREADS": "2",
    }
    cmd = [sys.executable, "-m", "tandem", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _standin_alive(standin_port):
            assert proc.poll() is None, "the gateway exited during start-up"
            assert time.monotonic() < deadline, "the stand-in cloud did not come up"
            time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(30)
        deadline = time.monotonic() + 15
        while _standin_alive(standin_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _standin_alive(standin_port), f"the stand-in outlived a {sig.name}ed gateway"
    finally:
        if proc.poll() is None:
            proc.kill()
