"""``tandem bench load``, event-loop scenario: is the gateway's event loop free while it works?

Four clients each keep a session (``X-Session-Id``) whose history is about 2,000 tokens: each
opens it with one request carrying three long user messages (~650 tokens each; the same opening
in every session, so the local model prefills it once) and short answers between them, then,
while measured, sends follow-up turns of ~150 tokens, different per session, one after another
(local route, streaming and not, interleaved). The local window is
2,048 tokens, so every turn's history is fitted to it and trimmed: the gateway counts tokens,
renders the chat template and fits the context, work that blocks the event loop when it runs
there. Meanwhile:

- the gateway's own loop-lag probe (``tandem_event_loop_lag_seconds``, a timer every 25 ms and
  how late it fired) is read from ``/metrics`` before and after; p50/p99 come from the bucket
  deltas, interpolated within a bucket as Prometheus' ``histogram_quantile`` does;
- a thread of this process sends ``GET /healthz`` every 50 ms on its own connection and times
  each; the figures that count are those of probes answered while the local model was
  generating (the answer's local queue depth above 0).

The window is ``measure_s`` long; turns still in flight at its end are cancelled, not waited
for (on a slow machine a trimmed turn's prefill alone takes many seconds). Before it, the loop's
lag is also read over a few idle seconds: what the machine itself adds (other processes, the
scheduler), with no request on the gateway.

Targets, printed beside the figures: p99 loop lag <= 5 ms, ``/healthz`` p99 <= 20 ms. The
benchmark client shares the machine (and its cores) with the gateway and the local model, so the
health latency includes the operating system's scheduling: the figures are what a client on the
device sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import threading
import time
from typing import Any

import httpx
from rich.console import Console

LOOP_LAG_TARGET_MS = 5.0
HEALTH_P99_TARGET_MS = 20.0
LAG_METRIC = "tandem_event_loop_lag_seconds"
TRIMMED_METRIC = "tandem_context_trimmed_messages_total"
CLIENT_TIMEOUT_S = 180.0

_SENTENCES = [
    "The river crossed the valley in long slow bends before it reached the old mill.",
    "Most of the orchard was planted with apple trees, with a few rows of pears near the wall.",
    "Every spring the committee met to decide which paths needed new gravel.",
    "A small library in the square lent out tools as well as books.",
    "The ferry ran twice a day in winter and every hour in summer.",
    "Rain had been scarce that year, so the farmers watched the sky with some worry.",
    "The museum kept a collection of maps drawn by hand over three centuries.",
    "On market days the streets filled with stalls selling bread, cheese and honey.",
    "A narrow bridge of grey stone joined the two halves of the village.",
    "The school choir practised in the church hall on Thursday evenings.",
    "Engineers studied the dam for months before they agreed to raise its height.",
    "The bakery opened before dawn, and the smell of bread reached the harbour.",
    "Walkers were asked to keep to the marked trails across the moor.",
    "The station clock had stopped years ago, and nobody had thought to mend it.",
    "In the autumn the hills turned red and gold as the beech leaves changed.",
    "A local historian wrote a short book about the families who built the canal.",
    "The lighthouse keeper logged the weather at six in the morning and six at night.",
    "Children learned to swim in the lake once the water was warm enough.",
    "The council planned a new cycle lane along the main road to the coast.",
    "Old photographs showed the high street lined with horses and carts.",
]


def loop_conf(quick: bool) -> dict[str, Any]:
    return {
        "sessions": 4,
        "build_turns": 3,  # long user messages in each session's opening transcript
        "message_tokens": 650,  # each: the history is about 2,000 tokens before measuring
        "followup_tokens": 150,  # each measured turn's user message
        "max_tokens": 16 if quick else 32,
        "measure_s": 15.0 if quick else 60.0,
        "idle_s": 3.0,  # the loop's lag with no requests, before measuring
        "health_every_s": 0.05,
    }


def _message(session: int, turn: int, chars: int) -> str:
    """A long user message, different for every session and turn."""
    parts = [f"Session {session}, note {turn}. Please read these notes and summarise them."]
    i = session * 7 + turn * 3
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(_SENTENCES[i % len(_SENTENCES)])
        i += 1
    return " ".join(parts) + " What is the main point?"


async def _turn(
    client: httpx.AsyncClient,
    base: str,
    session: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    stream: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": stream,
        "tandem": {"route": "local"},
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    rec: dict[str, Any] = {"stream": stream, "status": None, "error": None, "ttft_s": None}
    rec["prompt_tokens"] = None
    started = time.perf_counter()
    try:
        async with client.stream(
            "POST", f"{base}/v1/chat/completions", json=body, headers={"X-Session-Id": session}
        ) as r:
            rec["status"] = r.status_code
            if r.status_code != 200:
                await r.aread()
                rec["error"] = f"http_{r.status_code}"
            elif stream:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        rec["error"] = f"stream_error:{chunk['error'].get('code')}"
                    if chunk.get("usage"):
                        rec["prompt_tokens"] = chunk["usage"]["prompt_tokens"]
                    choices = chunk.get("choices") or [{}]
                    if rec["ttft_s"] is None and choices[0].get("delta", {}).get("content"):
                        rec["ttft_s"] = time.perf_counter() - started
            else:
                rec["prompt_tokens"] = json.loads(await r.aread())["usage"]["prompt_tokens"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        rec["error"] = f"exception:{type(exc).__name__}"
    rec["total_s"] = time.perf_counter() - started
    return rec


# -- /metrics -----------------------------------------------------------------------------------


def _scrape(base: str) -> dict[str, Any]:
    """The loop-lag histogram (cumulative bucket counts by upper bound) and the trimmed-message
    counter, from the gateway's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10.0).text
    buckets: dict[float, float] = {}
    out: dict[str, Any] = {"buckets": buckets, "count": 0.0, "sum": 0.0, "trimmed": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{LAG_METRIC}_bucket":
                buckets[float(s.labels["le"])] = s.value
            elif s.name == f"{LAG_METRIC}_count":
                out["count"] = s.value
            elif s.name == f"{LAG_METRIC}_sum":
                out["sum"] = s.value
            elif s.name == TRIMMED_METRIC and s.labels.get("route") == "local":
                out["trimmed"] = s.value
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative ``buckets`` (upper bound -> count), interpolated linearly
    within its bucket (Prometheus' method; a rank in the +Inf bucket gives the highest finite
    bound). None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def _bucket_upper(q: float, buckets: dict[float, float]) -> float | None:
    """The upper bound of the bucket holding the q-quantile (what the histogram can vouch for)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    return next(le for le in bounds if buckets[le] >= rank)


def lag_summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Loop-lag figures of the interval between two scrapes."""
    if not after["buckets"]:
        return {"exposed": False}
    delta = {le: after["buckets"][le] - before["buckets"].get(le, 0.0) for le in after["buckets"]}
    count = after["count"] - before["count"]

    def ms(v: float | None) -> float | None:
        return None if v is None or math.isinf(v) else 1000 * v

    return {
        "exposed": True,
        "probes": count,
        "mean_ms": ms((after["sum"] - before["sum"]) / count) if count else None,
        "p50_ms": ms(histogram_quantile(0.5, delta)),
        "p99_ms": ms(histogram_quantile(0.99, delta)),
        "p99_bucket_upper_ms": ms(_bucket_upper(0.99, delta)),
        "over_5ms": count - delta.get(0.005, 0.0),
        "over_25ms": count - delta.get(0.025, 0.0),
        "over_100ms": count - delta.get(0.1, 0.0),
        "bucket_deltas": {("+Inf" if math.isinf(k) else str(k)): v for k, v in delta.items()},
    }


# -- /healthz probes ----------------------------------------------------------------------------


class _HealthProber(threading.Thread):
    """``GET /healthz`` every ``every_s`` on one keep-alive connection, each timed. A probe that
    overruns its slot delays the next (counted as ``late``) rather than bunching them up."""

    def __init__(self, base: str, every_s: float):
        super().__init__(name="bench-healthz", daemon=True)
        self.url = f"{base}/healthz"
        self.every_s = every_s
        self.samples: list[dict[str, Any]] = []
        self.late = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            with contextlib.suppress(httpx.HTTPError):
                client.get(self.url)  # open the connection outside the measurement
            next_at = time.perf_counter()
            while not self.halt.is_set():
                sample: dict[str, Any] = {"queue_depth": None, "error": None}
                started = time.perf_counter()
                try:
                    r = client.get(self.url)
                    sample["latency_s"] = time.perf_counter() - started
                    sample["status"] = r.status_code
                    sample["queue_depth"] = r.json()["local"].get("queue_depth")
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    sample["latency_s"] = time.perf_counter() - started
                    sample["error"] = type(exc).__name__
                self.samples.append(sample)
                next_at += self.every_s
                wait = next_at - time.perf_counter()
                if wait > 0:
                    self.halt.wait(wait)
                else:
                    self.late += 1
                    next_at = time.perf_counter()


def _pcts_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    cuts = statistics.quantiles(
        values * 2 if len(values) == 1 else values, n=100, method="inclusive"
    )
    return {"p50": 1000 * cuts[49], "p99": 1000 * cuts[98], "max": 1000 * max(values)}


def health_summary(prober: _HealthProber) -> dict[str, Any]:
    ok = [s for s in prober.samples if s["error"] is None and s.get("status") == 200]
    busy = [s for s in ok if (s["queue_depth"] or 0) > 0]
    return {
        "every_ms": 1000 * prober.every_s,
        "probes": len(prober.samples),
        "failed": len(prober.samples) - len(ok),
        "late": prober.late,
        "while_generating": {"probes": len(busy), **_pcts_ms([s["latency_s"] for s in busy])},
        "all": _pcts_ms([s["latency_s"] for s in ok]),
    }


# -- the scenario -------------------------------------------------------------------------------


async def _calibrate(client: httpx.AsyncClient, base: str, conf: dict[str, Any]) -> float:
    """Characters per token of the messages, from one turn's reported prompt tokens."""
    text = _message(99, 0, 4 * conf["message_tokens"])
    rec = await _turn(client, base, "bench-loop-calibrate", _user(text), 1, False)
    tokens: int | None = rec["prompt_tokens"]
    return max(1.0, len(text) / tokens) if tokens else 4.0


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _opening(conf: dict[str, Any], chars: int) -> list[dict[str, str]]:
    """The sessions' opening: ``build_turns`` long user messages with short answers between them,
    sent in one request (a client's own transcript, stored as the session's history). The same
    in every session, so the local model prefills it once (a session without KV state of its
    own reuses the live cache's common prefix); the follow-ups differ per session."""
    messages: list[dict[str, str]] = []
    for turn in range(conf["build_turns"]):
        if messages:
            messages.append({"role": "assistant", "content": f"Noted, part {turn} of the notes."})
        messages.append({"role": "user", "content": _message(0, turn, chars)})
    return messages


async def _session_client(
    base: str,
    i: int,
    conf: dict[str, Any],
    chars: int,
    deadline: float,
    records: list[dict[str, Any]],
) -> None:
    """Follow-up turns on session ``i`` until ``deadline``, streaming and not, interleaved."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        n = conf["build_turns"]
        while time.monotonic() < deadline:
            rec = await _turn(
                client,
                base,
                f"bench-loop-{i}",
                _user(_message(i, n, chars)),
                conf["max_tokens"],
                stream=(n + i) % 2 == 0,
            )
            records.append(rec)
            n += 1
            if rec["status"] == 503:
                await asyncio.sleep(0.5)


async def measure_event_loop(base: str, conf: dict[str, Any], console: Console) -> dict[str, Any]:
    """Build the sessions' histories, then measure loop lag and health latency under load."""
    n = conf["sessions"]
    console.print(
        f"[dim]bench load: event loop — {n} session histories of {conf['build_turns']} "
        f"messages of ~{conf['message_tokens']} tokens…[/dim]"
    )
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        chars_per_token = await _calibrate(client, base, conf)
        long_chars = int(conf["message_tokens"] * chars_per_token)
        opening = _opening(conf, long_chars)
        built = [
            await _turn(client, base, f"bench-loop-{i}", opening, conf["max_tokens"], False)
            for i in range(n)
        ]
    build_s = time.monotonic() - started
    console.print(
        f"[dim]bench load: event loop — {n} clients for {conf['measure_s']:.0f} s, follow-ups "
        f"of ~{conf['followup_tokens']} tokens, /healthz every "
        f"{1000 * conf['health_every_s']:.0f} ms…[/dim]"
    )
    # The loop's lag with nothing to do, for comparison (what the machine itself adds).
    idle_before = await asyncio.to_thread(_scrape, base)
    await asyncio.sleep(conf["idle_s"])
    before = await asyncio.to_thread(_scrape, base)
    prober = _HealthProber(base, conf["health_every_s"])
    prober.start()
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    deadline = started + conf["measure_s"]
    followup_chars = int(conf["followup_tokens"] * chars_per_token)
    clients = [
        asyncio.create_task(_session_client(base, i, conf, followup_chars, deadline, records))
        for i in range(n)
    ]
    _, running = await asyncio.wait(clients, timeout=conf["measure_s"])
    # The window ends at the deadline, turns still in flight included (the local model is
    # generating them); they are then cancelled rather than waited for.
    prober.halt.set()
    await asyncio.to_thread(prober.join)
    after = await asyncio.to_thread(_scrape, base)
    elapsed = time.monotonic() - started
    for task in running:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    ok = [r for r in records if r["status"] == 200 and r["error"] is None]
    prompts = [r["prompt_tokens"] for r in ok if r["prompt_tokens"] is not None]
    errors: dict[str, int] = {}
    for r in [*built, *records]:
        if r["error"] is not None:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    history = conf["build_turns"] * conf["message_tokens"] + (conf["build_turns"] - 1) * 8
    return {
        "config": conf,
        "chars_per_token": chars_per_token,
        "history_tokens_before_measuring_est": history,
        "build_prompt_tokens": [r["prompt_tokens"] for r in built],
        "build_s": build_s,
        "elapsed_s": elapsed,
        "turns": len(records),
        "completed": len(ok),
        "cut_at_deadline": len(running),
        "errors": errors,
        "prompt_tokens_p50": statistics.median(prompts) if prompts else None,
        "prompt_tokens_max": max(prompts, default=None),
        "trimmed_messages": after["trimmed"] - before["trimmed"],
        "local_ttft_ms": _pcts_ms([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
        "local_total_ms": _pcts_ms([r["total_s"] for r in ok]),
        "loop_lag": lag_summary(before, after),
        "loop_lag_idle": lag_summary(idle_before, before),
        "healthz": health_summary(prober),
    }


def loop_checks(result: dict[str, Any]) -> dict[str, Any]:
    lag = result["loop_lag"].get("p99_ms")
    health = result["healthz"]["while_generating"]["p99"]
    return {
        "event_loop_lag_p99": {
            "passed": lag is not None and lag <= LOOP_LAG_TARGET_MS,
            "p99_ms": lag,
            "p99_bucket_upper_ms": result["loop_lag"].get("p99_bucket_upper_ms"),
            "target_ms": LOOP_LAG_TARGET_MS,
            "probes": result["loop_lag"].get("probes"),
        },
        "healthz_p99_while_generating": {
            "passed": health is not None and health <= HEALTH_P99_TARGET_MS,
            "p50_ms": result["healthz"]["while_generating"]["p50"],
            "p99_ms": health,
            "target_ms": HEALTH_P99_TARGET_MS,
            "probes": result["healthz"]["while_generating"]["probes"],
        },
    }


def print_loop(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    lag, health = result["loop_lag"], result["healthz"]
    busy = health["while_generating"]
    table = Table(
        title=(
            f"event loop: {result['config']['sessions']} sessions, histories "
            f"~{result['history_tokens_before_measuring_est']} tokens, local window trimmed "
            f"({result['trimmed_messages']:.0f} messages dropped); ms"
        )
    )
    for col in ("figure", "p50", "p99", "max / more", "target"):
        table.add_column(col, justify="right")
    if lag.get("exposed"):
        table.add_row(
            f"loop lag ({lag['probes']:.0f} probes)",
            ms(lag["p50_ms"]),
            f"{ms(lag['p99_ms'])} (≤{ms(lag['p99_bucket_upper_ms'])})",
            f">5 ms: {lag['over_5ms']:.0f}, >25 ms: {lag['over_25ms']:.0f}, "
            f">100 ms: {lag['over_100ms']:.0f}",
            f"p99 ≤ {LOOP_LAG_TARGET_MS:.0f}",
        )
        idle = result["loop_lag_idle"]
        table.add_row(
            f"loop lag, idle ({idle['probes']:.0f})",
            ms(idle["p50_ms"]),
            f"{ms(idle['p99_ms'])} (≤{ms(idle['p99_bucket_upper_ms'])})",
            f">5 ms: {idle['over_5ms']:.0f}",
            "",
        )
    else:
        table.add_row("loop lag", "–", "–", f"{LAG_METRIC} not in /metrics", "")
    table.add_row(
        f"/healthz while generating ({busy['probes']})",
        ms(busy["p50"]),
        ms(busy["p99"]),
        ms(busy["max"]),
        f"p99 ≤ {HEALTH_P99_TARGET_MS:.0f}",
    )
    table.add_row(
        f"/healthz all ({health['probes']}, {health['late']} late)",
        ms(health["all"]["p50"]),
        ms(health["all"]["p99"]),
        ms(health["all"]["max"]),
        "",
    )
    table.add_row(
        f"local TTFT ({result['completed']}/{result['turns']} turns, "
        f"{result['cut_at_deadline']} cut)",
        ms(result["local_ttft_ms"]["p50"]),
        ms(result["local_ttft_ms"]["p99"]),
        ms(result["local_ttft_ms"]["max"]),
        "",
    )
    table.add_row(
        "local total",
        ms(result["local_total_ms"]["p50"]),
        ms(result["local_total_ms"]["p99"]),
        ms(result["local_total_ms"]["max"]),
        "",
    )
    console.print(table)
