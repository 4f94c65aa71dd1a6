"""The rate-limit stage (local backend) behind a real aiohttp server: keys, consumer overrides, headers."""

from __future__ import annotations

from types import MappingProxyType

import aiohttp
import pytest

from consulgw.errors import PolicyError
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.chain import Next, Stage
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.ratelimit import RateLimitStage
from consulgw.policy.model import Consumer, ConsumerRateLimit, PolicyBook, RateLimitPolicy
from consulgw.ratelimit.local import LocalLimiter
from tests.ratelimit.support import CLIENT_IP_HEADER, FakeClock, make_deps, serve_stages


class AsConsumer:
    """Stands in for the auth stage: the consumer named in X-Test-Consumer becomes ctx.consumer."""

    async def __call__(self, ctx: RequestContext, request: object, call_next: Next) -> object:
        name = request.headers.get("X-Test-Consumer")  # type: ignore[attr-defined]
        return await call_next(ctx.replace(consumer=name) if name else ctx)


BOOK = PolicyBook(
    consumers=MappingProxyType(
        {
            "gold": Consumer(name="gold", rate_limit=ConsumerRateLimit(requests=5, per=60.0)),
            "basic": Consumer(name="basic"),
        }
    )
)


async def run(
    policy: RateLimitPolicy,
    requests: list[dict[str, str]],
    *,
    clock: FakeClock | None = None,
    limiter: LocalLimiter | None = None,
    metrics: GatewayMetrics | None = None,
    worker: tuple[int, int] = (0, 1),
) -> list[tuple[int, dict[str, str]]]:
    clock = clock or FakeClock()
    out = []
    async with aiohttp.ClientSession() as http:
        deps = make_deps(
            service="svc",
            http=http,
            clock=clock,
            book=lambda: BOOK,
            local_limits=limiter,
            metrics=metrics,
            worker_index=worker[0],
            worker_count=worker[1],
        )
        stages: tuple[Stage, ...] = (AsConsumer(), RateLimitStage.from_policy(policy, deps))  # type: ignore[assignment]
        async with serve_stages(stages) as url:
            for headers in requests:
                async with http.get(url, headers=headers) as resp:
                    out.append((resp.status, dict(resp.headers)))
    return out


async def test_exactly_n_and_headers_on_every_response() -> None:
    metrics = GatewayMetrics()
    results = await run(RateLimitPolicy(requests=5, per=10.0), [{}] * 8, metrics=metrics)
    assert [s for s, _ in results] == [200] * 5 + [429] * 3
    for status, headers in results:
        assert headers["RateLimit-Limit"] == "5"
        assert 0 <= int(headers["RateLimit-Reset"]) <= 10
        assert ("Retry-After" in headers) == (status == 429)
    assert [h["RateLimit-Remaining"] for _, h in results] == ["4", "3", "2", "1", "0", "0", "0", "0"]
    assert int(results[-1][1]["Retry-After"]) == 2  # one request refills every 2 s
    assert metrics.rate_limited.labels("svc")._value.get() == 3


async def test_refill_with_the_clock() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(clock=clock)
    policy = RateLimitPolicy(requests=2, per=2.0)
    first = await run(policy, [{}] * 3, clock=clock, limiter=limiter)
    clock.advance(1.0)
    second = await run(policy, [{}] * 2, clock=clock, limiter=limiter)  # shared limiter: a rebuild keeps counters
    assert [s for s, _ in first + second] == [200, 200, 429, 200, 429]


@pytest.mark.parametrize(
    ("policy", "requests", "statuses"),
    [
        pytest.param(
            RateLimitPolicy(requests=1, per=60.0, key="ip"),
            [{CLIENT_IP_HEADER: "10.0.0.1"}, {CLIENT_IP_HEADER: "10.0.0.2"}, {CLIENT_IP_HEADER: "10.0.0.1"}],
            [200, 200, 429],
            id="per-ip",
        ),
        pytest.param(
            RateLimitPolicy(requests=1, per=60.0, key="consumer"),
            [
                {"X-Test-Consumer": "basic", CLIENT_IP_HEADER: "10.0.0.1"},
                {"X-Test-Consumer": "basic", CLIENT_IP_HEADER: "10.0.0.2"},  # same consumer, other address
                {CLIENT_IP_HEADER: "10.0.0.1"},  # anonymous: falls back to the IP, a bucket of its own
                {CLIENT_IP_HEADER: "10.0.0.1"},
            ],
            [200, 429, 200, 429],
            id="per-consumer-with-ip-fallback",
        ),
        pytest.param(
            RateLimitPolicy(requests=1, per=60.0, key="consumer"),
            [{"X-Test-Consumer": "gold"}] * 6,
            [200] * 5 + [429],
            id="consumer-own-limit-overrides",
        ),
        pytest.param(
            RateLimitPolicy(requests=1, per=60.0, key="header:X-Tenant"),
            [{"X-Tenant": "a"}, {"X-Tenant": "b"}, {"x-tenant": "a"}, {}, {}],
            [200, 200, 429, 200, 429],
            id="per-header-with-ip-fallback",
        ),
        pytest.param(
            RateLimitPolicy(requests=2, per=60.0, burst=2),
            [{}] * 5,
            [200, 200, 200, 200, 429],
            id="burst",
        ),
    ],
)
async def test_keys(policy: RateLimitPolicy, requests: list[dict[str, str]], statuses: list[int]) -> None:
    assert [s for s, _ in await run(policy, requests)] == statuses


async def test_consumer_limit_headers_describe_its_own_quota() -> None:
    results = await run(RateLimitPolicy(requests=1, per=60.0, key="consumer"), [{"X-Test-Consumer": "gold"}])
    assert results[0][1]["RateLimit-Limit"] == "5"


async def test_worker_share() -> None:
    # Worker 1 of 3 for 10 per minute: a share of 3 at once, refilling every 18 s.
    results = await run(RateLimitPolicy(requests=10, per=60.0), [{}] * 4, worker=(1, 3))
    assert [s for s, _ in results] == [200, 200, 200, 429]
    assert results[0][1]["RateLimit-Limit"] == "3"
    assert results[-1][1]["Retry-After"] == "18"


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        pytest.param(RateLimitPolicy(requests=0, per=1.0), "requests", id="zero-requests"),
        pytest.param(RateLimitPolicy(requests=1, per=0.0), "per", id="zero-per"),
        pytest.param(RateLimitPolicy(requests=1, per=1.0, key="cookie"), r"rate_limit\.key", id="bad-key"),
        pytest.param(RateLimitPolicy(requests=1, per=1.0, key="header:"), r"rate_limit\.key", id="empty-header"),
    ],
)
async def test_invalid_policy(policy: RateLimitPolicy, match: str) -> None:
    async with aiohttp.ClientSession() as http:
        deps = make_deps(service="svc", http=http, clock=FakeClock())
        with pytest.raises(PolicyError, match=match):
            RateLimitStage.from_policy(policy, deps)
