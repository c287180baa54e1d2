"""How the shipped routing config is built: ``python -m bench.routing_build [--out PATH]``.

Everything is chosen on the *tune* half of the chat-protocol items (route-eval's chat protocol:
ARC-Easy and PIQA with lettered options, arithmetic questions, coding tasks checked by tests,
writing requests checked for a done task; both tiers generate, answers graded) and on a
separate calibration set of small talk (``tandem/routing/
small_talk_calibration.txt``); the report half, the held-out small-talk and task prompts in
tests/data and MT-Bench are left for the reported figures.

1. For each cascade budget K (4, 8, 16, 32) and each mode (the cascade alone, the prompt router
   alone), a router is trained on the tune items (cross-fitted scores for the tune items).
2. Its threshold is the one that escalates at most ``SMALL_TALK_RATE`` of the calibration
   small talk: a greeting must stay on the device, and that is the constraint the threshold
   is set by (the tune items are questions where the cloud nearly always helps, so a rate
   calibrated on them would send everything to the cloud).
3. A cascade is eligible only if its check adds at most ``TTFT_BUDGET_MS`` (200 ms) to the
   median time to first token (every request waits for it; the prompt router adds nothing).
   Of those, the choice is the (mode, K) with the highest answer quality on the tune items at
   that threshold (each item answered by the tier the router picks); within one point, the
   smaller K (an earlier decision, a shorter time to first token).
4. The chosen routers are retrained on all tune items and written with their thresholds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tandem.routing.chat_protocol import (
    cascade_features,
    chat_rows,
    collect,
    task_items,
)
from tandem.routing.evaluate import cross_fit, train_router
from tandem.routing.model import threshold_for_rate
from tandem.routing.policy import RoutingConfig, ScoredRouter
from tandem.routing.signals import prompt_features
from tandem.routing.tasks import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "tandem" / "routing" / "small_talk_calibration.txt"
LIMITS = {"code": 80, "writing": 120, "arc_easy": 160, "piqa": 160, "arith": 120}
KS = (4, 8, 16, 32)
SMALL_TALK_RATE = 0.02
# The most a cascade's check may add to the median time to first token: the local tier is
# there to answer fast, and every request, a greeting too, waits for the check.
TTFT_BUDGET_MS = 200.0
CLOUD = "qwen2.5-coder-1.5b"


def local_starts(prompts: list[str], tokens: int) -> list[dict[str, Any]]:
    """The local model's first ``tokens`` tokens for each prompt (the gateway's engine)."""
    from tandem.catalog import resolve_model
    from tandem.events import GenerationParams, TokenEvent
    from tandem.local.engine import LocalEngine
    from tandem.settings import load_settings

    path, chat_format = resolve_model("smollm2")
    engine = LocalEngine(load_settings(keep_alive_s=None), path, chat_format)
    engine.start()
    out = []
    try:
        params = GenerationParams(max_tokens=tokens, temperature=0.0)
        for prompt in prompts:
            pieces, lps = [], []
            for event in engine.stream_sync([{"role": "user", "content": prompt}], params):
                if isinstance(event, TokenEvent):
                    pieces.append(event.text)
                    lps.append(event.logprob)
            out.append({"pieces": pieces, "logprobs": lps})
    finally:
        engine.close()
    return out


def build(data_dir: Path, out: Path) -> dict[str, Any]:
    recs = {}
    for task, limit in LIMITS.items():
        items = task_items(task, data_dir, limit, "tune")
        recs[task] = (items, *collect(task, items, "smollm2", CLOUD, None, default_cache_dir()))
    calibration = CALIBRATION.read_text().splitlines()
    starts = local_starts(calibration, max(KS))
    trials: list[dict[str, Any]] = []
    for k in KS:
        tune = [chat_rows(t, items, lo, cl, k) for t, (items, lo, cl) in recs.items()]
        pooled = _pool(tune)
        cal_rows = [{**cascade_features(p, s, k), **prompt_features(p)}
                    for p, s in zip(calibration, starts, strict=True)]
        for mode in ("cascade", "prompt"):
            router = train_router(mode, tune)
            cut = threshold_for_rate(router.scores(router.matrix(cal_rows)), SMALL_TALK_RATE)
            scores = cross_fit(mode, pooled, folds=5)
            up = scores > cut
            quality = float(np.where(up, pooled.cloud_ok, pooled.local_ok).mean())
            added = 0.0 if mode == "prompt" else _added_ttft(recs, k)
            trials.append({"mode": mode, "k": k, "threshold": cut, "tune_quality": quality,
                           "tune_cloud_rate": float(up.mean()), "added_ttft_ms": added,
                           "local_only": float(pooled.local_ok.mean()),
                           "cloud_only": float(pooled.cloud_ok.mean())})
    eligible = [t for t in trials if t["added_ttft_ms"] <= TTFT_BUDGET_MS]
    best = max(t["tune_quality"] for t in eligible)
    chosen = min((t for t in eligible if t["tune_quality"] >= best - 0.01),
                 key=lambda t: (t["k"], t["mode"] != "cascade"))
    k = chosen["k"]
    tune = [chat_rows(t, items, lo, cl, k) for t, (items, lo, cl) in recs.items()]
    cal_rows = [{**cascade_features(p, s, k), **prompt_features(p)}
                for p, s in zip(calibration, starts, strict=True)]
    scored = {}
    for mode in ("cascade", "prompt"):
        router = train_router(mode, tune)
        router.meta.update(protocol="chat", split="tune", cascade_tokens=k, cloud=CLOUD,
                           local="smollm2", limits=LIMITS)
        cut = threshold_for_rate(router.scores(router.matrix(cal_rows)), SMALL_TALK_RATE)
        scored[mode] = ScoredRouter(router, cut)
    config = RoutingConfig(
        mode=chosen["mode"], prompt=scored["prompt"], cascade=scored["cascade"],
        cascade_tokens=k,
        meta={"built_with": "python -m bench.routing_build", "calibration": {
            "prompts": str(CALIBRATION.relative_to(ROOT)), "n": len(calibration),
            "small_talk_rate": SMALL_TALK_RATE}, "selection": trials, "chosen": chosen})
    config.save(out)
    return {"chosen": chosen, "trials": trials}


def _added_ttft(recs: dict[str, Any], k: int) -> float:
    """Median milliseconds the check at ``k`` tokens adds to the first token (tune items)."""
    from tandem.routing.chat_protocol import ttft_cost

    items = [i for items, _, _ in recs.values() for i in items]
    local = {key: r for _, lo, _ in recs.values() for key, r in lo.items()}
    return round(1000 * (ttft_cost(local, items, k) - ttft_cost(local, items, 1)), 1)


def _pool(rows: list[Any]) -> Any:
    from tandem.routing.evaluate import TaskRows

    first = rows[0]
    return TaskRows("pooled", [i for r in rows for i in r.items],
                    [f for r in rows for f in r.features],
                    np.concatenate([r.local_ok for r in rows]),
                    np.concatenate([r.cloud_ok for r in rows]), first.confidence)


def main() -> None:
    from tandem.datadirs import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("routing.json"))
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    result = build(args.data_dir or default_data_dir(), args.out)
    for t in result["trials"]:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()}))
    print("chosen:", result["chosen"]["mode"], "K =", result["chosen"]["k"], "→", args.out)


if __name__ == "__main__":
    main()
