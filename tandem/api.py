"""The OpenAI chat-completions wire format: request validation and response shapes."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tandem.errors import InvalidRequestError, UnknownParameterError, UnsupportedParameterError
from tandem.events import GenerationParams
from tandem.local.chat import Message
from tandem.privacy.types import PrivacyMode
from tandem.structured import OutputFormat, ResponseFormat, parse_response_format
from tandem.tools import ToolCall, ToolChoice, Tools, ToolSpec, encode_calls, parse_tools
from tandem.turn import RoutePreference, Turn

Role = Literal["system", "developer", "user", "assistant", "tool"]

# -- what the gateway accepts -----------------------------------------------------------------
#
# Each top-level field of OpenAI's chat-completions request is in one of three groups:
#   * honoured: declared on ChatCompletionRequest below;
#   * accepted and ignored: metadata that changes nothing about the answer (IGNORED_FIELDS);
#   * not supported (UNSUPPORTED_FIELDS): the neutral value (the one that asks for nothing the
#     gateway does not do, and null) is accepted; anything else is refused with a 400
#     ``unsupported_parameter`` naming the field.
# Any other field is not an OpenAI field: a 400 ``unknown_parameter``. Message-level fields
# follow the same rule (MESSAGE_FIELDS); content parts other than text are refused.
# The checks run on the raw JSON object, before field validation, and come out of validation
# as PydanticCustomErrors whose type is the error code and whose ctx carries the ``param``
# (see ``tandem.server._invalid``, the one place they become HTTP errors).

UNSUPPORTED = "unsupported_parameter"
UNKNOWN = "unknown_parameter"

IGNORED_FIELDS = frozenset({"user", "metadata", "store", "safety_identifier", "prompt_cache_key"})


def _zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _same(expected: Any) -> Callable[[Any], bool]:
    """Equal to ``expected`` and of its JSON type (``true`` is not ``1``, ``[]`` not ``{}``)."""
    return lambda value: type(value) is type(expected) and value == expected


def _never(value: Any) -> bool:
    return False


# field -> (is the value neutral?, the neutral value as the client would write it, why not)
UNSUPPORTED_FIELDS: dict[str, tuple[Callable[[Any], bool], str | None, str]] = {
    "n": (_same(1), "1", "one choice is generated per request"),
    "frequency_penalty": (_zero, "0", "repetition penalties are not implemented"),
    "presence_penalty": (_zero, "0", "repetition penalties are not implemented"),
    "logit_bias": (_same({}), "{}", "token biases are not implemented"),
    "functions": (
        _same([]),
        "[]",
        "the deprecated function calling is not implemented; use 'tools'",
    ),
    "function_call": (
        _same("none"),
        '"none"',
        "the deprecated function calling is not implemented; use 'tool_choice'",
    ),
    "audio": (_never, None, "audio output is not implemented"),
    "modalities": (_same(["text"]), '["text"]', "only text is generated"),
    "prediction": (_never, None, "predicted outputs are not implemented"),
    "reasoning_effort": (_never, None, "the models have no reasoning-effort setting"),
    "verbosity": (_never, None, "the models have no verbosity setting"),
    "web_search_options": (_never, None, "web search is not available"),
    "service_tier": (
        lambda v: v in ("auto", "default"),
        '"auto" or "default"',
        "the gateway has a single service tier",
    ),
}

# Message fields other than role and content: accepted only with their neutral value (null, or
# an empty list), which is what clients send when they replay an earlier assistant message.
MESSAGE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (_never, "participant names are not passed to the models"),
    "function_call": (_never, "the deprecated function calling is not implemented; use tool_calls"),
    "audio": (_never, "audio is not implemented"),
    "refusal": (_never, "refusals are not passed to the models (send the text as content)"),
    "annotations": (_same([]), "annotations are not passed to the models"),
}

HONOURED_MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id"})


def refuse(code: str, param: str, message: str) -> PydanticCustomError:
    # The message goes through ctx: a template would read braces in it as placeholders.
    return PydanticCustomError(code, "{message}", {"message": message, "param": param})


def accepted_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The request without the fields accepted as no-ops; raises on anything refused."""
    kept = known_fields(
        data, ChatCompletionRequest.model_fields, UNSUPPORTED_FIELDS, "chat-completions"
    )
    messages = kept.get("messages")
    if isinstance(messages, list):
        kept["messages"] = [
            _accepted_message(i, m) if isinstance(m, dict) else m for i, m in enumerate(messages)
        ]
    return kept


def known_fields(
    data: dict[str, Any],
    honoured: Collection[str],
    unsupported: dict[str, tuple[Callable[[Any], bool], str | None, str]],
    endpoint: str,
    ignored: Collection[str] = IGNORED_FIELDS,
) -> dict[str, Any]:
    """The top-level fields of a request that are ``honoured``; the ``ignored`` ones are
    dropped, an ``unsupported`` one is refused unless neutral, and any other is unknown."""
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key in honoured:
            kept[key] = value
        elif key in ignored:
            continue
        elif key in unsupported:
            neutral, written, why = unsupported[key]
            if value is not None and not neutral(value):
                alternative = f" (or send {written})" if written else ""
                raise refuse(
                    UNSUPPORTED,
                    key,
                    f"'{key}' is not supported by this gateway yet: {why}. "
                    f"Drop it from the request{alternative}.",
                )
        else:
            raise refuse(
                UNKNOWN,
                key,
                f"Unrecognized request argument supplied: '{key}'. It is not an OpenAI "
                f"{endpoint} field; drop it (Tandem's own options go in 'tandem').",
            )
    return kept


def _accepted_message(i: int, message: dict[str, Any]) -> dict[str, Any]:
    where = f"messages.{i}"
    if message.get("role") == "function":
        raise refuse(
            UNSUPPORTED,
            f"{where}.role",
            f"Message {i} has role 'function', the deprecated form of tool results, which "
            "this gateway does not take: send it as role 'tool' with its 'tool_call_id'.",
        )
    kept: dict[str, Any] = {}
    for key, value in message.items():
        if key in HONOURED_MESSAGE_FIELDS:
            kept[key] = value
        elif key in MESSAGE_FIELDS:
            neutral, why = MESSAGE_FIELDS[key]
            if value is not None and not neutral(value):
                raise refuse(
                    UNSUPPORTED,
                    f"{where}.{key}",
                    f"'{key}' in message {i} is not supported by this gateway yet: {why}. "
                    "Drop it from the message.",
                )
        else:
            raise refuse(
                UNKNOWN,
                f"{where}.{key}",
                f"Unrecognized field '{key}' in message {i}; drop it (a message has 'role', "
                "'content', and for tools 'tool_calls' or 'tool_call_id').",
            )
    content = kept.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict):
                _check_part(f"{where}.content.{j}", i, part)
    return kept


def _check_part(where: str, i: int, part: dict[str, Any]) -> None:
    kind = part.get("type")
    if kind != "text" and isinstance(kind, str):
        raise refuse(
            UNSUPPORTED,
            f"{where}.type",
            f"Content part type '{kind}' in message {i} is not supported by this gateway yet: "
            "the models read text only. Send the content as a string or as parts of type "
            "'text'.",
        )
    for key in part:
        if key not in ("type", "text"):
            raise refuse(
                UNKNOWN,
                f"{where}.{key}",
                f"Unrecognized field '{key}' in a text part of message {i}; drop it (a text "
                "part has 'type' and 'text').",
            )


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, replayed
    tool_call_id: str | None = None  # what a tool result answers

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs the 'tool_call_id' it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only a message with role 'tool' has a 'tool_call_id'")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has 'tool_calls'")
        return self

    def for_model(self) -> Message:
        # "developer" is OpenAI's newer name for "system"; chat templates know only the latter.
        role = "system" if self.role == "developer" else self.role
        message: Message = {"role": role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = encode_calls(c.model_dump() for c in self.tool_calls)
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class TandemOptions(BaseModel):
    """The Tandem extension object (top-level ``tandem``; the OpenAI SDK's ``extra_body``)."""

    model_config = ConfigDict(extra="forbid")

    route: RoutePreference = RoutePreference.AUTO
    fallback: bool = True
    session_id: str | None = None  # keep the conversation server-side (as X-Session-Id does)
    privacy: PrivacyMode | None = None  # local_only | redact | allow (default: the gateway's)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's request Tandem honours. Metadata fields (IGNORED_FIELDS) and
    unsupported fields sent with their neutral value are dropped; anything else is refused."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    tandem: TandemOptions = Field(default_factory=TandemOptions)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return accepted_fields(data) if isinstance(data, dict) else data

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role in ("user", "tool") for m in messages):
            raise ValueError(
                "messages must contain at least one message with role 'user' (or a tool result)"
            )
        return messages

    def to_turn(
        self, default_max_tokens: int, max_tokens_limit: int, default_privacy: str = "redact"
    ) -> Turn:
        max_tokens = checked_max_tokens(
            self.max_completion_tokens or self.max_tokens, default_max_tokens, max_tokens_limit
        )
        stop = stop_strings(self.stop)
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else 0,
            logprobs=self.logprobs,
            output=self.output_format(),
            tools=self.offered_tools(),
        )
        return Turn(
            self.messages_for_model(),
            params,
            self.tandem.route,
            self.tandem.fallback,
            privacy=PrivacyMode(self.tandem.privacy or default_privacy),
            privacy_explicit=self.tandem.privacy is not None,
        )

    def output_format(self) -> OutputFormat | None:
        """The structured output asked for; raises a 400 naming what cannot be enforced."""
        if self.response_format is None:
            return None
        return parse_response_format(self.response_format.model_dump(by_alias=True))

    def offered_tools(self) -> Tools | None:
        """The tools the answer may use; raises a 400 naming what is inconsistent."""
        return parse_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    def messages_for_model(self) -> list[Message]:
        return [m.for_model() for m in self.messages]


def checked_max_tokens(
    requested: int | None, default: int, limit: int, param: str = "max_tokens"
) -> int:
    """The answer's token budget: what was asked for (at most ``limit``), else the default."""
    max_tokens = requested or min(default, limit)
    if max_tokens > limit:
        raise InvalidRequestError(
            f"{param} is {max_tokens}; this gateway allows at most {limit} "
            "(TANDEM_MAX_TOKENS_LIMIT).",
            param=param,
        )
    return max_tokens


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


def invalid_request(errors: Any) -> InvalidRequestError:
    """The first validation error as an OpenAI-shaped 400. Fields refused by
    ``accepted_fields`` carry their code as the error type and ``param`` in ctx."""
    first = errors[0]
    kind = first.get("type")
    ctx = first.get("ctx") or {}
    if kind == UNSUPPORTED:
        return UnsupportedParameterError(str(first.get("msg")), param=ctx.get("param"))
    if kind == UNKNOWN:
        return UnknownParameterError(str(first.get("msg")), param=ctx.get("param"))
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if kind == "extra_forbidden" and param:  # e.g. a field inside 'tandem'
        return UnknownParameterError(
            f"Unrecognized request argument supplied: '{param}'; drop it.", param=param
        )
    where = f" at '{param}'" if param else ""
    return InvalidRequestError(f"Invalid request{where}: {first.get('msg')}", param=param)
