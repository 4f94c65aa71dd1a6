"""docs/operations.md: the production command line, readiness, metrics and SIGTERM, run for real.

The gateway is the page's ``consulgw run`` line with two workers, pointed at the demo's dev agent and the test
suite's Redis (``redis.internal:6379`` becomes ``127.0.0.1:6379``); its ports come from CONSULGW_LISTEN and
CONSULGW_ADMIN_LISTEN so the command text stays as shown.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .support import BIN, ROOT, Demo, Shell, assert_shows, free_port, read_doc, shown_after, wait_http

PAGE = "docs/operations.md"

RUN = (
    "consulgw run --consul http://127.0.0.1:8500 --workers 2 --redis redis://redis.internal:6379/0 "
    "--max-staleness 60s --drain-timeout 30s"
)
READY = "curl -s http://127.0.0.1:8081/-/ready"
METRICS = (
    "curl -s http://127.0.0.1:8081/metrics | grep -E '^consulgw_(consul_sync_age_seconds|consul_errors_total|routes) '"
)
TERM = 'kill -TERM "$PID"'

REDIS_POLICY = '{"rate_limit": {"requests": 4, "per": "1m", "backend": "redis", "key": "header:X-Tenant"}}'


def test_production_command_line(demo: Demo, tmp_path: Path, redis_available: None) -> None:
    page = read_doc(PAGE)
    listen, admin = free_port(), free_port()
    sh = Shell(
        cwd=tmp_path,
        rewrite={**demo.rewrite, "127.0.0.1:8081": f"127.0.0.1:{admin}", "redis.internal:6379": "127.0.0.1:6379"},
        env={"CONSULGW_LISTEN": f"127.0.0.1:{listen}", "CONSULGW_ADMIN_LISTEN": f"127.0.0.1:{admin}"},
    )
    log = tmp_path / "gateway.log"
    gateway = sh.start(RUN, log=log)
    try:
        for _ in range(12):  # each curl is a new connection: both workers (SO_REUSEPORT) must have their view
            wait_http(f"http://127.0.0.1:{admin}/-/ready", expect='"ready": true', proc=gateway)
        assert_shows(shown_after(page, READY).replace('"version": 3', '"version": …'), sh.run(READY))

        metrics = sh.run(METRICS)
        assert re.search(r"^consulgw_consul_sync_age_seconds 0\.0$", metrics, re.MULTILINE), metrics
        assert re.search(r"^consulgw_consul_errors_total 0\.0$", metrics, re.MULTILINE), metrics
        assert re.search(r"^consulgw_routes [1-9]\d*\.0$", metrics, re.MULTILINE), metrics

        # Both workers answer on the one port; a Redis limit holds across them (4 per minute per tenant).
        tenant = f"t-{time.monotonic_ns()}"
        sh.run(f"curl -s -X PUT --data '{REDIS_POLICY}' http://127.0.0.1:8500/v1/kv/consulgw/services/users")
        for _ in range(12):  # each call is a new connection, so both workers are asked (SO_REUSEPORT)
            wait_http(f"http://127.0.0.1:{admin}/-/routes", expect='"backend": "redis"')
        codes = [_status(f"http://127.0.0.1:{listen}/users/1", {"X-Tenant": tenant}) for _ in range(8)]
        assert codes == [200] * 4 + [429] * 4, codes
    finally:
        sh.run("curl -s -X DELETE http://127.0.0.1:8500/v1/kv/consulgw/services/users")
        assert sh.run(TERM, PID=str(gateway.pid)) == ""
        code = gateway.wait(35)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert text.count("worker_started") == 2
    assert text.count("worker_stopped") == 2
    assert "redis://" not in text  # the Redis URL may carry a password: never logged


def test_page_documents_every_flag_and_metric() -> None:
    """The flag table covers ``consulgw run --help`` and the metrics table covers consulgw/metrics.py."""
    from prometheus_client import CollectorRegistry

    from consulgw.metrics import ConsulMetrics, GatewayMetrics

    page = read_doc(PAGE)
    usage = subprocess.run([str(BIN / "consulgw"), "run", "--help"], capture_output=True, text=True, check=True)
    flags = set(re.findall(r"(--[a-z][a-z-]+)", usage.stdout)) - {"--help"}
    assert len(flags) > 15
    for flag in sorted(flags):
        assert f"`{flag}" in page, flag
    consul = CollectorRegistry()
    ConsulMetrics(consul)
    for family in [*GatewayMetrics().registry.collect(), *consul.collect()]:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in page, name


def test_page_lists_every_log_event_of_the_gateway() -> None:
    """Every event name the gateway and its commands log (the dev agent aside) is in the page's tables."""
    page = read_doc(PAGE)
    pattern = re.compile(r"\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z][a-z_]+)\"")
    sources = [p for p in (ROOT / "consulgw").rglob("*.py") if "devagent" not in p.relative_to(ROOT).as_posix()]
    events = {event for path in sources for event in pattern.findall(path.read_text("utf-8"))}
    assert {"request_completed", "route_table_swapped", "consul_watch_failed", "policy_rejected"} <= events
    for event in sorted(events):
        assert f"`{event}`" in page, event


def _status(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def redis_available() -> None:
    done = subprocess.run(
        ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\\r\\n' >&3 && head -c 5 <&3"],
        capture_output=True,
        timeout=5,
        check=False,
    )
    if b"+PONG" not in done.stdout:
        pytest.skip("Redis on 127.0.0.1:6379 is needed (make services starts it)")
