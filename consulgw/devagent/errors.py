"""Errors the dev agent answers to clients, in Consul's plain-text form.

Handlers raise :class:`ApiError`; ``http.py`` is the one place that turns it (and any unexpected exception) into a
response. The texts are Consul's own, because clients string-match them.
"""

from __future__ import annotations

from consulgw.errors import ConsulgwError


class ApiError(ConsulgwError):
    """A Consul HTTP error: status code plus the exact plain-text body Consul sends."""

    def __init__(self, status: int, text: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = dict(headers or {})


class Forward(ConsulgwError):
    """The request names another datacenter (``?dc=``) reachable through a WAN peer: ``http.py`` forwards it there,
    as a federated Consul server forwards it to a server of that datacenter."""

    def __init__(self, call: object, datacenter: str, url: str) -> None:
        super().__init__(f"forward to {datacenter} at {url}")
        self.call = call  # the consulgw.devagent.http.Call (its body, if already read, is kept there)
        self.datacenter = datacenter
        self.url = url


def bad_request(text: str) -> ApiError:
    return ApiError(400, text)


def not_found(text: str) -> ApiError:
    return ApiError(404, text)


def server_error(text: str) -> ApiError:
    return ApiError(500, text)


class DecodeError(ConsulgwError):
    """A request body Consul would refuse with ``Request decode failed: <message>``; message is Go-like."""
