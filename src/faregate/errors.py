"""The error tree. Raise in the domain, render once at the edge in OpenAI's shape.

    GatewayError                      500 internal_server_error
    ├── ConfigError                   (start-up only, never rendered to a client)
    ├── InvalidRequest                400 invalid_request_error / bad_request_error
    │   ├── BodyTooLarge              413
    │   └── MethodNotAllowed          405
    ├── AuthError                     401 auth_error
    │   ├── ExpiredKey                401 expired_key
    │   └── ModelAccessDenied         401 key_model_access_denied
    ├── AdminOnly                     403 auth_error
    ├── NotFound                      404 not_found_error
    ├── BudgetExceeded                429 budget_exceeded (x-should-retry: false)
    ├── RateLimited                   429 rate_limit_exceeded
    ├── ServiceUnavailable            503 service_unavailable
    └── UpstreamError                 status of the upstream (502 when it sent none)

The `type` values follow LiteLLM's proxy so that clients written against it keep working.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status = 500
    type = "internal_server_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code if self.code is not None else str(self.status),
        }})


class ConfigError(GatewayError):
    """A bad setting found at start-up. The message names the setting."""


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413


class MethodNotAllowed(InvalidRequest):
    """The path exists but not for this method; says which methods it takes (`Allow`)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allow: str) -> None:
        super().__init__(f"{method} is not allowed on {path}; use {allow}",
                         headers={"Allow": allow})


class AuthError(GatewayError):
    status = 401
    type = "auth_error"


class ExpiredKey(AuthError):
    type = "expired_key"


class ModelAccessDenied(AuthError):
    type = "key_model_access_denied"


class AdminOnly(GatewayError):
    status = 403
    type = "auth_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class BudgetExceeded(GatewayError):
    """A retry cannot succeed until the budget is raised or its period resets, so it says so
    to the clients: `x-should-retry: false`, which the openai and anthropic SDKs honour before
    their rule of retrying every 429 (a RateLimited 429 stays retryable: it clears in seconds).
    """

    status = 429
    type = "budget_exceeded"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, param=param,
                         headers={"x-should-retry": "false", **(headers or {})})


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"


class UpstreamError(GatewayError):
    """The upstream failed or answered with an error; `status` is what the caller gets.

    `retryable`: another attempt (on this or another deployment) may succeed — the upstream's
    own fault (5xx, 429, timeouts, refused or dropped connections, malformed replies), not the
    client's. `upstream_status` is the HTTP status the upstream sent, if it sent one."""

    type = "upstream_error"
    retry_after_s: float | None = None      # the upstream's Retry-After, when it sent one

    def __init__(self, message: str, *, status: int = 502, type: str | None = None,
                 code: str | None = None, retryable: bool = False,
                 upstream_status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.retryable = retryable
        self.upstream_status = upstream_status
        if type:
            self.type = type
