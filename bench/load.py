"""``tandem bench load``: concurrent clients through a real ``tandem serve``.

A gateway process (the stand-in cloud beside it) serves N concurrent clients (1, 4, 16 and 64;
quick: 1, 4, 16) for a bounded time per level. Every client has its own HTTP connection and
loops: local, cloud, local, cloud, ... with streaming and non-streaming requests interleaved, so
each level sees a quarter of every (route, stream) pair. A 503 with ``Retry-After`` (the bounded
local queue is full) is a deliberate rejection: the client waits as told (at most 1 s) and goes
on. Every 0.5 s the gateway's ``/healthz`` queue depth and its process RSS are sampled.

Per level: throughput, TTFT (streaming requests: time to the first non-empty content delta) and
total latency percentiles per route, rejections, errors, queue depth and peak RSS. The baseline
is measured in the same run: the 1-client level, where nothing competes with a request.

Checks, each with the numbers it used:

- ``no_unexpected_5xx``: no status >= 500 other than a 503 with ``Retry-After``, no error
  reported in-band in a stream, and no dropped connection.
- ``cloud_not_blocked``: at each mixed level, the cloud route's median TTFT is at most 2x that of
  a cloud-only level with as many cloud clients (measured in the same run): cloud requests
  proceed beside local generation, not behind it. (The stand-in serves one request at a time,
  so comparing with the 1-client figure would measure its queue, not Tandem's.)
- ``local_p99_ttft_4_clients``: p99 local TTFT at 4 clients <= 4x the 1-client median local TTFT
  plus a queue allowance of ``queue_size`` x the 1-client median local total time.
- ``local_only_p99_ttft_4_clients``: with only local requests (1, 4 and 16 clients, the stand-in
  idle), p99 local TTFT at 4 clients <= 3x the 1-client median: continuous batching admits a
  request beside the others instead of queueing it. The aggregate local tokens/s at 4 and 16
  clients over the 1-client figure is reported with it.
- ``memory_flat`` (with a soak: 4 clients for ``soak_s`` seconds, RSS every 5 s): the median RSS
  of the last minute is at most 5% above that of the first minute (windows of a third of the
  soak when it is shorter than 3 minutes).

Then the event-loop scenario (``bench/load_loop.py``): 4 clients on sessions with ~2,000-token
histories, trimmed to the local window every turn; the gateway's p99 event-loop lag (from its
``tandem_event_loop_lag_seconds`` histogram) and the latency of ``/healthz`` probes every 50 ms
while the local model generates, beside their targets (``event_loop_lag_p99`` <= 5 ms,
``healthz_p99_while_generating`` <= 20 ms).

On one machine the stand-in cloud (``llama_cpp.server``) answers one request at a time and shares
the CPU with the local model, so the cloud figures at many clients measure it as much as Tandem.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from bench.load_loop import loop_checks, loop_conf, measure_event_loop, print_loop
from bench.load_stats import checks, memory, summary
from tandem.settings import Settings

QUESTIONS = [
    "Name three uses of copper.",
    "Why is the sky blue?",
    "What does a compiler do?",
    "How do plants make food?",
    "What is a prime number?",
    "Suggest a name for a boat.",
    "Why do we sleep?",
]
# (route, stream) in the order a client cycles through them.
MIX = [("local", True), ("cloud", True), ("local", False), ("cloud", False)]
CLOUD_ONLY = [("cloud", True), ("cloud", False)]
LOCAL_ONLY = [("local", True), ("local", False)]
CLIENT_TIMEOUT_S = 120.0
MAX_RETRY_WAIT_S = 1.0


def _conf(quick: bool) -> dict[str, Any]:
    if quick:
        conf = {"levels": [1, 4, 16], "level_s": 15.0, "max_tokens": 16, "soak_s": None}
    else:
        conf = {"levels": [1, 4, 16, 64], "level_s": 40.0, "max_tokens": 32, "soak_s": 600.0}
    conf["local_only_levels"] = [1, 4, 16]
    return {**conf, "event_loop": loop_conf(quick)}


# -- the gateway process ------------------------------------------------------------------------


class _GatewayProcess:
    """``python -m tandem serve`` against the stand-in cloud (or none), logging to a file."""

    def __init__(
        self,
        settings: Settings,
        cloud_url: str | None,
        workdir: Path,
        n_ctx: int | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        from tandem.net import free_port

        self.base = f"http://127.0.0.1:{free_port()}"
        self.log = workdir / "gateway.log"
        cmd = [sys.executable, "-m", "tandem", "serve", "--port", self.base.rsplit(":", 1)[1]]
        cmd += ["--no-standin"] + ([] if cloud_url is None else ["--cloud-url", cloud_url])
        if n_ctx is not None:
            cmd += ["--n-ctx", str(n_ctx)]
        env = {
            **os.environ,
            "TANDEM_N_THREADS": str(settings.n_threads or 2),
            "TANDEM_SESSIONS_DB": str(workdir / "s.db"),
            "TANDEM_QUEUE_SIZE": str(settings.queue_size),
            "TANDEM_LOCAL_MODEL": settings.local_model,
            **(extra_env or {}),
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited while starting:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if httpx.get(f"{self.base}/healthz").json()["local"]["state"] == "ready":
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the gateway was not ready in {timeout_s:.0f} s:\n{self.log_tail()}")

    def rss_bytes(self) -> int:
        import psutil

        rss: int = psutil.Process(self.proc.pid).memory_info().rss
        return rss

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- clients ------------------------------------------------------------------------------------


async def _request(
    client: httpx.AsyncClient, url: str, route: str, stream: bool, max_tokens: int, q: str
) -> dict[str, Any]:
    """One chat completion; what the client saw of it."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": q}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": stream,
        "tandem": {"route": route},
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    rec: dict[str, Any] = {"route": route, "stream": stream, "status": None, "answered": None}
    rec.update({"retry_after": None, "ttft_s": None, "tokens": 0, "error": None})
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as r:
            rec.update(status=r.status_code, answered=r.headers.get("x-tandem-route"))
            rec["retry_after"] = r.headers.get("retry-after")
            if r.status_code != 200:
                await r.aread()
                rec["error"] = f"http_{r.status_code}"
            elif stream:
                await _read_sse(r, rec, started)
            else:
                rec["tokens"] = json.loads(await r.aread())["usage"]["completion_tokens"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        rec["error"] = f"exception:{type(exc).__name__}"
    rec["total_s"] = time.perf_counter() - started
    return rec


async def _read_sse(r: httpx.Response, rec: dict[str, Any], started: float) -> None:
    done = False
    async for line in r.aiter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        chunk = json.loads(line[6:])
        if "error" in chunk:
            rec["error"] = f"stream_error:{chunk['error'].get('code')}"
        if chunk.get("usage"):
            rec["tokens"] = chunk["usage"]["completion_tokens"]
        choices = chunk.get("choices") or [{}]
        if rec["ttft_s"] is None and choices[0].get("delta", {}).get("content"):
            rec["ttft_s"] = time.perf_counter() - started
    if not done and rec["error"] is None:
        rec["error"] = "stream_truncated"


async def _client(
    i: int,
    url: str,
    deadline: float,
    max_tokens: int,
    records: list[dict[str, Any]],
    mix: list[tuple[str, bool]],
) -> None:
    """Send requests back to back until ``deadline``; honour Retry-After on a 503."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        n = 0
        while time.monotonic() < deadline:
            route, stream = mix[(n + i) % len(mix)]
            question = QUESTIONS[(n + i) % len(QUESTIONS)]
            rec = await _request(client, url, route, stream, max_tokens, question)
            records.append(rec)
            n += 1
            if rec["status"] == 503 and rec["retry_after"] is not None:
                await asyncio.sleep(min(float(rec["retry_after"]), MAX_RETRY_WAIT_S))


async def _monitor(
    gw: _GatewayProcess, every_s: float, stop: asyncio.Event
) -> list[dict[str, Any]]:
    """Queue depth and RSS every ``every_s`` seconds, and once more when ``stop`` is set."""
    samples = []
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10.0) as client:
        while True:
            depth = None
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                depth = (await client.get(f"{gw.base}/healthz")).json()["local"]["queue_depth"]
            rss = await asyncio.to_thread(gw.rss_bytes)
            samples.append({"t_s": time.monotonic() - started, "queue_depth": depth, "rss": rss})
            if stop.is_set():
                return samples
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


async def _run_level(
    gw: _GatewayProcess,
    clients: int,
    duration_s: float,
    max_tokens: int,
    every_s: float,
    mix: list[tuple[str, bool]] = MIX,
) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    url = f"{gw.base}/v1/chat/completions"
    stop = asyncio.Event()
    monitor = asyncio.create_task(_monitor(gw, every_s, stop))
    started = time.monotonic()
    deadline = started + duration_s
    await asyncio.gather(
        *(_client(i, url, deadline, max_tokens, records, mix) for i in range(clients))
    )
    elapsed = time.monotonic() - started  # the last requests end after the deadline
    stop.set()
    samples = await monitor
    return {"clients": clients, "elapsed_s": elapsed, "records": records, "samples": samples}


async def _warm_up(gw: _GatewayProcess, max_tokens: int) -> None:
    """One request of each kind first, so the 1-client baseline pays no first-use costs."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        for route, stream in MIX:
            url = f"{gw.base}/v1/chat/completions"
            await _request(client, url, route, stream, max_tokens, QUESTIONS[0])


# -- orchestration ------------------------------------------------------------------------------


async def _measure(
    gw: _GatewayProcess, conf: dict[str, Any], soak_s: float | None, console: Console
) -> dict[str, Any]:
    await _warm_up(gw, conf["max_tokens"])
    levels: dict[int, dict[str, Any]] = {}
    if conf.get("event_loop_only"):
        event_loop = await measure_event_loop(gw.base, conf["event_loop"], console)
        return {
            "levels": levels,
            "cloud_only": {},
            "local_only": {},
            "soak": None,
            "event_loop": event_loop,
        }
    for clients in conf["levels"]:
        console.print(f"[dim]bench load: {clients} clients for {conf['level_s']:.0f} s…[/dim]")
        level = await _run_level(gw, clients, conf["level_s"], conf["max_tokens"], 0.5)
        levels[clients] = summary(level)
    # The cloud route alone, with as many clients as send cloud requests in a mixed level: what
    # the cloud's own latency is at that concurrency, without any local generation.
    cloud_only: dict[int, dict[str, Any]] = {}
    for clients in conf["levels"]:
        if clients > 1:
            n = clients // 2
            console.print(f"[dim]bench load: cloud only, {n} clients…[/dim]")
            level = await _run_level(
                gw, n, conf["level_s"], conf["max_tokens"], 0.5, mix=CLOUD_ONLY
            )
            cloud_only[n] = summary(level)
    # The local route alone: what continuous batching gives several clients of the local model
    # when the stand-in cloud does not decode beside it on the same cores.
    local_only: dict[int, dict[str, Any]] = {}
    for clients in conf["local_only_levels"]:
        console.print(f"[dim]bench load: local only, {clients} clients…[/dim]")
        level = await _run_level(
            gw, clients, conf["level_s"], conf["max_tokens"], 0.5, mix=LOCAL_ONLY
        )
        local_only[clients] = summary(level)
    # Sessions with ~2,000-token histories, trimmed to the local window on every turn: the
    # gateway's event-loop lag and /healthz latency while the local model generates.
    event_loop = await measure_event_loop(gw.base, conf["event_loop"], console)
    soak = None
    if soak_s:
        console.print(f"[dim]bench load: soak, 4 clients for {soak_s:.0f} s…[/dim]")
        level = await _run_level(gw, 4, soak_s, conf["max_tokens"], 5.0)
        soak = {
            **summary(level),
            "memory": memory(level["samples"], level["elapsed_s"]),
            "rss_mb": [(round(s["t_s"], 1), s["rss"] / 1e6) for s in level["samples"]],
        }
    return {
        "levels": levels,
        "cloud_only": cloud_only,
        "local_only": local_only,
        "soak": soak,
        "event_loop": event_loop,
    }


def run_load_bench(
    settings: Settings,
    quick: bool,
    out: Path,
    console: Console,
    soak_s: float | None = None,
    event_loop_only: bool = False,
) -> dict[str, Any]:
    """Run every concurrency level (and the soak) against a fresh gateway; write ``out``.
    ``event_loop_only``: only the event-loop scenario (loop lag, /healthz while generating)."""
    from tandem.cloud.standin import StandinCloud

    conf = {**_conf(quick), "event_loop_only": event_loop_only}
    if event_loop_only:
        conf["soak_s"] = soak_s = None
    soak = conf["soak_s"] if soak_s is None else soak_s
    console.print("[dim]Starting the stand-in cloud and the gateway…[/dim]")
    with (
        StandinCloud.from_settings(settings, port=0) as standin,
        tempfile.TemporaryDirectory() as d,
    ):
        gw = _GatewayProcess(settings, standin.base_url, Path(d))
        try:
            gw.wait_ready()
            measured = asyncio.run(_measure(gw, conf, soak, console))
        finally:
            gw.stop()
        log_tail = gw.log_tail()
    result = _result(settings, quick, {**conf, "soak_s": soak}, measured)
    if not result["checks"].get("no_unexpected_5xx", {"passed": True})["passed"]:
        result["gateway_log_tail"] = log_tail
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result, console)
    return result


def _result(
    settings: Settings, quick: bool, conf: dict[str, Any], measured: dict[str, Any]
) -> dict[str, Any]:
    levels, soak, queue_size = measured["levels"], measured["soak"], settings.queue_size
    return {
        "bench": "load",
        "quick": quick,
        "config": {
            **conf,
            "model": settings.local_model,
            "cloud_model": settings.standin_model,
            "queue_size": settings.queue_size,
            "n_threads": settings.n_threads or 2,
        },
        "baseline": "the 1-client level, measured in this run",
        "levels": {str(n): s for n, s in levels.items()},
        "cloud_only": {str(n): s for n, s in measured["cloud_only"].items()},
        "local_only": {str(n): s for n, s in measured["local_only"].items()},
        "soak": soak,
        "event_loop": measured["event_loop"],
        "checks": {
            **(
                checks(levels, measured["cloud_only"], measured["local_only"], soak, queue_size)
                if levels
                else {}
            ),
            **loop_checks(measured["event_loop"]),
        },
    }


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _row(name: str, s: dict[str, Any]) -> list[str]:
    local, cloud = s["routes"]["local"], s["routes"]["cloud"]
    errors = sum(s["errors"].values())
    depth = s["queue_depth_mean"]
    return [
        name,
        str(s["requests"]),
        f"{s['throughput_req_s']:.2f}",
        f"{local['tokens_per_s']:.1f}",
        f"{_ms(local['ttft_ms']['p50'])}/{_ms(local['ttft_ms']['p99'])}",
        f"{_ms(local['total_ms']['p50'])}/{_ms(local['total_ms']['p99'])}",
        f"{_ms(cloud['ttft_ms']['p50'])}/{_ms(cloud['ttft_ms']['p99'])}",
        f"{_ms(cloud['total_ms']['p50'])}/{_ms(cloud['total_ms']['p99'])}",
        str(s["rejections_503"]),
        f"{errors} ({s['unexpected_5xx']} 5xx)",
        f"{s['queue_depth_max']}/{'–' if depth is None else f'{depth:.1f}'}",
        f"{s['peak_rss_mb']:.0f}",
    ]


def _print(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"load ({result['config']['model']}; ms as p50/p99)")
    cols = ["clients", "req", "req/s", "local tok/s", "local TTFT", "local total"]
    cols += ["cloud TTFT", "cloud total", "503", "errors", "queue max/mean", "RSS MB"]
    for col in cols:
        table.add_column(col, justify="right")
    for n, s in result["levels"].items():
        table.add_row(*_row(n, s))
    for n, s in result["cloud_only"].items():
        table.add_row(*_row(f"{n} cloud only", s))
    for n, s in result["local_only"].items():
        table.add_row(*_row(f"{n} local only", s))
    if result["soak"] is not None:
        table.add_row(*_row("soak 4", result["soak"]))
    console.print(table)
    print_loop(result["event_loop"], console)
    for name, check in result["checks"].items():
        mark = "[green]pass[/green]" if check["passed"] else "[red]FAIL[/red]"
        numbers = {k: v for k, v in check.items() if k != "passed"}
        console.print(f"{mark} {name}: {json.dumps(numbers, default=str)}", soft_wrap=True)
