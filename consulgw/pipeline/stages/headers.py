"""Header transforms from the service's ``headers`` policy.

``request`` rules edit the request sent upstream (``ctx.with_upstream``); ``response`` rules edit the response sent to
the client (``ctx.with_response``), error responses of the forwarder included. Each side applies ``remove``, then
``set`` (replace), then ``add`` (append). Rules touching hop-by-hop headers, ``Host``, ``Content-Length`` or
``Transfer-Encoding`` are refused when the policy is parsed (consulgw.policy.parse), so none reach this stage.

The stage runs last, after auth: request rules cannot be used by a client to smuggle identity headers, and the
identity headers the auth stage sets are applied by the proxy after these edits only if the proxy chooses so.
"""

from __future__ import annotations

from dataclasses import dataclass

from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.policy.model import HeaderPolicy, HeaderRules


def rules_to_edits(rules: HeaderRules) -> HeaderEdits:
    return HeaderEdits(remove=rules.remove, set=rules.set, add=rules.add)


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderTransformStage:
    """Stateless; built once per policy by ``from_policy``."""

    upstream: HeaderEdits
    response: HeaderEdits

    @classmethod
    def from_policy(cls, policy: HeaderPolicy) -> HeaderTransformStage:
        return cls(upstream=rules_to_edits(policy.request), response=rules_to_edits(policy.response))

    @property
    def active(self) -> bool:
        return bool(self.upstream or self.response)

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        if self.upstream and self.response:
            ctx = ctx.replace(
                upstream_edits=ctx.upstream_edits.merged(self.upstream),
                response_edits=ctx.response_edits.merged(self.response),
            )
        elif self.upstream:
            ctx = ctx.with_upstream(self.upstream)
        elif self.response:
            ctx = ctx.with_response(self.response)
        return await call_next(ctx)
