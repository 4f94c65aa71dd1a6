"""Supervision of every process the benchmark starts.

Each component runs in its own session (``start_new_session=True``), so a terminal Ctrl-C reaches only the harness,
which then stops the components itself, in reverse order, by process group: SIGTERM, then SIGKILL after a grace
period. ``Supervisor`` is a context manager and its ``close()`` is idempotent, so a ``try/finally`` (or ``with``) in
the harness is all it takes to leave nothing behind on success, failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


class ComponentFailed(RuntimeError):
    """A component did not start (or died); the message carries its last log lines."""


@dataclass(slots=True)
class Component:
    name: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        if self.log is None:
            return "(its output went to /dev/null)"
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(could not read {self.log}: {exc})"
        kept = text.splitlines()[-lines:]
        return "\n".join(kept) if kept else "(log is empty)"


def free_port() -> int:
    """A port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def http_status(url: str, timeout: float = 1.0, headers: dict[str, str] | None = None) -> int | None:
    """The HTTP status of a GET, or None when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


class Supervisor:
    def __init__(self, grace: float = 5.0) -> None:
        self._grace = grace
        self._components: list[Component] = []

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Component:
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed right after Popen
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        except OSError as exc:
            raise ComponentFailed(f"{name}: could not execute {argv[0]}: {exc}") from exc
        finally:
            if not isinstance(out, int):
                out.close()
        component = Component(name=name, argv=tuple(argv), popen=popen, log=log)
        self._components.append(component)
        return component

    def wait_for(
        self, component: Component, ready: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
    ) -> float:
        """Poll ``ready`` until true; fail with the component's last log lines if it exits or the time runs out."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if ready():
                return time.monotonic() - started
            if not component.alive():
                raise ComponentFailed(
                    f"{component.name} exited with status {component.popen.returncode} before {what}.\n"
                    f"command: {' '.join(component.argv)}\nlast log lines:\n{component.tail()}"
                )
            if time.monotonic() > deadline:
                raise ComponentFailed(
                    f"{component.name} did not reach '{what}' within {timeout:g}s.\n"
                    f"command: {' '.join(component.argv)}\nlast log lines:\n{component.tail()}"
                )
            time.sleep(interval)

    def wait_http(self, component: Component, url: str, *, timeout: float = 20.0, expect: int = 200) -> float:
        return self.wait_for(
            component, lambda: http_status(url) == expect, timeout=timeout, what=f"GET {url} -> {expect}"
        )

    def wait_tcp(self, component: Component, port: int, *, timeout: float = 20.0) -> float:
        def connects() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                return sock.connect_ex(("127.0.0.1", port)) == 0

        return self.wait_for(component, connects, timeout=timeout, what=f"listening on 127.0.0.1:{port}")

    def check(self, component: Component) -> None:
        if not component.alive():
            raise ComponentFailed(
                f"{component.name} died (exit status {component.popen.returncode}).\n"
                f"command: {' '.join(component.argv)}\nlast log lines:\n{component.tail()}"
            )

    def stop(self, component: Component) -> None:
        """SIGTERM the component's process group, SIGKILL it after the grace period."""
        popen = component.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=self._grace)
        # The leader may be gone while children of its group remain (e.g. nginx workers): always sweep the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=self._grace)
        if component in self._components:
            self._components.remove(component)

    def groups(self) -> frozenset[int]:
        """Process-group ids of the running components (each leads its own session)."""
        return frozenset(c.pid for c in self._components if c.alive())

    def close(self) -> None:
        while self._components:
            self.stop(self._components[-1])
