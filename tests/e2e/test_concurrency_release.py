"""RELIABILITY T05 (quota issue acceptance 3): a tenant's concurrency slot is released on every exit path.

A tenant with `max_concurrency = 4` sends 478 jobs from 8 clients (about 1,000 requests: a job refused at
the limit is retried) through a gateway over real HTTP on loopback, mixing every way a request can end
once it holds a slot: answered, upstream 500, upstream timeout (504), upstream rejecting the body (400),
the gateway's own model rejecting the body after admission (over the simulator's context window), a
stream the client cancels after 3 chunks, and a client that disconnects before the response headers
(while the upstream works, streamed or not) — plus requests refused at admission (429) and a client that
leaves mid-body, before admission. The upstream is a small aiohttp fake of this file's own that counts
the calls it is serving at once, from the request arriving to the last byte written (the shared fake in
`tests/fakes/upstream.py` records arrivals only).

Not covered, because the gateway has no such path yet: a gateway-side cache hit (stage 4 answers every
request `bypass`, see `gateway/pipeline/chat.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from quota.keys import level_keys
from quota.types import Level, LevelLimits
from tests.harness import Gateway, file_config, running_gateway

pytestmark = pytest.mark.slow

LIMIT = 4
CLIENTS = 8
MAX_ATTEMPTS = 200
"""Tries per job while the tenant is at its limit (429 `concurrency_limit_exceeded`), 50–150 ms apart."""
LONG_WORDS = ["Water", *[" water"] * 59]
"""The `long` stream's answer: 60 tokens (each word one cl100k token), one every 50 ms."""
SHORT_WORDS = ["Water", *[" water"] * 4]

# kind: how many jobs of it (each one request, retried while the tenant is at its limit)
MIX = {
    "ok": 250,
    "ok-stream": 60,
    "upstream-500": 50,
    "upstream-timeout": 6,  # 2 s each (the first-byte timeout), so few
    "upstream-rejects": 30,
    "over-context": 20,
    "cancel-stream": 30,
    "gone-before-headers": 16,
    "gone-before-headers-stream": 8,
    "gone-mid-body": 8,
}
REACHES_UPSTREAM = [k for k in MIX if k not in ("over-context", "gone-mid-body")]


class _Message(msgspec.Struct):
    role: str
    content: str


class _Call(msgspec.Struct):
    model: str
    messages: list[_Message]
    stream: bool = False
    stream_options: dict[str, Any] | None = None


def _head(model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-t05", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model}


def _usage(completion: int) -> dict[str, int]:
    return {"prompt_tokens": 11, "completion_tokens": completion, "total_tokens": 11 + completion}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


class CountingUpstream:
    """A fake OpenAI upstream (behaviour by model name) that tracks how many calls it serves at once."""

    def __init__(self) -> None:
        self.port = 0
        self.inflight = 0
        self.peak = 0
        self.reached: Counter[str] = Counter()
        """Calls that arrived, per job kind (the kind is named in the prompt)."""
        self._waiting: dict[str, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def expect(self, prompt: str) -> asyncio.Event:
        """An event set when a call with this prompt arrives."""
        return self._waiting.setdefault(prompt, asyncio.Event())

    async def __aenter__(self) -> CountingUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        # Handlers are cancelled when the gateway hangs up, so an abandoned call stops counting as in flight.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            return await self._answer(request)
        finally:
            self.inflight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        call = msgspec.json.decode(await request.read(), type=_Call)
        prompt = call.messages[-1].content
        self.reached[prompt.rpartition("kind:")[2]] += 1
        if (event := self._waiting.pop(prompt, None)) is not None:
            event.set()
        model = call.model
        if model == "error-500":
            error = {"message": "boom", "type": "server_error", "param": None, "code": None}
            return web.json_response({"error": error}, status=500)
        if model == "rejects":
            error = {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error"}
            return web.json_response({"error": {**error, "param": "temperature", "code": None}}, status=400)
        await asyncio.sleep({"slow": 3.0, "hold": 0.5}.get(model, 0.02))  # `slow`: past the 2 s first-byte timeout
        words = LONG_WORDS if model == "long" else SHORT_WORDS
        if not call.stream:
            message = {"role": "assistant", "content": "".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            body = {**_head(model), "object": "chat.completion", "choices": [choice], "usage": _usage(len(words))}
            return web.Response(body=msgspec.json.encode(body), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the gateway hung up (its client cancelled)
            delta: dict[str, Any] = {"role": "assistant", "content": ""}
            await response.write(_event({**_head(model), "choices": [{"index": 0, "delta": delta}]}))
            for word in words:
                await asyncio.sleep(0.05 if model == "long" else 0.01)
                await response.write(_event({**_head(model), "choices": [{"index": 0, "delta": {"content": word}}]}))
            finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
            await response.write(_event({**_head(model), "choices": [finish]}))
            if (call.stream_options or {}).get("include_usage") is True:
                await response.write(_event({**_head(model), "choices": [], "usage": _usage(len(words))}))
            await response.write(b"data: [DONE]\n\n")
        return response


def _config(base_url: str) -> str:
    parts = []
    for model in ("ok", "long", "hold", "slow", "error-500", "rejects"):
        parts.append(f"""
[[deployments]]
kind = "openai"
name = "up-{model}"
base_url = "{base_url}"
model = "{model}"
timeouts = {{ connect_s = 2, first_byte_s = 2, idle_s = 2 }}
[[models]]
name = "{model}"
route = {{ policy = "fixed", deployment = "up-{model}" }}
[prices.up-{model}]
input = 1.00
output = 2.00
""")
    return "".join(parts)


@pytest.fixture(name="upstream")
async def fx_upstream() -> AsyncIterator[CountingUpstream]:
    async with CountingUpstream() as upstream:
        yield upstream


@pytest.fixture(name="counted")
async def fx_counted(database_url: str, redis_url: str, upstream: CountingUpstream) -> AsyncIterator[Gateway]:
    # A generous admission timeout: a stalled event loop on a loaded 2-core machine must not look like a Redis
    # outage (fail-open would count slots locally, and this test is about the Redis slots).
    config = file_config(extra=_config(upstream.base_url))
    async with running_gateway(database_url, redis_url, config, admission_timeout_ms=5000) as gateway:
        yield gateway


# --- one attempt of each kind: (status or what the client did, error code, request id) -------------------

Attempt: TypeAlias = tuple[int | str, str | None, str | None]


def _body(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def _code(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        return None
    code: str | None = response.json()["error"]["code"]
    return code


class Client:
    """One client: its own connection pool, the tenant's key, and the raw-socket tricks."""

    def __init__(self, gateway: Gateway, upstream: CountingUpstream, key: str) -> None:
        self.http = httpx.AsyncClient(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30)
        self.port = int(gateway.base.rpartition(":")[2])
        self.upstream = upstream
        self.key = key

    async def plain(self, body: dict[str, Any]) -> Attempt:
        response = await self.http.post("/chat/completions", json=body)
        return response.status_code, _code(response), response.headers.get("x-request-id")

    async def streamed(self, body: dict[str, Any]) -> Attempt:
        async with self.http.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
            await response.aread()
            if response.status_code == 200 and not response.text.endswith("data: [DONE]\n\n"):
                return "stream not ended by [DONE]", None, response.headers.get("x-request-id")
            return response.status_code, _code(response), response.headers.get("x-request-id")

    async def cancel_after_3_chunks(self, prompt: str) -> Attempt:
        body = _body("long", prompt, stream=True)
        async with self.http.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code, _code(response), None
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break
            # Leaving the block closes the half-read response: the connection is dropped.
            return "cancelled", None, response.headers["x-request-id"]

    def _request_head(self, length: int) -> bytes:
        return (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    async def gone_before_headers(self, prompt: str, *, stream: bool) -> Attempt:
        """Send the request, wait until the upstream is working on it, hang up before any response byte."""
        body = msgspec.json.encode(_body("hold", prompt, stream=stream))
        arrived = self.upstream.expect(prompt)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self._request_head(len(body)) + body)
            await writer.drain()
            waiting = asyncio.ensure_future(arrived.wait())
            answer = asyncio.ensure_future(_read_response(reader))
            done, _ = await asyncio.wait({waiting, answer}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            answer.cancel()
            if waiting in done:
                return "gone", None, None
            if answer in done and not answer.cancelled() and answer.exception() is None:
                status, code = answer.result()
                return status, code, None
            return "neither answered nor reached the upstream in 10 s", None, None
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def gone_mid_body(self, prompt: str) -> Attempt:
        body = msgspec.json.encode(_body("ok", prompt))
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self._request_head(len(body)) + body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(0.05)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return "gone", None, None

    def attempt(self, kind: str, prompt: str) -> Awaitable[Attempt]:
        by_kind: dict[str, Callable[[], Awaitable[Attempt]]] = {
            "ok": lambda: self.plain(_body("ok", prompt)),
            "ok-stream": lambda: self.streamed(_body("ok", prompt)),
            "upstream-500": lambda: self.plain(_body("error-500", prompt)),
            "upstream-timeout": lambda: self.plain(_body("slow", prompt)),
            "upstream-rejects": lambda: self.plain(_body("rejects", prompt)),
            # Within the route's `max_tokens` cap, so admitted; prompt + completion is over the simulator's
            # 128,000-token context window, so its provider refuses it after admission (400).
            "over-context": lambda: self.plain(_body("small", prompt, max_tokens=128_000)),
            "cancel-stream": lambda: self.cancel_after_3_chunks(prompt),
            "gone-before-headers": lambda: self.gone_before_headers(prompt, stream=False),
            "gone-before-headers-stream": lambda: self.gone_before_headers(prompt, stream=True),
            "gone-mid-body": lambda: self.gone_mid_body(prompt),
        }
        return by_kind[kind]()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, str | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    body = msgspec.json.decode(await reader.readexactly(length))
    return int(lines[0].split()[1]), body["error"]["code"]


EXPECTED: dict[str, tuple[int | str, str | None]] = {
    "ok": (200, None),
    "ok-stream": (200, None),
    "upstream-500": (502, "upstream_error"),
    "upstream-timeout": (504, "upstream_timeout"),
    "upstream-rejects": (400, "upstream_rejected"),
    "over-context": (400, "upstream_rejected"),
    "cancel-stream": ("cancelled", None),
    "gone-before-headers": ("gone", None),
    "gone-before-headers-stream": ("gone", None),
    "gone-mid-body": ("gone", None),
}


async def _slot_members(redis: aioredis.Redis, tenant_id: str) -> list[str]:
    """The request ids holding one of the tenant's concurrency slots, read straight from Redis."""
    level = Level(tenant_id=tenant_id, scope="tenant", scope_id=tenant_id, limits=LevelLimits())
    inflight_key = level_keys(level, "-")[4]  # the concurrency ZSET; its name does not depend on the period
    return [member.decode() for member in await redis.zrange(inflight_key, 0, -1) if isinstance(member, bytes)]


async def test_concurrency_slot_is_released_on_every_exit_path(
    counted: Gateway, upstream: CountingUpstream, database_url: str, redis_url: str
) -> None:
    tenant_id, key = await counted.tenant_key("t05", max_concurrency=LIMIT)
    rng = random.Random(5)
    jobs = [(index, kind) for index, kind in enumerate(k for k, n in MIX.items() for _ in range(n))]
    rng.shuffle(jobs)
    final: dict[int, tuple[str, Attempt]] = {}
    sent: Counter[str] = Counter()
    refused = 0

    async def client_loop() -> None:
        nonlocal refused
        client = Client(counted, upstream, key)
        try:
            while jobs:
                index, kind = jobs.pop()
                result: Attempt = ("never sent", None, None)
                for attempt in range(MAX_ATTEMPTS):
                    result = await client.attempt(kind, f"job {index}.{attempt} kind:{kind}")
                    sent[kind] += 1
                    if result[:2] != (429, "concurrency_limit_exceeded"):
                        break
                    refused += 1
                    await asyncio.sleep(rng.uniform(0.05, 0.15))
                final[index] = (kind, result)
        finally:
            await client.http.aclose()

    started = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))
    last_request_done = time.monotonic()
    mix_peak = upstream.peak

    # Every job ended the way its kind ends (a 429 after MAX_ATTEMPTS would be a slot that never came back).
    wrong = Counter(
        (kind, result[0], result[1])
        for kind, result in final.values()
        if (result[0], result[1] if EXPECTED[kind][1] else None) != EXPECTED[kind]
    )
    assert not wrong, f"unexpected outcomes (kind, status, code): count — {dict(wrong)}"
    assert len(final) == sum(MIX.values())
    missing = [kind for kind in REACHES_UPSTREAM if upstream.reached[kind] == 0]
    assert not missing, f"these exit paths never got past admission: {missing}"
    assert mix_peak <= LIMIT, f"the upstream served {mix_peak} calls of a tenant limited to {LIMIT} at once"

    # 2 s after the last request, no slot is held.
    await asyncio.sleep(max(0.0, last_request_done + 2.0 - time.monotonic()))
    redis = aioredis.Redis.from_url(redis_url)
    try:
        leaked = await _slot_members(redis, tenant_id)
        assert leaked == [], f"{len(leaked)} slot(s) still held 2 s after the last request: {leaked}"

        # The next requests are admitted at once: all 4 slots, held together by 4 long streams; a 5th is refused.
        async with (
            httpx.AsyncClient(
                base_url=counted.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
            ) as http,
            contextlib.AsyncExitStack() as held,
        ):
            opened = await asyncio.gather(
                *(
                    held.enter_async_context(
                        http.stream(
                            "POST", "/chat/completions", json=_body("long", f"hold {i} kind:after", stream=True)
                        )
                    )
                    for i in range(LIMIT)
                )
            )
            assert [r.status_code for r in opened] == [200] * LIMIT
            # Each past its first event, so all 4 are in flight at once. The iterators are kept referenced: an
            # abandoned, half-read one is finalized at once, which closes its connection and ends the stream.
            lines = [response.aiter_lines() for response in opened]
            for line in lines:
                assert (await anext(line)).startswith("data: ")
            fifth = await http.post("/chat/completions", json=_body("ok", "fifth kind:after"))
            assert fifth.status_code == 429, fifth.text
            assert fifth.json()["error"]["code"] == "concurrency_limit_exceeded"
        for line in lines:  # the responses are closed: this only finalizes the iterators, now, not at random
            await line.aclose()  # type: ignore[attr-defined]  # httpx line iterators are async generators
        deadline = time.monotonic() + 5
        while await _slot_members(redis, tenant_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await _slot_members(redis, tenant_id) == []
    finally:
        await redis.aclose()
    assert upstream.peak == LIMIT

    # Cancelled streams are charged for what was delivered: counted text, more than nothing, less than all.
    cancelled = [result[2] for kind, result in final.values() if kind == "cancel-stream"]
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            await counted.flush_ledger()
            rows = await conn.fetch("SELECT * FROM usage_records WHERE request_id = ANY($1::uuid[])", cancelled)
            if len(rows) == len(cancelled) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert len(rows) == len(cancelled)
    for row in rows:
        assert row["outcome"] == "client_disconnected" and row["truncated"], dict(row)
        assert row["usage_source"] == "counted", dict(row)
        assert 0 < row["completion_tokens"] < len(LONG_WORDS), dict(row)
        # Priced at the deployment's $1 / $2 per million prompt / completion tokens: the delivered tokens are billed.
        assert row["cost_usd"] == (row["prompt_tokens"] + 2 * row["completion_tokens"]) / Decimal(1_000_000), dict(row)
        assert row["cost_usd"] > 0, dict(row)

    metrics = (await counted.admin.get("/metrics")).text
    assert "sluice_quota_fail_open_total{" not in metrics, "admission took the local fallback path"
    total = sum(sent.values())
    print(  # the run's shape, for the -s reader
        f"T05: {len(final)} jobs, {total} requests ({refused} refused at the limit) in "
        f"{last_request_done - started:.1f} s; upstream peak {mix_peak}; reached {dict(upstream.reached)}"
    )
