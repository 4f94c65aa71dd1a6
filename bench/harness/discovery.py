"""How fast Consul changes reach the route table, and what the table costs at 1, 100 and 1,000 services."""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.http import Client, Consul
from harness.jsonlog import JsonLog, epoch
from harness.procs import Supervisor, free_port, rss_kib
from harness.stack import Gateway, clean_env, gateway_argv, start_gateway


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


# -- Consul at scale: 10,000 services x 10 instances ---------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Every live process of a process group (a gateway supervisor and its workers)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def connections_to(pgid: int, port: int) -> int:
    """TCP sockets that processes of ``pgid`` hold open to 127.0.0.1:``port`` (socket inodes in /proc/<pid>/fd
    matched against /proc/net/tcp): what the agent's http_max_conns_per_client counts for this client."""
    return sum(connections_by_pid(pgid, port).values())


def connections_by_pid(pgid: int, port: int) -> dict[int, int]:
    """``connections_to``, per process (a socket shared by two processes counts once, for the first)."""
    owner: dict[str, int] = {}
    for pid in group_pids(pgid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner.setdefault(target[8:-1], pid)
    counts: dict[int, int] = {}
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    pid = owner.get(fields[9]) if fields[2].endswith(want) else None
                    if pid is not None:
                        counts[pid] = counts.get(pid, 0) + 1
        except OSError:
            continue
    return counts


class ConnectionSampler:
    """Samples ``connections_to`` every ``interval`` seconds in a thread; ``peak`` is the most seen."""

    def __init__(self, pgid: int, port: int, interval: float = 0.02) -> None:
        self.pgid, self.port, self.interval = pgid, port, interval
        self.peak = 0
        self.peak_by_pid: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conn-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            by_pid = connections_by_pid(self.pgid, self.port)
            total = sum(by_pid.values())
            if total > self.peak:
                self.peak, self.peak_by_pid = total, by_pid
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


class LagProbe:
    """Keep-alive GETs of the admin /-/healthy in a tight loop from a thread: the gateway answers it on the same event
    loop as everything else, so a request that takes long is the loop being held. ``window(t0, t1)`` gives the
    latencies of requests that started in [t0, t1) (time.monotonic())."""

    def __init__(self, admin_url: str) -> None:
        self._client = Client(admin_url, timeout=30)
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self._client.status("/-/healthy")
            self.samples.append((t0, time.monotonic() - t0))

    def window(self, start: float, end: float) -> list[float]:
        return [ms for t, ms in self.samples if start <= t < end]

    def __enter__(self) -> LagProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


def register_bulk(
    consul_url: str,
    *,
    names: list[str],
    instances: int,
    nodes: int,
    port: int,
    threads: int = 8,
    tags: Callable[[str], list[str]] = lambda name: [f"gw.route=/{name}"],
) -> float:
    """``instances`` instances of each service through the catalog API from ``threads`` connections; instance ``k``
    of service number ``i`` lives on node ``(i * instances + k) % nodes``. Returns seconds taken."""
    jobs = [(i, name, k) for i, name in enumerate(names) for k in range(instances)]
    chunks = [jobs[n::threads] for n in range(threads)]
    errors: list[BaseException] = []

    def work(chunk: list[tuple[int, str, int]]) -> None:
        client = Consul(consul_url, timeout=60)
        try:
            for i, name, k in chunk:
                client.catalog_register(
                    node=f"bench-node-{(i * instances + k) % nodes}",
                    name=name,
                    service_id=f"{name}-{k}",
                    port=port,
                    tags=tags(name),
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work, args=(chunk,), daemon=True) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def put_kv_bulk(consul_url: str, items: list[tuple[str, bytes]], threads: int = 8) -> None:
    chunks = [items[n::threads] for n in range(threads)]
    errors: list[BaseException] = []

    def work(chunk: list[tuple[str, bytes]]) -> None:
        client = Consul(consul_url, timeout=60)
        try:
            for key, value in chunk:
                client.put_kv(key, value)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    workers = [threading.Thread(target=work, args=(chunk,), daemon=True) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


@dataclass(slots=True)
class ScaleRun:
    """One gateway (1 process, or a supervisor and workers) against the populated agent."""

    label: str
    cold_ready_s: float | None = None
    peak_conns: int = 0
    conns_at_rest: int = 0
    rss_kib: int = 0  # the whole process group
    hwm_kib: int = 0  # the largest VmHWM among its processes
    changes: dict[str, list[float]] = field(default_factory=dict)  # kind -> PUT acknowledged -> in force, ms
    failures: list[str] = field(default_factory=list)
    defaults_build_ms: float | None = None
    lag_baseline_ms: tuple[float, float] | None = None  # p50, p99 of /-/healthy before the change
    lag_max_ms: float | None = None  # slowest /-/healthy while the defaults change was being built
    lag_p99_ms: float | None = None
    lag_requests: int = 0
    others_cpu_pct: float | None = None  # other people's processes during the defaults-change window
    spread_ms: list[float] = field(default_factory=list)  # first to last worker swapping in the same change


@dataclass(slots=True)
class ConsulScale:
    services: int
    instances: int
    nodes: int
    max_conns: int
    register_s: float = 0.0
    kv_s: float = 0.0
    agent_rss_kib: int = 0
    runs: list[ScaleRun] = field(default_factory=list)


def _until(check: Callable[[], bool], timeout: float, interval: float = 0.0) -> float | None:
    t0 = time.perf_counter()
    while True:
        if check():
            return (time.perf_counter() - t0) * 1000
        if time.perf_counter() - t0 > timeout:
            return None
        if interval:
            time.sleep(interval)


def consul_scale(
    sup: Supervisor,
    *,
    agent_pid: int,
    consul_url: str,
    agent_port: int,
    upstream_port: int,
    services: int,
    instances: int,
    nodes: int,
    trials: int,
    workdir: Path,
    max_conns: int = 64,
    worker_counts: tuple[int, ...] = (1, 2),
) -> ConsulScale:
    """Populate the agent with ``services`` x ``instances`` (plus one policy document per service), then for each
    worker count: cold start to ready, connections held (sampled at the socket level throughout), one-service
    changes to the route in force, and the event loop's lag while a ``consulgw/defaults`` change is built."""
    out = ConsulScale(services=services, instances=instances, nodes=nodes, max_conns=max_conns)
    names = [f"s{i}" for i in range(services)]
    print(f"bench: consul scale: registering {services} services x {instances} instances", flush=True)
    out.register_s = register_bulk(consul_url, names=names, instances=instances, nodes=nodes, port=upstream_port)
    t0 = time.perf_counter()
    policy = json.dumps({"timeouts": {"read": "20s"}, "retries": {"attempts": 2}}).encode()
    put_kv_bulk(consul_url, [(f"consulgw/services/{name}", policy) for name in names])
    out.kv_s = time.perf_counter() - t0
    consul = Consul(consul_url)
    try:
        for workers in worker_counts:
            out.runs.append(
                _scale_run(sup, consul, out, workers, agent_port, upstream_port, consul_url, trials, workdir)
            )
        out.agent_rss_kib = rss_kib(agent_pid)["VmRSS"]
    finally:
        consul.close()
    return out


def _scale_run(
    sup: Supervisor,
    consul: Consul,
    scale: ConsulScale,
    workers: int,
    agent_port: int,
    upstream_port: int,
    consul_url: str,
    trials: int,
    workdir: Path,
) -> ScaleRun:
    from harness.throughput import foreign_cpu, group_rss_kib, process_cpu

    label = "1 process" if workers == 1 else f"--workers {workers}"
    run = ScaleRun(label=label)
    log_path = workdir / f"gateway-consul-scale-{workers}.log"
    port, admin = free_port(), free_port()
    argv = gateway_argv(consul_url, port, admin, "--workers", str(workers), "--consul-max-conns", str(scale.max_conns))
    print(f"bench: consul scale: cold start of a gateway ({label}) against {scale.services} services", flush=True)
    t_start = time.perf_counter()
    component = sup.start(f"gateway (consul scale, {label})", argv, log=log_path, env=clean_env())
    pgid = component.pid
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    probe = Client(url, timeout=30)
    try:
        with ConnectionSampler(pgid, agent_port) as conns:
            sup.wait_http(component, admin_url + "/-/ready", timeout=900)
            run.cold_ready_s = time.perf_counter() - t_start
            time.sleep(2.0)
            run.conns_at_rest = connections_to(pgid, agent_port)
            log = JsonLog(log_path)

            # One service changes, three ways; each timed from the agent's acknowledgement to the route in force.
            kinds: dict[str, list[float]] = {"new route": [], "instance to maintenance": [], "new instance": []}
            for n in range(trials):
                name = f"fresh{workers}x{n}"
                consul.register(name=name, service_id=f"{name}-1", port=upstream_port, tags=[f"gw.route=/{name}"])
                ms = _until(lambda name=name: probe.status(f"/{name}") != 404, 60)
                _record(run, kinds["new route"], ms, f"/{name} still 404 60 s after registration")

                consul.maintenance(f"{name}-1", True)
                ms = _until(lambda name=name: probe.status(f"/{name}") == 503, 60)
                _record(run, kinds["instance to maintenance"], ms, f"/{name} still served 60 s into maintenance")
                consul.maintenance(f"{name}-1", False)
                _until(lambda name=name: probe.status(f"/{name}") == 200, 60)
                time.sleep(0.3)  # every worker has it: the next change starts from rest

                target = f"s{(n * 7919) % scale.services}"  # a parked service, most likely: the catalog's middle
                log.mark()
                t_put = time.time()
                consul.catalog_register(
                    node="bench-node-extra",
                    name=target,
                    service_id=f"{target}-extra{n}",
                    port=upstream_port,
                    tags=[f"gw.route=/{target}"],
                )
                # The first swap of each worker logged after the PUT (log lines reach the file up to 0.2 s late).
                deadline = time.monotonic() + 120
                firsts: dict[object, float] = {}
                while len(firsts) < workers and time.monotonic() < deadline:
                    for doc in log.read("route_table_swapped"):
                        stamp = epoch(doc)
                        if stamp is not None and stamp >= t_put:
                            firsts.setdefault(doc.get("worker", 0), stamp)
                    time.sleep(0.005)
                stamps = sorted(firsts.values())
                _record(
                    run,
                    kinds["new instance"],
                    (stamps[0] - t_put) * 1000 if stamps else None,
                    f"no swap within 120 s of a new instance of {target}",
                )
                if len(stamps) == workers > 1:
                    run.spread_ms.append((stamps[-1] - stamps[0]) * 1000)
                consul.catalog_deregister(node="bench-node-extra", service_id=f"{target}-extra{n}")
                consul.deregister(f"{name}-1")
                _until(lambda name=name: probe.status(f"/{name}") == 404, 60)
                time.sleep(0.2)
            run.changes = kinds

            # consulgw/defaults changes: every service's policy is parsed again and every pipeline rebuilt.
            with LagProbe(admin_url) as lag:
                time.sleep(2.0)
                base = sorted(lag.window(time.monotonic() - 2.0, time.monotonic()))
                log.mark()
                procs0 = process_cpu()
                t0 = time.monotonic()
                wall0 = time.time()
                consul.put_kv("consulgw/defaults", json.dumps({"timeouts": {"connect": "3s"}}).encode())
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:  # every worker logs one swap for the change
                    done = {d.get("worker", 0) for d in log.read("route_table_swapped") if (epoch(d) or 0.0) >= wall0}
                    if len(done) >= workers:
                        break
                    time.sleep(0.05)
                time.sleep(0.5)
                t1 = time.monotonic()
                others = foreign_cpu(procs0, process_cpu(), sup.groups())
                during = sorted(lag.window(t0, t1))
            builds = [float(d.get("build_ms", 0.0)) for d in log.read("route_table_swapped")]
            run.defaults_build_ms = max(builds) if builds else None
            if base:
                run.lag_baseline_ms = (percentile(base, 50) * 1000, percentile(base, 99) * 1000)  # type: ignore[operator]
            if during:
                run.lag_max_ms = during[-1] * 1000
                run.lag_p99_ms = (percentile(during, 99) or 0.0) * 1000
                run.lag_requests = len(during)
            run.others_cpu_pct = 100.0 * others / max(t1 - t0, 1e-6)
            consul.put_kv("consulgw/defaults", b"{}")
            run.rss_kib = group_rss_kib(pgid)
            run.hwm_kib = max((rss_kib(pid).get("VmHWM", 0) for pid in group_pids(pgid)), default=0)
        run.peak_conns = conns.peak
        if conns.peak > scale.max_conns:
            run.failures.append(f"{conns.peak} connections to the agent at one moment, by process: {conns.peak_by_pid}")
    finally:
        probe.close()
        sup.stop(component)
    return run


def _record(run: ScaleRun, into: list[float], ms: float | None, failure: str) -> None:
    if ms is None:
        run.failures.append(failure)
    else:
        into.append(ms)


def consul_scale_table(result: ConsulScale) -> str:
    def f(value: float | None, fmt: str = "{:.0f}") -> str:
        return "-" if value is None else fmt.format(value)

    rows = [
        f"{result.services:,} services x {result.instances} instances on {result.nodes:,} nodes (catalog API, "
        f"{result.register_s:.0f} s to register) and one policy document per service under `consulgw/services/` "
        f"({result.kv_s:.0f} s); dev agent RSS {result.agent_rss_kib / 1024:.0f} MiB. Gateways run with "
        f"`--consul-max-conns {result.max_conns}` (the default).",
        "",
        "| gateway | cold start -> /-/ready s | connections to the agent: peak (sampled every 20 ms) / at rest "
        "| RSS MiB (all processes) | peak RSS MiB (largest process) |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in result.runs:
        rows.append(
            f"| {run.label} | {f(run.cold_ready_s, '{:.1f}')} | {run.peak_conns} / {run.conns_at_rest} "
            f"| {run.rss_kib / 1024:.0f} | {run.hwm_kib / 1024:.0f} |"
        )
    rows += [
        "",
        "| gateway | one-service change | trials | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in result.runs:
        for kind, values in run.changes.items():
            rows.append(
                f"| {run.label} | {kind} | {len(values)} | {f(percentile(values, 50), '{:.1f}')} "
                f"| {f(percentile(values, 99), '{:.1f}')} | {f(max(values) if values else None, '{:.1f}')} |"
            )
    rows += [
        "",
        "| gateway | `consulgw/defaults` change: build_ms | /-/healthy before: p50 / p99 ms | while building: p99 / "
        "max ms (requests) | others' CPU meanwhile, % of a core |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in result.runs:
        base = run.lag_baseline_ms
        rows.append(
            f"| {run.label} | {f(run.defaults_build_ms)} | {f(base[0] if base else None, '{:.2f}')} / "
            f"{f(base[1] if base else None, '{:.2f}')} | {f(run.lag_p99_ms, '{:.1f}')} / {f(run.lag_max_ms, '{:.1f}')} "
            f"({run.lag_requests:,}) | {f(run.others_cpu_pct)} |"
        )
    spreads = [
        f"{run.label}: the workers swapped in each new-instance change within {percentile(run.spread_ms, 50):.1f} ms "
        f"of each other (median; max {max(run.spread_ms):.1f} ms)."
        for run in result.runs
        if run.spread_ms
    ]
    failures = [f"- {run.label}: {failure}" for run in result.runs for failure in run.failures]
    return "\n".join(rows + (["", *spreads] if spreads else []) + (["", *failures] if failures else [])) + "\n"
