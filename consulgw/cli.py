"""The ``consulgw`` command line: argument grammar only.

Each subcommand's work lives in ``consulgw.commands.<module>.main(args) -> int``, imported only when that
subcommand runs. Errors of type ConfigError are printed as one line naming the key and value, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from consulgw import __version__
from consulgw.errors import ConfigError

_CONSUL_HELP = "Consul HTTP address (env CONSUL_HTTP_ADDR, default http://127.0.0.1:8500)"


def _add_consul_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consul", metavar="URL", help=_CONSUL_HELP)
    parser.add_argument("--token", metavar="TOKEN", help="Consul ACL token (env CONSUL_HTTP_TOKEN)")
    parser.add_argument("--datacenter", metavar="DC", help="Consul datacenter (default: the agent's)")


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("json", "console"), help="log format (env CONSULGW_LOG_FORMAT)")
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="log level (env CONSULGW_LOG_LEVEL)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consulgw",
        description="A Consul-native API gateway: routes from the Consul catalog, policy from Consul KV.",
    )
    parser.add_argument("--version", action="version", version=f"consulgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    agent = sub.add_parser(
        "dev-agent",
        help="run the embedded in-memory Consul dev agent",
        description="An in-memory agent speaking Consul's HTTP API like `consul agent -dev`, for demos and tests.",
    )
    agent.add_argument(
        "--listen", metavar="HOST:PORT", help="HTTP API address (default 127.0.0.1:8500, or ports.http of the config)"
    )
    agent.add_argument("--node", metavar="NAME", help="node name (default: node_name, else this host's name)")
    agent.add_argument("--datacenter", metavar="DC", help="datacenter name (default: datacenter, else dc1)")
    agent.add_argument(
        "--wan-peer",
        action="append",
        metavar="DC=URL",
        help="another dev agent's datacenter, e.g. dc2=http://127.0.0.1:8501 (repeatable): ?dc=DC is answered there",
    )
    agent.add_argument(
        "--config-file",
        action="append",
        metavar="PATH",
        help="Consul JSON agent configuration (repeatable; read after env CONSUL_LOCAL_CONFIG, before the flags)",
    )
    agent.add_argument(
        "--http-max-conns-per-client",
        metavar="N",
        help="concurrent HTTP connections per client IP, as limits.http_max_conns_per_client (default 200, 0: none)",
    )
    agent.add_argument(
        "--enable-script-checks",
        action="store_true",
        default=None,
        help="run script checks (as enable_script_checks; env CONSULGW_DEV_SCRIPT_CHECKS=true)",
    )
    _add_log_flags(agent)
    agent.set_defaults(handler="devagent")

    run = sub.add_parser(
        "run",
        help="run the gateway",
        description="Watch Consul and route clients to healthy instances. Flags win over environment variables.",
    )
    _add_consul_flags(run)
    run.add_argument(
        "--listen", metavar="HOST:PORT", help="public listener (env CONSULGW_LISTEN, default 0.0.0.0:8080)"
    )
    run.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="admin listener: /-/healthy, /-/ready, /-/routes, /metrics, dashboard "
        "(env CONSULGW_ADMIN_LISTEN, default 127.0.0.1:8081)",
    )
    run.add_argument(
        "--kv-prefix", metavar="PREFIX", help="KV prefix for policies (env CONSULGW_KV_PREFIX, default consulgw/)"
    )
    run.add_argument("--tag-prefix", metavar="PREFIX", help="route tag prefix (env CONSULGW_TAG_PREFIX, default gw)")
    run.add_argument(
        "--tag-compat", metavar="fabio", help="also read Fabio's urlprefix- tags (env CONSULGW_TAG_COMPAT)"
    )
    run.add_argument(
        "--trusted-proxies",
        metavar="CIDRS",
        help="comma-separated CIDRs whose X-Forwarded-For is believed (env CONSULGW_TRUSTED_PROXIES)",
    )
    run.add_argument(
        "--encoded-slashes",
        metavar="keep|reject",
        help="request paths holding %%2F or %%5C: keep them encoded, or answer 400 "
        "(env CONSULGW_ENCODED_SLASHES, default keep)",
    )
    run.add_argument(
        "--workers", metavar="N", help="processes sharing the port via SO_REUSEPORT (env CONSULGW_WORKERS)"
    )
    run.add_argument(
        "--redis", metavar="URL", help="Redis URL for shared rate limits and caches (env CONSULGW_REDIS_URL)"
    )
    run.add_argument(
        "--cache-memory-bytes",
        metavar="SIZE",
        help="bound of the in-process response cache, e.g. 64MiB (env CONSULGW_CACHE_MEMORY_BYTES, default 64MiB)",
    )
    run.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate for the public listener (env CONSULGW_TLS_CERT)"
    )
    run.add_argument("--tls-key", metavar="FILE", help="PEM private key for the public listener (env CONSULGW_TLS_KEY)")
    run.add_argument("--upstream-ca", metavar="FILE", help="CA bundle for HTTPS upstreams (env CONSULGW_UPSTREAM_CA)")
    run.add_argument(
        "--max-staleness",
        metavar="DURATION",
        help="/-/ready fails when the Consul view is older than this (env CONSULGW_MAX_STALENESS, default 60s)",
    )
    run.add_argument(
        "--drain-timeout",
        metavar="DURATION",
        help="on SIGTERM, wait this long for in-flight requests (env CONSULGW_DRAIN_TIMEOUT, default 30s)",
    )
    run.add_argument(
        "--client-header-timeout",
        metavar="DURATION",
        help="time to receive a request head (env CONSULGW_CLIENT_HEADER_TIMEOUT, default 10s)",
    )
    run.add_argument(
        "--client-body-timeout",
        metavar="DURATION",
        help="longest silence while receiving a request body; then 408 (env CONSULGW_CLIENT_BODY_TIMEOUT, default 30s)",
    )
    run.add_argument(
        "--client-body-min-rate",
        metavar="BYTES",
        help="after --client-body-timeout, a request body must keep arriving at this many bytes per second; then 408 "
        "(env CONSULGW_CLIENT_BODY_MIN_RATE, default 500)",
    )
    run.add_argument(
        "--keepalive-timeout",
        metavar="DURATION",
        help="idle keep-alive client connections are closed after this (env CONSULGW_KEEPALIVE_TIMEOUT, default 60s)",
    )
    run.add_argument(
        "--send-timeout",
        metavar="DURATION",
        help="a client that reads nothing for this long is disconnected (env CONSULGW_SEND_TIMEOUT, default 30s)",
    )
    run.add_argument(
        "--max-connections",
        metavar="N",
        help="client connections at once; beyond, new ones get 503 and are closed "
        "(env CONSULGW_MAX_CONNECTIONS, default 10000)",
    )
    run.add_argument(
        "--request-buffer",
        metavar="BYTES",
        help="request bodies up to this size are received whole (memory, then a temporary file) before the upstream "
        "is contacted; larger ones stream (env CONSULGW_REQUEST_BUFFER, default 1073741824; 0 streams all)",
    )
    run.add_argument(
        "--coalesce",
        metavar="DURATION",
        help="window that coalesces bursts of Consul changes into one update (env CONSULGW_COALESCE, default 50ms)",
    )
    run.add_argument(
        "--sticky-key",
        metavar="KEY",
        help="secret (at least 16 characters) that makes sticky-session cookies; give every replica the same one "
        "(env CONSULGW_STICKY_KEY, default: a random key per run)",
    )
    run.add_argument(
        "--consul-max-conns",
        metavar="N",
        help="most connections the gateway (all workers together) holds to the Consul agent, at any number of "
        "services (env CONSULGW_CONSUL_MAX_CONNS, default 64, at least 5)",
    )
    _add_log_flags(run)
    run.set_defaults(handler="run")

    routes = sub.add_parser(
        "routes",
        help="print the route table the gateway would build, read straight from Consul",
        description="Read Consul directly (no gateway needed) and print routes, instances and rejected tags.",
    )
    _add_consul_flags(routes)
    routes.add_argument("--tag-prefix", metavar="PREFIX", help="route tag prefix (env CONSULGW_TAG_PREFIX, default gw)")
    routes.add_argument(
        "--tag-compat", metavar="fabio", help="also read Fabio's urlprefix- tags (env CONSULGW_TAG_COMPAT)"
    )
    routes.add_argument("--json", action="store_true", help="machine-readable output")
    routes.set_defaults(handler="routes")

    policy = sub.add_parser("policy", help="validate, read and write per-service KV policies")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    validate = policy_sub.add_parser("validate", help="check a policy document without writing it")
    validate.add_argument("file", metavar="FILE", help="JSON policy file ('-' for standard input)")
    get = policy_sub.add_parser("get", help="print a service's policy from Consul KV")
    get.add_argument("service", metavar="SERVICE")
    put = policy_sub.add_parser("put", help="validate, then write a service's policy (check-and-set)")
    put.add_argument("service", metavar="SERVICE")
    put.add_argument("file", metavar="FILE", help="JSON policy file ('-' for standard input)")
    for action in (validate, get, put):
        _add_consul_flags(action)
        action.add_argument("--kv-prefix", metavar="PREFIX", help="KV prefix (default consulgw/)")
    policy.set_defaults(handler="policy")

    consumer = sub.add_parser("consumer", help="manage consumers (API keys, passwords, rate-limit overrides)")
    consumer_sub = consumer.add_subparsers(dest="consumer_command", metavar="ACTION", required=True)
    add = consumer_sub.add_parser("add", help="create or update a consumer; secrets are stored as hashes only")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--api-key", action="append", metavar="KEY", help="an API key (repeatable); stored as SHA-256")
    add.add_argument("--password", metavar="PASSWORD", help="a password for basic auth; stored as a salted hash")
    _add_consul_flags(add)
    add.add_argument("--kv-prefix", metavar="PREFIX", help="KV prefix (default consulgw/)")
    consumer.set_defaults(handler="consumer")

    demo = sub.add_parser(
        "demo",
        help="run the whole picture locally: dev agent, demo services, gateway",
        description="Start the dev agent, demo services and the gateway, print curl lines; Ctrl-C stops all.",
    )
    demo.add_argument("--gateway-port", type=int, default=8080, help="public port (default 8080)")
    demo.add_argument("--admin-port", type=int, default=8081, help="admin port (default 8081)")
    demo.add_argument("--consul-port", type=int, default=8500, help="dev agent port (default 8500)")
    demo.add_argument(
        "--exit-after", type=float, metavar="SECONDS", help="stop by itself after this long (used by tests)"
    )
    demo.add_argument(
        "--services-only",
        action="store_true",
        help="run only the demo services against an existing Consul (--consul); used by the Procfile",
    )
    demo.add_argument("--consul", metavar="URL", help="with --services-only: the Consul to register in")
    demo.set_defaults(handler="demo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(f"consulgw.commands.{args.handler}")
    try:
        result: int = module.main(args)
    except ConfigError as exc:
        print(f"consulgw {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
