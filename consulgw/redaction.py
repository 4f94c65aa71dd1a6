"""What a credential looks like, and how it is hidden: the one place logs, error messages and admin output ask.

* :func:`is_secret_name` -- a field, header or JSON key whose value is a credential (``Authorization``,
  ``X-API-Key``, ``secret``, ``password_hash``, anything naming a token, password or private key).
* :func:`redact_url` -- a URL without its userinfo, query and fragment: ``https://u:p@idp/jwks?api_key=k`` is
  ``https://***@idp/jwks?***``. Scheme, hosts, port and path stay, so the message still says where.
* :func:`redact_urls` -- the same for every URL inside a free text (an exception message, a log field).

Values of header rules in a policy are credentials whatever the header is called (``X-Upstream-Auth: Bearer ...``):
``consulgw.policy.parse`` hides them by their place in the document, with :data:`HIDDEN`.
"""

from __future__ import annotations

import functools
import re
from typing import Final

REDACTED: Final = "[redacted]"  # a log field's whole value
HIDDEN: Final = "***"  # a value inside a message or URL

# Names (lower-cased, '-' and '_' removed) that are credentials themselves, and words that make any name one.
_SECRET_NAMES: Final = frozenset(
    {
        "authorization",
        "proxyauthorization",
        "cookie",
        "setcookie",
        "xconsultoken",
        "apikey",
        "xapikey",
        "jwt",
        "passwordhash",
        "apikeysha256",
        "publickey",
        "clientsecret",
        "accesstoken",
        "refreshtoken",
    }
)
_SECRET_WORDS: Final = ("secret", "password", "passwd", "token", "private", "apikey", "session")
_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


@functools.lru_cache(maxsize=4096)  # field and header names form a small set; this runs for every log field
def is_secret_name(name: str) -> bool:
    """True when a field, header or JSON key of this name carries a credential."""
    folded = name.lower().replace("-", "").replace("_", "")
    return folded in _SECRET_NAMES or any(word in folded for word in _SECRET_WORDS)


def redact_url(url: str) -> str:
    """``scheme://[***@]host[:port][/path][?***]``: userinfo, query and fragment never shown.

    Works on any ``scheme://authority`` form, several hosts included (``redis+sentinel://:pw@h1:26379,h2:26379/m``);
    text that is not such a URL is returned with only a query or fragment hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if 0 <= found < end:
            end = found
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = f"{HIDDEN}@{authority.rpartition('@')[2]}"
    fragment = tail.find("#")
    if fragment >= 0:
        tail = tail[:fragment]
    query = tail.find("?")
    if query >= 0:
        tail = f"{tail[:query]}?{HIDDEN}"
    return f"{scheme}{sep}{authority}{tail}"


def redact_urls(text: str) -> str:
    """Every ``scheme://...`` inside ``text`` through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: redact_url(match.group(0)), text)
