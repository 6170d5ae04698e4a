"""The fastest reasonable fake OpenAI-compatible chat upstream, for benchmarks only.

A raw asyncio `Protocol` on uvloop with httptools parsing HTTP/1.1 (keep-alive and pipelining):
every `POST …/chat/completions` is answered at once with one fixed, small `chat.completion` body
(with `usage`); anything else gets a 404. No routing, no JSON decoding, no per-request allocation
beyond the parser's callbacks, so the upstream is never what a benchmark measures.

    python bench/fake_upstream.py --port 9000        # prints `listening on 127.0.0.1:9000`

Tests use tests/fakes/upstream.py (scenarios, recording); this one only has to be fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from typing import Final, cast

import httptools
import msgspec
import uvloop

COMPLETION: Final = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "bench-upstream",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the bench upstream.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    "system_fingerprint": None,
}
CHAT_PATH_SUFFIX: Final = b"/chat/completions"


def _response(status: bytes, body: bytes, *, keep_alive: bool) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: " + (b"keep-alive" if keep_alive else b"close") + b"\r\n\r\n"
    )
    return head + body


_OK_BODY: Final = msgspec.json.encode(COMPLETION)
_NOT_FOUND_BODY: Final = b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}'
_RESPONSES: Final = {
    (True, True): _response(b"200 OK", _OK_BODY, keep_alive=True),
    (True, False): _response(b"200 OK", _OK_BODY, keep_alive=False),
    (False, True): _response(b"404 Not Found", _NOT_FOUND_BODY, keep_alive=True),
    (False, False): _response(b"404 Not Found", _NOT_FOUND_BODY, keep_alive=False),
}
_BAD_REQUEST: Final = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests as bytes arrive and answer each as soon as it is complete."""

    __slots__ = ("_is_chat", "_parser", "_transport")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._is_chat = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()

    # httptools callbacks ------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        path = url.split(b"?", 1)[0]
        self._is_chat = path.endswith(CHAT_PATH_SUFFIX)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        keep_alive = self._parser.should_keep_alive()
        is_chat = self._is_chat and self._parser.get_method() == b"POST"
        transport.write(_RESPONSES[(is_chat, keep_alive)])
        if not keep_alive:
            transport.close()


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
