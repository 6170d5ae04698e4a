"""Stage 7 for streams: relay upstream SSE to the client, meter it, and never end a broken stream cleanly.

1. The first upstream event is awaited before the response starts, so a failure to connect or an
   immediate upstream error is still an ordinary HTTP error (502/504), not a broken stream.
2. Every payload is relayed as `data: …` as soon as it arrives; its usage (or, when the upstream
   reports none, its text, counted with tiktoken at the end) is metered on the way.
3. The usage chunk the gateway asked for is dropped when the client did not ask for it.
4. The relay ends with `[DONE]` only after the upstream's own `[DONE]`; a truncated or failed
   upstream stream ends with a terminal error event the SDKs raise as `APIError`.
5. `finally` charges what was delivered and accounts the request on every exit path, including
   the client going away (cancellation), where nothing may be awaited before accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgspec

from gateway.accounting.pricing import TokenUsage
from gateway.accounting.tokens import count_prompt, count_text
from gateway.errors import GatewayError, from_upstream, sse_error_frame
from gateway.pipeline.call import is_utf8, usage_from
from gateway.providers.base import UpstreamError, UpstreamProtocolError
from gateway.schema.openai import ChatRequest, chunk_view_decoder

DONE_FRAME = b"data: [DONE]\n\n"


class StreamMeter:
    """Counts what a stream delivered: upstream usage when reported, else the text, tokenized at the end."""

    def __init__(self, request: ChatRequest, allowance: int | None = None, *, keep_payloads: bool = False) -> None:
        self._request = request
        self._keep_payloads = keep_payloads
        self.payloads: list[bytes] = []
        """Every payload relayed, when `keep_payloads` (a cacheable stream, assembled into one answer at the end)."""
        self._allowance = allowance
        self._pieces = 0
        self._client_wants_usage = bool(request.stream_options and request.stream_options.include_usage)
        self._parts: list[str] = []
        self.reported: TokenUsage | None = None

    def frame(self, payload: bytes) -> bytes | None:
        """The SSE frame to send for one upstream payload, or None to drop it."""
        if not is_utf8(payload):
            # Relayed, it would break the client's SSE decoder; decoded, it raises mid-relay.
            raise UpstreamProtocolError("upstream sent an event that is not valid UTF-8")
        try:
            chunk = chunk_view_decoder.decode(payload)
        except msgspec.MsgspecError:
            return b"data: " + payload + b"\n\n"
        if self._keep_payloads:
            self.payloads.append(payload)
        for choice in chunk.choices or ():
            delta = choice.delta
            if delta is None:
                continue
            if delta.content:
                self._parts.append(delta.content)
                self._pieces += 1
            for tool_call in delta.tool_calls or ():
                if tool_call.function is not None:
                    self._parts.append((tool_call.function.name or "") + (tool_call.function.arguments or ""))
        if chunk.usage is not None:
            self.reported = usage_from(chunk.usage)
            if not chunk.choices and not self._client_wants_usage:
                return None
        return b"data: " + payload + b"\n\n"

    @property
    def exhausted(self) -> bool:
        """More completion delivered than was reserved (an upstream ignoring `max_tokens`): stop before overspending.

        Upstreams send about one token per content delta; the precise count is settled at the end.
        """
        return self._allowance is not None and self._pieces > self._allowance

    def text(self) -> str:
        return "".join(self._parts)

    def usage(self) -> tuple[TokenUsage, str]:
        if self.reported is not None:
            return self.reported, "upstream"
        completion = count_text("".join(self._parts))
        return TokenUsage(prompt_tokens=count_prompt(self._request), completion_tokens=completion), "counted"


async def timed(events: AsyncIterator[bytes], on_wait: Callable[[float], None]) -> AsyncIterator[bytes]:
    """The same events, reporting the time spent waiting for each one (upstream time, not gateway overhead)."""
    try:
        while True:
            start = time.perf_counter()
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            finally:
                on_wait(time.perf_counter() - start)
            yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # provider streams are async generators


async def open_stream(stream: AsyncIterator[bytes]) -> bytes | None:
    """Wait for the first upstream payload (None: the upstream finished without sending any)."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


async def relay(
    first: bytes | None,
    upstream: AsyncIterator[bytes],
    meter: StreamMeter,
    *,
    cut_short: Callable[[], GatewayError | None],
    on_error: Callable[[GatewayError], None],
    on_end: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """SSE frames for the client; `on_end(delivered_done)` runs exactly once, on every exit path.

    `cut_short()` is asked after every event; when it names an error (the drain deadline passed, the
    reservation is used up) the stream ends with that terminal error event instead of going on.
    """
    done = False
    try:
        if first is not None:
            frame = meter.frame(first)
            if frame is not None:
                yield frame
            async for payload in upstream:
                frame = meter.frame(payload)
                if frame is not None:
                    yield frame
                if (error := cut_short()) is not None:
                    on_error(error)
                    yield sse_error_frame(error)
                    return
        done = True
        yield DONE_FRAME
    except UpstreamError as exc:
        error = from_upstream(exc)
        on_error(error)
        yield sse_error_frame(error)
    finally:
        on_end(done)
        with contextlib.suppress(UpstreamError, RuntimeError, asyncio.CancelledError):
            await upstream.aclose()  # type: ignore[attr-defined]  # provider streams are async generators


class StreamStop(msgspec.Struct, frozen=True):
    """How a relayed chat stream ended: `complete` after `[DONE]`, else with the terminal `error` event (or
    none, when the frames simply stopped)."""

    complete: bool
    error: dict[str, Any] | None = None


async def relayed_chunks(frames: AsyncIterator[bytes]) -> AsyncGenerator[dict[str, Any] | StreamStop, None]:
    """The chunk payloads of frames `relay` produced, then one `StreamStop`: what an adapter that translates a
    chat stream into another API's events reads. Closes `frames` however it is left."""
    try:
        async for frame in frames:
            if frame == DONE_FRAME:
                yield StreamStop(complete=True)
                return
            payload = msgspec.json.decode(frame.removeprefix(b"data: ").rstrip(b"\n"))
            if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                yield StreamStop(complete=False, error=payload["error"])
                return
            yield payload
        yield StreamStop(complete=False)
    finally:
        await frames.aclose()  # type: ignore[attr-defined]  # relay's frames are an async generator
