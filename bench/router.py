"""``tandem bench router``: what a routing decision and the cascade's check cost.

- The pre-generation decision on a 500-token prompt (counted with the local model's own
  tokenizer): ``Gateway.decide`` with the shipped routing config (device reading, prompt
  features, prompt router, policy) against the same call with the ``local_first`` policy (the
  gates alone) in the same run, p50/p99 over many calls.
- The cascade's cost per token: updating the running confidence for each streamed token plus
  one check after ``cascade_tokens`` tokens, divided by the tokens; compared with the local
  model's own decode time per token, measured in the same run.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.cloud.breaker import CircuitBreaker
from tandem.events import GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.local.chat import Message
from tandem.metrics import GatewayMetrics
from tandem.routing.policy import Action, RouteDecision, RoutingConfig, RoutingPolicy
from tandem.routing.signals import RunningConfidence, prompt_features
from tandem.settings import Settings
from tandem.turn import Turn, last_user_text

ROOT = Path(__file__).resolve().parents[1]
MT_BENCH = ROOT.parent / "shared" / "data" / "mt_bench_questions.jsonl"
FALLBACK_TEXT = (
    "A farmer has three fields. The first yields 40 bushels of wheat per acre, the second 35, "
    "and the third 52. Which field should be planted with the new seed, and why? Explain the "
    "trade-offs between yield, soil quality, water use and the cost of fertiliser. "
)


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s) * 1e3, 4),
        "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))] * 1e3, 4),
        "max_ms": round(s[-1] * 1e3, 4),
    }


class _TokenCounter:
    """The parts of the local tier a decision reads, with the real model's tokenizer."""

    model_name = "smollm2"
    state = "ready"
    queue_depth = 0
    n_ctx = 2048

    def __init__(self, llm: Any):
        self._llm = llm

    def count_tokens(self, messages: list[Message]) -> int:
        text = "\n".join(m["content"] for m in messages)
        return len(self._llm.tokenize(text.encode(), add_bos=True))


class _UpCloud:
    model = "cloud"
    available = True
    breaker = CircuitBreaker()


def prompt_of(llm: Any, tokens: int) -> str:
    """A natural-language prompt of exactly ``tokens`` tokens (MT-Bench questions, repeated)."""
    if MT_BENCH.is_file():
        lines = MT_BENCH.read_text(encoding="utf-8").splitlines()
        text = " ".join(json.loads(line)["turns"][0] for line in lines if line.strip())
    else:
        text = FALLBACK_TEXT * 40
    ids = llm.tokenize(text.encode(), add_bos=False)
    while len(ids) < tokens:
        ids = ids + ids
    out: str = llm.detokenize(ids[:tokens]).decode("utf-8", errors="ignore")
    return out


def _time_decisions(gw: Gateway, turn: Turn, runs: int) -> list[float]:
    for _ in range(20):
        gw.decide(turn)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        gw.decide(turn)
        samples.append(time.perf_counter() - t)
    return samples


def run_router_bench(settings: Settings, quick: bool, out: Path, console: Console
                     ) -> dict[str, Any]:
    from llama_cpp import Llama

    from tandem.catalog import resolve_model
    from tandem.local.engine import LocalEngine

    path, chat_format = resolve_model(settings.local_model)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    runs = 300 if quick else 2000
    prompt = prompt_of(llm, 500)
    messages: list[Message] = [{"role": "user", "content": prompt}]
    turn = Turn(messages, GenerationParams(max_tokens=64))
    shipped = RoutingConfig.load()
    local = _TokenCounter(llm)
    results: dict[str, Any] = {"prompt_tokens": local.count_tokens(messages), "runs": runs,
                               "mode": shipped.mode}
    decisions: dict[str, list[float]] = {}
    for name, policy in (("local_first", RoutingPolicy(RoutingConfig())),
                         (shipped.mode, RoutingPolicy(shipped))):
        gw = Gateway(local, _UpCloud(), GatewayMetrics(), 8192,  # type: ignore[arg-type]
                     policy=policy)
        decisions[name] = _time_decisions(gw, turn, runs)
        results[f"decide_{name}"] = _percentiles(decisions[name])
    base = statistics.median(decisions["local_first"])
    results["decide_overhead_p50_ms"] = round(
        (statistics.median(decisions[shipped.mode]) - base) * 1e3, 4)
    console.print(f"decision on a {results['prompt_tokens']}-token prompt: "
                  f"{results[f'decide_{shipped.mode}']} ({shipped.mode}) vs "
                  f"{results['decide_local_first']} (gates only)")

    # The cascade: per-token bookkeeping and one check, against the model's decode time.
    engine = LocalEngine(settings.model_copy(update={"keep_alive_s": None}), path, chat_format)
    engine.start()
    try:
        tokens: list[TokenEvent] = []
        decode_s = 0.0
        for event in engine.stream_sync([{"role": "user", "content": "Write a short story "
                                          "about a lighthouse keeper."}],
                                        GenerationParams(max_tokens=64, temperature=0.0)):
            if isinstance(event, TokenEvent):
                tokens.append(event)
            else:
                decode_s = event.timings.get("decode_s", 0.0)
                n_decoded = max(event.completion_tokens - 1, 1)
    finally:
        engine.close()
    k = shipped.cascade_tokens
    policy = RoutingPolicy(shipped)
    decision = RouteDecision(Action.CASCADE, "cascade", {}, k)
    user = last_user_text(messages)
    per_run = []
    for _ in range(runs):
        t = time.perf_counter()
        conf = RunningConfidence(user)
        for ev in tokens[:k]:
            conf.add(ev.logprob, ev.text)
        if shipped.cascade is not None:
            policy.cascade_check(decision, {**conf.features(), **prompt_features(user)})
        per_run.append((time.perf_counter() - t) / k)
    decode_per_token = decode_s / n_decoded
    results["cascade"] = {
        "cascade_tokens": k,
        "per_token": _percentiles(per_run),
        "decode_ms_per_token": round(decode_per_token * 1e3, 3),
        "overhead_ratio_p50": round(statistics.median(per_run) / decode_per_token, 5),
    }
    console.print(f"cascade check per token: {results['cascade']['per_token']} vs decode "
                  f"{results['cascade']['decode_ms_per_token']} ms/token")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results
