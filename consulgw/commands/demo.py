"""``consulgw demo``: the whole picture on one machine, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal

import aiohttp

from consulgw.demo import FAILOVER_SERVICE, demo_services, demo_steps, failover_services
from consulgw.devagent import DevAgent
from consulgw.logs import configure_logging
from consulgw.server.gateway import Gateway
from consulgw.settings import ConsulSettings, GatewaySettings, HostPort, Secret, normalize_consul_address


def main(args: argparse.Namespace) -> int:
    configure_logging("console", "warning")
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.services_only:
        return await _services_only(args, stop)
    async with contextlib.AsyncExitStack() as stack:
        dc2 = DevAgent(node="consulgw-demo-dc2", datacenter="dc2", port=0)  # a second datacenter, for failover
        await dc2.start()
        stack.push_async_callback(dc2.stop)
        agent = DevAgent(node="consulgw-demo", port=args.consul_port, wan_peers={"dc2": dc2.url})
        await agent.start()
        stack.push_async_callback(agent.stop)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        await stack.enter_async_context(demo_services(session, agent.url))
        await stack.enter_async_context(failover_services(session, agent.url, dc2.url))
        settings = GatewaySettings(
            consul=ConsulSettings(address=agent.url),
            listen=HostPort("127.0.0.1", args.gateway_port),
            admin_listen=HostPort("127.0.0.1", args.admin_port),
            drain_timeout=2.0,
            sticky_key=Secret(value=secrets.token_hex(32)),  # one gateway: a key of this run is all it needs
        )
        gateway = await stack.enter_async_context(Gateway(settings))
        await gateway.wait_ready(15)
        await _failed_over(gateway)
        _print_banner(agent.port, gateway.port, gateway.admin_port)
        if args.exit_after is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.exit_after)
        else:
            await stop.wait()
        print("\nstopping: gateway, demo services, dev agent", flush=True)
    return 0


async def _services_only(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """The demo services alone, registered in an existing Consul (the Procfile's `services` process)."""
    url = normalize_consul_address("--consul", args.consul or "http://127.0.0.1:8500")
    async with aiohttp.ClientSession() as session:
        for _ in range(150):  # Consul may still be starting (honcho starts every process at once)
            try:
                async with session.get(f"{url}/v1/status/leader") as resp:
                    if resp.status == 200 and (await resp.json()):
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        else:
            print(f"consulgw demo: Consul at {url} did not answer", flush=True)
            return 1
        async with demo_services(session, url) as ids:
            print(f"demo services registered in {url}: {', '.join(ids)}", flush=True)
            if args.exit_after is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.exit_after)
            else:
                await stop.wait()
    return 0


async def _failed_over(gateway: Gateway, timeout: float = 10.0) -> None:
    """Until the gateway holds inventory's dc2 instance (its remote watch answered), so the printed line works."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        view = gateway.view()
        entry = view.services.get(FAILOVER_SERVICE) if view is not None else None
        if entry is not None and any(i.weight > 0 for i in entry.remote.get("dc2", ())):
            return
        await asyncio.sleep(0.05)


def _print_banner(consul: int, gateway: int, admin: int) -> None:
    lines = [
        "",
        "consulgw demo is running. Ctrl-C stops everything.",
        "",
        f"  gateway      http://127.0.0.1:{gateway}",
        f"  dashboard    http://127.0.0.1:{admin}/",
        f"  dev agent    http://127.0.0.1:{consul}   (Consul HTTP API: export CONSUL_HTTP_ADDR=127.0.0.1:{consul})",
        "",
        "Services: users (weighted round-robin 1:3), orders (least-connections, JWT), search (ip-hash, rate limit),",
        "products (cached), notifications (transformed), catalog (a canary at 10%), cart (sticky sessions), "
        "inventory (failed over to datacenter dc2); composite route /api/user-dashboard.",
        "Try these (from the repository root):",
        "",
    ]
    for step in demo_steps(gateway, admin, consul):
        lines.append(f"# {step.title}")
        lines.append(step.command)
        lines.append("")
    print("\n".join(lines), flush=True)
