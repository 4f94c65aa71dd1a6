"""What RFC 9111 says about one request and one response: pure functions over header values, no I/O.

* ``directives`` parses ``Cache-Control`` (section 5.2): comma-separated, case-insensitive names, optional values
  (quoted or not). Unknown directives are kept and ignored.
* ``refusal`` says why an answer must not be stored by a shared cache, or None: ``no-store`` (request or response),
  ``private``, ``Set-Cookie`` (never stored, in every mode), ``Vary: *`` (section 4.1: never reusable), a status the
  policy does not cache, and, for credentialed requests without a per-consumer key, anything not explicitly shared
  (``public``, ``s-maxage`` or ``must-revalidate``; section 3.5).
* ``lifetime`` is the freshness lifetime (section 4.2.1): ``s-maxage`` > ``max-age`` > ``Expires`` - ``Date`` >
  the policy's ``ttl`` (the heuristic); ``mode: override`` always uses ``ttl``. ``no-cache`` (response) makes
  every reuse wait for a revalidation.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Directives = Mapping[str, str | None]
Mode = Literal["rfc9111", "override"]


def directives(values: Iterable[str]) -> dict[str, str | None]:
    """``["max-age=60, public", 'no-cache="Set-Cookie"']`` -> ``{"max-age": "60", "public": None, "no-cache": ...}``."""
    found: dict[str, str | None] = {}
    for value in values:
        for item in _split(value):
            name, sep, argument = item.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            if not sep:
                found.setdefault(name, None)
                continue
            argument = argument.strip()
            if len(argument) >= 2 and argument[0] == argument[-1] == '"':
                argument = argument[1:-1].replace('\\"', '"')
            found.setdefault(name, argument)
    return found


def _split(value: str) -> list[str]:
    """Split on commas outside double quotes."""
    items: list[str] = []
    start = 0
    quoted = False
    for index, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append(value[start:index])
            start = index + 1
    items.append(value[start:])
    return [item for item in (i.strip() for i in items) if item]


def seconds(found: Directives, name: str) -> float | None:
    """A delta-seconds directive (``max-age=60``) as a number; absent or malformed is None (section 1.2.2)."""
    value = found.get(name)
    if value is None or not value.isdigit():
        return None
    return float(min(int(value), 2**31))


def http_date(value: str | None) -> float | None:
    """An HTTP-date as epoch seconds, or None when absent or invalid (an invalid Expires means "already expired")."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def vary_names(values: Iterable[str]) -> tuple[str, ...] | None:
    """The request headers a response varies on (lower case, sorted); None for ``Vary: *``."""
    names: set[str] = set()
    for value in values:
        for item in value.split(","):
            name = item.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFacts:
    """The parts of a response that caching decisions read, taken from its headers once."""

    cache_control: Directives
    vary: tuple[str, ...] | None  # None: Vary: *
    set_cookie: bool
    date: float | None
    expires: str | None
    age: float  # the Age header (0 when absent or malformed)
    etag: str | None
    last_modified: str | None

    @classmethod
    def of(cls, headers: Mapping[str, str], getall: Iterable[str], varies: Iterable[str]) -> ResponseFacts:
        age_text = headers.get("Age", "")
        return cls(
            cache_control=directives(getall),
            vary=vary_names(varies),
            set_cookie="Set-Cookie" in headers,
            date=http_date(headers.get("Date")),
            expires=headers.get("Expires"),
            age=float(age_text) if age_text.isdigit() else 0.0,
            etag=headers.get("ETag"),
            last_modified=headers.get("Last-Modified"),
        )

    @property
    def shared(self) -> bool:
        """Explicitly reusable for credentialed requests by a shared cache (RFC 9111 section 3.5)."""
        cc = self.cache_control
        return "public" in cc or "s-maxage" in cc or "must-revalidate" in cc

    @property
    def must_revalidate(self) -> bool:
        """Never served stale (``must-revalidate``, ``proxy-revalidate``, ``s-maxage`` implies it: section 5.2.2.10)."""
        cc = self.cache_control
        return "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc or "no-cache" in cc

    @property
    def validators(self) -> bool:
        return self.etag is not None or self.last_modified is not None


def refusal(
    *,
    status: int,
    statuses: frozenset[int],
    request: Directives,
    response: ResponseFacts,
    shared_only: bool,
    mode: Mode,
) -> str | None:
    """Why this answer must not be stored (a metric reason), or None when it may be."""
    if status not in statuses:
        return "uncacheable"
    if "no-store" in request or "no-store" in response.cache_control:
        return "no_store"
    if "private" in response.cache_control or response.set_cookie:
        return "private"
    if response.vary is None:
        return "vary_star"
    if shared_only and (mode == "override" or not response.shared):
        return "credentialed"
    return None


def lifetime(response: ResponseFacts, *, mode: Mode, ttl: float) -> float:
    """The freshness lifetime in seconds (0: stale at once, usable only after a revalidation)."""
    if mode == "override":
        return ttl
    cc = response.cache_control
    if "no-cache" in cc:
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in cc:
            value = seconds(cc, name)
            return value if value is not None else 0.0
    if response.expires is not None:
        expires = http_date(response.expires)
        if expires is None or response.date is None:
            return 0.0
        return max(0.0, expires - response.date)
    return ttl


def request_wants_validation(request: Directives) -> bool:
    """``no-cache`` or ``max-age=0`` from the client: revalidate before reuse (never a bypass, so clients cannot
    force origin load beyond a conditional request)."""
    if "no-cache" in request:
        return True
    max_age = seconds(request, "max-age")
    return max_age is not None and max_age == 0


def whole_seconds(value: float) -> int:
    """Age and ttl values as header integers (toward zero for negative ttl, never NaN)."""
    if math.isnan(value):
        return 0
    return int(value) if value >= 0 else -math.ceil(-value)


def etag_matches(if_none_match: str, etag: str | None) -> bool:
    """Weak comparison of ``If-None-Match`` against a stored ETag (RFC 9110 section 13.1.2)."""
    if etag is None:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def not_modified_since(if_modified_since: str, last_modified: str | None) -> bool:
    since = http_date(if_modified_since)
    modified = http_date(last_modified)
    return since is not None and modified is not None and modified <= since
