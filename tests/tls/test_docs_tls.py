"""docs/operations-tls.md tells the truth: every command in it runs, in order, and prints what the page shows.

Conventions in the doc: ```console blocks hold ``$ `` command lines followed by their expected output (``…`` in an
expected line matches anything); an HTML comment ``<!-- file: NAME -->`` before a ```json block writes that block
to NAME in the working directory. The test runs the commands in one directory with throwaway certificates, against
the in-process dev agent; only addresses and the certificate folder are rewritten (ports are picked free).
``consulgw run`` lines start the gateway in the background (a later one replaces an earlier one);
``systemctl reload consulgw`` runs the ExecReload line of deploy/systemd/consulgw.service with $MAINPID set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from consulgw.devagent import DevAgent
from tests.commands.cli import clean_env
from tests.gateway.conftest import wait_for

from .conftest import client_context, https_get, serial_seen, write_leaf
from .test_sighup_reload import GatewayProcess, wait_ready

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations-tls.md"
UNIT = ROOT / "deploy" / "systemd" / "consulgw.service"
BIN = Path(sys.executable).parent


@dataclass(slots=True)
class Command:
    line: int
    text: str
    expected: list[str] = field(default_factory=list)


def doc_steps() -> list[Command | tuple[str, str]]:
    """Commands, and ("file", name + body) steps, in document order."""
    lines = DOC.read_text("utf-8").splitlines()
    steps: list[Command | tuple[str, str]] = []
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if fence in ("```console", "```json"):
            end = lines.index("```", index + 1)
            body = lines[index + 1 : end]
            marker = re.fullmatch(r"<!-- file: (\S+) -->", lines[index - 1].strip()) if index else None
            if fence == "```json" and marker:
                steps.append((marker.group(1), "\n".join(body) + "\n"))
            elif fence == "```console":
                for offset, text in enumerate(body):
                    if text.startswith("$ "):
                        steps.append(Command(index + offset + 2, text[2:]))
                    else:
                        command = steps[-1]
                        assert isinstance(command, Command)
                        command.expected.append(text)
            index = end
        index += 1
    return steps


def matches(expected: list[str], actual: str) -> bool:
    got = actual.rstrip("\n").splitlines() if actual.strip() else []
    if len(got) != len(expected):
        return False
    for want, line in zip(expected, got, strict=True):
        pattern = ".*".join(re.escape(part) for part in want.split("…"))
        if not re.fullmatch(pattern, line):
            return False
    return True


def test_doc_shows_the_commands() -> None:
    commands = [s.text for s in doc_steps() if isinstance(s, Command)]
    assert sum("consulgw run" in c for c in commands) == 2
    assert any(c.startswith("kill -HUP") for c in commands)
    assert "systemctl reload consulgw" in commands
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT.read_text()


@pytest.fixture
async def users_https(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[int]:
    """The HTTPS upstream the doc registers as users-1 (certificate from the *internal* CA)."""
    internal = trustme.CA()
    (tmp_path / "tls").mkdir(exist_ok=True)
    internal.cert_pem.write_to_path(str(tmp_path / "tls" / "internal-ca.pem"))
    leaf = write_leaf(internal, tmp_path, "users-1", common_name="users-1")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"upstream": "users-1", "path": request.raw_path, "scheme": request.scheme})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf.cert, leaf.key)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    yield next(int(a[1]) for a in runner.addresses if isinstance(a, tuple))
    await runner.cleanup()


async def shell(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None, reason="curl and openssl are needed"
)
async def test_every_command_in_operations_tls_md(
    ca: trustme.CA,
    tmp_path: Path,
    dev_agent: DevAgent,
    users_https: int,
    free_port: Callable[[], int],
) -> None:
    tls = tmp_path / "tls"
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    live = write_leaf(ca, tls, "gateway", common_name="gateway-2026")
    renewed = write_leaf(ca, tmp_path, "renewed-leaf", common_name="gateway-2027")
    shutil.move(renewed.cert, tmp_path / "renewed.pem")
    shutil.move(renewed.key, tmp_path / "renewed.key")
    (tls / "gateway.key").write_bytes(live.key.read_bytes())
    port, admin = free_port(), free_port()
    agent = dev_agent.url.removeprefix("http://")
    rewrite = {
        "/etc/consulgw/tls/": f"{tls}/",
        "127.0.0.1:8500": agent,
        "0.0.0.0:8443": f"127.0.0.1:{port}",
        "localhost:8443": f"localhost:{port}",
        "127.0.0.1:8443": f"127.0.0.1:{port}",
        "127.0.0.1:8081": f"127.0.0.1:{admin}",
        "9443": str(users_https),
    }

    def local(text: str) -> str:
        for old, new in rewrite.items():
            text = text.replace(old, new)
        return text

    gateway: GatewayProcess | None = None
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    context = client_context(ca)

    async def start(command: str) -> GatewayProcess:
        words = shlex.split(command)
        extra: dict[str, str] = {}
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            extra[name] = value
        assert words[:2] == ["consulgw", "run"]
        log = tmp_path / "gateway.log"
        with log.open("ab") as sink:
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "consulgw"),
                *words[1:],
                cwd=tmp_path,
                env={**env, **extra},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        started = GatewayProcess(proc=proc, port=port, admin_port=admin, log=log)
        await wait_ready(started)
        return started

    async def stop(process: GatewayProcess) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.proc.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(process.proc.wait(), 15) == 0
        except TimeoutError:
            os.killpg(process.proc.pid, signal.SIGKILL)
            await process.proc.wait()
            raise

    ran: list[str] = []
    try:
        for step in doc_steps():
            if isinstance(step, tuple):
                name, body = step
                (tmp_path / name).write_text(local(body))
                continue
            command = local(step.text)
            if "consulgw run" in command:
                if gateway is not None:
                    await stop(gateway)
                gateway = await start(command)
                status, body, _ = await https_get(port, "/users/1", context, server_name="localhost")
                assert status == 200, body
            else:
                if command == "systemctl reload consulgw":
                    reload = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecReload="))
                    command = reload.removeprefix("ExecReload=")
                pid = str(gateway.proc.pid) if gateway is not None else ""
                code, out = await shell(command, tmp_path, {**env, "PID": pid, "MAINPID": pid})
                assert code == 0, f"line {step.line}: {step.text!r} exited {code}: {out}"
                assert matches(step.expected, out), f"line {step.line}: {step.text!r} printed {out!r}"
                if command.startswith("openssl s_client"):
                    serial = int(out.split("serial=", 1)[1].split()[0], 16)
                    _, _, cert = await https_get(port, "/users/1", context, server_name="localhost")
                    assert serial == serial_seen(cert)  # openssl shows what clients get
            ran.append(step.text)
        # After the documented renewal, new connections get the renewed certificate.
        _, _, cert = await https_get(port, "/users/1", context, server_name="localhost")
        assert serial_seen(cert) == renewed.serial
        assert gateway is not None
        await wait_for(lambda: gateway.log_text().count("tls_reloaded") == 2)  # systemctl reload, then kill -HUP
    finally:
        if gateway is not None and gateway.proc.returncode is None:
            await stop(gateway)
    assert len(ran) == len([s for s in doc_steps() if isinstance(s, Command)])
