"""Pure helpers for span names and attribute values (OpenTelemetry HTTP semantic conventions). No OTel import.

- Methods: the nine of RFC 9110 and RFC 5789 (plus QUERY) are kept; any other becomes ``_OTHER`` (and the span is
  named ``HTTP``), so a client cannot make span names or attribute values of its own choosing.
- Query strings: the values of credential parameters are replaced by ``REDACTED``: the names the conventions list
  (``AWSAccessKeyId``, ``Signature``, ``sig``, ``X-Goog-Signature``) and every name the log redaction treats as a
  secret (``token``, ``api_key``, ``password``... see ``consulgw.redaction.is_secret_name``).
"""

from __future__ import annotations

import urllib.parse
from typing import Final

from consulgw.redaction import is_secret_name

KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)
OTHER_METHOD: Final = "_OTHER"
REDACTED: Final = "REDACTED"
_SIGNATURE_PARAMS: Final = frozenset({"awsaccesskeyid", "signature", "sig", "x-goog-signature"})


def method_attribute(method: str) -> str:
    """``http.request.method``: the method, or ``_OTHER`` for one the conventions do not know."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def server_span_name(method: str, route: str | None) -> str:
    """``GET /users``: the method and the matched route prefix, never the raw path; ``GET`` when no route matched."""
    name = "HTTP" if method not in KNOWN_METHODS else method
    return f"{name} {route}" if route is not None else name


def client_span_name(method: str) -> str:
    return "HTTP" if method not in KNOWN_METHODS else method


def redact_query(query: str) -> str:
    """The query string with the values of credential parameters replaced by ``REDACTED``."""
    if not query:
        return query
    parts = query.split("&")
    for index, part in enumerate(parts):
        name, eq, _value = part.partition("=")
        if eq and _is_credential(urllib.parse.unquote_plus(name)):
            parts[index] = f"{name}={REDACTED}"
    return "&".join(parts)


def redact_target(target: str) -> str:
    """A request-target (path and query) with credential query values redacted."""
    path, question, query = target.partition("?")
    return f"{path}?{redact_query(query)}" if question else path


def redact_url(url: str) -> str:
    """An absolute URL without userinfo, with credential query values redacted."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, redact_query(parts.query), ""))


def host_and_port(host: str, default_port: int) -> tuple[str, int]:
    """``server.address`` and ``server.port`` from a Host header value (``[::1]:8080``, ``example.com``)."""
    if host.startswith("["):  # an IPv6 literal
        address, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, colon, port = host.rpartition(":")
        if not colon or ":" in address:
            address, port = host, ""
    if port.isdigit() and len(port) <= 5:
        return address, int(port)
    return address, default_port


def _is_credential(name: str) -> bool:
    return name.lower() in _SIGNATURE_PARAMS or is_secret_name(name)
