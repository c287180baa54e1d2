"""Tool calls by the local model, for chat templates that know tools.

The template's dialect is detected from the GGUF's chat template. One is supported: the
Hermes form that Qwen2.5 (the stand-in's model) and many fine-tunes use: the template lists the
tools in the system prompt, and the model answers a call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The bundled SmolLM2 and Gemma templates have no tools, so their requests with tools go to the
cloud (``tandem.request.plan``). With a tool-capable local model:

- ``tool_choice`` ``"required"`` or a named tool: the answer starts with ``<tool_call>`` and its
  JSON is decoded under a grammar built from the tools' parameter schemas (one call);
- ``"auto"``: the model writes freely, and a ``<tool_call>`` block in its answer is a call;
- the whole answer is held and parsed (``as_tool_calls``), so the client gets OpenAI's shape,
  and under ``auto`` routing a call that does not validate against its tool's parameters
  escalates to the cloud (reason ``tool_call_invalid``, ``tool_call_problems``).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from tandem.events import Finish, LocalEvent, StreamEvent, TokenEvent, ToolCallDelta
from tandem.local.chat import Message
from tandem.structured import OutputFormat, canonical, schema_validator
from tandem.tools import CallBuilder, Tools, decode_calls

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def hermes_template(template: str | None) -> bool:
    """Whether a chat template renders tools and expects ``<tool_call>`` answers."""
    return bool(template) and "tools" in str(template) and OPEN in str(template)


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as a tools-aware template reads them: an assistant's calls as objects, with
    their arguments parsed (templates write them with ``tojson``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        message: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if "tool_calls" in m:
            calls = decode_calls(m["tool_calls"])
            for call in calls:
                function = call.get("function") or {}
                with contextlib.suppress(json.JSONDecodeError):  # else as the client sent it
                    function["arguments"] = json.loads(function.get("arguments") or "{}")
            message["tool_calls"] = calls
        if "tool_call_id" in m:
            message["tool_call_id"] = m["tool_call_id"]
        out.append(message)
    return out


def _functions(tools: Tools) -> list[dict[str, Any]]:
    return [s["function"] for s in tools.specs]


def _chosen(tools: Tools) -> list[dict[str, Any]]:
    """The functions the answer must call one of (none: it may answer in text)."""
    functions = _functions(tools)
    if isinstance(tools.choice, dict):
        name = tools.choice["function"]["name"]
        return [f for f in functions if f["name"] == name]
    return functions if tools.choice == "required" else []


def forced_opening(tools: Tools) -> str:
    """The text the answer starts with: a call's opening when it must call a tool."""
    return f"{OPEN}\n" if _chosen(tools) else ""


def call_format(tools: Tools) -> OutputFormat | None:
    """The grammar of a call the answer must make: ``{"name": ..., "arguments": ...}`` for
    one of the chosen tools, its arguments under that tool's parameter schema."""
    chosen = _chosen(tools)
    if not chosen:
        return None
    shapes = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in chosen
    ]
    schema = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    return OutputFormat("json_schema", canonical(schema), name="tool_call")


def parse_calls(text: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """The text before the first call, the calls as (name, arguments JSON), and what could not
    be read."""
    content, _, rest = text.partition(OPEN)
    if not _:
        return text, [], []
    calls: list[tuple[str, str]] = []
    problems: list[str] = []
    for block in (OPEN + rest).split(OPEN)[1:]:
        body = block.split(CLOSE, 1)[0].strip()
        try:
            call = json.loads(body)
            name, arguments = call["name"], call.get("arguments", {})
            if not isinstance(name, str) or not isinstance(arguments, dict):
                raise TypeError("name must be a string and arguments an object")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            problems.append(f"a tool call that cannot be read ({exc}): {body[:80]!r}")
            continue
        calls.append((name, json.dumps(arguments, ensure_ascii=False)))
    return content.strip(), calls, problems


async def as_tool_calls(
    events: AsyncGenerator[LocalEvent, None], tools: Tools
) -> AsyncGenerator[StreamEvent, None]:
    """A local answer with its ``<tool_call>`` blocks turned into tool-call events. The answer
    is held until it ends (a call is only known once its block closes)."""
    async with aclosing(events):
        async for event in _calls(events, tools):
            yield event


async def _calls(events: AsyncIterator[LocalEvent], tools: Tools) -> AsyncIterator[StreamEvent]:
    text: list[str] = [forced_opening(tools)]
    held: list[TokenEvent] = []
    async for event in events:
        if isinstance(event, TokenEvent):
            held.append(event)
            text.append(event.text)
            continue
        content, calls, _ = parse_calls("".join(text))
        if not calls:  # a text answer (or calls that cannot be read: the check says so)
            for token in held:
                yield token
            yield event
            return
        if content:
            yield TokenEvent(content)
        for index, (name, arguments) in enumerate(calls):
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            yield ToolCallDelta(index, arguments, call_id, name)
        yield Finish(
            "tool_calls",
            event.prompt_tokens,
            event.completion_tokens,
            event.prefill_tokens,
            event.cached_tokens,
            event.timings,
        )
        return


def tool_call_problems(events: Sequence[StreamEvent], tools: Tools) -> list[str]:
    """Why a finished local answer's calls are not acceptable (empty: they are): a call that
    could not be read, an unknown tool, arguments that fail the tool's parameter schema, or no
    call where one is required."""
    calls = CallBuilder()
    text = ""
    for event in events:
        if isinstance(event, ToolCallDelta):
            calls.delta(event)
        elif isinstance(event, TokenEvent):
            text += event.text
    made = calls.calls()
    problems = [] if made else parse_calls(forced_opening(tools) + text)[2]
    if not made and _chosen(tools):
        problems.append("the answer makes no tool call, and tool_choice requires one")
    known = {f["name"]: f.get("parameters") or {"type": "object"} for f in _functions(tools)}
    for call in made:
        name = call["function"]["name"]
        if name not in known:
            problems.append(f"a call to {name!r}, which the request does not offer")
            continue
        arguments = json.loads(call["function"]["arguments"])
        for error in schema_validator(canonical(known[name])).iter_errors(arguments):
            problems.append(f"{name}: {error.message}")
    return problems
