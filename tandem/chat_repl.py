"""``tandem chat``: a terminal conversation through the gateway, in process."""

from __future__ import annotations

import asyncio

from rich.console import Console

from tandem.api import ChatCompletionRequest
from tandem.assembly import build_gateway
from tandem.errors import TandemError
from tandem.events import Finish, TokenEvent
from tandem.gateway import RouteInfo
from tandem.local.chat import Message
from tandem.settings import Settings


async def run_repl(settings: Settings, route: str, console: Console) -> None:
    """Read user lines, stream each answer, and show the route and reason of the turn."""
    gw = build_gateway(settings)
    start = getattr(gw.local, "start", None)
    if start is not None:
        start()
        # A person types slower than the model loads; waiting keeps the first turn local.
        await asyncio.to_thread(gw.local.wait_ready, 30.0)  # type: ignore[attr-defined]
    history: list[Message] = []
    console.print("[dim]Empty line or Ctrl-D to quit.[/dim]")
    try:
        while line := _read(console):
            history.append({"role": "user", "content": line})
            answer = await _turn(gw, history, route, settings, console)
            history.append({"role": "assistant", "content": answer})
    finally:
        close = getattr(gw.local, "close", None)
        if close is not None:
            close()


def _read(console: Console) -> str:
    try:
        return console.input("[bold green]you> [/bold green]").strip()
    except EOFError:
        return ""


async def _turn(
    gw: object, history: list[Message], route: str, settings: Settings, console: Console
) -> str:
    from tandem.gateway import Gateway

    assert isinstance(gw, Gateway)
    request = ChatCompletionRequest.model_validate(
        {"messages": history, "tandem": {"route": route}}
    )
    turn = request.to_turn(settings.default_max_tokens, settings.max_tokens_limit)
    text: list[str] = []
    try:
        async for event in gw.stream(turn):
            if isinstance(event, RouteInfo):
                console.print(f"[dim]\\[{event.tier.value}: {event.reason}][/dim]")
            elif isinstance(event, TokenEvent):
                text.append(event.text)
                console.print(event.text, end="", markup=False, highlight=False)
            elif isinstance(event, Finish):
                console.print(f"\n[dim]({event.completion_tokens} tokens, {event.reason})[/dim]")
    except TandemError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
    return "".join(text)
