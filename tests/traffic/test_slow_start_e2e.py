"""Slow start through a real gateway (issue 9): a joining instance's share rises over the window.

The gateway runs on a ``SkewedClock`` (the system clock plus an offset the test moves): each 5 s bucket of the
30 s window is reached by moving the offset, not by sleeping, so the measurement does not depend on how loaded the
machine is. Shares are measured per bucket over many requests and must rise, with generous tolerances.
"""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, routed
from tests.policy_e2e.conftest import SkewedClock, put_policy, unique, wait_for, wait_policy

from .support import fetch_many


@pytest.mark.parametrize("lb", ["round_robin", "least_conn", "ip_hash"])
async def test_a_joining_instance_ramps_up_over_the_window(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, lb: str
) -> None:
    clock = SkewedClock()
    gateway: Gateway = await make_gateway(clock=clock, trusted_proxies="127.0.0.0/8")
    service = unique("slow")
    policy = {"lb": lb, "slow_start": {"window": "30s"}}
    await put_policy(consul, service, policy)
    old, new = await upstreams("old"), await upstreams("new")
    await consul.register(service, old.port, service_id=f"{service}-old", tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, service, 1))
    await wait_policy(gateway, service, policy)
    await consul.register(service, new.port, service_id=f"{service}-new", tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, service, 2))  # "new" joined now (by the gateway's clock)

    shares = []
    for bucket in range(8):  # 0-5 s, 5-10 s, ... 30-35 s and 35-40 s after the join
        clock.offset = bucket * 5.0
        # Many clients (X-Forwarded-For from a trusted peer), so ip_hash spreads as well.
        replies = await fetch_many(
            http,
            f"{gateway.url}/a",
            [{"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"} for i in range(400)],
            concurrency=4,
        )
        shares.append(sum(r.upstream == "new" for r in replies) / len(replies))
    # Two equal instances: the newcomer's share is f / (1 + f) with its ramp factor f, from 0.1 to 1 over 30 s,
    # i.e. about 0.09 at first and 0.5 from the end of the window on.
    assert shares[0] < 0.25, shares
    for earlier, later in itertools.pairwise(shares):
        assert later >= earlier - 0.08, shares
    assert shares[-1] == pytest.approx(0.5, abs=0.08), shares
    assert shares[-1] - shares[0] > 0.25, shares
