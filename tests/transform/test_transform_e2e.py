"""The transform step end to end: a real gateway and a real origin; what the origin received and what the client
got are both checked."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from consulgw.server.gateway import Gateway
from consulgw.settings import ClientLimits
from tests.policy_e2e.conftest import metric_value
from tests.support.origin import Origin, Reply
from tests.transform.conftest import Consul, serve, wait_for

MakeGateway = Callable[..., Awaitable[Gateway]]
Origins = Callable[..., Awaitable[Origin]]

DOCUMENT = {
    "id": 7,
    "internal": {"cost": 3},
    "ts": "2024-06-01",
    "items": [{"name": "a", "secret": "s1", "price": 1}, {"name": "b", "secret": "s2", "price": 2}],
    "user": {"email": "ann@example.com", "name": "Ann"},
}


async def send(
    http: aiohttp.ClientSession,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.request(method, url, headers=headers or {}, data=data) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def transformed(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, transform: dict[str, Any], **policy: Any
) -> tuple[Gateway, Origin]:
    gateway = await make_gateway()
    origin = await origins()
    await serve(gateway, consul, "api", origin, {"transform": transform, **policy})
    return gateway, origin


# -- request side ------------------------------------------------------------------------------------------------


async def test_request_headers_query_and_path_prefix(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    transform = {
        "request": {
            "headers": {
                "remove": ["X-Debug"],
                "rename": {"X-Old-Tenant": "X-Tenant"},
                "set": {"X-Source": "gateway", "X-Trace": "{request_id}"},
                "add": {"X-Lang": "{query.lang}"},
            },
            "query": {
                "remove": ["trace"],
                "rename": {"q": "query"},
                "set": {"v": "2"},
                "add": {"from": "{header.x-client}"},
            },
            "path_prefix": {"from": "/v1", "to": "/v2"},
        }
    }
    gateway, origin = await transformed(make_gateway, consul, origins, transform)
    headers = {"X-Debug": "1", "X-Old-Tenant": "acme", "X-Client": "web app", "X-Request-ID": "req-7"}
    status, _, _ = await send(http, f"{gateway.url}/v1/items?q=a%20b&trace=on&v=1&lang=fr", headers=headers)
    assert status == 200
    seen = origin.requests[-1]
    assert seen.path == "/v2/items?query=a%20b&lang=fr&v=2&from=web%20app"
    assert "x-debug" not in seen.headers
    assert "x-old-tenant" not in seen.headers
    assert seen.headers["x-tenant"] == "acme"
    assert seen.headers["x-source"] == "gateway"
    assert seen.headers["x-trace"] == "req-7"
    assert seen.headers["x-lang"] == "fr"
    # A path outside the prefix is left alone, and a placeholder without a value skips its edit.
    await send(http, f"{gateway.url}/v10/items")
    seen = origin.requests[-1]
    assert seen.path == "/v10/items?v=2"
    assert "x-lang" not in seen.headers


async def test_request_json_remove_rename_and_set_with_placeholders(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    digest = hashlib.sha256(b"alice-key-0001").hexdigest()
    await consul.kv_put("consulgw/consumers/alice", json.dumps({"api_key_sha256": [digest]}))
    transform = {
        "request": {
            "json": {
                "remove": ["debug", "items[*].internal"],
                "rename": {"userId": "user_id", "items[*].qty": "quantity"},
                "set": {"source": "gateway", "tenant": "{consumer}", "meta.request": "{request_id}", "flags": [1, 2]},
            }
        }
    }
    gateway, origin = await transformed(make_gateway, consul, origins, transform, auth={"type": "api_key"})
    await wait_for(lambda: "alice" in gateway.view().book.consumers)  # type: ignore[union-attr]
    body = {"userId": 5, "debug": True, "items": [{"qty": 1, "internal": "x"}, {"qty": 2}]}
    status, _, _ = await send(
        http,
        f"{gateway.url}/orders",
        method="POST",
        headers={"X-API-Key": "alice-key-0001", "Content-Type": "application/json", "X-Request-ID": "r-1"},
        data=json.dumps(body).encode(),
    )
    assert status == 200
    seen = origin.requests[-1]
    assert json.loads(seen.body) == {
        "user_id": 5,
        "items": [{"quantity": 1}, {"quantity": 2}],
        "source": "gateway",
        "tenant": "alice",
        "meta": {"request": "r-1"},
        "flags": [1, 2],
    }
    assert seen.headers["content-length"] == str(len(seen.body))


async def test_a_request_body_that_is_not_json_or_too_large_passes_or_fails(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    transform: dict[str, Any] = {"request": {"json": {"remove": ["x"]}}, "max_body_bytes": 1000}
    gateway, origin = await transformed(make_gateway, consul, origins, transform)
    json_type = {"Content-Type": "application/json"}
    big = json.dumps({"x": "y" * 5000}).encode()

    async def chunks() -> Any:  # a chunked body: the cap is found while reading
        for start in range(0, len(big), 700):
            yield big[start : start + 700]

    for data in (b"{not json", big):
        status, _, _ = await send(http, f"{gateway.url}/in", method="POST", headers=json_type, data=data)
        assert status == 200
        assert origin.requests[-1].body == data  # untouched
    async with http.post(f"{gateway.url}/in", headers=json_type, data=chunks()) as resp:
        assert resp.status == 200
    assert origin.requests[-1].body == big
    await serve(gateway, consul, "api", origin, {"transform": {**transform, "on_error": "fail"}})
    before = origin.count()
    status, _, body = await send(http, f"{gateway.url}/in", method="POST", headers=json_type, data=b"{not json")
    assert (status, json.loads(body)["error"]) == (400, "bad_request")
    status, _, body = await send(http, f"{gateway.url}/in", method="POST", headers=json_type, data=big)
    assert (status, json.loads(body)["error"]) == (413, "payload_too_large")
    async with http.post(f"{gateway.url}/in", headers=json_type, data=chunks()) as resp:
        assert resp.status == 413
    assert origin.count() == before


async def test_expect_100_continue_is_answered_before_a_body_to_transform_is_read(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway, origin = await transformed(make_gateway, consul, origins, {"request": {"json": {"set": {"a": 1}}}})
    async with http.post(
        f"{gateway.url}/x", data=b'{"b": 2}', headers={"Content-Type": "application/json"}, expect100=True
    ) as resp:
        assert resp.status == 200
    assert json.loads(origin.requests[-1].body) == {"b": 2, "a": 1}


async def test_a_client_that_trickles_a_body_to_transform_gets_408_like_any_other(
    make_gateway: MakeGateway, consul: Consul, origins: Origins
) -> None:
    """The transform reads the body itself, under the same client body limits as the forwarder (408, nothing sent)."""
    gateway = await make_gateway(clients=ClientLimits(body_timeout=1.0, body_min_rate=1000))
    origin = await origins()
    await serve(gateway, consul, "api", origin, {"transform": {"request": {"json": {"set": {"a": 1}}}}})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    answer = asyncio.create_task(reader.read())
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        for _ in range(40):  # a byte every 0.2 s: far below 1,000 bytes/s, never silent for 1 s
            if answer.done():
                break
            writer.write(b" ")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.2)
        got = await asyncio.wait_for(answer, 10)
    finally:
        writer.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert origin.requests == []


# -- response side -----------------------------------------------------------------------------------------------

RESPONSE = {
    "response": {
        "json": {
            "remove": ["internal", "items[*].secret"],
            "rename": {"ts": "timestamp", "items[*].price": "cost"},
            "set": {"source": "gateway", "user.verified": True, "request": "{request_id}"},
        }
    }
}
RESPONSE_RESULT = {
    "id": 7,
    "timestamp": "2024-06-01",
    "items": [{"name": "a", "cost": 1}, {"name": "b", "cost": 2}],
    "user": {"email": "ann@example.com", "name": "Ann", "verified": True},
    "source": "gateway",
    "request": "rq-1",
}


async def test_response_json_remove_rename_set_fixes_length_and_weakens_the_etag(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway, origin = await transformed(make_gateway, consul, origins, RESPONSE)
    origin.default = Reply(body=json.dumps(DOCUMENT).encode(), etag='"abc"')
    status, headers, body = await send(http, f"{gateway.url}/doc", headers={"X-Request-ID": "rq-1"})
    assert status == 200
    assert json.loads(body) == RESPONSE_RESULT
    assert headers["Content-Length"] == str(len(body))
    assert headers["ETag"] == 'W/"abc"'
    assert origin.requests[-1].headers["accept-encoding"] == "identity"
    applied = await metric_value(
        http, gateway.admin_url, "consulgw_transforms_total", service="api", direction="response", outcome="applied"
    )
    assert applied == 1


async def test_response_allow_keeps_only_the_listed_paths(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    transform = {"response": {"json": {"allow": ["id", "items[*].name", "user.name"]}}}
    gateway, origin = await transformed(make_gateway, consul, origins, transform)
    origin.default = Reply(body=json.dumps(DOCUMENT).encode())
    _, _, body = await send(http, f"{gateway.url}/doc")
    assert json.loads(body) == {"id": 7, "items": [{"name": "a"}, {"name": "b"}], "user": {"name": "Ann"}}


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_a_gzip_capable_client_still_gets_a_correct_transformed_body(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession, chunked: bool
) -> None:
    gateway, origin = await transformed(make_gateway, consul, origins, RESPONSE)
    origin.default = Reply(body=json.dumps(DOCUMENT).encode(), gzip="if_accepted", chunked=chunked)
    status, headers, body = await send(
        http, f"{gateway.url}/doc", headers={"Accept-Encoding": "gzip, deflate, br", "X-Request-ID": "rq-1"}
    )
    assert status == 200
    assert "Content-Encoding" not in headers
    assert json.loads(body) == RESPONSE_RESULT


async def test_an_upstream_that_encodes_anyway_passes_untouched_and_readable(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway, origin = await transformed(make_gateway, consul, origins, RESPONSE)
    origin.default = Reply(body=json.dumps(DOCUMENT).encode(), gzip="always")
    status, headers, body = await send(http, f"{gateway.url}/doc", headers={"Accept-Encoding": "gzip"})
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    assert json.loads(gzip.decompress(body)) == DOCUMENT


async def test_a_non_json_answer_passes_untouched_or_fails_with_502(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway, origin = await transformed(make_gateway, consul, origins, RESPONSE)
    origin.replies["/page"] = Reply(body=b"<html>internal</html>", content_type="text/html")
    origin.replies["/broken"] = Reply(body=b'{"internal": ', content_type="application/json")
    origin.replies["/big"] = Reply(body=json.dumps({"internal": "x" * 300_000}).encode(), chunked=True)
    for path, expected in (("/page", b"<html>internal</html>"), ("/broken", b'{"internal": ')):
        status, _, body = await send(http, f"{gateway.url}{path}")
        assert (status, body) == (200, expected)
    status, _, body = await send(http, f"{gateway.url}/big")  # under the default cap of 1 MiB: transformed
    assert status == 200
    assert "internal" not in json.loads(body)
    await serve(
        gateway, consul, "api", origin, {"transform": {**RESPONSE, "on_error": "fail", "max_body_bytes": 100_000}}
    )
    for path in ("/page", "/broken", "/big"):
        status, _, body = await send(http, f"{gateway.url}{path}")
        assert (status, json.loads(body)["error"]) == (502, "transform_failed"), path


async def test_a_large_answer_passes_untouched_with_pass(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    gateway, origin = await transformed(make_gateway, consul, origins, {**RESPONSE, "max_body_bytes": 100_000})
    big = json.dumps({"internal": "x" * 300_000, "ts": 1}).encode()
    origin.replies["/chunked"] = Reply(body=big, chunked=True)
    origin.replies["/sized"] = Reply(body=big)
    for path in ("/chunked", "/sized"):
        status, _, body = await send(http, f"{gateway.url}{path}")
        assert (status, body) == (200, big), path


async def test_errors_and_other_statuses_are_not_transformed(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    transform = {"response": {"json": {"remove": ["internal"]}, "statuses": [200]}}
    gateway, origin = await transformed(make_gateway, consul, origins, transform)
    origin.replies["/created"] = Reply(status=201, body=b'{"internal": 1}')
    _, _, body = await send(http, f"{gateway.url}/created")
    assert json.loads(body) == {"internal": 1}
    await origin.stop()
    status, _, body = await send(http, f"{gateway.url}/down")
    assert status == 502
    assert set(json.loads(body)) == {"error", "message", "request_id"}


async def test_the_cache_stores_the_transformed_answer(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    transform = {"response": {"json": {"remove": ["internal", "items[*].secret"], "set": {"lang": "{query.lang}"}}}}
    gateway, origin = await transformed(make_gateway, consul, origins, transform, cache={"ttl": "60s"})
    origin.default = Reply(body=json.dumps(DOCUMENT).encode())
    expected = {k: v for k, v in DOCUMENT.items() if k != "internal"}
    expected["items"] = [{"name": "a", "price": 1}, {"name": "b", "price": 2}]
    for lang in ("en", "fr"):
        _, _, first = await send(http, f"{gateway.url}/doc?lang={lang}")
        assert json.loads(first) == {**expected, "lang": lang}

        async def hit(lang: str = lang) -> bool:
            _, answer_headers, body = await send(http, f"{gateway.url}/doc?lang={lang}")
            assert json.loads(body) == {**expected, "lang": lang}
            return answer_headers["Cache-Status"].startswith("consulgw; hit")

        await wait_for(hit)
    assert origin.count() == 2  # one per query (the key has the whole query)


async def test_a_body_the_transform_reads_is_held_to_the_service_s_max_body_bytes(
    make_gateway: MakeGateway, consul: Consul, origins: Origins, http: aiohttp.ClientSession
) -> None:
    transform = {"request": {"json": {"set": {"seen": True}}}, "max_body_bytes": 1000}
    gateway, origin = await transformed(make_gateway, consul, origins, transform, max_body_bytes=100)
    json_type = {"Content-Type": "application/json"}

    def chunked(data: bytes) -> Any:
        async def chunks() -> Any:
            for start in range(0, len(data), 30):
                yield data[start : start + 30]

        return chunks()

    async with http.post(f"{gateway.url}/in", headers=json_type, data=chunked(b'{"a": "' + b"x" * 500 + b'"}')) as resp:
        assert resp.status == 413
    assert origin.count() == 0
    async with http.post(f"{gateway.url}/in", headers=json_type, data=chunked(b'{"a": 1}')) as resp:
        assert resp.status == 200
    assert json.loads(origin.requests[-1].body) == {"a": 1, "seen": True}
    # A body under the service's limit but over the transform's cap streams on untouched, still counted.
    await serve(
        gateway, consul, "api", origin, {"transform": {**transform, "max_body_bytes": 20}, "max_body_bytes": 100}
    )
    body = b'{"a": "' + b"y" * 40 + b'"}'
    async with http.post(f"{gateway.url}/in", headers=json_type, data=chunked(body)) as resp:
        assert resp.status == 200
    assert origin.requests[-1].body == body
    async with http.post(f"{gateway.url}/in", headers=json_type, data=chunked(body * 3)) as resp:
        assert resp.status == 413
