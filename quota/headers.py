"""OpenAI-style `x-ratelimit-*` response headers from an admission's windows."""

from __future__ import annotations

from quota.types import Admission, Window


def _duration(seconds: float) -> str:
    # OpenAI writes resets as Go durations: "12ms", "1s", "6m0s".
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _window(headers: dict[str, str], kind: str, window: Window) -> None:
    headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, window.remaining))
    headers[f"x-ratelimit-reset-{kind}"] = _duration(window.reset_s)


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    if admission.requests is not None:
        _window(headers, "requests", admission.requests)
    if admission.tokens is not None:
        _window(headers, "tokens", admission.tokens)
    return headers
