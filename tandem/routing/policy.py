"""The routing policy: one ``RouteDecision`` from one ``RequestContext``.

Order of the checks for an ``auto`` request (the first that applies decides):

1. Context gates. A prompt beyond the local window goes to the cloud; no cloud (not configured,
   or its breaker open) keeps the request local; a local model that is not ready (cold, loading)
   hands the request to a healthy cloud, which hides the load time.
2. The prompt router (learned, before anything is generated): a high expected gain from the
   cloud sends the request there at once. A prompt unlike its training prompts (outside the
   router's ``Support``) is not scored: the router abstains and the cascade decides.
3. The cascade: the local model starts; after its first ``cascade_tokens`` tokens (or its whole
   answer, when shorter) the cascade router scores its confidence, and the answer either goes
   on locally or is dropped and the request escalates. Clients never see the dropped part.
   A start unlike the cascade router's training data stays local (``cascade_abstained``).

Device pressure (heat, battery, memory, a throttled local model) adds ``device_bias`` to both
routers' scores; hysteresis lowers the thresholds by ``hysteresis`` when the session's previous
turn went to the cloud and raises them when it stayed local, so a conversation does not bounce
between tiers on every turn. Privacy ``local_only`` is decided before the policy is asked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tandem.errors import ConfigError
from tandem.routing.device import DeviceLimits, DeviceState
from tandem.routing.model import LinearRouter, read_json, write_json
from tandem.routing.signals import prompt_features

CONFIG_FORMAT = "tandem.routing.v1"
Mode = Literal["local_first", "prompt", "cascade", "combined"]
MODES: tuple[str, ...] = ("local_first", "prompt", "cascade", "combined")


class Action(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"
    CASCADE = "cascade"  # start locally, check confidence, maybe escalate


@dataclass(frozen=True)
class RequestContext:
    """What the policy knows about a request before anything is generated."""

    prompt: str  # the text the prompt router reads (the last user message)
    prompt_tokens: int
    local_n_ctx: int
    cloud_configured: bool
    cloud_up: bool
    local_state: str = "ready"
    device: DeviceState = field(default_factory=DeviceState)
    previous_tier: str | None = None  # the session's last answering tier
    trims: bool = False  # a session turn: history can be trimmed to fit a window


@dataclass(frozen=True)
class RouteDecision:
    action: Action
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    cascade_tokens: int = 0
    threshold_shift: float = 0.0  # device bias and hysteresis, applied to later checks too
    prompt_features: Mapping[str, float] = field(default_factory=dict)  # when computed


@dataclass(frozen=True)
class ScoredRouter:
    router: LinearRouter
    threshold: float  # escalate when score + shift > threshold


@dataclass(frozen=True)
class RoutingConfig:
    mode: Mode = "local_first"
    prompt: ScoredRouter | None = None
    cascade: ScoredRouter | None = None
    cascade_tokens: int = 16
    hysteresis: float = 0.02
    device_bias: float = 0.1
    # Hedged cascade: half-way to the check, a score within this band of escalating starts
    # the cloud call early (0: off). Saves time when it escalates, costs a cloud call when not.
    hedge_band: float = 0.0
    limits: DeviceLimits = field(default_factory=DeviceLimits)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"Unknown routing mode {self.mode!r}; choose from "
                              f"{', '.join(MODES)}.", param="routing_mode")
        if self.mode in ("prompt", "combined") and self.prompt is None:
            raise ConfigError(f"Routing mode {self.mode!r} needs a prompt router in the "
                              "routing config (see `tandem calibrate`).", param="routing_config")
        if self.mode in ("cascade", "combined") and self.cascade is None:
            raise ConfigError(f"Routing mode {self.mode!r} needs a cascade router in the "
                              "routing config (see `tandem calibrate`).", param="routing_config")
        if self.cascade_tokens < 1:
            raise ConfigError("cascade_tokens must be at least 1.", param="cascade_tokens")

    # -- file form ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def scored(s: ScoredRouter | None) -> dict[str, Any] | None:
            return None if s is None else {"threshold": s.threshold, "router": s.router.to_json()}

        return {
            "format": CONFIG_FORMAT,
            "mode": self.mode,
            "cascade_tokens": self.cascade_tokens,
            "hysteresis": self.hysteresis,
            "device_bias": self.device_bias,
            "hedge_band": self.hedge_band,
            "prompt": scored(self.prompt),
            "cascade": scored(self.cascade),
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoutingConfig:
        if data.get("format") != CONFIG_FORMAT:
            raise ConfigError(f"Not a routing config (format {data.get('format')!r}, expected "
                              f"{CONFIG_FORMAT!r}); write one with `tandem calibrate`.")

        def scored(d: Mapping[str, Any] | None) -> ScoredRouter | None:
            if d is None:
                return None
            return ScoredRouter(LinearRouter.from_json(d["router"]), float(d["threshold"]))

        try:
            return cls(
                mode=data["mode"],
                prompt=scored(data.get("prompt")),
                cascade=scored(data.get("cascade")),
                cascade_tokens=int(data.get("cascade_tokens", 16)),
                hysteresis=float(data.get("hysteresis", 0.02)),
                device_bias=float(data.get("device_bias", 0.1)),
                hedge_band=float(data.get("hedge_band", 0.0)),
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"The routing config is incomplete or malformed ({exc}).") from exc

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path | None = None) -> RoutingConfig:
        """A routing config file; without a path, the one shipped with Tandem."""
        if path is None:
            shipped = resources.files("tandem.routing").joinpath("default_routing.json")
            return cls.from_json(json.loads(shipped.read_text()))
        return cls.from_json(read_json(path, "routing config", "routing_config"))


class RoutingPolicy:
    """Decides each ``auto`` request; stateless apart from its configuration."""

    def __init__(self, config: RoutingConfig | None = None):
        self.config = config or RoutingConfig()

    def with_mode(self, mode: Mode) -> RoutingPolicy:
        return RoutingPolicy(replace(self.config, mode=mode))

    def decide(self, ctx: RequestContext) -> RouteDecision:
        cfg = self.config
        # 1. context gates
        if ctx.prompt_tokens >= ctx.local_n_ctx:
            if ctx.trims and not ctx.cloud_up:  # the history is trimmed to the local window
                reason = "cloud_not_configured" if not ctx.cloud_configured else "cloud_unavailable"
                return RouteDecision(Action.LOCAL, reason)
            return RouteDecision(Action.CLOUD, "exceeds_local_context")
        if not ctx.cloud_configured:
            return RouteDecision(Action.LOCAL, "cloud_not_configured")
        if not ctx.cloud_up:
            return RouteDecision(Action.LOCAL, "cloud_unavailable")
        if ctx.local_state != "ready":
            return RouteDecision(Action.CLOUD, f"local_{ctx.local_state}")
        pressure = ctx.device.pressure(cfg.limits)
        shift = self._shift(pressure, ctx.previous_tier)
        if cfg.mode == "local_first":
            if pressure is not None:
                return RouteDecision(Action.CLOUD, pressure)
            return RouteDecision(Action.LOCAL, "default_local")
        # 2. the prompt router
        scores: dict[str, float] = {}
        features: dict[str, float] = {}
        if cfg.mode in ("prompt", "combined"):
            assert cfg.prompt is not None
            features = prompt_features(ctx.prompt)
            score = cfg.prompt.router.score(features)
            scores["prompt"] = round(score, 4)
            if not cfg.prompt.router.knows(features):
                # Unlike every prompt it was trained on: its score is extrapolation, and the
                # decision is left to the cascade (or, without one, to the local default).
                scores["prompt_abstained"] = 1.0
                if cfg.mode == "prompt":
                    return RouteDecision(Action.LOCAL, "prompt_router_abstained", scores,
                                         threshold_shift=shift)
            elif score + shift > cfg.prompt.threshold:
                reason = "prompt_router" if pressure is None else f"prompt_router_{pressure}"
                return RouteDecision(Action.CLOUD, reason, scores, threshold_shift=shift)
            if cfg.mode == "prompt":
                return RouteDecision(Action.LOCAL, "prompt_router_local", scores,
                                     threshold_shift=shift)
        # 3. the cascade
        return RouteDecision(Action.CASCADE, "cascade", scores, cfg.cascade_tokens, shift,
                             features)

    def _shift(self, pressure: str | None, previous_tier: str | None) -> float:
        shift = self.config.device_bias if pressure is not None else 0.0
        if previous_tier == "cloud":
            shift += self.config.hysteresis
        elif previous_tier == "local":
            shift -= self.config.hysteresis
        return shift

    def cascade_check(self, decision: RouteDecision, features: Mapping[str, float],
                      margin: float = 0.0) -> tuple[bool, float]:
        """(escalate?, score) for a cascade's local start with these confidence features;
        ``margin`` lowers the threshold (the hedged mode's "borderline" test). A start unlike
        the router's training data (``cascade_knows`` false) never escalates: local first."""
        cascade = self.config.cascade
        assert cascade is not None
        score = cascade.router.score(features)
        if not cascade.router.knows(features):
            return False, score
        return score + decision.threshold_shift > cascade.threshold - margin, score

    def cascade_knows(self, features: Mapping[str, float]) -> bool:
        """Is this local start like the cascade router's training data?"""
        cascade = self.config.cascade
        return cascade is None or cascade.router.knows(features)
