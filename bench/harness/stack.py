"""The components under test: tools, nginx (upstream + proxy), the naive proxy, the raw relay, the dev agent and the
gateway. The yardsticks (nginx's configuration, the naive proxy, the raw relay) live in bench/yardsticks/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.procs import Component, ComponentFailed, Supervisor, free_port, http_status

UPSTREAM_BODY = b'{"ok":true,"service":"users"}'
YARDSTICKS = Path(__file__).resolve().parent.parent / "yardsticks"
NGINX_TEMPLATE = YARDSTICKS / "nginx.conf.template"


class SetupError(RuntimeError):
    pass


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (str(p) for p in (Path("/usr/sbin") / tool, Path("/sbin") / tool) if p.exists()), None
    )


def ensure_tools(tools: tuple[str, ...] = ("nginx", "wrk"), *, install: bool = True) -> dict[str, str]:
    """Find nginx and wrk; install them with apt-get when missing (as root, or through sudo)."""
    missing = [t for t in tools if _which(t) is None]
    if missing and install:
        apt = shutil.which("apt-get")
        if apt is None:
            print(f"bench: {', '.join(missing)} missing and apt-get is not available: skipping the install step")
        else:
            sudo = [] if os.geteuid() == 0 else ["sudo"]
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            print(f"bench: installing {' '.join(missing)} with apt-get", flush=True)
            for argv in ([*sudo, apt, "update", "-qq"], [*sudo, apt, "install", "-y", "-qq", *missing]):
                proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SetupError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    found = {t: _which(t) for t in tools}
    still = [t for t, path in found.items() if path is None]
    if still:
        raise SetupError(f"{', '.join(still)} not found; install them (apt-get install -y {' '.join(still)})")
    return {t: str(path) for t, path in found.items()}


def tool_version(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0] if text else "?"


@dataclass(frozen=True, slots=True, kw_only=True)
class Nginx:
    component: Component
    upstream_port: int
    proxy_port: int
    conf: Path

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


def render_nginx(template: Path, run_dir: Path, upstream_port: int, proxy_port: int) -> Path:
    """The template's own recipe: sed "s#@DIR@#<run dir>#g; s#@UPSTREAM_PORT@#..#g; s#@PROXY_PORT@#..#g"."""
    text = template.read_text(encoding="utf-8")
    text = text.replace("@DIR@", str(run_dir))
    text = text.replace("@UPSTREAM_PORT@", str(upstream_port)).replace("@PROXY_PORT@", str(proxy_port))
    if "@" in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#")):
        raise SetupError(f"{template}: a placeholder is left after rendering")
    conf = run_dir / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


def start_nginx(sup: Supervisor, nginx_bin: str, workdir: Path, template: Path = NGINX_TEMPLATE) -> Nginx:
    run_dir = workdir / "nginx"
    run_dir.mkdir()
    upstream_port, proxy_port = free_port(), free_port()
    conf = render_nginx(template, run_dir, upstream_port, proxy_port)
    log = run_dir / "nginx-error.log"
    # "daemon off" keeps the master our child (in its own process group), so it is stopped with everything else;
    # -e sends the messages written before the config is read to the same file.
    argv = [nginx_bin, "-e", str(log), "-p", f"{run_dir}/", "-c", str(conf), "-g", "daemon off;"]
    component = sup.start("nginx", argv, log=log)
    sup.wait_tcp(component, upstream_port)
    sup.wait_tcp(component, proxy_port)
    return Nginx(component=component, upstream_port=upstream_port, proxy_port=proxy_port, conf=conf)


def start_yardstick(
    sup: Supervisor, script: str, label: str, workdir: Path, upstream_url: str
) -> tuple[Component, str]:
    """bench/yardsticks/<script> in front of the upstream, on a free port."""
    port = free_port()
    argv = [sys.executable, str(YARDSTICKS / script), "--listen", f"127.0.0.1:{port}", "--upstream", upstream_url]
    component = sup.start(label, argv, log=workdir / f"{script.removesuffix('.py')}.log")
    url = f"http://127.0.0.1:{port}"
    sup.wait_http(component, url + "/")
    return component, url


def start_naive(sup: Supervisor, workdir: Path, upstream_url: str) -> tuple[Component, str]:
    return start_yardstick(sup, "naive_proxy.py", "naive proxy", workdir, upstream_url)


def start_relay(sup: Supervisor, workdir: Path, upstream_url: str) -> tuple[Component, str]:
    return start_yardstick(sup, "raw_relay.py", "raw relay", workdir, upstream_url)


def clean_env() -> dict[str, str]:
    """The environment without CONSULGW_* / CONSUL_HTTP_* settings, so only the flags shown decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CONSULGW_", "CONSUL_HTTP_"))}


def consulgw_bin() -> str:
    path = Path(sys.executable).parent / "consulgw"
    if not path.exists():
        raise SetupError(f"{path} not found: run `make bench` (it installs the project into .venv)")
    return str(path)


def start_dev_agent(sup: Supervisor, workdir: Path, label: str = "dev agent") -> tuple[Component, str]:
    port = free_port()
    log = workdir / f"{label.replace(' ', '-')}.log"
    argv = [consulgw_bin(), "dev-agent", "--listen", f"127.0.0.1:{port}", "--log-format", "json"]
    component = sup.start(label, argv, log=log, env=clean_env())
    url = f"http://127.0.0.1:{port}"
    sup.wait_http(component, url + "/v1/status/leader", timeout=30)
    return component, url


@dataclass(frozen=True, slots=True, kw_only=True)
class Gateway:
    component: Component
    url: str
    admin_url: str
    log: Path | None


def gateway_argv(consul_url: str, port: int, admin: int, *extra: str) -> list[str]:
    """``consulgw run`` on 127.0.0.1 ``port`` (admin on ``admin``) with JSON logs, then ``extra`` flags."""
    return [
        consulgw_bin(),
        "run",
        "--consul",
        consul_url,
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin}",
        "--log-format",
        "json",
        *extra,
    ]


def start_gateway(
    sup: Supervisor,
    *,
    consul_url: str,
    log: Path | None,
    label: str = "gateway",
    redis_url: str | None = None,
    extra: tuple[str, ...] = (),
    timeout: float = 60.0,
    wrapper: tuple[str, ...] = (),
) -> Gateway:
    port, admin = free_port(), free_port()
    argv = [*wrapper, *gateway_argv(consul_url, port, admin, *(["--redis", redis_url] if redis_url else []), *extra)]
    component = sup.start(label, argv, log=log, env=clean_env())
    admin_url = f"http://127.0.0.1:{admin}"
    sup.wait_http(component, admin_url + "/-/ready", timeout=timeout)
    return Gateway(component=component, url=f"http://127.0.0.1:{port}", admin_url=admin_url, log=log)


def redis_answers(url: str) -> bool:
    """PING over a raw socket (no client library needed)."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis(url: str, repo: Path) -> None:
    if redis_answers(url):
        return
    script = repo / "scripts" / "ensure-services.sh"
    if script.exists():
        print(f"bench: Redis at {url} does not answer; running {script.relative_to(repo)}", flush=True)
        subprocess.run([str(script)], cwd=repo, check=False)
    if not redis_answers(url):
        raise SetupError(f"Redis at {url} does not answer PING (run `make services` or pass --redis URL)")


def expect_upstream(url: str) -> None:
    status = http_status(url)
    if status != 200:
        raise ComponentFailed(f"{url} answered {status}, expected 200")
