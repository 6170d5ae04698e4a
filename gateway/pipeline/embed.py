"""`run_embeddings`: one `POST /v1/embeddings` through the same stages as a chat completion.

    1 authenticate · 2 decode (`EmbeddingRequest`) · 5 route (`fixed` or `fallback`: a cascade or a scorer
    judges answers, and a vector has no confidence) · 3 admit (input tokens by tiktoken, priced at input
    rates) · 4 look up (embeddings are deterministic: cached whenever the route's cache is on) · 6/7 call ·
    8 settle · 9 account

Upstreams are always asked for floats; the client gets its `encoding_format` (the openai SDK's default is
`base64`), float32 either way, so both forms decode to the same vectors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Literal

import msgspec

from cache import CachedAnswer, CachePolicy, CacheUnavailableError, Lookup, RequestKey, lookup_mode, request_key
from gateway.accounting.pricing import TokenUsage, cost_usd, format_usd
from gateway.accounting.tokens import count_text
from gateway.context import RequestContext
from gateway.errors import InvalidRequestError
from gateway.pipeline.account import Spent, charge, finish, spent_on
from gateway.pipeline.admit import levels_for
from gateway.pipeline.chat import ClientHeaders, Reply, count_lookup, open_request
from gateway.pipeline.decode import decode_object, decode_typed
from gateway.pipeline.dispatch import moves_on
from gateway.pipeline.route import route_named
from gateway.providers.base import UpstreamError, UpstreamProtocolError
from gateway.runtime import ResolvedRoute, Runtime, Target
from gateway.schema.embeddings import EmbeddingList, EmbeddingRequest, list_decoder, reencode, request_decoder
from quota.headers import rate_limit_headers
from quota.keys import end_user_id
from quota.types import Demand

MAX_INPUTS = 2048
"""Inputs in one request (OpenAI's limit)."""


async def run_embeddings(
    rt: Runtime, ctx: RequestContext, read_body: Callable[[], Awaitable[bytes]], client: ClientHeaders
) -> Reply:
    tenant = await open_request(rt, ctx, client)
    with ctx.timed("decode"):
        request, payload, tokens = _decode(await read_body())
    ctx.model, ctx.operation = request.model, "embeddings"
    ctx.end_user = end_user_id(request.user) if request.user else None
    with ctx.timed("route"):
        resolved = route_named(rt.routes, request.model)
        if resolved.policy not in ("fixed", "fallback"):
            raise InvalidRequestError(
                f"The model `{request.model}` routes chat answers by confidence; embeddings need a `fixed` or "
                "`fallback` route.",
                param="model",
            )
    ctx.route = resolved.policy
    worst = TokenUsage(prompt_tokens=tokens, completion_tokens=0)
    demand = Demand(
        request_id=ctx.request_id, tokens=tokens, cost_usd=max(cost_usd(worst, t.price) for t in resolved.targets)
    )
    with ctx.timed("admit"):
        reservation = await rt.limiter.reserve(levels_for(tenant, request.model, request.user), demand)
    rt.metrics.observe_admission(tenant.tenant_id, reservation.admission)
    encoding: Literal["float", "base64"] = request.encoding_format or "float"
    policy = msgspec.structs.replace(resolved.cache, require_deterministic=False)  # a vector never varies
    lookup = lookup_mode(payload, client.cache, policy)
    keyed = {name: value for name, value in payload.items() if name != "encoding_format"}  # one entry, both forms
    key = request_key(tenant.tenant_id, request.model, keyed) if lookup.write else None
    headers = {**rate_limit_headers(reservation.admission)}
    settled = False
    try:
        body, spent, saved = await _answer(rt, ctx, resolved, payload, lookup, key, policy)
        with ctx.timed("account"):
            charge(rt, ctx, resolved.alias, spent, reservation, saved=saved)
        assert ctx.cost is not None and ctx.usage is not None
        with ctx.timed("settle"):
            await reservation.settle(ctx.usage.total, ctx.cost)
        settled = True
    finally:
        if not settled:
            await reservation.settle(0, Decimal(0))
    headers |= {
        "x-sluice-model": spent.model, "x-sluice-route": ctx.route, "x-sluice-cache": ctx.cache,
        "x-sluice-cost-usd": format_usd(ctx.cost),
    }  # fmt: skip
    headers.update(ctx.timing_headers())
    finish(rt, ctx)
    return Reply(body=reencode(body, encoding), headers={**headers, "content-type": "application/json"})


async def _answer(
    rt: Runtime,
    ctx: RequestContext,
    resolved: ResolvedRoute,
    payload: dict[str, object],
    lookup: Lookup,
    key: RequestKey | None,
    policy: CachePolicy,
) -> tuple[EmbeddingList, Spent, tuple[str, Decimal] | None]:
    """From the cache when it has the vectors, else from upstream (and then stored)."""
    assert ctx.tenant is not None
    cached = None
    if lookup.read and key is not None:
        with ctx.timed("cache"), contextlib.suppress(CacheUnavailableError):
            cached = await rt.answers.cache.get(key)
    count_lookup(rt, ctx, lookup, hit=cached is not None)
    if cached is not None:
        charged = policy.hit_cost(cached.cost_usd)
        spent = Spent(
            kind="cache", model=cached.model, deployment="cache",
            usage=TokenUsage(prompt_tokens=0, completion_tokens=0), cost=charged, source="cache",
        )  # fmt: skip
        ctx.route = cached.route or ctx.route
        return list_decoder.decode(cached.body), spent, ("cache_hit", cached.cost_usd - charged)
    body, spent, decision = await _call(rt, ctx, resolved, payload)
    ctx.route = decision
    rt.metrics.route_decisions.labels(resolved.alias, decision).inc()
    if key is not None:
        stored = CachedAnswer(
            body=reencode(body, "float"), model=spent.model, prompt_tokens=spent.usage.prompt_tokens,
            completion_tokens=0, cost_usd=spent.cost, route=decision,
        )  # fmt: skip
        with contextlib.suppress(CacheUnavailableError):
            await rt.answers.cache.put(
                ctx.tenant.tenant_id, key, stored, policy.ttl_s, policy.max_entries_per_tenant,
                max_entry_bytes=policy.max_entry_bytes,
            )  # fmt: skip
    return body, spent, None


def _decode(raw: bytes) -> tuple[EmbeddingRequest, dict[str, object], int]:
    """The validated request, the body to forward, and its input tokens (token-id inputs count one each)."""
    payload = decode_object(raw)  # the input limits first: a typed decode of a 10^5-deep body would recurse
    request: EmbeddingRequest = decode_typed(request_decoder, raw)
    return request, payload, _count_inputs(request.input)


def _count_inputs(value: object) -> int:
    """Tokens of `input`, which must be a non-empty string, list of strings, token ids or token-id lists."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequestError("`input` must not be empty.", param="input")
        return count_text(value)
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("`input` must be a string or a non-empty array.", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequestError(f"`input` may hold at most {MAX_INPUTS} items.", param="input")
    if all(isinstance(item, str) and item for item in value):
        return sum(count_text(item) for item in value)
    if all(_is_token_id(item) for item in value):
        return len(value)
    if all(isinstance(item, list) and item and all(_is_token_id(t) for t in item) for item in value):
        return sum(len(item) for item in value)
    raise InvalidRequestError(
        "`input` must be a string, an array of non-empty strings, an array of token ids, or an array of "
        "non-empty token-id arrays.",
        param="input",
    )


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


async def _call(
    rt: Runtime, ctx: RequestContext, resolved: ResolvedRoute, payload: dict[str, object]
) -> tuple[EmbeddingList, Spent, str]:
    last = len(resolved.targets) - 1
    for index, target in enumerate(resolved.targets):
        try:
            body, spent = await _embed(rt, ctx, target, payload)
        except UpstreamError as exc:
            if resolved.policy != "fallback" or index == last or not moves_on(exc):
                raise
            continue
        return body, spent, "fixed" if resolved.policy == "fixed" else f"fallback:{index + 1}"
    raise AssertionError("unreachable: the last deployment's failure is raised")


async def _embed(
    rt: Runtime, ctx: RequestContext, target: Target, payload: dict[str, object]
) -> tuple[EmbeddingList, Spent]:
    provider = target.provider
    before = ctx.timings.get("upstream", 0.0)
    try:
        with ctx.timed("upstream"):
            raw = await provider.embed(payload)
        try:
            body = list_decoder.decode(raw)
        except msgspec.MsgspecError:
            raise UpstreamProtocolError("the upstream's answer is not an embedding list") from None
    except BaseException as exc:
        seconds = ctx.timings["upstream"] - before
        rt.metrics.observe_upstream(provider.kind, provider.model, seconds, type(exc).__name__, "embeddings")
        raise
    rt.metrics.observe_upstream(provider.kind, provider.model, ctx.timings["upstream"] - before, None, "embeddings")
    usage = TokenUsage(prompt_tokens=max(0, body.usage.prompt_tokens), completion_tokens=0)
    return body, spent_on(target, usage, "upstream")
