"""``tandem bench routing-sanity``: what the routing policy does with everyday chat.

For each prompt the shipped policy's own decision is replayed without a cloud: the prompt
router (and whether it abstains), then the local model's first ``cascade_tokens`` tokens
through the gateway's engine and chat template, and the cascade's check (and whether it
abstains). Reported per group: the share escalated, and the share each router abstains on.

Groups: the held-out small-talk set and the six categories of hand-written task prompts
(tests/data), and MT-Bench's first turns by category (when the evaluation data is there).
The sanity contract: small talk ≥ 95 % local; maths, reasoning and coding escalated at least
twice as often as writing, roleplay and humanities.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.routing.policy import Action, RequestContext, RoutingConfig, RoutingPolicy
from tandem.routing.signals import RunningConfidence

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
HARD = ("math", "reasoning", "coding")
OPEN = ("writing", "roleplay", "humanities")


def prompt_groups(data_dir: Path) -> list[tuple[str, str]]:
    out = [("small_talk", p) for p in (DATA / "small_talk.txt").read_text().splitlines()]
    for line in (DATA / "task_prompts.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append((f"task:{row['category']}", row["prompt"]))
    mt = data_dir / "mt_bench_questions.jsonl"
    if mt.is_file():
        for line in mt.read_text().splitlines():
            row = json.loads(line)
            out.append((f"mt_bench:{row['category']}", row["turns"][0]))
    return out


def decide_all(config: RoutingConfig, prompts: list[tuple[str, str]], console: Console
               ) -> list[dict[str, Any]]:
    from tandem.catalog import resolve_model
    from tandem.events import GenerationParams, TokenEvent
    from tandem.local.engine import LocalEngine
    from tandem.settings import load_settings

    policy = RoutingPolicy(config)
    path, chat_format = resolve_model("smollm2")
    engine = LocalEngine(load_settings(keep_alive_s=None), path, chat_format)
    engine.start()
    rows = []
    try:
        for i, (group, prompt) in enumerate(prompts):
            d = policy.decide(RequestContext(prompt, 10, 2048, True, True))
            row = {"group": group, "prompt": prompt, "prompt_abstained":
                   bool(d.scores.get("prompt_abstained")), "cascade_abstained": False}
            if d.action == Action.CASCADE:
                confidence = RunningConfidence(prompt)
                params = GenerationParams(max_tokens=d.cascade_tokens, temperature=0.0)
                for event in engine.stream_sync([{"role": "user", "content": prompt}], params):
                    if isinstance(event, TokenEvent):
                        confidence.add(event.logprob, event.text)
                feats = {**confidence.features(), **d.prompt_features}
                escalate, _ = policy.cascade_check(d, feats)
                row["cascade_abstained"] = not policy.cascade_knows(feats)
                row["tier"] = "cloud" if escalate else "local"
            else:
                row["tier"] = d.action.value
            rows.append(row)
            if (i + 1) % 40 == 0:
                console.print(f"[dim]{i + 1}/{len(prompts)} prompts[/dim]")
    finally:
        engine.close()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    out: dict[str, Any] = {"groups": {}}
    for g, rs in sorted(groups.items()):
        n = len(rs)
        out["groups"][g] = {
            "n": n,
            "escalated": round(sum(r["tier"] == "cloud" for r in rs) / n, 3),
            "prompt_abstained": round(sum(r["prompt_abstained"] for r in rs) / n, 3),
            "cascade_abstained": round(sum(r["cascade_abstained"] for r in rs) / n, 3),
        }
    for prefix in ("task", "mt_bench"):
        def share(cats: tuple[str, ...], prefix: str = prefix) -> float | None:
            rs = [r for c in cats for r in groups.get(f"{prefix}:{c}", [])]
            return None if not rs else sum(r["tier"] == "cloud" for r in rs) / len(rs)

        hard, open_ = share(HARD), share(OPEN)
        if hard is not None and open_ is not None:
            out[prefix] = {"hard_escalated": round(hard, 3), "open_escalated": round(open_, 3),
                           "ratio": None if open_ == 0 else round(hard / open_, 2),
                           "contract_2x": hard >= 2 * open_ and hard > 0}
    st = out["groups"].get("small_talk")
    if st:
        out["small_talk_local"] = round(1 - st["escalated"], 3)
    return out


def run_routing_sanity(data_dir: Path, config_path: Path | None, out: Path, console: Console
                       ) -> dict[str, Any]:
    config = RoutingConfig.load(config_path)
    rows = decide_all(config, prompt_groups(data_dir), console)
    result = {"config": str(config_path or "shipped"), "mode": config.mode,
              "cascade_tokens": config.cascade_tokens, **summarise(rows), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result
