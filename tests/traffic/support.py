"""Helpers of the traffic end-to-end tests (issue 9): canary services, many requests, cookies."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, routed
from tests.policy_e2e.conftest import put_policy, unique, wait_for, wait_policy

SUBSETS: dict[str, Any] = {"stable": {"meta": {"version": "v1"}}, "canary": {"meta": {"version": "v2"}}}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    upstream: str | None  # X-Upstream: which instance answered
    headers: Mapping[str, str]
    set_cookies: tuple[str, ...]
    body: bytes


async def fetch(
    http: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    data: Any = None,
) -> Reply:
    async with http.request(method, url, headers=headers, data=data) as resp:
        body = await resp.read()
        return Reply(
            status=resp.status,
            upstream=resp.headers.get("X-Upstream"),
            headers={k: v for k, v in resp.headers.items() if k.lower() != "set-cookie"},
            set_cookies=tuple(resp.headers.getall("Set-Cookie", [])),
            body=body,
        )


async def fetch_many(
    http: aiohttp.ClientSession,
    url: str,
    headers: Iterable[Mapping[str, str] | None],
    *,
    concurrency: int = 16,
) -> list[Reply]:
    """One request per item of ``headers`` (None: no extra header), at most ``concurrency`` at a time, in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(extra: Mapping[str, str] | None) -> Reply:
        async with gate:
            return await fetch(http, url, headers=extra)

    return list(await asyncio.gather(*(one(h) for h in headers)))


def cookie_value(set_cookies: Iterable[str], name: str) -> str | None:
    """The value a response's ``Set-Cookie`` lines give cookie ``name`` (the last one wins), else None."""
    value = None
    for line in set_cookies:
        pair = line.split(";", 1)[0]
        key, _, val = pair.partition("=")
        if key.strip() == name:
            value = val.strip()
    return value


@dataclass
class CanaryService:
    name: str
    stable: list[Upstream]
    canary: list[Upstream]
    ids: dict[str, str]  # upstream name -> Consul service ID

    @property
    def canary_names(self) -> set[str]:
        return {u.name for u in self.canary}

    @property
    def stable_names(self) -> set[str]:
        return {u.name for u in self.stable}


async def canary_service(
    gateway: Gateway,
    consul: Consul,
    upstreams: Callable[..., Awaitable[Upstream]],
    *,
    name: str | None = None,
    stable: int = 2,
    canary: int = 1,
    policy: Mapping[str, Any] | None = None,
    canary_version: str = "v2",
) -> CanaryService:
    """Register ``stable`` v1 and ``canary`` v2 instances of a fresh service routed at ``/``, store ``policy``."""
    service = name or unique("users")
    if policy is not None:
        await put_policy(consul, service, policy)
    ids: dict[str, str] = {}
    made: dict[str, list[Upstream]] = {"stable": [], "canary": []}
    for kind, count, version in (("stable", stable, "v1"), ("canary", canary, canary_version)):
        for index in range(1, count + 1):
            up = await upstreams(f"{kind}-{index}")
            ids[up.name] = await consul.register(
                service, up.port, service_id=f"{service}-{kind}-{index}", tags=["gw.route=/"], meta={"version": version}
            )
            made[kind].append(up)
    await wait_for(lambda: routed(gateway, service, stable + canary))
    if policy is not None:
        await wait_policy(gateway, service, policy)
    return CanaryService(name=service, stable=made["stable"], canary=made["canary"], ids=ids)
