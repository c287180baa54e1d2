"""``tandem bench faults``: the fault matrix, longer than the tests, with numbers.

The gateway runs in process with the real local model; its cloud tier goes through the
fault-injecting proxy (``bench.faultproxy``) to the real stand-in cloud. For each fault, the same
sequence of requests (cloud-routed and auto, streaming and not, fallback allowed) is sent and
measured: how many were answered completely, by which tier and why, how long they took against
the healthy baseline measured first in the same run, and how many ended with an explicit error.
A request that does not end (no finish and no error) counts as a silent truncation: the target
is zero.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console

from bench.faultproxy import Fault, FaultProxy
from tandem.settings import Settings

FAULTS: dict[str, Fault | None] = {
    "healthy": None,
    "latency_200ms": Fault(latency_s=0.2, jitter_s=0.1),
    "bandwidth_4kBps": Fault(bandwidth_bps=4000),
    "refused": Fault(refuse=True),
    "black_hole": Fault(blackhole=True),
    "cut_after_900B": Fault(cut_after_bytes=900),
    "http_500": Fault(http_status=500),
    "http_429": Fault(http_status=429),
    "http_503": Fault(http_status=503),
    "flapping_1s": Fault(flap_period_s=1.0),
}
DEADLINE_S = 15.0


def _outcome(r: Any, stream: bool) -> dict[str, Any]:
    if r.status_code != 200:
        return {"status": r.status_code, "ok": False, "error": r.json()["error"]["code"]}
    if not stream:
        body = r.json()
        return {
            "status": 200,
            "ok": True,
            "route": body["tandem"]["route"],
            "reason": body["tandem"]["reason"],
        }
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
    done = r.text.rstrip().endswith("data: [DONE]")
    last = events[-1] if events else {}
    if "error" in last:
        return {"status": 200, "ok": False, "error": last["error"]["code"]}
    finished = bool(last.get("choices")) and last["choices"][0].get("finish_reason") is not None
    if not (done and finished):
        return {"status": 200, "ok": False, "error": "silent_truncation"}
    return {
        "status": 200,
        "ok": True,
        "route": last["tandem"]["route"],
        "reason": last["tandem"]["reason"],
    }


def _run_fault(api: Any, proxy: FaultProxy, fault: Fault | None, n: int) -> dict[str, Any]:
    proxy.set(Fault(refuse=True))  # drop kept-alive connections so the fault applies to all
    proxy.set(fault)
    rows = []
    for i in range(n):
        stream = i % 2 == 1
        body = {
            "messages": [{"role": "user", "content": f"Give me fact number {i} about the sea."}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": stream,
            "tandem": {"route": "cloud" if i % 3 else "auto"},
        }
        started = time.monotonic()
        r = api.post("chat/completions", json=body)
        rows.append({**_outcome(r, stream), "seconds": time.monotonic() - started})
    proxy.set(None)
    times = [row["seconds"] for row in rows]
    return {
        "requests": n,
        "answered": sum(row["ok"] for row in rows),
        "errors": dict(Counter(row["error"] for row in rows if not row["ok"])),
        "silent_truncations": sum(row.get("error") == "silent_truncation" for row in rows),
        "routes": dict(Counter(row.get("route") for row in rows if row["ok"])),
        "reasons": dict(Counter(row.get("reason") for row in rows if row["ok"])),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "over_deadline": sum(t > DEADLINE_S for t in times),
    }


def run_faults_bench(
    settings: Settings, quick: bool, out: Path, console: Console
) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from tandem.cloud.standin import standin_from_settings
    from tandem.server import create_app

    n = 6 if quick else 30
    results: dict[str, Any] = {}
    with (
        standin_from_settings(settings, port=0) as standin,
        tempfile.TemporaryDirectory() as tmp,
    ):
        url = urlparse(standin.base_url)
        assert url.hostname is not None and url.port is not None
        with FaultProxy(url.hostname, url.port) as proxy:
            gateway_settings = settings.model_copy(
                update={
                    **standin.gateway_settings(),
                    "n_ctx": 1024,
                    "keep_alive_s": None,
                    "sessions_db": Path(tmp) / "s.db",
                    "cloud_url": proxy.base_url,
                    "cloud_connect_timeout_s": 1.0,
                    "cloud_read_timeout_s": 2.0,
                    "cloud_deadline_s": DEADLINE_S,
                    "cloud_failure_threshold": 2,
                    "cloud_cooldown_s": 2.0,
                    "cloud_probe_interval_s": 0.5,
                }
            )
            app = create_app(gateway_settings)
            with TestClient(app, base_url="http://testserver/v1/") as api:
                _wait_ready(api)
                for name, fault in FAULTS.items():
                    console.print(f"[dim]{name}…[/dim]")
                    results[name] = _run_fault(api, proxy, fault, n)
                    time.sleep(2.5)  # let the breaker cool down and the probe close it
    base = results["healthy"]["median_s"]
    for r in results.values():
        r["median_vs_healthy"] = r["median_s"] / base
    result = {
        "bench": "faults",
        "quick": quick,
        "requests_per_fault": n,
        "cloud_engine": settings.standin_engine,
        "deadline_s": DEADLINE_S,
        "faults": results,
        "silent_truncations": sum(r["silent_truncations"] for r in results.values()),
        "over_deadline": sum(r["over_deadline"] for r in results.values()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result, console)
    return result


def _wait_ready(api: Any) -> None:
    deadline = time.monotonic() + 120
    while api.get("http://testserver/healthz").json()["local"]["state"] != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("the local model did not load")
        time.sleep(0.2)


def _print(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"faults ({result['requests_per_fault']} requests each)")
    for col in ("fault", "answered", "routes", "errors", "median s", "× healthy", "max s"):
        table.add_column(col)
    for name, r in result["faults"].items():
        table.add_row(
            name,
            f"{r['answered']}/{r['requests']}",
            " ".join(f"{k}:{v}" for k, v in r["routes"].items()),
            " ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "-",
            f"{r['median_s']:.2f}",
            f"{r['median_vs_healthy']:.2f}",
            f"{r['max_s']:.2f}",
        )
    console.print(table)
    console.print(
        f"silent truncations: {result['silent_truncations']}; requests over the "
        f"{result['deadline_s']} s deadline: {result['over_deadline']}"
    )
