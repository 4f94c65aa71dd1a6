"""A thin async client for the few Consul endpoints the gateway and its CLIs use, over ONE shared aiohttp session.

The caller owns the session (and sizes its connector: every blocking watch holds one connection for up to
``wait``). This module is the one place where aiohttp, timeout and JSON exceptions become DiscoveryError.

The ACL token travels only in the ``X-Consul-Token`` header: never in a URL, an error message or a log line.
Redirects are not followed, so the token is never replayed to another host.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from consulgw.discovery.health import CheckStatus, check_status_from_json, instance_from_entry
from consulgw.errors import ConsulPermissionDenied, DiscoveryError
from consulgw.model.snapshot import Instance
from consulgw.settings import ConsulSettings

T = TypeVar("T")

MAX_WAIT: Final = 600.0  # Consul clamps ?wait to max_query_time (10m)
JITTER_FRACTION: Final = 16  # Consul adds up to wait/16 of random jitter to every blocking query
_BODY_EXCERPT: Final = 200
_ENTRIES_PER_YIELD: Final = 250  # catalog services or KV entries decoded between two yields to the event loop
# A bexpr no health entry matches (every instance has a non-empty ID): the answer is ``[]`` with the service's index.
NOTHING: Final = 'Service.ID == ""'


@dataclass(frozen=True, slots=True, kw_only=True)
class Result(Generic[T]):
    """A decoded answer and its query metadata."""

    value: T
    index: int  # X-Consul-Index as Consul sent it (>= 1 from a real Consul; the caller applies the 0 -> 1 rule)
    known_leader: bool | None = None  # X-Consul-KnownLeader; None when absent (streaming backend)
    last_contact: float | None = None  # X-Consul-LastContact in seconds; None when absent
    filtered_by_acls: bool = False  # X-Consul-Results-Filtered-By-ACLs: the token may not see every item


def format_wait(wait: float) -> str:
    """``wait`` seconds as a Go duration in whole milliseconds (what the Go client sends), clamped to 1ms..10m."""
    millis = max(1, round(min(wait, MAX_WAIT) * 1000))
    return f"{millis}ms"


def read_timeout(wait: float, margin: float) -> float:
    """HTTP read timeout for a blocking query: above Consul's longest answer time ``wait + wait/16``."""
    effective = min(max(wait, 0.001), MAX_WAIT)
    return effective + effective / JITTER_FRACTION + margin


class ConsulClient:
    """Consul HTTP API client: blocking catalog/health/KV reads and the few KV writes the CLIs need."""

    __slots__ = ("_base", "_headers", "_params", "_session", "_timeout")

    def __init__(
        self, settings: ConsulSettings, session: aiohttp.ClientSession, *, request_timeout: float = 10.0
    ) -> None:
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {request_timeout!r}")
        self._session = session
        self._base = settings.address.rstrip("/")
        self._timeout = request_timeout
        self._headers: Mapping[str, str] = MappingProxyType(
            {"X-Consul-Token": settings.token.value} if settings.token else {}
        )
        self._params: Mapping[str, str] = MappingProxyType({"dc": settings.datacenter} if settings.datacenter else {})

    def __repr__(self) -> str:
        return f"ConsulClient({self._base!r})"

    def for_datacenter(self, datacenter: str) -> ConsulClient:
        """The same agent, session and token, reading another datacenter (``?dc=``; Consul forwards over the WAN)."""
        other = object.__new__(ConsulClient)
        other._session = self._session
        other._base = self._base
        other._timeout = self._timeout
        other._headers = self._headers
        other._params = MappingProxyType({"dc": datacenter})
        return other

    # -- blocking reads -------------------------------------------------------------------------------------------

    async def catalog_services(self, index: int = 0, wait: float = 300.0) -> Result[Mapping[str, tuple[str, ...]]]:
        """``GET /v1/catalog/services``: service name -> union of its instances' tags."""
        endpoint = "/v1/catalog/services"
        status, body, headers = await self._get(endpoint, self._blocking(index, wait), self._read_timeout(wait))
        self._expect_ok(endpoint, status, body)
        data = self._decode(endpoint, body)
        if not isinstance(data, dict):
            raise DiscoveryError(f"Consul {endpoint}: expected a JSON object, got {type(data).__name__}")
        services: dict[str, tuple[str, ...]] = {}
        for count, (name, raw) in enumerate(data.items(), 1):
            tags = [] if raw is None else raw
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise DiscoveryError(f"Consul {endpoint}: tags of {name!r} are {tags!r}, expected an array of strings")
            services[name] = tuple(tags)
            if count % _ENTRIES_PER_YIELD == 0:
                await _yield()  # a catalog of 10,000 services: let the loop serve in between
        return self._result(endpoint, MappingProxyType(services), headers)

    async def health_service(self, name: str, index: int = 0, wait: float = 300.0) -> Result[tuple[Instance, ...]]:
        """``GET /v1/health/service/<name>``: every instance, healthy or not, with its aggregated health."""
        if not name:
            raise ValueError("health_service needs a service name")
        endpoint = f"/v1/health/service/{name}"
        path = "/v1/health/service/" + quote(name, safe="")
        status, body, headers = await self._get(path, self._blocking(index, wait), self._read_timeout(wait), endpoint)
        self._expect_ok(endpoint, status, body)
        data = self._decode(endpoint, body)
        if not isinstance(data, list):
            raise DiscoveryError(f"Consul {endpoint}: expected a JSON array, got {type(data).__name__}")
        try:
            instances = tuple(instance_from_entry(entry) for entry in data)
        except DiscoveryError as exc:
            raise DiscoveryError(f"Consul {endpoint}: {exc}") from exc
        return self._result(endpoint, instances, headers)

    async def health_service_index(self, name: str) -> int:
        """The ``X-Consul-Index`` of ``/v1/health/service/<name>`` without its body: a filter no entry matches makes
        the answer ``[]``. ``?stale`` lets any server answer (no leader round trip). Used to learn whether a service
        without a blocking watch changed since it was last read."""
        if not name:
            raise ValueError("health_service_index needs a service name")
        endpoint = f"/v1/health/service/{name}"
        path = "/v1/health/service/" + quote(name, safe="")
        params = {"filter": NOTHING, "stale": ""}
        status, body, headers = await self._get(path, params, self._timeout, endpoint)
        self._expect_ok(endpoint, status, body)
        return self._result(endpoint, None, headers).index

    async def health_state(self, state: str, index: int = 0, wait: float = 300.0) -> Result[tuple[CheckStatus, ...]]:
        """``GET /v1/health/state/<state>`` (``critical`` or ``warning``): every check in that state, datacenter-wide.

        Consul answers it from its checks-by-status index, so its cost follows the number of checks in that state,
        not the size of the catalog. The index is the checks table's: any check change anywhere wakes it."""
        if state not in ("critical", "warning"):
            raise ValueError(f"health_state watches critical or warning checks, got {state!r}")
        endpoint = f"/v1/health/state/{state}"
        status, body, headers = await self._get(endpoint, self._blocking(index, wait), self._read_timeout(wait))
        self._expect_ok(endpoint, status, body)
        data = self._decode(endpoint, body)
        if not isinstance(data, list):
            raise DiscoveryError(f"Consul {endpoint}: expected a JSON array, got {type(data).__name__}")
        try:
            checks = tuple(check_status_from_json(item) for item in data)
        except DiscoveryError as exc:
            raise DiscoveryError(f"Consul {endpoint}: {exc}") from exc
        return self._result(endpoint, checks, headers)

    async def kv_list(
        self, prefix: str, index: int = 0, wait: float = 300.0, *, relative: bool = False
    ) -> Result[Mapping[str, bytes]]:
        """``GET /v1/kv/<prefix>?recurse``: full key -> raw value (``relative``: key without the prefix, the prefix's
        own folder key left out). Consul's 404 means empty, still carrying the index.

        A token without ``key:read`` on the prefix gets the keys it may read (``filtered_by_acls`` says some were
        left out), or ``ConsulPermissionDenied`` where Consul answers 403 (``acl_enable_key_list_policy``)."""
        endpoint = f"/v1/kv/{prefix}"
        params = {**self._blocking(index, wait), "recurse": ""}
        path = "/v1/kv/" + quote(prefix, safe="/") if prefix else "/v1/kv/"
        if prefix.startswith("/"):
            raise ValueError(f"KV prefix must not start with '/', got {prefix!r}")
        status, body, headers = await self._get(path, params, self._read_timeout(wait), endpoint)
        if status == 404:
            return self._result(endpoint, MappingProxyType({}), headers)
        self._expect_ok(endpoint, status, body)
        entries = await self._entries(endpoint, body, strip=prefix if relative else None)
        return self._result(endpoint, MappingProxyType(entries), headers)

    # -- non-blocking KV for CLIs ---------------------------------------------------------------------------------

    async def kv_get(self, key: str) -> Result[bytes | None]:
        """``GET /v1/kv/<key>``: the value (None when absent); ``index`` is the key's ModifyIndex (use it for CAS)."""
        endpoint = f"/v1/kv/{key}"
        status, body, headers = await self._get(self._kv_path(key), {}, self._timeout, endpoint)
        if status == 404:
            return self._result(endpoint, None, headers)
        self._expect_ok(endpoint, status, body)
        entries = await self._entries(endpoint, body)
        return self._result(endpoint, entries.get(key), headers)

    async def kv_put(self, key: str, value: bytes, cas: int | None = None) -> bool:
        """``PUT /v1/kv/<key>``; with ``cas`` (0 = create only) the write happens only if the ModifyIndex matches."""
        params = {} if cas is None else {"cas": str(cas)}
        return await self._write("PUT", key, params, value)

    async def kv_delete(self, key: str) -> bool:
        """``DELETE /v1/kv/<key>`` (deleting a missing key succeeds, as in Consul)."""
        return await self._write("DELETE", key, {}, None)

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _blocking(self, index: int, wait: float) -> dict[str, str]:
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index!r}")
        if wait <= 0:
            raise ValueError(f"wait must be > 0 seconds, got {wait!r}")
        return {"index": str(index), "wait": format_wait(wait)} if index > 0 else {}

    def _read_timeout(self, wait: float) -> float:
        return read_timeout(wait, self._timeout)

    @staticmethod
    def _kv_path(key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"KV key must be non-empty and must not start with '/', got {key!r}")
        return "/v1/kv/" + quote(key, safe="/")

    def _url(self, path: str) -> URL:
        return URL(self._base + path, encoded=True)

    async def _get(
        self, path: str, params: Mapping[str, str], sock_read: float, endpoint: str | None = None
    ) -> tuple[int, bytes, CIMultiDictProxy[str]]:
        return await self._request("GET", path, params, sock_read, endpoint or path, None)

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        sock_read: float,
        endpoint: str,
        data: bytes | None,
    ) -> tuple[int, bytes, CIMultiDictProxy[str]]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=sock_read)
        try:
            async with self._session.request(
                method,
                self._url(path),
                params={**self._params, **params},
                headers=self._headers,
                data=data,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return response.status, body, response.headers
        except TimeoutError as exc:
            raise DiscoveryError(f"Consul {method} {endpoint}: timed out ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:
            raise DiscoveryError(f"Consul {method} {endpoint}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _expect_ok(endpoint: str, status: int, body: bytes) -> None:
        if status == 200:
            return
        text = body[:_BODY_EXCERPT].decode("utf-8", "replace").strip()
        message = f"Consul {endpoint}: HTTP {status}" + (f": {text}" if text else "")
        if status == 403:
            raise ConsulPermissionDenied(message)
        raise DiscoveryError(message)

    @staticmethod
    def _decode(endpoint: str, body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DiscoveryError(f"Consul {endpoint}: response is not JSON ({exc})") from exc

    async def _entries(self, endpoint: str, body: bytes, *, strip: str | None = None) -> dict[str, bytes]:
        entries: dict[str, bytes] = {}
        size = len(strip) if strip is not None else 0
        async for count, item in _array_items(endpoint, body):
            if count % _ENTRIES_PER_YIELD == 0:
                await _yield()  # 10,000 policy documents: let the loop serve in between
            key = item.get("Key") if isinstance(item, dict) else None
            if not isinstance(key, str):
                raise DiscoveryError(f"Consul {endpoint}: KV entry without a string Key: {item!r:.120}")
            if strip is not None:
                if not key.startswith(strip) or len(key) == size:
                    continue  # outside the prefix, or the prefix's own folder key
                key = key[size:]
            raw = item.get("Value")
            if raw is None:
                entries[key] = b""
                continue
            if not isinstance(raw, str):
                raise DiscoveryError(f"Consul {endpoint}: Value of {key!r} is {type(raw).__name__}, expected base64")
            try:
                entries[key] = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DiscoveryError(f"Consul {endpoint}: Value of {key!r} is not valid base64 ({exc})") from exc
        return entries

    @staticmethod
    def _result(endpoint: str, value: T, headers: Mapping[str, str]) -> Result[T]:
        raw_index = headers.get("X-Consul-Index")
        if raw_index is None or not raw_index.isdigit():
            raise DiscoveryError(f"Consul {endpoint}: missing or invalid X-Consul-Index header ({raw_index!r})")
        leader = headers.get("X-Consul-KnownLeader")
        contact = headers.get("X-Consul-LastContact")
        return Result(
            value=value,
            index=int(raw_index),
            known_leader=None if leader is None else leader.lower() == "true",
            last_contact=int(contact) / 1000 if contact is not None and contact.isdigit() else None,
            filtered_by_acls=headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true",
        )

    async def _write(self, method: str, key: str, params: Mapping[str, str], data: bytes | None) -> bool:
        endpoint = f"/v1/kv/{key}"
        status, body, _ = await self._request(method, self._kv_path(key), params, self._timeout, endpoint, data)
        self._expect_ok(endpoint, status, body)
        answer = self._decode(endpoint, body)
        if not isinstance(answer, bool):
            raise DiscoveryError(f"Consul {method} {endpoint}: expected true or false, got {answer!r:.60}")
        return answer


async def _yield() -> None:
    """Twice ``sleep(0)``: what the loop's poll found runs before this task goes on (see consulgw.server.view)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


_DECODER = json.JSONDecoder()
_WHITESPACE = frozenset(" \t\r\n")


async def _array_items(endpoint: str, body: bytes) -> AsyncIterator[tuple[int, Any]]:
    """The items of a JSON array, decoded one at a time (``json.loads`` of a 3 MB KV answer is one call of tens of
    milliseconds that nothing can interrupt; here the caller yields to the event loop between items)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DiscoveryError(f"Consul {endpoint}: response is not JSON ({exc})") from exc
    size = len(text)

    def skip(at: int) -> int:
        while at < size and text[at] in _WHITESPACE:
            at += 1
        return at

    at = skip(0)
    if at >= size or text[at] != "[":
        value = ConsulClient._decode(endpoint, body)  # the precise error, or what else it is
        raise DiscoveryError(f"Consul {endpoint}: expected a JSON array of KV entries, got {type(value).__name__}")
    at = skip(at + 1)
    count = 0
    if at < size and text[at] == "]":
        at += 1
    else:
        while True:
            try:
                item, at = _DECODER.raw_decode(text, at)
            except ValueError as exc:
                raise DiscoveryError(f"Consul {endpoint}: response is not JSON ({exc})") from exc
            count += 1
            yield count, item
            at = skip(at)
            if at < size and text[at] == ",":
                at = skip(at + 1)
                continue
            if at < size and text[at] == "]":
                at += 1
                break
            raise DiscoveryError(f"Consul {endpoint}: response is not JSON (bad array at character {at})")
    if skip(at) != size:
        raise DiscoveryError(f"Consul {endpoint}: response is not JSON (extra data at character {at})")
