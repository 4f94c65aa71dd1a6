#!/usr/bin/env bash
# Profile the gateway under wrk load and write a top-functions summary to bench/results/.
#
#   bench/profile.sh                              # py-spy attached to the running gateway (installed into .venv if missing)
#   bench/profile.sh --profile-duration 20        # sample longer
#   bench/profile.sh --profiler pyinstrument      # a fresh gateway run under pyinstrument (also the automatic fallback)
#
# Starts the same stack as `make bench` (nginx upstream, raw relay, naive proxy, dev agent, gateway with and without
# policy), samples the raw relay, the naive proxy, the gateway without policy and the gateway with JWT + Redis rate
# limit + breaker, and writes bench/results/profile-<target>.md (committed summaries) and the per-request CPU budget
# (bench/results/profile-components.md) next to the raw stacks and a speedscope file
# (open https://www.speedscope.app and load bench/results/profile-gw.speedscope.json).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/run.py --only profile "$@"
