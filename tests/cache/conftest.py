"""Fixtures for the cache tests: real gateways (in-process and as processes), the dev agent, real Redis, and
scriptable origins (``tests.support.origin``). Reused from ``tests.policy_e2e.conftest``: ``make_gateway`` (takes a
``clock``), ``private_redis``, ``SkewedClock``, ``wait_for``, policy and admin helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consulgw.server.gateway import Gateway
from tests.policy_e2e.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    Consul,
    consul,
    http,
    make_gateway,
    private_redis,
    put_policy,
    routed,
    wait_for,
    wait_policy,
)
from tests.support.origin import Origin, origins  # noqa: F401 - fixture re-exported


async def serve(
    gateway: Gateway, agent: Consul, service: str, origin: Origin, policy: Mapping[str, Any], *, route: str = "/"
) -> None:
    """Register ``service`` on ``origin`` with the route ``route``, store its policy, wait until both are in force."""
    await put_policy(agent, service, policy)
    await agent.register(service, origin.port, tags=[f"gw.route={route}"])
    await wait_for(lambda: routed(gateway, service, 1))
    await wait_policy(gateway, service, policy)
