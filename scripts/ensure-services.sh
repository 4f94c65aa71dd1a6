#!/usr/bin/env bash
# Make sure what the test suite needs is on this machine and running:
#  - a Redis server answering on 127.0.0.1:6379 (installed from Debian's packages if missing);
#  - the redis-server binary itself (tests start private servers to stop them mid-test), redis-cli (to join a
#    test cluster) and redis-sentinel (Sentinel failover tests);
#  - Debian's chromium for the dashboard and API reference tests;
#  - promtool (Debian's prometheus package) for the alert rules of deploy/grafana;
#  - nginx and wrk for the benchmark harness's own small real run (bench/test_harness.py, part of `make test`) and
#    `make bench`: nginx is the upstream and a yardstick, wrk the load generator.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if ! have apt-get; then
    echo "ensure-services: $* missing and apt-get is not available; install it by hand" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq
    export APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

redis_answers() {
  # PING over bash's /dev/tcp, so no redis-cli is needed to check.
  local reply
  reply=$(timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6379 && printf "PING\r\n" >&3 && head -c 7 <&3' 2>/dev/null || true)
  [[ "$reply" == +PONG* ]]
}

have redis-server || apt_install redis-server
have redis-cli || apt_install redis-tools
have redis-sentinel || apt_install redis-sentinel
if ! redis_answers; then
  echo "ensure-services: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/consulgw-redis.log
  for _ in $(seq 1 50); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "ensure-services: redis did not come up" >&2; exit 1; }
fi

if ! have chromium; then
  apt_install chromium || echo "ensure-services: chromium unavailable; the dashboard browser test will skip" >&2
fi
if ! have promtool; then
  apt_install prometheus || echo "ensure-services: prometheus unavailable; the alert rules test will skip" >&2
fi
# nginx lives in /usr/sbin, which a non-root PATH may lack.
have_nginx() { have nginx || [ -x /usr/sbin/nginx ]; }
missing_bench=()
have_nginx || missing_bench+=(nginx)
have wrk || missing_bench+=(wrk)
if [ "${#missing_bench[@]}" -gt 0 ]; then
  apt_install --no-install-recommends "${missing_bench[@]}" ||
    echo "ensure-services: ${missing_bench[*]} unavailable; bench/test_harness.py's real run will skip" >&2
fi
nginx_at=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || echo none)
echo "ensure-services: redis on 127.0.0.1:6379 answers; redis-server at $(command -v redis-server); redis-sentinel at $(command -v redis-sentinel); chromium: $(command -v chromium || echo none); promtool: $(command -v promtool || echo none); nginx: $nginx_at; wrk: $(command -v wrk || echo none)"
