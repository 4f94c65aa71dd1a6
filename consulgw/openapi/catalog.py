"""``OpenApiCatalog``: fetches every service's OpenAPI document in the background and renders the merged one.

Driven by the view: every ``poll`` seconds the catalog reads the active ``GatewayView`` and decides, per routed
service, whether it has a document (policy ``openapi.path``, else Service Meta ``gw-openapi`` on its instances)
and which healthy instances to ask. A service is fetched when that plan changes (instances, Meta, policy) and
every ``openapi.refresh``. Fetches run on ``concurrency`` worker tasks fed by a queue that holds each service at
most once, with the policy's ``timeout`` and ``max_bytes``; a failed or invalid fetch keeps the last good document
(and is retried with backoff, on the next instance). Nothing of this runs on the request path.

Rewriting (``consulgw.openapi.rewrite``) happens in the same task, one service at a time, whenever a service's
document, the route table or the service's auth changed. The admin listener only reads what is ready:
``merged_json``, ``service_json`` and ``status`` never fetch and never rewrite.

The catalog owns its HTTP session and its tasks: ``start`` creates them, ``stop`` cancels and closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from consulgw.clock import Clock
from consulgw.errors import OpenApiError
from consulgw.model.snapshot import Instance
from consulgw.openapi.document import parse_document
from consulgw.openapi.merge import Merged, gateway_server, merge
from consulgw.openapi.rewrite import ServiceApi, rewrite_service
from consulgw.policy.model import OpenApiPolicy
from consulgw.routing.table import RouteTable
from consulgw.server.view import GatewayView, ServiceEntry

META_KEY = "gw-openapi"
MAX_INSTANCES_TRIED = 3  # per fetch; the next fetch starts with the next instance
MAX_LISTED = 50  # unrouted / shadowed operations listed per service on /-/routes (all are counted)
_CHUNK = 64 * 1024
# Failures that make a document unusable by the rewrite, rather than bugs elsewhere.
_REWRITE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """Where one service's document comes from, as the current view says."""

    source: str  # "policy" | "meta"
    policy: OpenApiPolicy
    candidates: tuple[tuple[Instance, str], ...]  # healthy instances and the path to ask each
    problem: str | None = None  # why there is nothing to fetch from

    @property
    def key(self) -> tuple[object, ...]:
        return (
            self.policy,
            tuple((i.id, i.scheme, i.endpoint, path) for i, path in self.candidates),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fetched:
    body: bytes  # as fetched (it passed parse_document); parsed again only to rewrite, so one copy stays in memory
    content_type: str | None
    serial: int  # changes whenever the content does
    digest: str
    size: int
    etag: str | None
    instance: str
    path: str
    fetched_at: float  # wall clock


@dataclass(slots=True)
class _State:
    """One service's fetch state: owned by the catalog, outside the swapped view."""

    plan: _Plan
    key: tuple[object, ...] = ()
    fetched: _Fetched | None = None
    error: str | None = None
    logged_error: str | None = None
    attempted: bool = False
    failures: int = 0
    next_due: float = 0.0
    queued: bool = False
    api: ServiceApi | None = None
    api_key: tuple[object, ...] = field(default=())  # (document serial, auth policy, public URL) of ``api``
    api_table: RouteTable | None = None  # the table ``api`` was rewritten against (compared by identity)


@dataclass(frozen=True, slots=True)
class _Rendered:
    apis: tuple[ServiceApi, ...]
    merged: Merged
    body: bytes


class OpenApiCatalog:
    def __init__(
        self,
        *,
        view: Callable[[], GatewayView | None],
        clock: Clock,
        public_url: Callable[[], str],
        ssl_context: ssl.SSLContext | None = None,
        concurrency: int = 4,
        poll: float = 0.5,
    ) -> None:
        self._view = view
        self._clock = clock
        self._public_url = public_url
        self._ssl = ssl_context
        self._concurrency = max(1, concurrency)
        self._poll = poll
        self._log = structlog.get_logger("consulgw.openapi")
        self._states: dict[str, _State] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()  # holds each service at most once (_State.queued)
        self._serial = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rendered: _Rendered | None = None
        self._per_service: dict[str, tuple[ServiceApi, bytes]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, ssl=self._ssl or True),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._tasks.append(asyncio.create_task(self._run(), name="consulgw-openapi"))
        for index in range(self._concurrency):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"consulgw-openapi-fetch-{index}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> OpenApiCatalog:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- what the admin listener reads -------------------------------------------------------------------------

    def merged_json(self) -> bytes:
        """The merged OpenAPI 3.1 document of every service with a document (cached until something changes)."""
        apis = tuple(s.api for _, s in sorted(self._states.items()) if s.api is not None)
        rendered = self._rendered
        if (
            rendered is None
            or len(rendered.apis) != len(apis)
            or any(a is not b for a, b in zip(rendered.apis, apis, strict=True))
        ):
            digest = hashlib.sha256()
            for api in apis:
                state = self._states[api.service]
                digest.update(f"{api.service}:{state.fetched.digest if state.fetched else ''};".encode())
            merged = merge(
                apis,
                title="consulgw",
                version=f"sha256:{digest.hexdigest()[:12]}",
                description=_description(apis),
                server=self._server(),
            )
            rendered = _Rendered(apis, merged, _dump(merged.document))
            self._rendered = rendered
        return rendered.body

    def service_json(self, service: str) -> bytes | None:
        """One service's document as the gateway exposes it, or None when it has none (yet)."""
        state = self._states.get(service)
        if state is None or state.api is None:
            return None
        cached = self._per_service.get(service)
        if cached is not None and cached[0] is state.api:
            return cached[1]
        api = state.api
        merged = merge(
            [api],
            title=api.title,
            version=api.version,
            description=api.description or f"{service}, as exposed by consulgw",
            server=self._server(),
        )
        body = _dump(merged.document)
        self._per_service[service] = (api, body)
        return body

    def status(self, service: str) -> dict[str, Any] | None:
        """The ``openapi`` field of a service on ``/-/routes``; None when the service has no document."""
        state = self._states.get(service)
        if state is None:
            return None
        fetched, api = state.fetched, state.api
        if state.error is not None:
            condition = "error"
        elif fetched is not None:
            condition = "ok"
        else:
            condition = "pending" if not state.attempted else "error"
        shadowed = self._rendered.merged.shadowed.get(service, ()) if self._rendered is not None else ()
        candidates = state.plan.candidates
        return {
            "state": condition,
            "source": state.plan.source,
            "path": candidates[0][1] if candidates else state.plan.policy.path,
            "serving": api is not None,
            "error": state.error,
            "instance": fetched.instance if fetched else None,
            "fetched_at": _iso(fetched.fetched_at) if fetched else None,
            "bytes": fetched.size if fetched else None,
            "operations": api.operations if api else None,
            "exposed": api.exposed if api else None,
            "unrouted": len(api.unrouted) if api else None,
            "unrouted_operations": list(api.unrouted[:MAX_LISTED]) if api else [],
            "shadowed": list(shadowed[:MAX_LISTED]),
        }

    # -- the background task -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            view = self._view()
            if view is not None:
                self._schedule(view)
                await self._render(view)
            await self._clock.sleep(self._poll)

    def _schedule(self, view: GatewayView) -> None:
        now = self._clock.monotonic()
        for name in [n for n in self._states if n not in view.services]:
            self._forget(name)
        for name, entry in view.services.items():
            plan = _plan(entry)
            if plan is None:
                if name in self._states:
                    self._forget(name)
                continue
            state = self._states.get(name)
            if state is None:
                state = self._states[name] = _State(plan=plan)
            state.plan = plan
            if plan.key != state.key:
                state.key = plan.key
                state.next_due = now
            if plan.problem is not None:
                state.error = plan.problem
                continue
            if now >= state.next_due and not state.queued:
                state.queued = True
                self._queue.put_nowait(name)

    def _forget(self, name: str) -> None:
        self._states.pop(name, None)
        self._per_service.pop(name, None)

    async def _worker(self) -> None:
        while True:
            name = await self._queue.get()
            state = self._states.get(name)
            if state is None:
                continue
            try:
                await self._fetch(name, state)
            except Exception as exc:  # noqa: BLE001 - a bug with one service's document must not stop the fetcher
                self._log.exception("openapi_fetch_failed", service=name, error=type(exc).__name__)
                state.next_due = self._clock.monotonic() + state.plan.policy.refresh
            finally:
                state.queued = False

    async def _fetch(self, name: str, state: _State) -> None:
        plan = state.plan
        candidates = plan.candidates
        start = state.failures % len(candidates)
        order = (candidates[start:] + candidates[:start])[:MAX_INSTANCES_TRIED]
        errors: list[str] = []
        for instance, path in order:
            url = f"{instance.scheme}://{instance.endpoint}{path}"
            try:
                answer = await self._get(url, plan.policy, state.fetched.etag if state.fetched else None)
                fetched = self._accept(name, state, answer, instance, path)
            except OpenApiError as exc:
                errors.append(f"{instance.id}: {exc}")
                continue
            if self._states.get(name) is not state:
                return  # the service left (or lost its document) while we fetched
            changed = state.fetched is None or fetched.digest != state.fetched.digest
            state.fetched = fetched
            state.error = state.logged_error = None
            state.attempted = True
            state.failures = 0
            state.next_due = self._clock.monotonic() + plan.policy.refresh
            if changed:
                self._log.info("openapi_fetched", service=name, instance=instance.id, path=path, bytes=fetched.size)
            return
        if self._states.get(name) is not state:
            return
        state.attempted = True
        state.failures += 1
        state.error = "; ".join(errors)
        state.next_due = self._clock.monotonic() + min(plan.policy.refresh, 2.0 ** min(state.failures, 6))
        if state.error != state.logged_error:
            state.logged_error = state.error
            self._log.warning(
                "openapi_fetch_failed",
                service=name,
                error=state.error,
                keeping_last_good=state.fetched is not None,
            )

    def _accept(
        self,
        name: str,
        state: _State,
        answer: tuple[bytes, str | None, str | None] | None,
        instance: Instance,
        path: str,
    ) -> _Fetched:
        now = self._clock.time()
        previous = state.fetched
        if answer is None:  # 304 Not Modified
            assert previous is not None
            return _Fetched(
                body=previous.body,
                content_type=previous.content_type,
                serial=previous.serial,
                digest=previous.digest,
                size=previous.size,
                etag=previous.etag,
                instance=instance.id,
                path=path,
                fetched_at=now,
            )
        body, content_type, etag = answer
        digest = hashlib.sha256(body).hexdigest()
        if previous is not None and previous.digest == digest:
            serial = previous.serial
        else:
            document = parse_document(body, content_type=content_type)
            view = self._view()
            entry = view.services.get(name) if view is not None else None
            if view is not None and entry is not None:
                self._rewrite(name, document, view.table, entry)  # refuse what the rewrite cannot use
            self._serial += 1
            serial = self._serial
        return _Fetched(
            body=body,
            content_type=content_type,
            serial=serial,
            digest=digest,
            size=len(body),
            etag=etag,
            instance=instance.id,
            path=path,
            fetched_at=now,
        )

    async def _get(
        self, url: str, policy: OpenApiPolicy, etag: str | None
    ) -> tuple[bytes, str | None, str | None] | None:
        """(body, Content-Type, ETag), or None for 304. The one place where aiohttp's errors become ours."""
        assert self._session is not None
        headers = {"Accept": "application/json"}
        if etag:
            headers["If-None-Match"] = etag
        try:
            async with (
                asyncio.timeout(policy.timeout),
                self._session.get(url, headers=headers, allow_redirects=False) as response,
            ):
                if response.status == 304 and etag:
                    return None
                if response.status != 200:
                    raise OpenApiError(f"GET {url} answered HTTP {response.status}")
                limit = policy.max_bytes
                if response.content_length is not None and response.content_length > limit:
                    raise OpenApiError(f"the document is larger than max_bytes ({limit})")
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > limit:
                        raise OpenApiError(f"the document is larger than max_bytes ({limit})")
                return bytes(body), response.headers.get("Content-Type"), response.headers.get("ETag")
        except TimeoutError:
            raise OpenApiError(f"GET {url}: no complete answer within {policy.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise OpenApiError(f"GET {url}: {type(exc).__name__}: {exc}") from None

    # -- rewriting ---------------------------------------------------------------------------------------------

    async def _render(self, view: GatewayView) -> None:
        """Rewrite every service whose document, auth or route table changed, one at a time."""
        for name, state in list(self._states.items()):
            entry = view.services.get(name)
            if state.fetched is None or entry is None:
                state.api, state.api_key, state.api_table = None, (), None
                continue
            key = (state.fetched.serial, entry.policy.auth, self._public_url())
            if key == state.api_key and view.table is state.api_table:
                continue
            try:
                document = parse_document(state.fetched.body, content_type=state.fetched.content_type)
                state.api = self._rewrite(name, document, view.table, entry)
            except OpenApiError as exc:  # the previous rewrite (if any) stays
                self._log.warning("openapi_fetch_failed", service=name, error=str(exc), keeping_last_good=True)
            state.api_key, state.api_table = key, view.table
            await asyncio.sleep(0)  # one service at a time: requests get the loop in between

    def _rewrite(self, name: str, document: Mapping[str, Any], table: RouteTable, entry: ServiceEntry) -> ServiceApi:
        try:
            return rewrite_service(
                name,
                document,
                table=table,
                auth=entry.policy.auth,
                gateway_server=self._server(),
                scheme=self._scheme(),
            )
        except _REWRITE_ERRORS as exc:
            raise OpenApiError(f"the document cannot be rewritten ({type(exc).__name__}: {exc})") from None

    def _scheme(self) -> str:
        return "https" if self._public_url().startswith("https:") else "http"

    def _server(self) -> dict[str, Any]:
        url = self._public_url()
        return gateway_server(self._scheme(), url.split("://", 1)[-1].rstrip("/"))


def _plan(entry: ServiceEntry) -> _Plan | None:
    policy = entry.policy.openapi
    if not policy.include:
        return None
    instances = entry.snapshot.instances
    if policy.path is None and not any(META_KEY in i.meta for i in instances):
        return None
    candidates: list[tuple[Instance, str]] = []
    for instance in sorted(instances, key=lambda i: i.id):
        path = policy.path or instance.meta.get(META_KEY, "")
        if instance.weight > 0 and _valid_path(path):
            candidates.append((instance, path))
    problem = None
    if not candidates:
        advertised = [i.meta.get(META_KEY, "") for i in instances if META_KEY in i.meta]
        if policy.path is None and advertised and not any(_valid_path(p) for p in advertised):
            problem = f"Meta {META_KEY}={advertised[0]!r} is not a path on the instance (e.g. /openapi.json)"
        else:
            problem = "no healthy instance to fetch the document from"
    return _Plan(
        source="policy" if policy.path is not None else "meta",
        policy=policy,
        candidates=tuple(candidates),
        problem=problem,
    )


def _valid_path(path: str) -> bool:
    return path.startswith("/") and "#" not in path and all(c.isprintable() and not c.isspace() for c in path)


def _description(apis: tuple[ServiceApi, ...]) -> str:
    if not apis:
        return "No routed service publishes an OpenAPI document yet (Service Meta gw-openapi)."
    lines = [f"- **{a.service}**: {a.title} {a.version}".rstrip() for a in apis]
    return "Every route of the gateway, from the services' own documents:\n\n" + "\n".join(lines)


def _dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, tz=datetime.UTC).isoformat(timespec="seconds")
