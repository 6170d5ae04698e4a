"""How bytes move between Sluice and an HTTP upstream: one pooled aiohttp session per deployment, bounded reads.

Providers hold an `HttpTransport` and say what to send where; this module sends it and reads the answer. Every
transport failure leaves it as an `UpstreamError`; nothing here trusts the upstream's sizes, framing or pace
(RELIABILITY T15-T17).

Deadlines: `connect_s` to open a connection; `first_byte_s` until response headers; then `idle_s` for the
rest of a plain body, and for a stream `idle_s` between complete SSE lines (comments count, so keep-alives
work) - progress, not bytes, so an upstream trickling a byte at a time cannot hold a call open.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, Final

import aiohttp
import msgspec

from gateway.providers.base import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamBrokenError,
    UpstreamTimeoutError,
)
from gateway.schema.openai import JsonObject, encoder
from gateway.settings import HttpDeployment

__all__ = ["MAX_BODY_BYTES", "MAX_LINE_BYTES", "HttpTransport"]

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Largest non-streaming body accepted from an upstream."""
MAX_LINE_BYTES: Final = 1024 * 1024
"""Largest single SSE line accepted from an upstream."""
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
_MAX_MESSAGE_CHARS: Final = 500
_LARGE_BODY: Final = 1024 * 1024
"""aiohttp's `TOO_LARGE_BYTES_BODY`: larger request bodies go as a stream, not as one bytes payload."""


class _ErrorDetail(msgspec.Struct):
    message: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    """An OpenAI (or Anthropic) error body, read leniently: `error` may be an object or a bare string."""

    error: _ErrorDetail | str | None = None


class _Event(msgspec.Struct):
    """A stream event decoded only far enough to validate it and see an `error` key."""

    error: Any = None


_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)
_event_decoder = msgspec.json.Decoder(_Event)


class HttpTransport:
    """JSON POSTs to one deployment's upstream over its own connection pool, answers read within its deadlines.

    `headers` go with every request (content type, credentials, API version). Error messages name the
    deployment, never its address.
    """

    def __init__(self, deployment: HttpDeployment, headers: Mapping[str, str]) -> None:
        self._config = deployment
        self._headers = dict(headers)
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def post(self, url: str, payload: JsonObject, *, accept: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST `payload` as JSON to `url`: the 2xx response, once its headers have arrived, for the block's length.

        Raises `UpstreamTimeoutError` past `connect_s` or `first_byte_s`, `UpstreamConnectError` when no
        connection was made, and `UpstreamStatusError` for any other status (redirects are never followed),
        carrying the upstream's message and `Retry-After`. The response is closed when the block ends, also when
        it stops reading early: a half-read connection must not go back to the pool.
        """
        resp = await self._send(url, payload, accept=accept)
        try:
            yield resp
        finally:
            # A fully read response has already gone back to the pool; anything else is dropped.
            resp.close()

    async def read_json(self, resp: aiohttp.ClientResponse) -> bytes:
        """The JSON body of `resp`, unparsed: at most `MAX_BODY_BYTES`, all of it within `idle_s`."""
        if not _is_json(resp.content_type):
            raise UpstreamProtocolError(f"upstream answered with `{resp.content_type}`, not JSON")
        return await self._read_body(resp, MAX_BODY_BYTES)

    async def events(
        self, resp: aiohttp.ClientResponse, *, last_event: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The validated `data:` payloads of the SSE body of `resp`.

        Without `last_event` the stream is chat's: it ends after `[DONE]`, and a body that ends before it is a
        broken stream. With it, there is no `[DONE]`: the caller stops reading at its own terminal event (named
        by `last_event`, e.g. `message_stop`), and a body that ends first is a broken stream naming that event.
        """
        if resp.content_type != "text/event-stream":
            raise UpstreamProtocolError(f"upstream answered a stream with `{resp.content_type}`")
        loop = asyncio.get_running_loop()
        idle_s = self._config.timeouts.idle_s
        framing = _EventFraming()
        deadline = loop.time() + idle_s
        while last_event is not None or not framing.done:
            chunk = await self._read_chunk(resp, deadline)
            if not chunk:
                if last_event is not None:
                    raise UpstreamStreamBrokenError(
                        f"deployment `{self._config.name}` ended its stream before `{last_event}`"
                    )
                framing.end()
                return
            lines = framing.lines
            for payload in framing.feed(chunk):
                yield payload
            if framing.lines != lines:
                # Restarted after the consumer has taken the payloads: a slow client is not a slow upstream.
                deadline = loop.time() + idle_s

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use because a session binds to the running loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._config.max_concurrency, ttl_dns_cache=300, keepalive_timeout=30
            )
            # Only the connect deadline is aiohttp's; first-byte and idle deadlines differ, so they
            # are enforced around each await below.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._config.timeouts.connect_s, sock_read=None)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)
        return self._session

    async def _send(self, url: str, payload: JsonObject, *, accept: str) -> aiohttp.ClientResponse:
        """POST the payload and return a 2xx response whose headers have arrived; raise otherwise."""
        body = encoder.encode(payload)
        # aiohttp warns (an error under `-W error`) on a bytes body over 1 MiB and wants a file-like one, which it
        # sends in chunks: a long prompt or an inlined image passes that easily.
        data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > _LARGE_BODY else body
        headers = {**self._headers, "Accept": accept}
        first_byte_s = self._config.timeouts.first_byte_s
        session = self._client()
        try:
            async with asyncio.timeout(first_byte_s):
                resp = await session.post(url, data=data, headers=headers, allow_redirects=False)
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeoutError(
                f"no connection within {self._config.timeouts.connect_s:g} s to deployment `{self._config.name}`"
            ) from None
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"no response headers within {first_byte_s:g} s from deployment `{self._config.name}`"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamConnectError(f"deployment `{self._config.name}`: {_describe(exc)}") from None
        if 200 <= resp.status < 300:
            return resp
        try:
            raise await self._status_error(resp)
        finally:
            resp.close()

    async def _status_error(self, resp: aiohttp.ClientResponse) -> UpstreamStatusError:
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        if 300 <= resp.status < 400:
            return UpstreamStatusError(
                f"deployment `{self._config.name}` redirected (redirects are not followed)",
                status=resp.status,
                retry_after=retry_after,
            )
        message = resp.reason or "no reason given"
        try:
            body = await self._read_body(resp, _MAX_ERROR_BODY_BYTES)
        except UpstreamError:
            body = b""
        if body:
            try:
                envelope = _error_decoder.decode(body)
            except msgspec.DecodeError:
                envelope = _ErrorEnvelope()
            if isinstance(envelope.error, str):
                message = envelope.error
            elif envelope.error is not None and envelope.error.message:
                message = envelope.error.message
        return UpstreamStatusError(message[:_MAX_MESSAGE_CHARS], status=resp.status, retry_after=retry_after)

    async def _read_body(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > limit:
            raise UpstreamProtocolError(f"upstream body of {declared} bytes is over the {limit}-byte limit")
        deadline = asyncio.get_running_loop().time() + self._config.timeouts.idle_s
        if declared is not None:
            # The common case: the whole body under one deadline, in one read.
            try:
                async with asyncio.timeout_at(deadline):
                    return await resp.content.readexactly(declared)
            except TimeoutError:
                raise UpstreamTimeoutError(
                    f"deployment `{self._config.name}` made no progress for {self._config.timeouts.idle_s:g} s "
                    "mid-response"
                ) from None
            except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
                raise UpstreamStreamBrokenError(f"deployment `{self._config.name}`: {_describe(exc)}") from None
        body = bytearray()
        while True:
            chunk = await self._read_chunk(resp, deadline)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                raise UpstreamProtocolError(f"upstream body is over the {limit}-byte limit")

    async def _read_chunk(self, resp: aiohttp.ClientResponse, deadline: float) -> bytes:
        """Whatever body bytes have arrived (empty at the end), by `deadline` (loop time)."""
        try:
            async with asyncio.timeout_at(deadline):
                return await resp.content.readany()
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"deployment `{self._config.name}` made no progress for {self._config.timeouts.idle_s:g} s mid-response"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamStreamBrokenError(f"deployment `{self._config.name}`: {_describe(exc)}") from None


class _EventFraming:
    """Incremental SSE framing, hand-written so that every line is bounded (`MAX_LINE_BYTES`).

    Lines end in LF (a CR before it is dropped); a blank line ends an event; `data:` lines, with or without
    a space, are joined by LF; an `event: error` fails the stream; comments, `id:`, `retry:` and unknown
    fields are skipped.
    """

    __slots__ = ("_buffer", "_data", "_event", "done", "lines")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._event = b""
        self.done = False
        self.lines = 0
        """Complete lines seen: the stream's measure of progress."""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The payloads completed by `chunk`, lazily, so that events before a bad one still reach the caller.

        Sets `done` at `[DONE]` and ignores whatever follows it.
        """
        buffer = self._buffer
        buffer += chunk
        start = 0
        try:
            while not self.done:
                newline = buffer.find(b"\n", start)
                if newline < 0:
                    break
                if newline - start > MAX_LINE_BYTES:
                    raise _line_too_long()
                line = bytes(buffer[start:newline]).removesuffix(b"\r")
                start = newline + 1
                self.lines += 1
                payload = self._line(line)
                if payload is not None:
                    yield payload
        finally:
            del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            raise _line_too_long()

    def end(self) -> None:
        """The body ended: fine only after `[DONE]`, which may lack its closing blank line."""
        if self._buffer and not self.done:
            self._line(bytes(self._buffer).removesuffix(b"\r"))
            self._buffer.clear()
        if not self.done and b"\n".join(self._data).strip() == b"[DONE]":
            self.done = True
        if not self.done:
            raise UpstreamStreamBrokenError("upstream stream ended without [DONE]")

    def _line(self, line: bytes) -> bytes | None:
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
            return None
        if line.startswith(b"event:"):
            self._event = line[6:].strip()
            return None
        if line:
            return None
        data, event = self._data, self._event
        self._data, self._event = [], b""
        if not data:
            return None
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload.strip() == b"[DONE]":
            self.done = True
            return None
        _check_event(payload, is_error_event=event == b"error")
        return payload


def _line_too_long() -> UpstreamProtocolError:
    return UpstreamProtocolError(f"upstream SSE line is over the {MAX_LINE_BYTES}-byte limit")


def _check_event(payload: bytes, *, is_error_event: bool) -> None:
    try:
        event = _event_decoder.decode(payload)
    except msgspec.DecodeError:
        raise UpstreamStreamBrokenError(f"upstream sent an event that is not a JSON object: {payload[:80]!r}") from None
    if event.error is None and not is_error_event:
        return
    error = event.error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message: str = error["message"]
    elif isinstance(error, str):
        message = error
    else:
        message = "upstream sent an error event"
    raise UpstreamStreamBrokenError(message[:_MAX_MESSAGE_CHARS])


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header, either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _describe(exc: BaseException) -> str:
    """The exception's class and reason, without the host and port (the message may reach a tenant)."""
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, OSError) and os_error.errno is not None and os_error.errno > 0:
        reason = os.strerror(os_error.errno)
    elif isinstance(os_error, OSError) and os_error.strerror:
        reason = os_error.strerror  # resolver errors: negative codes, host-free text
    else:
        reason = str(exc) or "no detail"
    return f"{type(exc).__name__}: {reason}"[:_MAX_MESSAGE_CHARS]
