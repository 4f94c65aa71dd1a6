"""The policy stages of one service's pipeline, built once per (service, effective policy).

``build_stages(policy, deps)`` returns them in the order they run::

    CORS -> body limit -> auth -> rate limit -> header transforms -> cache -> transform -> max in flight
    -> (target selection, forwarder)

CORS first, so preflights are answered without credentials and every later error carries the CORS headers; the
body limit before auth, so an oversized upload is refused before any key lookup; rate limiting after auth, so a
limit keyed by consumer knows the consumer; header transforms after those, so nothing a client sends can change what
the earlier stages decided. The cache comes after every step that decides who may have an answer and which
response edits it gets (a hit skips only what follows it), and before the transform, so it stores transformed
answers. The in-flight limit comes last, so only requests that will really be sent count (a cache hit does not). A
stage whose policy section is absent is left out.
"""

from __future__ import annotations

from consulgw.pipeline.chain import Stage
from consulgw.pipeline.stages.auth import AuthStage
from consulgw.pipeline.stages.body_limit import BodyLimitStage
from consulgw.pipeline.stages.cache import CacheStage
from consulgw.pipeline.stages.cors import CorsStage
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.pipeline.stages.headers import HeaderTransformStage
from consulgw.pipeline.stages.inflight import InFlightLimitStage
from consulgw.pipeline.stages.ratelimit import RateLimitStage
from consulgw.pipeline.stages.transform import TransformStage
from consulgw.policy.model import ServicePolicy

__all__ = ["StageDeps", "build_stages"]


def build_stages(policy: ServicePolicy, deps: StageDeps) -> tuple[Stage, ...]:
    stages: list[Stage] = []
    if policy.cors is not None:
        stages.append(CorsStage.from_policy(policy.cors))
    if policy.max_body_bytes is not None:
        stages.append(BodyLimitStage.from_policy(policy.max_body_bytes))
    if policy.auth is not None:
        stages.append(AuthStage.from_policy(policy.auth, deps))
    if policy.rate_limit is not None:
        stages.append(RateLimitStage.from_policy(policy.rate_limit, deps))
    headers = HeaderTransformStage.from_policy(policy.headers)
    if headers.active:
        stages.append(headers)
    if policy.cache is not None:
        wait = policy.timeouts.connect + policy.timeouts.read
        cache = CacheStage.from_policy(policy.cache, deps, wait=wait)
        if cache is not None:
            stages.append(cache)
    if policy.transform is not None:
        stages.append(TransformStage.from_policy(policy.transform, deps, limit=policy.max_body_bytes))
    if policy.max_in_flight is not None:
        stages.append(InFlightLimitStage(policy.max_in_flight, deps.in_flight))
    return tuple(stages)
