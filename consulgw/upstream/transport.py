"""The upstream HTTP client: one long-lived ClientSession, and the one place aiohttp errors become ours."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable, Iterator

import aiohttp
from multidict import CIMultiDict

from consulgw.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable


def upstream_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify HTTPS upstreams against the system CAs, or against ``--upstream-ca`` when given."""
    context = ssl.create_default_context(cafile=ca_file)
    return context


_NO_AUTO_CONTENT_TYPE: CIMultiDict[None] = CIMultiDict({"Content-Type": None})


class ProxyRequest(aiohttp.ClientRequest):
    """An upstream request that carries exactly the headers the gateway chose.

    aiohttp adds Accept, Accept-Encoding and User-Agent when absent, and a Content-Type for a body without one;
    a proxy must add none of them. The session-level ``skip_auto_headers`` would do it, at the price of building
    a sorted multidict and copying the headers on every request; this class does it with shared constants.
    (``_skip_auto_headers`` is what aiohttp 3.x reads when it merges body headers; the httpbin end-to-end test
    ``post-without-content-type-stays-untyped`` fails if that ever changes.)
    """

    DEFAULT_HEADERS = {}

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _NO_AUTO_CONTENT_TYPE


def create_upstream_session(*, ca_file: str | None = None) -> aiohttp.ClientSession:
    """The proxy's client session: keep-alive pool, no cookie jar, bytes passed untouched."""
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: a gateway must not queue requests behind an arbitrary pool size
        limit_per_host=0,
        keepalive_timeout=30.0,
        enable_cleanup_closed=False,
        ssl=upstream_ssl_context(ca_file),
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # Content-Encoding and Content-Length pass through as the upstream sent them
        cookie_jar=aiohttp.DummyCookieJar(),  # never share cookies between clients
        request_class=ProxyRequest,
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
    )


def translate(exc: BaseException, endpoint: str) -> UpstreamError:
    """Map an aiohttp/OS error to the gateway's UpstreamError tree (messages carry no request data)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(f"connecting to {endpoint} timed out", kind="connect_timeout", connect_failed=True)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # TCP connected but the upstream's certificate was refused: say so (the fix is --upstream-ca or the
        # upstream's certificate, not the network). Nothing was sent, so another instance may be tried.
        reason = _verify_reason(exc.certificate_error)
        return UpstreamUnreachable(
            f"TLS certificate of {endpoint} could not be verified ({reason})", kind="tls", connect_failed=True
        )
    if isinstance(exc, aiohttp.ClientConnectorSSLError):  # e.g. the upstream does not speak TLS on that port
        return UpstreamUnreachable(
            f"TLS handshake with {endpoint} failed ({_ssl_reason(exc.os_error)})", kind="tls", connect_failed=True
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnreachable(f"could not connect to {endpoint}", kind="connect", connect_failed=True)
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout(f"{endpoint} did not answer in time", kind="timeout")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ClientPayloadError):
        return UpstreamUnreachable(f"{endpoint} closed the connection", kind="reset")
    return UpstreamUnreachable(f"request to {endpoint} failed", kind="error")


def _verify_reason(error: BaseException) -> str:
    """OpenSSL's short verification message ("unable to get local issuer certificate", "Hostname mismatch, ...")."""
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return str(error.verify_message)
    return _ssl_reason(error)


def _ssl_reason(error: BaseException) -> str:
    """The OpenSSL reason code of an SSL error (``WRONG_VERSION_NUMBER``), never a request detail."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return type(error).__name__


@contextlib.contextmanager
def upstream_errors(endpoint: str) -> Iterator[None]:
    """Translate failures of one upstream exchange, once, with the original as the cause."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise translate(exc, endpoint) from exc
