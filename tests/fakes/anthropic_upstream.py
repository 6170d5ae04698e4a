"""A fake Anthropic Messages upstream: real aiohttp HTTP on 127.0.0.1, behaviour picked by the request's `model`.

`async with FakeAnthropic() as fake:` serves `POST {fake.base_url}/messages` (`base_url` ends in `/v1`).
Scenarios are listed in `SCENARIOS`; unknown models get `claude-ok`.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

SCENARIOS = (
    "claude-ok", "claude-tools", "claude-400", "claude-401", "claude-429", "claude-529", "claude-broken-stream",
    "claude-reset-stream", "claude-error-stream",
)  # fmt: skip
ANSWER = "Hello from the fake Anthropic upstream."
TOOL_INPUT = {"city": "Paris", "unit": "celsius"}
USAGE = {"input_tokens": 11, "output_tokens": 6, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}
ERRORS = {  # model: (status, error type, message)
    "claude-400": (400, "invalid_request_error", "messages: roles must alternate between user and assistant"),
    "claude-401": (401, "authentication_error", "invalid x-api-key"),
    "claude-429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    "claude-529": (529, "overloaded_error", "Overloaded"),
}


def _dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class FakeAnthropic:
    def __init__(self) -> None:
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        """Each request: method, path, headers, json and time (monotonic)."""
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        record = {"method": request.method, "path": request.path, "headers": dict(request.headers), "json": body}
        self.requests.append({**record, "time": time.monotonic()})
        model = str(body.get("model", ""))
        if model in ERRORS:
            status, kind, message = ERRORS[model]
            headers = {"retry-after": "7"} if status == 429 else {}
            error = {"type": "error", "error": {"type": kind, "message": message}}
            return web.json_response(error, status=status, headers=headers, dumps=_dumps)
        if body.get("stream") is not True:
            return web.json_response(message_body(model, body), dumps=_dumps)
        return await self._stream(request, model, body)

    async def _stream(self, request: web.Request, model: str, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        frames = stream_frames(model, body)
        if model in ("claude-broken-stream", "claude-reset-stream"):
            for frame in frames[:4]:
                await resp.write(frame)
            if model == "claude-reset-stream":
                assert request.transport is not None
                request.transport.abort()
                return resp
        elif model == "claude-error-stream":
            for frame in frames[:4]:
                await resp.write(frame)
            await resp.write(_frame({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        else:
            for frame in frames:
                await resp.write(frame)
        await resp.write_eof()
        return resp


def _tool_name(body: dict[str, Any]) -> str:
    tools = body.get("tools") or [{}]
    return str(tools[0].get("name", "get_weather"))


def message_body(model: str, body: dict[str, Any]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": ANSWER}]
    stop_reason = "end_turn"
    if model == "claude-tools":
        tool_use = {"type": "tool_use", "id": "toolu_fake1", "name": _tool_name(body), "input": TOOL_INPUT}
        content = [{"type": "text", "text": "Let me check."}, tool_use]
        stop_reason = "tool_use"
    return {
        "id": "msg_fake1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": USAGE,
    }


def _frame(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {_dumps(data)}\n\n".encode()


def stream_frames(model: str, body: dict[str, Any]) -> list[bytes]:
    """The SSE frames Anthropic sends for `message_body(model, body)`, text and input in pieces."""
    message = message_body(model, body)
    start = {**message, "content": [], "stop_reason": None, "usage": {**USAGE, "output_tokens": 1}}
    frames = [_frame({"type": "message_start", "message": start}), _frame({"type": "ping"})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            frames.append(
                _frame({"type": "content_block_start", "index": index, "content_block": {**block, "text": ""}})
            )
            words = block["text"].split(" ")
            for i, word in enumerate(words):
                delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
                frames.append(_frame({"type": "content_block_delta", "index": index, "delta": delta}))
        else:
            frames.append(
                _frame({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
            )
            arguments = _dumps(block["input"])
            for piece in (arguments[:10], arguments[10:]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                frames.append(_frame({"type": "content_block_delta", "index": index, "delta": delta}))
        frames.append(_frame({"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    frames.append(_frame({"type": "message_delta", "delta": delta, "usage": {"output_tokens": USAGE["output_tokens"]}}))
    frames.append(_frame({"type": "message_stop"}))
    return frames
