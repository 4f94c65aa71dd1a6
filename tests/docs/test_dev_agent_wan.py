"""docs/dev-agent.md "Two datacenters": the commands shown run as printed, and ``?dc=dc2`` is answered by dc2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.support import Shell, free_port, wait_http


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(tmp_path, {"127.0.0.1:8500": f"127.0.0.1:{free_port()}", "127.0.0.1:8501": f"127.0.0.1:{free_port()}"})
    try:
        yield sh
    finally:
        sh.stop_all()


def test_two_federated_dev_agents(shell: Shell) -> None:
    dc2 = shell.start("consulgw dev-agent --listen 127.0.0.1:8501 --datacenter dc2 --node node-dc2")
    wait_http(shell.local("http://127.0.0.1:8501/v1/status/leader"), proc=dc2)
    dc1 = shell.start("consulgw dev-agent --listen 127.0.0.1:8500 --wan-peer dc2=http://127.0.0.1:8501")
    wait_http(shell.local("http://127.0.0.1:8500/v1/status/leader"), proc=dc1)
    register = json.dumps({"Name": "web", "ID": "web-dc2", "Port": 9000})
    shell.run(f"curl -sf -X PUT -d '{register}' http://127.0.0.1:8501/v1/agent/service/register")
    entries = json.loads(shell.run("curl -s 'http://127.0.0.1:8500/v1/health/service/web?dc=dc2'"))
    assert [(e["Node"]["Datacenter"], e["Service"]["ID"]) for e in entries] == [("dc2", "web-dc2")]
    assert json.loads(shell.run("curl -s http://127.0.0.1:8500/v1/catalog/datacenters")) == ["dc1", "dc2"]
