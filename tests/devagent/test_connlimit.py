"""The per-client connection limit at the socket level: counting, refusal pacing, per-IP accounting, capacity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.devagent.connlimit import TOO_MANY_RESPONSE, ConnectionLimiter
from tests.devagent.support import Api, ManualClock

Factory = Callable[..., Awaitable[DevAgent]]


async def _answer(host: str, port: int, *, local: str | None = None) -> tuple[asyncio.StreamWriter, bytes | None]:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(local, 0) if local else None)
    try:
        data = await asyncio.wait_for(reader.read(), 0.5)
    except TimeoutError:
        return writer, None
    return writer, data


def test_limiter_counts_per_ip_and_frees() -> None:
    limiter = ConnectionLimiter(2, ManualClock())
    assert limiter.acquire("a")
    assert limiter.acquire("a")
    assert not limiter.acquire("a")
    assert limiter.acquire("b")
    limiter.release("a")
    assert limiter.acquire("a")
    assert limiter.open_connections("a") == 2
    assert limiter.refused == 1


def test_zero_means_no_limit() -> None:
    limiter = ConnectionLimiter(0, ManualClock())
    assert all(limiter.acquire("a") for _ in range(10_000))


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be >= 0"):
        ConnectionLimiter(-1, ManualClock())


def test_refusal_answers_are_paced_10_per_second_burst_100() -> None:
    clock = ManualClock()
    limiter = ConnectionLimiter(1, clock)
    assert [limiter.may_answer_refusal() for _ in range(101)].count(True) == 100
    clock.now += 0.1
    assert limiter.may_answer_refusal()
    assert not limiter.may_answer_refusal()
    clock.now += 100.0
    assert [limiter.may_answer_refusal() for _ in range(101)].count(True) == 100


async def test_default_limit_is_consuls_200(dev_agent: DevAgent) -> None:
    assert dev_agent.http_max_conns_per_client == 200


async def test_refused_connection_gets_the_exact_answer_and_is_closed(dev_agent_factory: Factory) -> None:
    agent = await dev_agent_factory(http_max_conns_per_client=2)
    writers = []
    for _ in range(2):
        writer, data = await _answer("127.0.0.1", agent.port)
        assert data is None
        writers.append(writer)
    refused, data = await _answer("127.0.0.1", agent.port)
    assert data == TOO_MANY_RESPONSE  # then EOF: read() returned, the agent closed the connection
    refused.close()
    assert agent.open_connections("127.0.0.1") == 2
    assert agent.connections_refused == 1
    for writer in writers:
        writer.close()
        await writer.wait_closed()
    deadline = time.monotonic() + 10
    while agent.open_connections("127.0.0.1") and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to await
        await asyncio.sleep(0.02)
    assert agent.open_connections("127.0.0.1") == 0


async def test_each_client_ip_has_its_own_budget(dev_agent_factory: Factory) -> None:
    agent = await dev_agent_factory(http_max_conns_per_client=1)
    first, data = await _answer("127.0.0.1", agent.port, local="127.0.0.1")
    assert data is None
    other, data = await _answer("127.0.0.1", agent.port, local="127.0.0.2")
    assert data is None  # another loopback address is another client
    third, data = await _answer("127.0.0.1", agent.port, local="127.0.0.1")
    assert data == TOO_MANY_RESPONSE
    assert agent.open_connections("127.0.0.2") == 1
    for writer in (first, other, third):
        writer.close()


async def test_a_keep_alive_connection_counts_once(dev_agent_factory: Factory) -> None:
    agent = await dev_agent_factory(http_max_conns_per_client=1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        api = Api(agent.url, session)
        for _ in range(20):
            assert (await api.get("/v1/status/leader")).status == 200
        assert agent.open_connections("127.0.0.1") == 1


async def test_an_answer_in_flight_is_not_cut_by_the_limit(dev_agent_factory: Factory) -> None:
    """A blocking query holding one of the two connections still completes; the third connection is refused."""
    agent = await dev_agent_factory(http_max_conns_per_client=2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        api = Api(agent.url, session)
        index = (await api.get("/v1/kv/k")).index
        parked = asyncio.create_task(api.get("/v1/kv/k", {"index": str(index), "wait": "10s"}))
        await asyncio.sleep(0.2)
        held, data = await _answer("127.0.0.1", agent.port)
        assert data is None
        refused, data = await _answer("127.0.0.1", agent.port)
        assert data == TOO_MANY_RESPONSE
        held.close()
        refused.close()
        await asyncio.sleep(0.1)
        assert (await api.call("PUT", "/v1/kv/k", data=b"v")).status == 200
        assert (await asyncio.wait_for(parked, 10)).status == 200


@pytest.mark.slow
async def test_a_thousand_parked_blocking_queries_with_the_limit_raised(dev_agent_factory: Factory) -> None:
    """The dev agent's capacity holds: 1,000 parked queries from one client, all woken by one write."""
    agent = await dev_agent_factory(http_max_conns_per_client=2000)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        api = Api(agent.url, session)
        await api.call("PUT", "/v1/kv/hot", data=b"0")
        index = (await api.get("/v1/kv/hot")).index
        parked = [asyncio.create_task(api.get("/v1/kv/hot", {"index": str(index), "wait": "60s"})) for _ in range(1000)]
        deadline = time.monotonic() + 60
        while agent.open_connections("127.0.0.1") < 1000 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert agent.open_connections("127.0.0.1") >= 1000
        assert not any(p.done() for p in parked)
        await api.call("PUT", "/v1/kv/hot", data=b"1")
        replies = await asyncio.wait_for(asyncio.gather(*parked), 60)
    assert {r.status for r in replies} == {200}
    assert agent.connections_refused == 0
