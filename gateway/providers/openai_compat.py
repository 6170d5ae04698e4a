"""The adapter for OpenAI-compatible upstreams: the chat call and embeddings passed through, byte for byte.

The transport is an `HttpTransport` (`gateway.providers.http_transport`) — pooled session, `connect_s`/
`first_byte_s`/`idle_s` deadlines, bounded reads and SSE lines, statuses and transport failures as
`UpstreamError`s — so this module adds only the endpoints (`{base_url}/chat/completions`, `{base_url}/embeddings`),
the bearer key, the deployment's `model`, and a check that a plain answer is one JSON object. A stream ends
normally only at `[DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from gateway.providers.base import UpstreamCall, UpstreamProtocolError
from gateway.providers.http_transport import HttpTransport
from gateway.schema.openai import JsonObject
from gateway.settings import HttpDeployment


class _AnyObject(msgspec.Struct):
    pass


# Decoding into a field-less Struct validates the whole document and that it is an object without
# materialising it; the pipeline decodes the parts it needs itself.
_object_validator = msgspec.json.Decoder(_AnyObject)


class OpenAICompatProvider:
    """A `Provider` for one `OpenAIDeployment` (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, …)."""

    def __init__(self, deployment: HttpDeployment, api_key: str | None) -> None:
        self._config = deployment
        self._url = deployment.base_url.rstrip("/") + "/chat/completions"
        self._embeddings_url = deployment.base_url.rstrip("/") + "/embeddings"
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._transport = HttpTransport(deployment, headers)

    @property
    def deployment(self) -> str:
        return self._config.name

    @property
    def kind(self) -> str:
        return "openai"

    @property
    def model(self) -> str:
        return self._config.model

    async def complete(self, call: UpstreamCall) -> bytes:
        payload = dict(call.payload)
        if payload.get("stream"):
            # The caller asked for one JSON body; an upstream told to stream would send SSE instead.
            payload["stream"] = False
            payload.pop("stream_options", None)
        payload["model"] = self._config.model
        async with self._transport.post(self._url, payload, accept="application/json") as resp:
            body = await self._transport.read_json(resp)
        try:
            _object_validator.decode(body)
        except msgspec.DecodeError as exc:
            raise UpstreamProtocolError(f"upstream body is not a JSON object: {exc}") from None
        return body

    async def embed(self, payload: JsonObject) -> bytes:
        payload = {**payload, "encoding_format": "float"}  # vectors are re-encoded for the client
        payload["model"] = self._config.model
        async with self._transport.post(self._embeddings_url, payload, accept="application/json") as resp:
            return await self._transport.read_json(resp)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[bytes]:
        payload = dict(call.payload)
        payload["stream"] = True
        payload["model"] = self._config.model
        async with self._transport.post(self._url, payload, accept="text/event-stream") as resp:
            async for data in self._transport.events(resp):
                yield data

    async def aclose(self) -> None:
        await self._transport.aclose()
