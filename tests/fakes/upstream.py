"""A fake OpenAI-compatible upstream: real aiohttp HTTP on 127.0.0.1, behaviour picked by the request's `model`.

In-process: `async with FakeUpstream() as fake:` (`fake.base_url` ends in `/v1`); as a process:
`python -m tests.fakes.upstream --port P`. Scenarios are listed in `SCENARIOS`; unknown models get `fake-ok`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import time
from typing import Any

import msgspec
from aiohttp import web

SCENARIOS = (
    "fake-ok", "fake-tools", "fake-logprobs", "fake-usage-<p>-<c>", "fake-500", "fake-503", "fake-429",
    "fake-400", "fake-401", "fake-slow", "fake-html", "fake-garbled", "fake-huge", "fake-redirect",
    "fake-broken-stream", "fake-reset-stream", "fake-error-stream", "fake-invalid-json-stream", "fake-stall-stream",
    "fake-no-usage-stream", "fake-long-line", "fake-crlf", "fake-trickle", "fake-agent",
)  # fmt: skip
ANSWER = "Hello from the fake upstream."
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
_SERVER_ERROR = ("The server had an error while processing your request.", "server_error", None, None)
ERRORS = {  # model: (status, (message, type, param, code))
    "fake-500": (500, _SERVER_ERROR),
    "fake-503": (503, _SERVER_ERROR),
    "fake-429": (429, ("Rate limit reached for requests.", "rate_limit_error", None, None)),
    "fake-400": (
        400,
        ("Invalid value for 'temperature': must be at most 2.", "invalid_request_error", "temperature", None),
    ),
    "fake-401": (401, ("Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")),
}
_HEAD = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000}
_USAGE = re.compile(r"^fake-usage-(\d+)-(\d+)$")
_NONCE = re.compile(r"nonce:(\S+)")
_MiB = 1024 * 1024


def _dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class FakeUpstream:
    def __init__(self, *, port: int = 0, redirect_url: str = "http://127.0.0.1:9/canary") -> None:
        self.port = port
        self.redirect_url = redirect_url
        """Where `fake-redirect` points (a canary in tests)."""
        self.latency_s = 0.0
        """Delay before every answer."""
        self.trickle_s = 2.0
        """Pause between the single bytes `fake-trickle` sends (RELIABILITY T15)."""
        self.requests: list[dict[str, Any]] = []
        """Each request: method, path, headers, json, time (monotonic), and what was sent back:
        `response` (bytes) for plain bodies, `events` (data payloads) for streams."""
        self.calls: collections.Counter[str] = collections.Counter()
        """Requests per model name."""
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)  # like real upstreams, which take large prompts
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        return app

    async def __aenter__(self) -> FakeUpstream:
        # Handlers are cancelled when the client goes away, so stalled scenarios do not hold up cleanup.
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Vectors of `fake-embed-dimensions` floats (full double precision on purpose), one per input."""
        body = msgspec.json.decode(await request.read())
        self.requests.append({"method": "POST", "path": request.path, "json": body, "time": time.monotonic()})
        model = str(body.get("model", ""))
        self.calls[model] += 1
        if model in ERRORS:
            status, (message, kind, param, code) = ERRORS[model]
            error = {"message": message, "type": kind, "param": param, "code": code}
            return web.json_response({"error": error}, status=status, dumps=_dumps)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [((i + 1) * (j + 3) % 17) / 7.0 + 1e-9 for j in range(8)]}
            for i in range(len(inputs))
        ]
        tokens = sum(len(item) if isinstance(item, list) else len(str(item).split()) for item in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage}, dumps=_dumps)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        body = body if isinstance(body, dict) else {}
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "json": body,
            "time": time.monotonic(),
        }
        self.requests.append(record)
        model = str(body.get("model", ""))
        self.calls[model] += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        stream = body.get("stream") is True
        include_usage = stream and (body.get("stream_options") or {}).get("include_usage") is True

        if model in ERRORS:
            status, (message, kind, param, code) = ERRORS[model]
            error = {"message": message, "type": kind, "param": param, "code": code}
            headers = {"Retry-After": "7"} if status == 429 else {}
            return web.json_response({"error": error}, status=status, headers=headers, dumps=_dumps)
        if model == "fake-redirect":
            return web.Response(status=302, headers={"Location": self.redirect_url})
        if model == "fake-slow":
            await asyncio.sleep(3)
        if model == "fake-html":
            return web.Response(text="<html><body>Bad gateway</body></html>", content_type="text/html")
        if model == "fake-garbled":
            return web.Response(body=b'{"id": "chatcmpl-garbled", "choices": [', content_type="application/json")
        if model == "fake-huge":
            return await _huge(request)
        if model == "fake-trickle":
            data = b"data: " + _chunks(model, body, include_usage)[0] + b"\n\n" if stream else _completion(model, body)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if stream else "application/json"})
            await resp.prepare(request)
            for i in range(len(data)):
                await resp.write(data[i : i + 1])
                await asyncio.sleep(self.trickle_s)
            return resp
        if not stream:
            if model in ("fake-broken-stream", "fake-reset-stream", "fake-stall-stream"):
                return await _cut_body(request, record, stall=model == "fake-stall-stream")
            data = _completion(model, body)
            record["response"] = data
            return web.Response(body=data, content_type="application/json")
        return await self._stream(request, record, model, body, include_usage)

    async def _stream(self, request, record, model, body, include_usage) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        events = _chunks(model, body, include_usage)
        record["events"] = []
        crlf = model == "fake-crlf"

        async def send(payload: bytes) -> None:
            record["events"].append(payload)
            if crlf:
                await resp.write(b": keepalive\r\nevent: message\r\nid: 1\r\ndata:" + payload + b"\r\n\r\n")
            else:
                await resp.write(b"data: " + payload + b"\n\n")

        if model in ("fake-broken-stream", "fake-reset-stream"):
            for payload in events[:3]:
                await send(payload)
            if model == "fake-reset-stream":
                assert request.transport is not None
                request.transport.abort()
            else:
                await resp.write_eof()
            return resp
        if model in ("fake-error-stream", "fake-invalid-json-stream"):
            for payload in events[:2]:
                await send(payload)
            error = {"message": "upstream overloaded", "type": "server_error", "param": None, "code": None}
            await send(msgspec.json.encode({"error": error}) if model == "fake-error-stream" else b'{"choices": [')
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        if model == "fake-stall-stream":
            for payload in events[:2]:
                await send(payload)
            await asyncio.sleep(30)
            events = events[2:]
        if model == "fake-long-line":
            events.insert(1, msgspec.json.encode({"padding": "x" * (2 * _MiB)}))
        for payload in events:
            await send(payload)
        await resp.write(b"data: [DONE]\r\n\r\n" if crlf else b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _huge(request: web.Request) -> web.StreamResponse:
    # Chunked, no Content-Length: the client must stop reading on its own.
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        await resp.write(b'{"id": "chatcmpl-huge", "padding": "')
        for _ in range(20):
            await resp.write(b"x" * _MiB)
        await resp.write(b'"}')
        await resp.write_eof()
    except ConnectionResetError:
        pass
    return resp


async def _cut_body(request: web.Request, record: dict[str, Any], *, stall: bool) -> web.StreamResponse:
    """A plain answer that stops halfway: stalled for 30 s, or the connection dropped."""
    data = _completion("fake-ok", {})
    record["response"] = data
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(data)
    await resp.prepare(request)
    await resp.write(data[: len(data) // 2])
    if stall:
        await asyncio.sleep(30)
    assert request.transport is not None
    request.transport.abort()
    return resp


def _answer_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if isinstance(content, list):
        content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    nonce = _NONCE.search(content) if isinstance(content, str) else None
    return f"{ANSWER} nonce:{nonce.group(1)}" if nonce else ANSWER


def _usage_for(model: str, text: str) -> dict[str, Any]:
    match = _USAGE.match(model)
    prompt, completion = (int(match[1]), int(match[2])) if match else (11, len(text.split()))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _agent_calls_tool(model: str, body: dict[str, Any]) -> bool:
    """`fake-agent` calls the first tool unless a tool result follows the last user message, then answers."""
    if model != "fake-agent" or not body.get("tools"):
        return False
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return not any(m.get("role") == "tool" for m in messages[last_user + 1 :])


def _tool_name(body: dict[str, Any]) -> str:
    tools = body.get("tools") or [{}]
    return str((tools[0].get("function") or {}).get("name", "get_weather"))


def _logprob(token: str, rank: int = 0, *, unsure: bool = False) -> dict[str, Any]:
    logprob = -2.0 - rank if unsure else -0.25 - rank - len(token) / 100
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _wants_logprobs(model: str, body: dict[str, Any]) -> bool:
    return model == "fake-logprobs" or body.get("logprobs") is True


def _unsure(body: dict[str, Any]) -> bool:
    """A prompt that says `unsure` gets low log-probabilities (confidence about 0.14, else about 0.77)."""
    return "unsure" in msgspec.json.encode(body.get("messages") or []).decode()


def _completion(model: str, body: dict[str, Any]) -> bytes:
    text = _answer_text(body)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    finish, logprobs = "stop", None
    if model == "fake-tools" or _agent_calls_tool(model, body):
        function = {"name": _tool_name(body), "arguments": TOOL_ARGUMENTS}
        call = {"id": "call_fake1", "type": "function", "function": function}
        message.update(content=None, tool_calls=[call])
        finish = "tool_calls"
    if _wants_logprobs(model, body) and model != "fake-tools":
        tokens = [text.split(" ")[0], *(" " + word for word in text.split(" ")[1:])]
        unsure = _unsure(body)
        top = [_logprob("x", 1, unsure=unsure)]
        logprobs = {
            "content": [
                {**_logprob(t, unsure=unsure), "top_logprobs": [_logprob(t, unsure=unsure), *top]} for t in tokens
            ],
            "refusal": None,
        }
    completion = {
        **_HEAD,
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
        "usage": _usage_for(model, text),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    # Indented on purpose: a proxy that re-encodes instead of passing bytes through is caught at once.
    return msgspec.json.format(msgspec.json.encode(completion), indent=1)


def _chunks(model: str, body: dict[str, Any], include_usage: bool) -> list[bytes]:
    text = _answer_text(body)
    words = text.split(" ")
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return msgspec.json.encode({**_HEAD, "model": model, "choices": [choice], **extra})

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if model == "fake-tools" or _agent_calls_tool(model, body):
        function = {"name": _tool_name(body), "arguments": ""}
        start = {"index": 0, "id": "call_fake1", "type": "function", "function": function}
        chunks[0] = chunk({"role": "assistant", "content": None, "tool_calls": [start]})
        half = len(TOOL_ARGUMENTS) // 2
        for part in (TOOL_ARGUMENTS[:half], TOOL_ARGUMENTS[half:]):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        chunks.append(chunk({}, "tool_calls"))
    else:
        for i, word in enumerate(words):
            token = word if i == 0 else " " + word
            logprobs = {"content": [{**_logprob(token, unsure=_unsure(body)), "top_logprobs": []}], "refusal": None}
            chunks.append(chunk({"content": token}, logprobs=logprobs if _wants_logprobs(model, body) else None))
        chunks.append(chunk({}, "stop"))
    if include_usage and model != "fake-no-usage-stream":
        chunks.append(msgspec.json.encode({**_HEAD, "model": model, "choices": [], "usage": _usage_for(model, text)}))
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redirect-url", default="http://127.0.0.1:9/canary")
    args = parser.parse_args()
    fake = FakeUpstream(port=args.port, redirect_url=args.redirect_url)
    options = {"print": None, "access_log": None, "handler_cancellation": True, "shutdown_timeout": 0.5}
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, **options)


if __name__ == "__main__":
    main()
