"""Every error a client can see, and the one mapping from errors to HTTP (`to_http`).

    GatewayError                       status  type                    code
    ├── InvalidRequestError            400     invalid_request_error   (param set when known)
    ├── AuthenticationError            401     invalid_request_error   invalid_api_key
    ├── PermissionDeniedError          403     permission_error        model_not_allowed
    ├── NotFoundError                  404     invalid_request_error   model_not_found / not_found
    ├── MethodNotAllowedError          405     invalid_request_error   method_not_allowed
    ├── PayloadTooLargeError           413     invalid_request_error   request_too_large
    ├── RateLimitedError               429     rate_limit_error        rate_limit_exceeded | tokens_limit_exceeded
    │                                                                  | budget_exceeded | concurrency_limit_exceeded
    │                                                                  | queue_timeout
    ├── BadGatewayError                502     server_error            upstream_error | upstream_rate_limited | …
    ├── ServiceUnavailableError        503     server_error            service_unavailable
    └── GatewayTimeoutError            504     server_error            upstream_timeout

Domain errors (`tenants.errors`, `quota.errors`, provider `UpstreamError`s) are translated in
`to_http`; the app's single exception handler calls it for everything, framework errors included.
"""

from __future__ import annotations

import logging
import math

import msgspec
from litestar.exceptions import HTTPException, ValidationException

from gateway.providers.base import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamBrokenError,
    UpstreamTimeoutError,
)
from gateway.schema.openai import ErrorBody, ErrorDetail
from quota.errors import QuotaBackendError, QuotaExceededError
from tenants.errors import InvalidKeyError, TenantNotFoundError, TenantsBackendError

_log = logging.getLogger(__name__)


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"
    outcome = "gateway_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if outcome is not None:
            self.outcome = outcome
        self.headers = headers or {}


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = None
    outcome = "invalid_request"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    outcome = "auth"


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"
    outcome = "forbidden"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    outcome = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    outcome = "invalid_request"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    outcome = "invalid_request"


class RateLimitedError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    outcome = "rate_limited"


class BadGatewayError(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_error"
    outcome = "upstream_error"


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
    outcome = "unavailable"


class GatewayTimeoutError(GatewayError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
    outcome = "upstream_timeout"


_QUOTA_CODES = {
    "rpm": ("rate_limit_exceeded", "rate_limited"),
    "tpm": ("tokens_limit_exceeded", "rate_limited"),
    "budget": ("budget_exceeded", "budget_exceeded"),
    "concurrency": ("concurrency_limit_exceeded", "rate_limited"),
    "queue": ("queue_timeout", "queue_timeout"),
}


def _retry_headers(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def from_upstream(exc: UpstreamError) -> GatewayError:
    """An upstream failure as the client sees it (documented in docs/errors.md)."""
    if isinstance(exc, UpstreamTimeoutError):
        return GatewayTimeoutError(f"The upstream did not answer in time: {exc.message}")
    if isinstance(exc, UpstreamStatusError) and exc.status is not None:
        if exc.status == 429:
            return BadGatewayError(
                "The upstream is rate limiting the gateway; retry later.",
                code="upstream_rate_limited",
                outcome="upstream_rate_limited",
                headers=_retry_headers(exc.retry_after or 1),
            )
        if 400 <= exc.status < 500 and exc.status not in (401, 403, 407, 408):
            message = f"The upstream rejected the request: {exc.message}"
            return InvalidRequestError(message, code="upstream_rejected", outcome="upstream_rejected")
        return BadGatewayError(f"The upstream answered {exc.status}: {exc.message}")
    if isinstance(exc, UpstreamConnectError):
        return BadGatewayError(f"Could not reach the upstream: {exc.message}", code="upstream_unavailable")
    if isinstance(exc, UpstreamProtocolError):
        return BadGatewayError(f"The upstream sent an invalid response: {exc.message}", code="upstream_bad_response")
    if isinstance(exc, UpstreamStreamBrokenError):
        return BadGatewayError(f"The upstream stream broke: {exc.message}")
    return BadGatewayError(exc.message)


def to_gateway_error(exc: BaseException) -> GatewayError:
    """Translate any exception into the `GatewayError` the client sees."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, InvalidKeyError):
        return AuthenticationError("Incorrect API key provided.")
    if isinstance(exc, TenantsBackendError):
        return ServiceUnavailableError("Authentication is temporarily unavailable.", headers=_retry_headers(2))
    if isinstance(exc, TenantNotFoundError):
        return NotFoundError("Not found.")
    if isinstance(exc, QuotaExceededError):
        code, outcome = _QUOTA_CODES.get(exc.kind, ("rate_limit_exceeded", "rate_limited"))
        headers = _retry_headers(exc.retry_after)
        if exc.kind == "budget":
            headers["x-should-retry"] = "false"
        return RateLimitedError(exc.message, code=code, outcome=outcome, headers=headers)
    if isinstance(exc, QuotaBackendError):
        return ServiceUnavailableError("Quota enforcement is temporarily unavailable.", headers=_retry_headers(1))
    if isinstance(exc, UpstreamError):
        return from_upstream(exc)
    if isinstance(exc, ValidationException):
        return InvalidRequestError(_validation_message(exc), param=_validation_param(exc))
    if isinstance(exc, HTTPException):
        return _from_framework(exc)
    # A bug, not a refusal: the client gets a bare 500, the operator the traceback (no locals, so no secrets).
    _log.error("unexpected %s while handling a request", type(exc).__name__, exc_info=exc)
    return GatewayError("The gateway failed to handle the request.")


def _validation_message(exc: ValidationException) -> str:
    """litestar's detail is only "Validation failed for POST …"; its `extra` says what failed."""
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict) and extra[0].get("message"):
        return f"Invalid request: {str(extra[0]['message'])[:300]}"
    return str(exc.detail)


def _validation_param(exc: ValidationException) -> str | None:
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        key = extra[0].get("key")
        return str(key) if key is not None else None
    return None


def _from_framework(exc: HTTPException) -> GatewayError:
    status = exc.status_code
    detail = str(exc.detail)
    mapping: dict[int, type[GatewayError]] = {
        400: InvalidRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        405: MethodNotAllowedError,
        413: PayloadTooLargeError,
        429: RateLimitedError,
        503: ServiceUnavailableError,
    }
    cls = mapping.get(status)
    if cls is None:
        return InvalidRequestError(detail) if 400 <= status < 500 else GatewayError(detail)
    if cls is NotFoundError:
        return NotFoundError("Not found.")
    return cls(detail, headers=dict(exc.headers or {}))


def error_body(error: GatewayError) -> bytes:
    body = ErrorBody(error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code))
    return msgspec.json.encode(body)


def sse_error_frame(error: GatewayError) -> bytes:
    """A terminal SSE event the openai SDK raises as `APIError` (ECOSYSTEM §0.3)."""
    return b"data: " + error_body(error) + b"\n\n"
