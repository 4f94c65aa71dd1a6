"""Hypothesis: any transform document is a policy or a PolicyError; the JSON edits never raise on any document; the
transform step on a real socket never answers 500, whatever the client sends and the upstream answers."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from consulgw.errors import PolicyError
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.transform import TransformStage
from consulgw.policy import jsonpath
from consulgw.policy.parse import parse_policy
from consulgw.upstream.http1 import ConnectionClosed
from consulgw.upstream.spool import Spool
from tests.support.steps import Ask, exchanges, internal_error, stage_deps

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOCKET = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["a", "b", "items", "secret", "id", "user", "x.y", ""]
PATHS = ["a", "b", "a.b", "items[*].secret", "items[*].id", "[*].a", "user.name", "a[*][*]", "x\\.y", "items"]
WORDS = [
    "request", "response", "headers", "query", "json", "remove", "rename", "set", "add", "allow", "path_prefix",
    "from", "to", "statuses", "max_body_bytes", "on_error", "pass", "fail", "/v1", "{request_id}", "{query.q}",
    "{sub}", "X-A", *PATHS,
]  # fmt: skip

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_docs = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=25,
)
documents = st.recursive(
    st.one_of(leaves, st.sampled_from(WORDS)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(WORDS), children, max_size=5)
    ),
    max_leaves=25,
)
valid_paths = st.lists(st.sampled_from(PATHS), max_size=3, unique=True)
json_ops = st.fixed_dictionaries(
    {},
    optional={
        "remove": valid_paths,
        "rename": st.dictionaries(
            st.sampled_from([p for p in PATHS if not p.endswith("]")]), st.sampled_from(["n", "m"]), max_size=2
        ),
        "set": st.dictionaries(
            st.sampled_from([p for p in PATHS if not p.endswith("]")]),
            st.one_of(json_docs, st.just("{request_id}")),
            max_size=2,
        ),
    },
)


@SETTINGS
@given(documents)
def test_any_transform_document_is_a_policy_or_a_policy_error(document: Any) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy({"transform": document}, key="consulgw/services/x")


@SETTINGS
@given(json_docs, st.sampled_from(PATHS), st.sampled_from(PATHS), json_docs)
def test_json_edits_never_raise_and_allow_only_keeps(document: Any, first: str, second: str, value: Any) -> None:
    path, other = jsonpath.parse_path(first), jsonpath.parse_path(second)
    edited = copy.deepcopy(document)
    jsonpath.remove(edited, path)
    jsonpath.rename(edited, other, "renamed")
    if other[-1] is not None:
        edited = jsonpath.set_value(edited, other, lambda: copy.deepcopy(value))
    json.dumps(edited)
    kept = jsonpath.project(document, jsonpath.allow_tree([path, other]))
    json.dumps(kept)
    if isinstance(document, dict) and isinstance(kept, dict):
        assert set(kept) <= set(document)


@SOCKET
@given(
    request_ops=json_ops,
    response_ops=json_ops,
    on_error=st.sampled_from(["pass", "fail"]),
    cap=st.sampled_from([0, 16, 1_000_000]),
    request_body=st.one_of(json_docs.map(lambda d: json.dumps(d).encode()), st.binary(max_size=100)),
    response_body=st.one_of(json_docs.map(lambda d: json.dumps(d).encode()), st.binary(max_size=100)),
    content_type=st.sampled_from(
        ["application/json", "application/problem+json", "text/plain", "application/json; charset=utf-8"]
    ),
    encoding=st.sampled_from([None, "gzip", "identity"]),
    delivery=st.sampled_from(["bytes", "spool", "broken"]),
)
def test_the_transform_step_never_answers_500(
    request_ops: dict[str, Any],
    response_ops: dict[str, Any],
    on_error: str,
    cap: int,
    request_body: bytes,
    response_body: bytes,
    content_type: str,
    encoding: str | None,
    delivery: str,
) -> None:
    document = {
        "request": {
            "json": request_ops,
            "query": {"set": {"q": "{request_id}"}},
            "path_prefix": {"from": "/v1", "to": "/"},
        },
        "response": {"json": response_ops},
        "max_body_bytes": cap,
        "on_error": on_error,
    }
    policy = parse_policy({"transform": document}, key="k").transform
    assert policy is not None

    async def terminal(ctx: RequestContext) -> Answer:
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type, "ETag": '"e"'})
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        if delivery == "bytes":
            return Answer(status=200, headers=headers, body=response_body, edits=ctx.response_edits)
        spool = Spool()
        spool.feed(response_body)
        if delivery == "broken":  # the upstream closes the connection in the middle of the body
            spool.set_exception(ConnectionClosed("closed mid-body", received=True))
        else:
            spool.feed_eof()
        return Answer(status=200, headers=headers, body=spool, edits=ctx.response_edits)

    async def run() -> None:
        async with stage_deps() as deps:
            stage = TransformStage.from_policy(policy, deps)
            asks = [
                Ask(method="POST", path="/v1/x?a=1", headers={"Content-Type": content_type}, body=request_body),
                Ask(method="GET", path="/v1"),
            ]
            for reply in await exchanges([stage], terminal, asks):
                assert not internal_error(reply), reply.body
                assert reply.status in (200, 400, 413, 502)

    asyncio.run(run())
