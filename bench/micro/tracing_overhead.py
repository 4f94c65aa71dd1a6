"""CPU per request of the tracing hooks: tracing off, on but not sampled, on and sampled.

    .venv/bin/python bench/micro/tracing_overhead.py

Each iteration makes exactly the calls one proxied request makes (consulgw/tracing/api.py): ``tracer.request`` when
the request arrives, ``trace.start`` once the route is known, ``tracer.attempt`` + ``call.request`` +
``call.answered`` around the one upstream attempt, ``trace.end`` and ``trace.log_fields`` for the access line. The
"baseline" row runs the same loop without any of them, so "added" is what each mode costs a request on the event
loop thread. The client sends a sampled ``traceparent`` (the extract path included).

Times are CPU times, so other load on the machine disturbs them less: "loop thread" is the calling thread's CPU
(what the event loop pays per request), "process" adds every other thread of the process: the SDK's export thread
encoding and POSTing the sampled spans (two per request) in batches to a local OTLP/HTTP sink, whose CPU (in this
process too) is included. Export runs as in the gateway (default batch limits, spans freed once sent).
"""

from __future__ import annotations

import asyncio
import http.server
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from consulgw.metrics import GatewayMetrics
from consulgw.model.snapshot import Instance
from consulgw.pipeline.answer import Answer
from consulgw.policy.model import TracingPolicy
from consulgw.routing.rules import RouteSpec
from consulgw.tracing.api import NO_TRACER, Tracer
from consulgw.tracing.config import TracingSettings
from consulgw.tracing.setup import start_tracing
from consulgw.upstream.transport import UpstreamRequest

N = 20_000
REPEAT = 5


class FakeRequest:
    """The attributes of aiohttp's request that the hooks read."""

    method = "GET"
    host = "api.example.com"
    raw_path = "/users/7?page=2"
    path = "/users/7"
    query_string = "page=2"

    def __init__(self) -> None:
        headers = CIMultiDict(
            [
                ("Host", "api.example.com"),
                ("User-Agent", "bench/1.0"),
                ("Accept", "application/json"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ]
        )
        self.headers = CIMultiDictProxy(headers)


ROUTE = RouteSpec(service="users", host=None, prefix="/users", strip=None, methods=None, tag="gw.route=/users")
POLICY = TracingPolicy()
INSTANCE = Instance(
    id="node/users-1", service="users", service_id="users-1", node="node", address="10.0.0.7", port=8080
)
OUTGOING = UpstreamRequest(
    method="GET",
    target="/users/7?page=2",
    headers=[
        ("Host", "api.example.com"),
        ("User-Agent", "bench/1.0"),
        ("Accept", "application/json"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("X-Forwarded-For", "192.0.2.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Request-ID", "0123456789abcdef0123456789abcdef"),
    ],
)


def one_request(tracer: Tracer, request: Any, answer: Answer) -> Callable[[], object]:
    def run() -> object:
        trace = tracer.request(request, False, "0123456789abcdef0123456789abcdef", "192.0.2.1")
        trace.start(ROUTE, POLICY)
        call = tracer.attempt("users", "GET", INSTANCE, "/users/7?page=2", 0)
        sent = call.request(OUTGOING)
        call.answered(200)
        trace.end(200, answer, None)
        return sent, trace.log_fields

    return run


def baseline(request: Any, answer: Answer) -> Callable[[], object]:
    def run() -> object:
        return OUTGOING, answer

    return run


def cpu_us(fn: Callable[[], object]) -> tuple[float, float]:
    """Best (loop thread, process) CPU microseconds per call over REPEAT runs of N calls."""
    thread: list[float] = []
    process: list[float] = []
    for _ in range(REPEAT):
        t0, p0 = time.thread_time(), time.process_time()
        for _ in range(N):
            fn()
        thread.append(time.thread_time() - t0)
        process.append(time.process_time() - p0)
    return min(thread) / N * 1e6, min(process) / N * 1e6


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def main() -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    log = structlog.get_logger()
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    request = FakeRequest()
    answer = Answer(status=200, instance="node/users-1", attempts=1)

    rows: list[tuple[str, float, float]] = []
    rows.append(("baseline (no hook calls)", *cpu_us(baseline(request, answer))))
    rows.append(("tracing off (NO_TRACER)", *cpu_us(one_request(NO_TRACER, request, answer))))
    for name, ratio in (("on, not sampled (ratio 0)", 0.0), ("on, sampled (ratio 1)", 1.0)):
        settings = TracingSettings(enabled=True, endpoint=endpoint, ratio=ratio, parent_based=False)
        tracer = start_tracing(settings, metrics=GatewayMetrics(), rng=random.Random(1), log=log)
        one_request(tracer, request, answer)()  # warm up (imports, first span)
        rows.append((name, *cpu_us(one_request(tracer, request, answer))))
        await tracer.aclose()
    sink.shutdown()
    base_thread, base_process = rows[0][1], rows[0][2]
    print(f"{'CPU us per request':28s} {'loop thread':>12s} {'added':>8s} {'process':>10s} {'added':>8s}")
    for name, thread, process in rows:
        print(f"{name:28s} {thread:12.2f} {thread - base_thread:8.2f} {process:10.2f} {process - base_process:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
