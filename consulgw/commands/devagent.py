"""``consulgw dev-agent``: run the in-memory Consul dev agent until SIGINT/SIGTERM (or ``PUT /v1/agent/leave``).

Configuration as ``consul agent -dev`` takes it: the JSON agent configuration in ``CONSUL_LOCAL_CONFIG`` (what
Consul's container image reads), then every ``--config-file`` in order, then the flags, each overriding the one
before (see ``consulgw.devagent.agent_config``). Unknown configuration keys are reported, one warning line each, and
ignored. Like ``consul agent -dev`` the agent refuses script checks unless enabled (``--enable-script-checks``,
``enable_script_checks``, or ``CONSULGW_DEV_SCRIPT_CHECKS=true``, which py-consul's own test fixture relies on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import structlog

from consulgw.devagent import DevAgent
from consulgw.devagent.agent_config import AgentConfig, Source, load_agent_config
from consulgw.devagent.wan import parse_wan_peers
from consulgw.errors import ConfigError
from consulgw.logs import configure_logging
from consulgw.settings import HostPort, parse_hostport

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8500


def main(args: argparse.Namespace) -> int:
    config = load(args, os.environ)
    listen = _listen(args, config)
    configure_logging(args.log_format or "console", args.log_level or "info")
    peers = _wan_peers(args, config)
    agent = DevAgent.from_config(config, host=listen.host, port=listen.port, wan_peers=peers)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        return asyncio.run(_serve(agent))
    return int(uvloop.run(_serve(agent)))


def load(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> AgentConfig:
    """The merged agent configuration; warnings (unknown keys) go to stderr, one line each."""
    sources: list[Source] = []
    local = environ.get("CONSUL_LOCAL_CONFIG", "")
    if local.strip():
        sources.append(Source("CONSUL_LOCAL_CONFIG", local))
    for path in args.config_file or []:
        try:
            with open(path, encoding="utf-8") as handle:
                sources.append(Source(path, handle.read()))
        except OSError as exc:
            raise ConfigError(f"--config-file: cannot read {path!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config-file: {path!r} is not UTF-8 text") from None
    loaded = load_agent_config(sources, _flags(args, environ))
    for warning in loaded.warnings:
        print(f"consulgw dev-agent: warning: {warning}", file=sys.stderr)
    return loaded.config


def _flags(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if args.node is not None:
        if not args.node.strip():
            raise ConfigError(f"--node: {args.node!r} must not be empty")
        flags["node_name"] = args.node
    if args.datacenter is not None:
        if not args.datacenter or any(c.isspace() for c in args.datacenter):
            raise ConfigError(f"--datacenter: {args.datacenter!r} must be a single word")
        flags["datacenter"] = args.datacenter
    if args.http_max_conns_per_client is not None:
        text = str(args.http_max_conns_per_client).strip()
        if not text.isdigit():
            raise ConfigError(
                f"--http-max-conns-per-client: {args.http_max_conns_per_client!r} must be a whole number >= 0 "
                "(0: no limit)"
            )
        flags["limits.http_max_conns_per_client"] = int(text)
    if args.enable_script_checks:
        flags["enable_script_checks"] = True
    elif environ.get("CONSULGW_DEV_SCRIPT_CHECKS", ""):
        flags["enable_script_checks"] = _env_bool(
            "CONSULGW_DEV_SCRIPT_CHECKS", environ.get("CONSULGW_DEV_SCRIPT_CHECKS", "")
        )
    return flags


def _wan_peers(args: argparse.Namespace, config: AgentConfig) -> dict[str, str]:
    """``--wan-peer DC=http://HOST:PORT`` (repeatable): the other datacenters ``?dc=`` reaches."""
    try:
        return parse_wan_peers("--wan-peer", list(args.wan_peer or []), config.datacenter or "dc1")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _listen(args: argparse.Namespace, config: AgentConfig) -> HostPort:
    if args.listen is not None:
        return parse_hostport("--listen", str(args.listen))
    return HostPort(DEFAULT_HOST, config.http_port if config.http_port is not None else DEFAULT_PORT)


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
    stopped = asyncio.create_task(stop.wait(), name="dev-agent-signal")
    left = asyncio.create_task(agent.left.wait(), name="dev-agent-left")
    try:
        await asyncio.wait({stopped, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, left):
            task.cancel()
        log.info("dev_agent_stopping", left=agent.left.is_set())
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
