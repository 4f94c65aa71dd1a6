"""The closed placeholder set, resolved for one request (the policy parser checked the names):

* ``{sub}``: the verified subject, as the auth step forwards it in ``X-User-ID`` (JWT ``sub``, introspection ``sub``);
* ``{consumer}``: the verified consumer (``ctx.consumer``: the API-key or Basic consumer, the JWT subject);
* ``{request_id}``: the request's id;
* ``{query.<name>}``: the first value of that parameter of the client's query (decoded);
* ``{header.<name>}``: the client's header (never a credential or a gateway-set header: the parser refuses those).

A placeholder whose value the request does not have resolves to None; each user decides what that means (a
composite's call cannot be made, a transform's edit is skipped). In paths, values are percent-encoded whole
(``/`` too), and ``.``/``..`` are encoded so a value can never step out of its path segment.
"""

from __future__ import annotations

import urllib.parse

from consulgw.model.http import USER_ID_HEADER
from consulgw.pipeline.context import RequestContext
from consulgw.policy.model import PathTemplate, Placeholder, Text


def resolve(placeholder: Placeholder, ctx: RequestContext) -> str | None:
    kind = placeholder.kind
    if kind == "request_id":
        return ctx.request_id
    if kind == "consumer":
        return ctx.consumer
    if kind == "sub":
        subject = None
        for name, value in ctx.upstream_edits.set:
            if name.lower() == USER_ID_HEADER.lower():
                subject = value
        return subject
    if kind == "query":
        for name, value in urllib.parse.parse_qsl(ctx.request.query_string, keep_blank_values=True):
            if name == placeholder.name:
                return value
        return None
    return ctx.request.headers.get(placeholder.name)


def text(value: Text, ctx: RequestContext) -> str | None:
    return value if isinstance(value, str) else resolve(value, ctx)


def encode_segment(value: str) -> str:
    """A value as one percent-encoded path or query component."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return urllib.parse.quote(value, safe="")


def render(template: PathTemplate, ctx: RequestContext) -> str | Placeholder:
    """The request-target, or the first placeholder that has no value for this request."""
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = resolve(part, ctx)
        if value is None:
            return part
        out.append(encode_segment(value))
    return "".join(out)
