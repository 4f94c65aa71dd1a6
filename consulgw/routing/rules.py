"""Route tags -> typed route specs: the tag grammar, parsed once per catalog change, never on the request path.

Grammar (``gw`` is the configurable tag prefix; see ``docs/tags.md``)::

    gw.route=[host]/path-prefix [strip=/prefix] [methods=GET,POST]   (repeatable)
    gw.lb=round_robin|least_conn|ip_hash
    urlprefix-[host]/path [strip=/prefix]                              (only with compat "fabio")

A bad tag disables that one route and yields a :class:`RouteError` naming the bad part, with a corrected tag when
one is obvious (``RouteError.fix``, only ever a tag that parses); it never affects the other tags of the service or
other services. Unknown ``gw.*`` keys are errors too (typo protection).

Fabio's ``urlprefix-`` tags are read as Fabio reads them (its registry/consul route command and tests): the tag
without surrounding whitespace, ``$DC`` / ``${DC}`` in the route (not its options) expanded to the datacenter;
any other variable is refused, where Fabio would silently make it empty.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from consulgw.errors import ConfigError, InvalidPath
from consulgw.model.balancing import DEFAULT_LB, LB_ALGORITHMS
from consulgw.routing.path import canonical_path, is_dot_segment, upstream_view

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

_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_METHOD_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec:
    """One route of one service: where requests match and how the path is rewritten.

    ``host`` is lower-case ASCII (IDNA), ``None`` for any host, or ``*.example.com`` (one or more labels to the
    left of ``example.com``). ``prefix`` starts with ``/``, has no trailing slash (except ``/`` itself) and is in
    the canonical form request paths are matched in (``consulgw.routing.path``: unreserved characters decoded,
    other escapes upper-case). ``methods`` is ``None`` for every method; ``GET`` implies ``HEAD``.
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
    fix: str | None = None  # a corrected tag, included in ``reason``; always one that parses without an error

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
    """Internal: the reason one tag is rejected, and a corrected tag to suggest (checked before it is shown)."""

    def __init__(self, reason: str, *, fix: str | None = None) -> None:
        super().__init__(reason)
        self.fix = fix


@dataclass(frozen=True, slots=True)
class _Balancer:
    algorithm: str


def _check_prefix(tag_prefix: str) -> str:
    if not tag_prefix or any(c.isspace() for c in tag_prefix) or "=" in tag_prefix:
        raise ConfigError(f"tag prefix: {tag_prefix!r} must be a non-empty word without spaces or '='")
    return tag_prefix + "."


def has_route_tags(tags: Iterable[str], *, tag_prefix: str = "gw", compat: frozenset[str] = frozenset()) -> bool:
    """Whether any tag is meant for the gateway (so the service is worth watching). No parsing.

    Surrounding whitespace is ignored, as Fabio ignores it (``' urlprefix-/foo'`` is a route tag).
    """
    prefix = _check_prefix(tag_prefix)
    fabio = FABIO in compat
    for tag in tags:
        text = tag.strip()
        if text.startswith(prefix) or (fabio and text.startswith(FABIO_TAG_PREFIX)):
            return True
    return False


def parse_service_routes(
    service: str,
    tags: Iterable[str],
    *,
    tag_prefix: str = "gw",
    compat: frozenset[str] = frozenset(),
    datacenter: str | None = None,
) -> ServiceRoutes:
    """Parse one service's tags. Deterministic: the result does not depend on the order of ``tags``.

    Each tag is read without its surrounding whitespace (as Fabio reads it); ``RouteSpec.tag`` and
    ``RouteError.tag`` keep it verbatim. ``datacenter`` is what ``$DC`` / ``${DC}`` expand to in Fabio tags: the
    datacenter the service's instances were read from.
    """
    prefix = _check_prefix(tag_prefix)
    fabio = FABIO in compat
    routes: list[RouteSpec] = []
    errors: list[RouteError] = []
    lbs: dict[str, list[str]] = {}  # algorithm -> tags
    for tag in sorted(set(tags)):
        try:
            parsed = _parse_tag(service, tag, prefix=prefix, fabio=fabio, datacenter=datacenter)
        except _TagError as exc:
            fix = exc.fix if exc.fix is not None and _parses(exc.fix, prefix, fabio, datacenter) else None
            reason = str(exc) if fix is None else f"{exc}; did you mean {fix!r}?"
            errors.append(RouteError(service=service, tag=tag, reason=reason, fix=fix))
            continue
        if isinstance(parsed, RouteSpec):
            routes.append(parsed)
        elif isinstance(parsed, _Balancer):
            lbs.setdefault(parsed.algorithm, []).append(tag)

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
        return _parse_route(service, source, text, head="route: ", fabio=False, datacenter=None)
    except _TagError as exc:
        raise ValueError(str(exc)) from None


def _parses(tag: str, prefix: str, fabio: bool, datacenter: str | None) -> bool:
    """Whether a suggested tag is itself valid (a suggestion that does not parse is never shown)."""
    try:
        return _parse_tag("-", tag, prefix=prefix, fabio=fabio, datacenter=datacenter) is not None
    except _TagError:
        return False


def _parse_tag(
    service: str, tag: str, *, prefix: str, fabio: bool, datacenter: str | None
) -> RouteSpec | _Balancer | None:
    """One tag: a route, a balancer, or None when the tag is not meant for the gateway."""
    text = tag.strip()
    if text.startswith(prefix):
        key, sep, value = text[len(prefix) :].partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise _TagError(f"missing '='; a {prefix}{key or 'route'} tag reads {prefix}{key or 'route'}=<value>")
        if key == "route":
            return _parse_route(service, tag, value, head=f"{prefix}route=", fabio=False, datacenter=None)
        if key == "lb":
            return _Balancer(_parse_lb(value, head=f"{prefix}lb="))
        close = difflib.get_close_matches(key, _KEYS, n=1)
        fix = f"{prefix}{close[0]}={value}" if close else None
        expected = ", ".join(f"{prefix}{k}" for k in _KEYS)
        raise _TagError(f"unknown key {key!r}; expected one of {expected}", fix=fix)
    if fabio and text.startswith(FABIO_TAG_PREFIX):
        value = text[len(FABIO_TAG_PREFIX) :].strip()
        return _parse_route(service, tag, value, head=FABIO_TAG_PREFIX, fabio=True, datacenter=datacenter)
    return None


def _unknown(what: str, known: tuple[str, ...], fmt: str) -> str:
    expected = ", ".join(fmt.format(k) for k in known)
    return f"unknown {what}; expected one of {expected}"


def _parse_lb(value: str, *, head: str) -> str:
    if value in LB_ALGORITHMS:
        return value
    close = difflib.get_close_matches(value, LB_ALGORITHMS, n=1)
    raise _TagError(
        f"unknown balancer {value!r}; expected one of {', '.join(LB_ALGORITHMS)}",
        fix=f"{head}{close[0]}" if close else None,
    )


# Fabio's protocols (proto=): what each is, in consulgw's words.
_FABIO_TCP = ("tcp", "tcp+sni", "tcp-dynamic")
_FABIO_GRPC = ("grpc", "grpcs")
_FABIO_PROTOCOLS = ("http", "https", *_FABIO_TCP, *_FABIO_GRPC)
# $NAME, ${NAME} and Go's one-character special variables, as Fabio's os.Expand reads them; "$" before anything
# else stays a literal "$".
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}?|([A-Za-z_][A-Za-z0-9_]*)|([0-9*#$@!?\-]))")


def _expand(target: str, datacenter: str | None) -> str:
    """Fabio expands ``$DC`` / ``${DC}`` in a urlprefix- route (not in its options) to the datacenter."""

    def variable(match: re.Match[str]) -> str:
        name = next((g for g in match.groups() if g is not None), "")
        if name != "DC" or (match.group(0).startswith("${") and not match.group(0).endswith("}")):
            raise _TagError(
                f"variable expansion: {match.group(0)!r} is not supported; only $DC or ${{DC}} (the datacenter) is "
                "expanded (Fabio would expand any other variable to an empty string)"
            )
        if not datacenter:
            raise _TagError("variable expansion: $DC needs the datacenter, which Consul has not reported")
        return datacenter

    return _VARIABLE.sub(variable, target) if "$" in target else target


def _fabio_options(options: list[str], tag_words: list[str], head: str) -> None:
    """Refuse what consulgw cannot do, naming the real problem: the protocol first (a ``:port`` route with
    ``proto=grpc`` is a gRPC route, not a TCP one), then the options consulgw does not have."""
    for option in options:
        name, _, raw = option.partition("=")
        if name != "proto":
            continue
        if raw in _FABIO_TCP:
            raise _TagError(f"proto={raw}: TCP routes are not supported; consulgw routes HTTP (and WebSocket) only")
        if raw in _FABIO_GRPC:
            raise _TagError(
                f"proto={raw}: gRPC routes are not supported; consulgw forwards HTTP/1.1 and WebSocket, and gRPC "
                "needs HTTP/2"
            )
        if raw == "https":
            rest = [w for w in tag_words if w != option]
            raise _TagError(
                "proto=https: in consulgw the upstream's scheme belongs to its instances; set Meta gw-scheme=https "
                "on the service and drop proto=https",
                fix=head + " ".join(rest),
            )
        if raw != "http":
            raise _TagError(
                f"unknown Fabio protocol in {option!r}; Fabio knows {', '.join(_FABIO_PROTOCOLS)}, and consulgw "
                "routes proto=http only"
            )
    for option in options:
        name = option.partition("=")[0]
        if name in _FABIO_UNSUPPORTED:
            raise _TagError(f"Fabio option {option!r}: {_FABIO_UNSUPPORTED[name]}")


def _parse_route(service: str, tag: str, value: str, *, head: str, fabio: bool, datacenter: str | None) -> RouteSpec:
    words = value.split()
    if not words:
        raise _TagError("empty route; expected [host]/path, for example api.example.com/users or /users")
    raw_target, options = words[0], words[1:]

    def fix(*, target: str | None = None, drop: str | None = None, rename: tuple[str, str] | None = None) -> str:
        """The tag with another target, without one occurrence (the last) of ``drop``, or an option renamed."""
        kept = list(options)
        if drop is not None:
            del kept[len(kept) - 1 - kept[::-1].index(drop)]
        out = [target if target is not None else raw_target]
        for option in kept:
            if rename is not None and option.partition("=")[0] == rename[0]:
                option = f"{rename[1]}={option.partition('=')[2]}"
            out.append(option)
        return head + " ".join(out)

    if fabio:
        _fabio_options(options, words, head)
    slash = raw_target.find("/")
    equals = raw_target.find("=")
    if equals >= 0 and (slash < 0 or equals < slash):
        raise _TagError(f"route must start with [host]/path, not the option {raw_target!r}")
    if fabio and raw_target.startswith(":"):
        raise _TagError(
            f"{raw_target!r} routes a listener port (Fabio's TCP proxy); consulgw routes HTTP by [host]/path only"
        )
    target = _expand(raw_target, datacenter) if fabio else raw_target
    slash = target.find("/")
    if slash < 0:
        host_like = "." in target or ":" in target or target.startswith("[")
        candidate = _without_port(target) + "/" if host_like else "/" + target
        raise _TagError(f"missing path in {target!r}; a route is [host]/path", fix=fix(target=candidate))
    host_text = target[:slash]
    try:
        host = _normalize_route_host(host_text)
    except _TagError as exc:
        raw_slash = raw_target.find("/")
        raw_host = raw_target[:raw_slash] if raw_slash >= 0 else raw_target
        if _without_port(raw_host) == raw_host:
            raise
        raise _TagError(str(exc), fix=fix(target=_without_port(raw_host) + raw_target[len(raw_host) :])) from None
    prefix = _normalize_prefix(target[slash:], "path")

    seen: dict[str, str] = {}
    for option in options:
        name, sep, raw = option.partition("=")
        if not sep:
            raise _TagError(f"option {option!r} is not key=value")
        if name in seen:
            raise _TagError(f"option {name}= given twice", fix=fix(drop=option) if seen[name] == raw else None)
        seen[name] = raw
        known = ("strip", "proto", "register") if fabio else _ROUTE_OPTIONS
        if name not in known:
            what = f"Fabio option {name + '='!r}" if fabio else f"option {name + '='!r}"
            close = difflib.get_close_matches(name, known, n=1)
            raise _TagError(_unknown(what, known, "{}="), fix=fix(rename=(name, close[0])) if close else None)

    strip: str | None = None
    if "strip" in seen:
        strip = _normalize_prefix(seen["strip"], "strip")
        if strip == "/":
            raise _TagError("strip=/ strips nothing", fix=fix(drop=f"strip={seen['strip']}"))
        if not (prefix == strip or prefix.startswith(strip + "/")):
            note = " (Fabio expands $DC in the route, not in its options)" if fabio and "$" in seen["strip"] else ""
            raise _TagError(f"strip={strip} is not a leading part of the route path {prefix} (whole segments){note}")
    methods: frozenset[str] | None = None
    if "methods" in seen:
        methods = _parse_methods(seen["methods"])
    return RouteSpec(service=service, host=host, prefix=prefix, strip=strip, methods=methods, tag=tag)


def _without_port(host: str) -> str:
    """``api.example.com:8080`` -> ``api.example.com``; ``[::1]:80`` -> ``[::1]``; anything else unchanged."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.partition(":")[0] if host.count(":") == 1 else host


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
    """Validate a path prefix and bring it to the canonical form of request paths, without a trailing slash."""
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
    view = upstream_view(text)
    if any(is_dot_segment(seg) for seg in view.split("/")):
        raise _TagError(f"{what} {text!r} contains a '.' or '..' segment")
    if view.count("/") != text.count("/"):
        raise _TagError(
            f"{what} {text!r} holds an encoded slash (%2F or %5C, or a backslash): a request for it would be "
            "refused as ambiguous; use '/'"
        )
    try:
        text = canonical_path(text).path  # the form request paths are matched in (consulgw.routing.path)
    except InvalidPath as exc:
        raise _TagError(f"{what} {text!r}: {exc.message.removeprefix(f'the path {text!r} ')}") from None
    return text.rstrip("/") or "/"


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
