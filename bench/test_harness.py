"""Self-checks for the benchmark harness: its parsers on captured outputs, and one small real run.

Not collected by `make test` (pytest's testpaths is tests/); run with `.venv/bin/pytest bench/test_harness.py`.
Nothing here asserts a speed: performance is measured by `make bench`, never by a timed test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import profile, report, wrk
from harness.discovery import percentile
from harness.stack import render_nginx

BENCH = Path(__file__).resolve().parent
SHARED = BENCH.parent.parent / "shared" / "bench"

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


@pytest.mark.skipif(not (SHARED / "nginx.conf.template").exists(), reason="../shared/bench is not on this machine")
def test_nginx_template_is_rendered_as_its_header_says(tmp_path: Path) -> None:
    conf = render_nginx(SHARED / "nginx.conf.template", tmp_path, 9001, 9100).read_text(encoding="utf-8")
    assert "@" not in "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
    assert f"pid {tmp_path}/nginx.pid;" in conf
    assert "listen 127.0.0.1:9001;" in conf
    assert "listen 127.0.0.1:9100;" in conf


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx missing")
def test_a_small_discovery_run_produces_its_tables() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--only",
            "convergence,scale",
            "--trials",
            "2",
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
    assert "### Consul change -> route in force" in proc.stdout
    assert "| 3 x 2 |" in proc.stdout
    assert "failures" in proc.stdout
