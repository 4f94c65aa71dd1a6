"""KV JSON -> typed policy values. The only way a ServicePolicy or a Consumer is made from user input.

Two steps: the document is checked against the shipped JSON Schema (``schema.json``, draft 2020-12,
``additionalProperties: false`` everywhere, so a typo is an error rather than a silently ignored key), then converted
to the frozen model with the checks a schema cannot express: durations, JWT algorithms against the key material (the
HS/RS confusion attack is refused here, at configuration time), PEM keys that must load, header names, origins.

Every failure is a ``PolicyError`` whose message names the KV key, the JSON path and the offending value::

    consulgw/services/users: rate_limit.per: '10 s' is not a duration (time: unknown unit " s" in duration "10 s")

Values at secret paths are shown as ``'***'``: keys named like a credential (``secret``, ``password_hash``,
``api_key_sha256``, ``public_key``; ``consulgw.redaction.is_secret_name``) and the value of every header rule,
whatever the header is called (``X-Upstream-Auth: Bearer ...``). URLs (``jwks_url``) are shown without userinfo
and query. Objects and lists are described, never dumped; long values are truncated.
Whatever the input -- any JSON, any bytes, absurd nesting -- the result is a model or a PolicyError.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, cast

import jsonschema
import jsonschema.exceptions
import jwt.algorithms
import jwt.exceptions
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from consulgw.auth.claims import is_scope_token
from consulgw.auth.discovery import expected_issuer, same_issuer
from consulgw.duration import parse_go_duration
from consulgw.errors import PolicyError
from consulgw.model.balancing import HASH, IP_HASH, HashKey, LbAlgorithm, as_hash_key, as_lb
from consulgw.model.http import HOP_BY_HOP, IDENTITY_HEADERS
from consulgw.policy import jsonpath
from consulgw.policy.consumers import is_api_key_digest, parse_password_hash
from consulgw.policy.model import (
    COMPOSITE_SECTIONS,
    SPLIT_COOKIE,
    ApiKeyAuth,
    AuthPolicy,
    BasicAuth,
    BreakerPolicy,
    CacheKeyPolicy,
    CachePolicy,
    CompositeCall,
    CompositePolicy,
    Consumer,
    ConsumerRateLimit,
    CorsPolicy,
    FailoverPolicy,
    Fallback,
    FieldOps,
    HeaderPolicy,
    HeaderRules,
    IntrospectionAuth,
    JsonOps,
    JsonValue,
    JwtAuth,
    MirrorPolicy,
    MirrorTarget,
    OpenApiPolicy,
    PathTemplate,
    Placeholder,
    RateLimitPolicy,
    RequestTransform,
    ResponseTransform,
    Retries,
    ServicePolicy,
    SlowStartPolicy,
    SplitMatch,
    SplitPolicy,
    StickyPolicy,
    Subset,
    Text,
    Timeouts,
    TracingPolicy,
    TransformPolicy,
)
from consulgw.redaction import HIDDEN, is_secret_name, redact_url
from consulgw.routing.rules import parse_route

Path = tuple[str | int, ...]

MAX_DURATION = 7 * 24 * 3600.0  # a week: anything longer is a mistake (or an infinity smuggled in as 1e400)
MAX_CORS_MAX_AGE = 24 * 3600  # browsers cap preflight caching at 2h (Chromium) to 24h (Firefox)
_SHOWN_CHARS = 60

HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONSUMER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
# Headers a policy may not add, set or remove: connection management (hop-by-hop, RFC 9110 section 7.6.1) and
# framing, which the proxy owns.
FORBIDDEN_HEADERS = HOP_BY_HOP | {"host", "content-length"}
_ASYMMETRIC_KEY_SOURCES = ("public_key", "jwks_url", "discovery")
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class _Invalid(Exception):
    """A semantic check failed at ``path``; turned into a PolicyError naming the KV key."""

    def __init__(self, path: Path, reason: str, *, value: object = None, show_value: bool = True) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason
        self.value = value
        self.show_value = show_value


# --------------------------------------------------------------------------------------------------- public API


def parse_policy(raw: bytes | str | object, *, key: str) -> ServicePolicy:
    """Validate and convert one policy document (a service's, already merged with defaults, or the defaults).

    ``raw`` is the KV value (bytes or str of JSON) or an already decoded JSON value. ``key`` names the document in
    error messages (the full KV key, or a file name).
    """
    doc = decode_document(raw, key=key)
    _check_schema(doc, "policy", key)
    try:
        return _policy(cast(Mapping[str, Any], doc))
    except _Invalid as exc:
        raise PolicyError(_message(key, exc.path, exc.reason, exc.value, exc.show_value)) from None
    except RecursionError:
        raise PolicyError(f"{key}: the document is nested too deeply") from None


def parse_consumer(raw: bytes | str | object, *, key: str, name: str) -> Consumer:
    """Validate and convert one consumer document (``consulgw/consumers/<name>``)."""
    if not isinstance(name, str) or _CONSUMER_NAME.fullmatch(name) is None:
        raise PolicyError(
            f"{key}: consumer name {_show(name)} is not valid (letters, digits, '.', '_', '@', '-'; at most 128)"
        )
    doc = decode_document(raw, key=key)
    _check_schema(doc, "consumer", key)
    try:
        return _consumer(cast(Mapping[str, Any], doc), name)
    except _Invalid as exc:
        raise PolicyError(_message(key, exc.path, exc.reason, exc.value, exc.show_value)) from None


def decode_document(raw: bytes | str | object, *, key: str) -> object:
    """Decode KV bytes/str into a JSON value (objects as dicts); other values are returned as they are.

    Rejects non-UTF-8 bytes, invalid JSON, NaN/Infinity, duplicate object keys and absurd nesting.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{key}: the value is not UTF-8 text (bad byte at offset {exc.start})") from None
    elif isinstance(raw, str):
        text = raw
    else:
        return raw
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise PolicyError(f"{key}: the value is empty (expected a JSON object)")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise PolicyError(f"{key}: {exc.name!r} appears twice in one object (the second would silently win)") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{key}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PolicyError(f"{key}: the document is nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with more digits than Python converts
        raise PolicyError(f"{key}: not valid JSON: {_truncate(str(exc), 120)}") from None


def merge_documents(base: object, override: object) -> object:
    """Deep merge of JSON values: objects merge key by key (``override`` wins); lists, scalars and null replace."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged: dict[object, object] = dict(base)
        for name, value in override.items():
            merged[name] = merge_documents(base[name], value) if name in base else value
        return merged
    return override


def valid_header_name(name: str) -> bool:
    return HEADER_NAME.fullmatch(name) is not None


def valid_service_name(name: str) -> bool:
    """A KV-addressable service name: non-empty, no slash, no whitespace or control characters."""
    return 0 < len(name) <= 256 and "/" not in name and name.isprintable() and not any(c.isspace() for c in name)


def valid_consumer_name(name: str) -> bool:
    return _CONSUMER_NAME.fullmatch(name) is not None


def jwt_algorithms() -> frozenset[str]:
    """Algorithms a policy may name: PyJWT's supported set, without ``none``."""
    return frozenset(jwt.algorithms.get_default_algorithms()) - {"none"}


# ---------------------------------------------------------------------------------------------- decoding, schema


class _DuplicateKey(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateKey(name)
        result[name] = value
    return result


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("consulgw.policy").joinpath("schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = dict(_schema())
    schema.pop("anyOf", None)
    schema["$ref"] = f"#/$defs/{kind}"
    return jsonschema.Draft202012Validator(schema)


def _check_schema(doc: object, kind: str, key: str) -> None:
    try:
        errors = list(_validator(kind).iter_errors(cast(Any, doc)))
    except RecursionError:
        raise PolicyError(f"{key}: the document is nested too deeply") from None
    if not errors:
        return
    errors.sort(key=lambda e: (_path_text(tuple(e.absolute_path)), str(e.validator)))
    first = _describe(errors[0])
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise PolicyError(_message(key, *first) + more)


_TYPE_WORDS = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "object": "an object",
    "array": "a list",
    "boolean": "true or false",
    "null": "null",
}


def _describe(error: jsonschema.exceptions.ValidationError) -> tuple[Path, str, object, bool]:
    """(path, reason, value, show_value) for one schema error, in our words (jsonschema's would echo secrets)."""
    path: Path = tuple(error.absolute_path)
    validator, instance = str(error.validator), error.instance
    expected: Any = error.validator_value
    if "propertyNames" in error.relative_schema_path:
        return (*path, str(instance)), "is not a valid header name", None, False
    if validator == "additionalProperties" and isinstance(instance, Mapping):
        properties = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
        allowed = sorted(str(p) for p in properties)
        extras = sorted(str(k) for k in instance if k not in properties)
        name = extras[0] if extras else "?"
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return (*path, name), f"unknown key ({hint}allowed: {', '.join(allowed)})", None, False
    if validator == "required" and isinstance(instance, Mapping) and isinstance(expected, list):
        missing = [str(r) for r in expected if r not in instance]
        return path, f"missing required key {missing[0]!r}" if missing else "missing a required key", None, False
    if validator == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        if {"string", "number"} <= set(types):
            return (
                path,
                "is not a duration (use a string such as '2s' or '1m30s', or a number of seconds)",
                instance,
                True,
            )
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in types)
        return path, f"is not {words}", instance, True
    if validator == "enum":
        choices = ", ".join("null" if c is None else str(c) for c in expected)
        return path, f"is not one of: {choices}", instance, True
    if validator == "const":
        return path, f"must be {expected!r}", instance, True
    if validator == "minimum":
        return path, f"must be at least {expected}", instance, True
    if validator == "maximum":
        return path, f"must be at most {expected}", instance, True
    if validator == "minLength":
        return path, "must not be empty", instance, True
    if validator == "maxLength":
        return path, f"is too long (at most {expected} characters)", instance, True
    if validator == "minItems":
        return path, "must not be empty", instance, True
    if validator == "minProperties":
        return path, "must not be empty", None, False
    if validator == "maxProperties":
        return path, f"has too many entries (at most {expected})", None, False
    if validator == "pattern":
        return path, "is not a SHA-256 hex digest (64 hex characters)", instance, True
    return path, f"is not valid ({validator})", instance, True


# ------------------------------------------------------------------------------------------------------ messages


def _message(key: str, path: Path, reason: str, value: object, show_value: bool) -> str:
    where = _path_text(path) or "(document)"
    if not show_value:
        return f"{key}: {where}: {reason}"
    if _is_secret_path(path) and not isinstance(value, Mapping | list) and not (path and value == path[-1]):
        shown = repr(HIDDEN)  # (a refused header *name* is the path's last part: showing it again reveals nothing)
    elif isinstance(value, str) and _is_url_path(path):
        shown = _show(redact_url(value))
    else:
        shown = _show(value)
    return f"{key}: {where}: {shown} {reason}"


def _path_text(path: Iterable[object]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = str(part)
            if not name.isprintable() or not name:  # keep the message on one line and the key visible
                name = repr(name)
            text += ("." if text else "") + _truncate(name, 64)
    return text


def _is_secret_path(path: Path) -> bool:
    """A credential's place: a key named like one (``consulgw.redaction``), or the value of any header rule."""
    return _is_header_value_path(path) or any(isinstance(part, str) and is_secret_name(part) for part in path)


def _is_header_value_path(path: Path) -> bool:
    """``headers.request.set.<name>``, ``headers.response.add.<name>``, ``circuit_breaker.fallback.headers.<name>``
    and anything below: a header's value may be a credential whatever the header is called."""
    if len(path) >= 4 and path[0] == "headers" and path[2] in ("add", "set"):
        return True
    return len(path) >= 4 and path[:3] == ("circuit_breaker", "fallback", "headers")


def _is_url_path(path: Path) -> bool:
    return bool(path) and isinstance(path[-1], str) and path[-1].lower().endswith("url")


def _show(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(_truncate(value, _SHOWN_CHARS))
    return _truncate(repr(value), _SHOWN_CHARS)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


# ------------------------------------------------------------------------------------------ semantic conversion


def _duration(path: Path, value: object, *, positive: bool = True, maximum: float = MAX_DURATION) -> float:
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise _Invalid(path, "is not a duration (too long)", value=value)
        try:
            seconds = parse_go_duration(text) / 1e9
        except ValueError as exc:
            raise _Invalid(path, f"is not a duration ({exc})", value=value) from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise _Invalid(path, "is not a duration (use a string such as '2s' or '1m30s')", value=value)
    if math.isnan(seconds) or seconds < 0 or (positive and seconds == 0):
        raise _Invalid(path, "must be greater than zero" if positive else "must not be negative", value=value)
    if seconds > maximum:
        raise _Invalid(path, f"is too long (at most {maximum:g}s)", value=value)
    return seconds


def _header_name(path: Path, name: str, *, policy_owned: bool = True) -> str:
    if not valid_header_name(name):
        raise _Invalid(path, "is not a valid header name", value=name)
    if policy_owned and name.lower() in FORBIDDEN_HEADERS:
        raise _Invalid(
            path,
            "cannot be changed by a policy (hop-by-hop, Host and framing headers belong to the proxy)",
            value=name,
        )
    return name


def _header_value(path: Path, value: str) -> str:
    if _BAD_HEADER_VALUE.search(value):
        raise _Invalid(path, "contains control characters (CR, LF, NUL ...)", value=value)
    return value


def _unique(items: Iterable[str], *, fold: Callable[[str], str] = str.lower) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if fold(item) not in seen:
            seen.add(fold(item))
            out.append(item)
    return tuple(out)


def _policy(doc: Mapping[str, Any]) -> ServicePolicy:
    lb, lb_key = _lb(doc.get("lb"))
    timeouts = Timeouts()
    if "timeouts" in doc:
        t = doc["timeouts"]
        timeouts = Timeouts(
            connect=_duration(("timeouts", "connect"), t["connect"], maximum=3600) if "connect" in t else 2.0,
            read=_duration(("timeouts", "read"), t["read"], maximum=24 * 3600) if "read" in t else 30.0,
        )
    retries = Retries()
    if "retries" in doc:
        r = doc["retries"]
        retries = Retries(
            attempts=int(r.get("attempts", 1)),
            on=frozenset(r["on"]) if "on" in r else Retries().on,
        )
    policy = ServicePolicy(
        lb=lb,
        timeouts=timeouts,
        retries=retries,
        auth=_auth(doc["auth"]) if doc.get("auth") is not None else None,
        rate_limit=_rate_limit(doc["rate_limit"]) if doc.get("rate_limit") is not None else None,
        circuit_breaker=_breaker(doc["circuit_breaker"]) if doc.get("circuit_breaker") is not None else None,
        cors=_cors(doc["cors"]) if doc.get("cors") is not None else None,
        headers=_headers(doc.get("headers") or {}),
        max_body_bytes=int(doc["max_body_bytes"]) if doc.get("max_body_bytes") is not None else None,
        buffer_request=bool((doc.get("buffering") or {}).get("request", True)),
        max_in_flight=int(doc["max_in_flight"]) if doc.get("max_in_flight") is not None else None,
        openapi=_openapi(doc["openapi"]) if doc.get("openapi") is not None else OpenApiPolicy(),
        tracing=_tracing(doc["tracing"]) if doc.get("tracing") is not None else TracingPolicy(),
        cache=_cache(doc["cache"]) if doc.get("cache") is not None else None,
        transform=(
            _transform(doc["transform"], authenticated=doc.get("auth") is not None)
            if doc.get("transform") is not None
            else None
        ),
        **_traffic(doc, lb_key),
    )
    if policy.cache is not None and policy.transform is not None:
        _check_cached_transform(policy.cache, policy.transform)
    return policy


# -- openapi ---------------------------------------------------------------------------------------------------


def _openapi(doc: Mapping[str, Any]) -> OpenApiPolicy:
    defaults = OpenApiPolicy()
    path = doc.get("path")
    if path is not None and (
        not path.startswith("/") or "#" in path or any(c.isspace() or not c.isprintable() for c in path)
    ):
        raise _Invalid(("openapi", "path"), "must be a path on the instance, such as '/openapi.json'", value=path)
    return OpenApiPolicy(
        path=path,
        include=bool(doc.get("include", True)),
        refresh=_duration(("openapi", "refresh"), doc["refresh"], maximum=24 * 3600)
        if "refresh" in doc
        else defaults.refresh,
        max_bytes=int(doc.get("max_bytes", defaults.max_bytes)),
        timeout=_duration(("openapi", "timeout"), doc["timeout"], maximum=300)
        if "timeout" in doc
        else defaults.timeout,
    )


# -- tracing -------------------------------------------------------------------------------------------------


def _tracing(doc: Mapping[str, Any]) -> TracingPolicy:
    ratio = doc.get("sample_ratio")
    capture = doc.get("capture_headers") or {}
    return TracingPolicy(
        sample_ratio=float(ratio) if ratio is not None else None,
        capture_request=_captured(capture.get("request", ()), "request"),
        capture_response=_captured(capture.get("response", ()), "response"),
    )


def _captured(names: Sequence[str], side: str) -> tuple[str, ...]:
    """Header names to record on spans, lower-cased (as the attribute names carry them); credentials refused."""
    for index, name in enumerate(names):
        path: Path = ("tracing", "capture_headers", side, index)
        _header_name(path, name, policy_owned=False)
        if is_secret_name(name):
            raise _Invalid(path, "carries credentials and is never recorded in a trace", value=name)
    return _unique(name.lower() for name in names)


def _auth(doc: Mapping[str, Any]) -> AuthPolicy:
    kind = doc["type"]
    if kind == "api_key":
        return ApiKeyAuth(
            header=_header_name(("auth", "header"), doc.get("header", "X-API-Key")),
            required_scopes=_required_scopes(doc),
            hide_credentials=bool(doc.get("hide_credentials", False)),
        )
    if kind == "basic":
        realm = doc.get("realm", "consulgw")
        if '"' in realm or "\\" in realm or _BAD_HEADER_VALUE.search(realm):
            raise _Invalid(("auth", "realm"), "must not contain quotes, backslashes or control characters", value=realm)
        return BasicAuth(
            realm=realm,
            required_scopes=_required_scopes(doc),
            hide_credentials=bool(doc.get("hide_credentials", False)),
        )
    if kind == "introspection":
        return _introspection(doc)
    return _jwt(doc)


def _jwt(doc: Mapping[str, Any]) -> JwtAuth:
    supported = jwt_algorithms()
    for index, name in enumerate(doc["algorithms"]):
        if name.lower() == "none":
            raise _Invalid(("auth", "algorithms", index), "is never accepted (it means unsigned tokens)", value=name)
        if name not in supported:
            raise _Invalid(
                ("auth", "algorithms", index),
                f"is not a JWT algorithm (supported: {', '.join(sorted(supported))})",
                value=name,
            )
    algorithms = _unique(doc["algorithms"], fold=str)
    hmac_algs = [a for a in algorithms if a.startswith("HS")]
    public_algs = [a for a in algorithms if not a.startswith("HS")]
    if hmac_algs and public_algs:
        raise _Invalid(
            ("auth", "algorithms"),
            f"mixes HMAC ({', '.join(hmac_algs)}) with public-key algorithms ({', '.join(public_algs)}); "
            "one service accepts one family, which is what stops HS/RS key-confusion attacks",
            show_value=False,
        )
    secret = doc.get("secret")
    public_key = doc.get("public_key")
    jwks_url = doc.get("jwks_url")
    discovery = doc.get("discovery")
    if hmac_algs:
        for source in _ASYMMETRIC_KEY_SOURCES:
            if doc.get(source) is not None:
                raise _Invalid(
                    ("auth", source),
                    f"is not allowed with {', '.join(hmac_algs)}: HMAC algorithms verify with 'secret' only",
                    show_value=False,
                )
        if secret is None:
            raise _Invalid(("auth",), f"{', '.join(hmac_algs)} needs 'secret' (the shared HMAC key)", show_value=False)
        _check_secret(secret, hmac_algs)
    else:
        if secret is not None:
            raise _Invalid(
                ("auth", "secret"),
                f"is not allowed with {', '.join(public_algs)}: give 'public_key' (PEM), 'jwks_url' or 'discovery'",
                show_value=False,
            )
        given = [name for name in _ASYMMETRIC_KEY_SOURCES if doc.get(name) is not None]
        if len(given) > 1:
            raise _Invalid(
                ("auth",),
                f"give one of 'public_key', 'jwks_url', 'discovery', not {' and '.join(given)}",
                show_value=False,
            )
        if not given:
            raise _Invalid(
                ("auth",),
                f"{', '.join(public_algs)} needs 'public_key' (PEM), 'jwks_url' or 'discovery'",
                show_value=False,
            )
        if public_key is not None:
            _check_public_key(public_key, public_algs)
        if jwks_url is not None:
            _check_url(("auth", "jwks_url"), jwks_url)
        if discovery is not None:
            _check_discovery(doc)
    audience = doc.get("audience")
    audiences: tuple[str, ...] = (
        () if audience is None else (audience,) if isinstance(audience, str) else tuple(audience)
    )
    return JwtAuth(
        algorithms=algorithms,
        secret=secret,
        public_key=public_key,
        jwks_url=jwks_url,
        discovery=discovery,
        issuer=doc.get("issuer"),
        audience=_unique(audiences, fold=str),
        required_scopes=_required_scopes(doc),
        leeway=_duration(("auth", "leeway"), doc["leeway"], positive=False, maximum=3600) if "leeway" in doc else 0.0,
        header=_header_name(("auth", "header"), doc.get("header", "Authorization")),
        hide_credentials=bool(doc.get("hide_credentials", False)),
    )


def _check_secret(secret: str, algorithms: Sequence[str]) -> None:
    available = jwt.algorithms.get_default_algorithms()
    for name in algorithms:
        algorithm = available[name]
        try:
            prepared = algorithm.prepare_key(secret)
        except (jwt.exceptions.PyJWTError, ValueError, TypeError):
            raise _Invalid(
                ("auth", "secret"), "looks like a PEM key or certificate, not an HMAC secret", value=secret
            ) from None
        weakness = algorithm.check_key_length(prepared)
        if weakness is not None:
            raise _Invalid(
                ("auth", "secret"),
                f"is too short for {name}: {len(prepared)} bytes, at least "
                f"{_hmac_min_bytes(name)} needed (RFC 7518 section 3.2)",
                value=secret,
            )


def _hmac_min_bytes(name: str) -> int:
    return {"HS256": 32, "HS384": 48, "HS512": 64}.get(name, 32)


def _check_public_key(pem: str, algorithms: Sequence[str]) -> None:
    path: Path = ("auth", "public_key")
    if "PRIVATE KEY" in pem:
        raise _Invalid(
            path,
            "holds a PRIVATE key: configure the public key only (and rotate this one, it has been stored in KV)",
            value=pem,
        )
    available = jwt.algorithms.get_default_algorithms()
    for name in algorithms:
        algorithm = available[name]
        try:
            key = algorithm.prepare_key(pem)
        except (jwt.exceptions.PyJWTError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise _Invalid(
                path, f"is not a PEM public key usable with {name} ({_truncate(str(exc), 100)})", value=pem
            ) from None
        if isinstance(key, _PRIVATE_KEY_TYPES):
            raise _Invalid(path, "holds a PRIVATE key: configure the public key only", value=pem)
        weakness = algorithm.check_key_length(key)
        if weakness is not None:
            raise _Invalid(path, f"is too weak for {name}: {weakness}", value=pem)


def _check_url(path: Path, url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise _Invalid(path, "is not a URL", value=url) from None
    if parts.scheme not in ("http", "https") or not host:
        raise _Invalid(path, "must be an http:// or https:// URL with a host", value=url)


# ------------------------------------------------------- auth: introspection, OIDC discovery, scopes (issue 11)

# Headers ``claims_to_headers`` may not fill: the gateway sets them itself (identity after auth, client address and
# forwarding, request id, trace context) or they carry credentials; Content-* would change how the body is read.
_GATEWAY_OWNED_HEADERS = frozenset(
    {name.lower() for name in (*IDENTITY_HEADERS, "Forwarded", "X-Real-IP")}  # X-Forwarded-*: a rule of its own
    | {"x-request-id", "via", "authorization", "proxy-authorization", "cookie", "traceparent", "tracestate", "baggage"}
)
_TOKEN_TYPE_HINT = re.compile(r"[A-Za-z0-9_.:-]{1,256}")
MAX_INTROSPECTION_TIMEOUT = 60.0
MAX_CACHE_TTL = 24 * 3600.0


def _required_scopes(doc: Mapping[str, Any]) -> frozenset[str]:
    scopes: set[str] = set()
    for index, scope in enumerate(doc.get("required_scopes", ())):
        if not is_scope_token(scope):
            raise _Invalid(
                ("auth", "required_scopes", index),
                "is not a scope (printable ASCII without spaces, quotes or backslashes; RFC 6749 section 3.3)",
                value=scope,
            )
        scopes.add(scope)
    return frozenset(scopes)


def _check_idp_url(path: Path, url: str) -> None:
    _check_url(path, url)
    if "@" in urllib.parse.urlsplit(url).netloc:
        raise _Invalid(
            path, "must not carry credentials in the URL (use client_id and client_secret)", show_value=False
        )


def _check_discovery(doc: Mapping[str, Any]) -> None:
    """``auth.discovery`` must be an http(s) URL whose issuer is known: named by the URL or by ``auth.issuer``."""
    url = doc["discovery"]
    path: Path = ("auth", "discovery")
    _check_idp_url(path, url)
    derived = expected_issuer(url)
    configured = doc.get("issuer")
    if configured is None and derived is None:
        raise _Invalid(
            path,
            "names no issuer (it is not an '<issuer>/.well-known/openid-configuration' or RFC 8414 URL); "
            "set 'issuer' to the issuer the metadata must state",
            value=url,
        )
    if configured is not None and derived is not None and not same_issuer(configured, derived):
        raise _Invalid(
            ("auth", "issuer"),
            f"differs from the issuer the discovery URL is for ({derived!r}); the provider's metadata must state "
            "the issuer it is served for (OpenID Connect Discovery section 4.3)",
            value=configured,
        )


def _introspection(doc: Mapping[str, Any]) -> IntrospectionAuth:
    endpoint = doc.get("endpoint")
    discovery = doc.get("discovery")
    if (endpoint is None) == (discovery is None):
        raise _Invalid(
            ("auth",),
            "give exactly one of 'endpoint' (the introspection URL) and 'discovery' (the provider's metadata URL)",
            show_value=False,
        )
    if endpoint is not None:
        _check_idp_url(("auth", "endpoint"), endpoint)
    else:
        _check_discovery(doc)
    client_id = doc["client_id"]
    if _BAD_HEADER_VALUE.search(client_id):
        raise _Invalid(("auth", "client_id"), "contains control characters (CR, LF, NUL ...)", value=client_id)
    if _BAD_HEADER_VALUE.search(doc["client_secret"]):
        raise _Invalid(("auth", "client_secret"), "contains control characters", show_value=False)
    hint = doc.get("token_type_hint", "access_token")
    if hint is not None and _TOKEN_TYPE_HINT.fullmatch(hint) is None:
        raise _Invalid(
            ("auth", "token_type_hint"), "is not a token type name such as 'access_token' (or null)", value=hint
        )
    audience = doc.get("audience")
    audiences: tuple[str, ...] = (
        () if audience is None else (audience,) if isinstance(audience, str) else tuple(audience)
    )
    header = _header_name(("auth", "header"), doc.get("header", "Authorization"))
    return IntrospectionAuth(
        endpoint=endpoint,
        discovery=discovery,
        client_id=client_id,
        client_secret=doc["client_secret"],
        client_auth=doc.get("client_auth", "basic"),
        token_type_hint=hint,
        timeout=(
            _duration(("auth", "timeout"), doc["timeout"], maximum=MAX_INTROSPECTION_TIMEOUT)
            if "timeout" in doc
            else 2.0
        ),
        cache_ttl=(
            _duration(("auth", "cache_ttl"), doc["cache_ttl"], positive=False, maximum=MAX_CACHE_TTL)
            if "cache_ttl" in doc
            else 60.0
        ),
        negative_cache_ttl=(
            _duration(("auth", "negative_cache_ttl"), doc["negative_cache_ttl"], positive=False, maximum=3600)
            if "negative_cache_ttl" in doc
            else 10.0
        ),
        cache=doc.get("cache", "memory"),
        cache_max_entries=int(doc.get("cache_max_entries", 10_000)),
        issuer=doc.get("issuer"),
        audience=_unique(audiences, fold=str),
        required_scopes=_required_scopes(doc),
        leeway=_duration(("auth", "leeway"), doc["leeway"], positive=False, maximum=3600) if "leeway" in doc else 0.0,
        claims_to_headers=_claims_to_headers(doc.get("claims_to_headers", {}), credential_header=header),
        header=header,
        hide_credentials=bool(doc.get("hide_credentials", False)),
    )


def _claims_to_headers(doc: Mapping[str, Any], *, credential_header: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, claim in doc.items():
        path: Path = ("auth", "claims_to_headers", name)
        _header_name(path, name)
        lowered = name.lower()
        if lowered in _GATEWAY_OWNED_HEADERS or lowered == credential_header.lower():
            raise _Invalid(
                path,
                "is set by the gateway itself (identity, client address, request id, trace context) or carries "
                "credentials; choose another header name",
                value=name,
            )
        if lowered.startswith(("x-forwarded-", "content-")):
            raise _Invalid(path, "is a forwarding or body header the proxy owns; choose another name", value=name)
        if lowered in seen:
            raise _Invalid(path, "is listed twice (header names are case-insensitive)", value=name)
        if _BAD_HEADER_VALUE.search(claim):
            raise _Invalid(path, "names a claim with control characters", value=claim)
        seen.add(lowered)
        pairs.append((name, claim))
    return tuple(pairs)


def _rate_limit(doc: Mapping[str, Any]) -> RateLimitPolicy:
    key = str(doc.get("key", "ip"))
    if key.startswith("header:"):
        name = key[len("header:") :]
        if not valid_header_name(name):
            raise _Invalid(("rate_limit", "key"), f"names {name!r}, which is not a valid header name", value=key)
        key = "header:" + name.lower()
    elif key not in ("ip", "consumer"):
        raise _Invalid(("rate_limit", "key"), "is not one of: ip, consumer, header:<name>", value=key)
    return RateLimitPolicy(
        requests=int(doc["requests"]),
        per=_duration(("rate_limit", "per"), doc["per"]),
        key=key,
        backend=doc.get("backend", "local"),
        on_backend_error=doc.get("on_backend_error", "allow"),
        burst=int(doc.get("burst", 0)),
    )


def _breaker(doc: Mapping[str, Any]) -> BreakerPolicy:
    defaults = BreakerPolicy()
    fallback: Fallback | None = None
    raw_fallback = doc.get("fallback")
    if raw_fallback is not None:
        content_type = raw_fallback.get("content_type", Fallback().content_type)
        _header_value(("circuit_breaker", "fallback", "content_type"), content_type)
        headers: list[tuple[str, str]] = []
        for name, value in raw_fallback.get("headers", {}).items():
            path: Path = ("circuit_breaker", "fallback", "headers", name)
            _header_name(path, name)
            if name.lower() == "content-type":
                raise _Invalid(path, "is set by 'content_type'", value=name)
            headers.append((name, _header_value(path, value)))
        fallback = Fallback(
            status=int(raw_fallback.get("status", 503)),
            body=raw_fallback.get("body", ""),
            content_type=content_type,
            headers=tuple(headers),
        )
    return BreakerPolicy(
        failure_threshold=int(doc.get("failure_threshold", defaults.failure_threshold)),
        recovery_timeout=(
            _duration(("circuit_breaker", "recovery_timeout"), doc["recovery_timeout"])
            if "recovery_timeout" in doc
            else defaults.recovery_timeout
        ),
        failure_statuses=(
            frozenset(int(s) for s in doc["failure_statuses"])
            if "failure_statuses" in doc
            else defaults.failure_statuses
        ),
        fallback=fallback,
    )


_ORIGIN = re.compile(
    r"(https?)://(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?"
)
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalize_origin(path: Path, origin: str) -> str:
    """Check one configured origin and return it as browsers serialize it (lower case, default port dropped).

    Accepted: ``*``, ``scheme://host[:port]``, and ``scheme://*.domain[:port]`` for any subdomain of ``domain``.
    """
    if origin == "*":
        return origin
    lowered = origin.lower()
    match = _ORIGIN.fullmatch(lowered)
    if match is None:
        hint = ""
        stripped = lowered.rstrip("/")
        if stripped != lowered and _ORIGIN.fullmatch(stripped):
            hint = f" (an origin has no path or trailing slash: did you mean {stripped!r}?)"
        elif lowered == "null":
            hint = " ('null' is sent by sandboxed documents and file: pages; allowing it lets any of them in)"
        raise _Invalid(path, "is not an origin such as 'https://app.example.com'" + hint, value=origin)
    port = match.group(7)
    if port is not None:
        if not 0 < int(port[1:]) < 65536:
            raise _Invalid(path, "has a port outside 1-65535", value=origin)
        if _DEFAULT_PORTS[match.group(1)] == port:
            lowered = lowered[: -len(port)]
    return lowered


def _cors(doc: Mapping[str, Any]) -> CorsPolicy:
    credentials = bool(doc.get("credentials", False))
    origins = _unique(normalize_origin(("cors", "origins", i), o) for i, o in enumerate(doc["origins"]))
    if "*" in origins and len(origins) > 1:
        raise _Invalid(
            ("cors", "origins"), "lists '*' with other origins; '*' alone allows every origin", show_value=False
        )
    if credentials and "*" in origins:
        raise _Invalid(
            ("cors", "credentials"),
            "cannot be combined with origins ['*']: browsers refuse credentialed responses for any origin; "
            "list the origins instead",
            value=True,
        )
    methods: list[str] = []
    for index, method in enumerate(doc.get("methods", CorsPolicy.__dataclass_fields__["methods"].default)):
        if method != "*" and not valid_header_name(method):
            raise _Invalid(("cors", "methods", index), "is not an HTTP method", value=method)
        methods.append(method.upper())
    allowed: list[str] = []
    for index, name in enumerate(doc.get("headers", ())):
        allowed.append(name if name == "*" else _header_name(("cors", "headers", index), name, policy_owned=False))
    exposed: list[str] = []
    for index, name in enumerate(doc.get("expose_headers", ())):
        if name == "*" and credentials:
            raise _Invalid(
                ("cors", "expose_headers", index),
                "means the literal header name '*' when credentials is true; list the headers",
                value=name,
            )
        exposed.append(
            name if name == "*" else _header_name(("cors", "expose_headers", index), name, policy_owned=False)
        )
    max_age: int | None = None
    if doc.get("max_age") is not None:
        max_age = math.ceil(_duration(("cors", "max_age"), doc["max_age"], positive=False, maximum=MAX_CORS_MAX_AGE))
    return CorsPolicy(
        origins=origins,
        methods=_unique(methods),
        headers=_unique(allowed),
        expose_headers=_unique(exposed),
        credentials=credentials,
        max_age=max_age,
    )


def _headers(doc: Mapping[str, Any]) -> HeaderPolicy:
    return HeaderPolicy(
        request=_header_rules(("headers", "request"), doc.get("request") or {}),
        response=_header_rules(("headers", "response"), doc.get("response") or {}),
    )


def _header_rules(path: Path, doc: Mapping[str, Any]) -> HeaderRules:
    def pairs(kind: str) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        for name, value in doc.get(kind, {}).items():
            where = (*path, kind, name)
            out.append((_header_name(where, name), _header_value(where, value)))
        return tuple(out)

    remove = tuple(_header_name((*path, "remove", i), name) for i, name in enumerate(doc.get("remove", ())))
    return HeaderRules(add=pairs("add"), set=pairs("set"), remove=_unique(remove))


def _consumer(doc: Mapping[str, Any], name: str) -> Consumer:
    digests: list[str] = []
    for index, digest in enumerate(doc.get("api_key_sha256", ())):
        lowered = digest.lower()
        if not is_api_key_digest(lowered):  # the schema's pattern already checked; kept for the model's invariant
            raise _Invalid(("api_key_sha256", index), "is not a SHA-256 hex digest", value=digest)
        digests.append(lowered)
    password_hash = doc.get("password_hash")
    if password_hash is not None and parse_password_hash(password_hash) is None:
        raise _Invalid(
            ("password_hash",),
            "is not a password hash made by `consulgw consumer add --password` (scrypt$n$r$p$salt$hash)",
            value=password_hash,
        )
    for index, scope in enumerate(doc.get("scopes", ())):
        if not is_scope_token(scope):
            raise _Invalid(
                ("scopes", index),
                "is not a scope (printable ASCII without spaces, quotes or backslashes; RFC 6749 section 3.3)",
                value=scope,
            )
    rate_limit = None
    raw_limit = doc.get("rate_limit")
    if raw_limit is not None:
        rate_limit = ConsumerRateLimit(
            requests=int(raw_limit["requests"]), per=_duration(("rate_limit", "per"), raw_limit["per"])
        )
    return Consumer(
        name=name,
        api_key_sha256=frozenset(digests),
        password_hash=password_hash,
        scopes=frozenset(doc.get("scopes", ())),
        rate_limit=rate_limit,
    )


# ------------------------------------------------------------------- placeholders (transform values, composite paths)

_PLACEHOLDER = re.compile(r"\{([a-z_]+)(?:\.([^{}]*))?\}")
_QUERY_NAME = re.compile(r"[^\x00-\x20\x7f&=#{}]{1,256}")
PLACEHOLDER_SET = "{sub}, {consumer}, {request_id}, {query.<name>}, {header.<name>}"


def _placeholder(path: Path, text: str) -> Placeholder:
    """``{sub}`` / ``{consumer}`` / ``{request_id}`` / ``{query.<name>}`` / ``{header.<name>}``, or _Invalid."""
    match = _PLACEHOLDER.fullmatch(text)
    kind, name = (match.group(1), match.group(2)) if match is not None else ("", None)
    if kind in ("sub", "consumer", "request_id") and name is None:
        return Placeholder(kind=kind)  # type: ignore[arg-type]  # narrowed by the test above
    if kind == "query" and name is not None:
        if _QUERY_NAME.fullmatch(name) is None:
            raise _Invalid(
                path, "names a query parameter that is empty or has spaces, '&', '=', '#' or braces", value=text
            )
        return Placeholder(kind="query", name=name)
    if kind == "header" and name is not None:
        if not valid_header_name(name):
            raise _Invalid(path, "names a header that is not a valid header name", value=text)
        lowered = name.lower()
        if is_secret_name(lowered) or lowered in _GATEWAY_OWNED_HEADERS:
            raise _Invalid(
                path,
                "reads a credential or a header the gateway sets itself; such values never go into paths or bodies "
                "(use {sub} or {consumer} for the verified identity)",
                value=text,
            )
        return Placeholder(kind="header", name=lowered)
    raise _Invalid(path, f"is not a placeholder (the closed set is {PLACEHOLDER_SET})", value=text)


def _looks_like_placeholder(text: str) -> bool:
    return len(text) > 2 and text.startswith("{") and text.endswith("}") and "{" not in text[1:-1]


def _text(path: Path, value: str) -> Text:
    """A constant, or a placeholder when the whole string is one (``"{sub}"``); ``"{subb}"`` is an error."""
    if _looks_like_placeholder(value):
        return _placeholder(path, value)
    return value


def _needs_identity(values: Iterable[object]) -> bool:
    return any(isinstance(v, Placeholder) and v.kind in ("sub", "consumer") for v in values)


# ------------------------------------------------------------------------------------------- cache (issue 10)

MAX_CACHE_WINDOW = 24 * 3600.0


def _cache(doc: Mapping[str, Any]) -> CachePolicy:
    defaults = CachePolicy()
    mode = doc.get("mode", defaults.mode)
    ttl = _duration(("cache", "ttl"), doc["ttl"], positive=False, maximum=MAX_CACHE_WINDOW) if "ttl" in doc else 60.0
    if mode == "override" and ttl == 0:
        raise _Invalid(
            ("cache", "ttl"),
            "must be greater than zero with mode 'override' (it is the only freshness)",
            value=doc["ttl"],
        )
    key_doc = doc.get("key") or {}
    query: Any = key_doc.get("query", "all")
    if isinstance(query, str):
        if query not in ("all", "none"):
            raise _Invalid(("cache", "key", "query"), "is not 'all', 'none' or a list of parameter names", value=query)
    else:
        for index, name in enumerate(query):
            if _QUERY_NAME.fullmatch(name) is None:
                raise _Invalid(("cache", "key", "query", index), "is not a query parameter name", value=name)
        query = tuple(sorted(set(query)))
    headers = tuple(
        _header_name(("cache", "key", "headers", i), name, policy_owned=False).lower()
        for i, name in enumerate(key_doc.get("headers", ()))
    )
    windows = {
        name: _duration(("cache", name), doc[name], positive=False, maximum=MAX_CACHE_WINDOW) if name in doc else 0.0
        for name in ("stale_while_revalidate", "stale_if_error")
    }
    return CachePolicy(
        backend=doc.get("backend", defaults.backend),
        mode=mode,
        ttl=ttl,
        methods=frozenset(doc.get("methods", defaults.methods)),
        statuses=frozenset(int(s) for s in doc["statuses"]) if "statuses" in doc else defaults.statuses,
        key=CacheKeyPolicy(
            query=query,
            headers=tuple(sorted(set(headers))),
            per_consumer=bool(key_doc.get("per_consumer", True)),
        ),
        max_body_bytes=int(doc.get("max_body_bytes", defaults.max_body_bytes)),
        stale_while_revalidate=windows["stale_while_revalidate"],
        stale_if_error=windows["stale_if_error"],
        on_backend_error=doc.get("on_backend_error", defaults.on_backend_error),
    )


# --------------------------------------------------------------------------------------- transform (issue 10)

# Headers a transform may not touch: what the proxy frames (hop-by-hop, Host, Content-Length), the identity the
# gateway sets after authentication, and Accept-Encoding (the gateway asks for unencoded answers on these routes).
_TRANSFORM_OWNED = frozenset({*(h.lower() for h in IDENTITY_HEADERS), "accept-encoding"})


def _transform_header(path: Path, name: str) -> str:
    _header_name(path, name)
    if name.lower() in _TRANSFORM_OWNED:
        raise _Invalid(
            path, "is set by the gateway on transformed routes (identity after auth, Accept-Encoding)", value=name
        )
    return name


def _query_name(path: Path, name: str) -> str:
    if _QUERY_NAME.fullmatch(name) is None:
        raise _Invalid(path, "is not a query parameter name (no spaces, '&', '=', '#' or braces)", value=name)
    return name


def _field_ops(path: Path, doc: Mapping[str, Any], name_check: Callable[[Path, str], str]) -> FieldOps:
    remove = tuple(name_check((*path, "remove", i), n) for i, n in enumerate(doc.get("remove", ())))
    rename = tuple(
        (name_check((*path, "rename", old), old), name_check((*path, "rename", old), new))
        for old, new in doc.get("rename", {}).items()
    )

    def values(kind: str) -> tuple[tuple[str, Text], ...]:
        out: list[tuple[str, Text]] = []
        for name, value in doc.get(kind, {}).items():
            where = (*path, kind, name)
            name_check(where, name)
            if _BAD_HEADER_VALUE.search(value):
                raise _Invalid(where, "contains control characters (CR, LF, NUL ...)", value=value)
            out.append((name, _text(where, value)))
        return tuple(out)

    return FieldOps(remove=remove, rename=rename, set=values("set"), add=values("add"))


def _json_path(path: Path, text: str, *, leaf: bool = False) -> jsonpath.Path:
    try:
        parsed = jsonpath.parse_path(text)
    except ValueError as exc:
        raise _Invalid(path, f"is not a JSON path ({exc})", value=text) from None
    if leaf and parsed[-1] is jsonpath.EVERY:
        raise _Invalid(path, "must end with a key, not '[*]'", value=text)
    return parsed


def _json_value(path: Path, value: object) -> JsonValue:
    if isinstance(value, str) and _looks_like_placeholder(value):
        return JsonValue(placeholder=_placeholder(path, value))
    return JsonValue(json=json.dumps(value, separators=(",", ":")))


def _json_ops(path: Path, doc: Mapping[str, Any], *, response: bool) -> JsonOps:
    remove = tuple(_json_path((*path, "remove", i), p) for i, p in enumerate(doc.get("remove", ())))
    rename: list[tuple[jsonpath.Path, str]] = []
    for old, new in doc.get("rename", {}).items():
        where = (*path, "rename", old)
        if not new.isprintable():
            raise _Invalid(where, "names a key with control characters", value=new)
        rename.append((_json_path(where, old, leaf=True), new))
    assignments = tuple(
        (_json_path((*path, "set", p), p, leaf=True), _json_value((*path, "set", p), v))
        for p, v in doc.get("set", {}).items()
    )
    allow: tuple[jsonpath.Path, ...] | None = None
    if response and doc.get("allow") is not None:
        allow = tuple(_json_path((*path, "allow", i), p) for i, p in enumerate(doc["allow"]))
    return JsonOps(remove=remove, rename=tuple(rename), set=assignments, allow=allow)


def _prefix(path: Path, text: str) -> str:
    if not text.startswith("/") or not text.isascii() or any(c in text for c in "?# ") or not text.isprintable():
        raise _Invalid(path, "must be a path such as '/v1' (ASCII, no spaces, '?' or '#')", value=text)
    if any(segment in (".", "..") for segment in text.split("/")):
        raise _Invalid(path, "contains a '.' or '..' segment", value=text)
    return text.rstrip("/") or "/"


def _check_cached_transform(cache: CachePolicy, transform: TransformPolicy) -> None:
    """The cache stores transformed answers: a response ``set`` from a placeholder must be part of the cache key, or
    every later caller would get the value of the request that filled the cache."""
    for path, value in transform.response.json.set:
        holder = value.placeholder
        if holder is None:
            continue
        where: Path = ("transform", "response", "json", "set", jsonpath.show_path(path))
        key = cache.key
        if holder.kind == "request_id":
            problem = "cannot be cached: every answer from the cache would carry the id of the request that filled it"
        elif holder.kind in ("sub", "consumer") and not key.per_consumer:
            problem = "needs cache.key.per_consumer true (the cached answer depends on the caller)"
        elif holder.kind == "header" and holder.name not in key.headers:
            problem = f"needs {holder.name!r} in cache.key.headers (the cached answer depends on it)"
        elif holder.kind == "query" and key.query != "all" and (key.query == "none" or holder.name not in key.query):
            problem = f"needs the query parameter {holder.name!r} in cache.key.query (the cached answer depends on it)"
        else:
            continue
        raise _Invalid(where, problem, value=holder.text)


def _transform(doc: Mapping[str, Any], *, authenticated: bool) -> TransformPolicy:
    defaults = TransformPolicy()
    request = doc.get("request") or {}
    response = doc.get("response") or {}
    where: Path = ("transform", "request")
    prefix = request.get("path_prefix")
    transform = TransformPolicy(
        request=RequestTransform(
            headers=_field_ops((*where, "headers"), request.get("headers") or {}, _transform_header),
            query=_field_ops((*where, "query"), request.get("query") or {}, _query_name),
            path_prefix=(
                (
                    _prefix((*where, "path_prefix", "from"), prefix["from"]),
                    _prefix((*where, "path_prefix", "to"), prefix["to"]),
                )
                if prefix is not None
                else None
            ),
            json=_json_ops((*where, "json"), request.get("json") or {}, response=False),
        ),
        response=ResponseTransform(
            json=_json_ops(("transform", "response", "json"), response.get("json") or {}, response=True),
            statuses=frozenset(int(s) for s in response["statuses"]) if "statuses" in response else None,
        ),
        max_body_bytes=int(doc.get("max_body_bytes", defaults.max_body_bytes)),
        on_error=doc.get("on_error", defaults.on_error),
    )
    if not authenticated:
        req, res = transform.request, transform.response
        values: list[object] = [v for _, v in (*req.headers.set, *req.headers.add, *req.query.set, *req.query.add)]
        values += [v.placeholder for _, v in (*req.json.set, *res.json.set)]
        if _needs_identity(values):
            raise _Invalid(
                ("transform",),
                "uses {sub} or {consumer}, but the policy has no auth section to verify who the caller is",
                show_value=False,
            )
    return transform


# --------------------------------------------------------------------------------------- composites (issue 10)

_COMPOSITE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_.-]{0,62}[a-z0-9])?")
_CALL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
COMPOSITE_PREFIX = "composite:"
MAX_COMPOSITE_TIMEOUT = 300.0


def composite_label(name: str) -> str:
    """The route table's and metrics' name for a composite: never a Consul service's name."""
    return COMPOSITE_PREFIX + name


def parse_composite(
    raw: bytes | str | object, *, key: str, name: str, defaults: Mapping[str, object] | None = None
) -> CompositePolicy:
    """Validate and convert ``consulgw/composites/<name>``. Its policy sections are merged onto the same sections of
    ``defaults`` (the defaults document), exactly like a service's; the defaults' other sections do not apply."""
    if not isinstance(name, str) or _COMPOSITE_NAME.fullmatch(name) is None:
        raise PolicyError(
            f"{key}: composite name {_show(name)} is not valid (lower-case letters, digits, '-', '_', '.'; at most 64)"
        )
    doc = decode_document(raw, key=key)
    if isinstance(doc, Mapping) and defaults:
        inherited = {k: v for k, v in defaults.items() if k in COMPOSITE_SECTIONS}
        doc = merge_documents(inherited, doc)
    _check_schema(doc, "composite", key)
    try:
        return _composite(cast(Mapping[str, Any], doc), name=name, key=key)
    except _Invalid as exc:
        raise PolicyError(_message(key, exc.path, exc.reason, exc.value, exc.show_value)) from None
    except RecursionError:
        raise PolicyError(f"{key}: the document is nested too deeply") from None


def _path_template(path: Path, text: str) -> PathTemplate:
    if not text.startswith("/"):
        raise _Invalid(path, "must start with '/' (a path on the service, with an optional ?query)", value=text)
    if "#" in text:
        raise _Invalid(path, "must not contain '#'", value=text)
    parts: list[Text] = []
    position = 0
    for match in re.finditer(r"\{[^{}]*\}", text):
        literal = text[position : match.start()]
        if literal:
            parts.append(_path_literal(path, literal, text))
        parts.append(_placeholder(path, match.group(0)))
        position = match.end()
    if text[position:]:
        parts.append(_path_literal(path, text[position:], text))
    return PathTemplate(text=text, parts=tuple(parts))


def _path_literal(path: Path, literal: str, text: str) -> str:
    if _PATH_CHARS.fullmatch(literal) is None:
        raise _Invalid(
            path,
            "has characters a request-target cannot carry (spaces, braces outside a placeholder, non-ASCII: "
            "percent-encode them)",
            value=text,
        )
    if any(segment in (".", "..") for segment in literal.split("?", 1)[0].split("/")):
        raise _Invalid(path, "contains a '.' or '..' segment", value=text)
    return literal


def _composite(doc: Mapping[str, Any], *, name: str, key: str) -> CompositePolicy:
    label = composite_label(name)
    methods = sorted({m.upper() for m in doc.get("methods", ["GET"])})
    route_text = doc["route"]
    if any(c.isspace() for c in route_text):
        raise _Invalid(
            ("route",), "is [host]/path without spaces or options (methods go in 'methods')", value=route_text
        )
    try:
        route = parse_route(label, key, f"{route_text} methods={','.join(methods)}")
    except ValueError as exc:
        raise _Invalid(("route",), f"is not a route ({exc})", value=route_text) from None
    timeout = _duration(("timeout",), doc["timeout"], maximum=MAX_COMPOSITE_TIMEOUT) if "timeout" in doc else 5.0
    merge = doc.get("merge", "nest")
    read = (doc.get("timeouts") or {}).get("read")
    call_default = _duration(("timeouts", "read"), read, maximum=MAX_COMPOSITE_TIMEOUT) if read is not None else None
    calls: list[CompositeCall] = []
    for call_name, call in doc["calls"].items():
        where: Path = ("calls", call_name)
        if _CALL_NAME.fullmatch(call_name) is None:
            raise _Invalid(
                where, "is not a call name (letters, digits, '_', '-'; starts with a letter or '_')", show_value=False
            )
        service = call["service"]
        if "/" in service or not service.isprintable() or any(c.isspace() for c in service):
            raise _Invalid((*where, "service"), "is not a Consul service name", value=service)
        required = bool(call.get("required", False))
        default: str | None = None
        if "default" in call:
            if required:
                raise _Invalid(
                    (*where, "default"),
                    "is never used: a required call that fails fails the composite",
                    show_value=False,
                )
            if merge == "shallow" and not isinstance(call["default"], dict):
                raise _Invalid(
                    (*where, "default"),
                    "must be an object with merge 'shallow' (its keys are merged)",
                    value=call["default"],
                )
            default = json.dumps(call["default"], separators=(",", ":"))
        calls.append(
            CompositeCall(
                name=call_name,
                service=service,
                path=_path_template((*where, "path"), call["path"]),
                required=required,
                timeout=_duration((*where, "timeout"), call["timeout"], maximum=MAX_COMPOSITE_TIMEOUT)
                if "timeout" in call
                else call_default,
                default=default,
            )
        )
    forward: list[str] = []
    for index, header in enumerate(doc.get("forward_headers", ())):
        _header_name(("forward_headers", index), header)
        if header.lower() in _GATEWAY_OWNED_HEADERS - {"authorization", "cookie", "proxy-authorization"}:
            raise _Invalid(
                ("forward_headers", index),
                "is set by the gateway itself (identity, forwarding, request id)",
                value=header,
            )
        forward.append(header)
    sections = {section: doc[section] for section in COMPOSITE_SECTIONS if section in doc}
    policy = _policy(sections)
    if policy.auth is None and _needs_identity(p for c in calls for p in c.path.parts):
        raise _Invalid(
            ("calls",), "a path uses {sub} or {consumer}, but the composite has no auth section", show_value=False
        )
    return CompositePolicy(
        name=name,
        route=route,
        timeout=timeout,
        calls=tuple(calls),
        merge=merge,
        forward_headers=_unique(forward),
        partial_status=int(doc.get("partial_status", 200)),
        max_body_bytes=int(doc.get("max_body_bytes", 1024 * 1024)),
        policy=policy,
    )


# ------------------------------------------- traffic: lb object, subsets, split, sticky, slow start, mirror (issue 9)

_SUBSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_COOKIE_NAME = HEADER_NAME  # RFC 6265 section 4.1.1: cookie-name is an HTTP token
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")  # RFC 6265 cookie-octet
_METHOD = HEADER_NAME
MAX_SLOW_START = 3600.0
MAX_MIRROR_TIMEOUT = 60.0
MAX_COOKIE_AGE = 400 * 24 * 3600.0  # RFC 6265bis caps Max-Age at 400 days
_LB_CHOICES = "null, round_robin, least_conn, ip_hash"
_SPLIT_HASHES = "cookie, consumer, ip, header:<name>, none"


def _lb(value: object) -> tuple[LbAlgorithm | None, HashKey | None]:
    """``lb`` as a name (``"least_conn"``) or an object (``{"type": "hash", "key": "header:X-User-ID"}``)."""
    if value is None:
        return None, None
    if isinstance(value, str):
        name = as_lb(value)
        if name is None:
            raise _Invalid(
                ("lb",),
                f'is not one of: {_LB_CHOICES} (or an object such as {{"type": "hash", "key": "ip"}})',
                value=value,
            )
        return name, None
    doc = cast(Mapping[str, Any], value)
    kind = doc["type"]
    algorithm = IP_HASH if kind == HASH else as_lb(kind)
    if algorithm is None:  # the schema's enum allows nothing else; kept for the type checker
        raise _Invalid(("lb", "type"), f"is not one of: {_LB_CHOICES}, hash", value=kind)
    if "key" not in doc:
        return algorithm, None
    if algorithm != IP_HASH:
        raise _Invalid(
            ("lb", "key"), f"is only used by the hash balancer (type 'hash'), not by {kind!r}", value=doc["key"]
        )
    key = _hash_key(("lb", "key"), doc["key"], cookies=True)
    return algorithm, None if key is None or key.kind == "ip" else key


def _hash_key(path: Path, text: str, *, cookies: bool) -> HashKey | None:
    key = as_hash_key(text)
    forms = "ip, consumer, header:<name>, cookie:<name>" if cookies else "ip, consumer, header:<name>"
    if key is None or (key.kind == "cookie" and not cookies):
        raise _Invalid(path, f"is not one of: {forms}", value=text)
    if key.kind == "header" and not valid_header_name(key.name):
        raise _Invalid(path, f"names {key.name!r}, which is not a valid header name", value=text)
    if key.kind == "cookie" and _COOKIE_NAME.fullmatch(key.name) is None:
        raise _Invalid(path, f"names {key.name!r}, which is not a valid cookie name", value=text)
    return key


def _traffic(doc: Mapping[str, Any], lb_key: HashKey | None) -> dict[str, Any]:
    """The traffic sections, checked against each other (names of subsets must exist)."""
    subsets = _subsets(doc.get("subsets") or {})
    names = frozenset(s.name for s in subsets)
    return {
        "lb_key": lb_key,
        "subsets": subsets,
        "split": _split(doc["split"], names) if doc.get("split") is not None else None,
        "sticky": _sticky(doc["sticky"]) if doc.get("sticky") is not None else None,
        "slow_start": (
            SlowStartPolicy(
                window=_duration(("slow_start", "window"), doc["slow_start"]["window"], maximum=MAX_SLOW_START)
            )
            if doc.get("slow_start") is not None
            else None
        ),
        "mirror": _mirror(doc["mirror"], names) if doc.get("mirror") is not None else None,
        "failover": _failover(doc["failover"]) if doc.get("failover") is not None else None,
    }


_DATACENTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_FAILBACK = 24 * 3600.0


def _failover(doc: Mapping[str, Any]) -> FailoverPolicy:
    """``failover`` (issue 9): the datacenters in order, when to fail over, and when to come back."""
    datacenters: list[str] = []
    for index, name in enumerate(doc["datacenters"]):
        if _DATACENTER.fullmatch(name) is None:
            raise _Invalid(
                ("failover", "datacenters", index),
                "is not a datacenter name (letters, digits, '.', '_', '-'; at most 64)",
                value=name,
            )
        if name in datacenters:
            raise _Invalid(("failover", "datacenters", index), "is listed twice", value=name)
        datacenters.append(name)
    if doc.get("watch", "warm") == "cold":
        raise _Invalid(
            ("failover", "watch"),
            "is not supported: only 'warm' is built (remote datacenters are watched all the time)",
            value="cold",
        )
    when = doc.get("when") or {}
    failback = doc.get("failback_after", 30)
    return FailoverPolicy(
        datacenters=tuple(datacenters),
        min_healthy=int(when.get("min_healthy", 1)),
        failback_after=_duration(("failover", "failback_after"), failback, positive=False, maximum=MAX_FAILBACK),
        address="lan" if doc.get("address") == "lan" else "wan",
        response_header=bool(doc.get("response_header", False)),
    )


def _values(path: Path, value: str | list[str]) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values:
        raise _Invalid(path, "must not be empty", value=value)
    for index, item in enumerate(values):
        if _BAD_HEADER_VALUE.search(item):
            where = path if isinstance(value, str) else (*path, index)
            raise _Invalid(where, "contains control characters", value=item)
    return tuple(dict.fromkeys(values))


def _subsets(doc: Mapping[str, Any]) -> tuple[Subset, ...]:
    subsets: list[Subset] = []
    for name, spec in doc.items():
        path: Path = ("subsets", name)
        if _SUBSET_NAME.fullmatch(name) is None:
            raise _Invalid(
                path,
                "is not a subset name (letters, digits, '.', '_', '-'; at most 64; a letter or digit first)",
                show_value=False,
            )
        service = spec.get("service")
        if service is not None:
            others = [key for key in ("meta", "tags") if key in spec]
            if others:
                raise _Invalid(
                    (*path, others[0]),
                    "cannot be combined with 'service' (a service subset is that service's whole pool)",
                    show_value=False,
                )
            if not valid_service_name(service):
                raise _Invalid((*path, "service"), "is not a Consul service name", value=service)
            subsets.append(Subset(name=name, service=service))
            continue
        meta: list[tuple[str, tuple[str, ...]]] = []
        for key, values in spec.get("meta", {}).items():
            if not key or not key.isprintable():
                raise _Invalid((*path, "meta"), "has an empty or unprintable key", value=key)
            meta.append((key, _values((*path, "meta", key), values)))
        tags: list[str] = []
        without: list[str] = []
        for index, tag in enumerate(spec.get("tags", ())):
            if tag.startswith("!"):
                if len(tag) == 1:
                    raise _Invalid(
                        (*path, "tags", index), "names no tag ('!tag' excludes instances tagged 'tag')", value=tag
                    )
                without.append(tag[1:])
            else:
                tags.append(tag)
        if set(tags) & set(without):
            both = sorted(set(tags) & set(without))[0]
            raise _Invalid((*path, "tags"), f"requires and excludes {both!r}: no instance can match", show_value=False)
        subsets.append(
            Subset(
                name=name, meta=tuple(meta), tags=tuple(dict.fromkeys(tags)), without_tags=tuple(dict.fromkeys(without))
            )
        )
    return tuple(subsets)


def _known_subset(path: Path, name: str, names: frozenset[str]) -> str:
    if name in names:
        return name
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    known = ", ".join(sorted(names)) if names else "none: define them under 'subsets'"
    raise _Invalid(path, f"is not a subset of this service ({hint}subsets: {known})", value=name)


def _split(doc: Mapping[str, Any], names: frozenset[str]) -> SplitPolicy:
    default = _known_subset(("split", "default"), doc["default"], names)
    weights = tuple(
        (_known_subset(("split", "weights", name), name, names), int(weight))
        for name, weight in doc.get("weights", {}).items()
    )
    rules: list[SplitMatch] = []
    for index, rule in enumerate(doc.get("match", ())):
        path: Path = ("split", "match", index)
        if not any(key in rule for key in ("header", "cookie", "query", "consumer")):
            raise _Invalid(path, "needs at least one condition: header, cookie, query or consumer", show_value=False)
        headers = tuple(
            (
                _header_name((*path, "header", name), name, policy_owned=False).lower(),
                _values((*path, "header", name), v),
            )
            for name, v in rule.get("header", {}).items()
        )
        cookies: list[tuple[str, tuple[str, ...]]] = []
        for name, value in rule.get("cookie", {}).items():
            if _COOKIE_NAME.fullmatch(name) is None:
                raise _Invalid((*path, "cookie", name), "is not a valid cookie name", show_value=False)
            cookies.append((name, _values((*path, "cookie", name), value)))
        query: list[tuple[str, tuple[str, ...]]] = []
        for name, value in rule.get("query", {}).items():
            if not name:
                raise _Invalid((*path, "query"), "has an empty parameter name", show_value=False)
            query.append((name, _values((*path, "query", name), value)))
        consumers = rule.get("consumer", ())
        for position, consumer in enumerate(consumers):
            if not valid_consumer_name(consumer):
                raise _Invalid((*path, "consumer", position), "is not a consumer name", value=consumer)
        rules.append(
            SplitMatch(
                to=_known_subset((*path, "to"), rule["to"], names),
                headers=headers,
                cookies=tuple(cookies),
                query=tuple(query),
                consumers=frozenset(consumers),
            )
        )
    hash_text = doc.get("hash", "cookie")
    hash_key: HashKey | None
    if hash_text == "none":
        hash_key = None
    elif hash_text == "cookie":
        hash_key = HashKey("cookie", SPLIT_COOKIE)
    else:
        key = as_hash_key(hash_text)
        if key is None or key.kind == "cookie":
            raise _Invalid(("split", "hash"), f"is not one of: {_SPLIT_HASHES}", value=hash_text)
        hash_key = _hash_key(("split", "hash"), hash_text, cookies=False)
    return SplitPolicy(
        default=default,
        weights=weights,
        match=tuple(rules),
        hash=hash_key,
        on_empty=doc.get("on_empty", "default"),
        response_header=bool(doc.get("response_header", False)),
    )


def _sticky(doc: Mapping[str, Any]) -> StickyPolicy:
    defaults = StickyPolicy()
    cookie = doc.get("cookie", defaults.cookie)
    if _COOKIE_NAME.fullmatch(cookie) is None:
        raise _Invalid(("sticky", "cookie"), "is not a valid cookie name (an HTTP token)", value=cookie)
    if cookie == SPLIT_COOKIE:
        raise _Invalid(("sticky", "cookie"), "is the split's own cookie; choose another name", value=cookie)
    path = doc.get("path", defaults.path)
    if not path.startswith("/") or ";" in path or any(not c.isprintable() or c.isspace() for c in path):
        raise _Invalid(
            ("sticky", "path"), "must be a path such as '/' (no ';', spaces or control characters)", value=path
        )
    max_age = doc.get("max_age")
    secure = bool(doc.get("secure", defaults.secure))
    same_site = doc.get("same_site", defaults.same_site)
    if same_site == "none" and not secure:
        raise _Invalid(
            ("sticky", "same_site"),
            "requires secure: true (browsers drop SameSite=None cookies without Secure)",
            value=same_site,
        )
    return StickyPolicy(
        cookie=cookie,
        max_age=None if max_age is None else _duration(("sticky", "max_age"), max_age, maximum=MAX_COOKIE_AGE),
        path=path,
        secure=secure,
        http_only=bool(doc.get("http_only", defaults.http_only)),
        same_site=same_site,
        on_unavailable=doc.get("on_unavailable", defaults.on_unavailable),
        keep_draining=bool(doc.get("keep_draining", defaults.keep_draining)),
    )


def _mirror(doc: Mapping[str, Any], names: frozenset[str]) -> MirrorPolicy:
    defaults = MirrorPolicy(to=())
    targets: list[MirrorTarget] = []
    for index, target in enumerate(doc["to"]):
        path: Path = ("mirror", "to", index)
        service, subset = target.get("service"), target.get("subset")
        if (service is None) == (subset is None):
            raise _Invalid(
                path, "give exactly one of 'service' (another Consul service) and 'subset'", show_value=False
            )
        if service is not None and not valid_service_name(service):
            raise _Invalid((*path, "service"), "is not a Consul service name", value=service)
        if subset is not None:
            _known_subset((*path, "subset"), subset, names)
        mirror_target = MirrorTarget(service=service, subset=subset, percent=float(target.get("percent", 100)))
        if any(t.label == mirror_target.label for t in targets):
            raise _Invalid(path, f"mirrors to {mirror_target.label} a second time", show_value=False)
        targets.append(mirror_target)
    methods: list[str] = []
    for index, method in enumerate(doc.get("methods", sorted(defaults.methods))):
        if _METHOD.fullmatch(method) is None:
            raise _Invalid(("mirror", "methods", index), "is not an HTTP method", value=method)
        methods.append(method.upper())
    rules = doc.get("headers") or {}
    return MirrorPolicy(
        to=tuple(targets),
        methods=frozenset(methods),
        max_body_bytes=int(doc.get("max_body_bytes", defaults.max_body_bytes)),
        timeout=(
            _duration(("mirror", "timeout"), doc["timeout"], maximum=MAX_MIRROR_TIMEOUT)
            if "timeout" in doc
            else defaults.timeout
        ),
        max_in_flight=int(doc.get("max_in_flight", defaults.max_in_flight)),
        headers=_header_rules(("mirror", "headers"), rules),
    )
