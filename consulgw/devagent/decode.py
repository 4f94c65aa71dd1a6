"""Request bodies decoded with Go ``encoding/json`` semantics, as Consul does.

Struct keys match case-insensitively (``name``, ``Name``, ``NAME``) and Consul's snake_case aliases are folded the
same way (``enable_tag_override`` -> ``EnableTagOverride``); unknown keys are ignored; ``null`` leaves the zero value.
Type mismatches produce Go's error text, which the handlers wrap as ``Request decode failed: ...``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from consulgw.devagent.errors import DecodeError
from consulgw.duration import parse_go_duration

_JSON_KIND = {str: "string", bool: "bool", int: "number", float: "number", dict: "object", list: "array"}


def _fold(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


# Field sets of the structs Consul decodes with DisallowUnknownFields (lib.DecodeJSON); snake_case spellings of
# these names are accepted too (underscores are folded), as Consul's key translation does for its aliases.
ENTERPRISE = ("Namespace", "Partition")
SERVICE_DEFINITION = (
    "Kind", "ID", "Name", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "SocketPath", "Check", "Checks",
    "Weights", "Token", "EnableTagOverride", "Proxy", "Connect", "Locality", *ENTERPRISE,
)  # fmt: skip
CHECK_TYPE = (
    "CheckID", "ID", "Name", "Status", "Notes", "ScriptArgs", "Args", "HTTP", "H2PING", "H2PingUseTLS", "Header",
    "Method", "Body", "DisableRedirects", "TCP", "TCPUseTLS", "UDP", "Interval", "AliasNode", "AliasService",
    "DockerContainerID", "Shell", "GRPC", "GRPCUseTLS", "OSService", "TLSServerName", "TLSSkipVerify", "Timeout",
    "TTL", "SuccessBeforePassing", "FailuresBeforeWarning", "FailuresBeforeCritical", "ProxyHTTP", "ProxyGRPC",
    "DeregisterCriticalServiceAfter", "OutputMaxSize", "ServiceID",
)  # fmt: skip
CHECK_DEFINITION = (*CHECK_TYPE, "Token", *ENTERPRISE)
CHECK_UPDATE = ("Status", "Output")
WEIGHTS = ("Passing", "Warning")
SERVICE_ADDRESS = ("Address", "Port")
REGISTER_REQUEST = (
    "Datacenter", "ID", "Node", "Address", "TaggedAddresses", "NodeMeta", "Service", "Check", "Checks",
    "SkipNodeUpdate", "Token", "Locality", "PeerName", *ENTERPRISE,
)  # fmt: skip
NODE_SERVICE = (
    "Kind", "ID", "Service", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "SocketPath", "Weights",
    "EnableTagOverride", "Proxy", "Connect", "Locality", "PeerName", "LocallyRegisteredAsSidecar", "CreateIndex",
    "ModifyIndex", *ENTERPRISE,
)  # fmt: skip
HEALTH_CHECK = (
    "Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags", "Type",
    "Interval", "Timeout", "ExposedPort", "Definition", "PeerName", "CreateIndex", "ModifyIndex", *ENTERPRISE,
)  # fmt: skip
DEREGISTER_REQUEST = ("Datacenter", "Node", "ServiceID", "CheckID", "Token", "PeerName", *ENTERPRISE)
SESSION = (
    "ID", "Name", "Node", "LockDelay", "Behavior", "TTL", "NodeChecks", "ServiceChecks", "Checks", "CreateIndex",
    "ModifyIndex", *ENTERPRISE,
)  # fmt: skip
TXN_OP = ("KV", "Node", "Service", "Check", "Session")
TXN_KV = ("Verb", "Key", "Value", "Flags", "Index", "Session", *ENTERPRISE)


def json_kind(value: object) -> str:
    return _JSON_KIND.get(type(value), "value")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; raise DecodeError with a Go-like message (``EOF`` for an empty body)."""
    text = raw.decode("utf-8", errors="replace")
    stripped = text.strip()
    if not stripped:
        raise DecodeError("EOF")
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(stripped):
            raise DecodeError("unexpected EOF") from exc
        char = stripped[exc.pos]
        if exc.msg.startswith("Extra data"):
            raise DecodeError(f"invalid character {char!r} after top-level value") from exc
        if exc.msg.startswith("Expecting property name"):
            raise DecodeError(f"invalid character {char!r} looking for beginning of object key string") from exc
        if exc.msg.startswith("Expecting ',' delimiter"):
            raise DecodeError(f"invalid character {char!r} after object key:value pair") from exc
        raise DecodeError(f"invalid character {char!r} looking for beginning of value") from exc


class Fields:
    """A JSON object read as a Go struct named ``struct``: case-insensitive, alias-aware, typed accessors."""

    __slots__ = ("_values", "struct")

    def __init__(
        self,
        value: object,
        struct: str,
        *,
        aliases: Mapping[str, str] | None = None,
        known: Iterable[str] | None = None,
    ) -> None:
        self.struct = struct
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise DecodeError(f"json: cannot unmarshal {json_kind(value)} into Go value of type structs.{struct}")
        folded: dict[str, Any] = {}
        alias_map = {_fold(k): _fold(v) for k, v in (aliases or {}).items()}
        allowed = {_fold(k) for k in known} | set(alias_map) if known is not None else None
        for key, item in value.items():
            name = _fold(str(key))
            if allowed is not None and name not in allowed:
                raise DecodeError(f"json: unknown field {json.dumps(str(key))}")
            folded[alias_map.get(name, name)] = item
        self._values = folded

    def has(self, name: str) -> bool:
        return self._values.get(_fold(name)) is not None

    def raw(self, name: str) -> Any:
        return self._values.get(_fold(name))

    def _mismatch(self, name: str, value: object, gotype: str) -> DecodeError:
        return DecodeError(
            f"json: cannot unmarshal {json_kind(value)} into Go struct field {self.struct}.{name} of type {gotype}"
        )

    def string(self, name: str, default: str = "") -> str:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._mismatch(name, value, "string")
        return value

    def integer(self, name: str, default: int = 0, *, gotype: str = "int") -> int:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._mismatch(name, value, gotype)
        if isinstance(value, float):
            if not value.is_integer():
                raise DecodeError(
                    f"json: cannot unmarshal number {value:g} into Go struct field {self.struct}.{name} of type {gotype}"
                )
            value = int(value)
        if gotype.startswith("uint") and value < 0:
            raise DecodeError(
                f"json: cannot unmarshal number {value} into Go struct field {self.struct}.{name} of type {gotype}"
            )
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._mismatch(name, value, "bool")
        return value

    def str_list(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self._mismatch(name, value, "[]string")
        out: list[str] = []
        for item in value:
            if not isinstance(item, str):
                raise self._mismatch(name, item, "string")
            out.append(item)
        return tuple(out)

    def str_map(self, name: str) -> dict[str, str]:
        value = self.raw(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._mismatch(name, value, "map[string]string")
        out: dict[str, str] = {}
        for key, item in value.items():
            if item is None:
                item = ""
            if not isinstance(item, str):
                raise self._mismatch(name, item, "string")
            out[str(key)] = item
        return out

    def str_list_map(self, name: str) -> dict[str, tuple[str, ...]]:
        value = self.raw(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._mismatch(name, value, "map[string][]string")
        out: dict[str, tuple[str, ...]] = {}
        for key, items in value.items():
            if items is None:
                out[str(key)] = ()
                continue
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise self._mismatch(name, items, "[]string")
            out[str(key)] = tuple(items)
        return out

    def obj(
        self,
        name: str,
        struct: str,
        *,
        aliases: Mapping[str, str] | None = None,
        known: Iterable[str] | None = None,
    ) -> Fields | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._mismatch(name, value, struct)
        return Fields(value, struct, aliases=aliases, known=known)

    def obj_list(
        self,
        name: str,
        struct: str,
        *,
        aliases: Mapping[str, str] | None = None,
        known: Iterable[str] | None = None,
    ) -> list[Fields]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._mismatch(name, value, f"[]*structs.{struct}")
        out: list[Fields] = []
        for item in value:
            if item is None:
                continue
            if not isinstance(item, dict):
                raise self._mismatch(name, item, struct)
            out.append(Fields(item, struct, aliases=aliases, known=known))
        return out

    def duration(self, name: str) -> int:
        """A Go duration string or a JSON number of nanoseconds; returns nanoseconds."""
        value = self.raw(name)
        if value is None:
            return 0
        if isinstance(value, bool):
            raise DecodeError(f"invalid duration: {value!r}".replace("True", "true").replace("False", "false"))
        if isinstance(value, int | float):
            return int(value)
        if isinstance(value, str):
            try:
                return parse_go_duration(value)
            except ValueError as exc:
                raise DecodeError(str(exc)) from exc
        raise DecodeError(f"invalid duration: {json.dumps(value)}")
