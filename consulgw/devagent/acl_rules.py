"""ACL policy rules, as Consul reads them: HCL (version 1 syntax) or JSON, then validated with Consul's error texts.

Consul decodes rules with HCL 1 (which also reads JSON) into a fixed structure::

    acl = "read"                          # also operator, keyring, mesh, peering
    service "web" { policy = "write" }    # service/_prefix, node/_prefix, key/_prefix, agent/_prefix,
    key_prefix "app/" { policy = "list" } #   session/_prefix, event/_prefix, query/_prefix

Access levels are ``deny``, ``read`` and ``write`` (case-insensitive); ``list`` is allowed for ``key`` rules only.
Unknown keys are ignored, as HCL's decoder ignores them. A syntax error is reported as Consul does,
``Failed to parse ACL rules: At LINE:COL: ...``, naming what was found there.

This module parses the small HCL subset policies use itself rather than depending on an HCL library: Consul speaks
HCL 1, the Python HCL parsers speak HCL 2 (which reads some HCL 1 documents differently and not JSON), and their
errors do not name the line and the value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SCALAR_KINDS = ("acl", "keyring", "operator", "mesh", "peering")
# rule kind -> (Go struct name, its label field) for Consul's ``%#v`` rendering in validation errors
BLOCK_KINDS: dict[str, tuple[str, str]] = {
    "agent": ("AgentRule", "Node"),
    "agent_prefix": ("AgentRule", "Node"),
    "event": ("EventRule", "Event"),
    "event_prefix": ("EventRule", "Event"),
    "key": ("KeyRule", "Prefix"),
    "key_prefix": ("KeyRule", "Prefix"),
    "node": ("NodeRule", "Name"),
    "node_prefix": ("NodeRule", "Name"),
    "query": ("PreparedQueryRule", "Prefix"),
    "query_prefix": ("PreparedQueryRule", "Prefix"),
    "service": ("ServiceRule", "Name"),
    "service_prefix": ("ServiceRule", "Name"),
    "session": ("SessionRule", "Node"),
    "session_prefix": ("SessionRule", "Node"),
}
LEVELS = ("deny", "read", "list", "write")


class RulesError(ValueError):
    """Rules Consul would refuse; the message is Consul's text."""


@dataclass(frozen=True, slots=True)
class BlockRule:
    kind: str  # e.g. "key_prefix"
    label: str
    policy: str  # lower-cased access level
    intentions: str = ""  # service rules only


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    scalars: Mapping[str, str] = field(default_factory=dict)  # kind -> access level
    blocks: tuple[BlockRule, ...] = ()


EMPTY = Rules()


def parse_rules(text: str) -> Rules:
    """Parse and validate ``text``; raise RulesError with Consul's message."""
    if text == "":
        return EMPTY
    document = _decode(text)
    scalars: dict[str, str] = {}
    blocks: list[BlockRule] = []
    for key, value in document:
        if key in SCALAR_KINDS:
            if isinstance(value, str):
                scalars[key] = value
            continue
        if key not in BLOCK_KINDS:
            continue  # HCL's decoder ignores keys the structure does not have
        for label, body in _labelled(value):
            policy = body.get("policy")
            intentions = body.get("intentions")
            blocks.append(
                BlockRule(
                    kind=key,
                    label=label,
                    policy=policy if isinstance(policy, str) else "",
                    intentions=intentions if isinstance(intentions, str) and key.startswith("service") else "",
                )
            )
    for kind in SCALAR_KINDS:
        level = scalars.get(kind)
        if level is not None and level != "" and not _valid(level, allow_list=False):
            raise RulesError(f"Invalid {kind} policy: {_go_quote(level)}")
    for rule in blocks:
        allow_list = rule.kind in ("key", "key_prefix")
        if not _valid(rule.policy, allow_list=allow_list):
            raise RulesError(f"Invalid {rule.kind} policy: {go_rule(rule)}")
        if rule.intentions and not _valid(rule.intentions, allow_list=False):
            raise RulesError(f"Invalid {rule.kind} intentions policy: {go_rule(rule)}")
    return Rules(
        scalars={k: v.lower() for k, v in scalars.items() if v},
        blocks=tuple(
            BlockRule(kind=r.kind, label=r.label, policy=r.policy.lower(), intentions=r.intentions.lower())
            for r in blocks
        ),
    )


def _valid(level: str, *, allow_list: bool) -> bool:
    lowered = level.lower()
    return lowered in LEVELS and (allow_list or lowered != "list")


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def go_rule(rule: BlockRule) -> str:
    """The rule as Go's ``%#v`` prints Consul's rule struct pointer (used in its validation errors)."""
    struct, label_field = BLOCK_KINDS[rule.kind]
    parts = [f"{label_field}:{_go_quote(rule.label)}", f"Policy:{_go_quote(rule.policy)}"]
    if struct == "ServiceRule":
        parts.append(f"Intentions:{_go_quote(rule.intentions)}")
    if struct in ("KeyRule", "NodeRule", "ServiceRule"):
        parts.append("EnterpriseRule:acl.EnterpriseRule{}")
    return f"&acl.{struct}{{{', '.join(parts)}}}"


def _labelled(value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(label, body)`` of a block rule, in the shapes HCL and JSON allow for it."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, _Block):
            yield item.label, item.body
        elif isinstance(item, dict):
            for label, body in item.items():
                for one in body if isinstance(body, list) else [body]:
                    if isinstance(one, dict):
                        yield str(label), one


# ---- decoding -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Block:
    label: str
    body: dict[str, Any]


def _decode(text: str) -> list[tuple[str, Any]]:
    """Top-level ``(key, value)`` pairs in document order (a key may repeat)."""
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesError(f"Failed to parse ACL rules: At {exc.lineno}:{exc.colno}: {exc.msg}") from None
        if not isinstance(document, dict):
            raise RulesError("Failed to parse ACL rules: the JSON rules must be an object")
        return list(document.items())
    return _Parser(text).document()


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_\-.]*)
  | (?P<punct>[{}\[\]=,])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    line: int
    col: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if match is None:
            snippet = text[pos : pos + 20].split("\n")[0]
            if text[pos] == '"':
                raise RulesError(f"Failed to parse ACL rules: At {line}:{col}: unterminated string {snippet!r}")
            raise RulesError(f"Failed to parse ACL rules: At {line}:{col}: illegal char {text[pos]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind not in ("space", "newline", "comment"):
            out.append(_Tok(kind, value, line, col))
        newlines = value.count("\n")
        if newlines:
            line += newlines
            line_start = match.start() + value.rindex("\n") + 1
        pos = match.end()
    out.append(_Tok("eof", "", line, pos - line_start + 1))
    return out


def _unquote(token: _Tok) -> str:
    try:
        value = json.loads(token.text)
    except json.JSONDecodeError:
        raise RulesError(
            f"Failed to parse ACL rules: At {token.line}:{token.col}: invalid string {token.text}"
        ) from None
    return str(value)


class _Parser:
    """Recursive descent over HCL 1's object syntax: ``key = value``, ``key "label"... { ... }``, lists."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.pos = 0

    def _peek(self) -> _Tok:
        return self.toks[self.pos]

    def _next(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def _fail(self, tok: _Tok, expected: str) -> RulesError:
        found = "end of input" if tok.kind == "eof" else repr(tok.text)
        return RulesError(f"Failed to parse ACL rules: At {tok.line}:{tok.col}: expected {expected}, got {found}")

    def document(self) -> list[tuple[str, Any]]:
        items = self._items(closing="eof")
        return items

    def _items(self, *, closing: str) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = []
        while True:
            tok = self._peek()
            if (closing == "eof" and tok.kind == "eof") or (tok.kind == "punct" and tok.text == closing):
                return items
            if tok.text == ",":
                self._next()
                continue
            items.append(self._item())

    def _key(self) -> str:
        tok = self._next()
        if tok.kind == "ident":
            return tok.text
        if tok.kind == "string":
            return _unquote(tok)
        raise self._fail(tok, "a key")

    def _item(self) -> tuple[str, Any]:
        key = self._key()
        labels: list[str] = []
        while self._peek().kind == "string":
            labels.append(_unquote(self._next()))
        tok = self._peek()
        if tok.text == "=":
            self._next()
            value = self._value()
        elif tok.text == "{":
            value = self._object()
        else:
            raise self._fail(tok, f"'=' or '{{' after {key!r}")
        for label in reversed(labels):
            value = _Block(label, value) if isinstance(value, dict) else {label: value}
        return key, value

    def _object(self) -> dict[str, Any]:
        self._next()  # '{'
        items = self._items(closing="}")
        self._next()  # '}'
        body: dict[str, Any] = {}
        for key, value in items:
            if isinstance(value, _Block):
                existing = body.setdefault(key, [])
                if isinstance(existing, list):
                    existing.append(value)
            else:
                body[key] = value
        return body

    def _value(self) -> Any:
        tok = self._peek()
        if tok.kind == "string":
            self._next()
            return _unquote(tok)
        if tok.kind == "number":
            self._next()
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "ident" and tok.text in ("true", "false"):
            self._next()
            return tok.text == "true"
        if tok.text == "{":
            return self._object()
        if tok.text == "[":
            self._next()
            values: list[Any] = []
            while self._peek().text != "]":
                if self._peek().kind == "eof":
                    raise self._fail(self._peek(), "']'")
                values.append(self._value())
                if self._peek().text == ",":
                    self._next()
            self._next()
            return values
        raise self._fail(tok, "a value (a string, number, boolean, object or list)")
