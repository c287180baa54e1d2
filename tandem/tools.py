"""Tool calling: the request's ``tools`` and ``tool_choice``, the calls an answer makes, and
the messages that carry them through the history.

Neither bundled local model's chat template knows tools, so a turn that may call tools is
answered by the cloud (reason ``requires_tools``), which receives the tools as sent; a turn that
must stay local cannot call tools and is refused with a 400 that says why. The calls come back
as :class:`~tandem.events.ToolCallDelta` events in OpenAI's streaming shape (``id`` and
``name`` once per call, ``arguments`` in fragments), with placeholders restored in the
arguments like in the text.

In the history, an assistant message's ``tool_calls`` travel as one canonical JSON string
under the message's ``tool_calls`` key (and a tool result's id under ``tool_call_id``), so a
message stays a mapping of strings for the chat template, the privacy scan and the session
store, and a re-sent transcript compares equal to the stored one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ConfigDict, Field

from tandem.errors import InvalidRequestError
from tandem.events import ToolCallDelta

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionSpec


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A call in an assistant message of the history (as the client replays it)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


@dataclass(frozen=True)
class Tools:
    """The tools a turn offers and how the model may use them."""

    specs: tuple[dict[str, Any], ...]
    choice: str | dict[str, Any] = "auto"
    parallel: bool | None = None

    @property
    def callable(self) -> bool:
        """Whether the answer may call a tool (``tool_choice`` is not ``"none"``)."""
        return bool(self.specs) and self.choice != "none"

    def wire(self) -> dict[str, Any]:
        """The request fields for the cloud, as the client sent them."""
        body: dict[str, Any] = {"tools": list(self.specs), "tool_choice": self.choice}
        if self.parallel is not None:
            body["parallel_tool_calls"] = self.parallel
        return body


def choice_for_dialect(body: dict[str, Any], dialect: str) -> dict[str, Any]:
    """``body`` with its ``tool_choice`` as the cloud's server understands it. llama.cpp's
    server (the stand-in) calls a tool only when ``tool_choice`` names it, so ``"required"``
    with a single tool is sent as that tool's name there; OpenAI-shaped servers (vLLM, OpenAI)
    get the request as sent."""
    tools = body.get("tools") or []
    if dialect == "llama_cpp" and body.get("tool_choice") == "required" and len(tools) == 1:
        name = tools[0]["function"]["name"]
        return {**body, "tool_choice": {"type": "function", "function": {"name": name}}}
    return body


def parse_tools(
    specs: Sequence[ToolSpec] | None, choice: ToolChoice | None, parallel: bool | None
) -> Tools | None:
    """The turn's tools; raises a 400 naming the field that is wrong. No tools (or an empty
    list) is None whatever ``tool_choice`` says, unless it asks for a call."""
    if not specs:
        if choice not in (None, "none", "auto"):
            raise InvalidRequestError(
                "tool_choice asks for a tool call but the request offers no tools: send "
                "'tools', or drop 'tool_choice'.",
                param="tool_choice",
            )
        return None
    names = [t.function.name for t in specs]
    for i, spec in enumerate(specs):
        if names.index(spec.function.name) != i:
            raise InvalidRequestError(
                f"Two tools are named '{spec.function.name}'; tool names must be unique.",
                param=f"tools.{i}.function.name",
            )
        if spec.function.parameters is not None:
            try:
                Draft202012Validator.check_schema(spec.function.parameters)
            except SchemaError as exc:
                raise InvalidRequestError(
                    f"The parameters of tool '{spec.function.name}' are not a valid JSON "
                    f"schema: {exc.message}.",
                    param=f"tools.{i}.function.parameters",
                ) from exc
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequestError(
            f"tool_choice names '{choice.function.name}', which is not among the tools "
            f"offered ({', '.join(names)}).",
            param="tool_choice",
        )
    wire_choice: str | dict[str, Any] = (
        choice.model_dump() if isinstance(choice, NamedToolChoice) else (choice or "auto")
    )
    return Tools(
        tuple(t.model_dump(exclude_none=True) for t in specs), wire_choice, parallel
    )


# -- tool calls in the history ----------------------------------------------------------------


def encode_calls(calls: Iterable[Mapping[str, Any]]) -> str:
    """The canonical string form of a message's tool calls."""
    return json.dumps(list(calls), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_calls(text: str) -> list[dict[str, Any]]:
    calls = json.loads(text)
    assert isinstance(calls, list)
    return calls


def wire_message(message: Mapping[str, str]) -> dict[str, Any]:
    """A history message as the cloud receives it: role and content, and the tool fields
    when it has them (the content of an assistant message that only calls tools is "", which
    every server takes; llama.cpp's refuses null)."""
    wire: dict[str, Any] = {"role": message["role"], "content": message["content"]}
    if "tool_calls" in message:
        wire["tool_calls"] = decode_calls(message["tool_calls"])
    if "tool_call_id" in message:
        wire["tool_call_id"] = message["tool_call_id"]
    return wire


def call_arguments(messages: Iterable[Mapping[str, str]]) -> list[str]:
    """The argument texts of the tool calls in ``messages``, in order."""
    return [
        str((call.get("function") or {}).get("arguments") or "")
        for m in messages
        if "tool_calls" in m
        for call in decode_calls(m["tool_calls"])
    ]


# -- the calls an answer makes ----------------------------------------------------------------


@dataclass
class CallBuilder:
    """Turns the cloud's tool-call deltas into OpenAI's streaming shape and collects them.

    Servers differ in what they repeat: llama.cpp's sends ``id`` and ``name`` with every
    fragment, OpenAI's only with the first. :meth:`delta` emits them once per index (and
    makes up an id for a call that came without one); fed its own output again, it changes
    nothing, so the same builder collects the events downstream. :meth:`calls` is the whole
    list for a non-streamed response or the session's history.
    """

    _ids: dict[int, str] = field(default_factory=dict)
    _names: dict[int, str] = field(default_factory=dict)
    _arguments: dict[int, list[str]] = field(default_factory=dict)

    def delta(self, raw: ToolCallDelta) -> ToolCallDelta:
        first = raw.index not in self._ids
        if first:
            self._ids[raw.index] = raw.id or f"call_{uuid.uuid4().hex[:24]}"
            self._names[raw.index] = raw.name or ""
            self._arguments[raw.index] = []
        elif raw.name and not self._names[raw.index]:
            self._names[raw.index] = raw.name
        self._arguments[raw.index].append(raw.arguments)
        if first:
            return ToolCallDelta(raw.index, raw.arguments, self._ids[raw.index], raw.name or "")
        return ToolCallDelta(raw.index, raw.arguments)

    def __bool__(self) -> bool:
        return bool(self._ids)

    def calls(self) -> list[dict[str, Any]]:
        return [
            {
                "id": self._ids[i],
                "type": "function",
                "function": {"name": self._names[i], "arguments": "".join(self._arguments[i])},
            }
            for i in sorted(self._ids)
        ]


def delta_json(event: ToolCallDelta) -> dict[str, Any]:
    """One item of a chunk's ``delta.tool_calls``."""
    item: dict[str, Any] = {"index": event.index}
    function: dict[str, Any] = {"arguments": event.arguments}
    if event.id is not None:
        item["id"] = event.id
        item["type"] = "function"
        function = {"name": event.name or "", **function}
    item["function"] = function
    return item


def parse_deltas(delta: Mapping[str, Any]) -> tuple[ToolCallDelta, ...]:
    """The tool-call pieces of a cloud stream's ``delta`` (OpenAI's ``tool_calls``, or the
    legacy ``function_call`` as call 0 from a server that sends only that)."""
    items = delta.get("tool_calls")
    if items:
        out = []
        for position, item in enumerate(items):
            function = item.get("function") or {}
            arguments = function.get("arguments") or ""
            if not isinstance(arguments, str):
                raise TypeError("tool_calls[].function.arguments is not a string")
            out.append(
                ToolCallDelta(
                    int(item.get("index", position)),
                    arguments,
                    item.get("id"),
                    function.get("name"),
                )
            )
        return tuple(out)
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        return (ToolCallDelta(0, legacy.get("arguments") or "", None, legacy.get("name")),)
    return ()
