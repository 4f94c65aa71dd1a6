"""The traffic sections of a service's policy as the admin API shows them (subsets, split, sticky, slow start,
mirror): ``traffic_summary`` for the policy document, ``traffic_facts`` for one line per section plus the subsets'
pools right now. Nothing in these sections is secret."""

from __future__ import annotations

import dataclasses
from typing import Any

from consulgw.policy.model import FailoverPolicy, ServicePolicy, SplitMatch, Subset
from consulgw.traffic.failover import FailoverBoard
from consulgw.upstream.pool import UpstreamPools


def traffic_summary(policy: ServicePolicy) -> dict[str, Any]:
    """The traffic sections of ``policy`` as JSON (nothing in them is secret)."""
    split, sticky, mirror = policy.split, policy.sticky, policy.mirror
    return {
        "lb_key": str(policy.lb_key) if policy.lb_key is not None else None,
        "subsets": {s.name: _subset_json(s) for s in policy.subsets},
        "split": None
        if split is None
        else {
            "default": split.default,
            "weights": dict(split.weights),
            "match": [_match_json(rule) for rule in split.match],
            "hash": str(split.hash) if split.hash is not None else "none",
            "on_empty": split.on_empty,
            "response_header": split.response_header,
        },
        "sticky": None if sticky is None else dataclasses.asdict(sticky),
        "slow_start": None if policy.slow_start is None else {"window": policy.slow_start.window},
        "mirror": None
        if mirror is None
        else {
            "to": [{"target": t.label, "percent": t.percent} for t in mirror.to],
            "methods": sorted(mirror.methods),
            "max_body_bytes": mirror.max_body_bytes,
            "timeout": mirror.timeout,
            "max_in_flight": mirror.max_in_flight,
            "headers": {"set": dict(mirror.headers.set), "remove": list(mirror.headers.remove)},
        },
        "failover": None if policy.failover is None else dataclasses.asdict(policy.failover),
    }


def _subset_json(subset: Subset) -> dict[str, Any]:
    if subset.service is not None:
        return {"service": subset.service}
    return {
        "meta": {key: list(values) for key, values in subset.meta},
        "tags": [*subset.tags, *(f"!{tag}" for tag in subset.without_tags)],
    }


def _match_json(rule: SplitMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"to": rule.to}
    for key, pairs in (("header", rule.headers), ("cookie", rule.cookies), ("query", rule.query)):
        if pairs:
            out[key] = {name: list(values) for name, values in pairs}
    if rule.consumers:
        out["consumer"] = sorted(rule.consumers)
    return out


def traffic_facts(
    service: str, policy: ServicePolicy, pools: UpstreamPools, failover: FailoverBoard | None = None
) -> dict[str, Any]:
    """One line per traffic section in force, for people (the dashboard shows them), plus ``subset_pools``: how
    many instances each subset's pool holds right now (``in_pool``: taking traffic; ``draining``: healthy at weight
    0, still serving sticky sessions), and with a failover policy ``datacenter`` (which one serves the service now)
    and ``datacenter_pools`` (each datacenter's pool)."""
    facts: dict[str, Any] = {}
    if policy.subsets:
        counts: dict[str, dict[str, Any]] = {}
        parts = []
        for subset in policy.subsets:
            pool = pools.pool(subset.service) if subset.service is not None else pools.subset(service, subset.name)
            in_pool = len(pool) if pool is not None else 0
            draining = len(pool.draining) if pool is not None else 0
            counts[subset.name] = {"in_pool": in_pool, "draining": draining, "service": subset.service}
            parts.append(f"{subset.name} {in_pool} in pool ({_selector_text(subset)})")
        facts["subsets"] = " · ".join(parts)
        facts["subset_pools"] = counts
    split = policy.split
    if split is not None:
        parts = [f"{name} {weight}" for name, weight in split.weights] or [f"{split.default} (no weights)"]
        parts += [f"{_rule_text(rule)} → {rule.to}" for rule in split.match]
        parts.append(f"hash {split.hash if split.hash is not None else 'none'}")
        parts.append(f"default {split.default}, on_empty {split.on_empty}")
        facts["split"] = " · ".join(parts)
    sticky = policy.sticky
    if sticky is not None:
        drain = "keeps draining sessions" if sticky.keep_draining else "re-pins draining sessions"
        facts["sticky"] = f"cookie {sticky.cookie} · on_unavailable {sticky.on_unavailable} · {drain}"
    if policy.slow_start is not None:
        facts["slow_start"] = f"window {policy.slow_start.window:g}s"
    mirror = policy.mirror
    if mirror is not None:
        targets = " · ".join(f"{t.label} {t.percent:g}%" for t in mirror.to)
        facts["mirror"] = (
            f"{targets} · {', '.join(sorted(mirror.methods))} · bodies up to {mirror.max_body_bytes} bytes · "
            f"timeout {mirror.timeout:g}s · at most {mirror.max_in_flight} in flight"
        )
    if policy.failover is not None:
        facts.update(_failover_facts(service, policy.failover, pools, failover))
    return facts


def _failover_facts(
    service: str, policy: FailoverPolicy, pools: UpstreamPools, board: FailoverBoard | None
) -> dict[str, Any]:
    pool = pools.pool(service)
    local = (pool.datacenter if pool is not None else "") or "local"
    serving = board.serving(service, policy, pool) if board is not None else ""
    counts = {local: len(pool) if pool is not None else 0}
    for dc in policy.datacenters:
        remote = pool.remote(dc) if pool is not None else None
        counts[dc] = len(remote) if remote is not None else 0
    waiting = board.state(service).local_healthy_since if board is not None else None
    parts = [f"serving {serving or local}"]
    parts += [f"{dc} {count} in pool" for dc, count in counts.items()]
    parts.append(f"min_healthy {policy.min_healthy} · failback after {policy.failback_after:g}s")
    if waiting is not None:
        parts.append(f"{local} healthy again, failing back")
    return {"failover": " · ".join(parts), "datacenter": serving or local, "datacenter_pools": counts}


def _selector_text(subset: Subset) -> str:
    if subset.service is not None:
        return f"service {subset.service}"
    bits = [f"{key}={'|'.join(values)}" for key, values in subset.meta]
    bits += list(subset.tags) + [f"!{tag}" for tag in subset.without_tags]
    return ", ".join(bits) if bits else "every instance"


def _rule_text(rule: SplitMatch) -> str:
    bits = [f"header {name}={'|'.join(values)}" for name, values in rule.headers]
    bits += [f"cookie {name}={'|'.join(values)}" for name, values in rule.cookies]
    bits += [f"query {name}={'|'.join(values)}" for name, values in rule.query]
    if rule.consumers:
        bits.append(f"consumer {'|'.join(sorted(rule.consumers))}")
    return " and ".join(bits)
