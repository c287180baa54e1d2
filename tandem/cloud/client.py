"""A client for any OpenAI-compatible chat endpoint: streaming, health, and a circuit breaker.

Streaming is the primitive: :meth:`CloudClient.chat` collects :meth:`CloudClient.stream_chat`.
Every failure (unreachable, timed out, HTTP error, malformed stream) becomes a
:class:`~tandem.errors.CloudError` whose message says what to check. The API key travels only in
the ``Authorization`` header: it is scrubbed from every message, log line and repr.

The first token has its own deadline (:meth:`CloudClient.first_token_deadline_s`, seconds, not
the minute of the read timeout): an endpoint that accepts the request and never answers (a
half-open link, a captive portal, a dead uplink) costs one short wait, after which its breaker
stays open until a health probe sees it answer again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx
from pydantic import SecretStr

from tandem.cloud.breaker import CircuitBreaker
from tandem.cloud.errors import (
    FIRST_TOKEN_TIMEOUT,
    REQUEST_REJECTED,
    CloudErrors,
    canonical_json,
)
from tandem.cloud.stream import (
    CloudChunk,
    CloudCompletion,
    CloudCount,
    TokenLogprob,
    read_chunks,
)
from tandem.errors import CloudError
from tandem.prompt import endpoint_for, fim_for_llama_cpp
from tandem.structured import Dialect, for_dialect
from tandem.tools import choice_for_dialect

if TYPE_CHECKING:
    from tandem.settings import Settings

logger = logging.getLogger(__name__)
OnSend = Callable[[bytes, str], None]  # (request body, endpoint URL)
_Chunks = AsyncGenerator[CloudChunk, None]  # what read_chunks returns

RTT_ALPHA = 0.3  # weight of the newest sample in the round-trip-time average
# The derived first-token deadline (see CloudClient.first_token_deadline_s).
RTT_MULTIPLE = 8.0  # round trips a healthy endpoint may take before its first token
PROMPT_BYTES_PER_TOKEN = 4.0  # request-body bytes per prompt token, roughly
PREFILL_TOKENS_PER_S = 2000.0  # a cautious prefill rate for a cloud server
# /tokenize answers that mean "not here": no such endpoint (llama_cpp.server), or not for this
# key (a hosted API). Any other failure is taken as passing.
_NOT_OFFERED = frozenset({401, 403, 404, 405})
# A stream that produced a chunk this recently shows the endpoint is up: no probe is needed.
STREAM_PROOF_S = 5.0



class CloudClient:
    """Streams chat completions from an OpenAI-compatible endpoint behind a circuit breaker.

    ``transport`` and ``clock`` are seams for tests (``httpx.MockTransport``, a fake clock).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: SecretStr | None = None,
        model: str = "cloud",
        dialect: Dialect = "openai",
        fim_tokens: Sequence[str] | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        deadline_s: float = 300.0,
        first_token_s: float | None = None,
        first_token_floor_s: float = 2.5,
        failure_threshold: int = 3,
        cooldown_s: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dialect = dialect
        self._fim_tokens = tuple(fim_tokens) if fim_tokens else None
        self._api_key = api_key
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._deadline_s = deadline_s
        self._first_token_s = first_token_s
        self._first_token_floor_s = first_token_floor_s
        self._clock = clock
        self._streams_in_flight = 0
        self._last_chunk_at: float | None = None  # clock() when any stream last got a chunk
        # The first-token waits in progress, with their deadlines (seconds).
        self._first_token_waits: dict[anyio.CancelScope, float] = {}
        self.breaker = CircuitBreaker(failure_threshold, cooldown_s, clock=clock)
        self.healthy: bool | None = None  # None until the first probe or request settles it
        self.rtt_ms: float | None = None
        self.last_error: str | None = None
        # The window the server says it serves (vLLM lists max_model_len in /models).
        self.window_tokens: int | None = None
        self._counts = True  # until the server shows it has no /tokenize
        self._errors = CloudErrors(
            self.base_url, api_key, connect_timeout_s, read_timeout_s, first_token_s
        )
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        base_url: str,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> CloudClient:
        """A client configured from the ``cloud_*`` settings, talking to ``base_url``."""
        return cls(
            base_url,
            api_key=settings.cloud_api_key,
            model=settings.cloud_model,
            dialect=settings.cloud_dialect,
            fim_tokens=settings.cloud_fim_tokens,
            connect_timeout_s=settings.cloud_connect_timeout_s,
            read_timeout_s=settings.cloud_read_timeout_s,
            deadline_s=settings.cloud_deadline_s,
            first_token_s=settings.cloud_first_token_s,
            first_token_floor_s=settings.cloud_first_token_floor_s,
            failure_threshold=settings.cloud_failure_threshold,
            cooldown_s=settings.cloud_cooldown_s,
            transport=transport,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"CloudClient(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def available(self) -> bool:
        """Whether a request may be tried now (the breaker is closed, or half-open and free)."""
        return self.breaker.available

    def first_token_deadline_s(self, prompt_bytes: int = 0) -> float:
        """How long to wait for the first token of a request whose body is ``prompt_bytes``
        long, connect included: ``cloud_first_token_s`` when set, else

            max(floor, 8 × rtt) + (prompt_bytes / 4) / 2000 tokens per s

        A healthy endpoint starts answering within a few round trips (connect, TLS, the request,
        its queue): 8 of them leave room for jitter on a slow link, and the floor
        (``cloud_first_token_floor_s``) covers a near link, where the round trip is tiny but
        the server still needs time to schedule the request. The second term is the server's
        prefill of the prompt (about 4 bytes of request per token, 2000 tokens per second, a
        cautious rate for a GPU server), so that a long prompt is not cut off while it is read.
        The read timeout (minutes) is for a slow answer, not a silent one: without this, a link
        that accepts connections and never answers would hold a user for all of it.
        """
        if self._first_token_s is not None:
            return self._first_token_s
        base = self._first_token_floor_s
        if self.rtt_ms is not None:
            base = max(base, RTT_MULTIPLE * self.rtt_ms / 1000.0)
        return base + prompt_bytes / PROMPT_BYTES_PER_TOKEN / PREFILL_TOKENS_PER_S

    def first_token_deadline_for(self, body: dict[str, Any]) -> float:
        """:meth:`first_token_deadline_s` for the request :meth:`stream_chat` sends for
        ``body``."""
        return self.first_token_deadline_s(len(canonical_json(self._request_body(body))))

    # --- chat ------------------------------------------------------------------------------

    async def stream_chat(
        self,
        body: dict[str, Any],
        on_send: OnSend | None = None,
        *,
        first_token_s: float | None = None,
    ) -> AsyncGenerator[CloudChunk, None]:
        """Stream a chat completion; ``body`` is an OpenAI request (its ``model`` is replaced).
        ``on_send`` receives the exact request body bytes and this endpoint's URL before they
        are sent. ``first_token_s`` shortens the first-token deadline (a pool's remaining
        budget); it never lengthens it.

        Raises CloudError (code ``circuit_open``) at once while the breaker is open,
        ``cloud_first_token_timeout`` when neither a first token nor the end of the answer
        arrives within :meth:`first_token_deadline_s` of sending (connect included), and
        ``cloud_deadline`` when the whole answer takes longer than ``deadline_s``. Nothing is
        yielded before the first token: chunks that carry no text (the role) wait for it.

        The deadline counts from the endpoint's latest sign of life: while another stream of
        this client is receiving chunks, a request queued behind it (a single-slot server
        such as the stand-in answers one at a time) keeps waiting.
        """
        self._admit()
        content = canonical_json(self._request_body(body))
        own_s = self.first_token_deadline_for(body)
        wait_s = own_s if first_token_s is None else min(own_s, first_token_s)
        settled = False
        started = self._clock()
        self._streams_in_flight += 1
        try:
            async with AsyncExitStack() as stack:
                head: list[CloudChunk] = []
                with anyio.move_on_after(wait_s) as first_token:
                    self._first_token_waits[first_token] = wait_s
                    try:
                        response = await stack.enter_async_context(
                            self._open_stream(content, on_send, endpoint_for(body))
                        )
                        # Closed with the stream, also when left suspended at the first token.
                        chunks = await stack.enter_async_context(
                            aclosing(cast(_Chunks, read_chunks(response, self._errors.redact)))
                        )
                        async for chunk in chunks:
                            self._saw_chunk(first_token)
                            head.append(chunk)
                            if _answers(chunk):
                                break
                    finally:
                        del self._first_token_waits[first_token]
                if first_token.cancelled_caught:
                    raise self._errors.first_token(wait_s, shortened=wait_s < own_s)
                for chunk in head:
                    yield chunk
                async for chunk in chunks:
                    self._saw_chunk()
                    if self._clock() - started > self._deadline_s:
                        raise self._errors.make(
                            f"The cloud at {self.base_url} did not finish within "
                            f"{self._deadline_s} s (cloud_deadline_s).",
                            "cloud_deadline",
                        )
                    yield chunk
            self._record_success()
            settled = True
        except CloudError as exc:
            # A deadline cut short by the caller is no proof that the endpoint is black-holed.
            until_probe = exc.code == FIRST_TOKEN_TIMEOUT and wait_s >= own_s
            self._record_failure(exc, until_probe=until_probe)
            settled = True
            raise
        finally:
            self._streams_in_flight -= 1
            if not settled:  # the caller stopped reading: that says nothing about the endpoint
                self.breaker.release()

    async def chat(self, body: dict[str, Any]) -> CloudCompletion:
        """The whole answer to ``body``: :meth:`stream_chat` collected."""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        finish_reason: str | None = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        async for chunk in self.stream_chat(body):
            parts.append(chunk.text)
            logprobs.extend(chunk.logprobs)
            finish_reason = chunk.finish_reason or finish_reason
            prompt_tokens = _first(chunk.prompt_tokens, prompt_tokens)
            completion_tokens = _first(chunk.completion_tokens, completion_tokens)
        return CloudCompletion(
            "".join(parts), finish_reason, prompt_tokens, completion_tokens, tuple(logprobs)
        )

    def _admit(self) -> None:
        if not self.breaker.try_acquire():
            if self.breaker.reopens_on == "probe":
                raise CloudError(
                    f"The cloud at {self.base_url} is marked unavailable (last: "
                    f"{self.last_error}); requests go to it again once a health probe sees it "
                    "answer.",
                    code="circuit_open",
                )
            wait_s = self.breaker.seconds_until_retry()
            raise CloudError(
                f"The cloud at {self.base_url} is marked unavailable after "
                f"{self.breaker.consecutive_failures} consecutive failures (last: "
                f"{self.last_error}); the next try is allowed in {wait_s:.0f} s.",
                code="circuit_open",
            )

    def _request_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if "response_format" in body:
            body = {**body, "response_format": for_dialect(body["response_format"], self.dialect)}
        body = choice_for_dialect(body, self.dialect)
        if "suffix" in body and self.dialect == "llama_cpp":
            body = fim_for_llama_cpp(body, self._fim_tokens)
        return {
            **body,
            "model": self.model,
            "stream": True,
            # Servers that support it add a final chunk with token counts; others ignore it.
            "stream_options": {"include_usage": True},
        }

    @asynccontextmanager
    async def _open_stream(
        self, content: bytes, on_send: OnSend | None = None, endpoint: str = "chat/completions"
    ) -> AsyncIterator[httpx.Response]:
        url = f"{self.base_url}/{endpoint}"
        started = self._clock()
        if on_send is not None:
            on_send(content, self.base_url)
        with self._errors.mapped():
            request = self._http.build_request(
                "POST", url, content=content, headers=self._headers()
            )
            response = await self._http.send(request, stream=True)
            try:
                self._record_rtt(self._clock() - started)
                if response.is_error:
                    await response.aread()
                    raise self._errors.status(response)
                yield response
            finally:
                await response.aclose()

    # --- health ----------------------------------------------------------------------------

    async def probe(self) -> bool:
        """GET ``/models``: update ``healthy``, ``rtt_ms`` and the breaker; True if it answered.

        A success closes an open breaker (the endpoint is back, whichever mode opened it); a
        failure counts against it. While a chat stream of this client is producing chunks the
        probe is skipped (the stream shows the endpoint is up, and a single-slot server answers
        ``/models`` only between generations): it returns the current health, counting nothing.
        A probe that fails while a stream got a chunk is not counted either.
        """
        if self._stream_proves_health():
            return self.healthy is not False
        started = self._clock()
        try:
            read_s = self._probe_read_timeout_s()
            setting = (
                "cloud_read_timeout_s"
                if read_s >= self._read_timeout_s
                else "cloud_first_token_floor_s"
            )
            with self._errors.mapped(read_s, setting):
                url = f"{self.base_url}/models"
                timeout = self._probe_timeout()
                response = await self._http.get(url, headers=self._headers(), timeout=timeout)
                if response.is_error:
                    raise self._errors.status(response)
        except CloudError as exc:
            last = self._last_chunk_at
            if last is not None and last >= started:  # a stream answered meanwhile
                return self.healthy is not False
            self._record_failure(exc)
            return False
        self._record_rtt(self._clock() - started)
        self._record_success(probe=True)
        self.window_tokens = _served_window(response, self.model) or self.window_tokens
        return True

    async def count_tokens(self, messages: Sequence[Mapping[str, Any]]) -> CloudCount | None:
        """The server's own count of the prompt ``messages`` make (its chat template and
        tokenizer, the generation prompt included), from vLLM's ``POST /tokenize`` at the
        server's root; None where the server has none or refuses it (remembered: it is not asked
        again) or the call fails. The messages go to the cloud: pass only what may be sent to it."""
        if not self._counts or not self.base_url.endswith("/v1"):
            return None
        url = f"{self.base_url.removesuffix('/v1')}/tokenize"
        body = {"model": self.model, "messages": list(messages), "add_generation_prompt": True}
        try:
            response = await self._http.post(
                url, json=body, headers=self._headers(), timeout=self._probe_timeout()
            )
        except httpx.HTTPError as exc:
            logger.info("The cloud's token count failed (%s); the local estimate is used", exc)
            return None
        if response.status_code in _NOT_OFFERED:
            self._counts = False
            return None
        try:
            response.raise_for_status()
            data = response.json()
            count = CloudCount(int(data["count"]), _positive(data.get("max_model_len")))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            logger.info("The cloud's token count failed (%s); the local estimate is used", exc)
            return None
        self.window_tokens = count.window or self.window_tokens
        return count

    def _saw_chunk(self, waiting: anyio.CancelScope | None = None) -> None:
        """A stream got a chunk: the endpoint is alive, so the other first-token waits (of
        requests queued behind this stream) count again from now."""
        self._last_chunk_at = self._clock()
        now = anyio.current_time()
        for scope, wait_s in self._first_token_waits.items():
            if scope is not waiting:
                scope.deadline = max(scope.deadline, now + wait_s)

    def _stream_proves_health(self) -> bool:
        last = self._last_chunk_at
        return (
            self._streams_in_flight > 0
            and last is not None
            and self._clock() - last < STREAM_PROOF_S
        )

    async def run_probes(self, interval_s: float) -> None:
        """Probe every ``interval_s`` seconds, forever; run it as a background task."""
        while True:
            await self.probe()
            await anyio.sleep(interval_s)

    def health(self) -> dict[str, Any]:
        """The state of the cloud tier for ``/healthz`` (never includes the API key).

        ``reopens_on`` says what lets requests through an open breaker again (``"probe"`` or
        ``"cooldown"``; None while closed); ``first_token_deadline_s`` is the first-token
        deadline now in effect, before the allowance for a request's prompt.
        """
        return {
            "url": self.base_url,
            "model": self.model,
            "window_tokens": self.window_tokens,
            "healthy": self.healthy,
            "available": self.available,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "breaker": self.breaker.state.value,
            "reopens_on": self.breaker.reopens_on,
            "consecutive_failures": self.breaker.consecutive_failures,
            "first_token_deadline_s": round(self.first_token_deadline_s(), 3),
            "last_error": self.last_error,
        }

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _probe_read_timeout_s(self) -> float:
        """The first-token deadline (without a prompt), at least the floor, at most the read
        timeout: an endpoint that cannot list its models in that time could not start an answer
        in time either. (A single-slot server that answers ``/models`` only between generations
        is busy with one of ours: :meth:`probe` is skipped or not counted then.)"""
        wait_s = max(self.first_token_deadline_s(), self._first_token_floor_s)
        return min(wait_s, self._read_timeout_s)

    def _probe_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self._probe_read_timeout_s(), connect=self._connect_timeout_s)

    # --- bookkeeping -----------------------------------------------------------------------

    def _record_rtt(self, seconds: float) -> None:
        sample = seconds * 1000.0
        if self.rtt_ms is None:
            self.rtt_ms = sample
        else:
            self.rtt_ms = RTT_ALPHA * sample + (1.0 - RTT_ALPHA) * self.rtt_ms

    def _record_success(self, *, probe: bool = False) -> None:
        if self.breaker.reopens_on == "probe" and not probe:
            # A stream begun before the endpoint went silent: only a probe re-opens it.
            return
        if self.healthy is False:
            logger.info("The cloud at %s answers again.", self.base_url)
        self.healthy = True
        self.breaker.record_success()

    def _record_failure(self, exc: CloudError, *, until_probe: bool = False) -> None:
        if exc.code == REQUEST_REJECTED:
            # The endpoint answered; only the request was wrong.
            self._record_success()
            return
        # One line when the endpoint goes down, not one per failed request or probe.
        if self.healthy is not False:
            logger.warning("%s Requests go to the local model until it answers.", exc.message)
        else:
            logger.debug("Cloud still failing: %s", exc.message)
        self.healthy = False
        self.last_error = exc.message
        if until_probe:
            self.breaker.trip(until_probe=True)
        else:
            self.breaker.record_failure()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _served_window(response: httpx.Response, model: str) -> int | None:
    """``max_model_len`` of ``model`` in a ``/models`` answer, where the server lists it."""
    try:
        entries = response.json()["data"]
        return next(
            (_positive(e.get("max_model_len")) for e in entries if e.get("id") == model), None
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _answers(chunk: CloudChunk) -> bool:
    """Whether ``chunk`` is the start of the answer (a role-only chunk is not)."""
    return (
        bool(chunk.text)
        or bool(chunk.tool_calls)
        or chunk.finish_reason is not None
        or bool(chunk.logprobs)
    )


def _first(new: int | None, old: int | None) -> int | None:
    return new if new is not None else old
