"""Route tags -> typed route specs: the tag grammar, parsed once per catalog change, never on the request path.

Grammar (``gw`` is the configurable tag prefix; see ``docs/tags.md``)::

    gw.route=[host]/path-prefix [strip=/prefix] [methods=GET,POST]   (repeatable)
    gw.lb=round_robin|least_conn|ip_hash
    urlprefix-[host]/path [strip=/prefix]                              (only with compat "fabio")

A bad tag disables that one route and yields a :class:`RouteError` naming the bad part; it never affects the
other tags of the service or other services. Unknown ``gw.*`` keys are errors too (typo protection).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from consulgw.errors import ConfigError
from consulgw.model.balancing import DEFAULT_LB, LB_ALGORITHMS

FABIO = "fabio"
FABIO_TAG_PREFIX = "urlprefix-"

_KEYS = ("route", "lb")
_ROUTE_OPTIONS = ("strip", "methods")
_FABIO_UNSUPPORTED = {
    "prepend": "path prepending is not supported",
    "weight": "route weights (traffic shaping) are not supported",
    "redirect": "redirect routes are not supported",
    "host": "rewriting the upstream Host header is not supported",
    "tlsskipverify": "TLS options per route are not supported; use Meta gw-scheme=https and --upstream-ca",
    "allow": "IP allow lists are not supported in tags",
    "deny": "IP deny lists are not supported in tags",
    "auth": "per-route auth in tags is not supported; use the service's KV policy",
    "pxyproto": "PROXY protocol (TCP routes) is not supported",
}
_FABIO_PROTO_REASONS = {
    "https": "proto=https is not supported in tags; set Meta gw-scheme=https on the service instead",
    "tcp": "proto=tcp (TCP routes) is not supported; consulgw routes HTTP only",
    "grpc": "proto=grpc is not supported",
    "grpcs": "proto=grpcs is not supported",
}

_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_METHOD_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE_RE = re.compile(r"%[0-9a-f]{2}|%[0-9A-F][0-9a-f]|%[0-9a-f][0-9A-F]")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec:
    """One route of one service: where requests match and how the path is rewritten.

    ``host`` is lower-case ASCII (IDNA), ``None`` for any host, or ``*.example.com`` (one or more labels to the
    left of ``example.com``). ``prefix`` starts with ``/`` and has no trailing slash (except ``/`` itself);
    percent-escapes are upper-case. ``methods`` is ``None`` for every method; ``GET`` implies ``HEAD``.
    """

    service: str
    host: str | None
    prefix: str
    strip: str | None
    methods: frozenset[str] | None
    tag: str  # the Consul tag this route came from, verbatim

    @property
    def label(self) -> str:
        """Stable, low-cardinality name such as ``api.example.com/users`` or ``*/users`` (a metric label)."""
        return f"{self.host or '*'}{self.prefix}"

    def overlaps(self, other: RouteSpec) -> bool:
        """Same host and prefix, and at least one method in common."""
        if self.host != other.host or self.prefix != other.prefix:
            return False
        if self.methods is None or other.methods is None:
            return True
        return not self.methods.isdisjoint(other.methods)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteError:
    """A tag that was rejected; only that tag's route is disabled."""

    service: str
    tag: str
    reason: str

    @property
    def message(self) -> str:
        return f"service {self.service!r}: tag {self.tag!r}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRoutes:
    """Everything one service's tags say: its routes (sorted by tag), its balancer, and rejected tags."""

    service: str
    routes: tuple[RouteSpec, ...] = ()
    lb: str | None = None
    errors: tuple[RouteError, ...] = ()

    @property
    def algorithm(self) -> str:
        """The balancer to use: ``lb`` or the default ``round_robin``."""
        return self.lb or DEFAULT_LB


class _TagError(Exception):
    """Internal: carries the reason of one rejected tag."""


def _check_prefix(tag_prefix: str) -> str:
    if not tag_prefix or any(c.isspace() for c in tag_prefix) or "=" in tag_prefix:
        raise ConfigError(f"tag prefix: {tag_prefix!r} must be a non-empty word without spaces or '='")
    return tag_prefix + "."


def has_route_tags(tags: Iterable[str], *, tag_prefix: str = "gw", compat: frozenset[str] = frozenset()) -> bool:
    """Whether any tag is meant for the gateway (so the service is worth watching). No parsing."""
    prefix = _check_prefix(tag_prefix)
    fabio = FABIO in compat
    return any(tag.startswith(prefix) or (fabio and tag.startswith(FABIO_TAG_PREFIX)) for tag in tags)


def parse_service_routes(
    service: str, tags: Iterable[str], *, tag_prefix: str = "gw", compat: frozenset[str] = frozenset()
) -> ServiceRoutes:
    """Parse one service's tags. Deterministic: the result does not depend on the order of ``tags``."""
    prefix = _check_prefix(tag_prefix)
    fabio = FABIO in compat
    routes: list[RouteSpec] = []
    errors: list[RouteError] = []
    lbs: dict[str, list[str]] = {}  # algorithm -> tags
    for tag in sorted(set(tags)):
        try:
            if tag.startswith(prefix):
                key, sep, value = tag[len(prefix) :].partition("=")
                key, value = key.strip(), value.strip()
                if not sep:
                    raise _TagError(f"missing '=' (expected {prefix}{key or 'route'}=...)")
                if key == "route":
                    routes.append(_parse_route(service, tag, value, fabio=False))
                elif key == "lb":
                    lbs.setdefault(_parse_lb(value), []).append(tag)
                else:
                    raise _TagError(_unknown(f"key {key!r}", key, _KEYS, f"{prefix}{{}}"))
            elif fabio and tag.startswith(FABIO_TAG_PREFIX):
                routes.append(_parse_route(service, tag, tag[len(FABIO_TAG_PREFIX) :].strip(), fabio=True))
        except _TagError as exc:
            errors.append(RouteError(service=service, tag=tag, reason=str(exc)))

    lb: str | None = None
    if len(lbs) == 1:
        lb = next(iter(lbs))
    elif len(lbs) > 1:
        choices = ", ".join(sorted(lbs))
        for tags_ in lbs.values():
            for tag in tags_:
                reason = f"conflicting balancers on one service ({choices}); using the default {DEFAULT_LB}"
                errors.append(RouteError(service=service, tag=tag, reason=reason))

    kept: list[RouteSpec] = []
    for route in routes:
        twin = next((k for k in kept if k.overlaps(route)), None)
        if twin is None:
            kept.append(route)
        elif (twin.strip, twin.methods) != (route.strip, route.methods):
            reason = f"overlaps tag {twin.tag!r} of the same service (same host and path, a method in common)"
            errors.append(RouteError(service=service, tag=route.tag, reason=reason))
        # else: the same route spelt twice (e.g. "/a" and "/a/", or gw.route and urlprefix-): counted once
    errors.sort(key=lambda e: (e.tag, e.reason))
    return ServiceRoutes(service=service, routes=tuple(kept), lb=lb, errors=tuple(errors))


def parse_route(service: str, source: str, text: str) -> RouteSpec:
    """One route in the ``gw.route`` grammar that comes from somewhere else than a tag (a composite's KV document,
    named by ``source``). Raises ``ValueError`` with the same reasons a tag gets."""
    try:
        return _parse_route(service, source, text, fabio=False)
    except _TagError as exc:
        raise ValueError(str(exc)) from None


def _unknown(what: str, key: str, known: tuple[str, ...], fmt: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {fmt.format(close[0])!r}?)" if close else ""
    expected = ", ".join(fmt.format(k) for k in known)
    return f"unknown {what}{hint}; expected one of {expected}"


def _parse_lb(value: str) -> str:
    if value in LB_ALGORITHMS:
        return value
    close = difflib.get_close_matches(value, LB_ALGORITHMS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _TagError(f"unknown balancer {value!r}{hint}; expected one of {', '.join(LB_ALGORITHMS)}")


def _parse_route(service: str, tag: str, value: str, *, fabio: bool) -> RouteSpec:
    words = value.split()
    if not words:
        raise _TagError("empty route; expected [host]/path, for example api.example.com/users or /users")
    target, options = words[0], words[1:]
    slash = target.find("/")
    equals = target.find("=")
    if equals >= 0 and (slash < 0 or equals < slash):
        raise _TagError(f"route must start with [host]/path, not the option {target!r}")
    if slash < 0:
        if fabio and target.startswith(":"):
            raise _TagError(f"TCP route {target!r} is not supported; consulgw routes HTTP only")
        raise _TagError(f"missing path in {target!r}; expected [host]/path, for example {target}/")
    host = _normalize_route_host(target[:slash])
    prefix = _normalize_prefix(target[slash:], "path")

    seen: dict[str, str] = {}
    for option in options:
        name, sep, raw = option.partition("=")
        if not sep:
            raise _TagError(f"option {option!r} is not key=value")
        if name in seen:
            raise _TagError(f"option {name}= given twice")
        seen[name] = raw
        if fabio:
            if name in _FABIO_UNSUPPORTED:
                raise _TagError(f"Fabio option {option!r}: {_FABIO_UNSUPPORTED[name]}")
            if name == "proto":
                if raw in _FABIO_PROTO_REASONS:
                    raise _TagError(_FABIO_PROTO_REASONS[raw])
                if raw != "http":
                    raise _TagError(f"unknown Fabio protocol in {option!r}; only proto=http is supported")
            elif name not in ("strip", "register"):
                raise _TagError(_unknown(f"Fabio option {name + '='!r}", name, ("strip", "proto", "register"), "{}="))
        elif name not in _ROUTE_OPTIONS:
            raise _TagError(_unknown(f"option {name + '='!r}", name, _ROUTE_OPTIONS, "{}="))

    strip: str | None = None
    if "strip" in seen:
        strip = _normalize_prefix(seen["strip"], "strip")
        if strip == "/":
            raise _TagError("strip=/ strips nothing; remove it")
        if not (prefix == strip or prefix.startswith(strip + "/")):
            raise _TagError(f"strip={strip} is not a leading part of the route path {prefix} (whole segments)")
    methods: frozenset[str] | None = None
    if "methods" in seen:
        methods = _parse_methods(seen["methods"])
    return RouteSpec(service=service, host=host, prefix=prefix, strip=strip, methods=methods, tag=tag)


def _parse_methods(raw: str) -> frozenset[str]:
    if not raw:
        raise _TagError("methods= is empty; expected for example methods=GET,POST")
    found: set[str] = set()
    for item in raw.split(","):
        if not item:
            raise _TagError(f"empty method in methods={raw}")
        if not _METHOD_RE.fullmatch(item):
            raise _TagError(f"method {item!r} in methods={raw} is not an HTTP method token")
        found.add(item.upper())
    if "GET" in found:
        found.add("HEAD")
    return frozenset(found)


def _normalize_prefix(text: str, what: str) -> str:
    """Validate a path prefix and bring it to canonical form (no trailing slash, upper-case escapes)."""
    if not text.startswith("/"):
        raise _TagError(f"{what} {text!r} must start with '/'")
    for char in "?#*":
        if char in text:
            raise _TagError(f"{what} {text!r} contains {char!r}; only literal path prefixes are supported")
    if _BAD_ESCAPE_RE.search(text):
        raise _TagError(f"{what} {text!r} has a '%' that is not a %XX escape")
    if not text.isascii() or not text.isprintable():
        encoded = []
        for char in text:
            if char.isascii() and char.isprintable():
                encoded.append(char)
            elif not char.isprintable():
                raise _TagError(f"{what} {text!r} contains a control character")
            else:
                encoded.extend(f"%{b:02X}" for b in char.encode("utf-8"))
        text = "".join(encoded)
    segments = text.split("/")
    if any(seg in (".", "..") for seg in segments):
        raise _TagError(f"{what} {text!r} contains a '.' or '..' segment")
    text = text.rstrip("/") or "/"
    return upper_escapes(text)


def upper_escapes(path: str) -> str:
    """``/caf%c3%a9`` -> ``/caf%C3%A9`` (same length; RFC 3986 says escapes are case-insensitive)."""
    if "%" not in path:
        return path
    return _ESCAPE_RE.sub(lambda m: m.group(0).upper(), path)


def _normalize_route_host(text: str) -> str | None:
    """Validate a route's host and return its canonical form; ``None`` for any host (empty or ``*``)."""
    if text in ("", "*"):
        return None
    host = text.lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or end != len(host) - 1:
            where = "a port" if end > 0 and host[end + 1 :].startswith(":") else "a malformed IPv6 literal"
            raise _TagError(f"host {text!r} has {where}; ports are ignored when matching, remove it")
        try:
            return f"[{ipaddress.IPv6Address(host[1:end]).compressed}]"
        except ValueError:
            raise _TagError(f"host {text!r} is not a valid IPv6 literal") from None
    if ":" in host:
        port = host[host.rfind(":") :]
        raise _TagError(f"host {text!r} has a port {port!r}; ports are ignored when matching, remove it")
    host = host.removesuffix(".")
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        raise _TagError(f"host {text!r}: '*' is only allowed as the whole leftmost label, as in *.example.com")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise _TagError(f"host {text!r} is not a valid internationalized domain name") from None
    if len(name) > 253:
        raise _TagError(f"host {text!r} is longer than 253 characters")
    for label in name.split("."):
        if not label:
            raise _TagError(f"host {text!r} has an empty label")
        if not _LABEL_RE.fullmatch(label):
            raise _TagError(f"host {text!r}: label {label!r} is not a valid DNS label")
    return f"*.{name}" if wildcard else name
