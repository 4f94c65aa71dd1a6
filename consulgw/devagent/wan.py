"""WAN federation of dev agents: ``?dc=<peer>`` is answered by the peer's agent, as a federated Consul server
forwards a request for another datacenter to a server there (blocking queries included, with that datacenter's
indexes). ``consulgw dev-agent --wan-peer dc2=http://127.0.0.1:8501`` names the peers; see docs/dev-agent.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import hdrs

from consulgw.devagent.errors import ApiError, Forward
from consulgw.devagent.http import Call, Reply

# Request headers passed on to the peer (the token, content negotiation, conditional reads); the rest is hop state.
_REQUEST_HEADERS: Final = (
    "X-Consul-Token",
    hdrs.AUTHORIZATION,
    hdrs.CONTENT_TYPE,
    "Cache-Control",
)
_HOP_BY_HOP: Final = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        hdrs.CONTENT_LENGTH,
        hdrs.CONTENT_ENCODING,
        hdrs.TRANSFER_ENCODING,
        hdrs.DATE,
        hdrs.SERVER,
        "Keep-Alive",
        "X-Consul-Default-ACL-Policy",
    )
)
UNREACHABLE: Final = "Remote DC has no server currently reachable"  # Consul's text when the peer cannot be reached


def parse_wan_peer(flag: str, value: str) -> tuple[str, str]:
    """``DC=http://HOST:PORT`` -> (dc, base URL); ValueError naming the flag and the value otherwise."""
    dc, sep, url = value.partition("=")
    shape = "must be DC=http://HOST:PORT (e.g. dc2=http://127.0.0.1:8501)"
    if not sep or not dc or any(c.isspace() for c in dc):
        raise ValueError(f"{flag}: {value!r} {shape}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{flag}: {value!r} {shape}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(f"{flag}: {value!r} {shape}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{flag}: {value!r} {shape} (no path, query or credentials)")
    return dc, url.rstrip("/")


def parse_wan_peers(flag: str, values: list[str], own: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for value in values:
        dc, url = parse_wan_peer(flag, value)
        if dc == own:
            raise ValueError(f"{flag}: {value!r} names this agent's own datacenter {own!r}")
        if dc in peers:
            raise ValueError(f"{flag}: {value!r} names datacenter {dc!r} a second time")
        peers[dc] = url
    return peers


class WanForwarder:
    """Forwards one request to a peer's agent and hands its answer back unchanged (status, body, Consul headers)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def __call__(self, forward: Forward) -> Reply:
        call = forward.call
        assert isinstance(call, Call)
        request = call.request
        body = await call.body()  # read by the handler already (a register's Datacenter), or read now
        headers = {name: request.headers[name] for name in _REQUEST_HEADERS if name in request.headers}
        url = forward.url + request.rel_url.raw_path
        params: Mapping[str, str] = request.rel_url.query
        try:
            async with self._session.request(
                request.method,
                url,
                params=params,
                data=body or None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
            ) as response:
                data = await response.read()
                kept = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(500, f"{UNREACHABLE} ({forward.datacenter}: {type(exc).__name__})") from exc
        content_type = kept.pop(hdrs.CONTENT_TYPE, None)
        return Reply(status=response.status, body=data, content_type=content_type, headers=kept)
