"""`/v1`: the OpenAI-compatible tenant API. Handlers are thin; the pipeline does the work."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.response import Stream

from gateway.accounting.usage import month_start, quota_remaining, usage_summary
from gateway.api.openapi_docs import Deleted, FeedbackAck, openai_responses
from gateway.context import RequestContext
from gateway.errors import NotFoundError, error_body, to_gateway_error
from gateway.feedback import Feedback
from gateway.pipeline.account import finish
from gateway.pipeline.admit import configured_levels
from gateway.pipeline.chat import ClientHeaders, Reply, authenticate, client_headers, run_chat
from gateway.pipeline.decode import decode_typed
from gateway.pipeline.embed import run_embeddings
from gateway.pipeline.responses import run_responses
from gateway.runtime import Runtime
from gateway.schema.admin import UsageOut
from gateway.schema.openai import ModelCard, ModelList


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def error_response(exc: BaseException, ctx: RequestContext) -> Response[bytes]:
    error = to_gateway_error(exc)
    ctx.outcome, ctx.error_code = error.outcome, error.code
    return Response(error_body(error), status_code=error.status, media_type="application/json", headers=error.headers)


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="Create a chat completion",
    request_class=Request,
    responses=openai_responses(),
)
async def chat_completions(  # served by `hot_path.HotPath` in front of litestar; this handler documents it
    request: Request[None, None, State],
) -> Response[Any]:
    """OpenAI `createChatCompletion`, non-streaming or SSE streaming."""
    return await _serve(request, run_chat)


@post(
    "/v1/embeddings",
    status_code=200,
    summary="Create embeddings",
    request_class=Request,
    responses=openai_responses(),
)
async def embeddings(request: Request[None, None, State]) -> Response[Any]:
    """OpenAI `createEmbedding`: `float` or `base64` vectors (the openai SDK asks for base64)."""
    return await _serve(request, run_embeddings)


@post(
    "/v1/responses",
    status_code=200,
    summary="Create a model response (Responses API)",
    request_class=Request,
    responses=openai_responses(),
)
async def create_response(request: Request[None, None, State]) -> Response[Any]:
    """OpenAI `createResponse`, non-streaming or with its typed SSE events, through the chat pipeline."""
    return await _serve(request, run_responses)


@get("/v1/responses/{response_id:str}", summary="Get a stored model response", responses=openai_responses())
async def get_response(request: Request[None, None, State], response_id: str) -> Response[bytes]:
    rt = _runtime(request.app.state)
    ctx = RequestContext(request.scope["state"]["request_id"])
    try:
        tenant = await authenticate(rt, request.headers.get("authorization"))
        stored = await rt.responses.get(tenant.tenant_id, response_id)
        if stored is None:
            raise NotFoundError(f"Response with id '{response_id[:100]}' not found.")
    except Exception as exc:  # noqa: BLE001  # same error boundary
        return error_response(exc, ctx)
    return Response(msgspec.json.encode(stored.response), media_type="application/json")


@delete(
    "/v1/responses/{response_id:str}",
    status_code=200,
    summary="Delete a stored model response",
    responses=openai_responses(Deleted),
)
async def delete_response(request: Request[None, None, State], response_id: str) -> Response[bytes]:
    rt = _runtime(request.app.state)
    ctx = RequestContext(request.scope["state"]["request_id"])
    try:
        tenant = await authenticate(rt, request.headers.get("authorization"))
        if not await rt.responses.delete(tenant.tenant_id, response_id):
            raise NotFoundError(f"Response with id '{response_id[:100]}' not found.")
    except Exception as exc:  # noqa: BLE001  # same error boundary
        return error_response(exc, ctx)
    body = {"id": response_id, "object": "response", "deleted": True}
    return Response(msgspec.json.encode(body), media_type="application/json")


Run: TypeAlias = Callable[[Runtime, RequestContext, Callable[[], Awaitable[bytes]], ClientHeaders], Awaitable[Reply]]


async def _serve(request: Request[None, None, State], run: Run) -> Response[Any]:
    """The /v1 error boundary: every failure becomes an OpenAI error, accounted like an answer."""
    rt = _runtime(request.app.state)  # not a `state` parameter: litestar copies State per request for those
    ctx = RequestContext(request.scope["state"]["request_id"])
    try:
        reply = await run(rt, ctx, request.body, client_headers(request.headers))
    except Exception as exc:  # noqa: BLE001  # see the docstring
        response = error_response(exc, ctx)
        finish(rt, ctx)
        return response
    return _reply_response(reply)


def _reply_response(reply: Reply) -> Response[Any]:
    headers = {name: value for name, value in reply.headers.items() if name != "content-type"}
    if reply.frames is not None:
        return Stream(reply.frames, status_code=200, headers=headers, media_type="text/event-stream")
    return Response(reply.body, status_code=200, headers=headers, media_type="application/json")


@post(
    "/v1/feedback",
    status_code=200,
    summary="Rate an answer (feedback for routing)",
    request_class=Request,
    responses=openai_responses(FeedbackAck),
)
async def rate_answer(request: Request[None, None, State]) -> Response[bytes]:
    """Sluice's own: `{"request_id", "rating": "good"|"bad", "comment"?}` for a response this tenant received;
    confidence routes learn from it (`sluice router train --from-feedback`)."""
    rt = _runtime(request.app.state)
    ctx = RequestContext(request.scope["state"]["request_id"])
    try:
        tenant = await authenticate(rt, request.headers.get("authorization"))
        feedback: Feedback = decode_typed(_feedback_decoder, await request.body())
        await rt.feedback.record(tenant.tenant_id, feedback)
        rt.metrics.feedback.labels(rt.metrics.bounds.tenant(tenant.tenant_id), feedback.rating).inc()
    except Exception as exc:  # noqa: BLE001  # the /v1 error boundary
        return error_response(exc, ctx)
    body = {"object": "feedback", "request_id": str(feedback.request_id), "rating": feedback.rating}
    return Response(msgspec.json.encode(body), media_type="application/json")


_feedback_decoder = msgspec.json.Decoder(Feedback)


@get("/v1/models", summary="List the models this key may call", responses=openai_responses(ModelList))
async def list_models(request: Request[None, None, State], state: State) -> Response[bytes]:
    rt = _runtime(state)
    ctx = RequestContext(request.scope["state"]["request_id"])
    try:
        await authenticate(rt, request.headers.get("authorization"))
    except Exception as exc:  # noqa: BLE001  # same error boundary as chat completions
        return error_response(exc, ctx)
    cards = [ModelCard(id=name, created=rt.created, owned_by="sluice") for name in rt.routes]
    return Response(msgspec.json.encode(ModelList(data=cards)), media_type="application/json")


@get("/v1/usage", summary="The calling tenant's own usage this month", responses=openai_responses(UsageOut))
async def own_usage(request: Request[None, None, State], state: State) -> Response[bytes]:
    rt = _runtime(state)
    ctx = RequestContext(request.scope["state"]["request_id"])
    try:
        tenant = await authenticate(rt, request.headers.get("authorization"))
    except Exception as exc:  # noqa: BLE001  # same error boundary as chat completions
        return error_response(exc, ctx)
    now = dt.datetime.now(dt.UTC)
    summary = await usage_summary(rt.pool, tenant.tenant_id, month_start(now), now)
    quotas = await quota_remaining(rt.limiter, configured_levels(tenant.tenant_id, tenant.quota))
    return Response(msgspec.json.encode(msgspec.structs.replace(summary, quotas=quotas)), media_type="application/json")
