"""The traffic-management row (issue 9): a split + sticky + mirror policy, as one more throughput target.

Kept apart from ``run.py`` so it can be wired in one place (``run_data_path``), next to the other targets::

    traffic.register(consul, nginx.upstream_port)               # with the other registrations, before the gateways
    _wait_routes(gw, {**want, traffic.PREFIX: traffic.SERVICE}, "benchpol")
    traffic.wait_in_force(gw)
    targets.append(traffic.target(gw))                          # after the "gw" and "gw_policy" targets

Every instance is the nginx upstream (like the other gateway rows), so the row measures the gateway's own cost:
two subsets of the service (``version`` Meta v1 and v2, split 90/10 by the ``gw_split`` cookie), a sticky cookie,
and a mirror of every GET to a shadow service (no route; the nginx upstream again), so each request also makes one
background upstream exchange. wrk sends the cookies a first request got, like a returning browser: the split and
sticky steps take their hit paths (no Set-Cookie), and the mirror its full path.
"""

from __future__ import annotations

import json
import time
import urllib.request

from harness.http import Client, Consul
from harness.procs import ComponentFailed
from harness.stack import Gateway
from harness.throughput import Target

SERVICE = "benchtraffic"
SHADOW = "benchshadow"
PREFIX = "/traffic"
KEY = "gw_traffic"
LABEL = "consulgw, split 90/10 + sticky + mirror 100%"
POLICY: dict[str, object] = {
    "subsets": {"stable": {"meta": {"version": "v1"}}, "canary": {"meta": {"version": "v2"}}},
    "split": {"default": "stable", "weights": {"stable": 90, "canary": 10}, "hash": "cookie"},
    "sticky": {"secure": False},
    "mirror": {"to": [{"service": SHADOW, "percent": 100}], "timeout": "2s"},
}


def register(consul: Consul, upstream_port: int) -> None:
    """Two instances of the split service (v1, v2) and the shadow service, all on the nginx upstream."""
    for index, version in ((1, "v1"), (2, "v2")):
        consul.register(
            name=SERVICE,
            service_id=f"{SERVICE}-{index}",
            port=upstream_port,
            tags=[f"gw.route={PREFIX}"],
            meta={"version": version},
        )
    consul.register(name=SHADOW, service_id=f"{SHADOW}-1", port=upstream_port, tags=[])
    consul.put_kv(f"consulgw/services/{SERVICE}", json.dumps(POLICY).encode())


def wait_in_force(gw: Gateway, timeout: float = 30.0) -> None:
    """Until ``/-/routes`` shows the split and the watched shadow (a service with no route of its own)."""
    admin = Client(gw.admin_url, timeout=10)
    deadline = time.monotonic() + timeout
    doc: dict[str, object] = {}
    try:
        while time.monotonic() < deadline:
            doc = admin.get_json("/-/routes")
            services = doc.get("services", {})
            assert isinstance(services, dict)
            ours = services.get(SERVICE, {})
            if ours.get("split") and ours.get("mirror") and SHADOW in services:
                return
            time.sleep(0.1)
    finally:
        admin.close()
    raise ComponentFailed(f"{gw.component.name}: the traffic policy is not in force after {timeout:g}s: {doc!r:.2000}")


def target(gw: Gateway) -> Target:
    """The wrk target: the cookies of a first answer sent back on every request."""
    with urllib.request.urlopen(gw.url + PREFIX + "/", timeout=10) as resp:
        cookies = [line.split(";", 1)[0] for line in resp.headers.get_all("Set-Cookie") or []]
    names = {cookie.split("=", 1)[0] for cookie in cookies}
    if names != {"gw_split", "gw_sticky"}:
        raise ComponentFailed(f"{gw.component.name}: expected gw_split and gw_sticky cookies, got {sorted(names)}")
    return Target(
        key=KEY,
        label=LABEL,
        url=gw.url + PREFIX + "/",
        headers=(f"Cookie: {'; '.join(cookies)}",),
        pid=gw.component.pid,
    )
