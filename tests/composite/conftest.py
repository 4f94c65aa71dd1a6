"""Fixtures for composite routes: three services behind real origins, a gateway, a JWT to call with.

``dashboard``: users, orders and notifications registered on their own origins (echoing what they received), with
a helper to write ``consulgw/composites/<name>`` and wait until the gateway runs it."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from consulgw.policy.parse import parse_composite
from consulgw.server.gateway import Gateway
from tests.policy_e2e.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    Consul,
    consul,
    http,
    make_gateway,
    routed,
    wait_for,
)
from tests.support.origin import Origin, Reply, origins  # noqa: F401 - fixture re-exported

SECRET = "composite-tests-secret-of-32-bytes!!"
JWT_AUTH = {"type": "jwt", "algorithms": ["HS256"], "secret": SECRET}


def token(sub: str = "u-42", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


def bearer(sub: str = "u-42") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub)}"}


def echo_json(request: Any) -> bytes:
    return json.dumps(
        {
            "path": request.path_qs,
            "user": request.headers.get("X-User-ID"),
            "lang": request.headers.get("Accept-Language"),
        }
    ).encode()


@dataclass
class Dashboard:
    gateway: Gateway
    consul: Consul
    users: Origin
    orders: Origin
    notifications: Origin

    async def put(self, name: str, document: Mapping[str, Any]) -> None:
        await self.consul.kv_put(f"consulgw/composites/{name}", json.dumps(document))
        expected = parse_composite(json.dumps(document), key=f"consulgw/composites/{name}", name=name)

        def running() -> bool:
            view = self.gateway.view()
            if view is None:
                return False
            entry = view.composites.get(f"composite:{name}")
            return entry is not None and entry.policy == expected

        await wait_for(running)


BRIEF = {
    "route": "/api/user-dashboard",
    "methods": ["GET"],
    "timeout": "800ms",
    "auth": JWT_AUTH,
    "calls": {
        "user": {"service": "users", "path": "/users/{sub}", "required": True},
        "orders": {"service": "orders", "path": "/orders?user={sub}&limit=5", "timeout": "500ms", "default": []},
        "notifications": {"service": "notifications", "path": "/notifications?user={query.user}", "default": []},
    },
    "merge": "nest",
    "forward_headers": ["Accept-Language"],
    "partial_status": 200,
}


@pytest.fixture
async def dashboard(
    make_gateway: Callable[..., Awaitable[Gateway]],  # noqa: F811 - the fixtures imported above
    consul: Consul,  # noqa: F811
    origins: Callable[..., Awaitable[Origin]],  # noqa: F811
) -> Dashboard:
    gateway = await make_gateway()
    made = {}
    for name in ("users", "orders", "notifications"):
        origin = await origins(name)
        origin.default = Reply(body=echo_json)
        await consul.register(name, origin.port, tags=[f"gw.route=/{name}"])
        made[name] = origin
    for name in made:
        await wait_for(lambda name=name: routed(gateway, name, 1))
    return Dashboard(gateway=gateway, consul=consul, **made)
