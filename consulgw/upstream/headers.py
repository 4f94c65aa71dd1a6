"""Pure header logic of the proxy: hop-by-hop stripping, client IP resolution, X-Forwarded-* composition.

Trusted proxies are parsed once (settings); the client IP is the peer address unless the peer is a trusted proxy,
in which case X-Forwarded-For is walked right to left and the first untrusted hop is the client (repeated XFF
header lines are joined, not collapsed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from consulgw.model.http import HOP_BY_HOP, IDENTITY_HEADERS, SPOOFABLE_HEADERS
from consulgw.settings import IPNetwork

__all__ = [
    "HOP_BY_HOP",
    "IDENTITY_HEADERS",
    "SPOOFABLE_HEADERS",
    "TrustedProxies",
    "end_to_end",
    "forwarded_headers",
    "strip_hop_by_hop",
]

_MAX_REQUEST_ID = 200


_HOP_BY_HOP_NAMES: Final = tuple(sorted(HOP_BY_HOP))


def connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop too), lower-cased."""
    getall = getattr(headers, "getall", None)
    values = getall("Connection", []) if getall is not None else [headers.get("Connection", "")]
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: tuple[str, ...] = ()) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers (including those named in ``Connection``) and without ``drop``.

    Copy first, then delete the few names that must go: a C-level copy and a dozen lookups cost far less than
    filtering every header in Python (this runs twice per proxied request).
    """
    out: CIMultiDict[str] = CIMultiDict(headers)
    strip_hop_by_hop(out)
    for name in drop:
        if name in out:
            del out[name]
    return out


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop fields in place, including those named in ``Connection`` (RFC 9110 section 7.6.1)."""
    if "Connection" in headers:
        for name in connection_tokens(headers):
            if name in headers:
                del headers[name]
    for name in _HOP_BY_HOP_NAMES:
        if name in headers:
            del headers[name]


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    networks: tuple[IPNetwork, ...] = ()

    def trusts(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def client_ip(self, peer: str, forwarded_for: list[str]) -> str:
        """The original client: the peer, or (only behind trusted proxies) the first untrusted XFF hop."""
        if not self.trusts(peer):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
        for hop in reversed(hops):
            candidate = _strip_port(hop)
            if not _is_ip(candidate):
                return peer  # a malformed hop ends the chain of trust: believe nothing further left
            if not self.trusts(candidate):
                return candidate
        return _strip_port(hops[0]) if hops else peer


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # [v6]:port
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:  # v4:port
        return hop.split(":", 1)[0]
    return hop


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def forwarded_headers(
    *,
    incoming: CIMultiDictProxy[str],
    peer: str,
    scheme: str,
    host: str,
    trusted: TrustedProxies,
) -> tuple[tuple[str, str], ...]:
    """X-Forwarded-For/-Proto/-Host for the upstream request.

    From a trusted proxy the existing chain is kept and the peer appended; otherwise client-supplied values are
    discarded (they are spoofable) and the chain starts at the peer.
    """
    if trusted.trusts(peer):
        chain = ", ".join(v for v in incoming.getall("X-Forwarded-For", []) if v.strip())
        xff = f"{chain}, {peer}" if chain else peer
        proto = incoming.get("X-Forwarded-Proto") or scheme
        fwd_host = incoming.get("X-Forwarded-Host") or host
    else:
        xff, proto, fwd_host = peer, scheme, host
    return (("X-Forwarded-For", xff), ("X-Forwarded-Proto", proto), ("X-Forwarded-Host", fwd_host))


def request_id_from(value: str | None) -> str | None:
    """A client-supplied X-Request-ID, if it is short printable ASCII; otherwise None (a new one is generated)."""
    if not value or len(value) > _MAX_REQUEST_ID:
        return None
    if not all(33 <= ord(c) <= 126 for c in value):
        return None
    return value
