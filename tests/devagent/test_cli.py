"""``consulgw dev-agent`` as a real process: starts, logs dev_agent_started, serves, and exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import pytest


def test_starts_serves_and_stops_on_sigterm(free_port: Callable[[], int]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "consulgw", "dev-agent", "--listen", f"127.0.0.1:{port}", "--node", "cli-node",
         "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    with proc:
        _drive(proc, port)


def _drive(proc: subprocess.Popen[str], port: int) -> None:
    try:
        assert proc.stderr is not None
        started = json.loads(proc.stderr.readline())
        assert started["event"] == "dev_agent_started"
        assert started["url"] == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/catalog/nodes", timeout=5) as resp:
            assert [n["Node"] for n in json.loads(resp.read())] == ["cli-node"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        pytest.param("nope", "--listen: 'nope' is not HOST:PORT", id="not-hostport"),
        pytest.param("127.0.0.1:99999", "--listen: port 99999", id="port-range"),
    ],
)
def test_bad_listen_is_one_line_naming_the_flag(listen: str, fragment: str) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "consulgw", "dev-agent", "--listen", listen],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert fragment in lines[0]
    assert time.monotonic() - started < 30


def test_listen_on_busy_port_names_the_flag(free_port: Callable[[], int]) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "consulgw", "dev-agent", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("consulgw dev-agent: error: --listen: cannot listen on")


def test_bad_script_checks_variable_names_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consulgw", "dev-agent", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CONSULGW_DEV_SCRIPT_CHECKS": "maybe"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "consulgw dev-agent: error: CONSULGW_DEV_SCRIPT_CHECKS: 'maybe' must be true or false"
    )
