"""What `/schema` says beyond the handlers' signatures: who may call, and what the byte-returning handlers answer.

The `/v1` handlers return pre-encoded bytes (the hot path never builds a response model twice), so litestar
would document every answer as a string. These specs name the real shapes: the success body where it is ours
(model list, usage, deletion, feedback, token count), a JSON object where it is OpenAI's or Anthropic's, and
the error body of each API family for the statuses `errors.py` maps to. Security: a tenant key for `/v1`, the
admin token for `/admin` (`api/admin.py` sets it on its router).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme

from gateway.schema.openai import ErrorBody

TENANT_KEY: Final = "TenantKey"
ADMIN_TOKEN: Final = "AdminToken"  # noqa: S105  # the security scheme's name, not a token

COMPONENTS: Final = Components(
    security_schemes={
        TENANT_KEY: SecurityScheme(type="http", scheme="bearer", description="A tenant API key, `sk-sluice-…`."),
        ADMIN_TOKEN: SecurityScheme(type="http", scheme="bearer", description="`SLUICE_ADMIN_TOKEN`."),
    }
)
TENANT_SECURITY: Final[list[SecurityRequirement]] = [{TENANT_KEY: []}]
ADMIN_SECURITY: Final[list[SecurityRequirement]] = [{ADMIN_TOKEN: []}]


class AnthropicErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, kw_only=True):
    type: Literal["error"]
    error: AnthropicErrorDetail


class Deleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"]
    deleted: bool


class FeedbackAck(msgspec.Struct, kw_only=True):
    object: Literal["feedback"]
    request_id: str
    rating: Literal["good", "bad"]


class TokenCount(msgspec.Struct, kw_only=True):
    input_tokens: int


_ERROR_STATUSES: Final = {
    400: "The request is invalid (the body, a field, or what the upstream refused).",
    401: "No API key, or one that is unknown, revoked or expired.",
    404: "An unknown model, or an object this tenant does not own.",
    413: "The body is larger than the configured limit.",
    429: "A rate limit, budget or queue limit was reached (`Retry-After` says when to retry).",
    502: "The upstream failed or answered something unusable.",
    503: "A dependency is unavailable, or the gateway is draining.",
    504: "The upstream did not answer in time.",
}


ADMIN_ERRORS: Final = {
    400: ResponseSpec(data_container=ErrorBody, description="The body or a parameter is invalid."),
    401: ResponseSpec(data_container=ErrorBody, description="No admin token, or a wrong one."),
    404: ResponseSpec(data_container=ErrorBody, description="No such tenant or key."),
    503: ResponseSpec(data_container=ErrorBody, description="Postgres or Redis is unavailable."),
}
"""What every `/admin` operation may answer besides success, in OpenAI's error shape like `/v1`."""


def openai_responses(success: Any = dict[str, Any]) -> dict[int, ResponseSpec]:
    """A `/v1` operation's responses in OpenAI's shapes: `success` for 200, `ErrorBody` for every error."""
    return _responses(success, ErrorBody)


def anthropic_responses(success: Any = dict[str, Any]) -> dict[int, ResponseSpec]:
    """The same for the Anthropic-shaped operations (`/v1/messages…`)."""
    return _responses(success, AnthropicErrorBody)


def _responses(success: Any, error: type[msgspec.Struct]) -> dict[int, ResponseSpec]:
    errors = {status: ResponseSpec(data_container=error, description=text) for status, text in _ERROR_STATUSES.items()}
    return {200: ResponseSpec(data_container=success, description="Request fulfilled."), **errors}
