"""``tandem bench handoff``: conversations that move between tiers, and sessions that interleave.

Part 1 (handoff): 10-turn conversations from MT-Bench (the two MT-Bench turns, then fixed
follow-ups) through the real session path (SessionService → Gateway → LocalEngine / the
stand-in cloud), the tier forced to alternate local, cloud, local, ... For every local turn it
reports the tokens llama.cpp prefilled against the tokens the local model had not seen yet
("new": everything since its own previous answer, so the cloud's answer counts as new), and the
baseline measured in the same run: a naive gateway that re-prefills the whole history (the same
messages replayed on a cleared KV cache).

For every cloud turn after a conversation's first it reports what the cloud's own prefix cache
did: ``usage.prompt_tokens_details.cached_tokens`` against the prompt tokens the previous cloud
turn had sent (all of which are a prefix of this turn's prompt), and, against vLLM
(``--cloud-engine vllm``), the cloud's time to first token for the same conversation sent
straight to vLLM under a fresh ``cache_salt`` (the prefix cache as good as cleared) in the same
run.

Part 2 (switch): 8 sessions with some history each, served round-robin, so every turn switches
sessions. Time to first token with KV snapshots kept (the session state budget) against the same
turns with snapshots off (every switch re-prefills the history), in the same run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.runtime import Runtime
from tandem.settings import Settings
from tandem.tiers import EngineState
from tandem.turn import RouteInfo, RoutePreference, Turn

# After each request vLLM's workers poll their shared-memory queue in a busy loop for a second
# (vllm/distributed/device_communicators/shm_broadcast.py, busy_loop_s=1). On these 2 cores
# that starves the local model beside it (a local prefill of 140 tokens took 1.2 s instead of
# 0.15 s right after a cloud turn); a cloud on its own machine costs the device nothing. The
# bench lets that second pass before the next turn when vLLM runs here.
VLLM_BUSY_LOOP_S = 1.2
MT_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "mt_bench_questions.jsonl"
FOLLOW_UPS = [
    "Can you make that shorter?",
    "Give one more example.",
    "Explain the second point in more detail.",
    "What would a critic say about this?",
    "Turn that into a bulleted list.",
    "Summarise our conversation so far in two sentences.",
    "What is the most important idea here?",
    "Thank you. Any final advice?",
]


def _conf(quick: bool) -> dict[str, int]:
    if quick:
        return {"conversations": 1, "turns": 6, "max_tokens": 48, "sessions": 4, "rounds": 2}
    return {"conversations": 3, "turns": 10, "max_tokens": 96, "sessions": 8, "rounds": 3}


def load_conversations(path: Path, n: int, turns: int) -> list[list[str]]:
    """The first ``n`` MT-Bench questions as ``turns`` user messages each."""
    out = []
    with path.open() as f:
        for line in f:
            question = json.loads(line)
            out.append([*question["turns"], *FOLLOW_UPS][:turns])
            if len(out) == n:
                break
    return out


class _Harness:
    """The real session path in process (the runtime ``tandem serve`` uses), with the engine
    reachable for the naive baseline."""

    def __init__(self, runtime: Runtime, cloud: dict[str, Any]):
        from tandem.local.engine import LocalEngine

        engine = runtime.gateway.local
        assert isinstance(engine, LocalEngine) and runtime.sessions is not None
        self.runtime = runtime
        self.engine = engine
        self.service = runtime.sessions
        self.cloud = cloud  # the cloud's gateway settings: URL, key, dialect

    @classmethod
    async def open(cls, settings: Settings, cloud: dict[str, Any], db: Path) -> _Harness:
        update = {**cloud, "cloud_fallback_urls": [], "sessions_db": db, "sessions": True}
        runtime = Runtime(settings.model_copy(update=update))
        await runtime.start()
        await runtime.wait_local_ready(120)
        if runtime.gateway.local.state != EngineState.READY:
            await runtime.aclose()
            raise RuntimeError(f"the local model did not load: {runtime.gateway.local.health()}")
        return cls(runtime, cloud)

    async def turn(
        self, session: str, text: str, route: RoutePreference, max_tokens: int
    ) -> dict[str, Any]:
        params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
        turn = Turn([{"role": "user", "content": text}], params, route)
        started = time.perf_counter()
        first: float | None = None
        tier = finish = None
        async for event in self.service.stream(session, turn):
            if isinstance(event, RouteInfo):
                tier = event.tier.value
            elif isinstance(event, TokenEvent):
                if first is None and event.text:
                    first = time.perf_counter()
            elif isinstance(event, Finish):
                finish = event
        assert finish is not None and tier is not None
        return {
            "tier": tier,
            "ttft_s": (first or time.perf_counter()) - started,
            "prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens,
            "prefill_tokens": finish.prefill_tokens,
            "cached_tokens": finish.cached_tokens,
        }

    async def cloud_cold(self, session: str) -> float:
        """The cloud's time to first token for the session's last cloud prompt sent straight to
        it under a fresh ``cache_salt``: vLLM keys its prefix cache by the salt, so nothing of
        the conversation is cached (its cache as good as cleared, for this one request)."""
        import httpx

        context = self.service.store.context(session).messages[:-1]  # up to the last question
        key = self.cloud.get("cloud_api_key")
        headers = {} if key is None else {"Authorization": f"Bearer {key.get_secret_value()}"}
        body = {"model": self.runtime.settings.cloud_model, "messages": context, "stream": True,
                "max_tokens": 1, "temperature": 0.0, "cache_salt": uuid.uuid4().hex}
        url = f"{self.cloud['cloud_url']}/chat/completions"
        async with httpx.AsyncClient(timeout=120) as http:
            started = time.perf_counter()
            async with http.stream("POST", url, json=body, headers=headers) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line.startswith("data:") and '"content"' in line:
                        return time.perf_counter() - started
        raise RuntimeError("the cloud sent no token")

    def naive(self, session: str) -> dict[str, Any]:
        """The session's last local prompt replayed on a cleared cache: what a gateway without
        KV reuse prefills and waits for."""
        # Up to the last question, under a system prompt of its own: the engine copies a long
        # enough prefix from any of its sequences (the session's own is still live in its
        # slot), and a prompt that differs from its third token on shares none.
        context = [{"role": "system", "content": f"Replay {uuid.uuid4().hex}."},
                   *self.service.store.context(session).messages[:-1]]
        params = GenerationParams(max_tokens=1, temperature=0.0)
        self.engine.forget("naive")
        started = time.perf_counter()
        first = None
        finish = None
        for event in self.engine.stream_sync(context, params, session="naive"):
            if isinstance(event, Finish):
                finish = event
            elif first is None:
                first = time.perf_counter()
        self.engine.forget("naive")
        assert finish is not None
        return {
            "naive_prefill_tokens": finish.prefill_tokens,
            "naive_ttft_s": (first or time.perf_counter()) - started,
        }

    async def close(self) -> None:
        await self.runtime.aclose()


async def _handoff(h: _Harness, conf: dict[str, int], salted: bool) -> list[dict[str, Any]]:
    rows = []
    for c, questions in enumerate(load_conversations(MT_BENCH, conf["conversations"], 10)):
        session = f"handoff-{c}"
        seen = 0  # tokens in the local KV after the local model's previous answer
        sent = 0  # prompt tokens of the previous cloud request
        for t, text in enumerate(questions[: conf["turns"]]):
            route = RoutePreference.LOCAL if t % 2 == 0 else RoutePreference.CLOUD
            row = {
                "conversation": c,
                "turn": t + 1,
                **await h.turn(session, text, route, conf["max_tokens"]),
            }
            if row["tier"] == "local":
                row["new_tokens"] = row["prompt_tokens"] - seen
                seen = row["prompt_tokens"] + row["completion_tokens"]
                row.update(h.naive(session))
                row["prefill_over_new"] = row["prefill_tokens"] / max(row["new_tokens"], 1)
                row["naive_over_new"] = row["naive_prefill_tokens"] / max(row["new_tokens"], 1)
            elif row["tier"] == "cloud":
                if sent:
                    # vLLM caches its own answer too: more than was sent may be cached.
                    row["sent_before"] = sent
                    row["cached_share"] = min(row["cached_tokens"] or 0, sent) / sent
                    if salted:
                        row["cold_ttft_s"] = await h.cloud_cold(session)
                        row["ttft_over_cold"] = row["ttft_s"] / row["cold_ttft_s"]
                sent = row["prompt_tokens"]
                if salted:
                    await asyncio.sleep(VLLM_BUSY_LOOP_S)
            rows.append(row)
    return rows


async def _switch(h: _Harness, conf: dict[str, int], max_tokens: int) -> dict[str, Any]:
    n = conf["sessions"]
    sessions = [f"switch-{i}" for i in range(n)]
    topics = load_conversations(MT_BENCH, n + 10, 2)[10:]
    # History first: two local turns per session, built one session at a time.
    for session, questions in zip(sessions, topics, strict=True):
        for text in questions:
            await h.turn(session, text, RoutePreference.LOCAL, max_tokens)
    phases: dict[str, list[dict[str, Any]]] = {}
    budget = h.engine.sessions.budget_bytes
    state_used = 0
    # Re-prefilling first: histories grow with every phase, so the snapshot phase serves the
    # longer prompts (a conservative comparison for it).
    for phase, state_bytes in (("re_prefill", 0), ("snapshots", budget)):
        h.engine.sessions.clear()
        h.engine.sessions.budget_bytes = state_bytes
        rows = []
        for r in range(conf["rounds"] + 1):  # round 0 only puts every session in the cache
            for session in sessions:
                row = await h.turn(session, FOLLOW_UPS[r], RoutePreference.LOCAL, 8)
                if r > 0:
                    rows.append(row)
        phases[phase] = rows
        state_used = max(state_used, h.engine.sessions.used_bytes)
    h.engine.sessions.budget_bytes = budget
    kept = statistics.median(r["ttft_s"] for r in phases["snapshots"])
    full = statistics.median(r["ttft_s"] for r in phases["re_prefill"])
    return {
        "sessions": n,
        "turns_per_phase": len(phases["snapshots"]),
        "snapshots_median_prompt_tokens": statistics.median(
            r["prompt_tokens"] for r in phases["snapshots"]
        ),
        "re_prefill_median_prompt_tokens": statistics.median(
            r["prompt_tokens"] for r in phases["re_prefill"]
        ),
        "snapshots_median_prefill": statistics.median(
            r["prefill_tokens"] for r in phases["snapshots"]
        ),
        "re_prefill_median_prefill": statistics.median(
            r["prefill_tokens"] for r in phases["re_prefill"]
        ),
        "snapshots_median_ttft_s": kept,
        "re_prefill_median_ttft_s": full,
        "switch_cost_ratio": kept / full,
        "state_bytes_used": state_used,  # snapshots held (of sessions - 1) at the phase's end
        "rows": phases,
    }


def run_handoff_bench(
    settings: Settings, quick: bool, out: Path, console: Console
) -> dict[str, Any]:
    from tandem.cloud.standin import standin_from_settings

    conf = _conf(quick)
    # The stand-in's window holds the longest conversation (10 turns of MT-Bench).
    settings = settings.model_copy(
        update={"n_ctx": 4096, "keep_alive_s": None, "standin_n_ctx": 4096}
    )
    salted = settings.standin_engine == "vllm"
    console.print(f"[dim]Starting the stand-in cloud ({settings.standin_engine}) and the local "
                  "model…[/dim]")
    with (
        standin_from_settings(settings, port=0) as standin,
        tempfile.TemporaryDirectory() as d,
    ):

        async def main() -> dict[str, Any]:
            h = await _Harness.open(settings, standin.gateway_settings(), Path(d) / "bench.db")
            try:
                rows = await _handoff(h, conf, salted)
                switch = await _switch(h, conf, conf["max_tokens"])
            finally:
                await h.close()
            return {"rows": rows, "switch": switch}

        measured = asyncio.run(main())
    result = {
        "bench": "handoff",
        "quick": quick,
        "config": {**conf, "n_ctx": settings.n_ctx, "model": settings.local_model,
                   "cloud_engine": settings.standin_engine, "cloud_model": standin.model},
        "summary": _summary(measured["rows"], measured["switch"]),
        **measured,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result, console)
    return result


def _summary(rows: list[dict[str, Any]], switch: dict[str, Any]) -> dict[str, Any]:
    local = [r for r in rows if r["tier"] == "local" and r["turn"] > 1]
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for r in local:
        by_turn.setdefault(r["turn"], []).append(r)
    return {
        "max_prefill_over_new": max(r["prefill_over_new"] for r in local),
        "median_prefill_over_new": statistics.median(r["prefill_over_new"] for r in local),
        "naive_over_new_by_turn": {
            t: statistics.median(r["naive_over_new"] for r in rs) for t, rs in by_turn.items()
        },
        "ttft_ratio_by_turn": {
            t: statistics.median(r["ttft_s"] / r["naive_ttft_s"] for r in rs)
            for t, rs in by_turn.items()
        },
        "switch_cost_ratio": switch["switch_cost_ratio"],
        **_cloud_summary(rows),
    }


def _cloud_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cloud's prefix cache per turn: the share of the previous cloud prompt it found
    cached, and its time to first token against the same prompt with nothing cached."""
    later = [r for r in rows if r["tier"] == "cloud" and "cached_share" in r]
    if not later:
        return {}
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for r in later:
        by_turn.setdefault(r["turn"], []).append(r)
    out: dict[str, Any] = {
        "cloud_min_cached_share": min(r["cached_share"] for r in later),
        "cloud_cached_share_by_turn": {
            t: statistics.median(r["cached_share"] for r in rs) for t, rs in by_turn.items()
        },
    }
    if all("ttft_over_cold" in r for r in later):
        out["cloud_ttft_over_cold_by_turn"] = {
            t: statistics.median(r["ttft_over_cold"] for r in rs) for t, rs in by_turn.items()
        }
    return out


def _print(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title="handoff: local turns (prefill vs tokens new to the local model)")
    for col in ("conv", "turn", "prompt", "new", "prefill", "naive", "ttft ms", "naive ttft ms"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        if r["tier"] != "local":
            continue
        table.add_row(
            str(r["conversation"]),
            str(r["turn"]),
            str(r["prompt_tokens"]),
            str(r["new_tokens"]),
            str(r["prefill_tokens"]),
            str(r["naive_prefill_tokens"]),
            f"{r['ttft_s'] * 1000:.0f}",
            f"{r['naive_ttft_s'] * 1000:.0f}",
        )
    console.print(table)
    _print_cloud(result, console)
    s, sw = result["summary"], result["switch"]
    console.print(
        f"prefill/new: max {s['max_prefill_over_new']:.2f}, median "
        f"{s['median_prefill_over_new']:.2f}; naive/new by turn: "
        + ", ".join(f"{t}: {v:.1f}" for t, v in s["naive_over_new_by_turn"].items())
    )
    console.print(
        f"switch between {sw['sessions']} sessions: TTFT {sw['snapshots_median_ttft_s'] * 1000:.0f}"
        f" ms with snapshots vs {sw['re_prefill_median_ttft_s'] * 1000:.0f} ms re-prefilling "
        f"(median prompts {sw['snapshots_median_prompt_tokens']:.0f} and "
        f"{sw['re_prefill_median_prompt_tokens']:.0f} tokens): ratio "
        f"{sw['switch_cost_ratio']:.2f}; snapshots hold {sw['state_bytes_used'] / 2**20:.1f} MiB"
    )


def _print_cloud(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    rows = [r for r in result["rows"] if r["tier"] == "cloud"]
    table = Table(title=f"handoff: cloud turns ({result['config']['cloud_engine']} prefix cache)")
    for col in ("conv", "turn", "prompt", "sent before", "cached", "cached/sent", "ttft ms",
                "cold ttft ms", "ttft/cold"):
        table.add_column(col, justify="right")
    for r in rows:
        cold = r.get("cold_ttft_s")
        table.add_row(
            str(r["conversation"]), str(r["turn"]), str(r["prompt_tokens"]),
            str(r.get("sent_before", "-")), str(r["cached_tokens"]),
            f"{r['cached_share']:.2f}" if "cached_share" in r else "-",
            f"{r['ttft_s'] * 1000:.0f}",
            "-" if cold is None else f"{cold * 1000:.0f}",
            f"{r['ttft_over_cold']:.2f}" if "ttft_over_cold" in r else "-",
        )
    console.print(table)
