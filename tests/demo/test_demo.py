"""`make demo` as a new user runs it: every printed step gives the answer it promises; Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from consulgw.demo import demo_steps

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_make_demo_prints_working_curl_lines_and_stops_cleanly() -> None:
    gateway, admin, consul = _free_port(), _free_port(), _free_port()
    args = f"--gateway-port {gateway} --admin-port {admin} --consul-port {consul}"
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS={args}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 60
        steps = demo_steps(gateway, admin, consul)
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line.rstrip("\n"))
            if line.strip() == steps[-1].command.strip():
                break
        text = "\n".join(banner)
        assert "consulgw demo is running" in text, text
        assert f"http://127.0.0.1:{admin}/" in text  # the dashboard URL
        for step in steps:  # exactly what a user sees
            assert step.command in text

        script = "\n".join(f"printf '\\n=== step {i}\\n'\n{step.command}" for i, step in enumerate(steps))
        run = subprocess.run(
            ["bash", "-c", script],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"},
            check=False,
        )
        outputs = re.split(r"^=== step \d+$", run.stdout, flags=re.MULTILINE)[1:]
        assert len(outputs) == len(steps), run.stdout + run.stderr
        for step, output in zip(steps, outputs, strict=True):
            assert step.expect in output, f"{step.title}\n$ {step.command}\n{output}\n{run.stderr}"
        assert re.search(r"\b6 users-2\b", outputs[0]), outputs[0]  # Weights 1:3 over 8 requests
        canary = next(o for step, o in zip(steps, outputs, strict=True) if "of 100 new visitors" in step.title)
        counts = {subset: int(n) for n, subset in re.findall(r"(\d+) X-Gateway-Subset: (\w+)", canary)}
        assert sum(counts.values()) == 100, canary
        assert counts.get("canary", 0) <= 30, canary  # 10% expected; binomial(100, 0.1) stays far below 30

        # Ctrl-C: the demo process (make's child) stops gateway, services and dev agent, and exits 0.
        (demo_pid,) = _children(proc.pid)
        os.kill(demo_pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        rest = proc.stdout.read()
        assert "stopping: gateway, demo services, dev agent" in rest
        for port in (gateway, admin, consul):
            assert not _port_open(port), f"port {port} still open after Ctrl-C"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
