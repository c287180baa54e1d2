"""What a failed cloud call is called: httpx exceptions and HTTP statuses as ``CloudError``s
whose messages say what to check, with the API key never in them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from pydantic import SecretStr

from tandem.errors import CloudError

FIRST_TOKEN_TIMEOUT = "cloud_first_token_timeout"
# Codes of CloudError that blame the request, not the endpoint: they do not trip the breaker.
REQUEST_REJECTED = "cloud_rejected_request"
# 4xx statuses that say the endpoint (its key, its URL, its load) is wrong, not the request.
_ENDPOINT_STATUSES = {401, 403, 404, 408, 429}


class CloudErrors:
    """The error vocabulary of one endpoint (its URL, timeouts and key)."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        first_token_s: float | None,
    ):
        self.base_url = base_url
        self._api_key = api_key
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._first_token_s = first_token_s

    def redact(self, text: str) -> str:
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text

    def make(self, message: str, code: str) -> CloudError:
        return CloudError(self.redact(message), code=code)

    @contextmanager
    def mapped(
        self, read_timeout_s: float | None = None, read_setting: str = "cloud_read_timeout_s"
    ) -> Iterator[None]:
        """Turn httpx exceptions into CloudError with a message that says what to check
        (``read_timeout_s`` and ``read_setting``: the read timeout in force and what sets it)."""
        url = self.base_url
        read_s = self._read_timeout_s if read_timeout_s is None else read_timeout_s
        try:
            yield
        except httpx.ConnectTimeout as exc:
            raise self.make(
                f"Could not connect to the cloud at {url} within {self._connect_timeout_s} s: "
                "check cloud_url and that the server is up and reachable.",
                "cloud_timeout",
            ) from exc
        except httpx.TimeoutException as exc:
            raise self.make(
                f"The cloud at {url} sent nothing for {read_s:g} s: the server may "
                f"be overloaded; raise {read_setting} if it is just slow.",
                "cloud_timeout",
            ) from exc
        except httpx.ConnectError as exc:
            raise self.make(
                f"Cannot connect to the cloud at {url} ({type(exc).__name__}): check cloud_url "
                "and that the server is up.",
                "cloud_unreachable",
            ) from exc
        except httpx.HTTPError as exc:
            raise self.make(
                f"The connection to the cloud at {url} failed ({type(exc).__name__}: {exc}): "
                "check that the server is up and that cloud_url points at an "
                "OpenAI-compatible API.",
                "cloud_unreachable",
            ) from exc

    def status(self, response: httpx.Response) -> CloudError:
        status = response.status_code
        detail = error_detail(response)
        where = f"The cloud at {self.base_url} answered HTTP {status}"
        if status in (401, 403):
            hint = "check cloud_api_key (TANDEM_CLOUD_API_KEY)."
        elif status == 404:
            hint = "check that cloud_url ends with the API root, e.g. .../v1."
        elif 400 <= status < 500 and status not in _ENDPOINT_STATUSES:
            return self.make(f"{where}: {detail}", REQUEST_REJECTED)
        else:
            hint = "the server is failing; check its logs."
        return self.make(f"{where}: {detail}; {hint}", "cloud_http_error")

    def first_token(self, wait_s: float, *, shortened: bool) -> CloudError:
        if shortened:
            setting = "the cloud tier's remaining first-token budget"
        elif self._first_token_s is not None:
            setting = "cloud_first_token_s"
        else:
            setting = (
                "derived from the round trip and the prompt's size; set cloud_first_token_s or "
                "raise cloud_first_token_floor_s if the cloud is just slow to start"
            )
        return self.make(
            f"The cloud at {self.base_url} sent no first token within {wait_s:.3g} s of the "
            f"request, connect included ({setting}): the link may be half-open or dead, or "
            "the server stalled.",
            FIRST_TOKEN_TIMEOUT,
        )


def error_detail(response: httpx.Response) -> str:
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
