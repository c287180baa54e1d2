"""The first route of a turn: a pure function of the turn and what the gateway knows now.

No I/O happens here: the gateway counts the prompt's tokens and reads the tiers' and the
device's state first (``Situation``), so that a plan can be tested, replayed and explained
from plain values.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from tandem.errors import (
    CloudError,
    ContextLengthError,
    InvalidRequestError,
    OverloadedError,
    TandemError,
    TierUnavailableError,
)
from tandem.privacy.types import PrivacyMode
from tandem.routing.device import DeviceState
from tandem.routing.policy import Action, RequestContext, RouteDecision, RoutingPolicy
from tandem.tiers import EngineState, Tier
from tandem.turn import RouteInfo, RoutePreference, Turn, last_user_text


@dataclass(frozen=True)
class Situation:
    """The tiers and the device as they are when a turn arrives."""

    prompt_tokens: int
    local_model: str
    local_n_ctx: int
    cloud_model: str | None  # None: no cloud tier is configured
    cloud_n_ctx: int
    local_fim: bool = False  # the local model has fill-in-the-middle tokens
    local_tools: bool = False  # the local model's chat template calls tools
    cloud_fim: bool = False  # the cloud's /completions takes a suffix (TANDEM_CLOUD_FIM)
    cloud_up: bool = False  # its breaker lets a request through now
    cloud_retry_after_s: float = 5.0  # the breaker's cooldown, for a 503's Retry-After
    local_state: EngineState = EngineState.READY
    device: DeviceState = field(default_factory=DeviceState)
    previous_tier: str | None = None  # the session's last answering tier

    def local(self, reason: str) -> RouteInfo:
        return RouteInfo(Tier.LOCAL, reason, self.local_model)

    def cloud(self, reason: str) -> RouteInfo:
        assert self.cloud_model is not None
        return RouteInfo(Tier.CLOUD, reason, self.cloud_model)


@dataclass(frozen=True)
class Plan:
    route: RouteInfo  # where the turn starts
    decision: RouteDecision | None = None  # the policy's decision, for an ``auto`` turn


def plan(turn: Turn, now: Situation, policy: RoutingPolicy) -> Plan:
    """Where ``turn`` starts; raises the client error when no tier may take it."""
    fits_local = now.prompt_tokens < now.local_n_ctx
    fits_cloud = now.prompt_tokens < now.cloud_n_ctx
    trims = turn.context_starts is not None
    need = cloud_only(turn, now)
    if need is not None:
        return Plan(_cloud_only_route(turn, now, need, fits_cloud or trims))
    if turn.privacy == PrivacyMode.LOCAL_ONLY:
        return Plan(_local_only(turn, now, fits_local or trims))
    if not fits_local and not (fits_cloud and now.cloud_model is not None) and not trims:
        raise ContextLengthError(
            f"The prompt is about {now.prompt_tokens} tokens; the local context window is "
            f"{now.local_n_ctx} and the cloud's is {now.cloud_n_ctx}. Shorten the "
            "conversation (or raise TANDEM_N_CTX / TANDEM_CLOUD_N_CTX).",
            param="messages",
        )
    if turn.route == RoutePreference.LOCAL:
        return Plan(now.local("requested_local"))
    if turn.route == RoutePreference.CLOUD:
        if now.cloud_model is None:
            return Plan(fallback(turn, now, "cloud_not_configured"))
        if not now.cloud_up:  # the breaker is open: don't wait for a timeout we expect
            return Plan(fallback(turn, now, "cloud_unavailable"))
        return Plan(now.cloud("requested_cloud"))
    ctx = RequestContext(
        prompt=last_user_text(turn.messages),
        prompt_tokens=now.prompt_tokens,
        local_n_ctx=now.local_n_ctx,
        cloud_configured=now.cloud_model is not None,
        cloud_up=now.cloud_up,
        local_state=str(now.local_state),
        device=now.device,
        previous_tier=now.previous_tier,
        trims=trims,
    )
    decision = check_structured(turn, policy.decide(ctx))
    tier = now.cloud if decision.action == Action.CLOUD else now.local
    return Plan(replace(tier(decision.reason), scores=decision.scores), decision)


# Local decisions taken by the routers (the cloud is up and could answer instead).
ROUTED_LOCAL = frozenset({"default_local", "prompt_router_local", "prompt_router_abstained"})


def check_structured(turn: Turn, decision: RouteDecision) -> RouteDecision:
    """A structured answer (or one that may call tools) the routers keep local is still
    checked, against its schema or its tools' parameters, before the client sees it: a
    cascade without a confidence check (``cascade_tokens`` 0)."""
    checked = turn.params.output is not None or turn.calls_tools
    if not checked or decision.action != Action.LOCAL:
        return decision
    if decision.reason not in ROUTED_LOCAL:
        return decision
    return replace(decision, action=Action.CASCADE, cascade_tokens=0)


@dataclass(frozen=True)
class CloudOnly:
    """Something a turn asks for that only the cloud tier can give, in the words of its
    errors."""

    asks: str  # "offers tools"
    cannot: str  # "cannot call tools"
    drop: str  # how to ask for a local answer instead
    param: str
    reason: str  # the route reason when the cloud answers


TOOLS = CloudOnly(
    "offers tools",
    "cannot call tools",
    "drop 'tools' (or send tool_choice 'none')",
    "tools",
    "requires_tools",
)
FIM = CloudOnly(
    "asks to fill in the middle (a suffix)",
    "has no fill-in-the-middle tokens",
    "send it without a suffix",
    "suffix",
    "requires_fim",
)


def cloud_only(turn: Turn, now: Situation) -> CloudOnly | None:
    """What in ``turn`` the local model cannot do, if anything. (The bundled local models'
    chat templates have no tools, and their vocabularies no FIM tokens.)"""
    if turn.calls_tools and not now.local_tools:
        return TOOLS
    if turn.fills_middle and not now.local_fim:
        return FIM
    return None


def _cloud_only_route(turn: Turn, now: Situation, need: CloudOnly, fits: bool) -> RouteInfo:
    """The cloud's route for a turn only it can answer, or the error that says why not."""
    cannot = f"the local model ({now.local_model}) {need.cannot}"
    if turn.privacy == PrivacyMode.LOCAL_ONLY:
        raise InvalidRequestError(
            f"The request {need.asks}, but privacy 'local_only' (for this request or its "
            f"session) keeps it on the device and {cannot}. To answer locally, {need.drop}; "
            "or use privacy 'redact'.",
            param=need.param,
        )
    if turn.route == RoutePreference.LOCAL:
        raise InvalidRequestError(
            f"tandem.route is 'local' but the request {need.asks} and {cannot}. To answer "
            f"locally, {need.drop}; or route 'auto' or 'cloud'.",
            param="tandem.route",
        )
    if now.cloud_model is None:
        raise InvalidRequestError(
            f"The request {need.asks} and {cannot}; this gateway has no cloud tier "
            f"(TANDEM_CLOUD_URL is not set). To answer locally, {need.drop}; or configure a "
            "cloud.",
            param=need.param,
            code="fim_unsupported" if need is FIM else "invalid_request",
        )
    if need is FIM and not now.cloud_fim:
        raise InvalidRequestError(
            f"The request {need.asks} and {cannot}; the cloud tier is not marked as "
            "FIM-capable (set TANDEM_CLOUD_FIM=true if its /completions endpoint takes "
            f"'suffix'). To answer locally, {need.drop}.",
            param=need.param,
            code="fim_unsupported",
        )
    if not fits:
        raise ContextLengthError(
            f"The prompt is about {now.prompt_tokens} tokens and the cloud's context window "
            f"is {now.cloud_n_ctx}; only the cloud can answer this request. Shorten it.",
            param="messages",
        )
    if not now.cloud_up:
        raise _not_now(now, need, "cloud_unavailable")
    return now.cloud("requested_cloud" if turn.route == RoutePreference.CLOUD else need.reason)


def _not_now(now: Situation, need: CloudOnly, reason: str) -> TierUnavailableError:
    return TierUnavailableError(
        f"The request {need.asks}, only the cloud can answer it, and the cloud cannot answer "
        f"now ({reason}); the local model ({now.local_model}) {need.cannot}. Retry later, or "
        f"{need.drop} for a local answer.",
        code=reason,
        retry_after_s=now.cloud_retry_after_s,
    )


def fallback(turn: Turn, now: Situation, reason: str) -> RouteInfo:
    """The local route when the cloud cannot answer; the error when the turn forbids it (or
    asks for what the local model cannot do)."""
    need = cloud_only(turn, now)
    if need is not None:
        raise _not_now(now, need, reason)
    if turn.fallback:
        return now.local(reason)
    if now.cloud_model is None:  # retrying cannot help: a client error, not a 503
        raise InvalidRequestError(
            "This gateway has no cloud tier (TANDEM_CLOUD_URL is not set) and the request "
            "allows no fallback; drop tandem.fallback=false or route 'auto'/'local'.",
            param="tandem.route",
            code=reason,
        )
    raise TierUnavailableError(
        f"The cloud tier cannot answer ({reason}) and fallback is off; retry later or set "
        "tandem.fallback to true.",
        code=reason,
        retry_after_s=now.cloud_retry_after_s,
    )


def _local_only(turn: Turn, now: Situation, fits: bool) -> RouteInfo:
    if turn.route == RoutePreference.CLOUD:
        raise InvalidRequestError(
            "tandem.route is 'cloud' but tandem.privacy is 'local_only' (for this request or "
            "its session); drop one of them.",
            param="tandem.route",
        )
    if not fits:
        raise ContextLengthError(
            f"The prompt is about {now.prompt_tokens} tokens and the local context window is "
            f"{now.local_n_ctx}; privacy 'local_only' forbids the cloud. Shorten the "
            "conversation, use a session (it trims old turns), or raise TANDEM_N_CTX.",
            param="messages",
        )
    reason = "requested_local" if turn.route == RoutePreference.LOCAL else "privacy_local_only"
    return now.local(reason)


def escalation_reason(exc: TandemError) -> str | None:
    """The route reason when a local failure may go to the cloud; None for a client error
    (a bad request stays a bad request whichever tier would take it)."""
    if isinstance(exc, OverloadedError):
        return "local_overloaded"
    if isinstance(exc, CloudError) or exc.status_code < 500:
        return None
    return "local_failed"


class LastTiers:
    """Each session's last answering tier (a bounded LRU), for the policy's hysteresis."""

    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self._tiers: OrderedDict[str, str] = OrderedDict()

    def get(self, session_id: str | None) -> str | None:
        return None if session_id is None else self._tiers.get(session_id)

    def remember(self, session_id: str | None, tier: Tier) -> None:
        if session_id is None:
            return
        self._tiers[session_id] = tier.value
        self._tiers.move_to_end(session_id)
        while len(self._tiers) > self.capacity:
            self._tiers.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._tiers.pop(session_id, None)
