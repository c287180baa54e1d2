"""``tandem bench parallel``: continuous batching, against one sequence and llama.cpp's server.

Closed-loop load: ``streams`` clients each send ``requests`` chat requests one after another
(greedy, ``max_tokens`` each, a different question per request). Measured, for every slot count
S and stream count:

- **engine** (``LocalEngine`` in this process, one context at a time): aggregate decode tokens/s
  and requests/s, time to first token split into queue wait and prefill (the engine's own
  timings), time per output token per stream, and the share of each batch step spent outside
  ``llama_decode`` (sampling, bookkeeping: Python's cost);
- **llama-server** (llama.cpp's own server, built from the source vendored in the pinned
  llama-cpp-python by ``make llama-server``; ``-np S --cont-batching -fa off`` as the engine
  runs, and its default ``-fa auto`` for reference) and **the gateway**
  (``tandem serve``, route ``local``, ``TANDEM_LOCAL_PARALLEL=S``): the same load over HTTP,
  non-streamed, tokens counted from ``usage``. Same model, same thread count, same chat
  template (each renders the GGUF's own).

Over HTTP the two servers take turns: S = 1 of each, then S = 4 in the order llama-server,
gateway, gateway, llama-server, so a machine that speeds up or slows down during the run weighs
on both alike; the gateway-to-llama-server ratio is the mean of each one's two runs.

The baseline is S = 1 at one stream in the same run; every figure is also a ratio to it. A
Q4_0 variant of the model is made with ``tandem quantize`` (from the Q4_1 file: a requantized
model, fine for speed, not for quality) so a second quantization kernel is measured too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.load_stats import _pcts_ms
from tandem.errors import ConfigError
from tandem.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LLAMA_SERVER = ROOT / ".venv" / "llama-server" / "build" / "bin" / "llama-server"
QUESTIONS = [
    "Describe how a bicycle works.",
    "Explain why the sky is blue.",
    "Write a short story about a lighthouse keeper.",
    "What are the benefits of regular exercise?",
    "Describe the water cycle.",
    "How does a refrigerator keep food cold?",
    "Write a paragraph about autumn in a city.",
    "Explain what a computer program is.",
]


def _conf(quick: bool) -> dict[str, Any]:
    # The engine's S = 1 comes again last: the baseline is the mean of both runs, and their
    # difference shows the machine's drift over the run.
    if quick:
        return {"slots": [1, 4, 1], "streams": [1, 4], "requests": 2, "max_tokens": 48,
                "http_slots": [4], "http_streams": [1, 4]}
    return {"slots": [1, 2, 4, 8, 1], "streams": [1, 2, 4, 8], "requests": 3, "max_tokens": 64,
            "http_slots": [1, 4], "http_streams": [1, 4]}


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def _ms(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 in ms, rounded (``tandem bench load``'s percentiles)."""
    out: dict[str, float | None] = {}
    for q, value in _pcts_ms(values).items():
        if q in ("p50", "p99"):
            out[f"{q}_ms"] = None if value is None else round(value, 1)
    return out


# -- the engine in this process -----------------------------------------------------------------


def _engine_level(engine: Any, streams: int, conf: dict[str, Any]) -> dict[str, Any]:
    from tandem.events import Finish, GenerationParams, TokenEvent

    params = GenerationParams(max_tokens=conf["max_tokens"], temperature=0.0)
    records: list[dict[str, float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for r in range(conf["requests"]):
            started = time.perf_counter()
            first = None
            for event in engine.stream_sync(_messages(k * conf["requests"] + r), params):
                if first is None and isinstance(event, TokenEvent):
                    first = time.perf_counter() - started
                if isinstance(event, Finish):
                    t = event.timings
                    n = event.completion_tokens
                    with lock:
                        records.append({
                            "tokens": n, "ttft": first or 0.0, "queue": t["queue_s"],
                            "prefill": t["prefill_s"],
                            "tpot": t["decode_s"] / (n - 1) if n > 1 else 0.0,
                        })

    stats = engine._scheduler.stats
    before = dict(stats)
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    step_s = stats["step_s"] - before["step_s"]
    decode_s = stats["decode_s"] - before["decode_s"]
    tokens = sum(r["tokens"] for r in records)
    return {
        "streams": streams,
        "requests": len(records),
        "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(records) / wall, 3),
        "ttft": _ms([r["ttft"] for r in records]),
        "queue": _ms([r["queue"] for r in records]),
        "prefill": _ms([r["prefill"] for r in records]),
        "tpot": _ms([r["tpot"] for r in records if r["tpot"] > 0]),
        "outside_decode_share": round(1 - decode_s / step_s, 3) if step_s > 0 else None,
        "steps": stats["steps"] - before["steps"],
    }


def _engine_runs(settings: Settings, model: Path, conf: dict[str, Any],
                 console: Console) -> list[dict[str, Any]]:
    from tandem.local.engine import LocalEngine
    from tandem.tiers import EngineState

    rows = []
    for slots in conf["slots"]:
        s = settings.model_copy(update={"local_parallel": slots, "keep_alive_s": None})
        engine = LocalEngine(s, model)
        engine.start()
        try:
            if engine.wait_ready(180) != EngineState.READY:
                raise RuntimeError(f"the engine did not load: {engine.last_error}")
            _engine_level(engine, 1, {**conf, "requests": 1})  # untimed: caches, page faults
            for streams in conf["streams"]:
                row = {"slots": slots, **_engine_level(engine, streams, conf)}
                console.print(f"  engine S={slots} streams={streams}: "
                              f"{row['tokens_per_s']} tok/s, TTFT p99 {row['ttft']['p99_ms']} ms")
                rows.append(row)
        finally:
            engine.close()
    return rows


# -- HTTP: llama-server and the gateway --------------------------------------------------------


async def _http_level(base: str, model: str, streams: int, conf: dict[str, Any]) -> dict[str, Any]:
    tokens = 0
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient, k: int) -> None:
        nonlocal tokens
        for r in range(conf["requests"]):
            body = {"model": model, "messages": _messages(k * conf["requests"] + r),
                    "max_tokens": conf["max_tokens"], "temperature": 0.0}
            started = time.perf_counter()
            resp = await http.post(f"{base}/v1/chat/completions", json=body)
            resp.raise_for_status()
            latencies.append(time.perf_counter() - started)
            tokens += resp.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=300) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, k) for k in range(streams)))
        wall = time.perf_counter() - started
    return {"streams": streams, "requests": len(latencies),
            "tokens_per_s": round(tokens / wall, 1),
            "requests_per_s": round(len(latencies) / wall, 3), "latency": _ms(latencies)}


def _http_rows(runtime: str, base: str, slots: int, conf: dict[str, Any],
               console: Console) -> list[dict[str, Any]]:
    asyncio.run(_http_level(base, "local", 1, {**conf, "requests": 1}))  # untimed: first use
    rows = []
    for streams in conf["http_streams"]:
        row = {"runtime": runtime, "slots": slots,
               **asyncio.run(_http_level(base, "local", streams, conf))}
        console.print(f"  {runtime} S={slots} streams={streams}: {row['tokens_per_s']} tok/s")
        rows.append(row)
    return rows


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited while starting:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} was not ready in {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _server_run(settings: Settings, model: Path, conf: dict[str, Any], workdir: Path,
                console: Console, slots: int, flash: str = "off") -> list[dict[str, Any]]:
    """llama-server with ``slots`` slots: flash attention off as the engine runs (model.py says
    why), or its default (auto: on for this CPU) for reference."""
    from tandem.net import free_port

    threads = str(settings.n_threads or os.cpu_count() or 1)
    port = free_port()
    log = workdir / f"llama-server-{slots}-{flash}.log"
    cmd = [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-np", str(slots), "-c", str(settings.n_ctx * slots), "--cont-batching",
           "-t", threads, "-tb", threads, "-b", str(settings.n_batch), "--jinja", "-fa", flash]
    runtime = "llama-server" if flash == "off" else "llama-server -fa auto"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        return _http_rows(runtime, f"http://127.0.0.1:{port}", slots, conf, console)
    finally:
        _stop(proc)


def _gateway_run(settings: Settings, model: Path, conf: dict[str, Any], workdir: Path,
                 console: Console, slots: int) -> list[dict[str, Any]]:
    from bench.load import _GatewayProcess

    local = settings.model_copy(update={"local_model": str(model)})
    gw = _GatewayProcess(local, None, workdir, n_ctx=settings.n_ctx,
                         extra_env={"TANDEM_LOCAL_PARALLEL": str(slots)})
    try:
        gw.wait_ready()
        return _http_rows("tandem serve", gw.base, slots, conf, console)
    finally:
        gw.stop()


def _http_runs(settings: Settings, model: Path, conf: dict[str, Any], workdir: Path,
               console: Console) -> list[dict[str, Any]]:
    """Both servers in turn; at the most slots in the order A B B A (the module says why)."""
    args = (settings, model, conf, workdir, console)
    *fewer, most = conf["http_slots"]
    rows = []
    for slots in fewer:
        rows += _server_run(*args, slots) + _gateway_run(*args, slots)
    rows += _server_run(*args, most) + _gateway_run(*args, most)
    rows += _gateway_run(*args, most) + _server_run(*args, most)
    return rows + _server_run(*args, most, flash="auto")


# -- the run -------------------------------------------------------------------------------------


def _variant(model: Path, workdir: Path, qtype: str) -> Path:
    from tandem.optimize.quantize import quantize

    out = workdir / f"{model.stem}.{qtype}.gguf"
    quantize(model, out, qtype, pure=True)
    return out


def _find(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def _mean_tokens_per_s(rows: list[dict[str, Any]], **where: Any) -> float | None:
    """Tokens/s of the rows that match, averaged over their runs (None when there are none)."""
    runs = [float(r["tokens_per_s"]) for r in rows if all(r.get(k) == v for k, v in where.items())]
    return sum(runs) / len(runs) if runs else None


def _baseline(engine: list[dict[str, Any]]) -> float:
    """Tokens/s of S = 1 at one stream: the mean of its runs."""
    base = _mean_tokens_per_s(engine, slots=1, streams=1)
    assert base is not None, "every run measures S = 1 at one stream"
    return base


def _checks(engine: list[dict[str, Any]], http: list[dict[str, Any]]) -> dict[str, Any]:
    one = _find(engine, slots=1, streams=1)
    four = _find(engine, slots=4, streams=4)
    base = _baseline(engine)
    server = _mean_tokens_per_s(http, runtime="llama-server", slots=4, streams=4)
    gateway = _mean_tokens_per_s(http, runtime="tandem serve", slots=4, streams=4)
    out: dict[str, Any] = {}
    if one and four:
        out["aggregate_4_streams_vs_1"] = round(four["tokens_per_s"] / base, 3)
        out["ttft_p99_4_vs_p50_1"] = round(four["ttft"]["p99_ms"] / one["ttft"]["p50_ms"], 2)
    if server and gateway:
        out["gateway_vs_llama_server_4_streams"] = round(gateway / server, 3)
    if four and server:
        out["engine_vs_llama_server_4_streams"] = round(four["tokens_per_s"] / server, 3)
    return out


def run_parallel_bench(settings: Settings, model: Path, quick: bool, out: Path,
                       console: Console, variant: str | None = "Q4_0") -> dict[str, Any]:
    conf = _conf(quick)
    if not LLAMA_SERVER.is_file():
        raise ConfigError(f"No llama-server at {LLAMA_SERVER}: build it with `make llama-server`.")
    result: dict[str, Any] = {"conf": conf, "n_threads": settings.n_threads or os.cpu_count(),
                              "n_ctx": settings.n_ctx, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        models = {model.stem: model}
        if variant:
            models[f"{model.stem}.{variant}"] = _variant(model, workdir, variant)
        for name, path in models.items():
            console.print(f"[bold]{name}[/bold]")
            engine = _engine_runs(settings, path, conf, console)
            http = _http_runs(settings, path, conf, workdir, console)
            result["models"][name] = {"engine": engine, "http": http,
                                      "checks": _checks(engine, http)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result, console)
    return result


def _print(result: dict[str, Any], console: Console) -> None:
    for name, m in result["models"].items():
        base = _baseline(m["engine"])
        table = Table(title=f"{name}: engine, closed loop (baseline: S=1, one stream, mean of "
                            "its runs)")
        for col in ("S", "streams", "tok/s", "vs base", "req/s", "TTFT p50/p99 ms",
                    "queue p50/p99", "prefill p50/p99", "TPOT p50/p99", "outside decode"):
            table.add_column(col)
        for r in m["engine"]:
            ratio = r["tokens_per_s"] / base
            table.add_row(
                str(r["slots"]), str(r["streams"]), str(r["tokens_per_s"]), f"{ratio:.2f}×",
                str(r["requests_per_s"]),
                *(f"{r[k]['p50_ms']} / {r[k]['p99_ms']}" for k in ("ttft", "queue", "prefill",
                                                                    "tpot")),
                f"{100 * (r['outside_decode_share'] or 0):.1f} %",
            )
        console.print(table)
        http = Table(title=f"{name}: over HTTP, non-streamed")
        for col in ("runtime", "S", "streams", "tok/s", "req/s", "latency p50/p99 ms"):
            http.add_column(col)
        for r in m["http"]:
            http.add_row(r["runtime"], str(r["slots"]), str(r["streams"]), str(r["tokens_per_s"]),
                         str(r["requests_per_s"]),
                         f"{r['latency']['p50_ms']} / {r['latency']['p99_ms']}")
        console.print(http)
        console.print(f"checks: {m['checks']}")
