#!/usr/bin/env bash
# A Consul for local runs: a real `consul agent -dev` when CONSUL_BIN is set, else consulgw's in-memory dev agent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${CONSUL_BIN:-}" ]; then
  exec "$CONSUL_BIN" agent -dev -client 127.0.0.1 -http-port 8500
fi
exec .venv/bin/consulgw dev-agent --listen 127.0.0.1:8500 --node consulgw-demo
