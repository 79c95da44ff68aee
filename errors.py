"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

The one error type every layer raises; the HTTP layer (``router``) renders it.
"""

from __future__ import annotations

__all__ = ["APIError", "BackendUnavailable", "BackendTimeout", "BackendStreamError", "error_body"]

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    """An error answered to the client with ``status`` and OpenAI's error shape.

    ``type`` defaults by status (``invalid_request_error`` for 4xx,
    ``server_error`` for 5xx, ...).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON body of an OpenAI error."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class BackendUnavailable(APIError):
    """The endpoint could not be reached before any byte was exchanged (502)."""

    def __init__(self, endpoint: str, detail: str):
        super().__init__(502, f"Backend {endpoint} is unavailable: {detail}", code="backend_unavailable")
        self.endpoint = endpoint


class BackendTimeout(APIError):
    """The endpoint did not answer within ``request_timeout`` (504)."""

    def __init__(self, detail: str = "the backend did not answer in time"):
        super().__init__(504, f"Upstream timeout: {detail}", code="upstream_timeout")


class BackendStreamError(APIError):
    """A stream broke after it had started (mid-stream drop or an error chunk)."""

    def __init__(self, detail: str):
        super().__init__(502, f"The backend stream failed: {detail}", code="backend_stream_error")
