"""Routing with the real models: cascade escalation through the real stand-in cloud, and the
route-eval / calibrate commands on small fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tandem.routing.policy import RoutingConfig, ScoredRouter
from tests.integration.gateway_proc import gateway_process

FIXTURES = Path(__file__).parents[1] / "data" / "optimize"
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]


def config_with_cut(tmp_path: Path, cut: float, name: str) -> Path:
    shipped = RoutingConfig.load()
    assert shipped.cascade is not None
    # No training range: these tests are about what an escalation does, not about abstaining.
    router = replace(shipped.cascade.router, support=None)
    cfg = replace(shipped, mode="cascade", hysteresis=0.0, cascade=ScoredRouter(router, cut))
    path = tmp_path / name
    cfg.save(path)
    return path


def stream(url: str, prompt: str, route: str = "auto") -> tuple[dict[str, str], str, Any]:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
            "temperature": 0.0, "stream": True, "tandem": {"route": route}}
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/chat/completions",
                                                         json=body) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]
        headers = dict(r.headers)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    return headers, text, events[-1]["tandem"]


@pytest.fixture(scope="module")
def always_escalate(standin_cloud: str, tmp_path_factory: Any) -> Iterator[str]:
    cfg = config_with_cut(tmp_path_factory.mktemp("cfg"), -1e9, "escalate.json")
    with gateway_process(standin_cloud, TANDEM_ROUTING_CONFIG=str(cfg)) as url:
        yield url


def test_escalated_stream_is_the_clouds_answer_alone(always_escalate: str) -> None:
    for prompt in PROMPTS[:2]:
        headers, text, final = stream(always_escalate, prompt)
        assert headers["x-tandem-route"] == "cloud"
        assert headers["x-tandem-reason"] == "cascade_low_confidence"
        assert final == {"route": "cloud", "reason": "cascade_low_confidence"}
        # Exactly what the cloud says when asked directly: nothing of the dropped local start.
        _, direct, _ = stream(always_escalate, prompt, route="cloud")
        assert text == direct and text.strip()
        _, local, _ = stream(always_escalate, prompt, route="local")
        assert local != text
    metrics = httpx.get(always_escalate.removesuffix("/v1") + "/metrics").text
    assert 'tandem_cascade_checks_total{outcome="escalated"} 2.0' in metrics


def test_shipped_policy_answers_from_the_tier_it_names(standin_cloud: str) -> None:
    """With the shipped routing config, every auto answer is exactly that tier's answer."""
    with gateway_process(standin_cloud) as url:
        seen = set()
        for prompt in PROMPTS:
            headers, text, final = stream(url, prompt)
            tier, reason = headers["x-tandem-route"], headers["x-tandem-reason"]
            assert final == {"route": tier, "reason": reason}
            assert reason in {"cascade_confident", "cascade_low_confidence", "cascade_abstained",
                              "prompt_router", "prompt_router_local",
                              "prompt_router_abstained"}
            _, direct, _ = stream(url, prompt, route=tier)
            assert text == direct, (prompt, tier, reason)
            seen.add(reason)
        assert seen


def tandem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tandem", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)


def test_route_eval_runs_both_tiers_once_and_caches(tmp_path: Path) -> None:
    env = {"TANDEM_ROUTE_CACHE": str(tmp_path / "cache"), "TANDEM_N_THREADS": "2"}
    args = ["route-eval", "--task", "arc_easy", "--data", str(FIXTURES / "arc_easy_dev.jsonl"),
            "--router", "random", "--router", "oracle", "--router", "conf-agreement",
            "--folds", "2", "--json", "--plot", str(tmp_path / "curves.png")]
    started = time.monotonic()
    first = tandem(*args, env=env)
    cold = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["n_items"] == 6 and set(result["routers"]) == {"random", "oracle",
                                                                  "conf-agreement"}
    caches = sorted((tmp_path / "cache").glob("*/arc_easy-*.jsonl"))
    assert len(caches) == 2  # one per model file
    local_ok = [json.loads(line)["correct"] for line in caches[0].read_text().splitlines()]
    assert len(local_ok) == 6
    accuracies = {result["local_accuracy"], result["cloud_accuracy"]}
    assert round(sum(local_ok) / 6, 4) in accuracies
    oracle = result["routers"]["oracle"]
    assert oracle["best_quality"] == result["oracle_accuracy"] >= max(accuracies)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    started = time.monotonic()
    again = tandem(*args, env=env)
    assert json.loads(again.stdout) == result
    assert time.monotonic() - started < cold  # nothing was run again


def test_calibrate_hits_the_target_rate_and_the_result_serves(tmp_path: Path,
                                                               standin_cloud: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": p}) for p in [
        *PROMPTS, "Explain photosynthesis to a child.", "Translate 'good morning' to Spanish.",
        "What is 17 times 23?", "List two uses of copper.", "Who wrote Hamlet?",
        "Describe a cat in five words.", "Why is the sky blue?"]]
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "routing.json"
    env = {"TANDEM_N_THREADS": "2"}
    done = tandem("calibrate", "--target-cloud-rate", "0.4", "--prompts", str(prompts),
                  "--out", str(out), "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["prompts"] == 10 and summary["cloud_rate"] == pytest.approx(0.4, abs=0.1)
    cfg = RoutingConfig.load(out)
    assert cfg.meta["calibration"]["target_cloud_rate"] == 0.4
    with gateway_process(standin_cloud, TANDEM_ROUTING_CONFIG=str(out)) as url:
        headers, text, _ = stream(url, PROMPTS[0])
        assert text.strip() and headers["x-tandem-reason"]
    bad = tandem("calibrate", "--target-cloud-rate", "1.5", "--prompts", str(prompts), env=env)
    assert bad.returncode != 0 and "fraction" in bad.stderr + bad.stdout
