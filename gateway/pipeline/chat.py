"""`run_chat`: one chat completion through DESIGN §1, top to bottom — the one function to read.

    1 authenticate   key → TenantContext                      (tenants.auth, cached in-process)
    2 decode         body → ChatRequest + forwarded JSON        (pipeline.decode)
    5 route          model name → provider + price             (pipeline.route)
    3 admit          requests-per-minute window, one Redis trip (quota.limiter)
    4 look up        decision cache                             (not yet: every request is `bypass`)
    6 queue          fair queue per deployment                  (not yet: deployments are uncapped)
    7 call           upstream, non-streaming or streamed        (pipeline.call / pipeline.stream)
    8 settle         nothing reserved yet beyond the RPM slot
    9 account        cost → headers, metrics, ledger, log line  (pipeline.account)

Routing is resolved before admission so an unknown model costs the tenant no quota.
"""

from __future__ import annotations

from typing import Any

from litestar import Response
from litestar.response import Stream

from gateway.accounting.pricing import format_usd
from gateway.context import RequestContext
from gateway.errors import AuthenticationError, from_upstream
from gateway.pipeline.account import charge, finish
from gateway.pipeline.call import call
from gateway.pipeline.decode import decode_chat
from gateway.pipeline.route import route
from gateway.pipeline.stream import StreamMeter, open_stream, relay
from gateway.providers.base import UpstreamCall, UpstreamError
from gateway.runtime import Runtime
from quota.headers import rate_limit_headers
from tenants.models import TenantContext

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def authenticate(rt: Runtime, authorization: str | None) -> TenantContext:
    if authorization is None or not authorization.startswith("Bearer "):
        rt.metrics.auth_failures.labels("missing").inc()
        raise AuthenticationError("You didn't provide an API key; send `Authorization: Bearer <key>`.")
    return await rt.authenticator.authenticate(authorization[len("Bearer ") :].strip())


async def run_chat(rt: Runtime, ctx: RequestContext, body: bytes, authorization: str | None) -> Response[Any]:
    with ctx.timed("auth"):
        ctx.tenant = tenant = await authenticate(rt, authorization)
    with ctx.timed("decode"):
        request, payload = decode_chat(body, rt.limits)
    ctx.model, ctx.stream = request.model, request.is_stream
    with ctx.timed("route"):
        resolved = route(rt.routes, request)
    ctx.route = resolved.policy
    ctx.served_model, ctx.deployment, ctx.provider = (
        resolved.provider.model,
        resolved.provider.deployment,
        (resolved.provider.kind),
    )
    with ctx.timed("admit"):
        admission = await rt.limiter.admit(tenant, ctx.request_id)

    headers = {
        **rate_limit_headers(admission),
        "x-sluice-model": resolved.provider.model,
        "x-sluice-route": ctx.route,
        "x-sluice-cache": ctx.cache,
    }
    if not request.is_stream:
        with ctx.timed("upstream"):
            answer, usage, source = await call(
                resolved.provider, UpstreamCall(request=request, payload=payload, request_id=ctx.request_id)
            )
        charge(rt, ctx, resolved, usage, source)
        assert ctx.cost is not None
        headers["x-sluice-cost-usd"] = format_usd(ctx.cost)
        finish(rt, ctx)
        return Response(answer, media_type="application/json", status_code=200, headers=headers)

    # Meter every stream: ask the upstream for usage even when the client did not (ECOSYSTEM §0.6).
    payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    upstream = resolved.provider.stream(UpstreamCall(request=request, payload=payload, request_id=ctx.request_id))
    with ctx.timed("upstream"):
        first = await open_stream(upstream)
    meter = StreamMeter(request)

    def on_error(exc: UpstreamError) -> None:
        ctx.truncated = True
        ctx.outcome = from_upstream(exc).outcome
        rt.metrics.truncated_streams.labels(rt.metrics.bounds.tenant(tenant.tenant_id)).inc()

    def on_end(delivered_done: bool) -> None:
        if not delivered_done and ctx.outcome == "ok":
            ctx.truncated, ctx.outcome = True, "client_disconnected"
        usage, source = meter.usage()
        charge(rt, ctx, resolved, usage, source)
        finish(rt, ctx)

    frames = relay(first, upstream, meter, on_error, on_end)
    return Stream(frames, media_type="text/event-stream", status_code=200, headers={**headers, **_SSE_HEADERS})
