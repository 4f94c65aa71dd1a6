"""Consul's JSON agent configuration, as ``consul agent -config-file`` and the container's ``CONSUL_LOCAL_CONFIG`` read it.

Sources are merged in Consul's order: ``CONSUL_LOCAL_CONFIG`` (the official image writes it to a file in its config
directory, which comes first on its command line), then every ``--config-file`` in the order given, then the flags.
A later source wins key by key; nested objects (``acl``, ``limits``...) merge.

Only the keys the dev agent honours are read; any other key -- a typo, or a real Consul key the dev agent has no use
for (``server``, ``ui_config``...) -- is reported as one warning line naming it, and ignored. A key with a value of
the wrong type or out of range is a :class:`ConfigError` naming the source, the key path and the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consulgw.duration import parse_go_duration
from consulgw.errors import ConfigError

DEFAULT_MAX_CONNS_PER_CLIENT = 200  # Consul's limits.http_max_conns_per_client default


@dataclass(frozen=True, slots=True, kw_only=True)
class AclConfig:
    """The ``acl`` block: disabled by default, as in ``consul agent -dev``."""

    enabled: bool = False
    default_policy: str = "allow"
    initial_management: str = ""  # acl.tokens.initial_management (older name: master)
    default_token: str = ""  # acl.tokens.default: the token of requests that carry none
    enable_key_list_policy: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    datacenter: str | None = None
    node_name: str | None = None
    enable_script_checks: bool | None = None
    http_max_conns_per_client: int = DEFAULT_MAX_CONNS_PER_CLIENT
    http_port: int | None = None  # ports.http
    prometheus_retention: float = 0.0  # telemetry.prometheus_retention_time, seconds; 0 = Prometheus output off
    acl: AclConfig = field(default_factory=AclConfig)


@dataclass(frozen=True, slots=True)
class Source:
    """One configuration document and the name errors and warnings give it (a path, or the variable name)."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class Loaded:
    config: AgentConfig
    warnings: tuple[str, ...]


def load_agent_config(sources: Sequence[Source], flags: Mapping[str, Any] | None = None) -> Loaded:
    """Merge ``sources`` in order, then ``flags`` (keys in config-file form, e.g. ``{"datacenter": "dc2"}``)."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted key -> name of the source that set it last
    warnings: list[str] = []
    for source in sources:
        document = _parse(source)
        _merge(merged, document, origin, source.name, "")
    if flags:
        _merge(merged, _nest(flags), origin, "flags", "")
    reader = _Reader(merged, origin, warnings)
    config = reader.read()
    return Loaded(config=config, warnings=tuple(warnings))


def _parse(source: Source) -> dict[str, Any]:
    if source.name.endswith(".hcl"):
        raise ConfigError(f"{source.name}: HCL agent configuration is not supported by the dev agent; use JSON")
    if not source.text.strip():
        return {}
    try:
        document = json.loads(source.text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source.name}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source.name}: the agent configuration must be a JSON object, got {_kind(document)}")
    return document


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _merge(target: dict[str, Any], document: Mapping[str, Any], origin: dict[str, str], name: str, path: str) -> None:
    for key, value in document.items():
        dotted = f"{path}{key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, origin, name, dotted + ".")
            continue
        target[key] = _copy(value)
        _mark(origin, value, name, dotted)


def _copy(value: Any) -> Any:
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else value


def _mark(origin: dict[str, str], value: Any, name: str, dotted: str) -> None:
    origin[dotted] = name
    if isinstance(value, dict):
        for key, item in value.items():
            _mark(origin, item, name, f"{dotted}.{key}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _shown(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


class _Reader:
    """Reads the merged document key by key, recording every key it did not use."""

    def __init__(self, document: dict[str, Any], origin: dict[str, str], warnings: list[str]) -> None:
        self.document = document
        self.origin = origin
        self.warnings = warnings

    def read(self) -> AgentConfig:
        doc = self.document
        limits = self._object(doc, "limits")
        acl = self._object(doc, "acl")
        tokens = self._object(acl, "tokens", "acl.")
        ports = self._object(doc, "ports")
        telemetry = self._object(doc, "telemetry")
        initial = self._string(tokens, "initial_management", "acl.tokens.")
        legacy = self._string(tokens, "master", "acl.tokens.")
        config = AgentConfig(
            datacenter=self._datacenter(doc),
            node_name=self._node_name(doc),
            enable_script_checks=self._bool(doc, "enable_script_checks", ""),
            http_max_conns_per_client=self._count(limits, "http_max_conns_per_client", "limits."),
            http_port=self._port(ports, "http", "ports."),
            prometheus_retention=self._duration(telemetry, "prometheus_retention_time", "telemetry."),
            acl=AclConfig(
                enabled=bool(self._bool(acl, "enabled", "acl.")),
                default_policy=self._default_policy(acl),
                initial_management=initial or legacy or "",
                default_token=self._string(tokens, "default", "acl.tokens.") or "",
                enable_key_list_policy=bool(self._bool(acl, "enable_key_list_policy", "acl.")),
            ),
        )
        for prefix, section in (("", doc), ("limits.", limits), ("acl.", acl), ("acl.tokens.", tokens)):
            self._warn_unused(section, prefix)
        for prefix, section in (("ports.", ports), ("telemetry.", telemetry)):
            self._warn_unused(section, prefix)
        return config

    # -- typed accessors; each pops the key it reads, so what remains is unknown -----------------------------------

    def _where(self, dotted: str) -> str:
        return self.origin.get(dotted, "flags")

    def _fail(self, dotted: str, value: object, expected: str) -> ConfigError:
        return ConfigError(f"{self._where(dotted)}: {dotted}: {_shown(value)} {expected}")

    def _object(self, section: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        if key not in section:
            return {}
        value = section.pop(key)
        if not isinstance(value, dict):
            raise self._fail(prefix + key, value, f"must be an object, got {_kind(value)}")
        return value

    def _string(self, section: dict[str, Any], key: str, prefix: str) -> str | None:
        if key not in section:
            return None
        value = section.pop(key)
        if not isinstance(value, str):
            raise self._fail(prefix + key, value, f"must be a string, got {_kind(value)}")
        return value

    def _bool(self, section: dict[str, Any], key: str, prefix: str) -> bool | None:
        if key not in section:
            return None
        value = section.pop(key)
        if not isinstance(value, bool):
            raise self._fail(prefix + key, value, f"must be true or false, got {_kind(value)}")
        return value

    def _count(self, section: dict[str, Any], key: str, prefix: str) -> int:
        if key not in section:
            return DEFAULT_MAX_CONNS_PER_CLIENT
        value = section.pop(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._fail(prefix + key, value, "must be a whole number >= 0 (0: no limit)")
        return value

    def _port(self, section: dict[str, Any], key: str, prefix: str) -> int | None:
        if key not in section:
            return None
        value = section.pop(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise self._fail(prefix + key, value, "must be a port number 0-65535")
        return value

    def _duration(self, section: dict[str, Any], key: str, prefix: str) -> float:
        if key not in section:
            return 0.0
        value = section.pop(key)
        if not isinstance(value, str):
            raise self._fail(prefix + key, value, 'must be a duration string such as "60s"')
        try:
            nanoseconds = parse_go_duration(value)
        except ValueError as exc:
            raise self._fail(prefix + key, value, f"is not a duration ({exc})") from None
        if nanoseconds < 0:
            raise self._fail(prefix + key, value, "must not be negative")
        return nanoseconds / 1e9

    def _datacenter(self, doc: dict[str, Any]) -> str | None:
        value = self._string(doc, "datacenter", "")
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise self._fail("datacenter", value, "must be a single word")
        return value

    def _node_name(self, doc: dict[str, Any]) -> str | None:
        value = self._string(doc, "node_name", "")
        if value is not None and not value.strip():
            raise self._fail("node_name", value, "must not be empty")
        return value

    def _default_policy(self, acl: dict[str, Any]) -> str:
        value = self._string(acl, "default_policy", "acl.")
        if value is None:
            return "allow"
        if value not in ("allow", "deny"):
            raise self._fail("acl.default_policy", value, 'must be "allow" or "deny"')
        return value

    def _warn_unused(self, section: dict[str, Any], prefix: str) -> None:
        for key in sorted(section):
            dotted = prefix + key
            self.warnings.append(
                f"{self._where(dotted)}: config key {dotted!r} is not supported by the dev agent (ignored)"
            )
