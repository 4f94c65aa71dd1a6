"""Fixtures of the end-to-end gateway tests (dev agent, real upstreams, in-process gateways), reused as they are."""

from __future__ import annotations

from tests.gateway.conftest import consul, gateway_factory, http, upstreams

__all__ = ["consul", "gateway_factory", "http", "upstreams"]
