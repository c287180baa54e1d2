"""One chat turn, end to end: plan the tier, stream from it, fall back when it fails.

The gateway speaks in typed events. It yields a ``RouteInfo`` before the first token and again
whenever the answering tier changes (a failed cloud call continues locally), then
``TokenEvent``s and one ``Finish``. Non-streaming callers collect the same stream.

The pieces live in ``tandem.request``: ``plan`` (the first route, no I/O), ``Cascade`` and
``Hedge`` (the local start held back and checked), ``ShieldedCloud`` (redact, stream,
restore, audit) and ``AnswerBuffer`` (what the client has been sent). This module chains
them with the tiers and the fallbacks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from tandem.errors import CloudError, ContextLengthError, InvalidRequestError, TandemError
from tandem.events import Finish, StreamEvent, ToolCallDelta
from tandem.local.chat import Message
from tandem.local.toolcalls import as_tool_calls
from tandem.metrics import GatewayMetrics
from tandem.privacy.policy import CloudShield, PrivacyGuard
from tandem.request.buffer import AnswerBuffer
from tandem.request.cascade import Cascade, Hedge
from tandem.request.plan import (
    LastTiers,
    Plan,
    Situation,
    cloud_only,
    escalation_reason,
    fallback,
    plan,
)
from tandem.request.shielded import AuditSink, ShieldedCloud
from tandem.routing.device import DeviceMonitor
from tandem.routing.policy import Action, RouteDecision, RoutingPolicy
from tandem.sessions.fit import fit_window
from tandem.tiers import CloudTier, EngineState, LocalTier, Tier
from tandem.turn import GatewayEvent, RouteInfo, RoutePreference, Turn, last_user_text

log = logging.getLogger("tandem.gateway")

# The cloud's own token count is asked for (one round trip) only when the local tokenizer's
# estimate of the cloud-bound prompt comes within this share of the cloud's budget: the
# tokenizers of two models differ by tens of percent, rarely by half.
CLOUD_COUNT_FROM = 0.5
# Characters per token used to estimate a prompt's size when no tokenizer is at hand.
CHARS_PER_TOKEN = 3.0


class Gateway:
    """Routes each turn to the local engine or the cloud and streams the answer."""

    def __init__(
        self,
        local: LocalTier,
        cloud: CloudTier | None,
        metrics: GatewayMetrics,
        cloud_n_ctx: int,
        privacy: PrivacyGuard | None = None,
        audit: AuditSink | None = None,
        policy: RoutingPolicy | None = None,
        device: DeviceMonitor | None = None,
        cloud_fim: bool = False,
    ):
        self.local = local
        self.cloud = cloud
        self.metrics = metrics
        self._cloud_n_ctx = cloud_n_ctx
        self._cloud_fim = cloud_fim  # the cloud's /completions takes a suffix
        self.privacy = privacy or PrivacyGuard()
        self.policy = policy or RoutingPolicy()
        self.device = device or DeviceMonitor()
        self._shielded = None if cloud is None else ShieldedCloud(cloud, self.privacy, metrics)
        self.audit = audit  # records every cloud call (never its text)
        self._last_tier = LastTiers()  # for the policy's hysteresis

    @property
    def audit(self) -> AuditSink | None:
        return None if self._shielded is None else self._shielded.audit

    @audit.setter
    def audit(self, sink: AuditSink | None) -> None:
        if self._shielded is not None:
            self._shielded.audit = sink

    # -- planning --------------------------------------------------------------------------

    def decide(self, turn: Turn) -> RouteInfo:
        """The tier for this turn, before anything is generated (blocking: it tokenizes)."""
        now = self._situation(turn, self._prompt_tokens(turn.messages))
        return plan(turn, now, self.policy).route

    def _situation(self, turn: Turn, prompt_tokens: int) -> Situation:
        cloud = self.cloud
        return Situation(
            prompt_tokens=prompt_tokens,
            local_model=self.local.model_name,
            local_n_ctx=self.local.n_ctx,
            cloud_model=None if cloud is None else cloud.model,
            cloud_n_ctx=self._cloud_window(),
            local_fim=turn.fills_middle and self.local.fim,
            local_tools=turn.calls_tools and self.local.tools,
            cloud_fim=self._cloud_fim,
            cloud_up=cloud is not None and cloud.available,
            cloud_retry_after_s=5.0 if cloud is None else cloud.breaker.cooldown_s,
            local_state=EngineState(self.local.state),
            device=self.device.read(),
            previous_tier=self._last_tier.get(turn.session_id),
        )

    def _prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Blocking (renders the chat template and tokenizes): call it off the event loop."""
        counted = self.local.count_tokens(messages)
        if counted is not None:
            return counted
        return int(sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN)

    def _local(self, reason: str) -> RouteInfo:
        return RouteInfo(Tier.LOCAL, reason, self.local.model_name)

    def _cloud(self, reason: str) -> RouteInfo:
        assert self.cloud is not None
        return RouteInfo(Tier.CLOUD, reason, self.cloud.model)

    def _fallback(self, turn: Turn, reason: str) -> RouteInfo:
        return fallback(turn, self._situation(turn, 0), reason)

    # -- streaming -------------------------------------------------------------------------

    async def stream(self, turn: Turn) -> AsyncGenerator[GatewayEvent, None]:
        """Answer one turn as events; falls back between tiers as the turn allows."""
        prompt_tokens = await asyncio.to_thread(self._prompt_tokens, turn.messages)
        first = plan(turn, self._situation(turn, prompt_tokens), self.policy)
        if self.local.state != EngineState.READY:
            # Cold after its keep-alive, or failed with a retry due: load it again now, so the
            # device is local-first again once the load time has passed (this turn may be
            # answered by the cloud meanwhile).
            self.local.wake()
        started = time.perf_counter()
        route = first.route
        waiting_first = True
        async for event in self._answer(turn, first, AnswerBuffer()):
            if isinstance(event, RouteInfo):
                route = event
            elif isinstance(event, Finish):
                self.metrics.observe_turn(route.tier, route.reason, event, started)
                self._last_tier.remember(turn.session_id, route.tier)
                if route.tier == Tier.LOCAL and "decode_s" in event.timings:
                    self.device.record_decode(event.completion_tokens, event.timings["decode_s"])
            elif waiting_first and (isinstance(event, ToolCallDelta) or event.text):
                waiting_first = False
                self.metrics.observe_first_token(route.tier, started)
            yield event

    async def _answer(
        self, turn: Turn, first: Plan, answer: AnswerBuffer
    ) -> AsyncIterator[GatewayEvent]:
        messages, route = await self._fit(turn, first.route)
        if first.decision is not None and first.decision.action == Action.CASCADE:
            async for event in self._cascade(turn, first.decision, route, messages, answer):
                yield event
            return
        shield = None
        if route.tier == Tier.CLOUD:
            route, shield = await self._shield_fitted(turn, messages, route)
            need = cloud_only(turn, self._situation(turn, 0)) if shield is None else None
            if need is not None:
                raise InvalidRequestError(
                    "The request holds content the privacy policy keeps on the device, and "
                    f"the local model ({self.local.model_name}) {need.cannot}. To answer "
                    f"locally, {need.drop}.",
                    param=need.param,
                    code="privacy_keep_local",
                )
            if shield is None:  # content the policy keeps on the device
                local = self._local("privacy_keep_local")
                messages, route = await self._fit(turn, local)
        yield route
        if shield is None:
            async for event in self._local_or_escalate(turn, messages, answer):
                yield event
            return
        async for event in self._cloud_or_fallback(turn, self._cloud_stream(turn, shield), answer):
            yield event

    async def _cloud_or_fallback(
        self, turn: Turn, cloud: AsyncIterator[StreamEvent], answer: AnswerBuffer
    ) -> AsyncIterator[GatewayEvent]:
        """The cloud's answer; a failed cloud call is continued (or answered) locally."""
        try:
            async for event in answer.tee(cloud):
                yield event
        except CloudError as exc:
            reason = "cloud_failed_midstream" if answer else "cloud_failed"
            messages, info = await self._fit(turn, self._fallback(turn, reason))
            self.metrics.count_fallback(reason, str(exc.code))
            yield info
            async for event in self._local_stream(turn, messages, answer):
                yield event

    async def _local_or_escalate(
        self, turn: Turn, messages: list[Message], answer: AnswerBuffer
    ) -> AsyncIterator[GatewayEvent]:
        """Local first; a busy or broken local engine hands an ``auto`` turn to the cloud."""
        try:
            async for event in self._local_stream(turn, messages, answer):
                yield event
        except TandemError as exc:
            if answer:
                raise
            async for escalated in self._escalate_local_failure(turn, exc, answer):
                yield escalated

    async def _escalate_local_failure(
        self, turn: Turn, exc: TandemError, answer: AnswerBuffer
    ) -> AsyncIterator[GatewayEvent]:
        """The cloud answers a turn whose local start failed before any text, when the turn
        allows it (``auto`` with fallback, a healthy cloud, privacy permitting); else ``exc``."""
        reason = escalation_reason(exc)
        may_escalate = turn.route == RoutePreference.AUTO and turn.fallback
        if reason is None or not may_escalate or self.cloud is None or not self.cloud.available:
            raise exc
        messages, info = await self._fit(turn, self._cloud(reason))
        info, shield = await self._shield_fitted(turn, messages, info)
        if shield is None:
            raise exc
        log.info("local tier failed (%s: %s); the cloud answers", exc.code, exc.message)
        yield info
        async for event in answer.tee(self._cloud_stream(turn, shield)):
            yield event

    async def _cascade(
        self,
        turn: Turn,
        decision: RouteDecision,
        route: RouteInfo,
        messages: list[Message],
        answer: AnswerBuffer,
    ) -> AsyncIterator[GatewayEvent]:
        """Start locally; after ``decision.cascade_tokens`` tokens keep going or escalate.

        The local start is held back until the check, so a client sees one answer from one
        tier (and the route headers name the tier that answers). Whatever ends the turn (an
        answer, an error, a client that goes away), the local generation is closed and a
        hedged cloud call still running is cancelled.
        """
        tools = turn.tools if turn.calls_tools else None
        prompt = last_user_text(turn.messages)
        cascade = Cascade(self.policy, decision, prompt, turn.params.output, tools)
        local = self._local_events(turn, messages, "")
        async with aclosing(local), Hedge() as hedge:

            async def at_hedge() -> None:
                if cascade.borderline() and (shield := await self._cloud_shield(turn)):
                    self.metrics.count_hedge("started")
                    hedge.start(self._cloud_stream(turn, shield[1]))

            try:
                await cascade.hold(local, at_hedge)
            except TandemError as exc:
                if cascade.held:
                    raise
                async for escalated in self._escalate_local_failure(turn, exc, answer):
                    yield escalated
                return
            checked = time.perf_counter()
            verdict = cascade.check()
            cloud = (
                await self._cloud_shield(turn, verdict.escalate_reason)
                if verdict.escalate
                else None
            )
            outcome = "escalated" if cloud is not None else "kept"
            self.metrics.observe_cascade(outcome, checked, cascade.tokens)
            if cloud is None:
                if hedge.started:
                    await hedge.cancel()
                    self.metrics.count_hedge("cancelled")
                reason = "privacy_keep_local" if verdict.escalate else verdict.reason
                yield replace(route, reason=reason, scores=verdict.scores)
                async for kept in answer.tee(cascade.rest(local)):
                    yield kept
                return
            await local.aclose()  # the local start is not needed: free the engine now
            scores = verdict.scores
            if hedge.started:
                self.metrics.count_hedge("used")
                scores["hedged"] = 1.0
            cloud_route, shield = cloud
            yield replace(cloud_route, scores=scores)
            source = hedge.events() if hedge.started else self._cloud_stream(turn, shield)
            async for escalated in self._cloud_or_fallback(turn, source, answer):
                yield escalated

    async def _cloud_shield(
        self, turn: Turn, reason: str = "cascade_low_confidence"
    ) -> tuple[RouteInfo, CloudShield] | None:
        """The cascade's escalation: the cloud route and shield, or None (it stays local)."""
        messages, route = await self._fit(turn, self._cloud(reason))
        route, shield = await self._shield_fitted(turn, messages, route)
        return None if shield is None else (route, shield)

    def _cloud_window(self) -> int:
        """The cloud's window: ``cloud_n_ctx``, or less where the server says it serves less."""
        served = None if self.cloud is None else self.cloud.window_tokens
        return self._cloud_n_ctx if served is None else min(self._cloud_n_ctx, served)

    def _cloud_budget(self, turn: Turn) -> int:
        window = self._cloud_window()
        return window - min(turn.params.max_tokens, window // 4)

    async def _shield_fitted(
        self, turn: Turn, messages: list[Message], route: RouteInfo
    ) -> tuple[RouteInfo, CloudShield | None]:
        """The cloud-bound form of ``messages`` (None: they stay local), checked against the
        cloud's own token count where it offers one (vLLM's ``/tokenize``) and the local
        estimate comes near the cloud's window: a session's older exchanges are dropped until
        the cloud's count fits; a prompt that is not a session's is refused. Only the shielded
        messages are counted: nothing reaches the cloud that would not be sent anyway."""
        shield = await self._shield(turn, messages)
        if shield is None or self.cloud is None:
            return route, shield
        estimate = await asyncio.to_thread(self._prompt_tokens, shield.messages)
        if estimate < CLOUD_COUNT_FROM * self._cloud_budget(turn):
            return route, shield
        counted = await self.cloud.count_tokens(shield.messages)
        budget = self._cloud_budget(turn)  # the count may have told the window
        if counted is None or counted.tokens <= budget:
            return route, shield
        if turn.context_starts is None:
            raise ContextLengthError(
                f"The prompt is {counted.tokens} tokens by the cloud's own count "
                f"({self.cloud.model}); its window allows {budget} with room for the answer. "
                "Send a shorter prompt or lower max_tokens.",
                param="messages",
            )
        scale = counted.tokens / max(estimate, 1)  # the cloud's tokens per local token

        def count(some: Sequence[Message]) -> int:
            return math.ceil(self._prompt_tokens(some) * scale)

        start = turn.context_starts.get(Tier.CLOUD.value, 0)
        fitted = await asyncio.to_thread(
            fit_window, turn.messages, count, self._cloud_window(), turn.params.max_tokens, start
        )
        if fitted.dropped > route.dropped:
            self.metrics.count_trimmed(Tier.CLOUD.value, fitted.dropped - route.dropped)
        shield = await self._shield(turn, fitted.messages)
        return replace(route, start=fitted.start, dropped=fitted.dropped), shield

    async def _shield(self, turn: Turn, messages: list[Message]) -> CloudShield | None:
        assert self._shielded is not None
        return await self._shielded.shield(turn, messages)

    def _cloud_stream(self, turn: Turn, shield: CloudShield) -> AsyncIterator[StreamEvent]:
        assert self._shielded is not None
        return self._shielded.stream(turn, shield)

    def _local_stream(
        self, turn: Turn, messages: list[Message], answer: AnswerBuffer
    ) -> AsyncIterator[StreamEvent]:
        """The local answer, continuing whatever the client has been sent already."""
        return answer.tee(self._local_events(turn, messages, answer.text))

    def _local_events(
        self, turn: Turn, messages: list[Message], prefix: str
    ) -> AsyncGenerator[StreamEvent, None]:
        """The local tier's stream; an answer that may call tools has its calls parsed."""
        local = self.local.stream(messages, turn.params, prefix, turn.session_id)
        if turn.tools is None or not turn.calls_tools:
            return local
        return as_tool_calls(local, turn.tools)

    async def _fit(self, turn: Turn, route: RouteInfo) -> tuple[list[Message], RouteInfo]:
        """The messages the route's tier receives: a session's history trimmed to its window.

        Trimming renders and tokenizes the history several times: on a worker thread."""
        if turn.context_starts is None:
            return list(turn.messages), route
        window = self.local.n_ctx if route.tier == Tier.LOCAL else self._cloud_window()
        start = turn.context_starts.get(route.tier.value, 0)
        fitted = await asyncio.to_thread(
            fit_window, turn.messages, self._prompt_tokens, window, turn.params.max_tokens, start
        )
        if fitted.dropped:
            self.metrics.count_trimmed(route.tier.value, fitted.dropped)
        return fitted.messages, replace(route, start=fitted.start, dropped=fitted.dropped)

    # -- state -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "local": self.local.health(),
            "cloud": None if self.cloud is None else self.cloud.health(),
        }

    def forget(self, session_id: str) -> None:
        """Drop any state held for a session (the local KV cache, its last tier)."""
        self.local.forget(session_id)
        self._last_tier.forget(session_id)
