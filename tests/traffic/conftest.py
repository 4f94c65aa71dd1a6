"""Fixtures for the traffic-management end-to-end tests (issue 9): a real gateway, the dev agent, real upstreams.

Reused: ``http``, ``consul``, ``upstreams`` (tests.gateway.conftest); ``make_gateway``, ``switchables``
(tests.policy_e2e.conftest). Helpers (canary services, many requests, cookies) are in ``tests.traffic.support``.
"""

from __future__ import annotations

from tests.gateway.conftest import consul, http, upstreams  # noqa: F401 - fixtures re-exported for this folder
from tests.policy_e2e.conftest import make_gateway, switchables  # noqa: F401 - fixtures re-exported
