"""UTC calendar budget periods: which period an instant falls in, and when it ends."""

from __future__ import annotations

import datetime as dt

from quota.types import BudgetPeriod


def period_bounds(period: BudgetPeriod, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Start (inclusive) and end (exclusive) of the UTC day or month containing `now`."""
    now = now.astimezone(dt.UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def period_id(period: BudgetPeriod, now: dt.datetime) -> str:
    start, _ = period_bounds(period, now)
    return start.strftime("%Y%m%d") if period == "day" else start.strftime("%Y%m")
