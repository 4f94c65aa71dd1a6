"""Consul KV access for the ``consulgw policy`` and ``consulgw consumer`` commands (py-consul's sync client).

Every failure -- connection refused, timeout, ACL denial, a Consul error status -- becomes one ``DiscoveryError``
with a one-line message naming the Consul address, never the token. An ACL denial says which permission the token
lacks, on which key, or that Consul does not know the token at all.
"""

from __future__ import annotations

import argparse
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import consul

from consulgw.errors import ConfigError, DiscoveryError
from consulgw.settings import ConsulSettings, consul_settings

T = TypeVar("T")


def kv_prefix(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """``--kv-prefix`` / CONSULGW_KV_PREFIX, default ``consulgw/``, always ending in one slash."""
    value = getattr(args, "kv_prefix", None) or environ.get("CONSULGW_KV_PREFIX") or "consulgw/"
    prefix = value.strip().lstrip("/")
    if not prefix or any(c.isspace() for c in prefix):
        raise ConfigError(f"--kv-prefix / CONSULGW_KV_PREFIX: {value!r} is not a KV prefix")
    return prefix if prefix.endswith("/") else prefix + "/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One KV key as read: its raw value (None when absent) and ModifyIndex (0 when absent, the CAS for create)."""

    value: bytes | None
    modify_index: int

    @property
    def exists(self) -> bool:
        return self.modify_index != 0


_LACKS = re.compile(r"lacks permission '([a-z_]+:[a-z]+)'(?: on \"(.*?)\")?")


def acl_refusal(address: str, body: str) -> str:
    """One line for Consul's 403: which permission the token lacks (or that Consul does not know the token).

    Consul's text names the token's AccessorID, which is not needed here and is left out.
    """
    text = " ".join(body.split())
    if "ACL not found" in text:
        return f"Consul at {address} does not know this ACL token (ACL not found); check --token / CONSUL_HTTP_TOKEN"
    match = _LACKS.search(text)
    if match is None:
        return f"Consul at {address} refused the request: permission denied (ACL)"
    permission, name = match.groups()
    what = f"{permission} on {name}" if name else permission
    if "anonymous token" in text:
        return (
            f"Consul at {address} refused the request: no ACL token was given (--token / CONSUL_HTTP_TOKEN) and the "
            f"anonymous token lacks {what}"
        )
    return (
        f"Consul at {address} refused the request: the ACL token lacks {what} "
        "(the consulgw-operator policy grants it: deploy/consul/operator-policy.hcl)"
    )


class KvStore:
    """The few KV operations the commands need, with exceptions translated."""

    def __init__(self, settings: ConsulSettings, environ: Mapping[str, str]) -> None:
        self.address = settings.address
        parts = urllib.parse.urlsplit(settings.address)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--consul / CONSUL_HTTP_ADDR: {settings.address!r} has an invalid port") from exc
        if not parts.hostname:
            raise ConfigError(f"--consul / CONSUL_HTTP_ADDR: {settings.address!r} has no host")
        scheme = parts.scheme or "http"
        verify: bool | str = True
        if environ.get("CONSUL_CACERT"):
            verify = environ["CONSUL_CACERT"]
        if environ.get("CONSUL_HTTP_SSL_VERIFY", "").lower() in ("0", "false", "no"):
            verify = False
        self._client: Any = consul.Consul(
            host=parts.hostname,
            port=port or (443 if scheme == "https" else 80),
            scheme=scheme,
            dc=settings.datacenter,
            verify=verify,
        )
        # py-consul lets CONSUL_HTTP_TOKEN override the token it is given; the flag must win, so set it after.
        self._client.token = settings.token.value or None

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> KvStore:
        return cls(consul_settings(args, environ), environ)

    def get(self, key: str) -> Entry:
        _, data = self._call(lambda: self._client.kv.get(key))
        if data is None:
            return Entry(value=None, modify_index=0)
        value = data.get("Value")
        return Entry(value=bytes(value) if value is not None else b"", modify_index=int(data.get("ModifyIndex", 0)))

    def cas_put(self, key: str, value: bytes, modify_index: int) -> bool:
        """Write only if the key's ModifyIndex is still ``modify_index`` (0: only if the key does not exist)."""
        return bool(self._call(lambda: self._client.kv.put(key, value, cas=modify_index)))

    def close(self) -> None:
        self._client.http.session.close()

    def _call(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except consul.ACLPermissionDenied as exc:
            raise DiscoveryError(acl_refusal(self.address, str(exc.args[0]) if exc.args else "")) from exc
        except consul.ConsulException as exc:
            detail = " ".join(str(exc).split())[:200]
            raise DiscoveryError(f"Consul at {self.address} answered with an error: {detail}") from exc
        except OSError as exc:  # requests' exceptions derive from OSError (IOError)
            reason = "timed out" if "timeout" in type(exc).__name__.lower() else "connection failed"
            raise DiscoveryError(f"cannot reach Consul at {self.address} ({reason})") from exc
