"""OpenAI-style `x-ratelimit-*` response headers from an admission's window state."""

from __future__ import annotations

from quota.limiter import Admission


def _duration(seconds: float) -> str:
    # OpenAI writes resets as Go durations: "12ms", "1s", "6m0s".
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    if admission.requests is not None:
        window = admission.requests
        headers["x-ratelimit-limit-requests"] = str(window.limit)
        headers["x-ratelimit-remaining-requests"] = str(max(0, window.remaining))
        headers["x-ratelimit-reset-requests"] = _duration(window.reset_s)
    return headers
