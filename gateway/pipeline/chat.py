"""`run_chat`: one chat completion through DESIGN §1, top to bottom — the one function to read.

    1 authenticate   key → TenantContext                      (tenants.auth, cached in-process)
    2 decode         body → ChatRequest + forwarded JSON        (pipeline.decode)
    5 route          model name → provider + price             (pipeline.route)
    3 admit          reserve requests, tokens, budget, concurrency in one Redis trip (quota.limiter)
    4 look up        decision cache, single flight for identical requests (pipeline.lookup, cache/)
    6 queue          weighted fair queue for a deployment at its global capacity (quota.fairness)
    7 call           upstream by route policy, non-streaming or streamed (pipeline.dispatch, .call, .stream)
    8 settle         replace the reservation by real tokens and cost (streams: when they end)
    9 account        cost → headers, metrics, ledger, log line  (pipeline.account)

Routing is resolved before admission so an unknown model costs the tenant no quota; a `scored` route picks
its deployment there too (the scorer needs only the prompt).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal

import msgspec

from cache import (
    CachedAnswer,
    CachePolicy,
    CacheUnavailableError,
    IncompleteStreamError,
    Lookup,
    RequestKey,
    assemble,
    lookup_mode,
    replay_sse,
    request_key,
)
from gateway.accounting.pricing import TokenUsage, cost_usd, format_usd
from gateway.context import RequestContext
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    RateLimitedError,
    ServiceUnavailableError,
)
from gateway.pipeline.account import Spent, charge, finish, spent_on
from gateway.pipeline.admit import demand_for, levels_for
from gateway.pipeline.call import completion_text
from gateway.pipeline.decode import decode_chat, prompt_text
from gateway.pipeline.dispatch import Acquire, Answered, answer, open_streamed, scored_choice
from gateway.pipeline.route import route
from gateway.pipeline.stream import StreamMeter, relay
from gateway.providers.base import UpstreamCall
from gateway.routing.features import keep_features
from gateway.routing.features import prompt_text as routing_prompt
from gateway.runtime import ResolvedRoute, Runtime, Target
from gateway.schema.openai import ChatRequest
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


class ClientHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """The request headers the pipeline reads (the hot path hands them over without building a mapping)."""

    authorization: str | None = None
    max_queue_ms: str | None = None
    """`x-sluice-max-queue-ms`."""
    cache: dict[str, str] = {}
    """`cache-control`, `pragma` and `x-sluice-cache`, by lower-case name, when sent."""


_CACHE_HEADERS = ("cache-control", "pragma", "x-sluice-cache")


def client_headers(headers: Mapping[str, str]) -> ClientHeaders:
    """The headers the pipeline reads, from a mapping by lower-case name."""
    return ClientHeaders(
        authorization=headers.get("authorization"),
        max_queue_ms=headers.get("x-sluice-max-queue-ms"),
        cache={name: headers[name] for name in _CACHE_HEADERS if name in headers},
    )


async def open_request(rt: Runtime, ctx: RequestContext, client: ClientHeaders) -> TenantContext:
    """Stage 1 for every endpoint: refuse while draining, then authenticate (timed) and remember the tenant.
    Once per request: an endpoint that authenticated before handing over to `run_chat` is not checked twice."""
    if ctx.tenant is not None:
        return ctx.tenant
    if rt.draining:
        raise ServiceUnavailableError("This gateway process is shutting down; retry.", headers={"retry-after": "1"})
    with ctx.timed("auth"):
        ctx.tenant = tenant = await authenticate(rt, client.authorization)
    return tenant


async def run_chat(
    rt: Runtime, ctx: RequestContext, read_body: Callable[[], Awaitable[bytes]], client: ClientHeaders
) -> Reply:
    tenant = await open_request(rt, ctx, client)
    with ctx.timed("decode"):
        request, payload = decode_chat(await read_body(), rt.limits)  # the body is read only once authenticated
    ctx.model, ctx.stream = request.model, request.is_stream
    ctx.end_user = end_user_id(request.user) if request.user else None
    if tenant.quota.log_content:
        ctx.logged_text = {"prompt": prompt_text(request)}
    with ctx.timed("route"):
        resolved, pick = _route(rt, ctx, request)
    with ctx.timed("admit"):
        demand, allowance = demand_for(request, resolved, rt.limits, ctx.request_id)
        reservation = await rt.limiter.reserve(levels_for(tenant, request.model, request.user), demand)
    rt.metrics.observe_admission(tenant.tenant_id, reservation.admission)
    lookup = lookup_mode(payload, client.cache, resolved.cache)
    key = request_key(tenant.tenant_id, request.model, payload) if lookup.write else None
    headers = rate_limit_headers(reservation.admission)
    call_ = UpstreamCall(request=request, payload=payload, request_id=ctx.request_id)

    @contextlib.asynccontextmanager
    async def acquire(target: Target) -> AsyncIterator[None]:
        async with _deployment_slot(rt, ctx, tenant, target, demand.tokens, client.max_queue_ms):
            yield

    job = _Job(rt=rt, ctx=ctx, resolved=resolved, call=call_, reservation=reservation, acquire=acquire, pick=pick)
    try:
        if request.is_stream:
            cached = await _stored(rt, ctx, key) if lookup.read and key is not None else None
            count_lookup(rt, ctx, lookup, hit=cached is not None)
            if cached is not None:
                return _hit(job, cached, headers)
            return await _streamed(job, allowance, headers, key if lookup.write else None)
        if not lookup.read or key is None:
            count_lookup(rt, ctx, lookup, hit=False)
            answered, reply = await _answered(job, headers)
            if key is not None and answered.decision != "cascade:degraded":  # `refresh`: the fresh answer
                # replaces the stored one (a degraded answer, given only because the large call failed, never does)
                await _store(rt, resolved.cache, tenant.tenant_id, key, answered)
            return reply
        async with contextlib.AsyncExitStack() as stack:  # leaving lets waiters fall back to their own calls
            with ctx.timed("cache"):
                lease = await stack.enter_async_context(rt.answers.lease(tenant.tenant_id, key, resolved.cache))
            count_lookup(rt, ctx, lookup, hit=lease.answer is not None)
            if lease.answer is not None:
                return _hit(job, lease.answer, headers)
            answered, reply = await _answered(job, headers)
            if answered.decision != "cascade:degraded":
                await lease.fulfil(_to_cached(answered))
            return reply
    except BaseException:
        if not job.settled:
            await reservation.settle(0, Decimal(0))  # nothing was answered, nothing is charged
        raise


def _route(rt: Runtime, ctx: RequestContext, request: ChatRequest) -> tuple[ResolvedRoute, int]:
    """Stage 5: the route, and for `scored` the deployment its scorer picks (index into `targets`)."""
    resolved = route(rt.routes, request)
    ctx.route = resolved.policy
    pick = 0
    if resolved.policy == "scored":
        pick, ctx.confidence = scored_choice(resolved, request.messages)
    if resolved.policy in ("cascade", "scored"):  # what `sluice router train --from-feedback` learns from
        ctx.routing_features = keep_features(routing_prompt(request.messages))
    return resolved, pick


class _Job(msgspec.Struct, kw_only=True):
    """One admitted request on its way to an answer."""

    rt: Runtime
    ctx: RequestContext
    resolved: ResolvedRoute
    call: UpstreamCall
    reservation: Reservation
    acquire: Acquire
    pick: int
    settled: bool = False
    """Set once the reservation was settled or handed to the stream, so a failure does not settle it twice."""


@contextlib.asynccontextmanager
async def _deployment_slot(
    rt: Runtime, ctx: RequestContext, tenant: TenantContext, target: Target, tokens: int, max_queue_ms: str | None
) -> AsyncIterator[None]:
    """Wait in the deployment's fair queue (when it has a global capacity) and hold a slot for the call."""
    queue = rt.queues.get(target.provider.deployment)
    if queue is None:
        yield
        return
    slot = queue.slot(
        tenant_id=tenant.tenant_id,
        request_id=ctx.request_id,
        weight=tenant.quota.weight,
        cost=tokens,
        priority=tenant.quota.priority,
        deadline_s=_queue_wait_s(tenant, max_queue_ms),
        max_queued=tenant.quota.max_queued,
    )
    with ctx.timed("queue"):
        await slot.__aenter__()
    try:
        yield
    finally:
        await slot.__aexit__(None, None, None)


def _queue_wait_s(tenant: TenantContext, requested_ms: str | None) -> float:
    """How long this request may wait for upstream capacity: the tenant's default, or what the client asks
    in `x-sluice-max-queue-ms`, never above the tenant's cap."""
    quota = tenant.quota
    if requested_ms is None:
        return quota.max_queue_ms / 1000
    if not requested_ms.isdigit():
        raise InvalidRequestError("`x-sluice-max-queue-ms` must be a whole number of milliseconds.")
    return min(int(requested_ms), quota.max_queue_ms_cap) / 1000


# --- stage 4: the decision cache --------------------------------------------------------------


def count_lookup(rt: Runtime, ctx: RequestContext, lookup: Lookup, *, hit: bool) -> None:
    assert ctx.tenant is not None
    ctx.cache = lookup.result(hit=hit)
    rt.metrics.cache_lookups.labels(rt.metrics.bounds.tenant(ctx.tenant.tenant_id), ctx.cache).inc()


async def _stored(rt: Runtime, ctx: RequestContext, key: RequestKey) -> CachedAnswer | None:
    with ctx.timed("cache"):
        try:
            return await rt.answers.cache.get(key)
        except CacheUnavailableError:
            return None  # the cache is an optimisation: without Redis, the upstream answers


async def _store(rt: Runtime, policy: CachePolicy, tenant_id: str, key: RequestKey, answered: Answered) -> None:
    with contextlib.suppress(CacheUnavailableError):
        await rt.answers.cache.put(
            tenant_id, key, _to_cached(answered), policy.ttl_s, policy.max_entries_per_tenant,
            max_entry_bytes=policy.max_entry_bytes,
        )  # fmt: skip


def _to_cached(answered: Answered) -> CachedAnswer:
    usage = answered.spent.usage
    return CachedAnswer(
        body=answered.body, model=answered.spent.model, prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
        cost_usd=answered.spent.cost, route=answered.decision,
    )  # fmt: skip


def _hit(job: _Job, cached: CachedAnswer, headers: dict[str, str]) -> Reply:
    """Answer from the cache: the stored body (replayed as SSE for a stream), charged the policy's fraction."""
    rt, ctx, resolved = job.rt, job.ctx, job.resolved
    charged = resolved.cache.hit_cost(cached.cost_usd)
    ctx.route = cached.route or resolved.policy
    spent = Spent(
        kind="cache", model=cached.model, deployment="cache", usage=TokenUsage(prompt_tokens=0, completion_tokens=0),
        cost=charged, source="cache",
    )  # fmt: skip
    charge(rt, ctx, resolved.alias, spent, job.reservation, saved=("cache_hit", cached.cost_usd - charged))
    rt.supervisor.spawn("settle", job.reservation.settle(0, charged))
    job.settled = True
    headers = {**headers, **_decision_headers(ctx, cached.model), "x-sluice-cost-usd": format_usd(charged)}
    headers.update(ctx.timing_headers())
    finish(rt, ctx)
    if ctx.stream:
        frames = replay_sse(cached.body, include_usage=_client_wants_usage(job.call))
        return Reply(frames=_iterate(frames), headers={**headers, **_SSE_HEADERS})
    return Reply(body=cached.body, headers={**headers, "content-type": "application/json"})


async def _iterate(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


def _client_wants_usage(call_: UpstreamCall) -> bool:
    options = call_.request.stream_options
    return bool(options and options.include_usage)


def _decision_headers(ctx: RequestContext, served_model: str) -> dict[str, str]:
    headers = {"x-sluice-model": served_model, "x-sluice-route": ctx.route, "x-sluice-cache": ctx.cache}
    if ctx.confidence is not None:
        headers["x-sluice-confidence"] = f"{ctx.confidence:.4f}"
    return headers


def _saved(resolved: ResolvedRoute, answered_by: Spent, discarded: list[Spent]) -> tuple[str, Decimal] | None:
    """Against always-large: the same tokens at the route's largest deployment's price, less what was paid."""
    if resolved.policy not in ("cascade", "scored"):
        return None
    large = resolved.targets[-1]
    counterfactual = cost_usd(answered_by.usage, large.price)
    paid = answered_by.cost + sum((one.cost for one in discarded), Decimal(0))
    return "routed_small", counterfactual - paid


def _decided(job: _Job, decision: str, confidence_: float | None) -> None:
    job.ctx.route = decision
    if confidence_ is not None:
        job.ctx.confidence = confidence_
    job.rt.metrics.route_decisions.labels(job.resolved.alias, decision).inc()


# --- stages 6-9 -------------------------------------------------------------------------------


async def _answered(job: _Job, headers: dict[str, str]) -> tuple[Answered, Reply]:
    rt, ctx, resolved = job.rt, job.ctx, job.resolved
    answered = await answer(rt, ctx, resolved, job.call, job.acquire, job.pick)
    _decided(job, answered.decision, answered.confidence)
    with ctx.timed("account"):
        saved = _saved(resolved, answered.spent, answered.discarded)
        charge(rt, ctx, resolved.alias, answered.spent, job.reservation, discarded=answered.discarded, saved=saved)
    assert ctx.cost is not None and ctx.usage is not None
    with ctx.timed("settle"):
        await job.reservation.settle(ctx.usage.total, ctx.cost)
    job.settled = True
    if ctx.logged_text is not None:
        ctx.logged_text["completion"] = completion_text(answered.body)
    headers = {**headers, **_decision_headers(ctx, answered.spent.model), "x-sluice-cost-usd": format_usd(ctx.cost)}
    headers.update(ctx.timing_headers())
    finish(rt, ctx)
    return answered, Reply(body=answered.body, headers={**headers, "content-type": "application/json"})


def _store_stream(job: _Job, tenant_id: str, key: RequestKey, payloads: list[bytes], spent: Spent) -> None:
    """A streamed miss that ended well is stored assembled, so the next identical request is a hit."""
    try:
        body = assemble(payloads)
    except IncompleteStreamError:
        return
    answered = Answered(body=body, spent=spent, decision=job.ctx.route)
    job.rt.supervisor.spawn("cache-store", _store(job.rt, job.resolved.cache, tenant_id, key, answered))


def _replayed(job: _Job, answered: Answered, headers: dict[str, str], key: RequestKey | None) -> Reply:
    """A streaming request answered by a whole answer (a cascade's kept small answer), replayed as SSE."""
    rt, ctx, resolved, reservation = job.rt, job.ctx, job.resolved, job.reservation
    assert ctx.tenant is not None
    with ctx.timed("account"):
        charge(rt, ctx, resolved.alias, answered.spent, reservation, saved=_saved(resolved, answered.spent, []))
    assert ctx.cost is not None and ctx.usage is not None
    rt.supervisor.spawn("settle", reservation.settle(ctx.usage.total, ctx.cost))
    job.settled = True
    ctx.first_token_s = ctx.elapsed()
    if key is not None:
        rt.supervisor.spawn("cache-store", _store(rt, resolved.cache, ctx.tenant.tenant_id, key, answered))
    headers = {**headers, **_decision_headers(ctx, answered.spent.model), "x-sluice-cost-usd": format_usd(ctx.cost)}
    finish(rt, ctx)
    frames = replay_sse(answered.body, include_usage=_client_wants_usage(job.call))
    return Reply(frames=_iterate(frames), headers={**headers, **_SSE_HEADERS})


async def _streamed(job: _Job, allowance: int, headers: dict[str, str], key: RequestKey | None) -> Reply:
    rt, ctx, resolved, reservation = job.rt, job.ctx, job.resolved, job.reservation
    assert ctx.tenant is not None
    tenant_id = ctx.tenant.tenant_id
    tenant_label = rt.metrics.bounds.tenant(tenant_id)
    call_ = job.call
    # Meter every stream: ask the upstream for usage even when the client did not (ECOSYSTEM §0.6).
    call_.payload["stream_options"] = {**(call_.payload.get("stream_options") or {}), "include_usage": True}
    opened = await open_streamed(rt, ctx, resolved, call_, job.acquire, job.pick)
    _decided(job, opened.decision, opened.confidence)
    if opened.buffered is not None:  # a cascade kept its small answer: replay it
        return _replayed(job, opened.buffered, headers, key)
    job.settled = True  # from here on the stream's end settles, on every exit path
    assert opened.events is not None
    target, held = opened.target, opened.held
    provider = target.provider
    ctx.first_token_s = ctx.elapsed()
    meter = StreamMeter(call_.request, allowance=allowance, keep_payloads=key is not None)

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
        spent = spent_on(target, usage, source)
        with ctx.timed("account"):
            saved = _saved(resolved, spent, opened.discarded)
            charge(rt, ctx, resolved.alias, spent, reservation, discarded=opened.discarded, saved=saved)
        finish(rt, ctx)
        # A stream's `finally` cannot await (the client may be gone): release and settlement run as tracked tasks.
        rt.supervisor.spawn("release", held.aclose())
        assert ctx.usage is not None
        rt.supervisor.spawn("settle", reservation.settle(ctx.usage.total, ctx.cost or Decimal(0)))
        if key is not None and delivered_done and not ctx.truncated:
            _store_stream(job, tenant_id, key, meter.payloads, spent)

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

    headers = {**headers, **_decision_headers(ctx, provider.model)}
    frames = relay(opened.first, opened.events, meter, cut_short=cut_short, on_error=on_error, on_end=on_end)
    return Reply(frames=frames, headers={**headers, **_SSE_HEADERS})
