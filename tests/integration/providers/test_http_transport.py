"""`HttpTransport` on its own against the fake upstream: what it sends, and that a `post` block always lets go."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.providers.base import UpstreamStreamBrokenError
from gateway.providers.http_transport import HttpTransport
from gateway.settings import OpenAIDeployment, Timeouts
from tests.fakes.upstream import FakeUpstream

TransportFactory = Callable[..., HttpTransport]


@pytest.fixture(name="fake", scope="module")
async def fx_fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(name="make_transport")
async def fx_make_transport(fake: FakeUpstream) -> AsyncIterator[TransportFactory]:
    transports: list[HttpTransport] = []

    def make(headers: dict[str, str] | None = None, **fields: Any) -> HttpTransport:
        deployment = OpenAIDeployment(name="dep-transport", base_url=fake.base_url, model="fake-ok", **fields)
        transport = HttpTransport(deployment, headers or {"Content-Type": "application/json"})
        transports.append(transport)
        return transport

    yield make
    for transport in transports:
        await transport.aclose()


def chat(model: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], "stream": stream}


async def test_post_sends_the_payload_as_is_with_the_transports_headers_and_accept(
    fake: FakeUpstream, make_transport: TransportFactory
) -> None:
    transport = make_transport({"Content-Type": "application/json", "x-api-key": "sk-test"})
    async with transport.post(f"{fake.base_url}/chat/completions", chat("fake-ok"), accept="application/json") as resp:
        body = await transport.read_json(resp)
    sent = fake.requests[-1]
    assert sent["json"] == chat("fake-ok")
    assert sent["headers"]["x-api-key"] == "sk-test"
    assert sent["headers"]["Accept"] == "application/json"
    assert body == sent["response"]


async def test_a_post_block_left_mid_stream_gives_the_connection_back(
    fake: FakeUpstream, make_transport: TransportFactory
) -> None:
    """With one connection allowed, a stalled stream abandoned unread must not hold it: the next call gets through."""
    transport = make_transport(max_concurrency=1, timeouts=Timeouts(first_byte_s=2.0))
    url = f"{fake.base_url}/chat/completions"
    async with transport.post(url, chat("fake-stall-stream", stream=True), accept="text/event-stream"):
        pass
    async with transport.post(url, chat("fake-ok"), accept="application/json") as resp:
        assert await transport.read_json(resp)


@pytest.mark.parametrize(
    ("last_event", "fragment"),
    [(None, "without [DONE]"), ("message_stop", "ended its stream before `message_stop`")],
    ids=["done", "last-event"],
)
async def test_events_cut_short_are_a_broken_stream_naming_what_was_missing(
    fake: FakeUpstream, make_transport: TransportFactory, last_event: str | None, fragment: str
) -> None:
    transport = make_transport()
    received: list[bytes] = []
    url = f"{fake.base_url}/chat/completions"
    with pytest.raises(UpstreamStreamBrokenError, match=re.escape(fragment)):
        async with transport.post(url, chat("fake-broken-stream", stream=True), accept="text/event-stream") as resp:
            async for payload in transport.events(resp, last_event=last_event):
                received.append(payload)
    assert received == fake.requests[-1]["events"]


async def test_a_body_over_a_mebibyte_is_sent_whole(fake: FakeUpstream, make_transport: TransportFactory) -> None:
    """A long prompt or an inlined image: streamed to the upstream rather than handed to aiohttp as one bytes
    payload (which it warns about, an error under `-W error`), and it arrives byte for byte."""
    transport = make_transport()
    payload = chat("fake-ok")
    payload["messages"][0]["content"] = "x" * (3 * 1024 * 1024)
    async with transport.post(f"{fake.base_url}/chat/completions", payload, accept="application/json") as resp:
        await transport.read_json(resp)
    sent = fake.requests[-1]
    assert sent["json"] == payload
    assert sent["headers"]["Content-Type"] == "application/json"
