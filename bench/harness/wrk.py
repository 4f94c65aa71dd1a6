"""Running wrk and reading its report (``--latency`` adds the percentile distribution)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # -> milliseconds
_DURATION = r"([0-9.]+)(us|ms|s|m|h)"
_REQS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_PCT = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+" + _DURATION, re.M)
_TOTAL = re.compile(r"^\s+(\d+) requests in " + _DURATION, re.M)
_NON2XX = re.compile(r"^\s+Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int

    @property
    def bad(self) -> int:
        """Responses that were not 2xx/3xx plus socket-level errors: any of these makes the run suspect."""
        return self.non_2xx + self.socket_errors


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(text: str) -> WrkResult:
    """Parse wrk's human-readable report. Raises WrkError when a required figure is missing."""
    reqs = _REQS.search(text)
    total = _TOTAL.search(text)
    pct = {int(m.group(1)): _ms(m.group(2), m.group(3)) for m in _PCT.finditer(text)}
    if reqs is None or total is None or not {50, 75, 90, 99} <= pct.keys():
        raise WrkError(f"unrecognised wrk output (was --latency given?):\n{text}")
    non2xx = _NON2XX.search(text)
    sock = _SOCKET.search(text)
    return WrkResult(
        requests_per_s=float(reqs.group(1)),
        p50_ms=pct[50],
        p75_ms=pct[75],
        p90_ms=pct[90],
        p99_ms=pct[99],
        requests=int(total.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def command(url: str, *, duration: float, threads: int, connections: int, headers: Sequence[str] = ()) -> list[str]:
    seconds = max(1, round(duration))  # wrk takes whole seconds only
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url]


def shown(argv: Sequence[str]) -> list[str]:
    """The command line with credential header values masked, for messages and reports."""
    return [re.sub(r"(?i)^(authorization:\s*\S+\s).*", r"\1[redacted]", a) for a in argv]


def run(
    url: str, *, duration: float, threads: int = 1, connections: int = 32, headers: Sequence[str] = ()
) -> tuple[WrkResult, str]:
    argv = command(url, duration=duration, threads=threads, connections=connections, headers=headers)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise WrkError(f"{' '.join(shown(argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return parse(proc.stdout), proc.stdout
