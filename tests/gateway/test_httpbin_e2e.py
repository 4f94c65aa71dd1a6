"""httpbin as an independent upstream: the same request, sent directly and through the gateway, gets the same answer.

httpbin (the Flask app from PyPI) runs on 127.0.0.1 under Werkzeug's threaded WSGI server, is registered in the dev
agent with ``gw.route=/`` and is reached through a real gateway. The client binds to ``127.0.0.2`` so that its
address, the gateway's (``127.0.0.1``) and the X-Forwarded-For value are distinguishable.

Every request in ``CASES`` is sent twice, byte for byte the same (explicit ``Host``, fixed multipart boundary, no
client-side decompression): once to httpbin, once to the gateway. A small WSGI recorder in front of httpbin keeps,
for each request, what httpbin received (raw request-target, peer address, headers) and what it produced (status,
headers, body bytes). The comparison allows only the differences a proxy must make, each encoded in one function:

* :func:`inbound_delta` / :func:`expected_inbound_delta` -- what the gateway changes in the request httpbin receives;
* :func:`outbound_delta` -- what the gateway changes in the response the client receives;
* :func:`echo_delta` -- httpbin's echo bodies (/get, /headers, /anything, ...) differ exactly by the inbound delta.

Besides, for each side: the gateway never follows redirects or retries (exactly one upstream exchange), the
request-target reaches httpbin as :func:`expected_request_target` says (the query byte-exact, the path in its one
canonical form, which only differs for paths with a needless escape), no hop-by-hop field is forwarded, and the body the client receives is the
very byte string httpbin produced (compressed bodies included). docs/proxy-behaviour.md states the same rules.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import gzip
import json
import re
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import brotlicffi
import pytest
from httpbin import app as httpbin_app
from werkzeug.datastructures import EnvironHeaders
from werkzeug.serving import WSGIRequestHandler, make_server
from yarl import URL

from consulgw.server.gateway import Gateway

from .conftest import Consul, routed, wait_for

HOST = "httpbin.test"  # the Host header of every request, direct or proxied: the same request both ways
CLIENT_IP = "127.0.0.2"  # the test client's source address (the gateway connects to httpbin from 127.0.0.1)
GATEWAY_IP = "127.0.0.1"
DOC = Path(__file__).resolve().parents[2] / "docs" / "proxy-behaviour.md"

# RFC 9110 section 7.6.1 (and RFC 9112 for Transfer-Encoding/TE): connection-specific fields, plus the legacy ones
# every proxy also treats as such. Written out here, not imported, so the test does not share the gateway's list.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
    | {"proxy-authenticate", "proxy-authorization"}
)
# Identity headers the gateway owns (it sets them after authentication); whatever a client sends is dropped.
GATEWAY_OWNED = frozenset({"x-consumer-id", "x-user-id", "x-user-scopes"})
# Request headers httpbin hides from its echo bodies unless the query has ``show_env`` (httpbin.helpers.ENV_HEADERS).
HTTPBIN_ENV_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-request-id"})

Headers = Iterable[tuple[str, str]]


# -- httpbin under a real WSGI server, with a recorder in front ---------------------------------------------------


@dataclass
class Exchange:
    """One request as httpbin saw it, and the response httpbin produced for it (before Werkzeug framed it)."""

    method: str
    raw_uri: str
    remote_addr: str
    request_headers: list[tuple[str, str]]
    status: str = ""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def response_header(self, name: str) -> str | None:
        return next((v for k, v in self.response_headers if k.lower() == name.lower()), None)


class Recorder:
    """WSGI middleware: records every exchange, changes nothing (the body is passed through chunk by chunk)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        exchange = Exchange(
            method=environ["REQUEST_METHOD"],
            raw_uri=environ["RAW_URI"],
            remote_addr=environ["REMOTE_ADDR"],
            request_headers=list(EnvironHeaders(environ).items()),
        )
        with self._lock:
            self._exchanges.append(exchange)

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            exchange.status = status
            exchange.response_headers = list(headers)
            return start_response(status, headers, exc_info)

        result = self._app(environ, recording_start_response)
        try:
            for chunk in result:
                exchange.body += chunk
                yield chunk
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def take(self) -> list[Exchange]:
        with self._lock:
            taken, self._exchanges = self._exchanges, []
        return taken


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log line per request (errors are still logged)."""


@dataclass
class Httpbin:
    port: int
    recorder: Recorder

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def httpbin() -> Iterator[Httpbin]:
    """httpbin on 127.0.0.1 under Werkzeug's threaded server; stopped and every request thread joined at teardown."""
    recorder = Recorder(httpbin_app)
    server = make_server("127.0.0.1", 0, recorder, threaded=True, request_handler=_QuietHandler)
    server.daemon_threads = False  # so that server_close() joins every request thread: nothing outlives the test
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="httpbin")
    thread.start()
    try:
        yield Httpbin(port=server.port, recorder=recorder)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@dataclass
class GunicornHttpbin:
    port: int
    access_log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections_from(self, address: str) -> list[str]:
        """The peer port of every request from ``address`` so far: one port per connection it used."""
        lines = self.access_log.read_text().splitlines()
        return [line.split()[1] for line in lines if line.split()[0] == address]


@pytest.fixture
def gunicorn_httpbin(tmp_path: Path) -> Iterator[GunicornHttpbin]:
    """httpbin under gunicorn (gthread worker), the one server httpbin accepts chunked request bodies from.

    gunicorn is not a declared test dependency yet: without it this fixture skips, saying so."""
    gunicorn = pytest.importorskip("gunicorn", reason="gunicorn (PyPI) serves httpbin for chunked request bodies")
    extra = ["--no-control-socket"] if tuple(gunicorn.version_info) >= (27,) else []
    log_path, access_log = tmp_path / "gunicorn.log", tmp_path / "access.log"
    access_log.touch()
    with log_path.open("w") as log:
        command = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "--threads", "4"]
        # Idle keep-alive connections are kept a minute, so that the gateway's reuse of them is not cut by timing.
        command += ["--keep-alive", "60", "--access-logfile", str(access_log)]
        command += ["--access-logformat", "%(h)s %({REMOTE_PORT}e)s %(m)s %(U)s %(s)s"]
        proc = subprocess.Popen(
            [*command, "--graceful-timeout", "5", *extra, "httpbin:app"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while (match := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log_path.read_text())) is None:
            assert proc.poll() is None, f"gunicorn exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"gunicorn did not start: {log_path.read_text()}"
            time.sleep(0.05)
        yield GunicornHttpbin(port=int(match.group(1)), access_log=access_log)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """The test client: source address 127.0.0.2, no decompression, no cookie jar, no redirects followed."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, local_addr=(CLIENT_IP, 0)),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session


@pytest.fixture
async def routed_httpbin(httpbin: Httpbin, gateway: Gateway, consul: Consul) -> Httpbin:
    await consul.register("httpbin", httpbin.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "httpbin", 1))
    httpbin.recorder.take()
    return httpbin


# -- the rules: what a proxy may (and must) change ----------------------------------------------------------------


def _values(headers: Headers) -> dict[str, list[str]]:
    """Lower-cased name -> values in order (the order of one field's lines is significant, RFC 9110 5.3)."""
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value)
    return out


def connection_specific(headers: Headers) -> set[str]:
    """The hop-by-hop names present: the fixed list plus every name listed in ``Connection`` (RFC 9110 7.6.1)."""
    values = _values(headers)
    named = {token.strip().lower() for v in values.get("connection", []) for token in v.split(",") if token.strip()}
    return (HOP_BY_HOP | named) & set(values)


def end_to_end(headers: Headers) -> dict[str, list[str]]:
    """The end-to-end fields of a message (what a proxy is about); hop-by-hop ones belong to one connection."""
    pairs = list(headers)
    hop = connection_specific(pairs)
    return {name: values for name, values in _values(pairs).items() if name not in hop}


def inbound_delta(direct: Headers, proxied: Headers) -> dict[str, list[str]]:
    """What the gateway changed in the request's end-to-end headers: ``{name: proxied values}`` for every name
    whose values differ (``[]`` for a header the gateway removed). Hop-by-hop fields are not compared: they are
    about one connection, and the gateway must not forward them (checked separately)."""
    d, p = end_to_end(direct), end_to_end(proxied)
    return {name: p.get(name, []) for name in sorted(set(d) | set(p)) if d.get(name) != p.get(name)}


def expected_inbound_delta(
    direct: Headers, *, request_id: str, client_ip: str = CLIENT_IP, host: str = HOST, shown: Iterable[str] = ()
) -> dict[str, list[str]]:
    """The inbound rule, as :func:`inbound_delta` must find it.

    * ``X-Forwarded-For`` is the client's address (127.0.0.2): the client is not a trusted proxy, so any
      X-Forwarded-* it sent is replaced, not extended (a client could otherwise spoof its address).
    * ``X-Forwarded-Proto`` is the scheme the client used (``http``), ``X-Forwarded-Host`` the Host it sent.
    * ``X-Request-ID`` is the client's own when it sent a usable one, else one the gateway made up; it is the same
      value the client gets back in the response's X-Request-ID.
    * Identity headers the gateway owns (X-Consumer-ID, X-User-ID, X-User-Scopes) sent by the client are removed.
    * Nothing else: not Host (kept as the client sent it), not Authorization, not Cookie, not the body's headers.

    ``shown`` limits the rule to the names an echo body shows (httpbin hides some, see :func:`shown_by_httpbin`).
    """
    added = {
        "x-forwarded-for": [client_ip],
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": [host],
        "x-request-id": [request_id],
    }
    added |= {name: [] for name in GATEWAY_OWNED}
    shown_names = {name.lower() for name in shown} if shown else None
    d = end_to_end(direct)
    return {
        name: values
        for name, values in sorted(added.items())
        if d.get(name, []) != values and (shown_names is None or name in shown_names)
    }


UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def expected_request_target(target: str) -> str:
    """The request-target httpbin receives through the gateway for ``target`` sent directly.

    The gateway matches and forwards one canonical path (docs/proxy-behaviour.md, "The request path"): a
    percent-escape of an unreserved character (letters, digits, ``-._~``) is decoded, since it means that very
    character, and every other escape is written with upper-case hex. Dot-segments and repeated slashes are resolved
    too; no case here has any, and each case's path is otherwise already canonical, so nothing else may change.
    The query, after the first ``?``, is byte-exact. Written out here, not imported, so the test does not share the
    gateway's code.
    """
    path, mark, query = target.partition("?")

    def escape(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in UNRESERVED else "%" + match.group(1).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", escape, path) + mark + query


def shown_by_httpbin(target: str) -> set[str]:
    """The forwarded names httpbin puts in an echo body: it hides its ENV_HEADERS unless the query has show_env."""
    names = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", *GATEWAY_OWNED}
    return names if "show_env" in URL(target, encoded=True).query else names - HTTPBIN_ENV_HEADERS


def outbound_delta(direct: Seen, proxied: Seen) -> dict[str, tuple[list[str], list[str]]]:
    """What the gateway changed in the response's end-to-end headers: ``{name: (direct values, proxied values)}``.
    It must come out as exactly ``{"x-request-id": ([], [id])}``; these differences are legitimate and left out:

    * ``Date`` is each response's own generation time (RFC 9110 6.6.1): present and valid on both, may differ.
    * ``Content-Length`` describes each side's own body, and httpbin's echo bodies differ by the forwarded headers:
      on both sides it must equal the Content-Length httpbin itself sent for that exchange (so a HEAD keeps it).
    * Hop-by-hop fields (Connection, Transfer-Encoding, ...) are per connection: Werkzeug closes every connection,
      the gateway keeps the client's alive, and either may chunk.

    Everything else -- Content-Type, Content-Encoding, Set-Cookie (each line, in order), Location, ETag, Server,
    CORS headers, the reason phrase -- must be what httpbin sent.
    """
    views: list[dict[str, list[str]]] = []
    for seen in (direct, proxied):
        view = end_to_end(seen.headers)
        (date,) = view.pop("date")
        assert email.utils.parsedate_to_datetime(date) is not None
        upstream_length = seen.upstream_content_length()
        assert view.pop("content-length", [upstream_length]) == [upstream_length], "Content-Length != httpbin's"
        views.append(view)
    d, p = views
    return {name: (d.get(name, []), p.get(name, [])) for name in sorted(set(d) | set(p)) if d.get(name) != p.get(name)}


def echo_delta(direct: Any, proxied: Any, *, target: str, request_id: str) -> None:
    """httpbin echo bodies (JSON with the request's ``headers``) must be equal but for the inbound rule.

    The ``headers`` object differs exactly by :func:`expected_inbound_delta` (restricted to what httpbin shows);
    every other key (args, form, files, data, json, url, origin, method) must be equal. ``origin`` is httpbin's
    X-Forwarded-For-else-peer: the client's address both ways, which is the point of X-Forwarded-For.
    """
    direct, proxied = dict(direct), dict(proxied)
    d_headers, p_headers = direct.pop("headers"), proxied.pop("headers")
    assert proxied == direct
    shown = shown_by_httpbin(target)
    expected = expected_inbound_delta(d_headers.items(), request_id=request_id, shown=shown)
    assert inbound_delta(d_headers.items(), p_headers.items()) == expected


# -- one request, sent both ways ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What the client received, and the one exchange httpbin recorded for that request."""

    method: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    upstream: Exchange | None  # None when httpbin runs in another process (gunicorn)

    def upstream_content_length(self) -> str | None:
        """The Content-Length httpbin sent. Out of the recorder's reach (gunicorn) it is the length of the body
        received, except for HEAD, whose Content-Length can only be checked against the recorder (Werkzeug runs)."""
        if self.upstream is not None:
            return self.upstream.response_header("Content-Length")
        if self.method == "HEAD":
            return end_to_end(self.headers).get("content-length", [None])[0]
        return str(len(self.body))


async def send(
    client: aiohttp.ClientSession,
    recorder: Recorder | None,
    base: str,
    method: str,
    target: str,
    headers: Headers,
    body: Callable[[], Any] | None,
    skip_auto_headers: tuple[str, ...] = (),
) -> Seen:
    url = URL(f"{base}{target}", encoded=True)
    request_headers = [("Host", HOST), *headers]
    data = body() if body is not None else None
    async with client.request(
        method, url, headers=request_headers, data=data, allow_redirects=False, skip_auto_headers=skip_auto_headers
    ) as resp:
        payload = await resp.read()
        seen_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]
        status, reason = resp.status, resp.reason or ""
    if recorder is None:
        return Seen(method=method, status=status, reason=reason, headers=seen_headers, body=payload, upstream=None)
    exchanges = recorder.take()
    assert len(exchanges) == 1, f"{len(exchanges)} upstream exchanges for one request (a redirect followed? a retry?)"
    return Seen(method=method, status=status, reason=reason, headers=seen_headers, body=payload, upstream=exchanges[0])


def request_id_of(seen: Seen) -> str:
    (request_id,) = end_to_end(seen.headers)["x-request-id"]
    return request_id


def _json_bytes(value: Any) -> Callable[[], bytes]:
    data = json.dumps(value).encode()
    return lambda: data


def _fixed(data: bytes) -> Callable[[], bytes]:
    return lambda: data


BOUNDARY = "consulgw-httpbin-boundary-7d1c"
MULTIPART = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="note"\r\n\r\n'
    "hello\r\n"
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="upload"; filename="a.txt"\r\n'
    "Content-Type: text/plain\r\n\r\n"
    "line one\nline two \u2713\n\r\n"
    f"--{BOUNDARY}--\r\n"
).encode()


CHUNKS = [f"chunk {i} {'x' * i}\n".encode() for i in range(8)]
BIG_CHUNKS = [bytes([65 + i % 26]) * 1000 for i in range(300)]  # 300 kB: beyond the gateway's 64 kB buffering


def _chunked(parts: list[bytes] = CHUNKS) -> Callable[[], AsyncIterator[bytes]]:
    """A body of unknown length, sent as it is produced: aiohttp sends it with Transfer-Encoding: chunked."""

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)

    return chunks


Compare = Literal["exact", "echo", "echo-lines", "uuid", "gzip", "deflate", "br"]


def check_bodies(compare: Compare, direct: Seen, proxied: Seen, *, target: str) -> None:
    """Bodies are the same bytes, or (for echoes and fresh values) the same up to the rules above."""
    request_id = request_id_of(proxied)
    if compare == "exact":
        assert proxied.body == direct.body
    elif compare == "echo":
        echo_delta(json.loads(direct.body), json.loads(proxied.body), target=target, request_id=request_id)
    elif compare == "echo-lines":
        d_lines, p_lines = direct.body.splitlines(), proxied.body.splitlines()
        assert len(p_lines) == len(d_lines)
        for d, p in zip(d_lines, p_lines, strict=True):
            echo_delta(json.loads(d), json.loads(p), target=target, request_id=request_id)
    elif compare == "uuid":
        shape = re.compile(r'\{\n  "uuid": "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"\n\}\n')
        assert shape.fullmatch(direct.body.decode())
        assert shape.fullmatch(proxied.body.decode())
        assert proxied.body != direct.body  # a fresh one each call: the gateway caches nothing
    else:
        decode: dict[str, Callable[[bytes], bytes]] = {
            "gzip": gzip.decompress,
            "deflate": zlib.decompress,
            "br": brotlicffi.decompress,
        }
        d_json, p_json = (json.loads(decode[compare](seen.body)) for seen in (direct, proxied))
        echo_delta(d_json, p_json, target=target, request_id=request_id)


@dataclass(frozen=True)
class Case:
    method: str
    target: str  # raw request-target, percent-encoding as sent
    compare: Compare = "exact"
    headers: tuple[tuple[str, str], ...] = ()
    body: Callable[[], Any] | None = None
    status: int = 200
    skip_auto_headers: tuple[str, ...] = ()  # headers aiohttp would add by itself (User-Agent, Accept, ...)
    werkzeug_only: bool = False  # the expected answer is httpbin's under Werkzeug (see the chunked case)


CASES = [
    pytest.param(Case("GET", "/get?a=1&a=2&b=%20x", "echo"), id="get-repeated-and-encoded-args"),
    pytest.param(Case("GET", "/get?show_env=1", "echo"), id="get-show-env"),
    pytest.param(Case("GET", "/headers", "echo"), id="headers"),
    pytest.param(Case("GET", "/headers?show_env=1", "echo"), id="headers-show-env"),
    pytest.param(
        Case("GET", "/headers?show_env=1", "echo", headers=(("X-Request-ID", "client-req-42"),)),
        id="client-request-id-kept",
    ),
    pytest.param(
        Case(
            "GET",
            "/headers?show_env=1",
            "echo",
            headers=(
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "per-connection"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
                ("X-User-ID", "root"),
                ("X-Consumer-ID", "admin"),
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
                ("X-Custom", "kept"),
                ("Cookie", "session=s1; theme=dark"),
            ),
        ),
        id="hop-by-hop-identity-and-spoofed-forwarded",
    ),
    pytest.param(Case("GET", "/ip"), id="ip"),
    pytest.param(Case("GET", "/anything/path%2Fencoded?q=%E2%9C%93", "echo"), id="anything-encoded-path-and-query"),
    pytest.param(
        Case(
            "POST",
            "/post",
            "echo",
            headers=(("Content-Type", "application/json"),),
            body=_json_bytes({"a": 1, "b": [True, None], "c": "\u2713"}),
        ),
        id="post-json",
    ),
    pytest.param(
        Case(
            "POST",
            "/post",
            "echo",
            headers=(("Content-Type", "application/x-www-form-urlencoded"),),
            body=_fixed(b"a=1&a=2&b=x+y&c=%E2%9C%93"),
        ),
        id="post-form",
    ),
    pytest.param(
        Case(
            "POST",
            "/post",
            "echo",
            headers=(("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),),
            body=_fixed(MULTIPART),
        ),
        id="post-multipart-file",
    ),
    # httpbin refuses chunked request bodies with 501 unless its server is gunicorn (httpbin/core.py, before_request):
    # under Werkzeug the 501 both ways shows the gateway forwarded the body chunked and passed httpbin's answer on.
    # test_chunked_request_bodies_reach_httpbin_under_gunicorn shows the body itself arriving. One chunk: httpbin
    # answers without reading the body and Werkzeug drains the socket only briefly before it closes the connection.
    pytest.param(
        Case(
            "POST",
            "/post",
            headers=(("Content-Type", "text/plain"),),
            body=_chunked([b"".join(CHUNKS)]),
            status=501,
            werkzeug_only=True,
        ),
        id="post-chunked-stream-refused-by-httpbin",
    ),
    pytest.param(
        Case(
            "POST",
            "/anything",
            "echo",
            headers=(("Content-Type", "text/plain"),),
            body=_fixed(b"0123456789abcdef" * 20_000),
        ),
        id="post-large-known-length",
    ),
    pytest.param(Case("PUT", "/anything", "echo", body=_fixed(b"put body")), id="put-anything"),
    pytest.param(
        Case("GET", "/headers?show_env=1", "echo", skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent")),
        id="bare-request-gets-no-default-headers",
    ),
    pytest.param(
        Case("POST", "/anything", "echo", body=_fixed(b"\x00\x01 untyped"), skip_auto_headers=("Content-Type",)),
        id="post-without-content-type-stays-untyped",
    ),
    pytest.param(
        Case("PATCH", "/anything/x", "echo", headers=(("Content-Type", "application/json"),), body=_json_bytes([1])),
        id="patch-anything",
    ),
    pytest.param(Case("DELETE", "/anything?id=7", "echo"), id="delete-anything"),
    pytest.param(Case("OPTIONS", "/anything"), id="options-anything"),
    pytest.param(Case("HEAD", "/get"), id="head-get"),
    pytest.param(Case("HEAD", "/html"), id="head-html"),
    pytest.param(Case("HEAD", "/bytes/100000?seed=1"), id="head-large-content-length"),
    pytest.param(
        Case("POST", "/anything", "echo", headers=(("Content-Length", "0"),), skip_auto_headers=("Content-Type",)),
        id="post-empty-body",
    ),
    pytest.param(
        Case("GET", "/anything/%7Euser/a+b;c=d/%25?x=a%2Bb&y=&z", "echo"), id="anything-reserved-and-empty-query"
    ),
    pytest.param(Case("GET", "/status/204", status=204), id="status-204"),
    pytest.param(Case("GET", "/status/304", status=304), id="status-304"),
    pytest.param(Case("GET", "/status/418", status=418), id="status-418"),
    pytest.param(Case("GET", "/status/500", status=500), id="status-500-passed-through"),
    pytest.param(Case("GET", "/status/503", status=503), id="status-503-passed-through"),
    pytest.param(Case("GET", "/response-headers?X-Test=1&X-Test=2"), id="repeated-response-headers"),
    pytest.param(Case("GET", "/cookies/set?a=1&b=2", status=302), id="set-cookies-redirect-not-followed"),
    pytest.param(Case("GET", "/redirect/2", status=302), id="redirect"),
    pytest.param(Case("GET", "/absolute-redirect/1", status=302), id="absolute-redirect"),
    pytest.param(
        Case("GET", "/redirect-to?url=http%3A%2F%2Fexample.com%2Fx%3Fy%3D1&status_code=307", status=307),
        id="redirect-to-elsewhere-307",
    ),
    pytest.param(Case("GET", "/cookies", headers=(("Cookie", "a=1; b=two"),)), id="cookies-reach-upstream"),
    pytest.param(Case("GET", "/gzip", "gzip", headers=(("Accept-Encoding", "gzip"),)), id="gzip"),
    pytest.param(Case("GET", "/deflate", "deflate", headers=(("Accept-Encoding", "deflate"),)), id="deflate"),
    pytest.param(Case("GET", "/brotli", "br", headers=(("Accept-Encoding", "br"),)), id="brotli"),
    pytest.param(Case("GET", "/stream/20", "echo-lines"), id="stream-lines"),
    pytest.param(Case("GET", "/bytes/100000?seed=1"), id="bytes-seeded"),
    pytest.param(Case("GET", "/stream-bytes/200000?seed=2&chunk_size=1000"), id="stream-bytes-seeded"),
    pytest.param(Case("GET", "/range/1000", headers=(("Range", "bytes=10-99"),), status=206), id="range-206"),
    pytest.param(Case("GET", "/etag/abc", headers=(("If-None-Match", '"abc"'),), status=304), id="etag-304"),
    pytest.param(
        Case("GET", "/cache", headers=(("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),), status=304),
        id="cache-304",
    ),
    pytest.param(
        Case("GET", "/basic-auth/u/p", headers=(("Authorization", "Basic " + base64.b64encode(b"u:p").decode()),)),
        id="basic-auth-reaches-upstream",
    ),
    pytest.param(Case("GET", "/bearer", headers=(("Authorization", "Bearer t0k3n"),)), id="bearer"),
    pytest.param(Case("GET", "/basic-auth/u/p", status=401), id="basic-auth-challenge-passed-on"),
    pytest.param(Case("GET", "/drip?duration=1&numbytes=5"), id="drip-slow-stream"),
    pytest.param(Case("GET", "/delay/1", "echo"), id="delay"),
    pytest.param(Case("GET", "/uuid", "uuid"), id="uuid"),
    pytest.param(Case("GET", "/user-agent", headers=(("User-Agent", "consulgw-test/1.0"),)), id="user-agent"),
    pytest.param(Case("GET", "/encoding/utf8"), id="encoding-utf8"),
    pytest.param(Case("GET", "/html"), id="html"),
    pytest.param(Case("GET", "/json"), id="json"),
    pytest.param(Case("GET", "/xml"), id="xml"),
    pytest.param(Case("GET", "/image/png", headers=(("Accept", "image/png"),)), id="image-png"),
]


@pytest.mark.parametrize("case", CASES)
async def test_proxied_response_matches_direct(
    case: Case, routed_httpbin: Httpbin, gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    recorder = routed_httpbin.recorder
    args = (case.method, case.target, case.headers, case.body, case.skip_auto_headers)
    direct = await send(client, recorder, routed_httpbin.url, *args)
    proxied = await send(client, recorder, gateway.url, *args)
    assert direct.upstream is not None
    assert proxied.upstream is not None
    at_httpbin_direct, at_httpbin_proxied = direct.upstream, proxied.upstream

    # Status and reason phrase: the upstream's, 5xx included (the gateway does not replace them with its own).
    assert (direct.status, direct.reason) == (case.status, at_httpbin_direct.status.split(" ", 1)[1])
    assert (proxied.status, proxied.reason) == (direct.status, direct.reason)

    # The request httpbin received: same method, the request-target as expected_request_target says (the query
    # byte-exact, the path canonical), from the gateway's address.
    assert at_httpbin_direct.remote_addr == CLIENT_IP
    assert at_httpbin_proxied.remote_addr == GATEWAY_IP
    assert (at_httpbin_proxied.method, at_httpbin_proxied.raw_uri) == (
        case.method,
        expected_request_target(case.target),
    )
    assert (at_httpbin_direct.method, at_httpbin_direct.raw_uri) == (case.method, case.target)
    request_id = request_id_of(proxied)
    assert inbound_delta(at_httpbin_direct.request_headers, at_httpbin_proxied.request_headers) == (
        expected_inbound_delta(at_httpbin_direct.request_headers, request_id=request_id)
    )
    # The gateway forwards no hop-by-hop field; it frames the body its own way (Content-Length or chunked).
    assert connection_specific(at_httpbin_proxied.request_headers) <= {"transfer-encoding"}

    # The response: end-to-end headers as httpbin sent them, plus X-Request-ID; the body is httpbin's own bytes.
    assert outbound_delta(direct, proxied) == {"x-request-id": ([], [request_id])}
    assert direct.body == bytes(at_httpbin_direct.body)
    assert proxied.body == bytes(at_httpbin_proxied.body)
    check_bodies(case.compare, direct, proxied, target=case.target)


CHUNKED_CASES = [
    pytest.param(
        Case("POST", "/post", "echo", headers=(("Content-Type", "text/plain"),), body=_chunked(CHUNKS)),
        b"".join(CHUNKS),
        id="post-chunked-stream",
    ),
    pytest.param(
        Case("PUT", "/anything?big=1", "echo", headers=(("Content-Type", "text/plain"),), body=_chunked(BIG_CHUNKS)),
        b"".join(BIG_CHUNKS),
        id="put-chunked-300k",
    ),
]


@pytest.mark.parametrize(("case", "sent"), CHUNKED_CASES)
async def test_chunked_request_bodies_reach_httpbin_under_gunicorn(
    case: Case,
    sent: bytes,
    gunicorn_httpbin: GunicornHttpbin,
    gateway: Gateway,
    consul: Consul,
    client: aiohttp.ClientSession,
) -> None:
    """A body of unknown length is streamed to the upstream chunked, and arrives whole, as it does directly.
    (httpbin runs in gunicorn's own process here, so the recorder's checks are not available: the echo is.)"""
    await consul.register("httpbin", gunicorn_httpbin.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "httpbin", 1))
    args = (case.method, case.target, case.headers, case.body)
    direct = await send(client, None, gunicorn_httpbin.url, *args)
    proxied = await send(client, None, gateway.url, *args)
    assert (direct.status, proxied.status) == (200, 200)
    assert proxied.reason == direct.reason
    assert outbound_delta(direct, proxied) == {"x-request-id": ([], [request_id_of(proxied)])}
    check_bodies(case.compare, direct, proxied, target=case.target)
    for seen in (direct, proxied):
        echo = json.loads(seen.body)
        assert echo["data"] == sent.decode()
        assert echo["headers"]["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in echo["headers"]


async def test_every_case_over_one_kept_alive_upstream_connection(
    gunicorn_httpbin: GunicornHttpbin, gateway: Gateway, consul: Consul, client: aiohttp.ClientSession
) -> None:
    """Werkzeug closes every connection; gunicorn keeps them alive. Sent one after the other through one gateway,
    every case of the table (and the chunked ones) must travel over the same upstream connection and still get the
    direct answer: a HEAD, 204 or 304 read as if it had a body, or a body left half read, would desynchronise the
    connection and break the next exchange. (Without the recorder: status, reason, headers and bodies only.)"""
    await consul.register("httpbin", gunicorn_httpbin.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "httpbin", 1))
    cases = [(p.id, p.values[0]) for p in CASES if not p.values[0].werkzeug_only]
    cases += [(p.id, p.values[0]) for p in CHUNKED_CASES]
    failures: dict[str | None, str] = {}
    for case_id, case in cases:
        args = (case.method, case.target, case.headers, case.body, case.skip_auto_headers)
        direct = await send(client, None, gunicorn_httpbin.url, *args)
        proxied = await send(client, None, gateway.url, *args)
        try:
            assert (proxied.status, proxied.reason) == (direct.status, direct.reason) == (case.status, direct.reason)
            assert outbound_delta(direct, proxied) == {"x-request-id": ([], [request_id_of(proxied)])}
            check_bodies(case.compare, direct, proxied, target=case.target)
        except AssertionError as exc:
            failures[case_id] = str(exc).splitlines()[0]
    await wait_for(lambda: len(gunicorn_httpbin.connections_from(GATEWAY_IP)) == len(cases))
    assert len(set(gunicorn_httpbin.connections_from(GATEWAY_IP))) == 1, "the gateway opened more than one connection"
    assert failures == {}


async def test_origin_is_the_client_behind_the_gateway(
    routed_httpbin: Httpbin, gateway_factory: Any, gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    """httpbin's ``origin`` is X-Forwarded-For if present, else the peer. The peer it sees through the gateway is the
    gateway (127.0.0.1); X-Forwarded-For tells it the client (127.0.0.2). A client-sent X-Forwarded-For is believed
    by httpbin when sent directly (it trusts everyone), replaced by an untrusting gateway, and extended by one
    that trusts the client's network."""
    recorder = routed_httpbin.recorder
    trusting = await gateway_factory(trusted_proxies="127.0.0.0/8")
    await wait_for(lambda: routed(trusting, "httpbin", 1))

    async def origin(base: str, headers: Headers = ()) -> tuple[str, str]:
        seen = await send(client, recorder, base, "GET", "/ip", headers, None)
        assert seen.status == 200
        assert seen.upstream is not None
        return json.loads(seen.body)["origin"], seen.upstream.remote_addr

    spoof = (("X-Forwarded-For", "203.0.113.9"),)
    assert await origin(routed_httpbin.url) == (CLIENT_IP, CLIENT_IP)
    assert await origin(gateway.url) == (CLIENT_IP, GATEWAY_IP)
    assert await origin(routed_httpbin.url, spoof) == ("203.0.113.9", CLIENT_IP)
    assert await origin(gateway.url, spoof) == (CLIENT_IP, GATEWAY_IP)
    assert await origin(trusting.url, spoof) == (f"203.0.113.9, {CLIENT_IP}", GATEWAY_IP)


async def _expect_continue(port: int, body: bytes, recorder: Recorder) -> tuple[list[bytes], Seen]:
    """POST /post with ``Expect: 100-continue`` on a raw socket: send the head, wait for the interim 100, only
    then send the body. Returns the interim status lines and the final response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(CLIENT_IP, 0))
    try:
        writer.write(
            b"POST /post HTTP/1.1\r\n"
            b"Host: " + HOST.encode() + b"\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Expect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        interim = [(await asyncio.wait_for(reader.readline(), 5)).rstrip(b"\r\n")]
        assert interim[0].startswith(b"HTTP/1.1 100 "), interim[0]
        assert await asyncio.wait_for(reader.readline(), 5) == b"\r\n"
        writer.write(body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    while raw.startswith(b"HTTP/1.1 100 "):  # a server may send more than one interim response (RFC 9110 15.2)
        line, raw = raw.split(b"\r\n\r\n", 1)
        interim.append(line)
    head, payload = raw.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _, status, reason = status_line.split(" ", 2)
    headers = [(name, value) for name, value in (line.split(": ", 1) for line in lines)]
    assert end_to_end(headers)["content-length"] == [str(len(payload))]
    (exchange,) = recorder.take()
    return interim, Seen(
        method="POST", status=int(status), reason=reason, headers=headers, body=payload, upstream=exchange
    )


async def test_expect_100_continue_upload(routed_httpbin: Httpbin, gateway: Gateway) -> None:
    """The client gets one interim 100 before it sends the body, then the same final answer both ways."""
    body = b"uploaded after 100 Continue"
    recorder = routed_httpbin.recorder
    direct_interim, direct = await _expect_continue(routed_httpbin.port, body, recorder)
    proxied_interim, proxied = await _expect_continue(gateway.port, body, recorder)
    assert direct_interim[0] == b"HTTP/1.1 100 Continue"
    assert proxied_interim == [b"HTTP/1.1 100 Continue"]
    assert (direct.status, direct.reason) == (proxied.status, proxied.reason) == (200, "OK")
    assert direct.upstream is not None
    assert proxied.upstream is not None
    request_id = request_id_of(proxied)
    assert inbound_delta(direct.upstream.request_headers, proxied.upstream.request_headers) == (
        expected_inbound_delta(direct.upstream.request_headers, request_id=request_id)
    )
    assert outbound_delta(direct, proxied) == {"x-request-id": ([], [request_id])}
    assert proxied.body == bytes(proxied.upstream.body)
    check_bodies("echo", direct, proxied, target="/post")
    assert json.loads(proxied.body)["data"] == body.decode()


def test_doc_states_the_rules_this_file_checks() -> None:
    """docs/proxy-behaviour.md points here and names every header the rules above let the gateway change."""
    text = DOC.read_text()
    assert "tests/gateway/test_httpbin_e2e.py" in text
    for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID", "Date", "Content-Length"):
        assert f"`{name}`" in text, name
    for name in sorted(GATEWAY_OWNED | HOP_BY_HOP):
        assert name in text.lower(), name
