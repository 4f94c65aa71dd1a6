"""PolicyBook semantics: merge with defaults, last-good values, deletes, consumer index, change detection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.policy.book import build_policy_book, changed_services, consumers_changed
from consulgw.policy.consumers import api_key_digest
from consulgw.policy.model import DEFAULT_POLICY, ApiKeyAuth, BasicAuth, PolicyBook, RateLimitPolicy, Timeouts


def doc(value: Any) -> bytes:
    return json.dumps(value).encode()


RL = {"rate_limit": {"requests": 100, "per": "1m"}}
DIGEST_A = api_key_digest("key-a")
DIGEST_B = api_key_digest("key-b")


def book_of(*snapshots: dict[str, bytes | None]) -> PolicyBook:
    book: PolicyBook | None = None
    for kv in snapshots:
        book = build_policy_book(kv, previous=book)
    assert book is not None
    return book


def test_empty_kv_is_builtin_defaults() -> None:
    book = build_policy_book({}, previous=None)
    assert book.defaults == DEFAULT_POLICY
    assert book.for_service("anything") == DEFAULT_POLICY
    assert not book.errors


def test_defaults_merge_under_services() -> None:
    book = build_policy_book(
        {
            "defaults": doc({"timeouts": {"connect": "1s", "read": "10s"}, **RL, "auth": {"type": "api_key"}}),
            "services/users": doc({"timeouts": {"read": "60s"}, "rate_limit": {"requests": 5}}),
            "services/public": doc({"auth": None}),
        },
        previous=None,
    )
    users = book.for_service("users")
    assert users.timeouts == Timeouts(connect=1.0, read=60.0)  # key by key
    assert users.rate_limit == RateLimitPolicy(requests=5, per=60.0)  # nested object merged
    assert users.auth == ApiKeyAuth()
    assert book.for_service("public").auth is None  # null switches an inherited section off
    assert book.for_service("other") == book.defaults
    assert book.defaults.rate_limit == RateLimitPolicy(requests=100, per=60.0)


def test_lists_replace_not_append() -> None:
    book = build_policy_book(
        {
            "defaults": doc({"cors": {"origins": ["https://a.example"]}}),
            "services/users": doc({"cors": {"origins": ["https://b.example"]}}),
        },
        previous=None,
    )
    cors = book.for_service("users").cors
    assert cors is not None
    assert cors.origins == ("https://b.example",)


@pytest.mark.parametrize(
    ("first", "second", "service", "expected_auth", "error_key"),
    [
        pytest.param(
            {"services/users": doc({"auth": {"type": "basic"}})},
            {"services/users": doc({"auth": {"type": "basic", "realm": 'bad"'}})},
            "users",
            BasicAuth(),
            "services/users",
            id="bad-edit-keeps-previous-good",
        ),
        pytest.param(
            {"defaults": doc({"auth": {"type": "api_key"}})},
            {"defaults": doc({"auth": {"type": "api_kee"}})},
            "anything",
            ApiKeyAuth(),
            "defaults",
            id="bad-defaults-keep-previous-defaults",
        ),
        pytest.param(
            {"defaults": doc({"auth": {"type": "api_key"}})},
            {"defaults": doc({"auth": {"type": "api_key"}}), "services/users": b"{not json"},
            "users",
            ApiKeyAuth(),
            "services/users",
            id="bad-new-service-falls-back-to-defaults",
        ),
        pytest.param(
            {"services/users": doc({"auth": {"type": "basic"}})},
            {"services/users": None},
            "users",
            BasicAuth(),
            "services/users",
            id="null-value-keeps-previous",
        ),
    ],
)
def test_rejected_documents_keep_last_good(
    first: dict[str, bytes | None], second: dict[str, bytes | None], service: str, expected_auth: Any, error_key: str
) -> None:
    good = build_policy_book(first, previous=None)
    assert not good.errors
    book = build_policy_book(second, previous=good)
    assert book.for_service(service).auth == expected_auth
    assert set(book.errors) == {error_key}
    assert book.errors[error_key].startswith(f"consulgw/{error_key}: ")


def test_bad_defaults_keep_merging_services_onto_previous_defaults() -> None:
    good = build_policy_book({"defaults": doc(RL)}, previous=None)
    book = build_policy_book({"defaults": b"[", "services/users": doc({"lb": "ip_hash"})}, previous=good)
    users = book.for_service("users")
    assert users.lb == "ip_hash"
    assert users.rate_limit == RateLimitPolicy(requests=100, per=60.0)
    assert "defaults" in book.errors


def test_deleted_documents_fall_back() -> None:
    first = book_of(
        {
            "defaults": doc(RL),
            "services/users": doc({"lb": "least_conn"}),
            "consumers/alice": doc({"api_key_sha256": [DIGEST_A]}),
        }
    )
    book = build_policy_book({}, previous=first)
    assert book.for_service("users") == DEFAULT_POLICY  # service and defaults both deleted
    assert not book.consumers
    assert not book.consumers_by_key
    only_service_deleted = build_policy_book({"defaults": doc(RL)}, previous=first)
    assert only_service_deleted.for_service("users") == only_service_deleted.defaults


def test_fixing_a_document_clears_its_error() -> None:
    book = book_of(
        {"services/users": doc({"lb": "least_conn"})},
        {"services/users": doc({"lb": "fastest"})},
        {"services/users": doc({"lb": "ip_hash"})},
    )
    assert book.for_service("users").lb == "ip_hash"
    assert not book.errors


def test_unchanged_bad_document_stays_rejected_with_same_value() -> None:
    bad = {"services/users": doc({"lb": "fastest"})}
    book = book_of({"services/users": doc({"lb": "least_conn"})}, bad, bad, bad)
    assert book.for_service("users").lb == "least_conn"
    assert "lb: 'fastest'" in book.errors["services/users"]


def test_defaults_change_reaches_services_with_unchanged_documents() -> None:
    kv = {"defaults": doc(RL), "services/users": doc({"lb": "ip_hash"})}
    first = build_policy_book(kv, previous=None)
    second = build_policy_book({**kv, "defaults": doc({"rate_limit": {"requests": 1, "per": "1s"}})}, previous=first)
    assert second.for_service("users").rate_limit == RateLimitPolicy(requests=1, per=1.0)
    assert second.for_service("users").lb == "ip_hash"


def test_service_made_invalid_by_new_defaults_keeps_previous() -> None:
    kv = {
        "defaults": doc({"cors": {"origins": ["https://a.example"]}}),
        "services/users": doc({"cors": {"credentials": True}}),
    }
    first = build_policy_book(kv, previous=None)
    assert first.for_service("users").cors is not None
    second = build_policy_book({**kv, "defaults": doc({"cors": {"origins": ["*"]}})}, previous=first)
    assert second.for_service("users") == first.for_service("users")
    assert "cors.credentials" in second.errors["services/users"]
    assert second.defaults.cors is not None
    assert second.defaults.cors.origins == ("*",)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("service/users", "did you mean 'services/users'?", id="singular"),
        pytest.param("consumer/alice", "did you mean 'consumers/alice'?", id="consumer-singular"),
        pytest.param("default", "did you mean 'defaults'?", id="default-singular"),
        pytest.param("services/a/b", "'a/b' is not a service name", id="nested-service"),
        pytest.param("defaults/timeouts", "the defaults are one document", id="defaults-folder"),
    ],
)
def test_keys_that_look_like_mistakes_are_reported(key: str, expected: str) -> None:
    book = build_policy_book({key: doc({})}, previous=None)
    assert expected in book.errors[key]
    assert book.errors[key].startswith(f"consulgw/{key}: ")


@pytest.mark.parametrize(
    "key",
    [pytest.param("routes/x", id="foreign"), pytest.param("services/", id="folder"), pytest.param("", id="empty")],
)
def test_other_keys_are_ignored(key: str) -> None:
    book = build_policy_book({key: b"anything"}, previous=None)
    assert not book.errors
    assert not book.services


def test_prefix_appears_in_messages() -> None:
    book = build_policy_book({"services/users": b"{"}, previous=None, prefix="edge/")
    assert book.errors["services/users"].startswith("edge/services/users: not valid JSON")


def test_consumers_by_key_and_conflicts() -> None:
    book = build_policy_book(
        {
            "consumers/alice": doc({"api_key_sha256": [DIGEST_A, DIGEST_B]}),
            "consumers/bob": doc({"api_key_sha256": [DIGEST_B]}),
            "consumers/carol": doc({"api_key_sha256": ["not-a-digest"]}),
        },
        previous=None,
    )
    assert book.consumers_by_key[DIGEST_A].name == "alice"
    assert DIGEST_B not in book.consumers_by_key  # claimed twice: refused for both
    assert set(book.consumers) == {"alice", "bob"}
    assert "is also listed by consumer 'bob'" in book.errors["consumers/alice"]
    assert "is also listed by consumer 'alice'" in book.errors["consumers/bob"]
    assert DIGEST_B not in book.errors["consumers/bob"]  # only a prefix is shown
    assert "api_key_sha256[0]: '***'" in book.errors["consumers/carol"]
    resolved = build_policy_book(
        {"consumers/alice": doc({"api_key_sha256": [DIGEST_A]}), "consumers/bob": doc({"api_key_sha256": [DIGEST_B]})},
        previous=book,
    )
    assert resolved.consumers_by_key[DIGEST_B].name == "bob"
    assert not resolved.errors


def test_bad_consumer_edit_keeps_previous_consumer() -> None:
    first = build_policy_book({"consumers/alice": doc({"api_key_sha256": [DIGEST_A]})}, previous=None)
    book = build_policy_book(
        {"consumers/alice": doc({"api_key_sha256": [DIGEST_B], "pasword_hash": "x"})}, previous=first
    )
    assert book.consumers_by_key[DIGEST_A].name == "alice"
    assert "pasword_hash: unknown key (did you mean 'password_hash'?" in book.errors["consumers/alice"]


def test_changed_services() -> None:
    kv = {"defaults": doc(RL), "services/users": doc({"lb": "ip_hash"}), "services/orders": doc({})}
    first = build_policy_book(kv, previous=None)
    assert changed_services(None, first, ["web"]) == {"users", "orders", "web"}
    same = build_policy_book(dict(kv), previous=first)
    assert changed_services(first, same, ["web", "users"]) == frozenset()
    users_edit = build_policy_book({**kv, "services/users": doc({"lb": "least_conn"})}, previous=first)
    assert changed_services(first, users_edit, ["web"]) == {"users"}
    defaults_edit = build_policy_book({**kv, "defaults": doc({})}, previous=first)
    # every service without an override of rate_limit changed, including ones that have no document at all
    assert changed_services(first, defaults_edit, ["web", "users"]) == {"users", "orders", "web"}
    deleted = build_policy_book({"defaults": doc(RL), "services/orders": doc({})}, previous=first)
    assert changed_services(first, deleted, []) == {"users"}
    rejected = build_policy_book({**kv, "services/users": b"{"}, previous=first)
    assert changed_services(first, rejected, ["web"]) == frozenset()  # the previous good value stays


def test_consumers_changed() -> None:
    first = build_policy_book({"consumers/alice": doc({"api_key_sha256": [DIGEST_A]})}, previous=None)
    assert consumers_changed(None, first)
    assert not consumers_changed(
        first, build_policy_book({"consumers/alice": doc({"api_key_sha256": [DIGEST_A]})}, previous=first)
    )
    assert consumers_changed(first, build_policy_book({}, previous=first))


def test_book_repr_shows_no_secrets() -> None:
    secret = "0123456789abcdef0123456789abcdef-hidden"
    book = build_policy_book(
        {"services/users": doc({"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": secret}})}, previous=None
    )
    assert secret not in repr(book)
