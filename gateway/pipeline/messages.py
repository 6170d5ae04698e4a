"""`POST /v1/messages` (Anthropic Messages) through the chat-completions pipeline.

The Messages request becomes a chat-completions request (`adapters.messages_over_chat`) that `run_chat` takes
through every stage; the chat answer, or its SSE frames, comes back as an Anthropic message or Anthropic's
SSE events. Anthropic's clients authenticate with `x-api-key` (the `Authorization: Bearer` form works too),
read `anthropic-ratelimit-*` headers and Anthropic's error shape (`gateway.api.anthropic`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final

import msgspec

from gateway.accounting.tokens import count_prompt
from gateway.adapters.messages_over_chat import MessagesStream, TranslationError, from_chat, to_chat
from gateway.context import RequestContext
from gateway.errors import InvalidRequestError
from gateway.pipeline.chat import ClientHeaders, Reply, authenticate, run_chat
from gateway.pipeline.decode import decode_object, decode_typed
from gateway.pipeline.stream import StreamStop, relayed_chunks
from gateway.runtime import Runtime
from gateway.schema.openai import chat_request_decoder

_DURATION: Final = re.compile(r"^(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")


def anthropic_client_headers(headers: Mapping[str, str], base: ClientHeaders) -> ClientHeaders:
    """`x-api-key` is Anthropic's way to send the key; it stands for `Authorization: Bearer`."""
    api_key = headers.get("x-api-key")
    if api_key and base.authorization is None:
        return msgspec.structs.replace(base, authorization=f"Bearer {api_key}")
    return base


async def run_messages(
    rt: Runtime, ctx: RequestContext, read_body: Callable[[], Awaitable[bytes]], client: ClientHeaders
) -> Reply:
    async def chat_body() -> bytes:
        body = decode_object(await read_body())
        try:
            return msgspec.json.encode(to_chat(body))
        except TranslationError as exc:
            raise InvalidRequestError(str(exc), param=exc.param) from None

    reply = await run_chat(rt, ctx, chat_body, client)  # the body is read once authenticated, as for chat
    model = ctx.model or ""
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    headers = anthropic_headers(reply.headers)
    if reply.frames is None:
        message = from_chat(msgspec.json.decode(reply.body), model=model, message_id=message_id)
        return Reply(body=msgspec.json.encode(message), headers={**headers, "content-type": "application/json"})
    frames = _translated(reply.frames, MessagesStream(model, message_id))
    return Reply(frames=frames, headers={**headers, "content-type": "text/event-stream"})


async def count_tokens(rt: Runtime, read_body: Callable[[], Awaitable[bytes]], client: ClientHeaders) -> dict[str, int]:
    """`POST /v1/messages/count_tokens`: the prompt's tokens as the gateway counts them for admission
    (tiktoken over the translated messages); free, like Anthropic's, and never sent upstream."""
    await authenticate(rt, client.authorization)
    body = decode_object(await read_body())
    try:
        chat = to_chat({**body, "max_tokens": body.get("max_tokens", 1)})
    except TranslationError as exc:
        raise InvalidRequestError(str(exc), param=exc.param) from None
    request = decode_typed(chat_request_decoder, msgspec.json.encode(chat))
    return {"input_tokens": count_prompt(request)}


def anthropic_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The pipeline's headers plus Anthropic's names for its rate-limit state (resets as RFC 3339 times)."""
    out = {name: value for name, value in headers.items() if name != "content-type"}
    now = dt.datetime.now(dt.UTC)
    for kind in ("requests", "tokens"):
        if f"x-ratelimit-limit-{kind}" not in headers:
            continue
        out[f"anthropic-ratelimit-{kind}-limit"] = headers[f"x-ratelimit-limit-{kind}"]
        out[f"anthropic-ratelimit-{kind}-remaining"] = headers[f"x-ratelimit-remaining-{kind}"]
        reset = now + dt.timedelta(seconds=_seconds(headers[f"x-ratelimit-reset-{kind}"]))
        out[f"anthropic-ratelimit-{kind}-reset"] = reset.isoformat(timespec="seconds").replace("+00:00", "Z")
    return out


def _seconds(duration: str) -> float:
    """Seconds of a Go-style duration as `quota.headers` writes them (`12ms`, `7s`, `6m0s`)."""
    match = _DURATION.match(duration)
    if match is None:
        return 0.0
    minutes, seconds, millis = (int(part) if part else 0 for part in match.groups())
    return minutes * 60 + seconds + millis / 1000


async def _translated(chat_frames: AsyncIterator[bytes], stream: MessagesStream) -> AsyncIterator[bytes]:
    """Anthropic events for the chat pipeline's SSE frames; a broken stream ends with `event: error`."""
    async with contextlib.aclosing(relayed_chunks(chat_frames)) as chunks:  # closed at once on disconnect
        async for item in chunks:
            if not isinstance(item, StreamStop):
                for event in stream.feed(item):
                    yield event
            elif item.complete:
                for event in stream.finish():
                    yield event
            else:
                error = item.error or {"message": "The stream ended before the answer was complete."}
                kind = "rate_limit_error" if error.get("type") == "rate_limit_error" else "api_error"
                for event in stream.fail(kind, str(error.get("message", ""))):
                    yield event
