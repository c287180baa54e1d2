"""``tandem bench standin``: is the stand-in cloud the stronger tier on chat-shaped questions?

Both tiers answer the same chat messages (route-eval's chat protocol, the report half of the
items): ARC-Easy and PIQA questions with lettered options, and arithmetic questions, graded
against the gold. The local model is the baseline measured in the same run. Also measured:
each tier's answer latency (a whole answer, greedy, up to the protocol's token cap), whether
an answer carries chat-template control text or echoes the prompt, and the stand-in's answers
to a few greetings, printed for reading.

Records are cached per model and item (as route-eval's), so a second run only reports.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from tandem.routing.chat_families import CONTROL_TEXT
from tandem.routing.chat_protocol import collect, grade, task_items
from tandem.routing.tasks import Item, default_cache_dir

GREETINGS = ("Hello!", "Good morning, how are you today?", "Thank you, that was helpful.",
             "Say hello.", "Have a nice weekend!")


def _latency(records: dict[str, dict[str, Any]]) -> dict[str, float]:
    s = sorted(r["seconds"] for r in records.values())
    return {"median_s": round(statistics.median(s), 3),
            "p90_s": round(s[min(len(s) - 1, int(0.9 * len(s)))], 3)}


def _faults(items: list[Item], records: dict[str, dict[str, Any]]) -> dict[str, int]:
    control = sum(any(t in records[i.key]["answer"] for t in CONTROL_TEXT) for i in items)
    echo = sum(records[i.key]["answer"].strip().startswith(i.prompt.strip()[:60])
               for i in items)
    return {"control_text": control, "echoes_prompt": echo}


def task_result(items: list[Item], local: dict[str, dict[str, Any]],
                cloud: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Both tiers' accuracy on ``items``, the difference with a 95% interval, latencies."""
    lo = np.array([grade(i, local[i.key]["answer"]) for i in items], dtype=float)
    cl = np.array([grade(i, cloud[i.key]["answer"]) for i in items], dtype=float)
    diff = cl - lo  # paired: the interval of the mean difference
    half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return {
        "n_items": len(items),
        "local_accuracy": round(float(lo.mean()), 4),
        "standin_accuracy": round(float(cl.mean()), 4),
        "gain_points": round(float(diff.mean()) * 100, 1),
        "gain_ci95_points": round(half * 100, 1),
        "local_latency": _latency({i.key: local[i.key] for i in items}),
        "standin_latency": _latency({i.key: cloud[i.key] for i in items}),
        "local_faults": _faults(items, local),
        "standin_faults": _faults(items, cloud),
    }


def _greetings(cloud_model: str) -> list[dict[str, str]]:
    import httpx

    from tandem.cloud.standin import StandinCloud

    out = []
    with StandinCloud(cloud_model, port=0) as standin, httpx.Client(timeout=120) as http:
        for text in GREETINGS:
            r = http.post(f"{standin.base_url}/chat/completions", json={
                "messages": [{"role": "user", "content": text}], "max_tokens": 48,
                "temperature": 0.0})
            r.raise_for_status()
            out.append({"prompt": text, "answer": r.json()["choices"][0]["message"]["content"]})
    return out


def run_standin_bench(data_dir: Path, quick: bool, out: Path, console: Console,
                      local_model: str = "smollm2", cloud_model: str = "qwen2.5-coder-1.5b"
                      ) -> dict[str, Any]:
    limits = {"arc_easy": 80, "piqa": 80, "arith": 40} if quick else {
        "arc_easy": 240, "piqa": 240, "arith": 120}
    result: dict[str, Any] = {"local": local_model, "standin": cloud_model, "split": "report",
                              "protocol": "chat", "tasks": {}}
    pooled: list[float] = []
    for task, limit in limits.items():
        items = task_items(task, data_dir, limit, "report")
        console.print(f"[dim]{task}: {len(items)} items (report half)…[/dim]")
        local, cloud = collect(task, items, local_model, cloud_model, None,
                               default_cache_dir())
        result["tasks"][task] = task_result(items, local, cloud)
        pooled += [grade(i, cloud[i.key]["answer"]) - grade(i, local[i.key]["answer"])
                   for i in items]
    diff = np.array(pooled, dtype=float)
    result["overall"] = {
        "n_items": len(diff),
        "gain_points": round(float(diff.mean()) * 100, 1),
        "gain_ci95_points": round(1.96 * float(diff.std(ddof=1)) / math.sqrt(len(diff)) * 100, 1),
    }
    result["greetings"] = _greetings(cloud_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result
