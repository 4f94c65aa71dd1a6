"""Self-checks for the benchmark harness: its parsers on captured outputs, its report, and one small real run.

Collected by `make test` (pytest's testpaths are tests/ and bench/; `make services` installs nginx and wrk so the
real run does not skip); alone: `.venv/bin/pytest bench/test_harness.py`. Nothing here asserts a speed: performance
is measured by `make bench`, never by a timed test. bench/test_yardsticks.py checks the yardsticks themselves.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import profile, report, wrk
from harness.discovery import percentile
from harness.stack import NGINX_TEMPLATE, UPSTREAM_BODY, render_nginx
from harness.throughput import Sample, Series, Target, p99_ratio, ratio

BENCH = Path(__file__).resolve().parent

WRK_OK = """Running 10s test @ http://127.0.0.1:9100/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   511.04us  300.27us  12.63ms   93.10%
    Req/Sec    62.74k     4.20k   69.96k    71.00%
  Latency Distribution
     50%  452.00us
     75%  558.00us
     90%  707.00us
     99%    1.52ms
  624296 requests in 10.00s, 117.93MB read
Requests/sec:  62426.20
Transfer/sec:     11.79MB
"""

WRK_ERRORS = """Running 3s test @ http://127.0.0.1:9400/pol
  1 threads and 32 connections
  Latency Distribution
     50%    6.71ms
     75%    8.69ms
     90%   11.31ms
     99%    1.20s
  9411 requests in 3.01s, 1.43MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 40
Requests/sec:   3126.58
Transfer/sec:    727.56KB
"""


@pytest.mark.parametrize(
    ("text", "rps", "p50", "p99", "requests", "non_2xx", "socket_errors"),
    [
        pytest.param(WRK_OK, 62426.20, 0.452, 1.52, 624296, 0, 0, id="microseconds-and-milliseconds"),
        pytest.param(WRK_ERRORS, 3126.58, 6.71, 1200.0, 9411, 40, 7, id="seconds-non2xx-socket-errors"),
    ],
)
def test_wrk_report_is_parsed(
    text: str, rps: float, p50: float, p99: float, requests: int, non_2xx: int, socket_errors: int
) -> None:
    result = wrk.parse(text)
    assert result.requests_per_s == pytest.approx(rps)
    assert result.p50_ms == pytest.approx(p50)
    assert result.p99_ms == pytest.approx(p99)
    assert (result.requests, result.non_2xx, result.socket_errors) == (requests, non_2xx, socket_errors)


def test_wrk_report_without_latency_distribution_is_refused() -> None:
    with pytest.raises(wrk.WrkError, match="--latency"):
        wrk.parse(WRK_OK.split("  Latency Distribution")[0] + "Requests/sec:  1.00\n")


def test_wrk_command_hides_credentials_when_shown() -> None:
    argv = wrk.command("http://x/", duration=2.4, threads=1, connections=32, headers=("Authorization: Bearer abc.def",))
    assert "-d2s" in argv
    assert "Authorization: Bearer [redacted]" in wrk.shown(argv)
    assert not any("abc.def" in a for a in wrk.shown(argv))


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        pytest.param([5.0], 99, 5.0, id="single"),
        pytest.param([float(i) for i in range(1, 101)], 50, 50.0, id="p50-of-100"),
        pytest.param([float(i) for i in range(1, 101)], 99, 99.0, id="p99-of-100"),
        pytest.param([float(i) for i in range(1, 51)], 99, 50.0, id="p99-of-50-is-the-max"),
        pytest.param([], 50, None, id="empty"),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], pct: float, expected: float | None) -> None:
    assert percentile(values, pct) == expected


def test_collapsed_stacks_aggregate_into_self_inclusive_and_breakdown() -> None:
    raw = (
        "main (/work/main/consulgw/cli.py:10);ProxyHandler.__call__ (/work/main/consulgw/server/proxy.py:80);"
        "Forwarder.forward (/work/main/consulgw/pipeline/forward.py:100) 3\n"
        "main (/work/main/consulgw/cli.py:10);ProxyHandler.__call__ (/work/main/consulgw/server/proxy.py:90);"
        "meth (/x/.venv/lib/python3.11/site-packages/structlog/_native.py:5) 1\n"
    )
    prof = profile.aggregate(raw)
    assert prof.samples == 4
    assert prof.self_["Forwarder.forward (consulgw/pipeline/forward.py)"] == 3
    assert prof.total["ProxyHandler.__call__ (consulgw/server/proxy.py)"] == 4
    assert prof.packages["structlog"] == 1
    total, split = profile.breakdown(prof, "ProxyHandler.__call__ ")
    assert total == 4
    assert split["meth (structlog/_native.py)"] == 1
    text = profile.summary(prof, title="t", rate=200, requests=100.0, cpu=0.02)
    assert "200 us of CPU per request" in text


def test_docs_block_is_replaced_between_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nintro\n\n{report.BEGIN}\nold\n{report.END}\n\n## After\n", encoding="utf-8")
    report.write_docs(doc, "new table\n")
    text = doc.read_text(encoding="utf-8")
    assert "old" not in text
    assert f"{report.BEGIN}\nnew table\n{report.END}" in text
    assert text.startswith("# B\n\nintro")
    assert text.endswith("## After\n")


def test_nginx_template_is_rendered_as_its_header_says(tmp_path: Path) -> None:
    assert NGINX_TEMPLATE.is_relative_to(BENCH)  # the project's own yardstick, inside the checkout
    conf = render_nginx(NGINX_TEMPLATE, tmp_path, 9001, 9100).read_text(encoding="utf-8")
    assert "@" not in "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
    assert f"pid {tmp_path}/nginx.pid;" in conf
    assert "listen 127.0.0.1:9001;" in conf
    assert "listen 127.0.0.1:9100;" in conf
    assert f"return 200 '{UPSTREAM_BODY.decode()}';" in conf
    assert f"proxy_temp_path {tmp_path}/proxy;" in conf  # nothing written outside the run directory


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx missing")
def test_nginx_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    conf = render_nginx(NGINX_TEMPLATE, tmp_path, 9001, 9100)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _sample(round_no: int, rps: float, p99_ms: float) -> Sample:
    result = wrk.WrkResult(
        requests_per_s=rps,
        p50_ms=p99_ms / 4,
        p75_ms=p99_ms / 3,
        p90_ms=p99_ms / 2,
        p99_ms=p99_ms,
        requests=int(rps * 10),
        non_2xx=0,
        socket_errors=0,
    )
    return Sample(
        round=round_no,
        result=result,
        cpu_pct=100.0,
        rss_kib=40 * 1024,
        log_bytes_per_request=None,
        foreign_load=0,
        other_cpu_pct=1.0,
    )


def _series(key: str, label: str, points: list[tuple[float, float]]) -> Series:
    return Series(
        target=Target(key=key, label=label, url="http://x/"),
        samples=[_sample(i, rps, p99) for i, (rps, p99) in enumerate(points)],
    )


SERIES = {
    "nginx": _series("nginx", "nginx proxy", [(40000, 1.0), (44000, 1.0), (42000, 1.0)]),
    "naive": _series("naive", "naive proxy", [(5000, 10.0), (4000, 12.0), (6000, 8.0)]),
    "gw": _series("gw", "consulgw, no policy", [(10000, 5.0), (9000, 6.0), (12000, 8.0)]),
    "gw_policy": _series("gw_policy", "consulgw, policy", [(6000, 12.0), (5000, 12.0), (7000, 9.6)]),
}


def test_ratios_pair_each_round_with_its_own_reference() -> None:
    assert ratio(SERIES, "gw", "naive") == pytest.approx((2.0, 2.0, 2.25))  # 2.0, 2.25, 2.0 per round
    assert p99_ratio(SERIES, "gw", "naive") == pytest.approx((0.5, 0.5, 1.0))  # 0.5, 0.5, 1.0 per round
    assert ratio(SERIES, "gw", "missing") is None


def test_throughput_table_shows_p99_against_the_naive_proxy() -> None:
    table = report.throughput_table(SERIES, naive="naive", nginx="nginx")
    assert "| p99 x naive |" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("| consulgw, no policy |"))
    assert "| 2.00 (2.00-2.25) |" in row  # x naive proxy
    assert "| 0.50 (0.50-1.00) |" in row  # p99 x naive


@pytest.mark.parametrize(
    ("bar", "expected"),
    [
        pytest.param(
            report.Bar(key="gw", measure="throughput", at_least=2.0),
            "- consulgw, no policy: req/s 2.00x the naive proxy's (bar >= 2): met",
            id="throughput-met",
        ),
        pytest.param(
            report.Bar(key="gw_policy", measure="throughput", at_least=1.5),
            "- consulgw, policy: req/s 1.20x the naive proxy's (bar >= 1.5): NOT met",
            id="throughput-short",
        ),
        pytest.param(
            report.Bar(key="gw", measure="p99", at_most=1.0),
            "- consulgw, no policy: p99 0.50x the naive proxy's (bar <= 1): met",
            id="p99-met",
        ),
        pytest.param(
            report.Bar(key="gw_policy", measure="p99", at_most=1.0),
            "- consulgw, policy: p99 1.20x the naive proxy's (bar <= 1): NOT met",
            id="p99-short",
        ),
    ],
)
def test_bars_are_reported_met_or_not(bar: report.Bar, expected: str) -> None:
    assert expected in report.bar_lines(SERIES, (bar,), naive="naive").splitlines()


def test_a_bar_on_a_target_that_did_not_run_is_left_out() -> None:
    text = report.bar_lines(SERIES, (report.Bar(key="gw_2w", measure="throughput", at_least=1.0),), naive="naive")
    assert "gw_2w" not in text
    assert text.count("\n- ") == 0


VENV = "/x/.venv/lib/python3.11/site-packages/"
LIB = "/usr/lib/python3.11/"


def _stack(*frames: str) -> tuple[str, ...]:
    """Root-first frame keys as aggregate() builds them, behind the event loop's entry frames."""
    raw = ";".join(("run (/x/bin/consulgw:1)", f"BaseEventLoop.run_forever ({LIB}asyncio/base_events.py:1)", *frames))
    prof = profile.aggregate(raw + " 1\n")
    return prof.stacks[0][0]


HANDLER = "ProxyHandler.__call__ (/w/consulgw/server/proxy.py:80)"
AUTH_STAGE = "AuthStage.__call__ (/w/consulgw/pipeline/stages/auth.py:50)"
RL_STAGE = "RateLimitStage.__call__ (/w/consulgw/pipeline/stages/ratelimit.py:90)"


@pytest.mark.parametrize(
    ("frames", "component"),
    [
        pytest.param(
            (HANDLER, f"BoundLogger.info ({VENV}structlog/_native.py:5)"),
            "access log (structlog + JSON renderer)",
            id="access-log",
        ),
        pytest.param(
            (HANDLER, AUTH_STAGE, "JwtVerifier.check (/w/consulgw/auth/jwt.py:40)", f"decode ({VENV}jwt/api_jwt.py:9)"),
            "JWT verification (PyJWT)",
            id="jwt",
        ),
        pytest.param(
            (HANDLER, AUTH_STAGE, "JwtVerifier.check (/w/consulgw/auth/jwt.py:40)", f"loads ({LIB}json/__init__.py:1)"),
            "JWT verification (PyJWT)",
            id="jwt-calling-the-stdlib",
        ),
        pytest.param(
            (HANDLER, AUTH_STAGE, RL_STAGE, f"Script.__call__ ({VENV}redis/commands/core.py:1)"),
            "rate limit decision (Redis, redis-py)",
            id="redis-below-the-auth-stage",
        ),
        pytest.param(
            (HANDLER, AUTH_STAGE, RL_STAGE, "Forwarder.forward (/w/consulgw/pipeline/forward.py:100)"),
            "gateway code (handler, pipeline, stages, context) and what it calls",
            id="forward-glue-is-not-charged-to-the-stages-above-it",
        ),
        pytest.param(
            (
                HANDLER,
                AUTH_STAGE,
                RL_STAGE,
                "Forwarder.forward (/w/consulgw/pipeline/forward.py:100)",
                f"ClientSession._request ({VENV}aiohttp/client.py:500)",
                f"StreamWriter.write ({VENV}aiohttp/http_writer.py:80)",
            ),
            "upstream exchange (client side: aiohttp client or the gateway's transport)",
            id="aiohttp-client",
        ),
        pytest.param(
            (HANDLER, f"Counter.inc ({VENV}prometheus_client/metrics.py:300)"),
            "metrics (prometheus_client)",
            id="metrics",
        ),
        pytest.param(
            (HANDLER, "new_request_id (/w/consulgw/ids.py:10)", f"token_hex ({LIB}secrets.py:1)"),
            "request id",
            id="request-id",
        ),
        pytest.param(
            (HANDLER, "BreakerBoard.record (/w/consulgw/upstream/breaker.py:1)", f"call ({VENV}circuitbreaker.py:1)"),
            "circuit breaker",
            id="breaker",
        ),
        pytest.param(
            (f"RequestHandler.start ({VENV}aiohttp/web_protocol.py:1)", HANDLER, f"get ({VENV}multidict/x.py:1)"),
            "gateway code (handler, pipeline, stages, context) and what it calls",
            id="handler-own-code",
        ),
        pytest.param(
            (f"RequestHandler.start ({VENV}aiohttp/web_protocol.py:1)",),
            "request parsing and dispatch (aiohttp server)",
            id="aiohttp-server",
        ),
        pytest.param(
            (f"RequestHandler.finish_response ({VENV}aiohttp/web_protocol.py:1)",),
            "response to the client (aiohttp server, the answer writer, the connection guard)",
            id="response",
        ),
        pytest.param(
            ("Client.on_message_complete (/w/bench/yardsticks/raw_relay.py:1)",),
            "yardstick's own code (naive proxy handler / raw relay)",
            id="relay",
        ),
        pytest.param((f"Handle._run ({LIB}asyncio/events.py:80)",), profile.OTHER, id="loop"),
    ],
)
def test_each_sample_is_charged_to_one_component(frames: tuple[str, ...], component: str) -> None:
    assert profile.charge(_stack(*frames)) == component


def test_parked_background_threads_are_left_out() -> None:
    boot = f"Thread._bootstrap ({LIB}threading.py:1002);Thread.run ({LIB}threading.py:982)"
    raw = (
        f"{boot};BufferedLines._run (/w/consulgw/logs.py:187);Event.wait ({LIB}threading.py:629);"
        f"Condition.wait ({LIB}threading.py:331) 40\n"
        f"{boot};BufferedLines._write_pending (/w/consulgw/logs.py:201) 2\n"
        f"run (/x/bin/consulgw:1);{HANDLER} 8\n"
    )
    prof = profile.aggregate(raw)
    assert (prof.samples, prof.parked) == (10, 40)  # the writer's real work stays, its waiting does not
    assert "40 more of background threads parked in a wait left out" in profile.summary(
        prof, title="t", rate=200, requests=None, cpu=None
    )


def test_comparison_table_gives_microseconds_per_request() -> None:
    raw = (
        f"run (/x/bin/consulgw:1);{HANDLER};BoundLogger.info ({VENV}structlog/_native.py:5) 1\n"
        f"run (/x/bin/consulgw:1);{HANDLER};Forwarder.forward (/w/consulgw/pipeline/forward.py:1) 3\n"
    )
    table = profile.comparison([("gw", profile.aggregate(raw), 200.0)])
    assert "| access log (structlog + JSON renderer) | 50 (25%) |" in table
    assert "| gateway code (handler, pipeline, stages, context) and what it calls | 150 (75%) |" in table
    assert "| **total CPU per request** | **200** |" in table


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx missing")
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing (make services installs it)")
def test_a_small_real_run_produces_its_tables() -> None:
    # Every yardstick and gateway target under a second of load each, and a small discovery run: the harness works
    # end to end with nothing but this checkout and Debian's nginx and wrk. About 30 s on an idle 2-core machine.
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--only",
            "throughput,answers,convergence,scale",
            "--rounds",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--max-extra-rounds",
            "0",
            "--trials",
            "1",
            "--scale",
            "1,3",
            "--instances",
            "2",
            "--probes",
            "1",
            "--no-install",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "### Throughput and latency" in proc.stdout
    for row in ("| nginx proxy |", "| raw relay (uvloop + httptools): the ceiling |", "| naive aiohttp proxy (uvloop)"):
        assert row in proc.stdout
    assert "| consulgw, no policy, --workers 2 (2 processes) |" in proc.stdout
    assert "| consulgw, split 90/10 + sticky + mirror 100% |" in proc.stdout
    assert "Against the bar" in proc.stdout
    assert "### Answers the gateway makes itself (cache, composite)" in proc.stdout
    for row in ("| cache hit (memory) |", "| composite: 5 + 10 + 20 ms calls |"):
        assert row in proc.stdout
    assert "### Consul change -> route in force" in proc.stdout
    assert "| 3 x 2 |" in proc.stdout
    assert "failures" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx missing")
def test_a_small_consul_scale_run_produces_its_tables() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--only",
            "consul",
            "--consul-services",
            "30",
            "--consul-instances",
            "2",
            "--consul-nodes",
            "5",
            "--consul-trials",
            "1",
            "--consul-workers",
            "1",
            "--no-install",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "### Consul at scale" in proc.stdout
    assert "30 services x 2 instances on 5 nodes" in proc.stdout
    assert "| 1 process | new route | 1 |" in proc.stdout
    assert "connections at one moment" not in proc.stdout  # the budget held
