"""``tandem bench handoff``: conversations that move between tiers, and sessions that interleave.

Part 1 (handoff): 10-turn conversations from MT-Bench (the two MT-Bench turns, then fixed
follow-ups) through the real session path (SessionService → Gateway → LocalEngine / the
stand-in cloud), the tier forced to alternate local, cloud, local, ... For every local turn it
reports the tokens llama.cpp prefilled against the tokens the local model had not seen yet
("new": everything since its own previous answer, so the cloud's answer counts as new), and the
baseline measured in the same run: a naive gateway that re-prefills the whole history (the same
messages replayed on a cleared KV cache).

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
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.runtime import Runtime
from tandem.settings import Settings
from tandem.tiers import EngineState
from tandem.turn import RouteInfo, RoutePreference, Turn

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

    def __init__(self, runtime: Runtime):
        from tandem.local.engine import LocalEngine

        engine = runtime.gateway.local
        assert isinstance(engine, LocalEngine) and runtime.sessions is not None
        self.runtime = runtime
        self.engine = engine
        self.service = runtime.sessions

    @classmethod
    async def open(cls, settings: Settings, cloud_url: str, db: Path) -> _Harness:
        update = {"cloud_url": cloud_url, "cloud_fallback_urls": [], "sessions_db": db,
                  "sessions": True}
        runtime = Runtime(settings.model_copy(update=update))
        await runtime.start()
        await runtime.wait_local_ready(120)
        if runtime.gateway.local.state != EngineState.READY:
            await runtime.aclose()
            raise RuntimeError(f"the local model did not load: {runtime.gateway.local.health()}")
        return cls(runtime)

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
        }

    def naive(self, session: str) -> dict[str, Any]:
        """The session's last local prompt replayed on a cleared cache: what a gateway without
        KV reuse prefills and waits for."""
        context = self.service.store.context(session).messages[:-1]  # up to the last question
        # Take the context over (the session's cache is saved as a snapshot), then clear it.
        params = GenerationParams(max_tokens=1, temperature=0.0)
        for _ in self.engine.stream_sync(
            [{"role": "user", "content": "."}], params, session="naive"
        ):
            pass
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


async def _handoff(h: _Harness, conf: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for c, questions in enumerate(load_conversations(MT_BENCH, conf["conversations"], 10)):
        session = f"handoff-{c}"
        seen = 0  # tokens in the local KV after the local model's previous answer
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
    from tandem.cloud.standin import StandinCloud

    conf = _conf(quick)
    settings = settings.model_copy(update={"n_ctx": 4096, "keep_alive_s": None})
    console.print("[dim]Starting the stand-in cloud and the local model…[/dim]")
    with (
        StandinCloud.from_settings(settings, port=0) as standin,
        tempfile.TemporaryDirectory() as d,
    ):

        async def main() -> dict[str, Any]:
            h = await _Harness.open(settings, standin.base_url, Path(d) / "bench.db")
            try:
                rows = await _handoff(h, conf)
                switch = await _switch(h, conf, conf["max_tokens"])
            finally:
                await h.close()
            return {"rows": rows, "switch": switch}

        measured = asyncio.run(main())
    result = {
        "bench": "handoff",
        "quick": quick,
        "config": {**conf, "n_ctx": settings.n_ctx, "model": settings.local_model},
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
    }


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
