"""`POST /v1/responses` and its stored responses, through the chat-completions pipeline.

The Responses request is translated into a chat-completions request (`adapters.responses_over_chat`), with the
stored conversation before it when it names a `previous_response_id` (the caller's own: another tenant's id
is a 404), and `run_chat` takes it through every stage — auth, quota, cache, routing, accounting, metrics.
The chat answer (or its SSE frames) is translated back; with `store` (the default) the response is saved
before the client sees it complete, so a continuation sent the moment it arrives finds it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from gateway.adapters.responses_over_chat import (
    ResponsesStream,
    UnsupportedFeature,
    from_chat,
    input_items,
    output_items,
    to_chat,
)
from gateway.context import RequestContext
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError
from gateway.pipeline.chat import ClientHeaders, Reply, open_request, run_chat
from gateway.pipeline.decode import decode_object
from gateway.pipeline.stream import StreamStop, relayed_chunks
from gateway.runtime import Runtime

_log = logging.getLogger(__name__)


async def run_responses(
    rt: Runtime, ctx: RequestContext, read_body: Callable[[], Awaitable[bytes]], client: ClientHeaders
) -> Reply:
    tenant = await open_request(rt, ctx, client)  # before the stored conversation is read
    body = _decode(await read_body())
    history: list[Any] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise InvalidRequestError("`previous_response_id` must be a string.", param="previous_response_id")
        stored = await rt.responses.get(tenant.tenant_id, previous)
        if stored is None:
            raise NotFoundError(
                f"Previous response with id '{previous[:100]}' not found.", param="previous_response_id"
            )
        history = [*stored.input_items, *output_items(stored.response)]
    try:
        chat = to_chat(body, history)
        items = [*history, *input_items(body)]
    except UnsupportedFeature as exc:
        raise InvalidRequestError(str(exc), param=exc.param) from None
    response_id, created_at = f"resp_{uuid.uuid4().hex}", int(time.time())
    store = body.get("store") is not False
    encoded = msgspec.json.encode(chat)

    async def chat_body() -> bytes:
        return encoded

    reply = await run_chat(rt, ctx, chat_body, client)
    headers = {name: value for name, value in reply.headers.items() if name != "content-type"}
    if reply.frames is None:
        response = from_chat(
            msgspec.json.decode(reply.body), request=body, response_id=response_id, created_at=created_at
        )
        if store:
            try:
                await rt.responses.save(tenant.tenant_id, response, items)
            except GatewayError as exc:
                # Answered and charged already: an error now would have the client pay for it twice.
                _log.warning("a response could not be stored: %s", exc)
                headers["x-sluice-stored"] = "false"
        return Reply(body=msgspec.json.encode(response), headers={**headers, "content-type": "application/json"})
    stream = ResponsesStream(body, response_id, created_at)

    async def saved(response: dict[str, Any]) -> None:
        if store:
            await rt.responses.save(tenant.tenant_id, response, items)

    frames = _translated(reply.frames, stream, saved)
    return Reply(frames=frames, headers={**headers, "content-type": "text/event-stream"})


def _decode(raw: bytes) -> dict[str, Any]:
    body = decode_object(raw)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError("`model` is required.", param="model")
    if "input" not in body and body.get("previous_response_id") is None:
        raise InvalidRequestError("`input` is required.", param="input")
    return body


async def _translated(
    chat_frames: AsyncIterator[bytes],
    stream: ResponsesStream,
    saved: Callable[[dict[str, Any]], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """Responses events for the chat pipeline's SSE frames; the response is stored before it completes."""
    for frame in stream.start():
        yield frame
    async with contextlib.aclosing(relayed_chunks(chat_frames)) as chunks:  # closed at once on disconnect
        async for item in chunks:
            if not isinstance(item, StreamStop):
                for event in stream.feed(item):
                    yield event
            elif item.complete:
                final = stream.finish()
                try:
                    await saved(stream.response())
                except GatewayError as exc:
                    _log.warning("a streamed response could not be stored: %s", exc)
                for event in final:
                    yield event
            else:
                error = item.error or {"message": "The stream ended before the answer was complete."}
                for event in stream.fail(_error_code(error), str(error.get("message", ""))):
                    yield event


def _error_code(error: dict[str, Any]) -> str:
    code = error.get("code")
    return "rate_limit_exceeded" if code and "limit" in str(code) else "server_error"
