"""The OpenAI chat-completions response shapes: the completion object and its stream chunks.

``Builder`` is what the server asks of every endpoint's shapes (chat here, text completions and
llama.cpp's infill in ``tandem.completions``)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from tandem.events import Finish, TokenEvent, ToolCallDelta
from tandem.tools import delta_json
from tandem.turn import RouteInfo


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


def usage(finish: Finish) -> dict[str, Any]:
    prompt = finish.prompt_tokens or 0
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": prompt + finish.completion_tokens,
    }
    if finish.cached_tokens is not None:  # local: KV reuse; cloud: what its server reported
        body["prompt_tokens_details"] = {"cached_tokens": finish.cached_tokens}
    return body


def route_field(route: RouteInfo) -> dict[str, str]:
    return {"route": route.tier.value, "reason": route.reason}


class Builder(Protocol):
    want_logprobs: bool

    def opening(self, route: RouteInfo) -> dict[str, Any] | None:
        """The stream's first chunk, if it has one before any text."""

    def token_chunk(self, route: RouteInfo, event: TokenEvent) -> dict[str, Any]: ...

    def tool_chunk(self, route: RouteInfo, event: ToolCallDelta) -> dict[str, Any]: ...

    def final_chunk(self, route: RouteInfo, finish: Finish) -> dict[str, Any]: ...

    def completion(
        self,
        route: RouteInfo,
        tokens: list[TokenEvent],
        finish: Finish,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]: ...


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

    def opening(self, route: RouteInfo) -> dict[str, Any]:
        return self.chunk(route, {"role": "assistant", "content": ""})

    def token_chunk(self, route: RouteInfo, event: TokenEvent) -> dict[str, Any]:
        logprobs = {"content": [logprob_entry(event)]} if self.want_logprobs else None
        return self.chunk(route, {"content": event.text}, logprobs=logprobs)

    def tool_chunk(self, route: RouteInfo, event: ToolCallDelta) -> dict[str, Any]:
        return self.chunk(route, {"tool_calls": [delta_json(event)]})

    def final_chunk(self, route: RouteInfo, finish: Finish) -> dict[str, Any]:
        body = self.chunk(route, {}, finish_reason=finish.reason)
        body["tandem"] = route_field(route)
        if self.include_usage:
            body["usage"] = usage(finish)
        return body

    def completion(
        self,
        route: RouteInfo,
        tokens: list[TokenEvent],
        finish: Finish,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        logprobs = (
            {"content": [logprob_entry(t) for t in tokens if t.logprob is not None]}
            if self.want_logprobs
            else None
        )
        text = "".join(t.text for t in tokens)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:  # OpenAI's shape: content is null when the answer only calls tools
            message = {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
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
