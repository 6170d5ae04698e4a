"""`/v1/messages`: Anthropic's Messages API for Claude-based agents, served by the same pipeline.

Errors use Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`) with its statuses; quota
refusals keep `retry-after` and `x-should-retry`, which Anthropic's SDK and Claude Code read too.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.response import Stream

from gateway.adapters.messages_over_chat import error_body
from gateway.api.openapi_docs import TokenCount, anthropic_responses
from gateway.context import RequestContext
from gateway.errors import to_gateway_error
from gateway.pipeline.account import finish
from gateway.pipeline.chat import client_headers
from gateway.pipeline.messages import anthropic_client_headers, count_tokens, run_messages
from gateway.runtime import Runtime


@post(
    "/v1/messages",
    status_code=200,
    summary="Create a message (Anthropic Messages API)",
    request_class=Request,
    responses=anthropic_responses(),
)
async def create_message(request: Request[None, None, State]) -> Response[Any]:
    """Anthropic `POST /v1/messages`, non-streaming or SSE, in front of any upstream."""
    rt: Runtime = request.app.state.runtime
    ctx = RequestContext(request.scope["state"]["request_id"])
    client = anthropic_client_headers(request.headers, client_headers(request.headers))
    try:
        reply = await run_messages(rt, ctx, request.body, client)
    except Exception as exc:  # noqa: BLE001  # the /v1 error boundary, in Anthropic's shape
        error = to_gateway_error(exc)
        ctx.outcome, ctx.error_code = error.outcome, error.code
        finish(rt, ctx)
        return _error(error)
    headers = {name: value for name, value in reply.headers.items() if name != "content-type"}
    headers["request-id"] = ctx.request_id
    if reply.frames is not None:
        return Stream(reply.frames, status_code=200, headers=headers, media_type="text/event-stream")
    return Response(reply.body, status_code=200, headers=headers, media_type="application/json")


@post(
    "/v1/messages/count_tokens",
    status_code=200,
    summary="Count a message's input tokens",
    request_class=Request,
    responses=anthropic_responses(TokenCount),
)
async def count_message_tokens(request: Request[None, None, State]) -> Response[bytes]:
    """Anthropic `POST /v1/messages/count_tokens` (Claude Code calls it); not charged, not sent upstream."""
    rt: Runtime = request.app.state.runtime
    client = anthropic_client_headers(request.headers, client_headers(request.headers))
    try:
        counted = await count_tokens(rt, request.body, client)
    except Exception as exc:  # noqa: BLE001  # the /v1 error boundary, in Anthropic's shape
        return _error(exc)
    return Response(msgspec.json.encode(counted), media_type="application/json")


def _error(exc: BaseException) -> Response[bytes]:
    error = to_gateway_error(exc)
    body = msgspec.json.encode(error_body(error.status, error.message))
    return Response(body, status_code=error.status, media_type="application/json", headers=error.headers)
