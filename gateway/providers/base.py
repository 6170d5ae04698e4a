"""The provider seam: what the pipeline asks of an upstream, and the errors an upstream can raise.

Adapters translate their transport's failures into the `UpstreamError` tree here and nowhere else.

    UpstreamError
    ├── UpstreamConnectError      could not connect / connection reset before a response
    ├── UpstreamTimeoutError      connect, first byte or idle deadline passed
    ├── UpstreamStatusError       the upstream answered with a non-2xx status
    ├── UpstreamProtocolError     garbled, oversized or wrongly typed body
    └── UpstreamStreamBrokenError a stream ended without `[DONE]` or carried an error event
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

from gateway.schema.openai import ChatRequest, JsonObject


class UpstreamCall(msgspec.Struct, frozen=True, kw_only=True):
    request: ChatRequest
    """The validated view of the client's request (for adapters that translate or simulate)."""
    payload: JsonObject
    """The client's JSON body with unknown fields intact; the adapter sets `model` itself.
    For streams the pipeline has already forced `stream_options.include_usage = true`."""
    request_id: str


class Provider(Protocol):
    """One upstream deployment. Implementations: `openai_compat.OpenAICompatProvider`,
    `anthropic.AnthropicProvider`, `simulator.Simulator`."""

    @property
    def deployment(self) -> str:
        """Deployment name from `sluice.toml`."""
        ...

    @property
    def kind(self) -> str:
        """Provider kind label for metrics (`openai`, `simulator`)."""
        ...

    @property
    def model(self) -> str:
        """The model name this deployment serves."""
        ...

    async def complete(self, call: UpstreamCall) -> bytes:
        """Non-streaming call: the upstream's JSON body, byte for byte."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[bytes]:
        """Streaming call: each SSE `data:` payload (JSON bytes, without `data: `), in order.

        Ends normally only after the upstream's `[DONE]`; raises `UpstreamStreamBrokenError` when the
        stream closes early or carries an error event, `UpstreamTimeoutError` when it goes idle.
        """
        ...

    async def embed(self, payload: JsonObject) -> bytes:
        """`POST /embeddings` with the client's body (`model` set by the adapter): a `CreateEmbeddingResponse`.

        Raises `UpstreamStatusError` (400) when the deployment's API has no embeddings."""
        ...

    async def aclose(self) -> None: ...


class UpstreamError(Exception):
    """Base of every upstream failure."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamTimeoutError(UpstreamError):
    pass


class UpstreamStatusError(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamStreamBrokenError(UpstreamError):
    pass
