"""Helpers for the tests that run the commands of README.md and docs/*.md.

Conventions of those pages: commands live in fenced blocks tagged ``sh`` (or ``bash``/``shell``/``console``) and
use the default addresses (dev agent ``127.0.0.1:8500``, gateway ``127.0.0.1:8080``, admin ``127.0.0.1:8081``).
What a command prints is shown in the next ```text block; ``…`` in a shown line matches anything on that line,
and a line that is only ``…`` matches any number of lines. ``<!-- file: NAME -->`` before a ```json block names
the file the reader saves it as.

The tests keep every command they run as literal text (``tests/docs/test_docs_commands.py`` looks for it) and run
it through ``Shell``, which only rewrites the default addresses and ports into the test's free ones.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WILDCARD = "…"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_doc(name: str) -> str:
    return (ROOT / name).read_text("utf-8")


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    """(fence tag, marker comment on the line before or "", body) of every fenced block, in order."""
    lines = text.splitlines()
    found: list[tuple[str, str, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("```"):
            tag = line[3:].strip()
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            marker = lines[index - 1].strip() if index and lines[index - 1].strip().startswith("<!--") else ""
            found.append((tag, marker, "\n".join(lines[index + 1 : end])))
            index = end
        index += 1
    return found


def doc_files(text: str) -> dict[str, str]:
    """The ```json blocks marked ``<!-- file: NAME -->``, by NAME."""
    files: dict[str, str] = {}
    for tag, marker, body in fenced_blocks(text):
        found = re.fullmatch(r"<!-- file: (\S+) -->", marker)
        if tag == "json" and found:
            files[found.group(1)] = body + "\n"
    return files


def shown_after(text: str, command: str) -> str:
    """The ```text block that follows the command block containing ``command`` (what the page says it prints)."""
    blocks = fenced_blocks(text)
    for index, (tag, _, body) in enumerate(blocks):
        if tag in ("sh", "bash", "shell", "console") and command in body.splitlines():
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            assert following is not None, f"no block after {command!r}"
            assert following[0] == "text", f"no ```text block after {command!r}"
            return following[2]
    raise AssertionError(f"command not shown on the page: {command!r}")


def shown_pattern(shown: str) -> re.Pattern[str]:
    parts: list[str] = []
    for line in shown.splitlines():
        if line.strip() == WILDCARD:
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(piece) for piece in line.split(WILDCARD)) + r"\n")
    return re.compile("".join(parts))


def assert_shows(shown: str, actual: str) -> None:
    """``actual`` contains the shown lines, in order (with the ``…`` wildcards)."""
    text = actual if actual.endswith("\n") else actual + "\n"
    assert shown_pattern(shown).search(text), f"the page shows:\n{shown}\n\nthe command printed:\n{actual}"


@dataclass
class Shell:
    """Runs documented command lines with bash, the default addresses rewritten to the test's own."""

    cwd: Path
    rewrite: Mapping[str, str]
    env: dict[str, str] = field(default_factory=dict)
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def local(self, text: str) -> str:
        for old, new in self.rewrite.items():
            text = text.replace(old, new)
        return text

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "CONSULGW_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.env)
        env.update(extra)
        return env

    def run(self, command: str, *, check: bool = True, timeout: float = 30.0, **env: str) -> str:
        """Run the (rewritten) command; return standard output and error together."""
        done = subprocess.run(
            ["bash", "-c", self.local(command)],
            cwd=self.cwd,
            env=self.environ(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        output = done.stdout.decode("utf-8", "replace")
        if check:
            assert done.returncode == 0, f"{command}\nexit status {done.returncode}\n{output}"
        return output

    def eventually(self, command: str, expect: str, *, timeout: float = 10.0) -> str:
        """Run the command until its output contains ``expect`` (the gateway follows Consul within moments)."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.run(command, check=False)
            if expect in output:
                return output
            if time.monotonic() > deadline:
                pytest.fail(f"{command!r} never printed {expect!r}; last output:\n{output}")
            time.sleep(0.05)

    def start(self, command: str, *, log: Path | None = None, **env: str) -> subprocess.Popen[bytes]:
        """Start a long-running command (a trailing `` &`` is the page's way of saying so) in the background."""
        text = self.local(command).removesuffix("&").strip()
        sink = log.open("wb") if log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {text}"],
                cwd=self.cwd,
                env=self.environ(**env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log is not None and not isinstance(sink, int):
                sink.close()
        self.background.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.background):
            stop(proc)


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal a process we started (by its own pid) and wait for it; kill it if it does not stop."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {getattr(predicate, '__name__', predicate)}")
        time.sleep(0.05)


def wait_http(url: str, *, expect: str = "", timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> str:
    """Poll ``url`` with curl until it answers 2xx with ``expect`` in the body."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["curl", "-s", "-f", url], capture_output=True, check=False, timeout=10)
        body = done.stdout.decode("utf-8", "replace")
        if done.returncode == 0 and expect in body:
            return body
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited with status {proc.returncode} before {url} answered")
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer with {expect!r} within {timeout}s")
        time.sleep(0.05)


@dataclass
class Demo:
    """A running ``consulgw demo`` on free ports."""

    proc: subprocess.Popen[bytes]
    gateway: int
    admin: int
    consul: int
    log: Path

    @property
    def rewrite(self) -> dict[str, str]:
        return {
            "127.0.0.1:8080": f"127.0.0.1:{self.gateway}",
            "127.0.0.1:8081": f"127.0.0.1:{self.admin}",
            "127.0.0.1:8500": f"127.0.0.1:{self.consul}",
        }

    def output(self) -> str:
        return self.log.read_text("utf-8", "replace")


@contextlib.contextmanager
def running_demo(tmp: Path, ports: tuple[int, int, int]) -> Iterator[Demo]:
    """``consulgw demo`` (what ``make demo`` runs) as a subprocess, until its banner has been printed."""
    from consulgw.demo import demo_steps

    gateway, admin, consul = ports
    log = tmp / "demo.log"
    args = [
        str(BIN / "consulgw"), "demo",
        "--gateway-port", str(gateway), "--admin-port", str(admin), "--consul-port", str(consul),
        "--exit-after", "300",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "CONSULGW_"))}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    demo = Demo(proc=proc, gateway=gateway, admin=admin, consul=consul, log=log)
    last = demo_steps(gateway, admin, consul)[-1].command
    try:
        deadline = time.monotonic() + 30
        while last not in demo.output():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"consulgw demo did not print its banner:\n{demo.output()}")
            time.sleep(0.05)
        yield demo
    finally:
        assert stop(proc, signal.SIGINT) == 0, demo.output()
