"""The go-bexpr filter language Consul evaluates for ``?filter=`` (the common subset).

Grammar: ``or`` / ``and`` / ``not`` / parentheses over match expressions::

    Selector == Value        Selector != Value
    Selector is empty        Selector is not empty
    Value in Selector        Value not in Selector
    Selector contains Value  Selector not contains Value
    Selector matches "re"    Selector not matches "re"

Selectors are dotted field paths (``Service.Tags``, ``Service.Meta.env``, ``Node.Meta["rack"]``), validated
against the endpoint's schema when the expression is compiled, as go-bexpr does. Values are double-quoted or
back-quoted strings, numbers, or bare words. A selector that passes through a list (``Checks.Status``) matches when
any element matches. Compile errors raise ValueError with a go-bexpr-like message; the caller adds Consul's
``Failed to create boolean expression evaluator:`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Schema: a dict (struct, field -> schema), MAP (string-keyed map), a one-element list [schema] (slice), or LEAF.
MAP = "map"
LEAF = "leaf"
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) | (?P<op>==|!=) |
        (?P<dq>"(?:[^"\\]|\\.)*") | (?P<bq>`[^`]*`) |
        (?P<num>-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z_])) |
        (?P<index>\[\s*(?:"(?:[^"\\]|\\.)*"|`[^`]*`)\s*\]) |
        (?P<word>[A-Za-z][A-Za-z0-9_/\-]*(?:\.[A-Za-z0-9_/\-]+|\[\s*(?:"(?:[^"\\]|\\.)*"|`[^`]*`)\s*\])*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "empty", "contains", "matches"}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), body)


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise ValueError(f"1:{start + 1} ({start}): no match found, expected: {_describe(text, start)}")
        kind = m.lastgroup or ""
        toks.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return toks


def _describe(text: str, pos: int) -> str:
    near = text[pos : pos + 10]
    return f'"(", "not", [A-Za-z] or a value near {near!r}' if near else "end of input after a complete expression"


def _split_selector(text: str) -> list[str]:
    parts: list[str] = []
    for m in re.finditer(r"\.?([A-Za-z0-9_/\-]+)|\[\s*(\"(?:[^\"\\]|\\.)*\"|`[^`]*`)\s*\]", text):
        parts.append(m.group(1) if m.group(1) is not None else _unquote(m.group(2)))
    return parts


class Expression:
    def evaluate(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _And(Expression):
    left: Expression
    right: Expression

    def evaluate(self, value: Any) -> bool:
        return self.left.evaluate(value) and self.right.evaluate(value)


@dataclass(frozen=True, slots=True)
class _Or(Expression):
    left: Expression
    right: Expression

    def evaluate(self, value: Any) -> bool:
        return self.left.evaluate(value) or self.right.evaluate(value)


@dataclass(frozen=True, slots=True)
class _Not(Expression):
    inner: Expression

    def evaluate(self, value: Any) -> bool:
        return not self.inner.evaluate(value)


_MISSING = object()


def _resolve(value: Any, path: list[str]) -> list[Any]:
    """All values at ``path``; lists met on the way fan out (any-element semantics)."""
    current = [value]
    for part in path:
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, list):
                for element in item:
                    if isinstance(element, Mapping) and part in element:
                        nxt.append(element[part])
            elif isinstance(item, Mapping):
                nxt.append(item.get(part, _MISSING))
        current = nxt
    return current


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _equal(actual: Any, expected: str) -> bool:
    if actual is _MISSING:
        return False
    if isinstance(actual, bool):
        return _as_text(actual) == expected.lower()
    if isinstance(actual, int | float):
        try:
            return float(actual) == float(expected)
        except ValueError:
            return False
    return _as_text(actual) == expected


def _contains(container: Any, expected: str) -> bool:
    if isinstance(container, str):
        return expected in container
    if isinstance(container, list):
        return any(_equal(item, expected) for item in container)
    if isinstance(container, Mapping):
        return expected in container
    return False


def _empty(value: Any) -> bool:
    if value is _MISSING or value is None:
        return True
    if isinstance(value, str | list | Mapping):
        return len(value) == 0
    return False


@dataclass(frozen=True, slots=True)
class _Match(Expression):
    """One match; ``negate`` is the operator's ``!=`` / ``not ...`` form, applied per value (go-bexpr evaluates
    a selector that passes through a list element by element and matches when any element does)."""

    op: str
    path: tuple[str, ...]
    value: str
    negate: bool = False
    pattern: re.Pattern[str] | None = None

    def evaluate(self, value: Any) -> bool:
        return any(self._one(v) != self.negate for v in _resolve(value, list(self.path)))

    def _one(self, found: Any) -> bool:
        if self.op == "==":
            return _equal(found, self.value)
        if self.op == "is empty":
            return _empty(found)
        if self.op == "in":
            return _contains(found, self.value)
        if self.op == "matches":
            return self.pattern is not None and isinstance(found, str) and self.pattern.search(found) is not None
        return False


def _validate(path: list[str], schema: Any, selector: str) -> None:
    node = schema
    for part in path:
        if isinstance(node, list):
            node = node[0]
        if node == MAP:
            node = LEAF
            continue
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f'Selector "{selector}" is not valid')
        node = node[part]


class _Parser:
    def __init__(self, text: str, schema: Any) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.pos = 0
        self.schema = schema

    def peek(self, offset: int = 0) -> _Tok | None:
        idx = self.pos + offset
        return self.toks[idx] if idx < len(self.toks) else None

    def is_word(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == "word" and tok.text == word

    def fail(self, expected: str) -> ValueError:
        tok = self.peek()
        at = tok.pos if tok is not None else len(self.text)
        found = f"found {tok.text!r}" if tok is not None else "found end of input"
        return ValueError(f"1:{at + 1} ({at}): no match found, expected: {expected}; {found}")

    def parse(self) -> Expression:
        if not self.toks:
            raise ValueError('1:1 (0): no match found, expected: "(", "not" or a match expression')
        expr = self.parse_or()
        if self.peek() is not None:
            raise self.fail('"and", "or" or end of input')
        return expr

    def parse_or(self) -> Expression:
        left = self.parse_and()
        while self.is_word("or"):
            self.pos += 1
            left = _Or(left, self.parse_and())
        return left

    def parse_and(self) -> Expression:
        left = self.parse_not()
        while self.is_word("and"):
            self.pos += 1
            left = _And(left, self.parse_not())
        return left

    def parse_not(self) -> Expression:
        if self.is_word("not"):
            self.pos += 1
            return _Not(self.parse_not())
        tok = self.peek()
        if tok is not None and tok.kind == "lparen":
            self.pos += 1
            inner = self.parse_or()
            closing = self.peek()
            if closing is None or closing.kind != "rparen":
                raise self.fail('")"')
            self.pos += 1
            return inner
        return self.parse_match()

    def selector(self) -> tuple[str, ...]:
        tok = self.peek()
        if tok is None or tok.kind != "word" or tok.text in _KEYWORDS:
            raise self.fail("a selector")
        self.pos += 1
        path = _split_selector(tok.text)
        _validate(path, self.schema, tok.text)
        return tuple(path)

    def value(self) -> str:
        tok = self.peek()
        if tok is None or tok.kind not in ("dq", "bq", "num", "word") or (tok.kind == "word" and tok.text in _KEYWORDS):
            raise self.fail("a value")
        self.pos += 1
        return _unquote(tok.text) if tok.kind in ("dq", "bq") else tok.text

    def parse_match(self) -> Expression:
        first = self.peek()
        if first is None:
            raise self.fail("a match expression")
        # Value (not) in Selector
        if first.kind in ("dq", "bq", "num") or (first.kind == "word" and self._value_in_form()):
            value = self.value()
            negate = False
            if self.is_word("not"):
                negate = True
                self.pos += 1
            if not self.is_word("in"):
                raise self.fail('"in" or "not in"')
            self.pos += 1
            return _Match("in", self.selector(), value, negate)
        path = self.selector()
        tok = self.peek()
        if tok is not None and tok.kind == "op":
            self.pos += 1
            return _Match("==", path, self.value(), tok.text == "!=")
        if self.is_word("is"):
            self.pos += 1
            negate = False
            if self.is_word("not"):
                negate = True
                self.pos += 1
            if not self.is_word("empty"):
                raise self.fail('"empty" or "not empty"')
            self.pos += 1
            return _Match("is empty", path, "", negate)
        negate = False
        if self.is_word("not"):
            negate = True
            self.pos += 1
        if self.is_word("contains"):
            self.pos += 1
            return _Match("in", path, self.value(), negate)
        if self.is_word("matches"):
            self.pos += 1
            pattern_text = self.value()
            try:
                pattern = re.compile(pattern_text)
            except re.error as exc:
                raise ValueError(f"error parsing regexp: {exc}") from exc
            return _Match("matches", path, pattern_text, negate, pattern)
        raise self.fail('"!=", "==", "contains", "in", "is", "matches" or "not"')

    def _value_in_form(self) -> bool:
        """A bare word followed by ``in`` / ``not in`` is a value, not a selector."""
        return self.is_word("in", 1) or (self.is_word("not", 1) and self.is_word("in", 2))


def compile_filter(text: str, schema: Any) -> Expression:
    return _Parser(text, schema).parse()


def schema_from_sample(sample: Any, *, maps: frozenset[str] = frozenset()) -> Any:
    """Derive a selector schema from a rendered sample record (keys named in ``maps`` are free-form maps)."""
    if isinstance(sample, Mapping):
        out: dict[str, Any] = {}
        for key, item in sample.items():
            out[key] = MAP if key in maps else schema_from_sample(item, maps=maps)
        return out
    if isinstance(sample, list) and sample and isinstance(sample[0], Mapping):
        return [schema_from_sample(sample[0], maps=maps)]
    return LEAF
