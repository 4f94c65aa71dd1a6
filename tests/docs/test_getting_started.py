"""docs/getting-started.md and the README example, run against a real ``consulgw demo`` on free ports.

The demo's lines are compared with what the demo itself prints and then run one by one; every other command of
the page is kept here as literal text and run through ``Shell`` (default addresses rewritten to the test's).
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from consulgw.demo import demo_steps

from .support import (
    BIN,
    Demo,
    Shell,
    assert_shows,
    doc_files,
    fenced_blocks,
    free_port,
    read_doc,
    shown_after,
    stop,
    wait_until,
)
from .support import wait_http as wait_url

PAGE = "docs/getting-started.md"

HTTP_SERVER = "python3 -m http.server 9000 --bind 127.0.0.1 &"
REGISTER = "curl -s -X PUT --data @hello.json http://127.0.0.1:8500/v1/agent/service/register"
CALL = "curl -s http://127.0.0.1:8080/hello/"
ROUTES = ".venv/bin/consulgw routes"
FAIL = "curl -s -X PUT http://127.0.0.1:8500/v1/agent/check/fail/hello-1-ttl"
PASS = "curl -s -X PUT http://127.0.0.1:8500/v1/agent/check/pass/hello-1-ttl"
VALIDATE = ".venv/bin/consulgw policy validate hello-policy.json"
PUT = ".venv/bin/consulgw policy put hello hello-policy.json"
LOOP = r"for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/hello/; done"
REAL_CONSUL = 'consulgw run --consul http://consul.example:8500 --token "$GATEWAY_TOKEN"'


@pytest.fixture(scope="module")
def shell(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shell]:
    """The reader's second terminal: a checkout (``.venv`` included) with the demo's addresses and the file
    server on a free port. Files the page asks to save go into it, as they would into the reader's clone."""
    work: Path = tmp_path_factory.mktemp("reader")
    (work / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    rewrite = {**demo.rewrite, "9000": str(free_port())}
    sh = Shell(cwd=work, rewrite=rewrite, env={"CONSUL_HTTP_ADDR": f"http://127.0.0.1:{demo.consul}"})
    yield sh
    sh.stop_all()


def test_page_shows_what_the_demo_prints(demo: Demo) -> None:
    """The page's block of demo lines is the demo's own banner (titles and commands), with the default ports."""
    page = read_doc(PAGE)
    printed = demo.output()
    for old, new in demo.rewrite.items():
        printed = printed.replace(new, old)
    banner = printed.split("Try these (from the repository root):\n", 1)[1]
    blocks = [body for tag, _, body in fenced_blocks(page) if tag == "sh" and body.startswith("# ")]
    assert len(blocks) == 1
    assert blocks[0].strip() == banner.strip()
    shown = [line for line in blocks[0].splitlines() if line and not line.startswith("# ")]
    assert shown == [step.command for step in demo_steps(8080, 8081, 8500)]
    for address in ("http://127.0.0.1:8080", "http://127.0.0.1:8081/", "http://127.0.0.1:8500"):
        assert address in printed
        assert f"`{address.rstrip('/')}" in page


def test_every_line_the_demo_prints_does_what_it_says(demo: Demo, shell: Shell) -> None:
    """Each printed line, run in order from a checkout, gives the answer the demo promises."""
    sh = Shell(cwd=shell.cwd, rewrite=demo.rewrite)
    assignments: list[str] = []
    for step in demo_steps(8080, 8081, 8500):
        script = "\n".join([*assignments, step.command])
        output = sh.run(script)
        if not step.expect:  # TOKEN=$(...): later lines use it
            assignments.append(step.command)
            continue
        assert step.expect in output, f"{step.title}\n{step.command}\n{output}"
    dashboard = wait_url(f"http://127.0.0.1:{demo.admin}/", expect="<h2>Routes</h2>")
    assert "/-/routes" in dashboard


def test_route_a_service_of_your_own(demo: Demo, shell: Shell) -> None:
    page = read_doc(PAGE)
    files = doc_files(page)
    assert set(files) == {"hello.json", "hello-policy.json"}
    for name, body in files.items():
        (shell.cwd / name).write_text(shell.local(body))
    server = shell.start(HTTP_SERVER)
    try:
        wait_url(shell.local("http://127.0.0.1:9000/"), expect="Directory listing", proc=server)

        assert shell.run(REGISTER) == ""
        assert_shows(shell.local(shown_after(page, CALL)), shell.eventually(CALL, "Directory listing for /"))
        assert_shows(shell.local(shown_after(page, ROUTES)), shell.run(ROUTES))

        assert shell.run(FAIL) == ""
        assert_shows(shown_after(page, PASS), shell.eventually(CALL, "no_healthy_upstream"))
        assert shell.run(PASS) == ""
        shell.eventually(CALL, "Directory listing for /")

        assert_shows(shown_after(page, VALIDATE), shell.run(VALIDATE) + shell.run(PUT))

        def limited() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{demo.admin}/-/routes", timeout=5) as resp:
                return json.load(resp)["services"]["hello"]["policy"]["rate_limit"] is not None  # type: ignore[no-any-return]

        wait_until(limited)
        assert_shows(shown_after(page, LOOP), shell.run(LOOP))
        assert shell.run(LOOP).split() == ["429"] * 4  # 3 per minute, spent
    finally:
        stop(server)
        shell.run("curl -s -X PUT http://127.0.0.1:8500/v1/agent/service/deregister/hello-1")


def test_readme_example_is_the_pages_example() -> None:
    """README.md's ten lines are the same file and the same commands as the page's section 2."""
    readme = read_doc("README.md")
    page = read_doc(PAGE)
    json_blocks = [body for tag, _, body in fenced_blocks(readme) if tag == "json"]
    assert json_blocks == [doc_files(page)["hello.json"].rstrip("\n")]
    commands = [body for tag, _, body in fenced_blocks(readme) if tag == "sh"][1].splitlines()
    assert commands == [HTTP_SERVER, REGISTER, CALL]
    for command in commands:
        assert f"```sh\n{command}\n```" in page


def test_pointing_at_a_real_consul(demo: Demo, tmp_path: Path) -> None:
    """The production line, with the Consul address pointing at the demo's agent and the token in the environment;
    ports come from CONSULGW_LISTEN / CONSULGW_ADMIN_LISTEN so the command text stays as shown."""
    listen, admin = free_port(), free_port()
    sh = Shell(
        cwd=tmp_path,
        rewrite={"http://consul.example:8500": f"http://127.0.0.1:{demo.consul}"},
        env={
            "CONSULGW_LISTEN": f"127.0.0.1:{listen}",
            "CONSULGW_ADMIN_LISTEN": f"127.0.0.1:{admin}",
            "CONSULGW_LOG_FORMAT": "json",
        },
    )
    log = tmp_path / "gateway.log"
    token = "3f0c7e2a-demo-gateway-token"
    gateway = sh.start(REAL_CONSUL, log=log, GATEWAY_TOKEN=token)
    try:
        wait_url(f"http://127.0.0.1:{admin}/-/ready", expect='"ready": true', proc=gateway)
        body = wait_url(f"http://127.0.0.1:{listen}/users/1", expect='"service": "users"')
        assert re.search(r'"instance": "users-[12]"', body)
    finally:
        assert stop(gateway) == 0
    text = log.read_text()
    assert "gateway_started" in text
    assert token not in text
    assert "It listens on `0.0.0.0:8080` and serves its admin endpoints on `127.0.0.1:8081`." in read_doc(PAGE)
