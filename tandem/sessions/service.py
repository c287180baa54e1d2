"""Session turns: load the history, answer with the whole context, commit when complete.

Requests on one session are serialized (an asyncio lock per session id). The exchange is written
to the store when the answer's ``Finish`` arrives and before it is passed on, so a client never
sees the end of an answer that is not durable. An answer cut short (client gone, tier failed
with no fallback) is recorded as ``interrupted`` and stays out of later context; a request that
produced nothing leaves the session untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace

from tandem.events import Finish, TokenEvent, ToolCallDelta
from tandem.gateway import Gateway
from tandem.local.chat import Message
from tandem.privacy.policy import strictest
from tandem.privacy.redact import Placeholders
from tandem.privacy.types import PrivacyMode
from tandem.sessions.store import Answer, SessionStore, SessionStoreError, Status
from tandem.tools import CallBuilder, encode_calls
from tandem.turn import GatewayEvent, RouteInfo, Turn

log = logging.getLogger("tandem.sessions")


def new_messages(history: Sequence[Message], incoming: Sequence[Message]) -> list[Message]:
    """What a request adds to the history.

    Clients send only the new messages; a client that re-sends the whole transcript verbatim
    (as stateless OpenAI clients do) is recognised, and only its new tail is appended.
    """
    n = len(history)
    if n and len(incoming) > n and list(incoming[:n]) == list(history):
        return list(incoming[n:])
    return list(incoming)


class SessionService:
    """Runs session turns through a gateway and keeps the store in step."""

    def __init__(self, store: SessionStore, gateway: Gateway):
        self.store = store
        self.gateway = gateway
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def stream(self, session_id: str, turn: Turn) -> AsyncGenerator[GatewayEvent, None]:
        async with self._session_lock(session_id) as held:
            context = await asyncio.to_thread(self.store.context, session_id)
            added = new_messages(context.messages, turn.messages)
            privacy = _session_privacy(turn, context.privacy)
            table = Placeholders(dict(context.placeholders))
            full = replace(
                turn,
                messages=[*context.messages, *added],
                session_id=session_id,
                context_starts=context.starts,
                privacy=privacy,
                placeholders=table,
            )
            starts = dict(context.starts)
            route: RouteInfo | None = None
            text: list[str] = []
            calls = CallBuilder()
            committed = False
            try:
                async for event in self.gateway.stream(full):
                    if isinstance(event, RouteInfo):
                        route = event
                        starts[event.tier.value] = event.start
                    elif isinstance(event, TokenEvent):
                        text.append(event.text)
                    elif isinstance(event, ToolCallDelta):
                        calls.delta(event)
                    else:
                        assert route is not None
                        answer = _answer(route, "".join(text), "complete", event, calls)
                        await asyncio.to_thread(
                            self.store.append,
                            session_id,
                            added,
                            answer,
                            starts,
                            privacy.value,
                            table.by_value,
                        )
                        committed = True
                    yield event
            finally:
                if not committed and route is not None and (text or calls):
                    partial = _answer(route, "".join(text), "interrupted", None, calls)
                    await self._record_interrupted(held, session_id, added, partial, full)

    async def _record_interrupted(
        self,
        held: _SessionLock,
        session_id: str,
        added: list[Message],
        answer: Answer,
        turn: Turn,
    ) -> None:
        """Write the cut-short answer on a worker thread, cancelled or not.

        This runs while the request task is being cancelled (client gone), and a cancel scope
        can cancel every await that follows (anyio's do). The write is shielded: if the await
        is cancelled, the thread still finishes the row, the cancellation goes on at once, and
        the session's lock is kept until the row is written, so the session's next turn sees
        (and follows) it.
        """
        write = asyncio.ensure_future(
            asyncio.to_thread(self._write_interrupted, session_id, added, answer, turn)
        )
        held.hold_until(write)
        await asyncio.shield(write)

    def _write_interrupted(
        self, session_id: str, added: list[Message], answer: Answer, turn: Turn
    ) -> None:
        table = turn.placeholders.by_value if turn.placeholders is not None else None
        try:
            self.store.append(session_id, added, answer, None, turn.privacy.value, table)
        except SessionStoreError as exc:
            log.warning("could not record the interrupted answer: %s", exc.message)
        except Exception:
            log.exception("could not record the interrupted answer of session %s", session_id)

    async def forget(self, session_id: str) -> bool:
        async with self._session_lock(session_id):
            self.gateway.forget(session_id)
            return await asyncio.to_thread(self.store.delete, session_id)

    def _session_lock(self, session_id: str) -> _SessionLock:
        return _SessionLock(self._locks, session_id)


class _SessionLock:
    """An asyncio lock per session id, dropped from the table when nobody holds or waits.

    ``hold_until(work)`` keeps the lock past the block's end until ``work`` is done (a write
    that must land before the session's next turn, even when the block ends by cancellation).
    """

    def __init__(self, table: dict[str, tuple[asyncio.Lock, int]], key: str):
        self._table = table
        self._key = key
        self._pending: asyncio.Future[None] | None = None

    async def __aenter__(self) -> _SessionLock:
        lock, users = self._table.get(self._key, (asyncio.Lock(), 0))
        self._table[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._release_slot()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        pending = self._pending
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: self._release())
        else:
            self._release()

    def hold_until(self, work: asyncio.Future[None]) -> None:
        self._pending = work

    def _release(self) -> None:
        self._table[self._key][0].release()
        self._release_slot()

    def _release_slot(self) -> None:
        lock, users = self._table[self._key]
        if users <= 1:
            del self._table[self._key]
        else:
            self._table[self._key] = (lock, users - 1)


def _session_privacy(turn: Turn, stored: str | None) -> PrivacyMode:
    """A request may tighten its session's privacy mode, never loosen it: what was said under a
    stricter mode stays in the history that later turns send."""
    if stored is None:
        return turn.privacy
    if turn.privacy_explicit:
        return strictest(turn.privacy, stored)
    return PrivacyMode(stored)


def _answer(
    route: RouteInfo, text: str, status: Status, finish: Finish | None, calls: CallBuilder
) -> Answer:
    return Answer(
        content=text,
        status=status,
        tier=route.tier.value,
        model=route.model,
        reason=route.reason,
        prompt_tokens=None if finish is None else finish.prompt_tokens,
        completion_tokens=None if finish is None else finish.completion_tokens,
        prefill_tokens=None if finish is None else finish.prefill_tokens,
        timings={} if finish is None else finish.timings,
        context={"start": route.start, "dropped": route.dropped},
        tool_calls=encode_calls(calls.calls()) if calls else None,
    )
