"""deploy/Dockerfile: base, user, install, ports, entry point, COPY sources, and its HEALTHCHECK run for real."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .deployfiles import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Instruction,
    docker_context_includes,
    dockerfile_env,
    dockerignore_patterns,
    instruction_options,
    parse_dockerfile,
    rel,
)


def _instructions(keyword: str) -> list[Instruction]:
    return [i for i in parse_dockerfile(DOCKERFILE) if i.keyword == keyword]


def _one(keyword: str) -> Instruction:
    found = _instructions(keyword)
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def _copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context."""
    out = []
    for ins in [*_instructions("COPY"), *_instructions("ADD")]:
        options, rest = instruction_options(ins.args)
        assert "from" not in options, "no multi-stage COPY --from in this image"
        words = ins.exec_form() or shlex.split(rest)
        out.append((words[:-1], words[-1]))
    return out


def test_base_is_slim_python_311() -> None:
    (base,) = _instructions("FROM")
    assert base.args.split()[0] == "python:3.11-slim"


def test_runs_as_a_numeric_non_root_user() -> None:
    user = _instructions("USER")[-1].args.strip()
    uid = user.split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit(), user
    assert int(uid) != 0, user
    last_user_line = _instructions("USER")[-1].line
    assert all(i.line < last_user_line for i in _instructions("RUN")), "RUN after USER would run as the app user"


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        pytest.param("ENTRYPOINT", ["consulgw"], id="entrypoint"),
        pytest.param("CMD", ["run"], id="cmd"),
    ],
)
def test_entry_point_is_exec_form(keyword: str, expected: list[str]) -> None:
    # Exec form: consulgw is PID 1 and receives SIGTERM itself (a shell would swallow it and break the drain).
    assert _one(keyword).exec_form() == expected


def test_installs_the_project_without_pip_cache() -> None:
    runs = " ".join(i.args for i in _instructions("RUN"))
    assert "pip install --no-cache-dir ." in runs


def test_exposes_public_and_admin_ports() -> None:
    exposed = {int(word.split("/")[0]) for ins in _instructions("EXPOSE") for word in ins.args.split()}
    assert exposed == {8080, 8081}


def test_admin_listens_on_all_interfaces_in_the_container() -> None:
    env = dockerfile_env(parse_dockerfile(DOCKERFILE))
    assert env["CONSULGW_ADMIN_LISTEN"] == "0.0.0.0:8081"


def test_stop_signal_is_sigterm() -> None:
    assert _one("STOPSIGNAL").args == "SIGTERM"


def test_healthcheck_uses_python_not_curl() -> None:
    options, rest = instruction_options(_one("HEALTHCHECK").args)
    assert {"interval", "timeout", "retries"} <= set(options)
    command = Instruction(0, "CMD", rest.removeprefix("CMD").strip()).exec_form()
    assert command is not None
    assert command[0] == "python", command
    assert "curl" not in rest
    assert "wget" not in rest


@pytest.mark.parametrize(
    ("sources", "destination"), [pytest.param(s, d, id=" ".join(s)) for s, d in _copies()] or [pytest.param([], "")]
)
def test_copy_sources_exist_and_are_in_the_build_context(sources: list[str], destination: str) -> None:
    assert sources, "the Dockerfile has no COPY"
    patterns = dockerignore_patterns(DOCKERIGNORE)
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        kept = [f for f in files if docker_context_includes(rel(f), patterns)]
        assert kept, f"COPY {source}: everything is excluded by {rel(DOCKERIGNORE)}"
        if path.is_file():
            assert kept == [path], f"COPY {source}: excluded by {rel(DOCKERIGNORE)}"


@pytest.mark.parametrize(
    ("path", "included"),
    [
        pytest.param("consulgw/cli.py", True, id="package"),
        pytest.param("pyproject.toml", True, id="pyproject"),
        pytest.param("README.md", True, id="readme-for-package-metadata"),
        pytest.param(".venv/bin/python", False, id="venv"),
        pytest.param(".git/HEAD", False, id="git"),
        pytest.param("consulgw/__pycache__/cli.cpython-311.pyc", False, id="bytecode"),
        pytest.param("tests/deploy/test_dockerfile.py", False, id="tests"),
    ],
)
def test_build_context_is_small(path: str, included: bool) -> None:
    assert docker_context_includes(path, dockerignore_patterns(DOCKERIGNORE)) is included


# --- the HEALTHCHECK command, run for real against a real HTTP server ------------------------------------------------


class _Admin(BaseHTTPRequestHandler):
    statuses = {"/-/healthy": 200, "/-/ready": 503}

    def do_GET(self) -> None:
        status = self.statuses.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def admin_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthcheck_argv() -> list[str]:
    """The image's HEALTHCHECK command, with in-image paths mapped back to the files COPY puts there."""
    _, rest = instruction_options(_one("HEALTHCHECK").args)
    command = Instruction(0, "CMD", rest.removeprefix("CMD").strip()).exec_form()
    assert command is not None
    in_image = {dest: REPO / sources[0] for sources, dest in _copies() if len(sources) == 1}
    argv = [sys.executable if command[0] == "python" else command[0]]
    for word in command[1:]:
        argv.append(str(in_image[word]) if word in in_image else word)
    return argv


def _run(argv: list[str], admin_listen: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONSULGW_ADMIN_LISTEN"}
    if admin_listen is not None:
        env["CONSULGW_ADMIN_LISTEN"] = admin_listen
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_healthcheck_command_maps_to_the_repository_script() -> None:
    argv = _healthcheck_argv()
    assert Path(argv[1]) == REPO / "deploy" / "healthcheck.py"
    assert argv[2:] == ["/-/healthy"]


@pytest.mark.parametrize(
    ("path", "listen", "exit_code", "says"),
    [
        pytest.param("/-/healthy", "0.0.0.0:{port}", 0, "healthy: GET http://127.0.0.1:{port}/-/healthy", id="alive"),
        pytest.param("/-/healthy", "127.0.0.1:{port}", 0, "answered 200", id="loopback-listen"),
        pytest.param("/-/ready", "0.0.0.0:{port}", 1, "answered 503", id="not-ready-is-a-failure"),
        pytest.param("/-/healthy", "0.0.0.0:{closed}", 1, "unhealthy: GET", id="nothing-listening"),
        pytest.param("/-/healthy", "no-port", 1, "is not HOST:PORT", id="bad-admin-listen"),
    ],
)
def test_healthcheck_script_against_a_real_server(
    admin_port: int, path: str, listen: str, exit_code: int, says: str
) -> None:
    argv = [*_healthcheck_argv()[:2], path]
    closed = _closed_port()
    result = _run(argv, listen.format(port=admin_port, closed=closed))
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert says.format(port=admin_port) in result.stdout
    assert result.stderr == ""


def test_healthcheck_defaults_to_the_admin_default() -> None:
    # Without CONSULGW_ADMIN_LISTEN the script asks 127.0.0.1:8081, the gateway's own default.
    result = _run(_healthcheck_argv(), None)
    assert "127.0.0.1:8081/-/healthy" in result.stdout
