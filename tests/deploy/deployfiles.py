"""Readers for the deployment files under deploy/ and compose/, and the program facts they are checked against.

YAML is read with PyYAML, HCL with python-hcl2; the Dockerfile, systemd unit and env files are simple line formats
read here. The program side (flags, environment variables, settings) comes from consulgw itself, never from a copy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import yaml

from consulgw.cli import build_parser
from consulgw.duration import parse_duration
from consulgw.settings import GatewaySettings, gateway_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = REPO / "compose"

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
HEALTHCHECK_SCRIPT = DEPLOY / "healthcheck.py"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
NOMAD_JOB = DEPLOY / "nomad" / "consulgw.nomad.hcl"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "consulgw.service"
UNIT_ENV = DEPLOY / "systemd" / "consulgw.env.example"
SYSUSERS = DEPLOY / "systemd" / "consulgw.sysusers"
ACL = DEPLOY / "consul"

# Environment variable names the deployment files may mention, by the families the program owns.
ENV_NAME = re.compile(r"\b(?:CONSULGW|CONSUL_HTTP)_[A-Z0-9_]+\b")


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def deploy_files() -> list[Path]:
    """Every file under deploy/ and compose/ (what the tests must cover)."""
    found = [p for root in (DEPLOY, COMPOSE) for p in root.rglob("*") if p.is_file()]
    return sorted(p for p in found if "__pycache__" not in p.parts)


# --- the program ---------------------------------------------------------------------------------------------------


class _RecordingEnviron(Mapping[str, str]):
    """An empty environment that remembers every name the program asks it for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@cache
def program_env_names() -> frozenset[str]:
    """The environment variables ``consulgw run`` reads, recorded by running its real settings code."""
    environ = _RecordingEnviron()
    gateway_settings(build_parser().parse_args(["run"]), environ)
    return frozenset(environ.asked)


def documented_env_names() -> frozenset[str]:
    """The environment variables named in ``consulgw run --help`` (a cross-check on the recording above)."""
    return frozenset(ENV_NAME.findall(_subparser(build_parser(), "run").format_help()))


class CliError(AssertionError):
    pass


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = action.choices[name]
    return sub


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``consulgw <argv>`` with the real parser; argparse's error becomes an AssertionError with its text.

    Options must be spelt out in full: argparse would accept ``--drain`` for ``--drain-timeout``, but a deployment
    file using an abbreviation breaks the day another flag starts with the same letters.
    """
    parser = build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        raise CliError(f"consulgw {shlex.join(argv)} is rejected by consulgw.cli: {stderr.getvalue().strip()}") from exc
    known = set(_subparser(parser, args.command)._option_string_actions)
    for word in argv[1:]:
        if word == "--":
            break
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            raise CliError(f"consulgw {args.command}: {option} is not a full option name (known: {sorted(known)})")
    return args


def settings_for(argv: list[str], env: Mapping[str, str]) -> GatewaySettings:
    """What ``consulgw <argv>`` would run with under ``env``: the real flag + environment parsing and validation."""
    return gateway_settings(parse_cli(argv), env)


def seconds(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    return parse_duration("duration", text)


# --- YAML and HCL --------------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_hcl(path: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, preserve_heredocs=False, with_comments=False
    )
    with path.open() as fh:
        return hcl2.load(fh, serialization_options=options)


def hcl_blocks(body: Mapping[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    """Labelled blocks (``kind "label" { ... }``) as (label, body) pairs."""
    out: list[tuple[str, dict[str, Any]]] = []
    for item in body.get(kind, []):
        out.extend(item.items())
    return out


def hcl_block(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The one unlabelled block ``kind { ... }``."""
    items = body.get(kind, [])
    if len(items) != 1:
        raise AssertionError(f"expected exactly one {kind} block, found {len(items)}")
    block: dict[str, Any] = items[0]
    return block


# --- Dockerfile ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise AssertionError(f"line {self.line}: {self.keyword} is not a JSON array of strings")
        return value


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (the escape character is ``\\``)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are removed by Docker
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        keyword, _, args = text.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    if pending:
        raise AssertionError(f"{path}: instruction at line {start} ends with a line continuation")
    return out


def instruction_options(args: str) -> tuple[dict[str, str], str]:
    """Split leading ``--name=value`` options from an instruction's arguments."""
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    return options, rest


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                name, sep, value = word.partition("=")
                if not sep:
                    raise AssertionError(f"line {ins.line}: use ENV NAME=value, not the legacy ENV NAME value")
                env[name] = value
    return env


def dockerignore_patterns(path: Path) -> list[tuple[bool, str]]:
    """(exclude?, pattern) in file order; ``!`` re-includes. Leading/trailing slashes are cleaned like Docker does."""
    out: list[tuple[bool, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        out.append((not negate, pattern.strip("/")))
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    for chunk in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        if chunk == "**/":
            out.append("(?:.*/)?")
        elif chunk == "**":
            out.append(".*")
        elif chunk == "*":
            out.append("[^/]*")
        elif chunk == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(chunk))
    return re.compile("^" + "".join(out) + "$")


def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent directories; ``**`` spans directories."""
    parts = path.split("/")
    regex = _pattern_regex(pattern)
    return any(regex.match("/".join(parts[: i + 1])) for i in range(len(parts)))


def docker_context_includes(path: str, patterns: list[tuple[bool, str]]) -> bool:
    included = True
    for exclude, pattern in patterns:
        if _pattern_matches(pattern, path):
            included = not exclude
    return included


# --- systemd unit and env files ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Unit:
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, section: str, key: str) -> str:
        """The effective value of a single-valued setting (the last assignment wins)."""
        found = self.values(section, key)
        if not found:
            raise AssertionError(f"[{section}] has no {key}=")
        return found[-1]


def parse_unit(path: Path) -> Unit:
    unit = Unit()
    section: str | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, [])
            continue
        if section is None or "=" not in line:
            raise AssertionError(f"{path}: cannot read line {raw!r}")
        key, _, value = line.partition("=")
        unit.sections[section].append((key.strip(), value.strip()))
    return unit


@dataclass(frozen=True, slots=True)
class EnvFile:
    values: dict[str, str]  # active KEY=value lines
    commented: dict[str, str]  # "# KEY=value" lines: documented but off


_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_env_file(path: Path) -> EnvFile:
    """systemd EnvironmentFile= syntax as we use it: KEY=value lines, # comments, no quoting."""
    values: dict[str, str] = {}
    commented: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _ASSIGNMENT.match(line.lstrip("#").strip())
            if match:
                commented[match.group(1)] = match.group(2)
            continue
        match = _ASSIGNMENT.match(line)
        if not match:
            raise AssertionError(f"{path}:{number}: not a KEY=value line: {raw!r}")
        values[match.group(1)] = match.group(2)
    return EnvFile(values, commented)


# --- Kubernetes ----------------------------------------------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object for every manifest the kustomization applies, plus the example Secret."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = [*kustomization["resources"], "secret.example.yaml"]
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for name in files:
        for doc in load_yaml_all(K8S / name):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def k8s_deployment() -> dict[str, Any]:
    return k8s_objects()[("Deployment", "consulgw")]


def k8s_container() -> dict[str, Any]:
    containers = k8s_deployment()["spec"]["template"]["spec"]["containers"]
    container: dict[str, Any] = next(c for c in containers if c["name"] == "consulgw")
    return container


# --- Nomad ---------------------------------------------------------------------------------------------------------


def nomad_job() -> dict[str, Any]:
    (name, job), *_ = hcl_blocks(load_hcl(NOMAD_JOB), "job")
    if name != "consulgw":
        raise AssertionError(f"Nomad job is named {name!r}, expected 'consulgw'")
    return job


def nomad_variables() -> dict[str, Any]:
    return {name: body.get("default") for name, body in hcl_blocks(load_hcl(NOMAD_JOB), "variable")}


def nomad_resolve(value: Any) -> Any:
    """Resolve ``${var.x}`` to the variable's default (what `nomad job run` without -var uses)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{var\.([A-Za-z0-9_]+)\}", value)
        if match:
            return nomad_variables()[match.group(1)]
    return value


def nomad_group() -> dict[str, Any]:
    (_, group), *_ = hcl_blocks(nomad_job(), "group")
    return group


def nomad_task() -> dict[str, Any]:
    (_, task), *_ = hcl_blocks(nomad_group(), "task")
    return task


# --- Compose -------------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def compose_gateways() -> dict[str, dict[str, Any]]:
    """Compose services that run the gateway image built from deploy/Dockerfile."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == "deploy/Dockerfile"
    }


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_volume_sources(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of bind mounts written in the short ``src:dst[:mode]`` form."""
    out = []
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        out.append((source, target))
    return out


def host_port(published: str) -> tuple[str, int, int]:
    """``[ip:]host:container`` -> (ip, host port, container port)."""
    parts = published.split(":")
    if len(parts) == 2:
        return "0.0.0.0", int(parts[0]), int(parts[1])
    return parts[0], int(parts[1]), int(parts[2])
