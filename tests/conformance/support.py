"""HTTP helpers for the black-box conformance suite.

Everything here talks to a Consul HTTP API over a real socket; nothing knows how the dev agent is built.
Expectations live in the test modules and cite docs/reference sections of ``consul-api.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

# Headers every blocking-capable (Raft-backed) read carries (reference section 1.3).
QUERY_META_HEADERS = ("X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact")

Param = tuple[str, str | None]


def uid(prefix: str) -> str:
    """A name no other test (or earlier run against a long-lived real Consul) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def encode_query(params: Iterable[Param]) -> str:
    """Encode query parameters; a ``None`` value renders a bare flag (``?recurse``), as Go's url.Values sees it."""
    parts = []
    for key, value in params:
        if value is None:
            parts.append(quote(key, safe=""))
        else:
            parts.append(f"{quote(key, safe='')}={quote(str(value), safe='')}")
    return "&".join(parts)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    elapsed: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def index(self) -> int:
        return int(self.headers["X-Consul-Index"])

    def __repr__(self) -> str:  # short, so assertion messages stay readable
        return f"Reply(status={self.status}, body={self.body[:300]!r})"


@dataclass(slots=True)
class Client:
    """A thin Consul HTTP client: raw status, headers and body, nothing interpreted."""

    base: str
    session: aiohttp.ClientSession
    cleanups: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    token: str = ""  # sent as X-Consul-Token unless the request sets its own token header

    def with_token(self, token: str) -> Client:
        """The same agent seen through another ACL token (cleanups stay with this client)."""
        return Client(self.base, self.session, self.cleanups, token)

    async def request(
        self,
        method: str,
        path: str,
        params: Sequence[Param] | dict[str, str | None] = (),
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15.0,
        allow_redirects: bool = False,
    ) -> Reply:
        items = list(params.items()) if isinstance(params, dict) else list(params)
        url = self.base + path
        if items:
            url += ("&" if "?" in path else "?") + encode_query(items)
        if self.token and not any(k.lower() in ("x-consul-token", "authorization") for k in headers or {}):
            headers = {**(headers or {}), "X-Consul-Token": self.token}
        body: bytes | None
        if json_body is not None:
            body = json.dumps(json_body).encode()
        elif isinstance(data, str):
            body = data.encode()
        else:
            body = data
        started = time.monotonic()
        async with self.session.request(
            method,
            URL(url, encoded=True),
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=allow_redirects,
        ) as resp:
            raw = await resp.read()
            return Reply(resp.status, resp.headers, raw, time.monotonic() - started)

    async def get(self, path: str, params: Sequence[Param] | dict[str, str | None] = (), **kw: Any) -> Reply:
        return await self.request("GET", path, params, **kw)

    async def put(self, path: str, params: Sequence[Param] | dict[str, str | None] = (), **kw: Any) -> Reply:
        return await self.request("PUT", path, params, **kw)

    async def delete(self, path: str, params: Sequence[Param] | dict[str, str | None] = (), **kw: Any) -> Reply:
        return await self.request("DELETE", path, params, **kw)

    # ----- conveniences that assert success, so tests read as the scenario they describe -----

    async def register_service(self, definition: dict[str, Any], params: Sequence[Param] = ()) -> None:
        reply = await self.put("/v1/agent/service/register", params, json_body=definition)
        assert reply.status == 200, reply
        lowered = {k.lower(): v for k, v in definition.items()}
        service_id = lowered.get("id") or lowered.get("name")
        self.cleanups.append(lambda: self.put(f"/v1/agent/service/deregister/{service_id}"))

    async def register_check(self, definition: dict[str, Any]) -> None:
        reply = await self.put("/v1/agent/check/register", json_body=definition)
        assert reply.status == 200, reply
        lowered = {k.lower(): v for k, v in definition.items()}
        check_id = lowered.get("id") or lowered.get("checkid") or lowered.get("name")
        self.cleanups.append(lambda: self.put(f"/v1/agent/check/deregister/{check_id}"))

    async def kv_put(self, key: str, value: bytes | str = b"", params: Sequence[Param] = ()) -> Reply:
        reply = await self.put(f"/v1/kv/{key}", params, data=value)
        return reply

    async def create_session(self, body: dict[str, Any] | None = None) -> str:
        reply = await self.put("/v1/session/create", json_body=body if body is not None else {})
        assert reply.status == 200, reply
        session_id = reply.json()["ID"]
        self.cleanups.append(lambda: self.put(f"/v1/session/destroy/{session_id}"))
        return str(session_id)

    async def node_name(self) -> str:
        reply = await self.get("/v1/agent/self")
        assert reply.status == 200, reply
        return str(reply.json()["Config"]["NodeName"])

    async def agent_checks(self) -> dict[str, Any]:
        reply = await self.get("/v1/agent/checks")
        assert reply.status == 200, reply
        return dict(reply.json())

    async def run_cleanups(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await cleanup()
        self.cleanups.clear()


async def eventually(
    probe: Callable[[], Awaitable[Any]], predicate: Callable[[Any], bool], *, timeout: float, interval: float = 0.05
) -> Any:
    """Poll ``probe`` until ``predicate`` holds; return the last value (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not predicate(value) and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        value = await probe()
    return value
