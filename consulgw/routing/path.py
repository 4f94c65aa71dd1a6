"""One canonical request path: the path the route table matches is the path the upstream receives.

A gateway that matches the raw path while the upstream normalises it can be walked around: ``/app/x/../admin``
matches an open ``/app`` route and reaches ``/app/admin`` upstream. So every request path is brought to one
canonical form before matching, and that form (after the route's ``strip``) is what is forwarded:

1. percent-escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded (``%61dmin`` is ``admin``,
   ``%2e%2e`` is ``..``); every other escape keeps its meaning and is written with upper-case hex (``%c3%a9`` is
   ``%C3%A9``); a ``%`` not followed by two hex digits is refused;
2. characters that may not appear raw in a path (RFC 3986 ``pchar``) are percent-encoded as UTF-8, and a raw
   backslash becomes ``%5C``: some servers read ``\\`` as ``/``, so it is treated like an encoded slash;
3. repeated slashes are merged (``//`` is ``/``);
4. dot-segments are removed (RFC 3986 section 5.2.4); a path that climbs above the root (``/..``) is refused.

Encoded slashes (``%2F``, ``%5C``) and every other reserved escape stay encoded: ``/a%2Fb`` is one segment. With
``encoded_slashes="reject"`` (``--encoded-slashes reject``) a path holding one is refused instead. Either way, a
path is also refused when an upstream that decodes every escape once, reads ``\\`` as ``/`` and drops
``;parameters`` from segments (as Tomcat does) would find a dot-segment or an empty segment in it
(``/app/x/..%2fadmin``, ``/app/%2Fadmin``, ``/app/..;/admin``): no upstream's own decoding may reach a path the
gateway did not route. :attr:`CanonicalPath.decoded` lets the route table check the last case, where a kept
``%2F`` would select another route once decoded.

The query is not touched: it is carried over byte for byte. A fragment (``#...``), which clients never send in a
request-target, is dropped, as the HTTP parser itself drops it from ``path`` and ``query_string``.

Everything here is pure; refusals raise :class:`~consulgw.errors.InvalidPath` (400 ``invalid_path``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from consulgw.errors import InvalidPath

EncodedSlashes = Literal["keep", "reject"]
ENCODED_SLASHES: Final[tuple[EncodedSlashes, ...]] = ("keep", "reject")

_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What may stay raw in a canonical path: RFC 3986 pchar (unreserved, sub-delims, ":" and "@") and "/".
_RAW_OK: Final = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_HEX: Final = frozenset("0123456789ABCDEFabcdef")
_SEPARATORS: Final = ("%2F", "%5C")
# Already canonical: non-empty segments of pchar without "%" or ";", none starting with "." (so no dot-segment).
_PLAIN: Final = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)*/?")


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    """A canonical path, and -- when it keeps an encoded slash -- the same path with those read as ``/``."""

    path: str
    decoded: str | None = None


def split_target(target: str) -> tuple[str, str]:
    """``/a/b?x=1#f`` -> (``/a/b``, ``?x=1``): the path, and the query with its ``?`` (``""`` when there is none).

    The query is returned exactly as sent; a fragment is dropped.
    """
    end = target.find("#")
    if end >= 0:
        target = target[:end]
    mark = target.find("?")
    if mark < 0:
        return target, ""
    return target[:mark], target[mark:]


def is_canonical(path: str) -> bool:
    """A cheap sufficient test: True means ``canonical_path(path).path == path`` with nothing to decode (the
    common case, checked first on every request); False means the full :func:`canonical_path` must decide."""
    return _PLAIN.fullmatch(path) is not None


def canonical_path(raw: str, *, encoded_slashes: EncodedSlashes = "keep") -> CanonicalPath:
    """The canonical form of an origin-form path (starting with ``/``, without query); raises InvalidPath."""
    if not raw.startswith("/"):
        raise InvalidPath(f"the path {_shown(raw)} does not start with '/'")
    if _PLAIN.fullmatch(raw):
        return CanonicalPath(raw)  # the common case: nothing to decode, merge or remove
    text = _canonical_characters(raw)
    has_separator = "%2F" in text or "%5C" in text
    if has_separator and encoded_slashes == "reject":
        raise InvalidPath(f"the path {_shown(raw)} holds an encoded slash (%2F or %5C), which this gateway refuses")
    path = _remove_dot_segments(_merge_slashes(text), raw)
    if ("%" in path or ";" in path) and _ambiguous(upstream_view(path)):
        raise InvalidPath(
            f"the path {_shown(raw)} would hold a '.' or '..' segment or an empty segment once its escapes are decoded"
        )
    if not has_separator or ("%2F" not in path and "%5C" not in path):  # none, or only in a removed segment
        return CanonicalPath(path)
    decoded = path
    for escape in _SEPARATORS:
        decoded = decoded.replace(escape, "/")
    return CanonicalPath(path, decoded)


def upstream_view(path: str) -> str:
    """The path as a lenient upstream reads it: every escape decoded once, ``\\`` read as ``/``."""
    return unquote(path, errors="surrogateescape").replace("\\", "/")


def is_dot_segment(segment: str) -> bool:
    """``.`` or ``..``, also with ``;parameters`` after it (``..;x``), which some servers drop before resolving."""
    bare = segment.split(";", 1)[0]
    return bare in (".", "..")


def _ambiguous(view: str) -> bool:
    segments = view.split("/")[1:]
    last = len(segments) - 1
    return any(is_dot_segment(seg) or (seg == "" and i < last) for i, seg in enumerate(segments))


def _canonical_characters(raw: str) -> str:
    out: list[str] = []
    i, size = 0, len(raw)
    while i < size:
        char = raw[i]
        if char == "%":
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise InvalidPath(f"the path {_shown(raw)} has a '%' that is not a %XX escape")
            decoded = chr(int(pair, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
            i += 3
            continue
        if char in _RAW_OK:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
        i += 1
    return "".join(out)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _remove_dot_segments(path: str, raw: str) -> str:
    """RFC 3986 section 5.2.4 on a path without empty segments; climbing above the root is refused."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if not kept:
                raise InvalidPath(f"the path {_shown(raw)} climbs above the root")
            kept.pop()
            continue
        kept.append(seg)
    trailing = segments[-1] in (".", "..", "")  # "/a/b/.." is "/a/", as in the RFC
    out = "/" + "/".join(kept)
    if trailing and kept and kept[-1] != "":
        out += "/"
    return out


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 80 else raw[:80] + "…")
