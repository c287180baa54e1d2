"""A real `tandem serve` process for integration tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tandem.net import free_port


@dataclass
class GatewayServer:
    url: str  # the OpenAI base URL, http://127.0.0.1:PORT/v1
    proc: subprocess.Popen[bytes]
    sessions_db: Path
    log: Path


@contextmanager
def gateway_server(
    cloud_url: str | None, preexec_fn: Callable[[], None] | None = None, **env: str
) -> Iterator[GatewayServer]:
    """Start `python -m tandem serve` (sessions in a fresh temporary database unless
    TANDEM_SESSIONS_DB is given) and yield it once the local model is ready. ``preexec_fn``
    runs in the child before it starts (e.g. to set resource limits)."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp())
    log = workdir / "gateway.log"
    db = Path(env.get("TANDEM_SESSIONS_DB", workdir / "sessions.db"))
    cmd = [sys.executable, "-m", "tandem", "serve", "--port", str(port), "--no-standin"]
    if cloud_url:
        cmd += ["--cloud-url", cloud_url]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TANDEM_N_THREADS": "2", "TANDEM_SESSIONS_DB": str(db), **env},
            preexec_fn=preexec_fn,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, log)
        yield GatewayServer(f"{base}/v1", proc, db, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def gateway_process(cloud_url: str | None, **env: str) -> Iterator[str]:
    """Start `python -m tandem serve` and yield its base URL once the local model is ready."""
    with gateway_server(cloud_url, **env) as server:
        yield server.url


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz").json()["local"]["state"] == "ready":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not become ready: {log.read_text()[-2000:]}")
