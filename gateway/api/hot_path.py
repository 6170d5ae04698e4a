"""`POST /v1/chat/completions` as plain ASGI in front of the litestar app.

The one route that carries the traffic skips the framework's per-request machinery (routing,
middleware layers, signature parsing, `Request`/`Response` objects), which profiling showed to be a
third of the gateway's CPU per request. It keeps every contract the framework path has: the request id,
the header and body limits, OpenAI error bodies from `to_gateway_error`, and stream cancellation when
the client goes away. Every other route, and lifespan, go to litestar unchanged.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.types import Receive, Scope, Send

from gateway.api.middleware import header_refusal
from gateway.context import RequestContext
from gateway.errors import PayloadTooLargeError, error_body, to_gateway_error
from gateway.pipeline.account import finish
from gateway.pipeline.chat import client_headers, run_chat
from gateway.runtime import Runtime

PATH = "/v1/chat/completions"


class _ClientGoneError(Exception):
    """The client disconnected while its request body was being read."""


class HotPath:
    def __init__(self, app: Litestar, max_body_bytes: int) -> None:
        self.app = app
        self._max_body = max_body_bytes

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: Mapping[str, Any] = scope  # the plain ASGI view: lifespan and websocket scopes pass straight through
        if raw["type"] != "http" or raw["path"] != PATH or raw["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        id_header = (b"x-request-id", request_id.encode())
        headers: list[tuple[bytes, bytes]] = list(raw["headers"])
        refusal = header_refusal(headers)
        if refusal is not None:
            status, refused = refusal
            await _send_json(send, status, error_body(refused), [id_header])
            return
        client = client_headers(_first_values(headers))
        declared = next((value for name, value in headers if name == b"content-length"), None)
        rt: Runtime = self.app.state.runtime
        ctx = RequestContext(request_id)

        async def read_body() -> bytes:
            return await _read_body(receive, declared, self._max_body)

        try:
            reply = await run_chat(rt, ctx, read_body, client)
        except _ClientGoneError:
            ctx.outcome = "client_disconnected"
            finish(rt, ctx)
            return
        except Exception as exc:  # noqa: BLE001  # the /v1 error boundary: every failure becomes an OpenAI error
            error = to_gateway_error(exc)
            ctx.outcome, ctx.error_code = error.outcome, error.code
            finish(rt, ctx)
            extra = [(name.encode(), value.encode()) for name, value in error.headers.items()]
            await _send_json(send, error.status, error_body(error), [id_header, *extra])
            return
        response_headers = [id_header, *((name.encode(), value.encode()) for name, value in reply.headers.items())]
        if reply.frames is None:
            await _send_json(send, 200, reply.body, response_headers)
        else:
            await _send_stream(reply.frames, receive, send, response_headers)


def _first_values(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Each header's first value by name (ASGI names are lower-case)."""
    values: dict[str, str] = {}
    for name, value in headers:
        values.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return values


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"The request body is over the {limit}-byte limit.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]  # an http.request message's body
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is over the {limit}-byte limit.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    has_type = any(name == b"content-type" for name, _ in headers)
    extra = [] if has_type else [(b"content-type", b"application/json")]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, *extra, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_stream(
    frames: AsyncIterator[bytes], receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]
) -> None:
    """Send SSE frames as they come; if the client disconnects, cancel so the stream's `finally` accounts it."""
    sender = asyncio.current_task()
    assert sender is not None
    gone = False

    async def watch_disconnect() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        sender.cancel()

    watcher = asyncio.get_running_loop().create_task(watch_disconnect())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
        sender.uncancel()  # our own cancellation: the client left; the stream has accounted for itself
    finally:
        watcher.cancel()
        await frames.aclose()  # type: ignore[attr-defined]  # `relay` is an async generator
