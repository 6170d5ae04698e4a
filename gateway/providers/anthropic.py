"""The adapter for upstreams that speak Anthropic's Messages API: the chat call translated out and back.

The transport is `OpenAICompatProvider`'s — pooled session, `connect_s`/`first_byte_s`/`idle_s` deadlines,
bounded reads and SSE lines, statuses and transport failures as `UpstreamError`s — so this module adds only
the endpoint (`{base_url}/messages`), Anthropic's headers and the translation in
`gateway.adapters.chat_over_anthropic`. A stream ends normally only at Anthropic's `message_stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final

import aiohttp
import msgspec

from gateway.adapters.chat_over_anthropic import (
    AnthropicStreamError,
    ChunksFromEvents,
    to_chat_completion,
    to_messages,
)
from gateway.adapters.messages_over_chat import TranslationError
from gateway.providers.base import (
    UpstreamCall,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamBrokenError,
)
from gateway.providers.openai_compat import MAX_BODY_BYTES, OpenAICompatProvider, _EventFraming, _is_json
from gateway.schema.openai import JsonObject, encoder, json_object_decoder
from gateway.settings import HttpDeployment

ANTHROPIC_VERSION: Final = "2023-06-01"
"""The `anthropic-version` header: the Messages API version the translation is written against."""
DEFAULT_MAX_TOKENS: Final = 4096
"""Completion limit sent when the client set none (Anthropic requires one)."""


class AnthropicProvider(OpenAICompatProvider):
    """A `Provider` for one Anthropic Messages deployment (`base_url` like `https://api.anthropic.com/v1`).

    Subclassed only for the transport; `complete` and `stream` are its own.
    """

    def __init__(
        self, deployment: HttpDeployment, api_key: str | None, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> None:
        super().__init__(deployment, None)
        self._url = deployment.base_url.rstrip("/") + "/messages"
        self._headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._default_max_tokens = default_max_tokens

    @property
    def kind(self) -> str:
        return "anthropic"

    async def embed(self, payload: JsonObject) -> bytes:
        raise UpstreamStatusError(
            f"Deployment `{self.deployment}` speaks Anthropic's Messages API, which has no embeddings.", status=400
        )

    async def complete(self, call: UpstreamCall) -> bytes:
        body = self._messages_request(call)
        body.pop("stream", None)
        resp = await self._send(body, accept="application/json")
        try:
            if not _is_json(resp.content_type):
                raise UpstreamProtocolError(f"upstream answered with `{resp.content_type}`, not JSON")
            raw = await self._read_body(resp, MAX_BODY_BYTES)
        finally:
            resp.close()
        message = _decoded(raw)
        if message.get("type") != "message":
            raise UpstreamProtocolError("upstream body is not an Anthropic `message`")
        model = message.get("model")
        completion = to_chat_completion(
            message, model=model if isinstance(model, str) else self.model, created=int(time.time())
        )
        return encoder.encode(completion)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[bytes]:
        body = self._messages_request(call)
        body["stream"] = True
        resp = await self._send(body, accept="text/event-stream")
        try:
            if resp.content_type != "text/event-stream":
                raise UpstreamProtocolError(f"upstream answered a stream with `{resp.content_type}`")
            chunks = ChunksFromEvents(model=self.model, created=int(time.time()))
            async with contextlib.aclosing(self._payloads(resp)) as payloads:
                async for payload in payloads:
                    for chunk in _translated(chunks, payload):
                        yield encoder.encode(chunk)
                    if chunks.done:
                        return
        finally:
            # Also reached when the consumer stops early: a half-read connection must not be pooled.
            resp.close()

    def _messages_request(self, call: UpstreamCall) -> JsonObject:
        try:
            return to_messages(call.payload, self.model, self._default_max_tokens)
        except TranslationError as exc:
            # Refused as Anthropic would refuse it: the client sees a 400 naming the field.
            raise UpstreamStatusError(
                f"deployment `{self.deployment}` cannot take `{exc.param}`: {exc.message}", status=400
            ) from None

    async def _payloads(self, resp: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
        """The SSE `data:` payloads, until the consumer stops; the body ending first is a broken stream.

        Unlike chat streams there is no `[DONE]`: the caller stops at `message_stop`.
        """
        loop = asyncio.get_running_loop()
        idle_s = self._config.timeouts.idle_s
        framing = _EventFraming()
        deadline = loop.time() + idle_s
        while True:
            chunk = await self._read_chunk(resp, deadline)
            if not chunk:
                raise UpstreamStreamBrokenError(
                    f"deployment `{self.deployment}` ended its stream before `message_stop`"
                )
            lines = framing.lines
            for payload in framing.feed(chunk):
                yield payload
            if framing.lines != lines:
                # Restarted after the consumer has taken the payloads: a slow client is not a slow upstream.
                deadline = loop.time() + idle_s


def _decoded(raw: bytes) -> JsonObject:
    try:
        return json_object_decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise UpstreamProtocolError(f"upstream body is not a JSON object: {exc}") from None


def _translated(chunks: ChunksFromEvents, payload: bytes) -> list[JsonObject]:
    try:
        return chunks.feed(_decoded(payload))
    except AnthropicStreamError as exc:
        raise UpstreamStreamBrokenError(exc.message or exc.error_type) from None
