"""The cloud tier behind the privacy shield: redact → stream → restore → audit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from tandem.errors import TandemError
from tandem.events import Finish, StreamEvent, TokenEvent, ToolCallDelta
from tandem.local.chat import Message
from tandem.metrics import GatewayMetrics
from tandem.privacy.policy import CloudShield, PrivacyGuard, digest
from tandem.privacy.redact import Placeholders, Restorer
from tandem.privacy.types import PrivacyMode
from tandem.tiers import CloudTier
from tandem.tools import CallBuilder
from tandem.turn import Turn, cloud_body

log = logging.getLogger("tandem.gateway")

AuditSink = Callable[[dict[str, Any]], None]


class ShieldedCloud:
    """Sends a turn to the cloud only in its shielded form, and records every call.

    ``shield`` decides what may leave the device (None: nothing may); ``stream`` sends the
    redacted messages, restores the placeholders in the answer and writes one audit row per
    endpoint tried (never the text: its digest, size, what was redacted and the outcome).
    """

    def __init__(
        self,
        cloud: CloudTier,
        privacy: PrivacyGuard,
        metrics: GatewayMetrics,
        audit: AuditSink | None = None,
    ):
        self.cloud = cloud
        self.privacy = privacy
        self.metrics = metrics
        self.audit = audit

    async def shield(self, turn: Turn, messages: list[Message]) -> CloudShield | None:
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

    async def stream(self, turn: Turn, shield: CloudShield) -> AsyncIterator[StreamEvent]:
        """The cloud's answer to the shielded messages, restored, then one ``Finish``."""
        pieces = 0
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        cached_tokens: int | None = None
        finish = "stop"
        sent: list[tuple[bytes, str]] = []
        outcome = "incomplete"

        def record(body: bytes, endpoint: str) -> None:
            sent.append((body, endpoint))

        calls = CallBuilder()
        restorers: dict[int, Restorer] = {}  # per call: its arguments are JSON text

        try:
            async for chunk in self.cloud.stream_chat(cloud_body(turn, shield.messages), record):
                restored = ""
                if chunk.text:
                    pieces += max(1, len(chunk.logprobs))
                    restored = shield.restore(chunk.text)
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
                for piece in chunk.tool_calls:
                    if piece.index not in restorers:
                        restorers[piece.index] = shield.argument_restorer()
                    arguments = restorers[piece.index].feed(piece.arguments)
                    yield calls.delta(replace(piece, arguments=arguments))
                prompt_tokens = chunk.prompt_tokens or prompt_tokens
                completion_tokens = chunk.completion_tokens or completion_tokens
                if chunk.cached_tokens is not None:
                    cached_tokens = chunk.cached_tokens
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
                    await self._record_call(
                        turn, shield, body, endpoint, "failed_over" if failed_over else outcome
                    )
                except asyncio.CancelledError as exc:  # the row is written: write the rest
                    cancelled = exc
            if cancelled is not None:
                raise cancelled
        tail = shield.flush()
        if tail:
            yield TokenEvent(text=tail)
        for index, restorer in restorers.items():
            if rest := restorer.flush():
                yield calls.delta(ToolCallDelta(index, rest))
        yield Finish(
            reason=finish,  # the cloud's own reason ("content_filter", ...), passed through
            prompt_tokens=prompt_tokens,
            # Without usage from the server, count streamed pieces (one token each, typically).
            completion_tokens=completion_tokens if completion_tokens is not None else pieces,
            cached_tokens=cached_tokens,  # the cloud's own count, when it reports one
        )

    async def _record_call(
        self, turn: Turn, shield: CloudShield, body: bytes, endpoint: str, outcome: str
    ) -> None:
        if self.audit is None:
            return
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
