"""``tandem bench hedge``: what the cascade's hedged mode would buy, and what it would waste.

In the hedged mode (``TANDEM_CASCADE_HEDGE_BAND``) the gateway asks the cascade router half-way
to its check (after ``max(1, K // 2)`` tokens) whether the score is already within the band of
escalating; if so, the cloud call starts then, and is cancelled if the check at K keeps the
answer local. Replayed here with the gateway's own policy over the local model's recorded
tokens (chat protocol, report half), for several bands:

- ``started``: the share of requests whose cloud call starts early;
- ``wasted``: the share of requests with an early cloud call that is then cancelled (a cloud
  call paid for and thrown away);
- ``used``: the share of escalations whose cloud call had started early;
- ``saved_ms``: the median time an early start gains on those (the local tokens between the
  hedge and the check, from the recorded timings; the cloud's own time to first token caps it).

The quality of the answers does not change: an escalated request gets the same cloud answer,
started earlier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.routing_build import LIMITS
from tandem.errors import ConfigError
from tandem.routing.chat_protocol import (
    cascade_features,
    collect_local,
    task_items,
    time_to_token,
)
from tandem.routing.policy import Action, RouteDecision, RoutingConfig, RoutingPolicy
from tandem.routing.signals import prompt_features
from tandem.routing.tasks import default_cache_dir

BANDS = (0.02, 0.05, 0.1, 0.2, 0.5)


def run_hedge_bench(data_dir: Path, config_path: Path | None, out: Path, console: Console
                    ) -> dict[str, Any]:
    config = RoutingConfig.load(config_path)
    if config.cascade is None:
        raise ConfigError("The routing config has no cascade router to hedge; give one with "
                          "--config.", param="config")
    policy = RoutingPolicy(config)
    k = config.cascade_tokens
    hedge_at = max(1, k // 2)
    decision = RouteDecision(Action.CASCADE, "cascade", {}, k)
    early_rows: list[dict[str, float]] = []
    final_rows: list[dict[str, float]] = []
    saved: list[float] = []
    for task, limit in LIMITS.items():
        items = task_items(task, data_dir, limit, "report")
        console.print(f"[dim]{task}: {len(items)} items (report half)…[/dim]")
        local = collect_local(task, items, "smollm2", default_cache_dir())
        for it in items:
            rec = local[it.key]
            about = prompt_features(it.prompt)
            early_rows.append({**cascade_features(it.prompt, rec, hedge_at), **about})
            final_rows.append({**cascade_features(it.prompt, rec, k), **about})
            saved.append(max(time_to_token(rec, k) - time_to_token(rec, hedge_at), 0.0)
                         if rec["pieces"] else 0.0)
    escalate = np.array([policy.cascade_check(decision, f)[0] for f in final_rows])
    bands = []
    for band in BANDS:
        started = np.array([policy.cascade_check(decision, f, margin=band)[0]
                            for f in early_rows])
        used = started & escalate
        bands.append({
            "band": band,
            "started": round(float(started.mean()), 4),
            "wasted": round(float((started & ~escalate).mean()), 4),
            "used_of_escalations": None if not escalate.any() else
            round(float(used.sum() / escalate.sum()), 4),
            "saved_ms_median": None if not used.any() else
            round(1000 * float(np.median(np.array(saved)[used])), 1),
        })
    result = {"config": str(config_path or "shipped"), "cascade_tokens": k,
              "hedge_at": hedge_at, "n_requests": len(final_rows),
              "escalated": round(float(escalate.mean()), 4), "bands": bands}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result
