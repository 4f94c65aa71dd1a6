"""The per-service ``tracing`` policy section: parsed, and refused naming key, path and value."""

from __future__ import annotations

from typing import Any

import pytest

from consulgw.errors import PolicyError
from consulgw.policy.model import TracingPolicy
from consulgw.policy.parse import parse_policy

KEY = "consulgw/services/users"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        pytest.param(None, TracingPolicy(), id="null-is-the-process-sampler"),
        pytest.param({}, TracingPolicy(), id="empty"),
        pytest.param({"sample_ratio": 0.1}, TracingPolicy(sample_ratio=0.1), id="ratio"),
        pytest.param({"sample_ratio": 0}, TracingPolicy(sample_ratio=0.0), id="ratio-0-never"),
        pytest.param({"sample_ratio": None}, TracingPolicy(), id="ratio-null"),
        pytest.param(
            {
                "capture_headers": {
                    "request": ["X-Tenant-ID", "x-tenant-id", "User-Agent"],
                    "response": ["Cache-Status"],
                }
            },
            TracingPolicy(capture_request=("x-tenant-id", "user-agent"), capture_response=("cache-status",)),
            id="capture-lower-cased-once",
        ),
    ],
)
def test_valid(section: dict[str, Any] | None, expected: TracingPolicy) -> None:
    assert parse_policy({"tracing": section}, key=KEY).tracing == expected


def test_absent_is_the_default() -> None:
    assert parse_policy({}, key=KEY).tracing == TracingPolicy()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        pytest.param({"sample_ratio": 1.5}, "tracing.sample_ratio", id="ratio-above-1"),
        pytest.param({"sample_ratio": -0.1}, "tracing.sample_ratio", id="negative"),
        pytest.param({"sample_ratio": "10%"}, "tracing.sample_ratio", id="not-a-number"),
        pytest.param({"capture": []}, "capture", id="unknown-key"),
        pytest.param({"capture_headers": {"request": ["Bad Name"]}}, "tracing.capture_headers.request[0]", id="name"),
        pytest.param(
            {"capture_headers": {"request": ["X-Tenant", "Authorization"]}},
            "tracing.capture_headers.request[1]: 'Authorization' carries credentials",
            id="authorization",
        ),
        pytest.param(
            {"capture_headers": {"response": ["Set-Cookie"]}},
            "tracing.capture_headers.response[0]: 'Set-Cookie' carries credentials",
            id="set-cookie",
        ),
        pytest.param({"capture_headers": {"request": ["X-Api-Key"]}}, "carries credentials", id="api-key"),
        pytest.param({"capture_headers": {"request": ["X-Session-Token"]}}, "carries credentials", id="token"),
    ],
)
def test_invalid(section: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy({"tracing": section}, key=KEY)
    assert KEY in str(raised.value)
    assert message in str(raised.value)
