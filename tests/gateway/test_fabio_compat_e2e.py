"""Migrating from Fabio, end to end: services tagged for Fabio route exactly like services tagged for consulgw.

Each "world" is a fresh dev agent, real upstreams and a real gateway. The same services are registered once with
Fabio's ``urlprefix-`` tags (gateway started with ``tag_compat=("fabio",)``) and once with ``gw.route`` tags; the
admin API's ``/-/routes`` and the answers to real requests (Host header for the host route) must be the same.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway

from .conftest import Consul, gateway_settings_for, start_upstream, wait_for

FABIO_TAGS = {
    "users": ["urlprefix-/users strip=/users"],
    "orders": ["urlprefix-api.example.com/orders"],
}
NATIVE_TAGS = {
    "users": ["gw.route=/users strip=/users"],
    "orders": ["gw.route=api.example.com/orders"],
}
BOTH_TAGS = {name: FABIO_TAGS[name] + NATIVE_TAGS[name] for name in FABIO_TAGS}

# (method, path, Host header or None) -> what the client should get
REQUESTS: list[tuple[str, str, str | None]] = [
    ("GET", "/users/7?expand=1", None),
    ("POST", "/users", None),
    ("GET", "/users", "api.example.com"),  # host-less route: any host
    ("GET", "/orders/1", "api.example.com"),
    ("GET", "/orders/1", "API.example.com:8443"),  # host compared case-insensitively, port ignored
    ("GET", "/orders/1", None),  # host route without that Host: no route
    ("GET", "/orders/1", "other.example.com"),
    ("GET", "/usersx", None),  # whole segments only
]


@dataclass(frozen=True, slots=True)
class World:
    routes: dict[str, Any]  # GET /-/routes
    answers: list[tuple[int, str | None, str | None]]  # (status, upstream name or error code, upstream path)


@pytest.fixture
async def world(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]],
) -> AsyncIterator[Callable[..., Awaitable[World]]]:
    """``await world(tags_by_service, compat=...)``: fresh agent + upstreams + gateway; routes and answers."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def build(tags: dict[str, list[str]], *, compat: tuple[str, ...] = ()) -> World:
        agent = await dev_agent_factory()
        http = aiohttp.ClientSession()
        cleanups.append(http.close)
        consul = Consul(http, agent.url)
        for name, service_tags in sorted(tags.items()):
            upstream = await start_upstream(name)
            cleanups.append(upstream.stop)
            await consul.register(name, upstream.port, service_id=f"{name}-1", tags=service_tags)
        gateway = Gateway(gateway_settings_for(agent.url, tag_compat=compat), consul_wait=5.0)
        await gateway.start()
        cleanups.append(gateway.stop)
        await gateway.wait_ready()
        routed = {name for name, t in tags.items() if any(x.startswith("gw.") for x in t) or compat}
        await wait_for(lambda: _has(gateway, routed))
        async with http.get(f"{gateway.admin_url}/-/routes") as resp:
            routes = await resp.json()
        answers = []
        for method, path, host in REQUESTS:
            headers = {"Host": host} if host else {}
            async with http.request(method, f"{gateway.url}{path}", headers=headers) as resp:
                body = json.loads(await resp.read())
                if resp.status == 200:
                    answers.append((resp.status, body["upstream"], body["raw_path"]))
                else:
                    answers.append((resp.status, body["error"], None))
        return World(routes=routes, answers=answers)

    yield build
    for cleanup in reversed(cleanups):
        await cleanup()


def _has(gateway: Gateway, names: set[str]) -> bool:
    view = gateway.view()
    return view is not None and set(view.services) == names


def _without_tags(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "tag"} for r in routes]


EXPECTED_ANSWERS = [
    (200, "users", "/7?expand=1"),
    (200, "users", "/"),
    (200, "users", "/"),
    (200, "orders", "/orders/1"),
    (200, "orders", "/orders/1"),
    (404, "no_route", None),
    (404, "no_route", None),
    (404, "no_route", None),
]


async def test_fabio_tags_route_exactly_like_native_tags(world: Callable[..., Awaitable[World]]) -> None:
    fabio = await world(FABIO_TAGS, compat=("fabio",))
    native = await world(NATIVE_TAGS)

    assert fabio.answers == native.answers == EXPECTED_ANSWERS
    assert _without_tags(fabio.routes["routes"]) == _without_tags(native.routes["routes"])
    assert _without_tags(fabio.routes["routes"]) == [
        {
            "route": "api.example.com/orders",
            "service": "orders",
            "host": "api.example.com",
            "prefix": "/orders",
            "strip": None,
            "methods": None,
            "lb": "round_robin",
        },
        {
            "route": "*/users",
            "service": "users",
            "host": None,
            "prefix": "/users",
            "strip": "/users",
            "methods": None,
            "lb": "round_robin",
        },
    ]
    assert [r["tag"] for r in fabio.routes["routes"]] == [
        "urlprefix-api.example.com/orders",
        "urlprefix-/users strip=/users",
    ]
    assert fabio.routes["route_errors"] == native.routes["route_errors"] == []
    assert fabio.routes["conflicts"] == native.routes["conflicts"] == []
    for name in ("users", "orders"):
        assert fabio.routes["services"][name]["lb"] == native.routes["services"][name]["lb"] == "round_robin"


async def test_without_tag_compat_fabio_tags_are_ignored(world: Callable[..., Awaitable[World]]) -> None:
    plain = await world(FABIO_TAGS)

    assert plain.routes["routes"] == []
    assert plain.routes["services"] == {}  # not even watched: urlprefix- tags are not the gateway's business
    assert plain.routes["route_errors"] == []
    assert [status for status, _, _ in plain.answers] == [404] * len(REQUESTS)


async def test_both_tag_styles_during_the_migration_count_once(world: Callable[..., Awaitable[World]]) -> None:
    both = await world(BOTH_TAGS, compat=("fabio",))
    native = await world(NATIVE_TAGS)

    assert both.answers == EXPECTED_ANSWERS
    assert both.routes["routes"] == native.routes["routes"]  # the gw.route tag is the one shown (sorted first)
    assert both.routes["route_errors"] == []
    assert both.routes["conflicts"] == []


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        pytest.param(
            "urlprefix-/legacy redirect=301,https://example.com/",
            "Fabio option 'redirect=301,https://example.com/': redirect routes are not supported",
            id="redirect",
        ),
        pytest.param(
            "urlprefix-/legacy proto=https",
            "proto=https: in consulgw the upstream's scheme belongs to its instances; set Meta gw-scheme=https on "
            "the service and drop proto=https; did you mean 'urlprefix-/legacy'?",
            id="proto-https",
        ),
        pytest.param(
            "urlprefix-:1234 proto=tcp",
            "proto=tcp: TCP routes are not supported; consulgw routes HTTP (and WebSocket) only",
            id="tcp-route",
        ),
        pytest.param(
            "urlprefix-/legacy weight=0.1",
            "Fabio option 'weight=0.1': route weights (traffic shaping) are not supported",
            id="weight",
        ),
    ],
)
async def test_unsupported_fabio_options_are_reported_not_half_applied(
    world: Callable[..., Awaitable[World]], tag: str, reason: str
) -> None:
    mixed = await world({**FABIO_TAGS, "legacy": [tag]}, compat=("fabio",))

    assert mixed.answers == EXPECTED_ANSWERS  # the other services are untouched
    fix = "urlprefix-/legacy" if "proto=https" in tag else None  # the one case with a (valid) corrected tag
    assert mixed.routes["route_errors"] == [{"service": "legacy", "tag": tag, "reason": reason, "fix": fix}]
    assert mixed.routes["services"]["legacy"]["route_errors"] == [{"tag": tag, "reason": reason, "fix": fix}]
    assert all(r["service"] != "legacy" for r in mixed.routes["routes"])


async def test_fabio_whitespace_and_dc_route_as_fabio_routes_them(
    gateway_factory: Callable[..., Awaitable[Gateway]], consul: Consul, http: aiohttp.ClientSession
) -> None:
    """Issue 13 finding 7: a tag with a leading space was ignored without a word (the service was not even
    watched), and ``$DC`` was taken literally. Fabio trims the tag and expands $DC from the agent's datacenter."""
    gateway = await gateway_factory(tag_compat=("fabio",))
    users, orders = await start_upstream("users"), await start_upstream("orders")
    try:
        await consul.register("users", users.port, tags=[" urlprefix-/users strip=/users"])
        await consul.register("orders", orders.port, tags=["urlprefix-api.$DC.example.com/${DC}/orders"])
        await wait_for(lambda: _has(gateway, {"users", "orders"}))
        async with http.get(f"{gateway.url}/users/7") as resp:
            assert (resp.status, json.loads(await resp.read())["raw_path"]) == (200, "/7")
        async with http.get(f"{gateway.url}/dc1/orders/1", headers={"Host": "api.dc1.example.com"}) as resp:
            assert (resp.status, json.loads(await resp.read())["upstream"]) == (200, "orders")
        async with http.get(f"{gateway.admin_url}/-/routes") as resp:
            routes = await resp.json()
        assert routes["route_errors"] == []
        assert sorted(r["route"] for r in routes["routes"]) == ["*/users", "api.dc1.example.com/dc1/orders"]
    finally:
        await users.stop()
        await orders.stop()
