"""Text completions: OpenAI's ``/v1/completions`` and llama.cpp's ``/infill``, request and
response shapes.

Both become a ``Turn`` whose ``params.prompt`` is a ``TextPrompt`` and are routed like chat
(gates, routers, cascade, privacy, fallbacks). Fields follow the chat endpoint's rule: honoured,
accepted as metadata, neutral-or-refused, or unknown (a 400 naming the field).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tandem.api import (
    UNSUPPORTED_FIELDS,
    StreamOptions,
    TandemOptions,
    checked_max_tokens,
    known_fields,
    stop_strings,
)
from tandem.errors import InvalidRequestError
from tandem.events import Finish, GenerationParams, TokenEvent, ToolCallDelta
from tandem.privacy.types import PrivacyMode
from tandem.prompt import ExtraChunk, TextPrompt
from tandem.responses import route_field, usage
from tandem.turn import RouteInfo, Turn

# OpenAI's default for /v1/completions (chat has none).
DEFAULT_COMPLETION_TOKENS = 16

COMPLETION_UNSUPPORTED = {
    k: UNSUPPORTED_FIELDS[k] for k in ("n", "frequency_penalty", "presence_penalty", "logit_bias")
}
COMPLETION_UNSUPPORTED["best_of"] = (
    lambda v: v == 1 and not isinstance(v, bool),
    "1",
    "one candidate is generated per request",
)


class CompletionOptions(TandemOptions):
    """``tandem`` options of a text completion: no sessions (a completion has no history)."""

    @model_validator(mode="after")
    def _no_session(self) -> CompletionOptions:
        if self.session_id is not None:
            raise ValueError("text completions have no sessions; drop tandem.session_id")
        return self


class CompletionRequest(BaseModel):
    """OpenAI's ``/v1/completions`` request, as far as Tandem honours it."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    # A model continues something: an empty prompt would be no tokens at all (a model that
    # adds no BOS, like SmolLM2's).
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)]
    )
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    tandem: CompletionOptions = Field(default_factory=CompletionOptions)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return known_fields(data, cls.model_fields, COMPLETION_UNSUPPORTED, "completions")

    @model_validator(mode="after")
    def _echo_logprobs(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError(
                "echo with logprobs would need the prompt's own token logprobs, which are not "
                "computed; send one of them"
            )
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def to_turn(self, max_tokens_limit: int, default_privacy: str = "redact") -> Turn:
        params = GenerationParams(
            max_tokens=checked_max_tokens(
                self.max_tokens, DEFAULT_COMPLETION_TOKENS, max_tokens_limit
            ),
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop_strings(self.stop),
            seed=self.seed,
            top_logprobs=self.logprobs or 0,
            logprobs=self.logprobs is not None,
            prompt=TextPrompt(self.text, self.suffix),
        )
        return text_turn(params, self.tandem, default_privacy)


def text_turn(params: GenerationParams, options: TandemOptions, default_privacy: str) -> Turn:
    assert params.prompt is not None
    return Turn(
        params.prompt.messages(),
        params,
        options.route,
        options.fallback,
        privacy=PrivacyMode(options.privacy or default_privacy),
        privacy_explicit=options.privacy is not None,
    )


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


class TextResponseBuilder:
    """The ``text_completion`` object, or its stream chunks, for one request (the same
    interface as the chat ``ResponseBuilder``, so the server streams both alike)."""

    def __init__(self, logprobs: int | None, include_usage: bool, echo: str = ""):
        self.id = completion_id()
        self.created = int(time.time())
        self.want_logprobs = logprobs is not None
        self.include_usage = include_usage
        self.echo = echo  # the prompt, sent first when the request asked for it back
        self._offset = len(echo)  # text_offset of the next token

    def _body(self, route: RouteInfo, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": route.model,
            "choices": [
                {"text": "", "index": 0, "logprobs": None, "finish_reason": None, **choice}
            ],
        }

    def opening(self, route: RouteInfo) -> dict[str, Any] | None:
        return self._body(route, {"text": self.echo}) if self.echo else None

    def _logprobs(self, tokens: list[TokenEvent]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for t in tokens:
            token = t.token if t.token is not None else t.text
            out["tokens"].append(token)
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append(dict(t.top_logprobs))
            out["text_offset"].append(self._offset)
            self._offset += len(t.text)
        return out

    def token_chunk(self, route: RouteInfo, event: TokenEvent) -> dict[str, Any]:
        logprobs = self._logprobs([event]) if self.want_logprobs else None
        return self._body(route, {"text": event.text, "logprobs": logprobs})

    def tool_chunk(self, route: RouteInfo, event: ToolCallDelta) -> dict[str, Any]:
        raise InvalidRequestError("A text completion cannot call tools.")

    def final_chunk(self, route: RouteInfo, finish: Finish) -> dict[str, Any]:
        body = self._body(route, {"text": "", "finish_reason": finish.reason})
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
            self._logprobs([t for t in tokens if t.logprob is not None])
            if self.want_logprobs
            else None
        )
        text = self.echo + "".join(t.text for t in tokens)
        body = self._body(
            route, {"text": text, "logprobs": logprobs, "finish_reason": finish.reason}
        )
        body["usage"] = usage(finish)
        body["tandem"] = route_field(route)
        return body


# -- llama.cpp's /infill ------------------------------------------------------------------------
#
# Editor plugins written for llama.cpp's server (llama.vim, llama.vscode) send its native infill
# request. Its scheduling hints (which slot, how long to spend on the prompt, the sampler order)
# change nothing Tandem can honour on one context and are accepted as metadata.

INFILL_IGNORED = frozenset({"id_slot", "t_max_prompt_ms", "samplers", "model"})


class InfillChunk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = "tmp"
    text: str


class InfillRequest(BaseModel):
    """llama.cpp server's ``/infill`` request."""

    model_config = ConfigDict(extra="forbid")

    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillChunk] = Field(default_factory=list)
    prompt: str = ""  # text typed after the prefix, before the cursor
    n_predict: int | None = Field(None, ge=-1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)  # llama.cpp server's default
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=4)
    stream: bool = False
    cache_prompt: bool = True  # the KV cache is always reused (the engine keeps its prefix)
    n_indent: int = Field(0, ge=0)
    t_max_predict_ms: int = Field(0, ge=0)
    response_fields: list[str] | None = None
    tandem: CompletionOptions = Field(default_factory=CompletionOptions)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return known_fields(data, cls.model_fields, {}, "llama.cpp infill", INFILL_IGNORED)

    def to_turn(
        self, default_max_tokens: int, max_tokens_limit: int, default_privacy: str = "redact"
    ) -> Turn:
        requested = None if self.n_predict in (None, -1) else self.n_predict
        params = GenerationParams(
            max_tokens=checked_max_tokens(
                requested or None, default_max_tokens, max_tokens_limit, "n_predict"
            ),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop),
            seed=self.seed,
            prompt=TextPrompt(
                self.input_prefix,
                self.input_suffix,
                tuple(ExtraChunk(c.filename, c.text) for c in self.input_extra),
                self.prompt,
            ),
        )
        return text_turn(params, self.tandem, default_privacy)


class InfillLimits:
    """llama.cpp's infill stopping rules, applied to the text as it is generated:
    ``n_indent`` ends the answer at a line indented less than the cursor's line, and
    ``t_max_predict_ms`` ends it at the first newline after that much generation time."""

    def __init__(self, n_indent: int, t_max_predict_ms: int, clock: Any = time.perf_counter):
        self.n_indent = n_indent
        self.deadline_s = t_max_predict_ms / 1000 if t_max_predict_ms else None
        self._clock = clock
        self._started: float | None = None
        self.text = ""
        self.stopped: str | None = None  # why the limits ended the answer

    def feed(self, piece: str) -> str:
        """The part of ``piece`` within the limits; sets ``stopped`` when they end it."""
        if self._started is None:
            self._started = self._clock()
        before = len(self.text)
        self.text += piece
        cut = self._indent_cut()
        if cut is not None:
            self.stopped = "indent"
        elif self._past_deadline() and "\n" in piece:
            cut = self.text.index("\n", before) + 1
            self.stopped = "time_limit"
        if cut is None:
            return piece
        kept = self.text[before:cut]
        self.text = self.text[:cut]
        return kept

    def _past_deadline(self) -> bool:
        assert self._started is not None
        return self.deadline_s is not None and self._clock() - self._started > self.deadline_s

    def _indent_cut(self) -> int | None:
        """Where the first line after a newline that is indented less than ``n_indent``
        starts (once its first visible character is known)."""
        if not self.n_indent:
            return None
        pos = self.text.find("\n")
        while pos != -1:
            start = pos + 1
            pos = self.text.find("\n", start)
            line = self.text[start : len(self.text) if pos == -1 else pos]
            visible = line.lstrip(" \t")
            if visible and len(line) - len(visible) < self.n_indent:
                return start
        return None


class InfillResponseBuilder:
    """llama.cpp's ``/infill`` response: ``{"content", "stop", ...}``, or its stream of
    ``data: {"content": ..., "stop": false}`` events, ending with ``"stop": true``."""

    def __init__(self, fields: list[str] | None, limits: InfillLimits):
        self.fields = fields
        self.limits = limits
        self.want_logprobs = False
        self._started = time.perf_counter()

    def _pick(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.fields is None:
            return body
        out: dict[str, Any] = {}
        for name in self.fields:  # "timings/prompt_n" reads a nested field
            value: Any = body
            for part in name.split("/"):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                out[name] = value
        return out

    def opening(self, route: RouteInfo) -> dict[str, Any] | None:
        return None

    def token_chunk(self, route: RouteInfo, event: TokenEvent) -> dict[str, Any]:
        return {"content": event.text, "stop": False}

    def tool_chunk(self, route: RouteInfo, event: ToolCallDelta) -> dict[str, Any]:
        raise InvalidRequestError("An infill cannot call tools.")

    def final_chunk(self, route: RouteInfo, finish: Finish) -> dict[str, Any]:
        # A stream's end is marked by "stop" whatever fields were asked for.
        return {**self._pick(self._final(route, finish, "")), "stop": True}

    def _final(self, route: RouteInfo, finish: Finish, content: str) -> dict[str, Any]:
        prompt_n = finish.prefill_tokens if finish.prefill_tokens is not None else 0
        timings = finish.timings
        stop_type = {"length": "limit", "stop": "eos"}.get(str(finish.reason), "eos")
        if self.limits.stopped is not None:
            stop_type = "word"
        return {
            "content": content,
            "stop": True,
            "model": route.model,
            "stop_type": stop_type,
            "tokens_predicted": finish.completion_tokens,
            "tokens_evaluated": finish.prompt_tokens or 0,
            "tokens_cached": finish.cached_tokens or 0,
            "truncated": False,
            "timings": {
                "prompt_n": prompt_n,
                "prompt_ms": 1000 * timings.get("prefill_s", 0.0),
                "predicted_n": finish.completion_tokens,
                "predicted_ms": 1000 * timings.get("decode_s", 0.0),
            },
            "tandem": route_field(route),
        }

    def completion(
        self,
        route: RouteInfo,
        tokens: list[TokenEvent],
        finish: Finish,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return self._pick(self._final(route, finish, "".join(t.text for t in tokens)))
