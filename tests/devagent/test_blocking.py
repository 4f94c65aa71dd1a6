"""Blocking queries over real sockets (consul-api.md section 2) and the timeout rules."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.devagent.blocking import query_timeout
from tests.devagent.support import Api, NoJitter


class AlmostOne(random.Random):
    def random(self) -> float:
        return 0.999999


@pytest.mark.parametrize(
    ("wait", "low", "high"),
    [
        pytest.param(0.0, 300.0, 300.0 + 300.0 / 16, id="default-5m"),
        pytest.param(-1.0, 300.0, 300.0 + 300.0 / 16, id="negative-is-default"),
        pytest.param(1200.0, 600.0, 600.0 + 600.0 / 16, id="clamped-10m"),
        pytest.param(2.0, 2.0, 2.0 + 2.0 / 16, id="short"),
    ],
)
def test_query_timeout_clamps_and_jitters(wait: float, low: float, high: float) -> None:
    assert query_timeout(wait, NoJitter()) == low
    assert low < query_timeout(wait, AlmostOne()) < high


@pytest.fixture
async def quiet_api(dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession) -> Api:
    agent = await dev_agent_factory(rng=NoJitter())
    return Api(agent.url, session)


async def test_index_ahead_waits_the_whole_wait_then_answers_lower_index(quiet_api: Api) -> None:
    first = await quiet_api.get("/v1/catalog/services")
    started = time.monotonic()
    reply = await quiet_api.get("/v1/catalog/services", {"index": str(first.index + 1000), "wait": "300ms"})
    assert time.monotonic() - started >= 0.3
    assert reply.status == 200
    assert reply.index == first.index


async def test_missing_key_wakes_only_when_the_key_appears(quiet_api: Api) -> None:
    missing = await quiet_api.get("/v1/kv/wanted")
    assert missing.status == 404
    pending = asyncio.create_task(quiet_api.get("/v1/kv/wanted", {"index": str(missing.index), "wait": "10s"}))
    await asyncio.sleep(0.1)
    await quiet_api.call("PUT", "/v1/kv/unrelated", data=b"x")
    await asyncio.sleep(0.1)
    assert not pending.done()
    await quiet_api.call("PUT", "/v1/kv/wanted", data=b"here")
    reply = await asyncio.wait_for(pending, 5)
    assert reply.status == 200
    assert reply.json()[0]["Value"] == "aGVyZQ=="
    assert reply.index == reply.json()[0]["ModifyIndex"]


async def test_one_write_wakes_every_watcher_of_the_key(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession
) -> None:
    # 200 watchers and a writer from one IP: past Consul's default of 200 connections per client, so the agent is
    # configured the way a Consul serving that many watchers from one host has to be (limits.http_max_conns_per_client)
    agent = await dev_agent_factory(rng=NoJitter(), http_max_conns_per_client=1000)
    quiet_api = Api(agent.url, session)
    await quiet_api.call("PUT", "/v1/kv/hot", data=b"0")
    index = (await quiet_api.get("/v1/kv/hot")).index
    watchers = [
        asyncio.create_task(quiet_api.get("/v1/kv/hot", {"index": str(index), "wait": "30s"})) for _ in range(200)
    ]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in watchers)
    await quiet_api.call("PUT", "/v1/kv/hot", data=b"1")
    replies = await asyncio.wait_for(asyncio.gather(*watchers), 20)
    assert {r.index for r in replies} == {index + 1}


async def test_prefix_watch_wakes_on_delete_through_tombstone(quiet_api: Api) -> None:
    await quiet_api.call("PUT", "/v1/kv/app/a", data=b"1")
    listing = await quiet_api.get("/v1/kv/app/", {"recurse": ""})
    pending = asyncio.create_task(quiet_api.get("/v1/kv/app/", {"recurse": "", "index": str(listing.index)}))
    await asyncio.sleep(0.1)
    await quiet_api.call("DELETE", "/v1/kv/app/a")
    reply = await asyncio.wait_for(pending, 5)
    assert reply.status == 404
    assert reply.index > listing.index


async def test_health_service_wakes_on_check_status_but_not_on_identical_heartbeat(quiet_api: Api) -> None:
    await quiet_api.register({"Name": "web", "Check": {"TTL": "30s"}})
    before = await quiet_api.get("/v1/health/service/web")
    await quiet_api.put("/v1/agent/check/pass/service:web")
    after_pass = await quiet_api.get("/v1/health/service/web")
    assert after_pass.index > before.index
    pending = asyncio.create_task(
        quiet_api.get("/v1/health/service/web", {"index": str(after_pass.index), "wait": "10s"})
    )
    await asyncio.sleep(0.1)
    await quiet_api.put("/v1/agent/check/pass/service:web")  # same status, same output: no change
    await asyncio.sleep(0.1)
    assert not pending.done()
    await quiet_api.put("/v1/agent/check/warn/service:web")
    reply = await asyncio.wait_for(pending, 5)
    assert reply.index > after_pass.index
    assert reply.json()[0]["Checks"][1]["Status"] == "warning"


async def test_stop_answers_parked_queries_at_once(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession
) -> None:
    agent = await dev_agent_factory()
    api = Api(agent.url, session)
    index = (await api.get("/v1/catalog/nodes")).index
    parked = [asyncio.create_task(api.get("/v1/catalog/nodes", {"index": str(index)})) for _ in range(20)]
    await asyncio.sleep(0.2)
    await asyncio.wait_for(agent.stop(), 10)
    done = await asyncio.wait_for(asyncio.gather(*parked, return_exceptions=True), 10)
    assert len(done) == 20


@pytest.mark.parametrize(
    ("params", "text"),
    [
        pytest.param({"index": "abc"}, "Invalid index", id="bad-index"),
        pytest.param({"index": "-1"}, "Invalid index", id="negative-index"),
        pytest.param({"wait": "10"}, "Invalid wait time", id="wait-without-unit"),
        pytest.param({"stale": "", "consistent": ""}, "Cannot specify ?stale with ?consistent, conflicting semantics.",
                     id="stale-consistent"),
        pytest.param({"cached": "", "consistent": ""},
                     "Cannot specify ?cached with ?consistent, conflicting semantics.", id="cached-consistent"),
        pytest.param({"max_stale": "soon"}, 'Invalid max_stale value "soon"', id="bad-max-stale"),
    ],
)  # fmt: skip
async def test_bad_query_parameters(api: Api, params: dict[str, str], text: str) -> None:
    reply = await api.get("/v1/catalog/services", params)
    assert (reply.status, reply.text) == (400, text)


@pytest.mark.parametrize(
    ("params", "mode"),
    [
        pytest.param({}, "leader", id="default"),
        pytest.param({"stale": ""}, "stale", id="stale"),
        pytest.param({"consistent": ""}, "consistent", id="consistent"),
        pytest.param({"max_stale": "5s"}, "stale", id="max-stale"),
    ],
)
async def test_effective_consistency_header(api: Api, params: dict[str, str], mode: str) -> None:
    reply = await api.get("/v1/health/state/any", params)
    assert reply.headers["X-Consul-Effective-Consistency"] == mode
    assert reply.headers["X-Consul-Query-Backend"] == "blocking-query"
    assert reply.headers["X-Consul-KnownLeader"] == "true"
    assert reply.headers["X-Consul-LastContact"] == "0"
    assert reply.index >= 1
