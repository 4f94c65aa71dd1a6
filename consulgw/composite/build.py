"""Compiling composites when the view is built: each composite's chain is its own policy steps (CORS, auth, rate
limit, header rules, cache) in front of a :class:`~consulgw.composite.composer.Composer`, whose calls go through one
*backend* per target service: that service's request header rules, target selection and forwarder, built with the
service's current policy by the gateway's ``pipeline`` factory.

A composite is rebuilt only when its document changed or a target service's policy changed (or the service
appeared or left); otherwise the previous entry is reused as it is, like a service's chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from consulgw.clock import Clock
from consulgw.composite.composer import Composer
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.chain import Next, Stage, build_chain
from consulgw.pipeline.stages import build_stages
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.pipeline.stages.headers import HeaderTransformStage
from consulgw.policy.model import CompositePolicy, HeaderPolicy, ServicePolicy

Pipeline = Callable[[str, ServicePolicy, tuple[Stage, ...]], Next]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompositeEntry:
    """Everything compiled for one composite (the proxy reads ``chain``, like a service's)."""

    policy: CompositePolicy
    chain: Next
    targets: Mapping[str, ServicePolicy | None]  # the target services' policies the chain was built with

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def service_policy(self) -> ServicePolicy:
        """The composite's own policy sections (auth, limits, CORS, cache, tracing...)."""
        return self.policy.policy


def build_composites(
    composites: Mapping[str, CompositePolicy],
    previous: Mapping[str, CompositeEntry],
    *,
    policy_of: Callable[[str], ServicePolicy | None],
    pipeline: Pipeline,
    stage_deps: Callable[[str], StageDeps],
    metrics: GatewayMetrics,
    clock: Clock,
) -> dict[str, CompositeEntry]:
    """Entries keyed by the composite's label (``composite:<name>``, the route table's service name)."""
    backends: dict[str, Next] = {}  # one backend per target service and build, shared by composites

    def backend(service: str, policy: ServicePolicy) -> Next:
        made = backends.get(service)
        if made is None:
            made = backends[service] = pipeline(service, policy, _backend_stages(policy))
        return made

    entries: dict[str, CompositeEntry] = {}
    for _, composite in sorted(composites.items()):
        targets = {call.service: policy_of(call.service) for call in composite.calls}
        old = previous.get(composite.label)
        if old is not None and old.policy == composite and _same_targets(old.targets, targets):
            entries[composite.label] = old
            continue
        chain = build_chain(
            build_stages(composite.policy, stage_deps(composite.label)),
            Composer(
                composite=composite,
                backends={s: (backend(s, p) if p is not None else None) for s, p in targets.items()},
                metrics=metrics,
                clock=clock,
            ),
        )
        entries[composite.label] = CompositeEntry(policy=composite, chain=chain, targets=targets)
    return entries


def _backend_stages(policy: ServicePolicy) -> tuple[Stage, ...]:
    """The steps of a service that a composite's call goes through besides target selection: its request header
    rules (its client-facing steps and response rules do not apply: the composite answers the client)."""
    headers = HeaderTransformStage.from_policy(HeaderPolicy(request=policy.headers.request))
    return (headers,) if headers.active else ()


def _same_targets(old: Mapping[str, ServicePolicy | None], new: Mapping[str, ServicePolicy | None]) -> bool:
    if old.keys() != new.keys():
        return False
    return all(old[name] is new[name] or old[name] == new[name] for name in new)
