"""``tandem calibrate``: thresholds that send a target share of a prompt set to the cloud.

As RouteLLM's calibration step: score a representative prompt set with the routers, then put
each threshold at the quantile that yields the wanted cloud-call rate. The cascade's scores need
the local model's first tokens for each prompt, so the local model runs here, through the same
engine (and chat template) the gateway uses, greedily, for ``cascade_tokens`` tokens.

In ``combined`` mode the budget is shared: the prompt router's threshold is set so that it alone
sends ``prompt_share`` of the target; the cascade's threshold is then set on the prompts the
prompt router keeps local, so that the two together reach the target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import ConfigError
from tandem.routing.model import threshold_for_rate
from tandem.routing.policy import MODES, RoutingConfig, ScoredRouter
from tandem.routing.signals import RunningConfidence, prompt_features

MT_BENCH = "mt_bench_questions.jsonl"
_FIELDS = ("prompt", "query", "context", "question", "content")


def read_prompts(path: Path | None, data_dir: Path | None = None) -> list[str]:
    """Prompts from JSON lines (a prompt field, or MT-Bench's ``turns``) or plain text lines."""
    if path is None:
        from tandem.datadirs import default_data_dir

        path = (data_dir or default_data_dir()) / MT_BENCH
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"Cannot read the prompt set {path}: {exc.strerror}.",
                          param="prompts") from exc
    prompts: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            prompts.append(line.strip())
            continue
        if isinstance(obj, str):
            prompts.append(obj)
            continue
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:{n}: expected an object with a prompt field.")
        if isinstance(obj.get("turns"), list) and obj["turns"]:
            prompts.append(str(obj["turns"][0]))
            continue
        field = next((f for f in _FIELDS if isinstance(obj.get(f), str)), None)
        if field is None:
            raise ConfigError(f"{path}:{n}: no prompt field (one of {', '.join(_FIELDS)}, "
                              "or 'turns').")
        prompts.append(obj[field])
    if not prompts:
        raise ConfigError(f"{path} holds no prompts.", param="prompts")
    return prompts


def with_routers(config: Path | None, prompt: Path | None, cascade: Path | None
                 ) -> RoutingConfig:
    """A routing config (the shipped one without a path) with routers swapped in from files.

    A swapped-in router keeps the old threshold until calibration sets a new one.
    """
    from tandem.routing.model import LinearRouter

    prompt_r = None if prompt is None else LinearRouter.load(prompt)
    cascade_r = None if cascade is None else LinearRouter.load(cascade)
    try:
        base = RoutingConfig.load(config)
    except ConfigError:
        if config is not None or prompt_r is None or cascade_r is None:
            raise
        # No shipped config to start from: both routers given, so build one.
        return RoutingConfig("combined", ScoredRouter(prompt_r, 0.0),
                             ScoredRouter(cascade_r, 0.0))
    return replace(
        base,
        prompt=base.prompt if prompt_r is None else ScoredRouter(
            prompt_r, base.prompt.threshold if base.prompt else 0.0),
        cascade=base.cascade if cascade_r is None else ScoredRouter(
            cascade_r, base.cascade.threshold if base.cascade else 0.0),
    )


@dataclass
class Calibration:
    config: RoutingConfig
    n_prompts: int
    target: float
    prompt_rate: float  # measured on the prompt set with the new thresholds
    cascade_rate: float
    total_rate: float

    def summary(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "mode": cfg.mode,
            "prompts": self.n_prompts,
            "target_cloud_rate": self.target,
            "cloud_rate": round(self.total_rate, 4),
            "prompt_router_rate": round(self.prompt_rate, 4),
            "cascade_rate": round(self.cascade_rate, 4),
            "prompt_threshold": None if cfg.prompt is None else round(cfg.prompt.threshold, 6),
            "cascade_threshold": None if cfg.cascade is None else round(cfg.cascade.threshold, 6),
            "cascade_tokens": cfg.cascade_tokens,
        }


def cascade_features(prompts: list[str], model: str, tokens: int, console: Any = None
                     ) -> list[dict[str, float]]:
    """Confidence features of the local model's first ``tokens`` tokens for each prompt."""
    from tandem.catalog import resolve_model
    from tandem.events import GenerationParams, TokenEvent
    from tandem.local.engine import LocalEngine
    from tandem.settings import load_settings

    path, chat_format = resolve_model(model)
    engine = LocalEngine(load_settings(keep_alive_s=None), path, chat_format)
    engine.start()
    rows = []
    try:
        params = GenerationParams(max_tokens=tokens, temperature=0.0)
        for i, prompt in enumerate(prompts):
            confidence = RunningConfidence(prompt)
            messages = [{"role": "user", "content": prompt}]
            for event in engine.stream_sync(messages, params):
                if isinstance(event, TokenEvent):
                    confidence.add(event.logprob, event.text)
            rows.append({**confidence.features(), **prompt_features(prompt)})
            if console is not None and (i + 1) % 10 == 0:
                console.print(f"[dim]{i + 1}/{len(prompts)} prompts[/dim]")
    finally:
        engine.close()
    return rows


def calibrate(base: RoutingConfig, prompts: list[str], target: float, mode: str | None = None,
              prompt_share: float = 0.5, model: str = "smollm2", console: Any = None
              ) -> Calibration:
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"--target-cloud-rate is a fraction in [0, 1], not {target}.")
    if not 0.0 <= prompt_share <= 1.0:
        raise ConfigError(f"--prompt-share is a fraction in [0, 1], not {prompt_share}.")
    mode = mode or base.mode
    if mode not in MODES:
        raise ConfigError(f"Unknown mode {mode!r}; choose from {', '.join(MODES)}.")
    n = len(prompts)
    prompt_cut = np.zeros(n, dtype=bool)
    cfg = replace(base, mode=mode)  # type: ignore[arg-type]
    if mode in ("prompt", "combined"):
        if base.prompt is None:
            raise ConfigError("This routing config has no prompt router to calibrate.")
        scores = base.prompt.router.scores(
            base.prompt.router.matrix([prompt_features(p) for p in prompts]))
        share = target if mode == "prompt" else target * prompt_share
        cut = threshold_for_rate(scores, share)
        prompt_cut = scores > cut
        cfg = replace(cfg, prompt=ScoredRouter(base.prompt.router, cut))
    cascade_cut = np.zeros(n, dtype=bool)
    if mode in ("cascade", "combined"):
        if base.cascade is None:
            raise ConfigError("This routing config has no cascade router to calibrate.")
        rest = np.nonzero(~prompt_cut)[0]
        feats = cascade_features([prompts[i] for i in rest], model, base.cascade_tokens, console)
        scores = base.cascade.router.scores(base.cascade.router.matrix(feats))
        wanted = max(0.0, target * n - prompt_cut.sum()) / max(len(rest), 1)
        cut = threshold_for_rate(scores, min(wanted, 1.0))
        cascade_cut[rest[scores > cut]] = True
        cfg = replace(cfg, cascade=ScoredRouter(base.cascade.router, cut))
    cfg = replace(cfg, meta={**cfg.meta, "calibration": {
        "prompts": n, "target_cloud_rate": target, "prompt_share": prompt_share,
        "local_model": model}})
    return Calibration(cfg, n, target, float(prompt_cut.mean()), float(cascade_cut.mean()),
                       float((prompt_cut | cascade_cut).mean()))
