"""``consulgw dev-agent`` as a real process: starts, logs dev_agent_started, serves, and exits 0 on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

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


# ---- configuration: CONSUL_LOCAL_CONFIG, --config-file, flags -------------------------------------------------


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "consulgw", "dev-agent", "--log-format", "json", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _get(port: int, path: str, token: str = "") -> tuple[dict[str, str], object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Consul-Token": token})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return dict(resp.headers), json.loads(resp.read())


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``consulgw dev-agent ARGS`` as a process, stopped (and its pipe closed) on exit."""
    with _start(args, env) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_started(proc: subprocess.Popen[str]) -> list[str]:
    """Lines before (and including) dev_agent_started: the configuration warnings, then the start line."""
    assert proc.stderr is not None
    lines = []
    while True:
        line = proc.stderr.readline()
        assert line, f"dev-agent exited: {lines}"
        lines.append(line.rstrip("\n"))
        if "dev_agent_started" in line:
            return lines


def test_config_sources_merge_in_consuls_order_and_flags_win(free_port: Callable[[], int], tmp_path: Path) -> None:
    port = free_port()
    local = {"datacenter": "envdc", "node_name": "env-node", "acl": {"enabled": True, "default_policy": "deny",
             "tokens": {"initial_management": "mgmt-secret"}}}  # fmt: skip
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"node_name": "file-node", "enable_script_checks": True, "server": True}))
    with running(
        ["--listen", f"127.0.0.1:{port}", "--config-file", str(config), "--node", "flag-node"],
        {"CONSUL_LOCAL_CONFIG": json.dumps(local)},
    ) as proc:
        lines = _wait_started(proc)
        assert [line for line in lines if not line.startswith("{")] == [
            f"consulgw dev-agent: warning: {config}: config key 'server' is not supported by the dev agent (ignored)"
        ]
        headers, body = _get(port, "/v1/agent/self", "mgmt-secret")
        assert isinstance(body, dict)
        assert body["Config"]["NodeName"] == "flag-node"
        assert body["Config"]["Datacenter"] == "envdc"
        assert body["DebugConfig"]["EnableScriptChecks"] is True
        assert body["DebugConfig"]["ACLsEnabled"] is True
        assert headers["X-Consul-Default-ACL-Policy"] == "deny"
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            _get(port, "/v1/agent/self")
        assert anonymous.value.code == 403
        anonymous.value.close()


def test_ports_http_is_the_port_without_listen(free_port: Callable[[], int]) -> None:
    port = free_port()
    with running([], {"CONSUL_LOCAL_CONFIG": json.dumps({"ports": {"http": port}})}) as proc:
        _wait_started(proc)
        _, leader = _get(port, "/v1/status/leader")
        assert leader


def test_flags_for_limits_and_script_checks(free_port: Callable[[], int]) -> None:
    port = free_port()
    with running(
        ["--listen", f"127.0.0.1:{port}", "--http-max-conns-per-client", "1", "--enable-script-checks"],
        {"CONSULGW_DEV_SCRIPT_CHECKS": ""},
    ) as proc:
        _wait_started(proc)
        _, body = _get(port, "/v1/agent/self")
        assert isinstance(body, dict)
        assert body["DebugConfig"]["EnableScriptChecks"] is True
        with socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port)) as extra:
            extra.settimeout(10)
            data = extra.recv(4096)
            assert data.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")


def test_leave_stops_the_process_with_status_zero(free_port: Callable[[], int]) -> None:
    port = free_port()
    with running(["--listen", f"127.0.0.1:{port}"]) as proc:
        _wait_started(proc)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/agent/leave", method="PUT")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        pytest.param(
            ["--http-max-conns-per-client", "lots"], {},
            "consulgw dev-agent: error: --http-max-conns-per-client: 'lots' must be a whole number >= 0 (0: no limit)",
            id="flag",
        ),
        pytest.param(
            [], {"CONSUL_LOCAL_CONFIG": '{"acl": {"default_policy": "sometimes"}}'},
            "consulgw dev-agent: error: CONSUL_LOCAL_CONFIG: acl.default_policy: 'sometimes' must be \"allow\" or "
            "\"deny\"",
            id="env-config",
        ),
        pytest.param(
            [], {"CONSUL_LOCAL_CONFIG": '{"limits": '},
            "consulgw dev-agent: error: CONSUL_LOCAL_CONFIG: not valid JSON (line 1 column 12: Expecting value)",
            id="env-json",
        ),
        pytest.param(
            ["--wan-peer", "dc2"], {},
            "consulgw dev-agent: error: --wan-peer: 'dc2' must be DC=http://HOST:PORT (e.g. dc2=http://127.0.0.1:8501)",
            id="wan-peer-no-url",
        ),
        pytest.param(
            ["--wan-peer", "dc2=ftp://127.0.0.1:8501"], {},
            "consulgw dev-agent: error: --wan-peer: 'dc2=ftp://127.0.0.1:8501' must be DC=http://HOST:PORT "
            "(e.g. dc2=http://127.0.0.1:8501)",
            id="wan-peer-scheme",
        ),
        pytest.param(
            ["--wan-peer", "dc2=http://127.0.0.1"], {},
            "consulgw dev-agent: error: --wan-peer: 'dc2=http://127.0.0.1' must be DC=http://HOST:PORT "
            "(e.g. dc2=http://127.0.0.1:8501)",
            id="wan-peer-no-port",
        ),
        pytest.param(
            ["--wan-peer", "dc1=http://127.0.0.1:8501"], {},
            "consulgw dev-agent: error: --wan-peer: 'dc1=http://127.0.0.1:8501' names this agent's own datacenter "
            "'dc1'",
            id="wan-peer-own-dc",
        ),
        pytest.param(
            ["--wan-peer", "dc2=http://127.0.0.1:8501", "--wan-peer", "dc2=http://127.0.0.1:8502"], {},
            "consulgw dev-agent: error: --wan-peer: 'dc2=http://127.0.0.1:8502' names datacenter 'dc2' a second time",
            id="wan-peer-twice",
        ),
        pytest.param(
            ["--config-file", "/nonexistent/agent.json"], {},
            "consulgw dev-agent: error: --config-file: cannot read '/nonexistent/agent.json': No such file or directory",
            id="missing-file",
        ),
    ],
)  # fmt: skip
def test_bad_configuration_is_one_line_and_status_2(args: list[str], env: dict[str, str], line: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consulgw", "dev-agent", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]


def test_bad_config_file_value_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "limits.json"
    config.write_text('{"limits": {"http_max_conns_per_client": -3}}')
    result = subprocess.run(
        [sys.executable, "-m", "consulgw", "dev-agent", "--config-file", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"consulgw dev-agent: error: {config}: limits.http_max_conns_per_client: -3 must be a whole number >= 0 "
        "(0: no limit)"
    )
