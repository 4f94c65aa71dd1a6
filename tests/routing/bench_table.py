"""Micro-benchmark of route parsing, table building and lookup (figures quoted in docs/tags.md).

Run: ``.venv/bin/python -m tests.routing.bench_table`` (``--services N --repeat N`` to change the size).
Not a test: timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import time

from consulgw.routing import RouteTable, ServiceRoutes, parse_service_routes


def make_services(count: int) -> list[tuple[str, list[str]]]:
    """``count`` services with 3 routes each: a host route, a host-less route with methods, a wildcard route."""
    services = []
    for i in range(count):
        name = f"svc-{i:05d}"
        tags = [
            f"gw.route=api{i % 50}.example.com/v1/{name} strip=/v1",
            f"gw.route=/{name}/items methods=GET,POST",
            f"gw.route=*.tenant{i % 20}.example.com/{name}",
            "gw.lb=least_conn",
        ]
        services.append((name, tags))
    return services


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200_000)
    args = parser.parse_args(argv)
    raw = make_services(args.services)

    start = time.perf_counter()
    parsed: list[ServiceRoutes] = [parse_service_routes(name, tags) for name, tags in raw]
    parse_s = time.perf_counter() - start

    builds = 20
    start = time.perf_counter()
    for _ in range(builds):
        table = RouteTable.build(parsed)
    build_s = (time.perf_counter() - start) / builds

    rng = random.Random(0)
    requests = []
    for _ in range(1000):
        i = rng.randrange(args.services)
        name = f"svc-{i:05d}"
        requests.append(
            rng.choice(
                [
                    (f"API{i % 50}.example.com:8080", f"/v1/{name}/orders/42?page=2", "GET"),
                    ("www.example.com", f"/{name}/items/7", "POST"),
                    (f"a.b.tenant{i % 20}.example.com", f"/{name}/deep/path/x", "GET"),
                    ("nowhere.example.org", "/not/routed/at/all", "GET"),
                ]
            )
        )
    # One service's routes change (its tags were edited): the next table derived from this one.
    changed = parse_service_routes(parsed[len(parsed) // 2].service, [f"gw.route=/moved-{args.services}"])
    start = time.perf_counter()
    for _ in range(builds):
        table.updated({changed.service: changed})
    update_s = (time.perf_counter() - start) / builds

    lookup = table.lookup
    rounds = max(1, args.repeat // len(requests))
    start = time.perf_counter()
    for _ in range(rounds):
        for host, path, method in requests:
            lookup(host, path, method)
    per_lookup = (time.perf_counter() - start) / (rounds * len(requests))

    print(f"services={args.services} routes={len(table.routes)}")
    print(f"parse_all_ms={parse_s * 1e3:.2f}")
    print(f"build_ms={build_s * 1e3:.2f}")
    print(f"update_one_ms={update_s * 1e3:.2f}")
    print(f"lookup_us={per_lookup * 1e6:.2f}")


if __name__ == "__main__":
    main()
