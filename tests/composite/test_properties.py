"""Hypothesis: any composite document is a composite or a PolicyError, and a composite route on a real socket
never answers 500, whatever its services answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from consulgw.clock import SystemClock
from consulgw.composite.composer import Composer
from consulgw.errors import PolicyError
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.answer import Answer, error_answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import RequestContext
from consulgw.policy.parse import parse_composite
from consulgw.upstream.http1 import ConnectionClosed
from consulgw.upstream.spool import Spool
from tests.composite.conftest import BRIEF
from tests.support.steps import Ask, exchanges, internal_error

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOCKET = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = [
    "route", "methods", "timeout", "calls", "merge", "forward_headers", "partial_status", "max_body_bytes", "service",
    "path", "required", "default", "nest", "shallow", "GET", "/a", "/a/{sub}", "/b?x={query.x}", "{request_id}",
    "users", "1s", "auth", "cache", "a", "b", 200, 206,
]  # fmt: skip
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.sampled_from(WORDS),
)
documents = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from([w for w in WORDS if isinstance(w, str)]), st.text(max_size=5)),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)
json_bodies = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(["id", "a", "b"]), children, max_size=3)
    ),
    max_leaves=15,
).map(lambda value: json.dumps(value).encode())
answers = st.tuples(
    st.sampled_from([200, 201, 204, 404, 500, 502]),
    st.sampled_from(["application/json", "text/html", "application/x+json"]),
    st.one_of(json_bodies, st.binary(max_size=60)),
    st.sampled_from(["bytes", "spool", "broken"]),  # broken: the body stops with a closed connection
    st.booleans(),  # a gateway error (no_healthy_upstream) instead
)


@SETTINGS
@given(documents)
def test_any_composite_document_is_a_composite_or_a_policy_error(document: Any) -> None:
    with contextlib.suppress(PolicyError):
        parse_composite(json.dumps(document), key="consulgw/composites/x", name="x")


@SOCKET
@given(
    st.lists(answers, min_size=3, max_size=3), st.sampled_from(["nest", "shallow"]), st.sampled_from([16, 1_000_000])
)
def test_a_composite_never_answers_500(replies: list[tuple[int, str, bytes, str, bool]], merge: str, cap: int) -> None:
    calls = {
        "user": {"service": "users", "path": "/users/{request_id}", "required": True},
        "orders": {"service": "orders", "path": "/orders?u={query.u}", "default": {}},
        "notifications": {"service": "notifications", "path": "/n"},
    }
    document = {**BRIEF, "auth": None, "calls": calls, "merge": merge, "max_body_bytes": cap}
    composite = parse_composite(json.dumps(document), key="k", name="p")

    def backend(reply: tuple[int, str, bytes, str, bool]) -> Next:
        status, content_type, body, kind, failed = reply

        async def answer(ctx: RequestContext) -> Answer:
            if failed:
                from consulgw.errors import NoHealthyUpstream

                return error_answer(NoHealthyUpstream("none"), ctx.request_id)
            headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
            if kind == "bytes":
                return Answer(status=status, headers=headers, body=body)
            spool = Spool()
            spool.feed(body)
            if kind == "broken":
                spool.set_exception(ConnectionClosed("closed mid-body", received=True))
            else:
                spool.feed_eof()
            return Answer(status=status, headers=headers, body=spool)

        return answer

    services = ("users", "orders", "notifications")
    composer = Composer(
        composite=composite,
        backends={name: backend(reply) for name, reply in zip(services, replies, strict=True)},
        metrics=GatewayMetrics(),
        clock=SystemClock(),
    )

    async def run() -> None:
        started = time.monotonic()
        for reply in await exchanges([], composer, [Ask(path="/api/user-dashboard?u=1"), Ask(path="/x")]):
            assert not internal_error(reply), reply.body
            assert reply.status in (200, 400, 502)
            if reply.status == 200:
                assert isinstance(json.loads(reply.body), dict)
        assert time.monotonic() - started < 30

    asyncio.run(run())
