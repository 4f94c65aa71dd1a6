"""The deployment files driving the real gateway: the nearest thing to `docker compose up` on a machine without Docker.

The gateway is started the way deploy/systemd/consulgw.service starts it (ExecStart argv, consulgw.env.example
environment), against `consulgw dev-agent`, with real Redis and real upstream HTTP servers. Only what must change
outside containers is rewritten: listen ports, the Consul address, and each demo service's address and port
(compose service names do not resolve here). Everything else comes verbatim from compose/: service ids, names,
gw.route tags, weights, HTTP checks, the KV policies, the README's token one-liner. The image's HEALTHCHECK
script is the readiness probe.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from .deployfiles import COMPOSE, HEALTHCHECK_SCRIPT, UNIT, UNIT_ENV, compose, load_json, parse_env_file, parse_unit

pytestmark = pytest.mark.slow

CONSULGW = Path(sys.executable).parent / "consulgw"
REDIS = ("127.0.0.1", 6379)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _wait(what: str, condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _start(argv: list[str], env: dict[str, str], log: Path) -> Process:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Process(proc, log)


def _stop(process: Process) -> int:
    if process.proc.poll() is None:
        process.proc.send_signal(signal.SIGTERM)
    try:
        return process.proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.proc.kill()
        process.proc.wait()
        raise


class _Upstream(BaseHTTPRequestHandler):
    """Stands in for one demo container: answers with its compose service name, /health 200 for the Consul check."""

    name = ""

    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else f"Hostname: {self.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstreams() -> Iterator[dict[str, int]]:
    """compose service name -> port of a real HTTP server playing that container."""
    definitions = load_json(COMPOSE / "consul" / "services.json")["services"]
    servers: dict[str, ThreadingHTTPServer] = {}
    threads = []
    for address in sorted({d["address"] for d in definitions}):
        handler = type(f"Upstream_{address}", (_Upstream,), {"name": address})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers[address] = server
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        threads.append(thread)
    try:
        yield {name: server.server_address[1] for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()


@pytest.fixture
def consul(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    agent = _start(
        [str(CONSULGW), "dev-agent", "--listen", f"127.0.0.1:{port}"], dict(os.environ), tmp_path / "agent.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("the dev agent", lambda: agent.proc.poll() is None and _ok(f"{url}/v1/status/leader"), timeout=30)
        yield url
    finally:
        _stop(agent)


def _ok(url: str) -> bool:
    try:
        return _http("GET", url)[0] == 200
    except OSError:
        return False


def _register_compose_services(consul: str, upstreams: dict[str, int]) -> list[dict[str, Any]]:
    definitions: list[dict[str, Any]] = load_json(COMPOSE / "consul" / "services.json")["services"]
    for definition in definitions:
        port = upstreams[definition["address"]]
        local = {**definition, "address": "127.0.0.1", "port": port}
        local["checks"] = []
        for check in definition["checks"]:
            url = urlsplit(check["http"])
            local["checks"].append({**check, "http": urlunsplit(url._replace(netloc=f"127.0.0.1:{port}"))})
        status, body = _http("PUT", f"{consul}/v1/agent/service/register", json.dumps(local).encode())
        assert status == 200, (definition["id"], status, body)
    return definitions


def _seed_kv(consul: str) -> None:
    # The kv-seed service's own commands: consul kv put <key> @/kv/<file>, with /kv mounted from compose/kv.
    service = compose()["services"]["kv-seed"]
    for line in service["command"][0].splitlines():
        argv = shlex.split(line)
        if not argv:
            continue
        key, value = argv[3], argv[4]
        path = COMPOSE / "kv" / Path(value[1:]).name
        status, _ = _http("PUT", f"{consul}/v1/kv/{key}", path.read_bytes())
        assert status == 200, key


def _gateway_env(consul: str, public: int, admin: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSULGW_", "CONSUL_HTTP_"))}
    env.update(parse_env_file(UNIT_ENV).values)
    env.update(
        CONSUL_HTTP_ADDR=consul,
        CONSULGW_LISTEN=f"127.0.0.1:{public}",
        CONSULGW_ADMIN_LISTEN=f"127.0.0.1:{admin}",
        CONSULGW_LOG_FORMAT="console",
    )
    return env


def _readme_token() -> str:
    readme = (COMPOSE / "README.md").read_text()
    (line,) = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("TOKEN=$(")]
    argv = shlex.split(line[len("TOKEN=$(") : -1])
    code = argv[argv.index("-c") + 1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


def _all_checks_passing(consul: str, names: set[str]) -> bool:
    for name in names:
        status, body = _http("GET", f"{consul}/v1/health/service/{name}")
        entries = json.loads(body) if status == 200 else []
        if not entries or any(c["Status"] != "passing" for e in entries for c in e["Checks"]):
            return False
    return True


@pytest.mark.skipif(not CONSULGW.exists(), reason="the consulgw console script is not installed in this venv")
def test_compose_demo_against_the_real_gateway(consul: str, upstreams: dict[str, int], tmp_path: Path) -> None:
    pytest.importorskip("consulgw.commands.run", reason="`consulgw run` is not in this tree")
    if not _redis_answers():
        pytest.skip("no Redis on 127.0.0.1:6379 (make services starts one)")
    definitions = _register_compose_services(consul, upstreams)
    _seed_kv(consul)
    _wait("Consul HTTP checks", lambda: _all_checks_passing(consul, {d["name"] for d in definitions}))

    public, admin = _free_port(), _free_port()
    argv = shlex.split(parse_unit(UNIT).value("Service", "ExecStart"))[1:]
    gateway = _start([str(CONSULGW), *argv], _gateway_env(consul, public, admin), tmp_path / "gateway.log")
    try:
        # Readiness through the image's own HEALTHCHECK script.
        probe_env = {**os.environ, "CONSULGW_ADMIN_LISTEN": f"0.0.0.0:{admin}"}

        def ready() -> bool:
            assert gateway.proc.poll() is None, gateway.output()
            probe = [sys.executable, str(HEALTHCHECK_SCRIPT), "/-/ready"]
            return subprocess.run(probe, env=probe_env, capture_output=True, timeout=30, check=False).returncode == 0

        _wait("/-/ready", ready)

        def routed() -> set[str]:
            _, body = _http("GET", f"http://127.0.0.1:{admin}/-/routes")
            return {json.dumps(r) for r in json.loads(body)["routes"]}

        _wait("all demo routes", lambda: all(f'"/{n}' in "".join(routed()) for n in ("whoami", "echo", "private")))
        _, body = _http("GET", f"http://127.0.0.1:{admin}/-/routes")
        assert json.loads(body)["route_errors"] == [], body

        # Weighted balancing between whoami-1 (3) and whoami-2 (1).
        hosts: Counter[str] = Counter()
        for _ in range(40):
            status, text = _http("GET", f"http://127.0.0.1:{public}/whoami")
            assert status == 200, text
            hosts[text.decode().strip()] += 1
        assert hosts["Hostname: whoami-1"] > 2 * hosts["Hostname: whoami-2"] > 0, hosts

        # JWT on private: 401 without a token, 200 with the README's token.
        _wait("the JWT policy", lambda: _http("GET", f"http://127.0.0.1:{public}/private")[0] == 401)
        token = _readme_token()
        status, text = _http("GET", f"http://127.0.0.1:{public}/private", headers={"Authorization": f"Bearer {token}"})
        assert status == 200, text

        # Rate limit on echo (5 per 10s per IP, in Redis): the sixth quick request is refused.
        codes = [_http("GET", f"http://127.0.0.1:{public}/echo")[0] for _ in range(6)]
        assert codes.count(200) <= 5, codes
        assert codes[-1] == 429, codes
    finally:
        code = _stop(gateway)
    # SIGTERM: drain and exit 0, as every deployment's stop sequence expects.
    assert code == 0, gateway.output()
