"""build_stages: which stages a policy gets, in which order, and the whole chain on a real server."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consulgw.auth.jwks import JwksCache
from consulgw.clock import SystemClock
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.stages import StageDeps, build_stages
from consulgw.pipeline.stages.auth import AuthStage
from consulgw.pipeline.stages.body_limit import BodyLimitStage
from consulgw.pipeline.stages.cors import CorsStage
from consulgw.pipeline.stages.headers import HeaderTransformStage
from consulgw.pipeline.stages.ratelimit import RateLimitStage
from consulgw.policy.book import build_policy_book
from consulgw.policy.consumers import api_key_digest
from consulgw.policy.model import PolicyBook
from consulgw.policy.parse import parse_policy
from consulgw.ratelimit.local import LocalLimiter
from tests.policy.test_docs import JsonExample, json_examples
from tests.support.pipeline import ClientFactory, pipeline_app

API_KEY = "ak_test_0123456789abcdefghijklmnop"
BOOK = build_policy_book(
    {"consumers/alice": json.dumps({"api_key_sha256": [api_key_digest(API_KEY)]}).encode()}, previous=None
)


@pytest.fixture
async def deps() -> AsyncIterator[StageDeps]:
    clock = SystemClock()
    async with aiohttp.ClientSession() as http:
        book: PolicyBook = BOOK
        yield StageDeps(
            service="users",
            clock=clock,
            rng=random.Random(7),
            metrics=GatewayMetrics(),
            http=http,
            redis=None,
            consumers=lambda: book,
            jwks=JwksCache(http=http, clock=clock),
            local_limits=LocalLimiter(clock=clock),
        )


FULL: dict[str, Any] = {
    "cors": {"origins": ["https://app.example.com"], "headers": ["X-API-Key"]},
    "max_body_bytes": 100,
    "auth": {"type": "api_key"},
    "rate_limit": {"requests": 2, "per": "1m", "key": "consumer"},
    "headers": {"request": {"set": {"X-Env": "test"}}},
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({}, [], id="nothing"),
        pytest.param(FULL, [CorsStage, BodyLimitStage, AuthStage, RateLimitStage, HeaderTransformStage], id="all"),
        pytest.param({"headers": {"response": {"remove": ["Server"]}}}, [HeaderTransformStage], id="headers-only"),
        pytest.param({"max_body_bytes": 0, "auth": {"type": "basic"}}, [BodyLimitStage, AuthStage], id="two"),
    ],
)
async def test_stage_selection_and_order(deps: StageDeps, doc: dict[str, Any], expected: list[type]) -> None:
    stages = build_stages(parse_policy(doc, key="test"), deps)
    assert [type(stage) for stage in stages] == expected


async def test_whole_chain(aiohttp_client: ClientFactory, deps: StageDeps) -> None:
    client = await aiohttp_client(pipeline_app(build_stages(parse_policy(FULL, key="test"), deps)))
    origin = {"Origin": "https://app.example.com"}

    preflight = await client.options(
        "/users",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"},
    )
    assert preflight.status == 204  # answered before auth

    denied = await client.get("/users", headers=origin)
    assert denied.status == 401
    assert denied.headers["Access-Control-Allow-Origin"] == "https://app.example.com"  # the page can read the 401

    too_big = await client.post("/users", headers={**origin, "X-API-Key": API_KEY}, data=b"x" * 101)
    assert too_big.status == 413  # before auth and rate limit

    ok = await client.get("/users", headers={**origin, "X-API-Key": API_KEY})
    assert ok.status == 200
    upstream = dict((await ok.json())["upstream_headers"])
    assert upstream["X-Env"] == "test"
    assert upstream["X-Consumer-ID"] == "alice"

    limited = await client.get("/users", headers={**origin, "X-API-Key": API_KEY})
    assert limited.status == 200
    third = await client.get("/users", headers={**origin, "X-API-Key": API_KEY})
    assert third.status == 429
    assert third.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(e, id=f"line-{e.line}")
        for e in json_examples()
        if not ({"consumer", "invalid", "composite"} & set(e.marks.split()))
    ],
)
async def test_every_documented_policy_builds(deps: StageDeps, example: JsonExample) -> None:
    # whatever the parser accepts, the stages accept: no policy passes validation and then fails to build
    build_stages(parse_policy(example.text, key=f"docs/policies.md:{example.line}"), deps)
