"""Concerns every route shares and no stage owns: the request id, and the header and encoding limits."""

from __future__ import annotations

import uuid

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InvalidRequestError, error_body

MAX_HEADERS = 100
"""Most request header fields accepted (Envoy `max_headers_count`); more → 431."""
MAX_HEADER_BYTES = 16 * 1024
"""Largest request header block accepted, counted as `name: value\\r\\n` per field (h11's 16 KiB); more → 431."""


class RequestIdMiddleware(ASGIMiddleware):
    """Mints `x-request-id` (a UUID, also the ledger's key) and adds it to the response headers."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await next_app(scope, receive, send_with_id)


class InputLimitsMiddleware(ASGIMiddleware):
    """Refuses, before a byte of the body is read, too many or too large headers (431) and encoded bodies (415).

    uvicorn with httptools limits neither the number nor the size of header fields, so the limits of
    RELIABILITY §5 are enforced here. Request bodies are never decompressed: a `Content-Encoding`
    other than `identity` is refused, so a compression bomb costs the gateway nothing. Like all litestar
    middleware it runs for routes that exist; any other path is a 404 that reads no body.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, max_headers: int = MAX_HEADERS, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        refusal = header_refusal(list(scope["headers"]), self.max_headers, self.max_header_bytes)
        if refusal is None:
            await next_app(scope, receive, send)
            return
        status, error = refusal
        body = error_body(error)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def header_refusal(
    headers: list[tuple[bytes, bytes]], max_headers: int = MAX_HEADERS, max_header_bytes: int = MAX_HEADER_BYTES
) -> tuple[int, InvalidRequestError] | None:
    """The status and error for headers the gateway refuses, or None."""
    if len(headers) > max_headers:
        message = f"The request has {len(headers)} header fields; at most {max_headers} are accepted."
        return 431, InvalidRequestError(message, code="too_many_headers")
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if size > max_header_bytes:
        message = f"The request headers take {size} bytes; at most {max_header_bytes} are accepted."
        return 431, InvalidRequestError(message, code="headers_too_large")
    for name, value in headers:
        if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            message = "Request bodies must not be compressed: send them without a `Content-Encoding`."
            return 415, InvalidRequestError(message, code="unsupported_content_encoding")
    return None
