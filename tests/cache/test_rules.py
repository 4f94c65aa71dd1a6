"""The cache's pure parts: RFC 9111 rules, keys, stored answers, the memory store's bound, single-flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict

from consulgw.cache import control
from consulgw.cache.entry import StoredAnswer, refreshed_headers, stored_headers
from consulgw.cache.flight import Flights
from consulgw.cache.keys import host_of, normalize_accept_encoding, normalize_query, slot_for, variant_for
from consulgw.cache.memory import MemoryStore
from consulgw.cache.purge import generations

DATE = "Sat, 01 Jun 2024 12:00:00 GMT"


def facts(**headers: str | list[str]) -> control.ResponseFacts:
    multi: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        for item in value if isinstance(value, list) else [value]:
            multi.add(name.replace("_", "-"), item)
    return control.ResponseFacts.of(multi, multi.getall("Cache-Control", []), multi.getall("Vary", []))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(["max-age=60, public"], {"max-age": "60", "public": None}, id="two"),
        pytest.param(
            ['no-cache="Set-Cookie, X-A", max-age=1'],
            {"no-cache": "Set-Cookie, X-A", "max-age": "1"},
            id="quoted-comma",
        ),
        pytest.param(["MAX-AGE=5", "max-age=9"], {"max-age": "5"}, id="first-wins-case-insensitive"),
        pytest.param([" , ,, "], {}, id="empty-items"),
        pytest.param(["s-maxage = 10"], {"s-maxage": "10"}, id="spaces"),
    ],
)
def test_directives(values: list[str], expected: dict[str, Any]) -> None:
    assert control.directives(values) == expected


@pytest.mark.parametrize(
    ("headers", "mode", "ttl", "expected"),
    [
        pytest.param({"Cache_Control": "s-maxage=30, max-age=10"}, "rfc9111", 60.0, 30.0, id="s-maxage-first"),
        pytest.param(
            {"Cache_Control": "max-age=10", "Expires": "Sat, 01 Jun 2024 12:05:00 GMT", "Date": DATE},
            "rfc9111",
            60.0,
            10.0,
            id="max-age-over-expires",
        ),
        pytest.param(
            {"Expires": "Sat, 01 Jun 2024 12:05:00 GMT", "Date": DATE}, "rfc9111", 60.0, 300.0, id="expires-minus-date"
        ),
        pytest.param({"Expires": "0", "Date": DATE}, "rfc9111", 60.0, 0.0, id="invalid-expires-is-expired"),
        pytest.param({}, "rfc9111", 42.0, 42.0, id="heuristic-ttl"),
        pytest.param({"Cache_Control": "no-cache, max-age=60"}, "rfc9111", 60.0, 0.0, id="no-cache"),
        pytest.param({"Cache_Control": "max-age=abc"}, "rfc9111", 60.0, 0.0, id="malformed-max-age"),
        pytest.param({"Cache_Control": "max-age=1, no-cache"}, "override", 60.0, 60.0, id="override-ignores"),
    ],
)
def test_freshness_lifetime(headers: dict[str, str], mode: Any, ttl: float, expected: float) -> None:
    assert control.lifetime(facts(**headers), mode=mode, ttl=ttl) == expected


@pytest.mark.parametrize(
    ("status", "request_cc", "headers", "shared_only", "mode", "expected"),
    [
        pytest.param(200, {}, {}, False, "rfc9111", None, id="plain"),
        pytest.param(500, {}, {}, False, "rfc9111", "uncacheable", id="status"),
        pytest.param(200, {"no-store": None}, {}, False, "rfc9111", "no_store", id="request-no-store"),
        pytest.param(200, {}, {"Cache_Control": "no-store"}, False, "override", "no_store", id="response-no-store"),
        pytest.param(200, {}, {"Cache_Control": "private"}, False, "override", "private", id="private"),
        pytest.param(200, {}, {"Set_Cookie": "a=b"}, False, "rfc9111", "private", id="set-cookie"),
        pytest.param(200, {}, {"Vary": "Accept, *"}, False, "rfc9111", "vary_star", id="vary-star"),
        pytest.param(200, {}, {"Cache_Control": "max-age=5"}, True, "rfc9111", "credentialed", id="credentialed"),
        pytest.param(200, {}, {"Cache_Control": "public, max-age=5"}, True, "rfc9111", None, id="credentialed-public"),
        pytest.param(200, {}, {"Cache_Control": "must-revalidate"}, True, "rfc9111", None, id="must-revalidate"),
        pytest.param(
            200, {}, {"Cache_Control": "public"}, True, "override", "credentialed", id="override-credentialed"
        ),
    ],
)
def test_refusal(
    status: int, request_cc: dict[str, Any], headers: dict[str, str], shared_only: bool, mode: Any, expected: str | None
) -> None:
    got = control.refusal(
        status=status,
        statuses=frozenset({200, 404}),
        request=request_cc,
        response=facts(**headers),
        shared_only=shared_only,
        mode=mode,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("header", "etag", "expected"),
    [
        pytest.param('"a"', '"a"', True, id="same"),
        pytest.param('W/"a"', '"a"', True, id="weak"),
        pytest.param('"b", W/"a"', 'W/"a"', True, id="list"),
        pytest.param('"b"', '"a"', False, id="other"),
        pytest.param("*", '"a"', True, id="star"),
        pytest.param('"a"', None, False, id="none"),
    ],
)
def test_etag_matches(header: str, etag: str | None, expected: bool) -> None:
    assert control.etag_matches(header, etag) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, "", id="absent"),
        pytest.param("gzip, deflate, br", "br,deflate,gzip", id="sorted"),
        pytest.param("GZIP;q=1.0, br;q=0", "gzip", id="q-zero-refused"),
        pytest.param("identity", "identity", id="identity"),
        pytest.param("gzip;q=x", "gzip", id="bad-q"),
    ],
)
def test_accept_encoding(value: str | None, expected: str) -> None:
    assert normalize_accept_encoding(value) == expected


@pytest.mark.parametrize(
    ("query", "rule", "expected"),
    [
        pytest.param("b=2&a=1", "all", "a=1&b=2", id="sorted"),
        pytest.param("b=2&a=1", "none", "", id="none"),
        pytest.param("b=2&a=1&c=3", ("a", "c"), "a=1&c=3", id="listed"),
        pytest.param("a%20b=1&x=2", ("a b",), "a%20b=1", id="decoded-names"),
    ],
)
def test_query_rule(query: str, rule: Any, expected: str) -> None:
    assert normalize_query(query, rule) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("API.example.com:8080", "api.example.com", id="port"),
        pytest.param("[::1]:80", "[::1]", id="ipv6"),
        pytest.param("example.com", "example.com", id="plain"),
    ],
)
def test_host_of(host: str, expected: str) -> None:
    assert host_of(host) == expected


def test_keys_separate_what_the_policy_names() -> None:
    def slot(**changes: Any) -> str:
        args: dict[str, Any] = {
            "service": "s",
            "generation": "0",
            "host": "a.example",
            "target": "/p?x=1",
            "query": "all",
            "headers": CIMultiDict({"Accept-Language": "en"}),
            "key_headers": ("accept-language",),
            "consumer": None,
        }
        args.update(changes)
        return slot_for(**args).digest

    base = slot()
    assert slot(host="A.example:9999") == base
    assert slot(target="/p?x=2") != base
    assert slot(consumer="alice") != base
    assert slot(headers=CIMultiDict({"Accept-Language": "fr"})) != base
    assert slot(headers=CIMultiDict({"Accept-Language": "en", "Accept-Encoding": "gzip"})) != base
    assert slot(query="none", target="/p?x=2") == slot(query="none")
    headers = CIMultiDict({"Accept-Language": "en", "X-A": "1"})
    assert variant_for((), headers) == "-"
    assert variant_for(("accept-language",), headers) != variant_for(("accept-language",), CIMultiDict())


def test_purge_generations_follow_the_value() -> None:
    first = generations({"cache-purge/a": b"1", "services/a": b"{}", "cache-purge/b/c": b"x"})
    assert set(first) == {"a"}
    assert generations({"cache-purge/a": b"1"}) == first
    assert generations({"cache-purge/a": b"2"}) != first


def entry(body: bytes = b"x", *, stored_at: float = 1000.0, **changes: Any) -> StoredAnswer:
    args: dict[str, Any] = {
        "status": 200,
        "reason": "OK",
        "headers": (("Content-Type", "application/json"), ("ETag", '"1"')),
        "body": body,
        "stored_at": stored_at,
        "initial_age": 5.0,
        "lifetime": 60.0,
        "shared": False,
        "must_revalidate": False,
        "vary": ("accept-language",),
    }
    args.update(changes)
    return StoredAnswer(**args)


def test_stored_answer_round_trip_age_and_ttl() -> None:
    stored = entry(b"\x00binary\nbody")
    assert StoredAnswer.decode(stored.encode()) == stored
    assert stored.age(1010.0) == 15.0
    assert stored.ttl(1010.0) == 45.0
    assert stored.age(900.0) == 5.0  # a clock that went back never makes it younger than its Age
    for garbage in (b"", b"no newline", b'{"v": 2}\nx', b"{bad json\nx", b'{"v": 1}\nx'):
        with pytest.raises(ValueError):
            StoredAnswer.decode(garbage)


def test_stored_and_refreshed_headers() -> None:
    upstream = [("Content-Type", "text/plain"), ("Age", "3"), ("Set-Cookie", "a=b"), ("Content-Length", "4")]
    assert stored_headers(upstream) == (("Content-Type", "text/plain"),)
    stored = (
        ("Content-Type", "text/plain"),
        ("ETag", '"1"'),
        ("Cache-Control", "max-age=1"),
        ("Content-Encoding", "gzip"),
    )
    fresh = [("Cache-Control", "max-age=60"), ("Content-Encoding", "br"), ("Date", DATE), ("Content-Length", "0")]
    assert refreshed_headers(stored, fresh) == (
        ("Content-Type", "text/plain"),
        ("ETag", '"1"'),
        ("Content-Encoding", "gzip"),
        ("Cache-Control", "max-age=60"),
        ("Date", DATE),
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _slot(name: str, path: str = "/p") -> Any:
    return slot_for(
        service="s",
        generation="0",
        host="h",
        target=path + "?" + name,
        query="all",
        headers=CIMultiDict(),
        key_headers=(),
        consumer=None,
    )


async def test_memory_store_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    clock = FakeClock()
    sizes: list[int] = []
    store = MemoryStore(max_bytes=5000, clock=clock, on_size=sizes.append)
    body = b"x" * 1000
    for name in "abcd":
        await store.store(_slot(name), "-", entry(body, vary=()), keep=60)
    assert store.bytes <= 5000
    assert (await store.lookup(_slot("a"), CIMultiDict())).entry is None  # evicted first
    assert (await store.lookup(_slot("d"), CIMultiDict())).entry is not None
    assert sizes[-1] == store.bytes
    await store.lookup(_slot("c"), CIMultiDict())  # c becomes the most recently used
    await store.store(_slot("e"), "-", entry(body, vary=()), keep=60)
    assert (await store.lookup(_slot("c"), CIMultiDict())).entry is not None
    await store.store(_slot("huge"), "-", entry(b"y" * 6000, vary=()), keep=60)  # larger than the bound
    assert (await store.lookup(_slot("huge"), CIMultiDict())).vary is None


async def test_memory_store_expiry_invalidation_and_purge() -> None:
    clock = FakeClock()
    store = MemoryStore(max_bytes=1 << 20, clock=clock)
    await store.store(_slot("a"), "-", entry(vary=()), keep=10)
    await store.store(_slot("b", "/other"), "-", entry(vary=()), keep=100)
    clock.now += 11
    assert (await store.lookup(_slot("a"), CIMultiDict())).vary is None
    await store.store(_slot("c"), "-", entry(vary=()), keep=100)
    await store.invalidate(_slot("anything"))  # same path /p, any query
    assert (await store.lookup(_slot("c"), CIMultiDict())).vary is None
    assert (await store.lookup(_slot("b", "/other"), CIMultiDict())).entry is not None
    assert store.purge("s") == 2
    assert store.bytes == 0
    assert len(store) == 0


async def test_flights_let_one_lead_and_the_others_wait() -> None:
    flights = Flights()
    assert flights.take_off("k") is None
    waiting = flights.take_off("k")
    assert waiting is not None
    assert flights.flying("k")
    assert not await Flights.wait(waiting, 0.01)
    flights.land("k")
    assert await Flights.wait(waiting, 1)
    assert flights.take_off("k") is None  # a new flight after landing
    flights.land("k")
    assert len(flights) == 0
    await asyncio.sleep(0)
