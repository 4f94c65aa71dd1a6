"""The floor: the plainest aiohttp pass-through proxy, on uvloop.

    .venv/bin/python bench/yardsticks/naive_proxy.py --listen 127.0.0.1:9200 --upstream http://127.0.0.1:9001

One ``aiohttp.ClientSession`` with keep-alive connections to one upstream; every request, whatever its path, is
sent there with the client's method, path, query, headers and body; the answer's status, headers and body go back.
Bodies are read whole both ways. No routing, no policy, no access log, no retries, no timeouts beyond aiohttp's:
what anyone would write in ten minutes with aiohttp. consulgw does far more per request and must still beat it.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# Hop-by-hop headers (RFC 9110 section 7.6.1) and the framing aiohttp recomputes for the body it sends.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


def forwardable(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP)


def make_app(upstream: str) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)
    base = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[session_key] = session
            yield

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[session_key].request(
            request.method,
            URL(base + request.raw_path, encoded=True),  # path and query exactly as received
            headers=forwardable(request.headers),
            data=body or None,
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()  # still encoded (auto_decompress=False): Content-Encoding passes through
            return web.Response(
                status=answer.status, reason=answer.reason, headers=forwardable(answer.headers), body=payload
            )

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9200", help="host:port to serve on (default 127.0.0.1:9200)")
    parser.add_argument("--upstream", required=True, help="base URL of the one upstream, e.g. http://127.0.0.1:9001")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    web.run_app(
        make_app(args.upstream), host=host, port=int(port), access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
