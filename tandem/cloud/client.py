"""A client for any OpenAI-compatible chat endpoint: streaming, health, and a circuit breaker.

Streaming is the primitive: :meth:`CloudClient.chat` collects :meth:`CloudClient.stream_chat`.
Every failure (unreachable, timed out, HTTP error, malformed stream) becomes a
:class:`~tandem.errors.CloudError` whose message says what to check. The API key travels only in
the ``Authorization`` header: it is scrubbed from every message, log line and repr.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from pydantic import SecretStr

from tandem.cloud.breaker import CircuitBreaker
from tandem.cloud.stream import CloudChunk, CloudCompletion, TokenLogprob, read_chunks
from tandem.errors import CloudError

if TYPE_CHECKING:
    from tandem.settings import Settings

logger = logging.getLogger(__name__)
OnSend = Callable[[bytes, str], None]  # (request body, endpoint URL)

RTT_ALPHA = 0.3  # weight of the newest sample in the round-trip-time average

# Codes of CloudError that blame the request, not the endpoint: they do not trip the breaker.
_REQUEST_REJECTED = "cloud_rejected_request"
# HTTP statuses that say the endpoint is unusable rather than that the request was wrong.
_ENDPOINT_STATUSES = {401, 403, 404, 408, 429}


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
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        deadline_s: float = 300.0,
        failure_threshold: int = 3,
        cooldown_s: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._deadline_s = deadline_s
        self._clock = clock
        self.breaker = CircuitBreaker(failure_threshold, cooldown_s, clock=clock)
        self.healthy: bool | None = None  # None until the first probe or request settles it
        self.rtt_ms: float | None = None
        self.last_error: str | None = None
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
            connect_timeout_s=settings.cloud_connect_timeout_s,
            read_timeout_s=settings.cloud_read_timeout_s,
            deadline_s=settings.cloud_deadline_s,
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

    # --- chat ------------------------------------------------------------------------------

    async def stream_chat(
        self, body: dict[str, Any], on_send: OnSend | None = None
    ) -> AsyncGenerator[CloudChunk, None]:
        """Stream a chat completion; ``body`` is an OpenAI request (its ``model`` is replaced).
        ``on_send`` receives the exact request body bytes and this endpoint's URL before they
        are sent.

        Raises CloudError (code ``circuit_open``) at once while the breaker is open, and
        ``cloud_deadline`` when the whole answer takes longer than ``deadline_s``.
        """
        self._admit()
        settled = False
        started = self._clock()
        try:
            async with self._open_stream(self._request_body(body), on_send) as response:
                async for chunk in read_chunks(response, self._redact):
                    if self._clock() - started > self._deadline_s:
                        raise self._error(
                            f"The cloud at {self.base_url} did not finish within "
                            f"{self._deadline_s} s (cloud_deadline_s).",
                            "cloud_deadline",
                        )
                    yield chunk
            self._record_success()
            settled = True
        except CloudError as exc:
            self._record_failure(exc)
            settled = True
            raise
        finally:
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
            wait_s = self.breaker.seconds_until_retry()
            raise CloudError(
                f"The cloud at {self.base_url} is marked unavailable after "
                f"{self.breaker.consecutive_failures} consecutive failures (last: "
                f"{self.last_error}); the next try is allowed in {wait_s:.0f} s.",
                code="circuit_open",
            )

    def _request_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            **body,
            "model": self.model,
            "stream": True,
            # Servers that support it add a final chunk with token counts; others ignore it.
            "stream_options": {"include_usage": True},
        }

    @asynccontextmanager
    async def _open_stream(
        self, body: dict[str, Any], on_send: OnSend | None = None
    ) -> AsyncIterator[httpx.Response]:
        url = f"{self.base_url}/chat/completions"
        started = self._clock()
        content = canonical_json(body)
        if on_send is not None:
            on_send(content, self.base_url)
        with self._mapped_errors():
            request = self._http.build_request(
                "POST", url, content=content, headers=self._headers()
            )
            response = await self._http.send(request, stream=True)
            try:
                self._record_rtt(self._clock() - started)
                if response.is_error:
                    await response.aread()
                    raise self._status_error(response)
                yield response
            finally:
                await response.aclose()

    # --- health ----------------------------------------------------------------------------

    async def probe(self) -> bool:
        """GET ``/models``: update ``healthy``, ``rtt_ms`` and the breaker; True if it answered.

        A success closes an open breaker (the endpoint is back); a failure counts against it.
        """
        started = self._clock()
        try:
            with self._mapped_errors():
                url = f"{self.base_url}/models"
                timeout = self._probe_timeout()
                response = await self._http.get(url, headers=self._headers(), timeout=timeout)
                if response.is_error:
                    raise self._status_error(response)
        except CloudError as exc:
            self._record_failure(exc)
            return False
        self._record_rtt(self._clock() - started)
        self._record_success()
        return True

    async def run_probes(self, interval_s: float) -> None:
        """Probe every ``interval_s`` seconds, forever; run it as a background task."""
        while True:
            await self.probe()
            await anyio.sleep(interval_s)

    def health(self) -> dict[str, Any]:
        """The state of the cloud tier for ``/healthz`` (never includes the API key)."""
        return {
            "url": self.base_url,
            "model": self.model,
            "healthy": self.healthy,
            "available": self.available,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "breaker": self.breaker.state.value,
            "consecutive_failures": self.breaker.consecutive_failures,
            "last_error": self.last_error,
        }

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _probe_timeout(self) -> httpx.Timeout:
        # A dead host shows within the connect timeout; reading may wait longer because a
        # single-slot server (llama_cpp.server) answers /models only between generations.
        return httpx.Timeout(self._read_timeout_s, connect=self._connect_timeout_s)

    # --- bookkeeping -----------------------------------------------------------------------

    def _record_rtt(self, seconds: float) -> None:
        sample = seconds * 1000.0
        if self.rtt_ms is None:
            self.rtt_ms = sample
        else:
            self.rtt_ms = RTT_ALPHA * sample + (1.0 - RTT_ALPHA) * self.rtt_ms

    def _record_success(self) -> None:
        if self.healthy is False:
            logger.info("The cloud at %s answers again.", self.base_url)
        self.healthy = True
        self.breaker.record_success()

    def _record_failure(self, exc: CloudError) -> None:
        if exc.code == _REQUEST_REJECTED:
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
        self.breaker.record_failure()

    # --- errors and secrets ----------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    def _redact(self, text: str) -> str:
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """Turn httpx exceptions into CloudError with a message that says what to check."""
        url = self.base_url
        try:
            yield
        except httpx.ConnectTimeout as exc:
            raise self._error(
                f"Could not connect to the cloud at {url} within {self._connect_timeout_s} s: "
                "check cloud_url and that the server is up and reachable.",
                "cloud_timeout",
            ) from exc
        except httpx.TimeoutException as exc:
            raise self._error(
                f"The cloud at {url} sent nothing for {self._read_timeout_s} s: the server may "
                "be overloaded; raise cloud_read_timeout_s if it is just slow.",
                "cloud_timeout",
            ) from exc
        except httpx.ConnectError as exc:
            raise self._error(
                f"Cannot connect to the cloud at {url} ({type(exc).__name__}): check cloud_url "
                "and that the server is up.",
                "cloud_unreachable",
            ) from exc
        except httpx.HTTPError as exc:
            raise self._error(
                f"The connection to the cloud at {url} failed ({type(exc).__name__}: {exc}): "
                "check that the server is up and that cloud_url points at an "
                "OpenAI-compatible API.",
                "cloud_unreachable",
            ) from exc

    def _status_error(self, response: httpx.Response) -> CloudError:
        status = response.status_code
        detail = _error_detail(response)
        where = f"The cloud at {self.base_url} answered HTTP {status}"
        if status in (401, 403):
            hint = "check cloud_api_key (TANDEM_CLOUD_API_KEY)."
        elif status == 404:
            hint = "check that cloud_url ends with the API root, e.g. .../v1."
        elif 400 <= status < 500 and status not in _ENDPOINT_STATUSES:
            return self._error(f"{where}: {detail}", _REQUEST_REJECTED)
        else:
            hint = "the server is failing; check its logs."
        return self._error(f"{where}: {detail}; {hint}", "cloud_http_error")

    def _error(self, message: str, code: str) -> CloudError:
        return CloudError(self._redact(message), code=code)


def _first(new: int | None, old: int | None) -> int | None:
    return new if new is not None else old


def _error_detail(response: httpx.Response) -> str:
    """The server's own error message, from an OpenAI-shaped body or the raw text."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail"))
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
        if error is not None:
            return str(error)[:300]
    return str(payload)[:300]


def canonical_json(body: dict[str, Any]) -> bytes:
    """One fixed serialization (key order as built, compact, UTF-8), so that requests of one
    conversation share a byte-identical prefix."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
