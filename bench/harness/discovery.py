"""How fast Consul changes reach the route table, and what the table costs at 1, 100 and 1,000 services."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.http import Client, Consul
from harness.jsonlog import JsonLog, epoch
from harness.procs import Supervisor, rss_kib
from harness.stack import Gateway, start_gateway


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure reported was actually observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct * len(ordered) / 100)))
    return ordered[rank - 1]


@dataclass(slots=True)
class Convergence:
    routed_services: int
    add_ms: list[float] = field(default_factory=list)
    remove_ms: list[float] = field(default_factory=list)
    put_ms: list[float] = field(default_factory=list)
    polls: int = 0
    failures: list[str] = field(default_factory=list)
    first_status: dict[int, int] = field(default_factory=dict)


def _poll(probe: Client, path: str, done: Callable[[int], bool], timeout: float) -> tuple[float | None, int, int]:
    """Tight loop of GETs until ``done(status)``; (ms since the call, final status, GETs sent)."""
    t0 = time.perf_counter()
    polls = 0
    status = 0
    while True:
        status = probe.status(path)
        polls += 1
        elapsed = time.perf_counter() - t0
        if done(status):
            return elapsed * 1000, status, polls
        if elapsed > timeout:
            return None, status, polls


def convergence(
    consul: Consul,
    gateway: Gateway,
    *,
    upstream_port: int,
    trials: int,
    routed_services: int,
    prefix: str = "conv",
    timeout: float = 15.0,
    pause: float = 0.1,
) -> Convergence:
    """Register a new service with a new route, time until the gateway stops answering 404 on it; deregister it,
    time until the gateway answers 404 again. The clock starts when Consul has acknowledged the change.

    ``pause`` is slept after every change: above 1 s each change finds the watches' token buckets (1 request/s,
    burst 2) full, i.e. isolated changes; at 0.1 s the changes arrive back to back and the buckets pace them."""
    probe = Client(gateway.url, timeout=10)
    out = Convergence(routed_services=routed_services)
    try:
        for i in range(trials):
            name = f"{prefix}{i}"
            path = f"/{name}"
            before = probe.status(path)
            if before != 404:
                out.failures.append(f"{path} answered {before} before registration")
                continue
            t_put = time.perf_counter()
            consul.register(name=name, service_id=f"{name}-1", port=upstream_port, tags=[f"gw.route=/{name}"])
            out.put_ms.append((time.perf_counter() - t_put) * 1000)
            ms, status, polls = _poll(probe, path, lambda s: s != 404, timeout)
            out.polls += polls
            if ms is None:
                out.failures.append(f"{path}: still 404 {timeout:g}s after registration")
            else:
                out.add_ms.append(ms)
                out.first_status[status] = out.first_status.get(status, 0) + 1
            time.sleep(pause)
            consul.deregister(f"{name}-1")
            ms, status, polls = _poll(probe, path, lambda s: s == 404, timeout)
            out.polls += polls
            if ms is None:
                out.failures.append(f"{path}: still {status} {timeout:g}s after deregistration")
            else:
                out.remove_ms.append(ms)
            time.sleep(pause)
    finally:
        probe.close()
    return out


@dataclass(slots=True)
class ScalePoint:
    services: int
    instances: int
    register_s: float = 0.0
    complete_ms: float | None = None  # last registration -> the swap that completed the table (gateway timestamp)
    swaps: int = 0  # route_table_swapped events while this step's services were registered
    build_ms_total: float = 0.0
    build_ms_max: float = 0.0
    rss_kib: int = 0
    hwm_kib: int = 0
    agent_rss_kib: int = 0
    instance_change_ms: list[float] = field(default_factory=list)  # build_ms: one instance added/removed
    route_change_ms: list[float] = field(default_factory=list)  # build_ms: one routed service added/removed
    change_visible_ms: list[float] = field(default_factory=list)  # PUT acknowledged -> swap logged (route change)
    routes_json_ms: float = 0.0
    routes_json_bytes: int = 0
    cold_ready_s: float | None = None
    cold_build_ms: float | None = None
    cold_view_ms: float | None = None  # gateway_started -> first route_table_swapped (reading Consul + first build)
    cold_rss_kib: int | None = None
    notes: list[str] = field(default_factory=list)


def _wait_quiet(log: JsonLog, quiet: float, timeout: float) -> list[dict[str, Any]]:
    """Wait until no route_table_swapped event has been logged for ``quiet`` seconds; return all events seen."""
    deadline = time.monotonic() + timeout
    seen = 0
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        events = log.read("route_table_swapped")
        if len(events) != seen:
            seen = len(events)
            last_change = time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return events
        time.sleep(0.05)
    return log.read("route_table_swapped")


def _complete(admin: Client, names: set[str], instances: int) -> bool:
    # /-/routes answers a page of services (100 by default, at most 1,000): ask for the names themselves, a page
    # of at most 100 at a time (the service filter takes at most 100 names).
    ordered = sorted(names)
    routed: set[str] = set()
    services: dict[str, Any] = {}
    for start in range(0, len(ordered), 100):
        chunk = quote(",".join(ordered[start : start + 100]), safe=",")
        doc = admin.get_json(f"/-/routes?limit=100&service={chunk}")
        routed |= {r["service"] for r in doc.get("routes", [])}
        services.update(doc.get("services", {}))
    return names <= routed and all(len(services.get(n, {}).get("instances", [])) == instances for n in names)


def _one_swap(log: JsonLog, change: Callable[[], None], timeout: float = 20.0) -> tuple[dict[str, Any] | None, float]:
    """One change from rest: sleep until the watches' token buckets (1 request/s) have refilled, make the change,
    return the first route_table_swapped event after it and the wall-clock time the change was made."""
    time.sleep(1.1)
    log.mark()
    t0 = time.time()
    change()
    doc = log.wait_for("route_table_swapped", lambda _d: True, timeout=timeout)
    return doc, t0


def scale(
    sup: Supervisor,
    consul: Consul,
    gateway: Gateway,
    *,
    agent_pid: int,
    consul_url: str,
    upstream_port: int,
    steps: list[int],
    instances: int,
    probes: int,
    workdir: Path,
    settle: float = 2.0,
) -> list[ScalePoint]:
    assert gateway.log is not None
    log = JsonLog(gateway.log)
    admin = Client(gateway.admin_url, timeout=60)
    points: list[ScalePoint] = []
    names: set[str] = set()
    registered = 0
    try:
        for target in steps:
            point = ScalePoint(services=target, instances=instances)
            log.mark()
            t0 = time.perf_counter()
            for i in range(registered, target):
                name = f"s{i}"
                for k in range(instances):
                    consul.catalog_register(
                        node=f"bench-node-{k}",
                        name=name,
                        service_id=f"{name}-{k}",
                        port=upstream_port,
                        tags=[f"gw.route=/{name}"],
                    )
                names.add(name)
            last_registration = time.time()
            point.register_s = time.perf_counter() - t0
            registered = target
            deadline = time.monotonic() + 300
            while True:
                events = _wait_quiet(log, settle, timeout=300)
                if _complete(admin, names, instances):
                    break
                if time.monotonic() > deadline:
                    point.notes.append("table never listed every service and instance")
                    break
            point.swaps = len(events)
            builds = [float(e.get("build_ms", 0.0)) for e in events]
            point.build_ms_total = sum(builds)
            point.build_ms_max = max(builds, default=0.0)
            if events:
                stamp = epoch(events[-1])
                if stamp is not None:
                    point.complete_ms = max(0.0, (stamp - last_registration) * 1000)
            t_json = time.perf_counter()
            _status, body = admin.request("GET", "/-/routes")
            point.routes_json_ms = (time.perf_counter() - t_json) * 1000
            point.routes_json_bytes = len(body)
            mem = rss_kib(gateway.component.pid)
            point.rss_kib, point.hwm_kib = mem["VmRSS"], mem["VmHWM"]
            point.agent_rss_kib = rss_kib(agent_pid)["VmRSS"]
            # One change at a time on a settled table: what a single swap costs at this size.
            for j in range(probes):
                sid = f"s0-extra{j}"
                doc, _ = _one_swap(
                    log,
                    lambda sid=sid: consul.catalog_register(
                        node="bench-node-extra", name="s0", service_id=sid, port=upstream_port, tags=["gw.route=/s0"]
                    ),
                )
                if doc is not None:
                    point.instance_change_ms.append(float(doc.get("build_ms", 0.0)))
                doc, _ = _one_swap(
                    log, lambda sid=sid: consul.catalog_deregister(node="bench-node-extra", service_id=sid)
                )
                if doc is not None:
                    point.instance_change_ms.append(float(doc.get("build_ms", 0.0)))
                name = f"extra{j}"
                doc, t_put = _one_swap(
                    log,
                    lambda name=name: consul.catalog_register(
                        node="bench-node-0",
                        name=name,
                        service_id=f"{name}-0",
                        port=upstream_port,
                        tags=[f"gw.route=/{name}"],
                    ),
                )
                if doc is not None:
                    point.route_change_ms.append(float(doc.get("build_ms", 0.0)))
                    stamp = epoch(doc)
                    if stamp is not None:
                        point.change_visible_ms.append((stamp - t_put) * 1000)
                doc, _ = _one_swap(
                    log, lambda name=name: consul.catalog_deregister(node="bench-node-0", service_id=f"{name}-0")
                )
                if doc is not None:
                    point.route_change_ms.append(float(doc.get("build_ms", 0.0)))
            # A cold start against the populated Consul: the whole view built in one go.
            cold_log = workdir / f"gateway-cold-{target}.log"
            t_start = time.perf_counter()
            cold = start_gateway(
                sup, consul_url=consul_url, log=cold_log, label=f"gateway (cold start, {target})", timeout=300
            )
            point.cold_ready_s = time.perf_counter() - t_start
            first = JsonLog(cold_log).wait_for("route_table_swapped", lambda _d: True, timeout=10)
            if first is not None:
                point.cold_build_ms = float(first.get("build_ms", 0.0))
                started = JsonLog(cold_log).read("gateway_started")
                t_started, t_first = (epoch(started[0]) if started else None), epoch(first)
                if t_started is not None and t_first is not None:
                    point.cold_view_ms = (t_first - t_started) * 1000
            else:
                point.notes.append("the cold-start gateway logged no route_table_swapped event")
            time.sleep(settle)
            point.cold_rss_kib = rss_kib(cold.component.pid)["VmRSS"]
            sup.stop(cold.component)
            points.append(point)
            print(
                f"bench: scale {target} services x {instances}: registered in {point.register_s:.1f}s, "
                f"complete {point.complete_ms} ms after the last registration, {point.swaps} swaps, "
                f"RSS {point.rss_kib / 1024:.1f} MiB, one-route swap build "
                f"{statistics.median(point.route_change_ms) if point.route_change_ms else float('nan'):.2f} ms",
                flush=True,
            )
    finally:
        admin.close()
    return points
