"""A token that lacks KV read: the watcher says so once, keeps routing from the catalog, keeps the policies it last
read, and recovers when the token may read again. Against a proxy that answers the KV prefix as Consul answers such a
token (403, or the keys filtered out), and against an ACL-enabled dev agent when the dev agent supports ACLs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

import aiohttp
import pytest
import structlog

from consulgw.devagent import DevAgent
from tests.discovery.conftest import Agent, Running, eventually
from tests.support.processes import clean_env

MANAGEMENT = "kv-denied-test-management-token"
NO_KV_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


@pytest.fixture
async def dev() -> AsyncIterator[DevAgent]:
    async with DevAgent(node="test-node", port=0) as agent:
        yield agent


def denials(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == "consul_kv_read_denied"]


@pytest.mark.parametrize("mode", ["denied", "filtered"])
async def test_routing_goes_on_from_the_catalog_and_the_denial_is_reported_once(
    dev: DevAgent,
    admin_session: aiohttp.ClientSession,
    start_watcher: Callable[..., Running],
    mode: Literal["denied", "filtered"],
) -> None:
    from tests.support.consul_fakes import KvDenyingProxy

    agent = Agent(dev.url, admin_session)
    await agent.register("web")
    await agent.kv_put("consulgw/services/web", b'{"retries": {"attempts": 2}}')
    async with KvDenyingProxy(dev.url, prefix="consulgw/", mode=mode) as proxy:
        with structlog.testing.capture_logs() as logs:
            run = start_watcher(proxy.url, max_backoff=0.05, wait=0.3)  # a KV read every 50 ms (403) or 0.3 s
            first = await run.recorder.wait_for(lambda s: True)
            assert set(first.services) == {"web"}  # routed from the catalog, not held up by the KV read
            assert dict(first.kv) == {}  # nothing could be read yet: no policies
            await eventually(lambda: proxy.denied >= 3)
            status = run.watcher.status
            assert status.kv_access == mode
            assert status.consul_reachable  # Consul answers: this is not an outage
            assert status.failing_watches == 0
            assert len(denials(logs)) == 1  # once, not once per retry
            (denial,) = denials(logs)
            assert denial["endpoint"] == "/v1/kv/consulgw/"
            assert 'key_prefix "consulgw/"' in str(denial["hint"])

            proxy.denying = False  # the token gets its KV read back
            snap = await run.recorder.wait_for(lambda s: "services/web" in s.kv)
            assert snap.kv_changed
            await eventually(lambda: run.watcher.status.kv_access == "ok")
            assert any(e["event"] == "consul_kv_read_restored" for e in logs)

            proxy.denying = True  # and loses it again: the policies last read stay in force
            count = len(run.recorder.snapshots)
            await eventually(lambda: run.watcher.status.kv_access == mode)
            await agent.kv_put("consulgw/services/web", b"{}")
            await asyncio.sleep(0.3)  # a negative check: a wrongly applied empty KV would publish by now
            assert all("services/web" in s.kv for s in run.recorder.snapshots[count:])
            assert len(denials(logs)) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def acl_dev_agent(tmp_path: Path) -> AsyncIterator[str]:
    """``consulgw dev-agent`` with Consul's ACL configuration keys; skips while the dev agent has no ACLs."""
    config = tmp_path / "acl.json"
    config.write_text(
        json.dumps({"acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MANAGEMENT}}})
    )
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consulgw",
        "dev-agent",
        "--listen",
        f"127.0.0.1:{port}",
        "--config-file",
        str(config),
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                if proc.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.put(f"{url}/v1/acl/bootstrap") as resp:
                        if resp.status in (200, 400, 403, 401, 404):
                            break
                await asyncio.sleep(0.05)
            alive = proc.returncode is None
            if alive:
                async with http.get(f"{url}/v1/acl/token/self", headers={"X-Consul-Token": MANAGEMENT}) as resp:
                    alive = resp.status == 200
        if not alive:
            pytest.skip("the dev agent has no ACLs yet (consulgw dev-agent --config-file with acl.enabled)")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_with_an_acl_dev_agent_a_token_without_key_read_is_reported(
    tmp_path: Path, start_watcher: Callable[..., Running]
) -> None:
    async with acl_dev_agent(tmp_path) as url, aiohttp.ClientSession() as http:
        root = {"X-Consul-Token": MANAGEMENT}

        async def put(path: str, body: object) -> dict[str, object]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with http.put(url + path, data=data, headers=root) as resp:
                assert resp.status == 200, await resp.text()
                return json.loads(await resp.text() or "null") or {}

        await put("/v1/acl/policy", {"Name": "gateway-without-kv", "Rules": NO_KV_RULES})
        token = str((await put("/v1/acl/token", {"Policies": [{"Name": "gateway-without-kv"}]}))["SecretID"])
        await put("/v1/agent/service/register", {"Name": "web", "ID": "web", "Port": 80, "Tags": ["gw"]})
        await put("/v1/kv/consulgw/services/web", b"{}")

        run = start_watcher(url, token=token, max_backoff=0.05)
        first = await run.recorder.wait_for(lambda s: True)
        assert set(first.services) == {"web"}
        assert dict(first.kv) == {}
        await eventually(lambda: run.watcher.status.kv_access in ("denied", "filtered"))
