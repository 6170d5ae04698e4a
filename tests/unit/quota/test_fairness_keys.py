"""The fair queue's Redis keys and argument checks: no Redis needed."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from quota.fairness import FairQueue, deployment_keys, wake_channel


def test_every_key_of_a_deployment_shares_its_hash_slot_under_the_sluice_prefix() -> None:
    keys = [*deployment_keys("gpt-4o@azure"), wake_channel("gpt-4o@azure")]
    assert all(key.startswith("sluice:{d:gpt-4o@azure}:fq:") for key in keys)
    assert len(set(keys)) == 8


def test_deployments_never_share_a_key() -> None:
    assert not set(deployment_keys("a")) & set(deployment_keys("ab"))


@pytest.mark.parametrize(
    ("weight", "cost", "priority"),
    [(0, 100, 0), (1, -1, 0), (1, 100, 100), (1, 100, -100)],
    ids=["zero-weight", "negative-cost", "priority-too-high", "priority-too-low"],
)
def test_slot_refuses_arguments_outside_its_contract(weight: int, cost: int, priority: int) -> None:
    fq = FairQueue(aioredis.Redis(), "dep", 1)
    with pytest.raises(ValueError, match="must be"):
        fq.slot(
            tenant_id="t", request_id="r", weight=weight, cost=cost, priority=priority, deadline_s=1, max_queued=None
        )


def test_queue_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairQueue(aioredis.Redis(), "dep", 0)
