"""One chat turn, end to end: decide the tier, stream from it, fall back when it fails.

The gateway speaks in typed events. It yields a ``RouteInfo`` before the first token and again
whenever the answering tier changes (a failed cloud call continues locally), then
``TokenEvent``s and one ``Finish``. Non-streaming callers collect the same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tandem.errors import (
    CloudError,
    ContextLengthError,
    InvalidRequestError,
    OverloadedError,
    TandemError,
    TierUnavailableError,
)
from tandem.events import Finish, StreamEvent, TokenEvent
from tandem.local.chat import Message
from tandem.metrics import GatewayMetrics
from tandem.privacy.policy import CloudShield, PrivacyGuard, PrivacyMode, digest
from tandem.privacy.redact import Placeholders
from tandem.routing.device import DeviceMonitor
from tandem.routing.policy import Action, RequestContext, RouteDecision, RoutingPolicy
from tandem.routing.signals import RunningConfidence, prompt_features
from tandem.sessions.fit import fit_messages
from tandem.turn import (
    CloudTier,
    GatewayEvent,
    LocalTier,
    RouteInfo,
    RoutePreference,
    Tier,
    Turn,
    cloud_body,
    last_user_text,
)

log = logging.getLogger("tandem.gateway")


def _local_failure_reason(exc: TandemError) -> str | None:
    """The route reason when a local failure may go to the cloud; None for a client error
    (a bad request stays a bad request whichever tier would take it)."""
    if isinstance(exc, OverloadedError):
        return "local_overloaded"
    if isinstance(exc, CloudError) or exc.status_code < 500:
        return None
    return "local_failed"
AuditSink = Callable[[dict[str, Any]], None]

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
    ):
        self.local = local
        self.cloud = cloud
        self.metrics = metrics
        self._cloud_n_ctx = cloud_n_ctx
        self.privacy = privacy or PrivacyGuard()
        self.audit = audit  # records every cloud call (never its text)
        self.policy = policy or RoutingPolicy()
        self.device = device or DeviceMonitor()
        # Each session's last answering tier, for the policy's hysteresis (bounded LRU).
        self._last_tier: OrderedDict[str, str] = OrderedDict()

    # -- decision --------------------------------------------------------------------------

    def decide(self, turn: Turn) -> RouteInfo:
        """The tier for this turn, before anything is generated (blocking: it tokenizes)."""
        return self._plan(turn, self._prompt_tokens(turn.messages))[0]

    def _plan(self, turn: Turn, prompt_tokens: int) -> tuple[RouteInfo, RouteDecision | None]:
        """The first route, and the policy's decision for an ``auto`` turn (no I/O)."""
        fits_local = prompt_tokens < self.local.n_ctx
        fits_cloud = prompt_tokens < self._cloud_n_ctx
        cloud_up = self.cloud is not None and self.cloud.available
        trims = turn.context_starts is not None
        if turn.privacy == PrivacyMode.LOCAL_ONLY:
            return self._local_only(turn, fits_local or trims, prompt_tokens), None
        if not fits_local and not (fits_cloud and self.cloud is not None) and not trims:
            raise ContextLengthError(
                f"The prompt is about {prompt_tokens} tokens; the local context window is "
                f"{self.local.n_ctx} and the cloud's is {self._cloud_n_ctx}. Shorten the "
                "conversation (or raise TANDEM_N_CTX / TANDEM_CLOUD_N_CTX).",
                param="messages",
            )
        if turn.route == RoutePreference.LOCAL:
            return self._local("requested_local"), None
        if turn.route == RoutePreference.CLOUD:
            if self.cloud is None:
                return self._fallback_local(turn, "cloud_not_configured"), None
            if not cloud_up:  # the breaker is open: don't wait for a timeout we expect
                return self._fallback_local(turn, "cloud_unavailable"), None
            return self._cloud("requested_cloud"), None
        ctx = RequestContext(
            prompt=last_user_text(turn.messages),
            prompt_tokens=prompt_tokens,
            local_n_ctx=self.local.n_ctx,
            cloud_configured=self.cloud is not None,
            cloud_up=cloud_up,
            local_state=str(self.local.state),
            device=self.device.read(),
            previous_tier=self._last_tier.get(turn.session_id) if turn.session_id else None,
            trims=trims,
        )
        decision = self.policy.decide(ctx)
        if decision.action == Action.CLOUD:
            return replace(self._cloud(decision.reason), scores=decision.scores), decision
        return replace(self._local(decision.reason), scores=decision.scores), decision

    def _local_only(self, turn: Turn, fits: bool, prompt_tokens: int) -> RouteInfo:
        if turn.route == RoutePreference.CLOUD:
            raise InvalidRequestError(
                "tandem.route is 'cloud' but tandem.privacy is 'local_only' (for this request or "
                "its session); drop one of them.",
                param="tandem.route",
            )
        if not fits:
            raise ContextLengthError(
                f"The prompt is about {prompt_tokens} tokens and the local context window is "
                f"{self.local.n_ctx}; privacy 'local_only' forbids the cloud. Shorten the "
                "conversation, use a session (it trims old turns), or raise TANDEM_N_CTX.",
                param="messages",
            )
        reason = "requested_local" if turn.route == RoutePreference.LOCAL else "privacy_local_only"
        return self._local(reason)

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

    def _fallback_local(self, turn: Turn, reason: str) -> RouteInfo:
        if turn.fallback:
            return self._local(reason)
        if self.cloud is None:  # retrying cannot help: a client error, not a 503
            raise InvalidRequestError(
                "This gateway has no cloud tier (TANDEM_CLOUD_URL is not set) and the request "
                "allows no fallback; drop tandem.fallback=false or route 'auto'/'local'.",
                param="tandem.route",
                code=reason,
            )
        cooldown = getattr(getattr(self.cloud, "breaker", None), "cooldown_s", 5.0)
        raise TierUnavailableError(
            f"The cloud tier cannot answer ({reason}) and fallback is off; retry later or set "
            "tandem.fallback to true.",
            code=reason,
            retry_after_s=cooldown,
        )

    # -- streaming -------------------------------------------------------------------------

    async def stream(self, turn: Turn) -> AsyncIterator[GatewayEvent]:
        """Answer one turn as events; falls back between tiers as the turn allows."""
        prompt_tokens = await asyncio.to_thread(self._prompt_tokens, turn.messages)
        route, decision = self._plan(turn, prompt_tokens)
        if str(self.local.state) != "ready":
            # Cold after its keep-alive, or failed with a retry due: load it again now, so the
            # device is local-first again once the load time has passed (this turn may be
            # answered by the cloud meanwhile).
            self.local.wake()
        started = time.perf_counter()
        text: list[str] = []
        waiting_first = True
        async for event in self._answer(turn, route, text, decision):
            if isinstance(event, RouteInfo):
                route = event
            elif isinstance(event, Finish):
                self.metrics.observe_turn(route.tier, route.reason, event, started)
                self._remember(turn.session_id, route.tier)
                if route.tier == Tier.LOCAL and "decode_s" in event.timings:
                    self.device.record_decode(event.completion_tokens, event.timings["decode_s"])
            elif waiting_first and event.text:
                waiting_first = False
                self.metrics.observe_first_token(route.tier, started)
            yield event

    def _remember(self, session_id: str | None, tier: Tier) -> None:
        if session_id is None:
            return
        self._last_tier[session_id] = tier.value
        self._last_tier.move_to_end(session_id)
        while len(self._last_tier) > 10_000:
            self._last_tier.popitem(last=False)

    async def _answer(
        self, turn: Turn, route: RouteInfo, text: list[str], decision: RouteDecision | None = None
    ) -> AsyncIterator[GatewayEvent]:
        messages, route = await self._fit(turn, route)
        if decision is not None and decision.action == Action.CASCADE:
            async for event in self._cascade(turn, decision, route, messages, text):
                yield event
            return
        shield = None
        if route.tier == Tier.CLOUD:
            shield = await self._shield(turn, messages)
            if shield is None:  # content the policy keeps on the device
                messages, route = await self._fit(turn, self._local("privacy_keep_local"))
        yield route
        if shield is None:
            async for event in self._local_or_escalate(turn, messages, text):
                yield event
            return
        async for event in self._cloud_or_fallback(turn, shield, text):
            yield event

    async def _cloud_or_fallback(
        self, turn: Turn, shield: CloudShield, text: list[str], hedge: _Hedge | None = None
    ) -> AsyncIterator[GatewayEvent]:
        """The cloud's answer (from ``hedge`` when it was started early); a failed cloud call
        is continued (or answered) locally."""
        source = hedge.stream(text) if hedge is not None else self._stream_cloud(turn, shield, text)
        try:
            async for event in source:
                yield event
        except CloudError as exc:
            reason = "cloud_failed" if not text else "cloud_failed_midstream"
            messages, info = await self._fit(turn, self._fallback_local(turn, reason))
            self.metrics.count_fallback(reason, str(exc.code))
            yield info
            async for event in self._stream_local(turn, messages, text):
                yield event

    async def _local_or_escalate(
        self, turn: Turn, messages: list[Message], text: list[str]
    ) -> AsyncIterator[GatewayEvent]:
        """Local first; a busy or broken local engine hands an ``auto`` turn to the cloud."""
        try:
            async for event in self._stream_local(turn, messages, text):
                yield event
        except TandemError as exc:
            if text:
                raise
            async for escalated in self._escalate_local_failure(turn, exc, text):
                yield escalated

    async def _escalate_local_failure(
        self, turn: Turn, exc: TandemError, text: list[str]
    ) -> AsyncIterator[GatewayEvent]:
        """The cloud answers a turn whose local start failed before any text, when the turn
        allows it (``auto`` with fallback, a healthy cloud, privacy permitting); else ``exc``."""
        reason = _local_failure_reason(exc)
        may_escalate = turn.route == RoutePreference.AUTO and turn.fallback
        if reason is None or not may_escalate or self.cloud is None or not self.cloud.available:
            raise exc
        messages, info = await self._fit(turn, self._cloud(reason))
        shield = await self._shield(turn, messages)
        if shield is None:
            raise exc
        log.info("local tier failed (%s: %s); the cloud answers", exc.code, exc.message)
        yield info
        async for event in self._stream_cloud(turn, shield, text):
            yield event

    async def _cascade(
        self,
        turn: Turn,
        decision: RouteDecision,
        route: RouteInfo,
        messages: list[Message],
        text: list[str],
    ) -> AsyncIterator[GatewayEvent]:
        """Start locally; after ``decision.cascade_tokens`` tokens keep going or escalate.

        The local start is held back until the check, so a client sees one answer from one
        tier (and the route headers name the tier that answers). The check reads the confidence
        statistics of the tokens so far; if the local answer ends sooner, the whole answer is
        checked. Whatever ends the turn (an answer, an error, a client that goes away), the
        exit stack stops the local generation and cancels a hedged cloud call still running.
        """
        prompt = last_user_text(turn.messages)
        confidence = RunningConfidence(prompt)
        about_prompt = decision.prompt_features or prompt_features(prompt)
        held: list[StreamEvent] = []
        local = self.local.stream(messages, turn.params, "", turn.session_id)
        assert isinstance(local, AsyncGenerator)
        finished = False
        hedge: _Hedge | None = None
        band = self.policy.config.hedge_band
        hedge_at = max(1, decision.cascade_tokens // 2)
        async with contextlib.AsyncExitStack() as cleanup:
            cleanup.push_async_callback(local.aclose)
            try:
                async for event in local:
                    held.append(event)
                    if isinstance(event, Finish):
                        finished = True
                        break
                    confidence.add(event.logprob, event.text)
                    if len(confidence) >= decision.cascade_tokens:
                        break
                    if band > 0 and len(confidence) == hedge_at and hedge is None:
                        hedge = await self._maybe_hedge(
                            turn, decision, confidence, about_prompt, band
                        )
                        if hedge is not None:
                            cleanup.push_async_callback(hedge.cancel)
            except TandemError as exc:
                if held:
                    raise
                async for escalated in self._escalate_local_failure(turn, exc, text):
                    yield escalated
                return
            checked = time.perf_counter()
            features = {**confidence.features(), **about_prompt}
            escalate, score = self.policy.cascade_check(decision, features)
            scores = {**decision.scores, "cascade": round(score, 4)}
            shield = None
            if escalate:
                cloud_messages, cloud_route = await self._fit(
                    turn, self._cloud("cascade_low_confidence")
                )
                shield = await self._shield(turn, cloud_messages)
            self.metrics.observe_cascade(
                "escalated" if shield is not None else "kept", checked, len(confidence)
            )
            if shield is None:
                if hedge is not None:
                    await hedge.cancel()
                    self.metrics.count_hedge("cancelled")
                if escalate:
                    reason = "privacy_keep_local"
                elif not self.policy.cascade_knows(features):
                    reason = "cascade_abstained"
                else:
                    reason = "cascade_confident"
                yield replace(route, reason=reason, scores=scores)
                for event in held:
                    if isinstance(event, TokenEvent) and event.text:
                        text.append(event.text)
                    yield event
                if not finished:
                    async for event in local:
                        if isinstance(event, TokenEvent) and event.text:
                            text.append(event.text)
                        yield event
                return
            await local.aclose()  # the local start is not needed: free the engine now
            if hedge is not None:
                self.metrics.count_hedge("used")
                scores["hedged"] = 1.0
            yield replace(cloud_route, scores=scores)
            async for event in self._cloud_or_fallback(turn, shield, text, hedge):
                yield event

    async def _maybe_hedge(self, turn: Turn, decision: RouteDecision,
                           confidence: RunningConfidence, about_prompt: Mapping[str, float],
                           band: float) -> _Hedge | None:
        """Start the cloud early when the confidence so far is within ``band`` of escalating."""
        features = {**confidence.features(), **about_prompt}
        borderline, _ = self.policy.cascade_check(decision, features, margin=band)
        if not borderline:
            return None
        messages, _ = await self._fit(turn, self._cloud("cascade_low_confidence"))
        shield = await self._shield(turn, messages)
        if shield is None:
            return None
        self.metrics.count_hedge("started")
        return _Hedge(self._stream_cloud(turn, shield, []))

    async def _shield(self, turn: Turn, messages: list[Message]) -> CloudShield | None:
        """The cloud-bound form of the messages, or None when they must stay local.

        The scan (Presidio, regexes over the whole conversation) runs on a worker thread."""
        if turn.privacy == PrivacyMode.LOCAL_ONLY:
            return None
        started = time.perf_counter()
        table = turn.placeholders if turn.placeholders is not None else Placeholders()
        shield = await asyncio.to_thread(self.privacy.shield, messages, turn.privacy, table)
        self.metrics.observe_privacy(
            "keep_local" if shield is None else turn.privacy.value, started
        )
        return shield

    async def _fit(self, turn: Turn, route: RouteInfo) -> tuple[list[Message], RouteInfo]:
        """The messages the route's tier receives: a session's history trimmed to its window.

        Trimming renders and tokenizes the history several times: on a worker thread."""
        if turn.context_starts is None:
            return list(turn.messages), route
        window = self.local.n_ctx if route.tier == Tier.LOCAL else self._cloud_n_ctx
        # Leave room for the answer, but never more than a quarter of the window.
        budget = window - min(turn.params.max_tokens, window // 4)
        start = turn.context_starts.get(route.tier.value, 0)
        fitted = await asyncio.to_thread(
            fit_messages, turn.messages, self._prompt_tokens, budget, start
        )
        if fitted.dropped:
            self.metrics.count_trimmed(route.tier.value, fitted.dropped)
        return fitted.messages, replace(route, start=fitted.start, dropped=fitted.dropped)

    async def _stream_local(
        self, turn: Turn, messages: list[Message], text: list[str]
    ) -> AsyncIterator[StreamEvent]:
        prefix = "".join(text)
        async for event in self.local.stream(messages, turn.params, prefix, turn.session_id):
            if isinstance(event, TokenEvent) and event.text:
                text.append(event.text)
            yield event

    async def _stream_cloud(
        self, turn: Turn, shield: CloudShield, text: list[str]
    ) -> AsyncIterator[StreamEvent]:
        assert self.cloud is not None
        pieces = 0
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        finish = "stop"
        sent: list[tuple[bytes, str]] = []
        outcome = "incomplete"

        def record(body: bytes, endpoint: str) -> None:
            sent.append((body, endpoint))

        try:
            async for chunk in self.cloud.stream_chat(cloud_body(turn, shield.messages), record):
                restored = ""
                if chunk.text:
                    pieces += max(1, len(chunk.logprobs))
                    restored = shield.restore(chunk.text)
                    if restored:
                        text.append(restored)
                if turn.params.logprobs and chunk.logprobs:
                    # The cloud's logprobs, one event per token; the chunk's (restored) text
                    # rides on the first. Their token strings are the cloud's own: under
                    # redaction they hold the placeholders (<PERSON_1>), not the restored
                    # values, and may not concatenate to the text the client sees.
                    for i, lp in enumerate(chunk.logprobs):
                        yield TokenEvent(
                            text=restored if i == 0 else "",
                            logprob=lp.logprob,
                            token=lp.token,
                            top_logprobs=lp.top,
                        )
                elif restored:
                    yield TokenEvent(text=restored)
                prompt_tokens = chunk.prompt_tokens or prompt_tokens
                completion_tokens = chunk.completion_tokens or completion_tokens
                finish = chunk.finish_reason or finish
            outcome = "ok"
        except TandemError as exc:
            outcome = f"error:{exc.code}"
            raise
        finally:
            cancelled: asyncio.CancelledError | None = None
            for i, (body, endpoint) in enumerate(sent):  # one per endpoint tried
                failed_over = i < len(sent) - 1
                try:
                    await self._record_cloud_call(
                        turn, shield, body, endpoint, "failed_over" if failed_over else outcome
                    )
                except asyncio.CancelledError as exc:  # the row is written: write the rest
                    cancelled = exc
            if cancelled is not None:
                raise cancelled
        tail = shield.flush()
        if tail:
            text.append(tail)
            yield TokenEvent(text=tail)
        yield Finish(
            reason=finish,  # the cloud's own reason ("content_filter", ...), passed through
            prompt_tokens=prompt_tokens,
            # Without usage from the server, count streamed pieces (one token each, typically).
            completion_tokens=completion_tokens if completion_tokens is not None else pieces,
        )

    def health(self) -> dict[str, Any]:
        return {
            "local": self.local.health(),
            "cloud": None if self.cloud is None else self.cloud.health(),
        }

    async def _record_cloud_call(
        self, turn: Turn, shield: CloudShield, body: bytes, endpoint: str, outcome: str
    ) -> None:
        if self.audit is None:
            return
        assert self.cloud is not None
        record = {
            "at": time.time(),
            "session_id": turn.session_id,
            "endpoint": endpoint,
            "model": self.cloud.model,
            "mode": shield.mode.value,
            "redacted": shield.counts,
            "body_sha256": digest(body),
            "body_bytes": len(body),
            "outcome": outcome,
        }
        # The row is written in a thread; a cancellation (the client went away) must not
        # abandon it: wait for the write under a shield, again if the cancellation is
        # delivered again (anyio repeats it at every await of a cancelled scope; the write
        # takes milliseconds), then re-raise the cancellation.
        write = asyncio.ensure_future(asyncio.to_thread(self.audit, record))
        cancelled: asyncio.CancelledError | None = None
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError as exc:
                cancelled = exc
            except Exception:
                pass  # reported below
        if not write.cancelled() and write.exception() is not None:
            log.error(
                "could not write the audit record of a cloud call", exc_info=write.exception()
            )
        if cancelled is not None:
            raise cancelled

    def forget(self, session_id: str) -> None:
        """Drop any state held for a session (the local KV cache, its last tier)."""
        self.local.forget(session_id)
        self._last_tier.pop(session_id, None)


class _Hedge:
    """A cloud answer started early by a hedged cascade, buffered until used or cancelled."""

    def __init__(self, source: AsyncIterator[StreamEvent]):
        self._events: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(source))

    async def _pump(self, source: AsyncIterator[StreamEvent]) -> None:
        try:
            async for event in source:
                self._events.put_nowait(event)
        except Exception as exc:  # handed to the consumer, which falls back
            self._events.put_nowait(exc)
            return
        self._events.put_nowait(None)

    async def stream(self, text: list[str]) -> AsyncIterator[StreamEvent]:
        try:
            while (item := await self._events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TokenEvent) and item.text:
                    text.append(item.text)
                yield item
        finally:  # a client that goes away mid-answer must not leave the cloud call running
            await self.cancel()

    async def cancel(self) -> None:
        """Stop the cloud call if it is still running (idempotent)."""
        if self._task.done():
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
