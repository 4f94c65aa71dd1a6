"""The event loop while a `consulgw/defaults` change is built over N services: one gateway, nothing else measured.

    .venv/bin/python bench/micro/defaults_lag.py --services 10000

Starts a dev agent, registers N services x 10 instances on 1,000 nodes and a policy document per service, starts
`consulgw run` (one process), waits for /-/ready, then sends `GET /-/healthy` in a tight loop on one keep-alive
connection (the admin listener runs on the proxy's event loop) from 2 s before a `consulgw/defaults` change until
the gateway has logged the new view. Prints the latencies before and during, and the gateway's CPU seconds.
Every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.discovery import LagProbe, percentile, put_kv_bulk, register_bulk
from harness.http import Client, Consul, HttpError
from harness.jsonlog import JsonLog, epoch
from harness.procs import free_port
from harness.stack import clean_env, consulgw_bin


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="consulgw-defaults-lag-"))
    agent_port, port, admin_port = free_port(), free_port(), free_port()
    agent = subprocess.Popen(
        [consulgw_bin(), "dev-agent", "--listen", f"127.0.0.1:{agent_port}", "--log-level", "warning"],
        env=clean_env(),
        start_new_session=True,
    )
    gateway: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{agent_port}"
        consul = Consul(url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if consul.status("/v1/status/leader") == 200:
                    break
            except HttpError:
                pass  # not listening yet
            time.sleep(0.1)
        names = [f"s{i}" for i in range(args.services)]
        register_bulk(url, names=names, instances=10, nodes=1000, port=80)
        put_kv_bulk(url, [(f"consulgw/services/{n}", b'{"timeouts": {"read": "20s"}}') for n in names])
        log = work / "gateway.log"
        with log.open("wb") as out:
            gateway = subprocess.Popen(
                [
                    *(consulgw_bin(), "run", "--consul", url, "--log-format", "json"),
                    *("--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                start_new_session=True,
            )
        admin = Client(f"http://127.0.0.1:{admin_port}")
        started = time.monotonic()
        while True:
            try:
                if admin.status("/-/ready") == 200:
                    break
            except HttpError:
                pass  # not listening yet
            time.sleep(0.2)
        print(f"ready after {time.monotonic() - started:.1f} s")
        time.sleep(3)
        events = JsonLog(log)
        with LagProbe(f"http://127.0.0.1:{admin_port}") as lag:
            time.sleep(2)
            events.mark()
            cpu0, t0, wall0 = _cpu_seconds(gateway.pid), time.monotonic(), time.time()
            consul.put_kv("consulgw/defaults", b'{"timeouts": {"connect": "3s"}}')
            while not [d for d in events.read("route_table_swapped") if (epoch(d) or 0) >= wall0]:
                time.sleep(0.05)
            time.sleep(0.5)
            t1 = time.monotonic()
            before, during = sorted(lag.window(t0 - 2, t0)), sorted(lag.window(t0, t1))
        built = [d.get("build_ms") for d in events.read("route_table_swapped") if (epoch(d) or 0) >= wall0]
        print(f"build_ms {built}; gateway CPU {_cpu_seconds(gateway.pid) - cpu0:.2f} s over {t1 - t0:.2f} s")
        for label, values in (("before", before), ("during", during)):
            p50, p99 = (percentile(values, q) or 0.0 for q in (50, 99))
            print(
                f"/-/healthy {label}: {len(values)} requests, p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
                f"slowest {values[-1] * 1000:.1f} ms"
            )
        return 0
    finally:
        for proc in (gateway, agent):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
