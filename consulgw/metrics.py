"""Prometheus metrics of one gateway process, on its own registry (no global state).

With ``consulgw run --workers N`` the processes share one directory of prometheus_client's multiprocess files
(``multiprocess_dir``): counters and histograms add up across workers, gauges report the worst worker (``livemax``,
e.g. a breaker open in any worker, the oldest Consul view) or the sum (in-flight requests), and any worker's
``/metrics`` renders the whole. prometheus_client picks its value store when it is first imported, so the
composition root sets ``PROMETHEUS_MULTIPROC_DIR`` before importing this module (consulgw/commands/run.py).

Label values are bounded: services and route labels come from the route table (never raw paths), instance labels
from Consul, status as a class ("2xx"), reasons and kinds from fixed vocabularies. Label sets of services that
leave the table are removed by ``forget_service``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class GatewayMetrics:
    """Typed facade over the collectors; the only object that touches prometheus_client."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None, *, multiprocess_dir: str | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        worst: Any = {"multiprocess_mode": "livemax"} if multiprocess_dir else {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._counter_children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "consulgw_requests_total",
            "Requests answered, by service, route and status class.",
            ("service", "route", "status_class"),
            registry=r,
        )
        self.latency = Histogram(
            "consulgw_request_duration_seconds",
            "Time from request arrival to the end of the response, by service and route.",
            ("service", "route"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "consulgw_upstream_errors_total",
            "Failed upstream attempts, by service and kind (connect, connect_timeout, tls, timeout, reset, status, error).",
            ("service", "kind"),
            registry=r,
        )
        self.retries = Counter(
            "consulgw_retries_total", "Upstream attempts retried on another instance.", ("service",), registry=r
        )
        self.pool_size = Gauge(
            "consulgw_pool_instances",
            "Instances of a service by state: in the pool (weight > 0) or excluded.",
            ("service", "state"),
            registry=r,
            **worst,
        )
        self.inflight = Gauge(
            "consulgw_inflight_requests",
            "Requests being proxied right now.",
            registry=r,
            **({"multiprocess_mode": "livesum"} if multiprocess_dir else {}),  # type: ignore[arg-type]
        )
        self.route_errors = Gauge(
            "consulgw_route_errors", "Route tags rejected, by service.", ("service",), registry=r, **worst
        )
        self.route_conflicts = Gauge(
            "consulgw_route_conflicts", "Routes claimed by more than one service.", registry=r, **worst
        )
        self.routes = Gauge("consulgw_routes", "Routes in the active table.", registry=r, **worst)
        self.table_swaps = Counter("consulgw_route_table_swaps_total", "Route tables built and swapped in.", registry=r)
        self.policy_rejected = Gauge(
            "consulgw_policy_rejected",
            "1 while the KV document at this key is rejected (the previous good one is in force).",
            ("key",),
            registry=r,
            **worst,
        )
        self.rate_limited = Counter(
            "consulgw_rate_limited_total", "Requests rejected by a rate limit.", ("service",), registry=r
        )
        self.rate_limit_backend_errors = Counter(
            "consulgw_rate_limit_backend_errors_total",
            "Rate-limit decisions the backend (Redis) could not make, by outcome (allowed, denied).",
            ("service", "outcome"),
            registry=r,
        )
        self.auth_rejected = Counter(
            "consulgw_auth_rejected_total",
            "Requests rejected by authentication or authorization, by reason.",
            ("service", "reason"),
            registry=r,
        )
        self.breaker_state = Gauge(
            "consulgw_circuit_breaker_state",
            "Circuit breaker state per instance: 0 closed, 1 half-open, 2 open.",
            ("service", "instance"),
            registry=r,
            **worst,
        )
        self.breaker_opened = Counter(
            "consulgw_circuit_breaker_opened_total", "Times an instance's breaker opened.", ("service",), registry=r
        )
        self.log_lines_dropped = Counter(
            "consulgw_log_lines_dropped_total",
            "Log lines dropped because the log stream (stderr) could not keep up; logging never blocks requests.",
            registry=r,
        )
        self.event_loop_tasks = Gauge(
            "consulgw_event_loop_tasks",
            "asyncio tasks alive on the event loop (requests being handled, watches, background work); a count that "
            "keeps growing under steady load is a leak.",
            registry=r,
            **({"multiprocess_mode": "livesum"} if multiprocess_dir else {}),  # type: ignore[arg-type]
        )
        # Tracing (consulgw.tracing.export): spans lost on the way to the collector. Stays 0 while tracing is off.
        self.trace_spans_dropped = Counter(
            "consulgw_trace_spans_dropped_total",
            "Sampled spans never exported, by reason (queue_full: the export queue was full; export_failed).",
            ("reason",),
            registry=r,
        )
        for reason in ("queue_full", "export_failed"):
            self.trace_spans_dropped.labels(reason)

        # -- answers the gateway makes itself (issue 10): cache, composites, transforms ---------------------------
        self.cache_hits = Counter(
            "consulgw_cache_hits_total", "Answers served from the cache (fresh or stale).", ("service",), registry=r
        )
        self.cache_misses = Counter(
            "consulgw_cache_misses_total", "Cacheable requests the cache could not answer.", ("service",), registry=r
        )
        self.cache_stale = Counter(
            "consulgw_cache_stale_total",
            "Stale entries used, by how (while_revalidate, if_error, revalidated: a 304 refreshed it).",
            ("service", "kind"),
            registry=r,
        )
        self.cache_bypasses = Counter(
            "consulgw_cache_bypasses_total",
            "Requests on a cached route that did not use the cache, by reason (method, range, no_store, "
            "credentialed, backend_error, uncacheable, too_large).",
            ("service", "reason"),
            registry=r,
        )
        self.cache_stored_bytes = Counter(
            "consulgw_cache_stored_bytes_total",
            "Bytes of answers written to the cache, by backend (memory, redis).",
            ("service", "backend"),
            registry=r,
        )
        self.cache_memory_bytes = Gauge(
            "consulgw_cache_memory_bytes",
            "Bytes held by this process's memory cache (bounded by --cache-memory-bytes).",
            registry=r,
            **({"multiprocess_mode": "livesum"} if multiprocess_dir else {}),  # type: ignore[arg-type]
        )
        self.composite_calls = Counter(
            "consulgw_composite_calls_total",
            "Calls made by composite routes, by outcome (ok, failed, timeout, skipped).",
            ("service", "call", "outcome"),
            registry=r,
        )
        self.composite_collisions = Counter(
            "consulgw_composite_collisions_total",
            "Top-level keys a later call of a shallow composite also had (the earlier call's value is kept).",
            ("service",),
            registry=r,
        )
        self.transforms = Counter(
            "consulgw_transforms_total",
            "Bodies seen by a transform, by direction (request, response) and outcome (applied, passed, failed).",
            ("service", "direction", "outcome"),
            registry=r,
        )
        # Traffic management (issue 9). Subset and target labels come from the policy (bounded by its schema).
        self.split_requests = Counter(
            "consulgw_split_requests_total",
            "Requests a split sent to each subset, by how it was chosen (match, weight, default, fallback).",
            ("service", "subset", "by"),
            registry=r,
        )
        self.failover_active = Gauge(
            "consulgw_failover_active",
            "Which datacenter serves a service with a failover policy: 1 for the serving one ('local' or its name "
            "for the local datacenter), 0 for the others.",
            ("service", "datacenter"),
            registry=r,
            **worst,
        )
        self.split_fallback = Counter(
            "consulgw_split_fallback_total",
            "Requests whose chosen subset was empty or wholly unhealthy, sent to the split's default instead.",
            ("service", "subset"),
            registry=r,
        )
        self.sticky = Counter(
            "consulgw_sticky_total",
            "Sticky-session decisions: hit (pinned instance used), new (no cookie), repick (pinned instance "
            "unavailable), tampered (cookie not made by a gateway with this key), fail (503, on_unavailable=fail).",
            ("service", "outcome"),
            registry=r,
        )
        self.mirror_sent = Counter(
            "consulgw_mirror_sent_total", "Mirrored requests started, by target.", ("service", "target"), registry=r
        )
        self.mirror_dropped = Counter(
            "consulgw_mirror_dropped_total",
            "Requests sampled for mirroring but not mirrored, by reason (body_too_large, body_incomplete, "
            "in_flight_full, no_instance, shutdown).",
            ("service", "target", "reason"),
            registry=r,
        )
        self.mirror_errors = Counter(
            "consulgw_mirror_errors_total",
            "Mirrored requests that got no answer, by kind (timeout, connect, reset, ...).",
            ("service", "target", "kind"),
            registry=r,
        )
        self.mirror_status_mismatch = Counter(
            "consulgw_mirror_status_mismatch_total",
            "Mirrored requests whose answer's status class differed from the primary's.",
            ("service", "target"),
            registry=r,
        )

    def observe_request(self, service: str, route: str, status: int, seconds: float) -> None:
        key = (service, route, status // 100)
        children = self._request_children.get(key)
        if children is None:  # label lookups take a lock and hash a tuple: do them once per label set
            children = (self.requests.labels(service, route, status_class(status)), self.latency.labels(service, route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()`` for the request path: the label set's child is looked up once (the
        first label is the service; ``forget_service`` drops it with the service)."""
        key = (id(counter), labels)
        child = self._counter_children.get(key)
        if child is None:
            child = self._counter_children[key] = counter.labels(*labels)
        child.inc()

    def forget_service(self, service: str) -> None:
        """Drop every label set of a service that left the route table."""
        for key in [k for k in self._request_children if k[0] == service]:
            del self._request_children[key]
        for counted in [k for k in self._counter_children if k[1] and k[1][0] == service]:
            del self._counter_children[counted]
        for collector in (
            self.requests,
            self.latency,
            self.upstream_errors,
            self.retries,
            self.pool_size,
            self.route_errors,
            self.rate_limited,
            self.rate_limit_backend_errors,
            self.auth_rejected,
            self.breaker_state,
            self.breaker_opened,
            self.cache_hits,
            self.cache_misses,
            self.cache_stale,
            self.cache_bypasses,
            self.cache_stored_bytes,
            self.composite_calls,
            self.composite_collisions,
            self.transforms,
            self.split_requests,
            self.split_fallback,
            self.failover_active,
            self.sticky,
            self.mirror_sent,
            self.mirror_dropped,
            self.mirror_errors,
            self.mirror_status_mismatch,
        ):
            collector.remove_by_labels({"service": service})

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class ConsulMetrics:
    """How the gateway follows Consul. Created once per gateway by the process that watches Consul: the gateway
    itself, or with ``--workers N`` the supervisor (workers then show the supervisor's values through the shared
    multiprocess directory, never a second copy of their own)."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess_dir: str | None = None) -> None:
        worst: Any = {"multiprocess_mode": "livemax"} if multiprocess_dir else {}
        r = registry
        self.consul_index = Gauge(
            "consulgw_consul_index",
            "Last X-Consul-Index seen, by watch (services, kv).",
            ("watch",),
            registry=r,
            **worst,
        )
        self.sync_age = Gauge(
            "consulgw_consul_sync_age_seconds",
            "Seconds the view may be behind Consul (0 while every watch is connected, -1 before any contact).",
            registry=r,
            **worst,
        )
        self.consul_errors = Counter("consulgw_consul_errors_total", "Failed Consul watch requests.", registry=r)
        self.kv_read_denied = Gauge(
            "consulgw_consul_kv_read_denied",
            "1 while the ACL token may not read (some of) the KV prefix: routing continues from the catalog with the "
            "policies last read.",
            registry=r,
            **worst,
        )
        self.max_conns = Gauge(
            "consulgw_consul_max_conns",
            "The connection budget to the Consul agent (--consul-max-conns).",
            registry=r,
            **worst,
        )
        self.in_flight = Gauge(
            "consulgw_consul_requests_in_flight",
            "Requests to Consul in flight (each holds one connection to the agent).",
            registry=r,
            **worst,
        )
        self.services = Gauge(
            "consulgw_consul_services",
            "Routed services by how they are followed: live (a blocking watch of their own) or parked.",
            ("state",),
            registry=r,
            **worst,
        )
        self.probes = Counter(
            "consulgw_consul_requests_total",
            "Requests to Consul for parked services, by kind (probe: index only; read: the whole service).",
            ("kind",),
            registry=r,
        )
