"""What admission reserves against a token window (RELIABILITY T02): the prompt by tiktoken plus the completion
limit — `max_tokens`, or the configured default when the request sets none — times `n`."""

from __future__ import annotations

from typing import Any

import httpx

from tests.harness import Gateway

_TPM = 1_000_000


async def _reserved(gateway: Gateway, name: str, body: dict[str, Any]) -> int:
    """Tokens one request reserved, read off its own `x-ratelimit-remaining-tokens` on a fresh tenant."""
    _, key = await gateway.tenant_key(name, tpm=_TPM)
    async with httpx.AsyncClient(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return _TPM - int(response.headers["x-ratelimit-remaining-tokens"])


async def test_reservation_is_prompt_plus_completion_limit_times_n(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": "word " * 100}]
    one = await _reserved(gateway, "one", {"model": "fake-ok", "messages": messages, "max_tokens": 300})
    four = await _reserved(gateway, "four", {"model": "fake-ok", "messages": messages, "max_tokens": 300, "n": 4})
    unset = await _reserved(gateway, "unset", {"model": "fake-ok", "messages": messages})
    prompt = one - 300
    assert 100 <= prompt <= 120  # 100 words and the chat format's few tokens per message
    assert four == prompt + 4 * 300
    assert unset == prompt + gateway.runtime.limits.default_max_tokens
