"""The cache end to end: a real gateway, the dev agent, a real origin; what reached the origin is counted there."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from consulgw.server.gateway import Gateway
from tests.cache.conftest import Consul, put_policy, serve, wait_for
from tests.policy_e2e.conftest import SkewedClock, metric_value, unique
from tests.support.origin import Origin, Reply, echo

MakeGateway = Callable[..., Awaitable[Gateway]]
Origins = Callable[..., Awaitable[Origin]]
CACHE = {"cache": {"ttl": "60s"}}


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.request(method, url, headers=headers or {}) as resp:
        body = await resp.read()
        return resp.status, CIMultiDict(resp.headers), body


async def test_second_identical_get_is_served_without_reaching_the_upstream(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.replies["/items"] = Reply(body=b'{"items": [1, 2]}')
    await serve(gateway, consul, "shop", origin, CACHE)

    status, headers, body = await get(http, f"{gateway.url}/items")
    assert (status, body) == (200, b'{"items": [1, 2]}')
    assert headers["Cache-Status"] == "consulgw; fwd=miss"
    await wait_for(lambda: origin.count("/items") == 1)

    async def second_is_hit() -> bool:
        _, again, _ = await get(http, f"{gateway.url}/items")
        return again["Cache-Status"].startswith("consulgw; hit; ttl=")

    await wait_for(second_is_hit)  # the store happens right after the first answer
    status, headers, body = await get(http, f"{gateway.url}/items")
    assert (status, body) == (200, b'{"items": [1, 2]}')
    assert headers["Cache-Status"].startswith("consulgw; hit; ttl=")
    assert 0 <= int(headers["Age"]) <= 60
    assert int(headers["Cache-Status"].rsplit("=", 1)[1]) <= 60
    assert origin.count("/items") == 1
    assert "X-Request-ID" in headers  # the one response phase runs for hits too
    hits = await metric_value(http, gateway.admin_url, "consulgw_cache_hits_total", service="shop")
    misses = await metric_value(http, gateway.admin_url, "consulgw_cache_misses_total", service="shop")
    assert hits is not None
    assert hits >= 2
    assert misses == 1
    stored = await metric_value(
        http, gateway.admin_url, "consulgw_cache_stored_bytes_total", service="shop", backend="memory"
    )
    held = await metric_value(http, gateway.admin_url, "consulgw_cache_memory_bytes")
    assert stored == len(b'{"items": [1, 2]}')
    assert held is not None
    assert held > stored


@pytest.mark.parametrize(
    "reply_headers",
    [
        pytest.param({"Cache-Control": "no-store"}, id="no-store"),
        pytest.param({"Cache-Control": "private, max-age=60"}, id="private"),
        pytest.param({"Set-Cookie": "session=abc; HttpOnly"}, id="set-cookie"),
        pytest.param({"Vary": "*"}, id="vary-star"),
    ],
)
@pytest.mark.parametrize("mode", ["rfc9111", "override"])
async def test_answers_that_must_not_be_stored_are_never_served_from_cache(
    make_gateway: MakeGateway,
    consul: Consul,
    origins: Origins,
    http: aiohttp.ClientSession,
    reply_headers: dict[str, str],
    mode: str,
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.default = Reply(headers=reply_headers)
    await serve(gateway, consul, "shop", origin, {"cache": {"mode": mode, "ttl": "60s"}})
    for attempt in range(1, 4):
        status, headers, _ = await get(http, f"{gateway.url}/x")
        assert status == 200
        assert headers["Cache-Status"] == "consulgw; fwd=miss"
        assert origin.count("/x") == attempt
        await asyncio.sleep(0.05)  # give a (wrong) background store every chance to happen


async def test_vary_accept_language_keeps_two_variants(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.default = Reply(
        headers={"Vary": "Accept-Language"},
        body=lambda request: json.dumps({"lang": request.headers.get("Accept-Language", "")}).encode(),
    )
    await serve(gateway, consul, "i18n", origin, CACHE)
    for lang in ("en", "fr"):
        _, headers, body = await get(http, f"{gateway.url}/greeting", {"Accept-Language": lang})
        assert json.loads(body) == {"lang": lang}
    await wait_for(lambda: origin.count() == 2)
    for _ in range(3):
        for lang in ("en", "fr"):

            async def variant_hit(lang: str = lang) -> bool:
                _, headers, body = await get(http, f"{gateway.url}/greeting", {"Accept-Language": lang})
                assert json.loads(body) == {"lang": lang}  # never the other language
                return headers["Cache-Status"].startswith("consulgw; hit")

            await wait_for(variant_hit)
    assert origin.count() == 2
    # A third language is a variant miss: one more request upstream, then cached too.
    _, headers, body = await get(http, f"{gateway.url}/greeting", {"Accept-Language": "de"})
    assert (headers["Cache-Status"], json.loads(body)) == ("consulgw; fwd=vary-miss", {"lang": "de"})


async def test_accept_encoding_is_always_part_of_the_key(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.default = Reply(body=echo)  # no Vary at all: the gateway must still keep the codings apart
    await serve(gateway, consul, "enc", origin, CACHE)
    await get(http, f"{gateway.url}/doc", {"Accept-Encoding": "gzip"})
    await get(http, f"{gateway.url}/doc", {"Accept-Encoding": "identity"})
    assert origin.count() == 2
    _, headers, body = await get(http, f"{gateway.url}/doc", {"Accept-Encoding": "identity"})
    assert headers["Cache-Status"].startswith("consulgw; hit")
    assert json.loads(body)["headers"]["accept-encoding"] == "identity"


async def _consumer(agent: Consul, name: str, key: str) -> None:
    digest = hashlib.sha256(key.encode()).hexdigest()
    await agent.kv_put(f"consulgw/consumers/{name}", json.dumps({"api_key_sha256": [digest]}))


async def test_a_credentialed_request_never_gets_another_consumers_entry(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.default = Reply(
        headers={"Cache-Control": "max-age=60"},
        body=lambda request: json.dumps({"consumer": request.headers.get("X-Consumer-ID")}).encode(),
    )
    await _consumer(consul, "alice", "alice-key-0001")
    await _consumer(consul, "bob", "bob-key-0001")
    policy = {"auth": {"type": "api_key"}, "cache": {"ttl": "60s", "key": {"per_consumer": True}}}
    await serve(gateway, consul, "account", origin, policy)

    async def as_(key: str) -> tuple[CIMultiDict[str], Any]:
        status, headers, body = await get(http, f"{gateway.url}/me", {"X-API-Key": key})
        assert status == 200, body
        return headers, json.loads(body)

    await wait_for(lambda: len(gateway.view().book.consumers) == 2)  # type: ignore[union-attr]
    _, doc = await as_("alice-key-0001")
    assert doc == {"consumer": "alice"}

    async def alice_hit() -> bool:
        headers, doc = await as_("alice-key-0001")
        assert doc == {"consumer": "alice"}
        return headers["Cache-Status"].startswith("consulgw; hit")

    await wait_for(alice_hit)
    headers, doc = await as_("bob-key-0001")
    assert doc == {"consumer": "bob"}
    assert headers["Cache-Status"] == "consulgw; fwd=miss"
    assert origin.count() == 2


@pytest.mark.parametrize(
    ("cache_control", "shared"),
    [
        pytest.param("max-age=60", False, id="not-public"),
        pytest.param("public, max-age=60", True, id="public"),
        pytest.param("s-maxage=60", True, id="s-maxage"),
    ],
)
async def test_without_per_consumer_keys_credentialed_requests_share_only_public_answers(
    make_gateway: MakeGateway,
    consul: Consul,
    origins: Origins,
    http: aiohttp.ClientSession,
    cache_control: str,
    shared: bool,
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.default = Reply(headers={"Cache-Control": cache_control})
    await serve(gateway, consul, "docs", origin, {"cache": {"ttl": "60s", "key": {"per_consumer": False}}})
    for token in ("token-a", "token-b", "token-c"):
        await get(http, f"{gateway.url}/page", {"Authorization": f"Bearer {token}"})
        await asyncio.sleep(0.05)
    assert origin.count() == (1 if shared else 3)


async def test_a_stale_entry_is_revalidated_with_a_304(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    clock = SkewedClock()
    gateway = await make_gateway(clock=clock)
    origin = await origins()
    origin.default = Reply(headers={"Cache-Control": "max-age=10"}, etag='"v1"', body=b'{"version": 1}')
    await serve(gateway, consul, "catalog", origin, CACHE)
    await get(http, f"{gateway.url}/product")

    async def hit() -> bool:
        return (await get(http, f"{gateway.url}/product"))[1]["Cache-Status"].startswith("consulgw; hit")

    await wait_for(hit)
    clock.offset += 30  # 20 s past its freshness
    status, headers, body = await get(http, f"{gateway.url}/product")
    assert (status, body) == (200, b'{"version": 1}')
    assert headers["Cache-Status"].startswith("consulgw; fwd=stale; fwd-status=304; ttl=")
    assert headers["ETag"] == '"v1"'
    conditional = origin.requests[-1]
    assert conditional.headers.get("if-none-match") == '"v1"'
    assert origin.count() == 2
    # The 304 refreshed the entry: fresh again, no further request upstream.
    status, headers, _ = await get(http, f"{gateway.url}/product")
    assert headers["Cache-Status"].startswith("consulgw; hit")
    assert origin.count() == 2
    stale = await metric_value(
        http, gateway.admin_url, "consulgw_cache_stale_total", service="catalog", kind="revalidated"
    )
    assert stale == 1


async def test_stale_while_revalidate_answers_at_once_and_refreshes_in_the_background(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    clock = SkewedClock()
    gateway = await make_gateway(clock=clock)
    origin = await origins()
    origin.default = Reply(headers={"Cache-Control": "max-age=10"}, etag='"v1"')
    await serve(gateway, consul, "feed", origin, {"cache": {"stale_while_revalidate": "60s"}})
    await get(http, f"{gateway.url}/news")
    await wait_for(lambda: gateway.view() is not None)
    clock.offset += 20
    origin.default.delay = 0.5  # the refresh is slow; the client does not wait for it
    started = time.monotonic()
    status, headers, _ = await get(http, f"{gateway.url}/news")
    assert time.monotonic() - started < 0.5
    assert status == 200
    assert headers["Cache-Status"].startswith("consulgw; hit; ttl=-")
    assert "detail=stale-while-revalidate" in headers["Cache-Status"]
    await wait_for(lambda: origin.count() == 2)
    assert origin.requests[-1].headers.get("if-none-match") == '"v1"'

    async def fresh_again() -> bool:
        _, headers, _ = await get(http, f"{gateway.url}/news")
        return headers["Cache-Status"].startswith("consulgw; hit") and "stale" not in headers["Cache-Status"]

    await wait_for(fresh_again)
    assert origin.count() == 2


async def test_stale_if_error_serves_the_stale_answer_when_the_upstream_fails(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    clock = SkewedClock()
    gateway = await make_gateway(clock=clock)
    origin = await origins()
    origin.default = Reply(headers={"Cache-Control": "max-age=10"}, body=b'{"good": true}')
    await serve(gateway, consul, "prices", origin, {"cache": {"stale_if_error": "5m"}})
    await get(http, f"{gateway.url}/list")
    await asyncio.sleep(0.05)
    clock.offset += 60
    origin.failing = True
    status, headers, body = await get(http, f"{gateway.url}/list")
    assert (status, body) == (200, b'{"good": true}')
    assert headers["Cache-Status"].startswith("consulgw; fwd=stale; fwd-status=500; ttl=-")
    assert "detail=stale-if-error" in headers["Cache-Status"]
    clock.offset += 600  # beyond stale_if_error: the error comes through
    status, headers, _ = await get(http, f"{gateway.url}/list")
    assert status == 500


async def test_a_successful_post_to_the_path_invalidates_it(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    await serve(gateway, consul, "cart", origin, CACHE)
    await get(http, f"{gateway.url}/cart/1?view=full")

    async def hit() -> bool:
        return (await get(http, f"{gateway.url}/cart/1?view=full"))[1]["Cache-Status"].startswith("consulgw; hit")

    await wait_for(hit)
    status, headers, _ = await get(http, f"{gateway.url}/cart/1", method="POST")
    assert (status, headers["Cache-Status"]) == (200, "consulgw; fwd=method")
    _, headers, _ = await get(http, f"{gateway.url}/cart/1?view=full")
    assert headers["Cache-Status"] == "consulgw; fwd=miss"
    assert origin.count("/cart/1", "GET") == 2


async def test_writing_the_purge_key_empties_the_service_cache(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    await serve(gateway, consul, "blog", origin, CACHE)
    await get(http, f"{gateway.url}/post/1")

    async def hit() -> bool:
        return (await get(http, f"{gateway.url}/post/1"))[1]["Cache-Status"].startswith("consulgw; hit")

    await wait_for(hit)
    version = gateway.view().version  # type: ignore[union-attr]
    await consul.kv_put("consulgw/cache-purge/blog", "2024-06-01T12:00:00Z")
    await wait_for(lambda: gateway.view().version > version)  # type: ignore[union-attr]
    _, headers, _ = await get(http, f"{gateway.url}/post/1")
    assert headers["Cache-Status"] == "consulgw; fwd=miss"
    assert origin.count() == 2


async def test_one_hundred_concurrent_misses_reach_the_upstream_once(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.default = Reply(delay=0.3, body=b'{"expensive": true}')
    await serve(gateway, consul, "report", origin, CACHE)
    answers = await asyncio.gather(*(get(http, f"{gateway.url}/daily") for _ in range(100)))
    assert all(status == 200 and body == b'{"expensive": true}' for status, _, body in answers)
    assert origin.count("/daily") == 1
    statuses = sorted(headers["Cache-Status"].split(";")[1].strip() for _, headers, _ in answers)
    assert statuses.count("fwd=miss") == 1
    assert sum("collapsed" in headers["Cache-Status"] for _, headers, _ in answers) == 99


async def test_a_body_larger_than_max_body_bytes_streams_through_uncached(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    big = bytes(range(256)) * 1024  # 256 KiB
    origin.replies["/big"] = Reply(body=big, content_type="application/octet-stream", chunked=True)
    origin.replies["/medium"] = Reply(body=big[:150_000], content_type="application/octet-stream", chunked=True)
    await serve(gateway, consul, "files", origin, {"cache": {"max_body_bytes": 200_000}})
    for _ in range(2):
        status, _headers, body = await get(http, f"{gateway.url}/big")
        assert (status, body) == (200, big)
    assert origin.count("/big") == 2
    # A streamed body under the cap is stored while it streams and served whole from the cache.
    assert (await get(http, f"{gateway.url}/medium"))[2] == big[:150_000]

    async def medium_hit() -> bool:
        _status, headers, body = await get(http, f"{gateway.url}/medium")
        assert body == big[:150_000]
        return headers["Cache-Status"].startswith("consulgw; hit")

    await wait_for(medium_hit)
    assert origin.count("/medium") == 1
    too_large = await metric_value(
        http, gateway.admin_url, "consulgw_cache_bypasses_total", service="files", reason="too_large"
    )
    assert too_large == 2


async def test_head_is_answered_from_the_get_entry_and_conditionals_get_a_304(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    origin = await origins()
    origin.default = Reply(etag='"abc"', headers={"Cache-Control": "max-age=60"}, body=b'{"x": 1}')
    await serve(gateway, consul, "static", origin, CACHE)
    await get(http, f"{gateway.url}/a")
    await asyncio.sleep(0.05)
    status, headers, body = await get(http, f"{gateway.url}/a", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "8")
    assert headers["Cache-Status"].startswith("consulgw; hit")
    status, headers, body = await get(http, f"{gateway.url}/a", {"If-None-Match": '"abc"'})
    assert (status, body, headers["ETag"]) == (304, b"", '"abc"')
    assert origin.count() == 1


async def test_redis_backend_is_shared_with_a_second_gateway_process(
    make_gateway: MakeGateway,
    consul: Consul,
    origins: Origins,
    http: aiohttp.ClientSession,
    dev_agent: Any,
    tmp_path: Any,
) -> None:
    from tests.support.processes import gateway_process

    service = unique("shared")
    redis_url = "redis://127.0.0.1:6379/0"
    first = await make_gateway(redis_url=_secret(redis_url))
    origin = await origins()
    await serve(first, consul, service, origin, {"cache": {"backend": "redis", "ttl": "60s"}})
    async with gateway_process(
        dev_agent.url, "--redis", redis_url, "--log-format", "json", log=tmp_path / "second.log"
    ) as second:

        async def second_routes() -> bool:
            try:
                status, _, _ = await get(http, f"{second.url}/ping-{service}")
            except aiohttp.ClientError:
                return False
            return status == 200

        await wait_for(second_routes, timeout=30)
        _, headers, _ = await get(http, f"{first.url}/shared-item")
        assert headers["Cache-Status"] == "consulgw; fwd=miss"

        async def first_hits() -> bool:  # the entry is in Redis once the first gateway answers from it
            _, headers, _ = await get(http, f"{first.url}/shared-item")
            return headers["Cache-Status"].startswith("consulgw; hit")

        await wait_for(first_hits)
        _, headers, _ = await get(http, f"{second.url}/shared-item")
        assert headers["Cache-Status"].startswith("consulgw; hit; ttl=")
        assert origin.count("/shared-item") == 1


async def test_redis_down_with_bypass_still_answers_and_deny_answers_503(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession, private_redis: Any
) -> None:
    gateway = await make_gateway(redis_url=_secret(private_redis.url))
    origin = await origins()
    await serve(gateway, consul, "bypassed", origin, {"cache": {"backend": "redis", "on_backend_error": "bypass"}})
    local = await origins("local")
    await serve(gateway, consul, "local", local, CACHE, route="/local")
    await private_redis.stop()
    for _ in range(3):
        status, headers, _ = await get(http, f"{gateway.url}/x")
        assert status == 200
        assert headers["Cache-Status"] == "consulgw; fwd=bypass; detail=backend-error"
        await get(http, f"{gateway.url}/local/y")  # a memory cache on the same gateway is not affected
    assert origin.count() == 3
    assert local.count() == 1
    await put_policy(consul, "bypassed", {"cache": {"backend": "redis", "on_backend_error": "deny"}})

    async def denied() -> bool:
        status, _, body = await get(http, f"{gateway.url}/x")
        return status == 503 and json.loads(body)["error"] == "cache_unavailable"

    await wait_for(denied)


def _secret(url: str) -> Any:
    from consulgw.settings import Secret

    return Secret(value=url)


async def test_gateways_sharing_redis_send_one_fill_upstream_between_them(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    service = unique("stampede")
    gateways = [await make_gateway(redis_url=_secret("redis://127.0.0.1:6379/0")) for _ in range(3)]
    origin = await origins()
    origin.default = Reply(delay=0.5, body=b'{"slow": true}')
    await serve(gateways[0], consul, service, origin, {"cache": {"backend": "redis", "ttl": "60s"}})
    for gateway in gateways[1:]:
        await wait_for(lambda gateway=gateway: service in (gateway.view().services if gateway.view() else {}))  # type: ignore[union-attr]
    answers = await asyncio.gather(*(get(http, f"{gw.url}/report") for gw in gateways for _ in range(10)))
    assert all(status == 200 and body == b'{"slow": true}' for status, _, body in answers)
    assert origin.count("/report") == 1  # one gateway took the Redis fill lock; the others waited for its entry
