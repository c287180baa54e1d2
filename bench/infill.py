"""``tandem bench infill``: keystroke latency of code completion through ``tandem serve``.

A typing session is replayed against a real gateway on the local model: a code prefix of
``prefix_tokens`` tokens (this repository's own source), then one character typed per request,
each request streaming a ``completion_tokens``-token completion (greedy, route ``local``). Each
request's prompt shares all but its last token or two with the previous one, so the engine's KV
cache holds the rest. The baseline, in the same run and the same gateway, is a cold prefill: a
prompt of the same length with nothing in common with the cache (another stretch of source).

Reported: time to first token and to the whole completion, p50/p99, for both, their ratio,
and the prompt tokens the gateway reports as cached. A model with fill-in-the-middle tokens
is replayed through llama.cpp's ``/infill`` shape (prefix and suffix around the cursor,
``--fim``); one without them through ``/v1/completions`` with the prefix alone. With ``--fim`` a
burst phase also types faster than the model answers (a request every ``burst_gap_ms``), where
each new request supersedes the previous one.

Requests go one at a time (an editor waits for, or cancels, the previous completion), so the
figures are latency, not throughput.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.load import _GatewayProcess
from tandem.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TARGET_P50_MS = 50.0
TARGET_P99_MS = 150.0


def source_text() -> str:
    """The code the session types: this repository's own modules, concatenated."""
    files = sorted((ROOT / "tandem").rglob("*.py"))
    return "\n\n".join(f.read_text() for f in files)


def cut_at_tokens(model_path: Path, text: str, start: int, tokens: int) -> str:
    """The stretch of ``text`` from character ``start`` that tokenizes to about ``tokens``."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(model_path), params=params, verbose=False)
    try:
        lo, hi = start, min(len(text), start + tokens * 8)
        while hi - lo > 1:  # the longest stretch with at most ``tokens`` tokens
            mid = (lo + hi) // 2
            n = len(model.tokenize(text[start:mid].encode(), add_bos=True, special=False))
            lo, hi = (mid, hi) if n <= tokens else (lo, mid)
        return text[start:lo]
    finally:
        model.close()  # type: ignore[no-untyped-call]


async def _one(
    http: httpx.AsyncClient, base: str, body: dict[str, Any], fim: bool
) -> dict[str, Any]:
    """One streamed request: time to first text, to the end, and the server's accounting."""
    url = f"{base}/infill" if fim else f"{base}/v1/completions"
    started = time.perf_counter()
    first: float | None = None
    pieces = 0
    cached: int | None = None
    text = ""
    async with http.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            piece = event["content"] if fim else event["choices"][0]["text"]
            if piece and first is None:
                first = time.perf_counter()
            text += piece
            pieces += bool(piece)
            if fim and event.get("stop"):
                cached = event.get("tokens_cached")
            elif not fim and event.get("usage"):
                details = event["usage"].get("prompt_tokens_details") or {}
                cached = details.get("cached_tokens")
    ended = time.perf_counter()
    return {
        "ttft_s": None if first is None else first - started,
        "total_s": ended - started,
        "pieces": pieces,
        "cached_tokens": cached,
        "text": text,
    }


def _body(prefix: str, suffix: str | None, tokens: int, fim: bool) -> dict[str, Any]:
    if fim:
        return {
            "input_prefix": prefix,
            "input_suffix": suffix or "",
            "n_predict": tokens,
            "temperature": 0.0,
            "stream": True,
            "tandem": {"route": "local"},
        }
    return {
        "prompt": prefix,
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tandem": {"route": "local"},
    }


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    if len(values) == 1:
        values = values * 2
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": 1000 * cuts[49], "p99": 1000 * cuts[98], "n": len(values)}


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    cached = [r["cached_tokens"] for r in records if r["cached_tokens"] is not None]
    return {
        "ttft_ms": _pcts([r["ttft_s"] for r in records if r["ttft_s"] is not None]),
        "total_ms": _pcts([r["total_s"] for r in records]),
        "cached_tokens_median": statistics.median(cached) if cached else None,
        "requests": len(records),
    }


async def _session(
    base: str, text: str, conf: dict[str, Any], fim: bool, model_path: Path
) -> dict[str, Any]:
    n, typed, tokens = conf["prefix_tokens"], conf["keystrokes"], conf["completion_tokens"]
    prefix = cut_at_tokens(model_path, text, 0, n)
    after = len(prefix)
    suffix = text[after + typed : after + typed + 400] if fim else None
    async with httpx.AsyncClient(timeout=120.0) as http:
        await _one(http, base, _body(prefix, suffix, tokens, fim), fim)  # fills the cache
        typing = []
        for k in range(1, typed + 1):
            body = _body(text[: after + k], suffix, tokens, fim)
            typing.append(await _one(http, base, body, fim))
        cold = []
        for i in range(conf["cold_requests"]):  # same length, nothing shared with the cache
            start = len(text) // 2 + i * 7919
            other = cut_at_tokens(model_path, text, start, n)
            cold.append(await _one(http, base, _body(other, suffix, tokens, fim), fim))
        burst = await _burst(http, base, text, after, suffix, conf, fim) if fim else None
    return {
        "typing": _summary(typing),
        "cold": _summary(cold),
        "burst": burst,
        "sample_completion": typing[-1]["text"],
    }


async def _burst(
    http: httpx.AsyncClient,
    base: str,
    text: str,
    after: int,
    suffix: str | None,
    conf: dict[str, Any],
    fim: bool,
) -> dict[str, Any]:
    """Keystrokes every ``burst_gap_ms``: each request supersedes the one before it."""
    tokens, gap = conf["completion_tokens"], conf["burst_gap_ms"] / 1000
    offset = after + conf["keystrokes"]
    tasks = []
    for k in range(1, conf["burst_keystrokes"] + 1):
        body = _body(text[: offset + k], suffix, tokens, fim)
        tasks.append(asyncio.create_task(_one(http, base, body, fim)))
        await asyncio.sleep(gap)
    records = await asyncio.gather(*tasks)
    last = records[-1]
    return {
        "keystrokes": len(records),
        "gap_ms": conf["burst_gap_ms"],
        "superseded": sum(r["pieces"] < tokens for r in records[:-1]),
        "last_total_ms": 1000 * last["total_s"],
        "last_ttft_ms": None if last["ttft_s"] is None else 1000 * last["ttft_s"],
    }


def run_infill_bench(
    settings: Settings,
    model_path: Path,
    fim: bool,
    quick: bool,
    out: Path,
    console: Console,
) -> dict[str, Any]:
    conf = {
        "prefix_tokens": 1500,
        "completion_tokens": 16,
        "keystrokes": 30 if quick else 120,
        "cold_requests": 3 if quick else 8,
        "burst_keystrokes": 8,
        "burst_gap_ms": 40,
    }
    text = source_text()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-infill-") as tmp:
        gw = _GatewayProcess(settings, None, Path(tmp), n_ctx=2048)
        try:
            gw.wait_ready()
            measured = asyncio.run(_session(gw.base, text, conf, fim, model_path))
        finally:
            gw.stop()
    typing, cold = measured["typing"], measured["cold"]
    p50, p99 = typing["ttft_ms"]["p50"], typing["ttft_ms"]["p99"]
    result = {
        "bench": "infill",
        "model": model_path.name,
        "endpoint": "/infill" if fim else "/v1/completions",
        "threads": settings.n_threads,
        "conf": conf,
        **measured,
        "ttft_p50_ratio_to_cold": None if p50 is None else p50 / cold["ttft_ms"]["p50"],
        "targets": {
            "ttft_p50_ms": TARGET_P50_MS,
            "ttft_p99_ms": TARGET_P99_MS,
            "met": p50 is not None
            and p99 is not None
            and p50 <= TARGET_P50_MS
            and p99 <= TARGET_P99_MS,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result, console)
    return result


def _print(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"infill: {result['model']} via {result['endpoint']}")
    for col in ("phase", "requests", "TTFT p50 / p99 ms", "16 tokens p50 / p99 ms", "cached"):
        table.add_column(col)
    for phase in ("typing", "cold"):
        s = result[phase]
        table.add_row(
            phase,
            str(s["requests"]),
            f"{s['ttft_ms']['p50']:.1f} / {s['ttft_ms']['p99']:.1f}",
            f"{s['total_ms']['p50']:.1f} / {s['total_ms']['p99']:.1f}",
            str(s["cached_tokens_median"]),
        )
    console.print(table)
    ratio = result["ttft_p50_ratio_to_cold"]
    console.print(
        f"typing TTFT p50 = {ratio:.3f}× cold; targets p50 ≤ {TARGET_P50_MS:.0f} ms, "
        f"p99 ≤ {TARGET_P99_MS:.0f} ms: {'met' if result['targets']['met'] else 'NOT met'}"
    )
    if result["burst"]:
        console.print(f"burst: {result['burst']}")
