"""Operations endpoints: `/healthz` (alive), `/readyz` (dependencies reachable, not draining), `/metrics`."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, multiprocess
from redis.exceptions import RedisError

from gateway.observability.metrics import render
from gateway.runtime import Runtime

_PROBE_TIMEOUT_S = 1.0


@get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(state: State) -> Response[dict[str, str]]:
    rt: Runtime = state.runtime
    checks = {"postgres": "ok", "redis": "ok"}
    if rt.draining:
        return Response({"status": "draining", **checks}, status_code=503)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await rt.pool.fetchval("SELECT 1")
    except Exception as exc:  # noqa: BLE001  # any failure means "not ready", never a 500
        checks["postgres"] = type(exc).__name__
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await rt.redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = type(exc).__name__
    ready = all(v == "ok" for v in checks.values())
    return Response({"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503)


@get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    rt: Runtime = state.runtime
    registry = rt.registry
    if rt.multiprocess_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=rt.multiprocess_dir)  # type: ignore[no-untyped-call]  # untyped upstream
    # Rendering walks every series: off the event loop, so a large scrape never stalls requests.
    body = await asyncio.to_thread(render, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
