"""The OpenAI chat-completions wire format: request validation and response shapes."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.local.chat import Message
from tandem.privacy.policy import PrivacyMode
from tandem.turn import RouteInfo, RoutePreference, Turn

Role = Literal["system", "developer", "user", "assistant"]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[TextPart] | None = None

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
    """The subset of OpenAI's request Tandem honours; other known fields are ignored."""

    model_config = ConfigDict(extra="ignore")

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
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated")
    tandem: TandemOptions = Field(default_factory=TandemOptions)

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("messages must contain at least one message with role 'user'")
        return messages

    def to_turn(
        self, default_max_tokens: int, max_tokens_limit: int, default_privacy: str = "redact"
    ) -> Turn:
        from tandem.errors import InvalidRequestError

        max_tokens = (
            self.max_completion_tokens
            or self.max_tokens
            or min(default_max_tokens, max_tokens_limit)
        )
        if max_tokens > max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens is {max_tokens}; this gateway allows at most {max_tokens_limit} "
                "(TANDEM_MAX_TOKENS_LIMIT).",
                param="max_tokens",
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else 0,
        )
        return Turn(
            self.messages_for_model(),
            params,
            self.tandem.route,
            self.tandem.fallback,
            privacy=PrivacyMode(self.tandem.privacy or default_privacy),
            privacy_explicit=self.tandem.privacy is not None,
        )

    def messages_for_model(self) -> list[Message]:
        # "developer" is OpenAI's newer name for "system"; chat templates know only the latter.
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def logprob_entry(event: TokenEvent) -> dict[str, Any]:
    token = event.token if event.token is not None else event.text
    return {
        "token": token,
        "logprob": event.logprob,
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
            for t, lp in event.top_logprobs
        ],
    }


def usage(finish: Finish) -> dict[str, int]:
    prompt = finish.prompt_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": prompt + finish.completion_tokens,
    }


def route_field(route: RouteInfo) -> dict[str, str]:
    return {"route": route.tier.value, "reason": route.reason}


class ResponseBuilder:
    """Builds the completion object or its chunks for one request."""

    def __init__(self, want_logprobs: bool, include_usage: bool):
        self.id = completion_id()
        self.created = int(time.time())
        self.want_logprobs = want_logprobs
        self.include_usage = include_usage

    def chunk(self, route: RouteInfo, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        choice.update(extra)
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": route.model,
            "choices": [choice],
        }

    def token_chunk(self, route: RouteInfo, event: TokenEvent) -> dict[str, Any]:
        logprobs = {"content": [logprob_entry(event)]} if self.want_logprobs else None
        return self.chunk(route, {"content": event.text}, logprobs=logprobs)

    def final_chunk(self, route: RouteInfo, finish: Finish) -> dict[str, Any]:
        body = self.chunk(route, {}, finish_reason=finish.reason)
        body["tandem"] = route_field(route)
        if self.include_usage:
            body["usage"] = usage(finish)
        return body

    def completion(
        self, route: RouteInfo, tokens: list[TokenEvent], finish: Finish
    ) -> dict[str, Any]:
        logprobs = (
            {"content": [logprob_entry(t) for t in tokens if t.logprob is not None]}
            if self.want_logprobs
            else None
        )
        message = {"role": "assistant", "content": "".join(t.text for t in tokens)}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": route.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish.reason,
                    "logprobs": logprobs,
                }
            ],
            "usage": usage(finish),
            "tandem": route_field(route),
        }
