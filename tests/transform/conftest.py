"""Fixtures for the transform tests: a real gateway, the dev agent and scriptable origins (``tests.support.origin``)."""

from __future__ import annotations

from tests.cache.conftest import serve  # noqa: F401 - the same helper: register, store the policy, wait
from tests.policy_e2e.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    Consul,
    consul,
    http,
    make_gateway,
    wait_for,
)
from tests.support.origin import origins  # noqa: F401 - fixture re-exported
