"""``make bench``: consulgw against its yardsticks on the same upstream, a per-request CPU budget, discovery figures.

The yardsticks are the project's own (bench/yardsticks/): nginx as the upstream and as a keep-alive reverse proxy, a
naive aiohttp proxy (the floor) and a raw uvloop + httptools relay (the ceiling of a Python relay).
Everything runs on 127.0.0.1 with free ports; every process started here is stopped on exit, failure or Ctrl-C.
Results go to stdout as Markdown and, with --write-docs, into docs/benchmarks.md between the bench markers.
See docs/benchmarks.md for the method and `--help` for the knobs.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import answers
from harness import discovery, report, stack, traffic, wrk
from harness import profile as prof
from harness.http import Client, Consul, HttpError
from harness.procs import ComponentFailed, Supervisor, http_status
from harness.throughput import Target, ratio, run_rounds

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("throughput", "profile", "answers", "convergence", "scale", "consul")
# HS256 needs a secret of at least 32 bytes (RFC 7518 section 3.2); the gateway rejects shorter ones.
SECRET = "consulgw-bench-hs256-secret-0123456789"
# The project's bar (issue 8), shown against every run: (target, what is compared, bar).
BARS = (
    report.Bar(key="gw", measure="throughput", at_least=2.0),
    report.Bar(key="gw_policy", measure="throughput", at_least=1.5),
    report.Bar(key="gw", measure="p99", at_most=1.0),
)
POLICY = {
    "auth": {"type": "jwt", "algorithms": ["HS256"], "secret": SECRET},
    "rate_limit": {"requests": 100_000_000, "per": "1s", "key": "ip", "backend": "redis"},
    "circuit_breaker": {"failure_threshold": 5, "recovery_timeout": "30s"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over all targets (default 3)")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--max-extra-rounds",
        type=int,
        default=3,
        help="extra rounds run when someone else's load overlapped a round (default 3)",
    )
    p.add_argument(
        "--max-others-cpu",
        type=float,
        default=60.0,
        help="a round is disturbed when other processes used more than this %% of a core in a run (default 60)",
    )
    p.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per target first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    p.add_argument("--trials", type=int, default=50, help="convergence trials (default 50)")
    p.add_argument(
        "--scale", default="1,100,1000", help="routed-service counts for the rebuild test (default 1,100,1000)"
    )
    p.add_argument("--instances", type=int, default=10, help="instances per service in the rebuild test (default 10)")
    p.add_argument("--probes", type=int, default=5, help="single-change probes per scale step (default 5)")
    p.add_argument(
        "--consul-services", type=int, default=10_000, help="services in the Consul-at-scale section (default 10000)"
    )
    p.add_argument("--consul-instances", type=int, default=10, help="instances per service there (default 10)")
    p.add_argument("--consul-nodes", type=int, default=1000, help="nodes they are spread over (default 1000)")
    p.add_argument("--consul-trials", type=int, default=20, help="one-service changes timed there (default 20)")
    p.add_argument("--consul-workers", default="1,2", help="gateways measured there, by --workers (default 1,2)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile the gateway under load with py-spy: the per-request CPU budget (part of the default run; "
        "--profile adds it to an --only list, --no-profile leaves it out)",
    )
    p.add_argument("--profile-duration", type=int, default=10, help="seconds sampled per profile (default 10)")
    p.add_argument(
        "--profiler",
        choices=("py-spy", "pyinstrument"),
        default="py-spy",
        help="py-spy attaches to the running gateway (default); pyinstrument runs a fresh gateway under it "
        "(also the fallback when py-spy cannot attach)",
    )
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the rate-limit target")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="profile output directory")
    p.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx/wrk")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, nginx.conf)")
    return p.parse_args(argv)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _raise_nofile() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _revision() -> str:
    """The commit measured, and whether consulgw/ had uncommitted changes (other engineers share the tree)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "consulgw"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "an unknown commit (no git)"
    state = " with uncommitted changes in consulgw/" if dirty.stdout.strip() else ""
    return f"commit `{head.stdout.strip()}`{state}"


def _token() -> str:
    import jwt  # PyJWT, a gateway dependency

    now = int(time.time())
    return jwt.encode({"sub": "bench", "iat": now, "exp": now + 6 * 3600}, SECRET, algorithm="HS256")


def _wait_routes(gw: stack.Gateway, want: dict[str, str], policy_on: str | None, timeout: float = 30.0) -> None:
    """Wait until /-/routes maps each prefix to its service (and the policy is in force on ``policy_on``)."""
    admin = Client(gw.admin_url, timeout=10)
    deadline = time.monotonic() + timeout
    doc: dict[str, object] = {}
    try:
        while time.monotonic() < deadline:
            doc = admin.get_json("/-/routes")
            routes = {r["prefix"]: r["service"] for r in doc.get("routes", [])}  # type: ignore[union-attr]
            ok = all(routes.get(prefix) == service for prefix, service in want.items())
            if ok and policy_on is not None:
                policy = doc["services"].get(policy_on, {}).get("policy", {})  # type: ignore[index]
                ok = (
                    (policy.get("auth") or {}).get("type") == "jwt"
                    and (policy.get("rate_limit") or {}).get("backend") == "redis"
                    and policy.get("circuit_breaker") is not None
                )
            if ok:
                return
            time.sleep(0.1)
    finally:
        admin.close()
    raise ComponentFailed(
        f"{gw.component.name}: routes/policy not in force after {timeout:g}s; /-/routes says:\n"
        + json.dumps(doc, indent=1)[:3000]
        + f"\nlast log lines:\n{gw.component.tail()}"
    )


def _expect(url: str, status: int, headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
    """GET until it answers ``status`` (every worker of a multi-process gateway must have its view), or fail."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = http_status(url, timeout=5, headers=headers)
        if got == status:
            return
        time.sleep(0.1)
    raise ComponentFailed(f"sanity check: GET {url} answered {got}, expected {status}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = set(SECTIONS) if args.only is None else set(args.only.split(","))
    if args.profile is True:
        sections.add("profile")
    elif args.profile is False:
        sections.discard("profile")
    unknown = sections - set(SECTIONS)
    if unknown:
        print(f"bench: unknown section(s) in --only: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    steps = [int(x) for x in args.scale.split(",") if x]
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    command = f"{shown} bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    # Ctrl-C raises KeyboardInterrupt even when started from a non-interactive shell (where SIGINT starts ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    try:
        tools = stack.ensure_tools(install=not args.no_install)
        if sections & {"throughput", "profile"}:
            stack.ensure_redis(args.redis, REPO)
    except stack.SetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    versions = {
        "nginx": stack.tool_version([tools["nginx"], "-v"]),
        "wrk": stack.tool_version([tools["wrk"], "-v"]).split(" [")[0],
    }
    nofile = _raise_nofile()
    revision = _revision()  # what was measured: taken before the run, the tree may move under it
    info = report.machine()
    workdir = Path(tempfile.mkdtemp(prefix="consulgw-bench-"))
    print(f"bench: working directory {workdir}", flush=True)
    parts: dict[str, str | None] = dict.fromkeys(
        ("throughput", "logging", "answers", "convergence", "scale", "consul", "profile")
    )
    try:
        with Supervisor() as sup:
            nginx = stack.start_nginx(sup, tools["nginx"], workdir)
            stack.expect_upstream(nginx.upstream_url + "/")
            if sections & {"throughput", "profile"}:
                run_data_path(sup, args, sections, workdir, nginx, parts)
            if "answers" in sections:
                parts["answers"] = answers.run_answers(
                    sup,
                    workdir=workdir,
                    upstream_url=nginx.upstream_url,
                    rounds=args.rounds,
                    duration=args.duration,
                    warmup=args.warmup,
                    threads=args.threads,
                    connections=args.connections,
                    max_others_cpu=args.max_others_cpu,
                )
            if sections & {"convergence", "scale"}:
                run_discovery(sup, args, sections, steps, workdir, nginx, parts)
            if "consul" in sections:
                run_consul_scale(sup, args, workdir, nginx, parts)
    except (ComponentFailed, wrk.WrkError, HttpError, stack.SetupError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        print(f"bench: logs kept in {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return 130
    settings = f"Gateway: `consulgw run` (1 worker, uvloop, JSON logs) at {revision}; open-file limit {nofile}."
    if "throughput" in sections:
        settings = (
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, {args.rounds} alternating "
            f"round(s) after a {args.warmup:g}s warm-up per target. {settings}"
        )
    block = report.render(
        command=command,
        info=info,
        tools=versions,
        settings=settings,
        throughput=parts["throughput"],
        logging_cost=parts["logging"],
        answers=parts["answers"],
        convergence=parts["convergence"],
        scale=parts["scale"],
        consul=parts["consul"],
        profile=parts["profile"],
    )
    print()
    print(block)
    if args.write_docs:
        report.write_docs(REPO / "docs" / "benchmarks.md", block)
        print("bench: results written to docs/benchmarks.md", flush=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_data_path(
    sup: Supervisor,
    args: argparse.Namespace,
    sections: set[str],
    workdir: Path,
    nginx: stack.Nginx,
    parts: dict[str, str | None],
) -> None:
    naive, naive_url = stack.start_naive(sup, workdir, nginx.upstream_url)
    relay, relay_url = stack.start_relay(sup, workdir, nginx.upstream_url)
    agent, agent_url = stack.start_dev_agent(sup, workdir)
    consul = Consul(agent_url)
    consul.register(name="bench", service_id="bench-1", port=nginx.upstream_port, tags=["gw.route=/"])
    consul.register(name="benchpol", service_id="benchpol-1", port=nginx.upstream_port, tags=["gw.route=/pol"])
    consul.put_kv("consulgw/services/benchpol", json.dumps(POLICY).encode())
    traffic.register(consul, nginx.upstream_port)  # split + sticky + mirror (issue 9), measured on the "gw" gateway
    consul.close()
    # The logging gateway starts first: if the gateway cannot start, its log says why.
    gw_log = stack.start_gateway(
        sup, consul_url=agent_url, log=workdir / "gateway.log", label="gateway (log to file)", redis_url=args.redis
    )
    gw = stack.start_gateway(sup, consul_url=agent_url, log=None, label="gateway", redis_url=args.redis)
    gw2 = stack.start_gateway(
        sup,
        consul_url=agent_url,
        log=workdir / "gateway-2-workers.log",
        label="gateway (2 workers)",
        redis_url=args.redis,
        extra=("--workers", "2"),
    )
    want = {"/": "bench", "/pol": "benchpol", traffic.PREFIX: traffic.SERVICE}
    for started in (gw_log, gw, gw2):
        _wait_routes(started, want, "benchpol")
    traffic.wait_in_force(gw)
    token = _token()
    auth = {"Authorization": f"Bearer {token}"}
    for url in (nginx.proxy_url + "/", relay_url + "/", naive_url + "/", gw.url + "/", gw_log.url + "/", gw2.url + "/"):
        for _ in range(4):  # several connections: each may land on another worker
            _expect(url, 200)
    _expect(gw.url + "/pol", 401)
    _expect(gw.url + "/pol", 200, auth)
    header = (f"Authorization: Bearer {token}",)
    targets = [
        Target(key="upstream", label="nginx upstream, direct", url=nginx.upstream_url + "/", pid=nginx.component.pid),
        Target(key="nginx", label="nginx proxy", url=nginx.proxy_url + "/", pid=nginx.component.pid),
        Target(key="relay", label="raw relay (uvloop + httptools): the ceiling", url=relay_url + "/", pid=relay.pid),
        Target(key="naive", label="naive aiohttp proxy (uvloop): the floor", url=naive_url + "/", pid=naive.pid),
        Target(key="gw", label="consulgw, no policy", url=gw.url + "/", pid=gw.component.pid),
        Target(
            key="gw_policy",
            label="consulgw, JWT + Redis rate limit + breaker",
            url=gw.url + "/pol",
            headers=header,
            pid=gw.component.pid,
        ),
        traffic.target(gw),
        Target(
            key="gw_log",
            label="consulgw, no policy, JSON log to a file",
            url=gw_log.url + "/",
            pid=gw_log.component.pid,
            log_file=str(gw_log.log),
        ),
        Target(
            key="gw_2w",
            label="consulgw, no policy, --workers 2 (2 processes)",
            url=gw2.url + "/",
            pid=gw2.component.pid,
        ),
    ]

    def alive() -> None:
        for component in (nginx.component, relay, naive, agent, gw.component, gw_log.component, gw2.component):
            sup.check(component)

    if "throughput" in sections:
        series, rounds = run_rounds(
            targets,
            rounds=args.rounds,
            duration=args.duration,
            threads=args.threads,
            connections=args.connections,
            warmup=args.warmup,
            max_extra=args.max_extra_rounds,
            max_others_cpu=args.max_others_cpu,
            between=alive,
            ours=sup.groups,
        )
        parts["throughput"] = (
            report.throughput_table(series, naive="naive", nginx="nginx")
            + "\n"
            + report.bar_lines(series, BARS, naive="naive")
            + "\nRatios are medians of per-round ratios (each target against the reference measured in the same "
            "round); the range is min-max over rounds. p99 x naive: the target's p99 over the naive proxy's, same "
            "round, median over rounds. Target CPU: CPU time of the target's process group during its "
            "run, % of one core (nginx's one worker serves both the upstream and the proxy, so the nginx proxy row "
            "counts both). Others' CPU: CPU time of every process this harness did not start, % of one core: "
            "other engineers' work on the shared machine (and Redis, for the rate-limited row). "
            f"{rounds.describe()}.\n"
        )
        per_req = series["gw_log"].median(lambda s: s.log_bytes_per_request)
        r = ratio(series, "gw_log", "gw")
        if r is not None:
            parts["logging"] = (
                f"Logging cost: with stderr (one JSON `request_completed` line per request) going to a file instead "
                f"of /dev/null, the gateway serves {r[0]:.2f}x the requests per second (median of per-round ratios, "
                f"range {r[1]:.2f}-{r[2]:.2f}); it writes {per_req:.0f} bytes of log per request. The /dev/null runs "
                f"still format every line; only the write is saved."
                if per_req is not None
                else None
            )
    if "profile" in sections:
        parts["profile"] = run_profile(sup, args, targets, agent_url, workdir)
    for component in (gw2.component, gw.component, gw_log.component, agent, naive, relay):
        sup.stop(component)


def run_profile(
    sup: Supervisor, args: argparse.Namespace, targets: list[Target], agent_url: str, workdir: Path
) -> str | None:
    results: Path = args.results
    results.mkdir(parents=True, exist_ok=True)
    pyspy = prof.ensure_pyspy() if args.profiler == "py-spy" else None
    chosen = [t for t in targets if t.key in ("relay", "naive", "gw", "gw_policy")]
    out: list[str] = []
    compared: list[tuple[str, prof.Profile, float]] = []
    for target in chosen:
        assert target.pid is not None
        stem = f"profile-{target.key}"
        text = None
        served: float | None = None
        cpu: float | None = None
        if pyspy is not None:
            print(f"bench: profiling {target.label} with py-spy ({args.profile_duration:g}s under load)", flush=True)
            raw = results / f"{stem}.raw.txt"
            proc, load, cpu = prof.record_pyspy(
                pyspy,
                target.pid,
                url=target.url,
                headers=target.headers,
                duration=args.profile_duration,
                connections=args.connections,
                out=raw,
                fmt="raw",
            )
            if proc.returncode == 0 and raw.exists():
                text = raw.read_text(encoding="utf-8")
                served = load.requests_per_s * args.profile_duration if load is not None else None
                if target.key == "gw":
                    prof.record_pyspy(
                        pyspy,
                        target.pid,
                        url=target.url,
                        headers=target.headers,
                        duration=args.profile_duration,
                        connections=args.connections,
                        out=results / f"{stem}.speedscope.json",
                        fmt="speedscope",
                    )
            else:
                print(f"bench: py-spy could not record ({proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
        if text is None:
            if not target.key.startswith("gw"):
                continue
            summary = run_pyinstrument(sup, args, target, agent_url, results, workdir)
            if summary is not None:
                out.append(summary)
            continue
        rps = f", {served / args.profile_duration:,.0f} req/s while sampled" if served else ""
        aggregated = prof.aggregate(text)
        if served and cpu:
            compared.append((target.label, aggregated, cpu / served * 1e6))
        summary = prof.summary(
            aggregated,
            title=f"{target.label} (py-spy, {args.profile_duration:g}s{rps})",
            rate=prof.RATE,
            requests=served,
            cpu=cpu,
        )
        (results / f"{stem}.md").write_text(summary, encoding="utf-8")
        out.append(summary)
    if len(compared) > 1:
        table = (
            "#### Per-request CPU budget by component\n\nEach py-spy sample is charged to the innermost frame on its "
            "stack that belongs to a concern of its own (a library such as PyJWT or redis-py, or the gateway module "
            "for that one thing: logs, metrics, request ids, header filtering, routing, breakers, transport); samples "
            "with none fall to the generic rows (the gateway's own handler, pipeline and stage code; aiohttp's "
            "server), and the rest is the event loop's (bench/harness/profile.py: SPECIFIC, GENERIC). "
            "Microseconds = share of samples x the process's CPU time per request (from /proc, over the same "
            "window).\n\n" + prof.comparison(compared)
        )
        (results / "profile-components.md").write_text(table, encoding="utf-8")
        out.insert(0, table)
    return "\n".join(out) if out else None


def run_pyinstrument(
    sup: Supervisor, args: argparse.Namespace, target: Target, agent_url: str, results: Path, workdir: Path
) -> str | None:
    """The fallback: a fresh gateway started under pyinstrument, loaded by wrk, stopped; its text report kept."""
    python = sys.executable
    if subprocess.run([python, "-c", "import pyinstrument"], capture_output=True, check=False).returncode != 0:
        print("bench: installing pyinstrument into the venv", flush=True)
        proc = subprocess.run([python, "-m", "pip", "install", "-q", "pyinstrument"], capture_output=True, check=False)
        if proc.returncode != 0:
            print("bench: neither py-spy nor pyinstrument is usable; no profile", flush=True)
            return None
    report_file = results / f"profile-{target.key}.pyinstrument.txt"
    print(f"bench: profiling {target.label} under pyinstrument ({args.profile_duration:g}s under load)", flush=True)
    gw = stack.start_gateway(
        sup,
        consul_url=agent_url,
        log=workdir / f"gateway-pyinstrument-{target.key}.log",
        label=f"gateway (pyinstrument, {target.key})",
        redis_url=args.redis,
        wrapper=(python, "-m", "pyinstrument", "--renderer", "text", "--outfile", str(report_file)),
    )
    path = "/pol" if target.key == "gw_policy" else "/"
    _wait_routes(gw, {"/": "bench", "/pol": "benchpol"}, "benchpol")
    load, _ = wrk.run(
        gw.url + path, duration=args.profile_duration, connections=args.connections, headers=target.headers
    )
    sup.stop(gw.component)  # SIGTERM: the gateway drains and exits, pyinstrument writes its report
    if not report_file.exists():
        print(f"bench: pyinstrument wrote no report; gateway log:\n{gw.component.tail()}", flush=True)
        return None
    text = report_file.read_text(encoding="utf-8")
    summary = (
        f"#### {target.label} (pyinstrument, {args.profile_duration:g}s, {load.requests_per_s:,.0f} req/s while "
        f"profiled)\n\npyinstrument's call tree (it profiles the whole run, start-up included):\n\n```\n"
        + "\n".join(text.splitlines()[:80])
        + "\n```\n"
    )
    (results / f"profile-{target.key}.md").write_text(summary, encoding="utf-8")
    return summary


def run_discovery(
    sup: Supervisor,
    args: argparse.Namespace,
    sections: set[str],
    steps: list[int],
    workdir: Path,
    nginx: stack.Nginx,
    parts: dict[str, str | None],
) -> None:
    agent, agent_url = stack.start_dev_agent(sup, workdir, label="dev agent (discovery)")
    consul = Consul(agent_url)
    gw = stack.start_gateway(
        sup, consul_url=agent_url, log=workdir / "gateway-discovery.log", label="gateway (discovery)"
    )
    runs: list[tuple[str, discovery.Convergence]] = []
    try:
        if "convergence" in sections:
            for label, pause, trials in (
                ("isolated changes, 1.1 s apart", 1.1, args.trials),
                ("back to back, 0.1 s apart", 0.1, max(1, args.trials // 2)),
            ):
                print(f"bench: convergence, {label}, {trials} trials", flush=True)
                result = discovery.convergence(
                    consul,
                    gw,
                    upstream_port=nginx.upstream_port,
                    trials=trials,
                    routed_services=0,
                    pause=pause,
                    prefix=f"c{len(runs)}x",
                )
                runs.append((label, result))
        if "scale" in sections and steps:
            points = discovery.scale(
                sup,
                consul,
                gw,
                agent_pid=agent.pid,
                consul_url=agent_url,
                upstream_port=nginx.upstream_port,
                steps=steps,
                instances=args.instances,
                probes=args.probes,
                workdir=workdir,
            )
            parts["scale"] = report.scale_tables(points) + (
                "\nbuild_ms is the gateway's own `route_table_swapped` figure (snapshot -> new view, "
                "including the route table). A one-route change rebuilds the route table over every service; a "
                "one-instance change only that service's pool. \"Table complete\" is the gateway's timestamp on the "
                "swap after which `/-/routes` listed every service with every instance, minus the time the "
                "harness's last registration was acknowledged. Cold start: a second gateway started against the "
                'populated agent (process start -> `/-/ready` 200; "listening -> first view" is the gap between its '
                "`gateway_started` and first `route_table_swapped` events: reading every routed service from Consul, "
                "then the first build).\n"
            )
            if "convergence" in sections:
                trials = max(1, min(args.trials, 20))
                for label, pause, prefix in (
                    ("isolated changes, 1.1 s apart", 1.1, "late"),
                    ("back to back, 0.1 s apart", 0.1, "lateb2b"),
                ):
                    print(f"bench: convergence with {steps[-1]} services routed, {label}, {trials} trials", flush=True)
                    runs.append(
                        (
                            label,
                            discovery.convergence(
                                consul,
                                gw,
                                upstream_port=nginx.upstream_port,
                                trials=trials,
                                routed_services=steps[-1],
                                pause=pause,
                                prefix=prefix,
                            ),
                        )
                    )
        if runs:
            c = runs[0][1]
            parts["convergence"] = discovery_text(runs, c)
    finally:
        consul.close()
    sup.stop(gw.component)
    sup.stop(agent)


def run_consul_scale(
    sup: Supervisor, args: argparse.Namespace, workdir: Path, nginx: stack.Nginx, parts: dict[str, str | None]
) -> None:
    agent, agent_url = stack.start_dev_agent(sup, workdir, label="dev agent (consul scale)")
    result = discovery.consul_scale(
        sup,
        agent_pid=agent.pid,
        consul_url=agent_url,
        agent_port=int(agent_url.rsplit(":", 1)[1]),
        upstream_port=nginx.upstream_port,
        services=args.consul_services,
        instances=args.consul_instances,
        nodes=args.consul_nodes,
        trials=args.consul_trials,
        workdir=workdir,
        worker_counts=tuple(int(w) for w in args.consul_workers.split(",") if w),
    )
    sup.stop(agent)
    parts["consul"] = discovery.consul_scale_table(result) + (
        "\nCold start: `consulgw run` started against the populated agent, process start -> `/-/ready` 200 (every "
        "routed service read and the whole view built). Connections: TCP sockets the gateway's processes hold to the "
        "agent's port (socket inodes of `/proc/<pid>/fd` matched in `/proc/net/tcp`), sampled every 20 ms from "
        "start to stop. One-service changes, timed from the agent's acknowledgement of the PUT: *new route* registers "
        "a service with a new `gw.route` (agent API, passing TTL check) until its path stops answering 404 (one "
        "keep-alive connection); *instance to maintenance* puts that instance in maintenance until the path answers "
        "503; *new instance* registers one more instance of an existing service (`s<n>`, most likely parked) "
        "through the catalog API (no check, so no health signal names it) until a worker logs "
        "`route_table_swapped`. `consulgw/defaults` change: the largest `build_ms` logged for it (every policy "
        "parsed again, every pipeline rebuilt), and the latency of keep-alive `GET /-/healthy` requests sent in a "
        "tight loop to the admin listener (same event loop as the proxy) from 2 s before the change until it was "
        "swapped in: a request that takes long is the loop being held. The machine is shared: the last column is "
        "other people's CPU in that window, which lengthens every figure.\n"
    )


def discovery_text(runs: list[tuple[str, discovery.Convergence]], first: discovery.Convergence) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(first.first_status.items()))
    put = discovery.percentile(first.put_ms, 50) or 0.0
    failures = [f"- {label}: {f}" for label, c in runs for f in c.failures]
    return (
        report.convergence_table(runs)
        + f"\nThe clock starts when the dev agent has acknowledged the PUT (median PUT itself: {put:.1f} ms) and "
        "stops at the first answer from the gateway that is not 404 (registration) or is 404 (deregistration), "
        "polled in a tight loop of keep-alive GETs. First non-404 statuses: "
        f"{statuses or 'none'}. The gateway coalesces changes for 50 ms (`--coalesce`, default: an isolated change is "
        "published at once, one that follows within the window waits for its end). Each Consul watch loop takes a "
        "token from a 10/s bucket (burst 10) after an answer that moved its index, and from a 1/s bucket (burst 2) "
        "only after one that moved nothing, so changes that come back to back are read back to back. With 1,000 "
        "services most are parked (no blocking watch of their own, `--consul-max-conns 64`): a new route arrives "
        "through the catalog watch either way.\n" + ("\n" + "\n".join(failures) + "\n" if failures else "")
    )


if __name__ == "__main__":
    sys.exit(main())
