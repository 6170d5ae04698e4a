"""Stages 6–7 by route policy: which deployments are called, in what order, and which answer the client gets.

    fixed      one call
    fallback   deployments in order; a 429, 5xx, timeout or refused connection moves on while the route's
               latency budget lasts (`fallback:<n>`, n counting from 1)
    cascade    the small deployment first, asked for logprobs; its answer when confident enough
               (`cascade:small`), else the large deployment's (`cascade:escalated`, both calls charged). An
               escalated prompt is remembered by fingerprint and goes straight to large next time
               (`cascade:remembered`); if the large call fails after a small answer, the small answer is
               returned (`cascade:degraded`)
    scored     the scorer picked the deployment in stage 5 (`scored:small` / `scored:large`)

Streams: a cascade buffers the small answer (a non-streaming call, replayed as SSE when it is kept) because
its confidence is known only once the answer is whole; escalations stream the large answer live. Every
deployment call holds that deployment's fair-queue slot for its duration (`acquire`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from cache import prompt_fingerprint
from cache.errors import CacheUnavailableError
from gateway.context import RequestContext
from gateway.pipeline.account import Spent, spent_on
from gateway.pipeline.call import call
from gateway.pipeline.stream import open_stream, timed
from gateway.providers.base import (
    UpstreamCall,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from gateway.routing.confidence import confidence
from gateway.routing.features import prompt_text
from gateway.runtime import ResolvedRoute, Runtime, Target

Acquire = Callable[[Target], contextlib.AbstractAsyncContextManager[None]]
"""Hold the deployment's fair-queue slot (a no-op for deployments without a global capacity)."""


class Answered(msgspec.Struct, kw_only=True):
    """A non-streaming outcome: the body the client gets, the call that produced it, and calls thrown away."""

    body: bytes
    spent: Spent
    decision: str
    discarded: list[Spent] = []
    confidence: float | None = None


class Opened(msgspec.Struct, kw_only=True):
    """A stream that has produced its first event (or an answer to replay, for a confident cascade)."""

    target: Target
    decision: str
    first: bytes | None = None
    events: AsyncIterator[bytes] | None = None
    held: contextlib.AsyncExitStack
    """The deployment slot; the stream releases it when it ends."""
    buffered: Answered | None = None
    """Set instead of `events` when the answer is already whole (a cascade's kept small answer)."""
    discarded: list[Spent] = []
    confidence: float | None = None


def moves_on(exc: UpstreamError) -> bool:
    """Failures another deployment may not share: throttling, server errors, timeouts, refused connections."""
    if isinstance(exc, UpstreamTimeoutError | UpstreamConnectError):
        return True
    return isinstance(exc, UpstreamStatusError) and exc.status is not None and (exc.status == 429 or exc.status >= 500)


def scored_choice(resolved: ResolvedRoute, messages: Any) -> tuple[int, float]:
    """Stage 5 for `scored`: (index of the deployment to call, the scorer's predicted chance small will do)."""
    assert resolved.scorer is not None
    chance = resolved.scorer.predict_messages(messages)
    return (0 if chance >= resolved.threshold else 1), chance


async def answer(
    rt: Runtime, ctx: RequestContext, resolved: ResolvedRoute, call_: UpstreamCall, acquire: Acquire, pick: int
) -> Answered:
    """The non-streaming answer under the route's policy (`pick`: the scored route's choice)."""
    targets = resolved.targets
    if resolved.policy == "fallback":
        return await _fallback(rt, ctx, resolved, call_, acquire)
    if resolved.policy == "cascade":
        return await _cascade(rt, ctx, resolved, call_, acquire)
    target = targets[pick]
    body, spent = await _call(rt, ctx, target, call_, acquire)
    decision = "fixed" if resolved.policy == "fixed" else f"scored:{'small' if pick == 0 else 'large'}"
    return Answered(body=body, spent=spent, decision=decision)


async def _call(
    rt: Runtime, ctx: RequestContext, target: Target, call_: UpstreamCall, acquire: Acquire, within: float | None = None
) -> tuple[bytes, Spent]:
    provider = target.provider
    before = ctx.timings.get("upstream", 0.0)
    try:
        async with acquire(target):
            with ctx.timed("upstream"):
                try:
                    async with asyncio.timeout(within):
                        body, usage, source = await call(provider, call_)
                except TimeoutError:
                    raise UpstreamTimeoutError("the route's latency budget ran out") from None
    except BaseException as exc:
        spent_s = ctx.timings.get("upstream", 0.0) - before
        rt.metrics.observe_upstream(provider.kind, provider.model, spent_s, type(exc).__name__)
        raise
    rt.metrics.observe_upstream(provider.kind, provider.model, ctx.timings["upstream"] - before, None)
    return body, spent_on(target, usage, source)


def _remaining(ctx: RequestContext, resolved: ResolvedRoute) -> float | None:
    if resolved.latency_budget_s is None:
        return None
    return resolved.latency_budget_s - ctx.elapsed()


async def _fallback(
    rt: Runtime, ctx: RequestContext, resolved: ResolvedRoute, call_: UpstreamCall, acquire: Acquire
) -> Answered:
    last = len(resolved.targets) - 1
    for index, target in enumerate(resolved.targets):
        remaining = _remaining(ctx, resolved)
        try:
            body, spent = await _call(rt, ctx, target, call_, acquire, within=remaining)
        except UpstreamError as exc:
            if index == last or not moves_on(exc) or (_remaining(ctx, resolved) or 1.0) <= 0:
                raise
            continue
        return Answered(body=body, spent=spent, decision=f"fallback:{index + 1}")
    raise AssertionError("unreachable: the last deployment's failure is raised")


async def _remembered(rt: Runtime, ctx: RequestContext, resolved: ResolvedRoute, call_: UpstreamCall) -> bool:
    if resolved.remember_escalations_s <= 0:
        return False
    assert ctx.tenant is not None
    try:
        return await rt.decisions.escalated(ctx.tenant.tenant_id, resolved.alias, _fingerprint(call_))
    except CacheUnavailableError:
        return False  # not remembered: the small model is tried, as on a first call


def _fingerprint(call_: UpstreamCall) -> str:
    messages = call_.payload.get("messages")
    return prompt_fingerprint(messages if isinstance(messages, list) else [])


def _remember(rt: Runtime, ctx: RequestContext, resolved: ResolvedRoute, call_: UpstreamCall) -> None:
    if resolved.remember_escalations_s <= 0:
        return
    assert ctx.tenant is not None
    tenant_id = ctx.tenant.tenant_id

    async def remember() -> None:
        with contextlib.suppress(CacheUnavailableError):  # a lost memory costs one more small call, no more
            await rt.decisions.remember_escalation(
                tenant_id, resolved.alias, _fingerprint(call_), resolved.remember_escalations_s
            )

    rt.supervisor.spawn("remember-escalation", remember())


def _with_logprobs(call_: UpstreamCall) -> UpstreamCall:
    payload = {key: value for key, value in call_.payload.items() if key not in ("stream", "stream_options")}
    payload["logprobs"] = True
    request = msgspec.structs.replace(call_.request, logprobs=True, stream=None, stream_options=None)
    return msgspec.structs.replace(call_, payload=payload, request=request)


def _without_logprobs(body: bytes) -> bytes:
    """The small answer as the client asked for it: the logprobs the cascade requested are removed."""
    completion = msgspec.json.decode(body)
    for choice in completion.get("choices") or ():
        if isinstance(choice, dict):
            choice["logprobs"] = None
    return msgspec.json.encode(completion)


async def _small_first(
    rt: Runtime, ctx: RequestContext, resolved: ResolvedRoute, call_: UpstreamCall, acquire: Acquire
) -> Answered | None:
    """The small model's answer and its confidence; None when its call failed (the large model answers)."""
    small = resolved.targets[0]
    try:
        body, spent = await _call(rt, ctx, small, _with_logprobs(call_), acquire)
    except UpstreamError:
        return None
    try:
        value = confidence(body)
    except msgspec.MsgspecError:
        value = None
    if value is not None and resolved.scorer is not None:
        ctx.small_confidence = value  # logged beside the combined score: tells answer drift from prior drift
        value = resolved.scorer.with_prior(value, prompt_text(call_.request.messages))
    client_wants_logprobs = call_.payload.get("logprobs") is True
    kept = body if client_wants_logprobs else _without_logprobs(body)
    return Answered(body=kept, spent=spent, decision="cascade:small", confidence=value)


def _confident(resolved: ResolvedRoute, small: Answered) -> bool:
    return small.confidence is not None and small.confidence >= resolved.threshold


async def _cascade(
    rt: Runtime, ctx: RequestContext, resolved: ResolvedRoute, call_: UpstreamCall, acquire: Acquire
) -> Answered:
    large = resolved.targets[1]
    if await _remembered(rt, ctx, resolved, call_):
        body, spent = await _call(rt, ctx, large, call_, acquire)
        return Answered(body=body, spent=spent, decision="cascade:remembered")
    small = await _small_first(rt, ctx, resolved, call_, acquire)
    if small is not None and _confident(resolved, small):
        return small
    _remember(rt, ctx, resolved, call_)
    try:
        body, spent = await _call(rt, ctx, large, call_, acquire)
    except UpstreamError:
        if small is None:
            raise
        return Answered(body=small.body, spent=small.spent, decision="cascade:degraded", confidence=small.confidence)
    discarded = [small.spent] if small is not None else []
    confidence_ = small.confidence if small is not None else None
    return Answered(body=body, spent=spent, decision="cascade:escalated", discarded=discarded, confidence=confidence_)


# --- streams ----------------------------------------------------------------------------------


async def open_streamed(
    rt: Runtime,
    ctx: RequestContext,
    resolved: ResolvedRoute,
    call_: UpstreamCall,
    acquire: Acquire,
    pick: int,
) -> Opened:
    """The stream the client gets under the route's policy, opened up to its first event."""
    if resolved.policy == "cascade":
        if not await _remembered(rt, ctx, resolved, call_):
            small = await _small_first(rt, ctx, resolved, call_, acquire)
            if small is not None and _confident(resolved, small):
                return Opened(
                    target=resolved.targets[0], decision="cascade:small", held=contextlib.AsyncExitStack(),
                    buffered=small, confidence=small.confidence,
                )  # fmt: skip
            _remember(rt, ctx, resolved, call_)
            opened = await _open(rt, ctx, resolved.targets[1], call_, acquire, "cascade:escalated")
            opened.discarded = [small.spent] if small is not None else []
            opened.confidence = small.confidence if small is not None else None
            return opened
        return await _open(rt, ctx, resolved.targets[1], call_, acquire, "cascade:remembered")
    if resolved.policy == "fallback":
        last = len(resolved.targets) - 1
        for index, target in enumerate(resolved.targets):
            try:
                return await _open(rt, ctx, target, call_, acquire, f"fallback:{index + 1}", _remaining(ctx, resolved))
            except UpstreamError as exc:
                if index == last or not moves_on(exc) or (_remaining(ctx, resolved) or 1.0) <= 0:
                    raise
        raise AssertionError("unreachable: the last deployment's failure is raised")
    decision = "fixed" if resolved.policy == "fixed" else f"scored:{'small' if pick == 0 else 'large'}"
    return await _open(rt, ctx, resolved.targets[pick], call_, acquire, decision)


async def _open(
    rt: Runtime,
    ctx: RequestContext,
    target: Target,
    call_: UpstreamCall,
    acquire: Acquire,
    decision: str,
    within: float | None = None,
) -> Opened:
    provider = target.provider
    held = contextlib.AsyncExitStack()
    upstream: AsyncIterator[bytes] | None = None
    try:
        await held.enter_async_context(acquire(target))
        upstream = timed(provider.stream(call_), lambda seconds: ctx.add_time("upstream", seconds))
        try:
            async with asyncio.timeout(within):
                first = await open_stream(upstream)
        except TimeoutError:
            raise UpstreamTimeoutError("the route's latency budget ran out") from None
    except BaseException as exc:
        rt.metrics.observe_upstream(provider.kind, provider.model, ctx.timings.get("upstream", 0.0), type(exc).__name__)
        if upstream is not None:
            with contextlib.suppress(Exception):
                await upstream.aclose()  # type: ignore[attr-defined]  # provider streams are async generators
        await held.aclose()
        raise
    return Opened(target=target, decision=decision, first=first, events=upstream, held=held)
