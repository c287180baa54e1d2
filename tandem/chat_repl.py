"""``tandem chat``: a terminal conversation through the gateway, in process, kept as a session.

Every conversation is a server-side session in the same store ``tandem serve`` uses, so it can
be resumed (``--session ID``) here or continued over HTTP with ``X-Session-Id``.
"""

from __future__ import annotations

import asyncio
import uuid

from rich.console import Console

from tandem.api import ChatCompletionRequest
from tandem.errors import TandemError
from tandem.events import Finish, TokenEvent
from tandem.runtime import Runtime
from tandem.sessions.service import SessionService
from tandem.sessions.store import check_session_id
from tandem.settings import Settings
from tandem.turn import RouteInfo

SHOWN_ON_RESUME = 6  # messages of a resumed session shown before the prompt


async def run_repl(
    settings: Settings, route: str, console: Console, session_id: str | None = None
) -> None:
    """Read user lines, stream each answer, and show the route and reason of the turn."""
    settings = settings.model_copy(update={"sessions": True})
    session_id = check_session_id(session_id) if session_id else f"chat-{uuid.uuid4().hex[:12]}"
    async with Runtime(settings) as runtime:
        sessions = runtime.sessions
        assert sessions is not None
        # A person types slower than the model loads; waiting keeps the first turn local.
        await runtime.wait_local_ready(30.0)
        _show_history(sessions, session_id, console)
        console.print(f"[dim]Session {session_id}. Empty line or Ctrl-D to quit.[/dim]")
        while line := await asyncio.to_thread(_read, console):
            await _turn(sessions, session_id, line, route, settings, console)
    console.print(f"[dim]Resume with: tandem chat --session {session_id}[/dim]")


def _show_history(sessions: SessionService, session_id: str, console: Console) -> None:
    transcript = sessions.store.transcript(session_id)
    if transcript is None:
        return
    messages = transcript["messages"]
    console.print(f"[dim]Resuming {session_id} ({len(messages)} messages); the latest:[/dim]")
    for m in messages[-SHOWN_ON_RESUME:]:
        tier = f" ({m['tier']})" if m["role"] == "assistant" else ""
        note = " [interrupted]" if m["status"] == "interrupted" else ""
        console.print(f"[bold]{m['role']}{tier}{note}>[/bold] ", end="")
        console.print(m["content"], markup=False, highlight=False)


def _read(console: Console) -> str:
    try:
        return console.input("[bold green]you> [/bold green]").strip()
    except EOFError:
        return ""


async def _turn(
    sessions: SessionService,
    session_id: str,
    line: str,
    route: str,
    settings: Settings,
    console: Console,
) -> None:
    request = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": line}], "tandem": {"route": route}}
    )
    turn = request.to_turn(
        settings.default_max_tokens, settings.max_tokens_limit, settings.privacy_default
    )
    try:
        async for event in sessions.stream(session_id, turn):
            if isinstance(event, RouteInfo):
                dropped = f", {event.dropped} older messages left out" if event.dropped else ""
                console.print(f"[dim]\\[{event.tier.value}: {event.reason}{dropped}][/dim]")
            elif isinstance(event, TokenEvent):
                console.print(event.text, end="", markup=False, highlight=False)
            elif isinstance(event, Finish):
                console.print(f"\n[dim]({event.completion_tokens} tokens, {event.reason})[/dim]")
    except TandemError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
