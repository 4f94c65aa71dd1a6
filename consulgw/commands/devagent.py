"""``consulgw dev-agent``: run the in-memory Consul dev agent until SIGINT/SIGTERM.

Like ``consul agent -dev`` it refuses script checks unless enabled; ``CONSULGW_DEV_SCRIPT_CHECKS=true`` is the
equivalent of Consul's ``enable_script_checks = true`` (py-consul's own test fixture turns it on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

import structlog

from consulgw.devagent import DevAgent
from consulgw.errors import ConfigError
from consulgw.logs import configure_logging
from consulgw.settings import parse_hostport


def main(args: argparse.Namespace) -> int:
    listen = parse_hostport("--listen", str(args.listen))
    node = args.node or None
    if node is not None and not node.strip():
        raise ConfigError(f"--node: {args.node!r} must not be empty")
    datacenter = str(args.datacenter or "dc1")
    if not datacenter or any(c.isspace() for c in datacenter):
        raise ConfigError(f"--datacenter: {datacenter!r} must be a single word")
    script_checks = _env_bool("CONSULGW_DEV_SCRIPT_CHECKS", os.environ.get("CONSULGW_DEV_SCRIPT_CHECKS", ""))
    configure_logging(args.log_format or "console", args.log_level or "info")
    agent = DevAgent(
        node=node,
        datacenter=datacenter,
        host=listen.host,
        port=listen.port,
        enable_script_checks=script_checks,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        return asyncio.run(_serve(agent))
    return int(uvloop.run(_serve(agent)))


async def _serve(agent: DevAgent) -> int:
    log = structlog.get_logger("consulgw.devagent")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except OSError as exc:
        raise ConfigError(f"--listen: cannot listen on {agent_address(agent)}: {exc.strerror or exc}") from exc
    log.info("dev_agent_started", url=agent.url, node=agent.node, datacenter=agent.datacenter)
    try:
        await stop.wait()
    finally:
        log.info("dev_agent_stopping")
        await agent.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    log.info("dev_agent_stopped")
    return 0


def agent_address(agent: DevAgent) -> str:
    return agent.listen_address


def _env_bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{key}: {value!r} must be true or false")
