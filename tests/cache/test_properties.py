"""Hypothesis: whatever a cache document says and whatever an upstream answers, the parser gives a value or a
PolicyError, the rules never raise, and the cache step on a real socket never answers 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from consulgw.cache import control
from consulgw.cache.keys import normalize_accept_encoding, normalize_query
from consulgw.errors import PolicyError
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.cache import CacheStage
from consulgw.policy.model import CachePolicy
from consulgw.policy.parse import parse_policy
from tests.support.steps import Ask, exchanges, internal_error, stage_deps

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOCKET = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = [
    "backend", "memory", "redis", "mode", "rfc9111", "override", "ttl", "methods", "GET", "HEAD", "statuses", "key",
    "query", "all", "none", "headers", "per_consumer", "max_body_bytes", "stale_while_revalidate", "stale_if_error",
    "on_backend_error", "bypass", "deny", "10s", "0s", "-1s", "Accept-Language", 200, 206, 404,
]  # fmt: skip
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(WORDS),
)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from([w for w in WORDS if isinstance(w, str)]), st.text(max_size=6)),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)
header_text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(
        [
            "max-age=0",
            "max-age=5, public",
            "no-store",
            "private",
            "s-maxage=x",
            'no-cache="a,b"',
            "must-revalidate",
            "*",
        ]
    ),
)


@SETTINGS
@given(json_values)
def test_any_cache_document_is_a_policy_or_a_policy_error(document: Any) -> None:
    try:
        policy = parse_policy({"cache": document}, key="consulgw/services/x")
    except PolicyError:
        return
    assert policy.cache is None or isinstance(policy.cache, CachePolicy)


@SETTINGS
@given(st.lists(header_text, max_size=3), st.lists(header_text, max_size=3), header_text, header_text, header_text)
def test_rules_never_raise(cache_control: list[str], vary: list[str], expires: str, age: str, etag: str) -> None:
    headers: CIMultiDict[str] = CIMultiDict({"Expires": expires, "Age": age, "ETag": etag, "Date": expires})
    facts = control.ResponseFacts.of(headers, cache_control, vary)
    for mode in ("rfc9111", "override"):
        assert control.lifetime(facts, mode=mode, ttl=60.0) >= 0  # type: ignore[arg-type]
        control.refusal(
            status=200,
            statuses=frozenset({200}),
            request=control.directives(vary),
            response=facts,
            shared_only=True,
            mode=mode,  # type: ignore[arg-type]
        )
    control.request_wants_validation(control.directives(cache_control))
    control.etag_matches(etag, expires)
    control.not_modified_since(expires, age)
    normalize_accept_encoding(etag)
    normalize_query(etag, ("a",))


@SOCKET
@given(
    status=st.sampled_from([200, 203, 204, 301, 304, 404, 410, 500]),
    cache_control=header_text,
    vary=header_text,
    etag=header_text,
    age=header_text,
    body=st.binary(max_size=300),
    request_headers=st.dictionaries(
        st.sampled_from(
            ["Cache-Control", "If-None-Match", "If-Modified-Since", "Authorization", "Range", "Accept-Encoding"]
        ),
        header_text,
        max_size=3,
    ),
    mode=st.sampled_from(["rfc9111", "override"]),
)
def test_the_cache_step_never_answers_500(
    status: int,
    cache_control: str,
    vary: str,
    etag: str,
    age: str,
    body: bytes,
    request_headers: dict[str, str],
    mode: str,
) -> None:
    upstream = {"Cache-Control": cache_control, "Vary": vary, "ETag": etag, "Age": age}

    async def terminal(ctx: RequestContext) -> Answer:
        headers: CIMultiDict[str] = CIMultiDict(upstream)
        return Answer(
            status=status, headers=headers, body=b"" if status in (204, 304) else body, edits=ctx.response_edits
        )

    async def run() -> None:
        policy = parse_policy(
            json.dumps({"cache": {"mode": mode, "ttl": "30s", "stale_while_revalidate": "5s", "stale_if_error": "5s"}}),
            key="k",
        )
        assert policy.cache is not None
        async with stage_deps() as deps:
            stage = CacheStage.from_policy(policy.cache, deps)
            assert stage is not None
            asks = [Ask(method=m, path="/p?a=1", headers=request_headers) for m in ("GET", "GET", "HEAD", "POST")]
            for reply in await exchanges([stage], terminal, asks):
                assert not internal_error(reply), reply.body
                assert reply.status == status or reply.headers["Cache-Status"].startswith("consulgw; hit")
                assert reply.headers["Cache-Status"].startswith("consulgw; ")

    asyncio.run(run())
