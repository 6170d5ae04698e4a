"""Graceful drain on SIGTERM (RELIABILITY §6.1): readiness fails first, then the server stops accepting.

1. SIGTERM marks the runtime as draining at once: `/readyz` answers 503 and new `/v1` requests get
   503 + Retry-After, so load balancers and SDK retries move traffic elsewhere.
2. After `grace_s` the server's own handler runs: it stops accepting connections and waits up to
   the drain timeout for in-flight requests, streams included.
3. Streams still running one second before the drain timeout end with a terminal error event and are
   charged for what they delivered (`Runtime.drain_expired`), rather than being cut off silently.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

from gateway.runtime import Runtime


def install(runtime: Runtime, *, grace_s: float, timeout_s: float) -> None:
    """Chain a drain step in front of the server's SIGTERM handler (call from inside the running loop)."""
    loop = asyncio.get_running_loop()
    server_handler = signal.getsignal(signal.SIGTERM)

    def stop_accepting(signum: int, frame: FrameType | None) -> None:
        if callable(server_handler):
            server_handler(signum, frame)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if runtime.draining:
            return
        runtime.draining = True
        runtime.drain_deadline = loop.time() + grace_s + max(0.0, timeout_s - 1.0)
        loop.call_soon_threadsafe(loop.call_later, grace_s, stop_accepting, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
