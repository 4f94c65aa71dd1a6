"""Dotted JSON paths with ``[*]`` for "every element of an array", and the edits made with them.

Grammar: keys separated by ``.``; ``[*]`` after a key (or at the start) stands for every element of an array, and
may repeat (``matrix[*][*]``); ``\\.``, ``\\[``, ``\\]`` and ``\\\\`` put those characters in a key. Examples:
``internal``, ``user.email``, ``items[*].secret``, ``[*].id``, ``labels.app\\.kubernetes\\.io/name``.

Paths are parsed once when a policy is read (``parse_path`` raises ``ValueError`` with the reason); the edits run on
decoded JSON values (dicts, lists, scalars) per request and never fail: a path that does not fit the document (a key
that is absent, an object where an array is expected) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Path = tuple[str | None, ...]  # None: every element of an array
EVERY = None
MAX_DEPTH = 32
_ESCAPABLE = ".[]\\"


def parse_path(text: str) -> Path:
    """``"items[*].secret"`` -> ``("items", None, "secret")``."""
    if not text:
        raise ValueError("is empty")
    segments: list[str | None] = []
    key: list[str] = []
    has_key = False  # the current segment has a key (possibly empty so far: an error at its end)
    after_wildcard = False  # the last thing read was [*]: only '.', '[' or the end may follow
    index = 0
    size = len(text)
    while index < size:
        char = text[index]
        if char == ".":
            if not has_key and not after_wildcard:
                raise ValueError(f"has an empty key at position {index}")
            if has_key:
                if not key:
                    raise ValueError(f"has an empty key at position {index}")
                segments.append("".join(key))
            key, has_key, after_wildcard = [], False, False
            if index == size - 1:
                raise ValueError("ends with '.'")
            index += 1
            continue
        if char == "[":
            if text.startswith("[*]", index):
                if has_key:
                    if not key:
                        raise ValueError(f"has an empty key at position {index}")
                    segments.append("".join(key))
                    key, has_key = [], False
                segments.append(EVERY)
                after_wildcard = True
                index += 3
                continue
            raise ValueError(f"has '[' at position {index} that is not '[*]' (escape it as '\\[')")
        if char == "]":
            raise ValueError(f"has ']' at position {index} outside '[*]' (escape it as '\\]')")
        if after_wildcard:
            raise ValueError(f"needs '.' after '[*]' at position {index}")
        if char == "\\":
            if index + 1 >= size or text[index + 1] not in _ESCAPABLE:
                raise ValueError(f"has '\\' at position {index} that escapes nothing ('\\.', '\\[', '\\]', '\\\\')")
            char = text[index + 1]
            index += 1
        elif not char.isprintable():
            raise ValueError("contains a control character")
        key.append(char)
        has_key = True
        index += 1
    if has_key:
        segments.append("".join(key))
    if len(segments) > MAX_DEPTH:
        raise ValueError(f"is deeper than {MAX_DEPTH} levels")
    return tuple(segments)


def show_path(path: Path) -> str:
    """The text of a parsed path (escapes added back)."""
    out = ""
    for segment in path:
        if segment is EVERY:
            out += "[*]"
            continue
        escaped = "".join("\\" + c if c in _ESCAPABLE else c for c in segment)
        out += ("." if out else "") + escaped
    return out


def _parents(value: Any, path: Path) -> Iterable[Any]:
    """Every container the last segment of ``path`` applies to."""
    current = [value]
    for segment in path[:-1]:
        following: list[Any] = []
        for item in current:
            if segment is EVERY:
                if isinstance(item, list):
                    following.extend(item)
            elif isinstance(item, dict) and segment in item:
                following.append(item[segment])
        current = following
        if not current:
            break
    return current


def remove(value: Any, path: Path) -> None:
    last = path[-1]
    for parent in _parents(value, path):
        if last is EVERY:
            if isinstance(parent, list):
                parent.clear()
        elif isinstance(parent, dict):
            parent.pop(last, None)


def rename(value: Any, path: Path, new: str) -> None:
    """The last key of ``path`` becomes ``new``, at the same place among its siblings (replacing a key ``new``)."""
    last = path[-1]
    if last is EVERY:
        return
    for parent in _parents(value, path):
        if not isinstance(parent, dict) or last not in parent or last == new:
            continue
        items = [(new if k == last else k, v) for k, v in parent.items() if k != new]
        parent.clear()
        parent.update(items)


def set_value(value: Any, path: Path, make: Callable[[], Any]) -> Any:
    """Set the last key of ``path`` to ``make()`` (a fresh value each time), creating missing objects on the way.

    Returns the document (a new one when ``path`` addresses the root, which it never does for parsed paths)."""
    _set(value, path, 0, make)
    return value


def _set(item: Any, path: Path, depth: int, make: Callable[[], Any]) -> None:
    segment = path[depth]
    last = depth == len(path) - 1
    if segment is EVERY:
        if not isinstance(item, list):
            return
        if last:
            item[:] = [make() for _ in item]
            return
        for element in item:
            _set(element, path, depth + 1, make)
        return
    if not isinstance(item, dict):
        return
    if last:
        item[segment] = make()
        return
    child = item.get(segment)
    if child is None and segment not in item:
        child = item[segment] = {} if path[depth + 1] is not EVERY else []
    _set(child, path, depth + 1, make)


AllowTree = dict[str | None, "AllowTree | None"]  # None as a value: keep everything below


def allow_tree(paths: Iterable[Path]) -> AllowTree:
    """The union of ``paths`` as a tree; a path that is a prefix of another keeps everything below it."""
    tree: AllowTree = {}
    for path in paths:
        node = tree
        for index, segment in enumerate(path):
            last = index == len(path) - 1
            if segment in node and node[segment] is None:
                break  # a shorter path already keeps all of it
            if last:
                node[segment] = None
                break
            child = node.get(segment)
            if child is None:
                child = node[segment] = {}
            node = child
    return tree


def project(value: Any, tree: AllowTree) -> Any:
    """``value`` with only what ``tree`` allows. Keys keep their order; what does not fit the tree's shape (a scalar
    where the tree goes deeper, an object where ``[*]`` expects an array) is left out, and a root that does not fit
    becomes ``{}``."""
    kept = _project(value, tree)
    return {} if kept is _LEFT_OUT else kept


_LEFT_OUT = object()


def _project(value: Any, tree: AllowTree) -> Any:
    if isinstance(value, list):
        if EVERY not in tree:
            return _LEFT_OUT
        below = tree[EVERY]
        if below is None:
            return value
        items = (_project(v, below) for v in value)
        return [v for v in items if v is not _LEFT_OUT]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in tree:
                continue
            below = tree[key]
            kept = item if below is None else _project(item, below)
            if kept is not _LEFT_OUT:
                out[key] = kept
        return out
    return _LEFT_OUT
