"""The one exception hierarchy of Tandem.

Every error carries the HTTP status it maps to and an OpenAI-style ``type``/``code`` so the
server can translate it in one handler. Messages say what to change, not only what failed.
"""

from __future__ import annotations


class TandemError(Exception):
    """Base class: an error with an HTTP status and an actionable message."""

    status_code = 500
    error_type = "server_error"
    code: str | None = "internal_error"
    retry_after_s: float | None = None  # sent as Retry-After when set

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI-shaped error body: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(TandemError):
    """The request is malformed or asks for something impossible."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedParameterError(InvalidRequestError):
    """An OpenAI request field (or a value of it) that this gateway does not honour."""

    code = "unsupported_parameter"


class UnknownParameterError(InvalidRequestError):
    """A request field that is not part of the OpenAI chat-completions API at all."""

    code = "unknown_parameter"


class ContextLengthError(InvalidRequestError):
    """The prompt does not fit the context window of any tier that may answer it."""

    code = "context_length_exceeded"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    code = "payload_too_large"


class NotFoundError(TandemError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class OverloadedError(TandemError):
    """The local engine's queue is full; the client should retry after a short wait."""

    status_code = 503
    error_type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TierUnavailableError(TandemError):
    """The tier the caller insisted on cannot answer right now."""

    status_code = 503
    error_type = "server_error"
    code = "tier_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: float = 5.0):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class ModelLoadError(TandemError):
    """A model could not be loaded (missing file, corrupt GGUF, over the RAM budget)."""

    status_code = 503
    error_type = "server_error"
    code = "model_load_failed"


class MemoryBudgetError(ModelLoadError):
    code = "memory_budget_exceeded"


class CloudError(TandemError):
    """The cloud endpoint failed: unreachable, timed out, or answered with an error."""

    status_code = 502
    error_type = "server_error"
    code = "cloud_error"


class ConfigError(TandemError):
    """The settings describe something that cannot work (or must not be allowed)."""

    code = "config_error"


class AuthenticationError(TandemError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"
