"""CPU per request of the traffic steps (issue 9), in process, without sockets: the chain of one service's steps
around a terminal that answers at once, as the gateway builds it.

    .venv/bin/python bench/micro/traffic_steps.py

Rows: no traffic step (target selection only); split 90/10 (hash by a gw_split cookie the client sends);
+ sticky (the client's cookie names a live instance); + mirror 100% (the copy is handed to the dispatcher, whose
transport answers at once: the background task's own cost is included); and the same three steps for a client
without cookies (both cookies are made and set). The gateway's full request costs about 220 us of CPU
(docs/benchmarks.md); these rows are what the steps add to it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from multidict import CIMultiDict, CIMultiDictProxy

from consulgw.metrics import GatewayMetrics
from consulgw.model.snapshot import Instance
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import build_chain
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.target import SelectTarget
from consulgw.policy.parse import parse_policy
from consulgw.traffic import MirrorDispatcher, TrafficDeps, traffic_steps
from consulgw.traffic.failover import FailoverBoard
from consulgw.traffic.subsets import subset_instances
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools
from consulgw.upstream.spool import Spool
from consulgw.upstream.transport import UpstreamResponse

SERVICE = "bench"
POLICIES = {
    "split": {
        "subsets": {"stable": {"meta": {"version": "v1"}}, "canary": {"meta": {"version": "v2"}}},
        "split": {"default": "stable", "weights": {"stable": 90, "canary": 10}},
    },
}
POLICIES["split + sticky"] = {**POLICIES["split"], "sticky": {"secure": False}}
POLICIES["split + sticky + mirror"] = {
    **POLICIES["split + sticky"],
    "mirror": {"to": [{"service": "shadow"}], "max_in_flight": 10000},
}


class Request:
    """The attributes of aiohttp's BaseRequest the steps read."""

    method = "GET"
    host = "bench.example"
    path = raw_path = "/items"
    query_string = ""
    content_length = None
    body_exists = False
    content = None

    def __init__(self, cookie: str | None) -> None:
        headers = CIMultiDict({"Host": "bench.example", "User-Agent": "bench", "Accept": "*/*"})
        if cookie:
            headers["Cookie"] = cookie
        self.headers = CIMultiDictProxy(headers)


class InstantTransport:
    async def send(self, endpoint: object, request: object, timeouts: object) -> UpstreamResponse:
        spool = Spool()
        spool.feed(b"ok")
        spool.feed_eof()
        return UpstreamResponse(200, "OK", [], spool)

    async def close(self) -> None:
        return None


def instances(service: str, count: int, version: str) -> list[Instance]:
    return [
        Instance(
            id=f"node/{service}-{version}-{i}",
            service=service,
            service_id=f"{service}-{version}-{i}",
            node="node",
            address="10.0.0.1",
            port=8000 + i,
            meta={"version": version},
        )
        for i in range(count)
    ]


async def measure(name: str, chain: Callable[[RequestContext], Awaitable[Answer]], cookie: str | None) -> float:
    request = Request(cookie)

    def ctx() -> RequestContext:
        return RequestContext(
            request=request,  # type: ignore[arg-type]
            request_id="r",
            client_ip="192.0.2.1",
            service=SERVICE,
            route="bench/",
            started=0.0,
            upstream_target="/items",
        )

    for _ in range(2000):
        await chain(ctx())
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20000):
            await chain(ctx())
        await asyncio.sleep(0)  # let the mirrors run (their cost is in the loop's time)
        best = min(best, (time.perf_counter() - started) / 20000 * 1e6)
    print(f"{name:48s} {best:6.1f} us/request")
    return best


async def main() -> None:
    metrics = GatewayMetrics()
    rng = random.Random(1)
    pools = UpstreamPools(rng=rng)
    members = instances(SERVICE, 3, "v1") + instances(SERVICE, 1, "v2")
    pools.update("shadow", instances("shadow", 1, "v1"), "round_robin")
    mirrors = MirrorDispatcher(transport=InstantTransport(), metrics=metrics)

    async def send_continue(_: object) -> None:
        return None

    deps = TrafficDeps(
        pools=pools,
        breakers=BreakerBoard(clock=_Clock(), metrics=metrics),
        metrics=metrics,
        rng=rng,
        mirrors=mirrors,
        send_continue=send_continue,
        sticky_key=b"k" * 32,
        failover=FailoverBoard(_Clock()),
    )
    select = SelectTarget(pools)

    async def terminal(ctx: RequestContext) -> Answer:
        assert ctx.target is not None
        picked = ctx.target.pool.pinnable(ctx.target.prefer) if ctx.target.prefer else None
        instance = picked or ctx.target.pool.pick(ctx.client_ip)
        return Answer(status=200, instance=instance.id if instance else None, edits=ctx.response_edits)

    base = parse_policy({}, key="bench")
    pools.update(SERVICE, members, "round_robin")
    baseline = await measure("no traffic step (target selection only)", build_chain((select,), terminal), None)
    for name, doc in POLICIES.items():
        policy = parse_policy(doc, key="bench")
        pools.update(SERVICE, members, "round_robin", subsets=subset_instances(policy, members))
        chain = build_chain((*traffic_steps(SERVICE, policy, deps), select), terminal)
        first = await chain(
            RequestContext(
                request=Request(None),  # type: ignore[arg-type]
                request_id="r",
                client_ip="192.0.2.1",
                service=SERVICE,
                route="bench/",
                started=0.0,
                upstream_target="/items",
            )
        )
        first.edits.apply(first.headers)
        cookies = "; ".join(v.split(";", 1)[0] for v in first.headers.getall("Set-Cookie", []))
        cost = await measure(f"{name} (returning client)", chain, cookies)
        print(f"{'':48s} {cost - baseline:+6.1f} us over no step")
        cost = await measure(f"{name} (new client: cookies made)", chain, None)
        print(f"{'':48s} {cost - baseline:+6.1f} us over no step")
    await mirrors.close()
    del base


class _Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


if __name__ == "__main__":
    asyncio.run(main())
