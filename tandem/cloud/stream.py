"""Parsing an OpenAI-style server-sent-event stream into typed chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tandem.errors import CloudError
from tandem.events import ToolCallDelta
from tandem.tools import parse_deltas


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one generated token, with the alternatives the server reported."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CloudChunk:
    """One streamed event: a text delta, tool-call pieces, the finish reason, logprobs, or the
    usage totals."""

    text: str = ""
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    tool_calls: tuple[ToolCallDelta, ...] = ()  # as the server sent them (see CallBuilder)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class CloudCount:
    """The cloud's own count of a prompt's tokens (its chat template, its tokenizer), and the
    window it serves, where it said (vLLM's ``max_model_len``)."""

    tokens: int
    window: int | None = None


@dataclass(frozen=True)
class CloudCompletion:
    """A whole answer: the collected stream. Token counts are None if the server sent no usage."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


async def _sse_events(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event; comments and other fields are skipped."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


async def read_chunks(
    response: httpx.Response, redact: Callable[[str], str]
) -> AsyncIterator[CloudChunk]:
    """Typed chunks of an OpenAI-style SSE stream; a stream cut short is a CloudError."""
    finished = False
    async for data in _sse_events(response):
        if data.strip() == "[DONE]":
            return
        chunk = _parse_chunk(data, redact)
        finished = finished or chunk.finish_reason is not None
        yield chunk
    if not finished:
        raise CloudError(
            "The cloud's stream ended before it finished (no finish_reason, no [DONE]): "
            "the server may have crashed; check its logs.",
            code="cloud_bad_response",
        )


def _parse_chunk(data: str, redact: Callable[[str], str]) -> CloudChunk:
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise CloudError(
            f"The cloud sent a malformed stream event {redact(data[:100])!r}: check that "
            "cloud_url points at an OpenAI-compatible API.",
            code="cloud_bad_response",
        ) from exc
    if not isinstance(payload, dict):
        raise CloudError(
            "The cloud sent a stream event that is not a JSON object: check that cloud_url "
            "points at an OpenAI-compatible API.",
            code="cloud_bad_response",
        )
    if "error" in payload:
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise CloudError(f"The cloud failed mid-answer: {redact(str(message))}")
    try:
        return _chunk_from_payload(payload)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise CloudError(
            f"The cloud sent a stream event of an unexpected shape {redact(data[:100])!r}: "
            "check that cloud_url points at an OpenAI-compatible API.",
            code="cloud_bad_response",
        ) from exc


def _chunk_from_payload(payload: dict[str, Any]) -> CloudChunk:
    usage = payload.get("usage") or {}
    choices = payload.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    delta = choice.get("delta") or {}
    # A chat chunk carries delta.content; a (text) completion chunk carries choice.text.
    text = choice.get("text") if "text" in choice else delta.get("content")
    text = text or ""
    if not isinstance(text, str):
        raise TypeError(f"the chunk's text is a {type(text).__name__}, not a string")
    return CloudChunk(
        text=text,
        finish_reason=choice.get("finish_reason"),
        logprobs=_logprobs(choice.get("logprobs")),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        tool_calls=parse_deltas(delta),
        raw=payload,
    )


def _logprobs(info: Any) -> tuple[TokenLogprob, ...]:
    if not isinstance(info, dict):
        return ()
    if "tokens" in info:  # the completions API's legacy shape: parallel lists
        tops = info.get("top_logprobs") or []
        return tuple(
            TokenLogprob(
                token=str(token),
                logprob=float(lp if lp is not None else 0.0),
                top=tuple((str(t), float(v)) for t, v in (tops[i] or {}).items())
                if i < len(tops)
                else (),
            )
            for i, (token, lp) in enumerate(
                zip(info["tokens"], info.get("token_logprobs") or [], strict=False)
            )
        )
    return tuple(
        TokenLogprob(
            token=entry.get("token", ""),
            logprob=float(entry.get("logprob", 0.0)),
            top=tuple(
                (alt.get("token", ""), float(alt.get("logprob", 0.0)))
                for alt in entry.get("top_logprobs") or ()
            ),
        )
        for entry in info.get("content") or ()
    )
