"""`run_chat`: one chat completion through DESIGN §1, top to bottom — the one function to read.

    1 authenticate   key → TenantContext                      (tenants.auth, cached in-process)
    2 decode         body → ChatRequest + forwarded JSON        (pipeline.decode)
    5 route          model name → provider + price             (pipeline.route)
    3 admit          reserve requests, tokens, budget, concurrency in one Redis trip (quota.limiter)
    4 look up        decision cache                             (not yet: every request is `bypass`)
    6 queue          weighted fair queue for a deployment at its global capacity (quota.fairness)
    7 call           upstream, non-streaming or streamed        (pipeline.call / pipeline.stream)
    8 settle         replace the reservation by real tokens and cost (streams: when they end)
    9 account        cost → headers, metrics, ledger, log line  (pipeline.account)

Routing is resolved before admission so an unknown model costs the tenant no quota.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import msgspec

from gateway.accounting.pricing import format_usd
from gateway.context import RequestContext
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    RateLimitedError,
    ServiceUnavailableError,
)
from gateway.pipeline.account import charge, finish
from gateway.pipeline.admit import demand_for, levels_for
from gateway.pipeline.call import call, completion_text
from gateway.pipeline.decode import decode_chat, prompt_text
from gateway.pipeline.route import route
from gateway.pipeline.stream import StreamMeter, open_stream, relay, timed
from gateway.providers.base import UpstreamCall
from gateway.runtime import ResolvedRoute, Runtime
from quota.headers import rate_limit_headers
from quota.keys import end_user_id
from quota.limiter import Reservation
from tenants.errors import InvalidKeyError
from tenants.models import TenantContext

_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """A successful answer, framework-free: a JSON body, or SSE frames to send as they come (status 200)."""

    headers: dict[str, str]
    body: bytes = b""
    frames: AsyncIterator[bytes] | None = None


_DRAIN_CUT = "The gateway is shutting down: the stream was ended at the drain deadline."
_RESERVATION_USED = "The stream used up the tokens reserved for it (`max_tokens`); it was ended to avoid overspending."


async def authenticate(rt: Runtime, authorization: str | None) -> TenantContext:
    if authorization is None or not authorization.startswith("Bearer "):
        rt.metrics.auth_failures.labels("missing").inc()
        raise AuthenticationError("You didn't provide an API key; send `Authorization: Bearer <key>`.")
    try:
        return await rt.authenticator.authenticate(authorization[len("Bearer ") :].strip())
    except InvalidKeyError as exc:
        rt.metrics.auth_failures.labels(exc.reason).inc()
        raise


async def run_chat(
    rt: Runtime,
    ctx: RequestContext,
    read_body: Callable[[], Awaitable[bytes]],
    authorization: str | None,
    max_queue_ms: str | None = None,
) -> Reply:
    if rt.draining:
        raise ServiceUnavailableError("This gateway process is shutting down; retry.", headers={"retry-after": "1"})
    with ctx.timed("auth"):
        ctx.tenant = tenant = await authenticate(rt, authorization)
    with ctx.timed("decode"):
        request, payload = decode_chat(await read_body(), rt.limits)  # the body is read only once authenticated
    ctx.model, ctx.stream = request.model, request.is_stream
    ctx.end_user = end_user_id(request.user) if request.user else None
    if tenant.quota.log_content:
        ctx.logged_text = {"prompt": prompt_text(request)}
    with ctx.timed("route"):
        resolved = route(rt.routes, request)
    ctx.route = resolved.policy
    rt.metrics.route_decisions.labels(resolved.alias, resolved.policy).inc()
    ctx.served_model, ctx.deployment, ctx.provider = (
        resolved.provider.model,
        resolved.provider.deployment,
        resolved.provider.kind,
    )
    with ctx.timed("admit"):
        demand, allowance = demand_for(request, resolved, rt.limits, ctx.request_id)
        reservation = await rt.limiter.reserve(levels_for(tenant, request), demand)
    rt.metrics.observe_admission(tenant.tenant_id, reservation.admission)
    rt.metrics.cache_lookups.labels(rt.metrics.bounds.tenant(tenant.tenant_id), ctx.cache).inc()  # stage 4

    headers = {
        **rate_limit_headers(reservation.admission),
        "x-sluice-model": resolved.provider.model,
        "x-sluice-route": ctx.route,
        "x-sluice-cache": ctx.cache,
    }
    held = contextlib.AsyncExitStack()  # the deployment slot, released when the upstream call is over
    queue = rt.queues.get(resolved.provider.deployment)
    if queue is not None:
        slot = queue.slot(
            tenant_id=tenant.tenant_id,
            request_id=ctx.request_id,
            weight=tenant.quota.weight,
            cost=demand.tokens,
            priority=tenant.quota.priority,
            deadline_s=_queue_wait_s(tenant, max_queue_ms),
            max_queued=tenant.quota.max_queued,
        )
        try:
            with ctx.timed("queue"):
                await held.enter_async_context(slot)
        except BaseException:
            await reservation.settle(0, Decimal(0))
            raise
    call_ = UpstreamCall(request=request, payload=payload, request_id=ctx.request_id)
    if request.is_stream:
        return await _streamed(rt, ctx, resolved, call_, reservation, held, allowance, headers)
    try:
        return await _answered(rt, ctx, resolved, call_, reservation, held, headers)
    finally:
        await held.aclose()


def _queue_wait_s(tenant: TenantContext, requested_ms: str | None) -> float:
    """How long this request may wait for upstream capacity: the tenant's default, or what the client asks
    in `x-sluice-max-queue-ms`, never above the tenant's cap."""
    quota = tenant.quota
    if requested_ms is None:
        return quota.max_queue_ms / 1000
    if not requested_ms.isdigit():
        raise InvalidRequestError("`x-sluice-max-queue-ms` must be a whole number of milliseconds.")
    return min(int(requested_ms), quota.max_queue_ms_cap) / 1000


async def _answered(
    rt: Runtime,
    ctx: RequestContext,
    resolved: ResolvedRoute,
    call_: UpstreamCall,
    reservation: Reservation,
    held: contextlib.AsyncExitStack,
    headers: dict[str, str],
) -> Reply:
    provider = resolved.provider
    try:
        with ctx.timed("upstream"):
            answer, usage, source = await call(provider, call_)
        await held.aclose()  # free the deployment slot before accounting
    except BaseException as exc:
        rt.metrics.observe_upstream(provider.kind, provider.model, ctx.timings["upstream"], type(exc).__name__)
        await reservation.settle(0, Decimal(0))  # nothing was answered, nothing is charged
        raise
    rt.metrics.observe_upstream(provider.kind, provider.model, ctx.timings["upstream"], None)
    with ctx.timed("account"):
        charge(rt, ctx, resolved, usage, source, reservation)
    assert ctx.cost is not None
    with ctx.timed("settle"):
        await reservation.settle(usage.total, ctx.cost)
    if ctx.logged_text is not None:
        ctx.logged_text["completion"] = completion_text(answer)
    headers["x-sluice-cost-usd"] = format_usd(ctx.cost)
    headers.update(ctx.timing_headers())
    finish(rt, ctx)
    return Reply(body=answer, headers={**headers, "content-type": "application/json"})


async def _streamed(
    rt: Runtime,
    ctx: RequestContext,
    resolved: ResolvedRoute,
    call_: UpstreamCall,
    reservation: Reservation,
    held: contextlib.AsyncExitStack,
    allowance: int,
    headers: dict[str, str],
) -> Reply:
    assert ctx.tenant is not None
    tenant_label = rt.metrics.bounds.tenant(ctx.tenant.tenant_id)
    # Meter every stream: ask the upstream for usage even when the client did not (ECOSYSTEM §0.6).
    call_.payload["stream_options"] = {**(call_.payload.get("stream_options") or {}), "include_usage": True}
    provider = resolved.provider
    upstream = timed(provider.stream(call_), lambda seconds: ctx.add_time("upstream", seconds))
    try:
        first = await open_stream(upstream)
    except BaseException as exc:
        rt.metrics.observe_upstream(provider.kind, provider.model, ctx.timings.get("upstream", 0.0), type(exc).__name__)
        await held.aclose()
        await reservation.settle(0, Decimal(0))
        raise
    ctx.first_token_s = ctx.elapsed()
    meter = StreamMeter(call_.request, allowance=allowance)

    def on_error(error: GatewayError) -> None:
        ctx.truncated, ctx.outcome, ctx.error_code = True, error.outcome, error.code
        rt.metrics.truncated_streams.labels(tenant_label).inc()

    def on_end(delivered_done: bool) -> None:
        if not delivered_done and ctx.outcome == "ok":
            ctx.truncated, ctx.outcome = True, "client_disconnected"
        error_type = None if ctx.outcome in ("ok", "client_disconnected") else ctx.outcome
        rt.metrics.observe_upstream(provider.kind, provider.model, ctx.timings.get("upstream", 0.0), error_type)
        usage, source = meter.usage()
        if ctx.logged_text is not None:
            ctx.logged_text["completion"] = meter.text()
        with ctx.timed("account"):
            charge(rt, ctx, resolved, usage, source, reservation)
        finish(rt, ctx)
        # A stream's `finally` cannot await (the client may be gone): release and settlement run as tracked tasks.
        rt.supervisor.spawn("release", held.aclose())
        rt.supervisor.spawn("settle", reservation.settle(usage.total, ctx.cost or Decimal(0)))

    loop = asyncio.get_running_loop()
    keep_alive_at = loop.time() + reservation.keep_alive_interval_s

    def cut_short() -> GatewayError | None:
        nonlocal keep_alive_at
        if loop.time() >= keep_alive_at:  # a stream may outlive its reservation's TTL
            keep_alive_at = loop.time() + reservation.keep_alive_interval_s
            rt.supervisor.spawn("keep-alive", reservation.keep_alive())
        if rt.drain_expired(loop.time()):
            return ServiceUnavailableError(_DRAIN_CUT, outcome="shutdown")
        if meter.exhausted:
            return RateLimitedError(_RESERVATION_USED, code="tokens_limit_exceeded", outcome="rate_limited")
        return None

    frames = relay(first, upstream, meter, cut_short=cut_short, on_error=on_error, on_end=on_end)
    return Reply(frames=frames, headers={**headers, **_SSE_HEADERS})
