"""``--cache-memory-bytes`` / ``CONSULGW_CACHE_MEMORY_BYTES``: parsed once at the edge, errors name both."""

from __future__ import annotations

import argparse

import pytest

from consulgw.errors import ConfigError
from consulgw.settings import GatewaySettings, gateway_settings


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        pytest.param(None, None, 64 * 1024 * 1024, id="default"),
        pytest.param("1MiB", None, 1024 * 1024, id="flag"),
        pytest.param(None, "256KiB", 256 * 1024, id="env"),
        pytest.param("2GiB", "1KiB", 2 * 1024**3, id="flag-wins"),
        pytest.param("1000", None, 1000, id="bytes"),
        pytest.param("0", None, 0, id="zero-disables"),
    ],
)
def test_cache_memory_bytes(flag: str | None, env: str | None, expected: int) -> None:
    environ = {"CONSULGW_CACHE_MEMORY_BYTES": env} if env is not None else {}
    settings = gateway_settings(argparse.Namespace(cache_memory_bytes=flag), environ)
    assert settings.cache_memory_bytes == expected
    assert GatewaySettings().cache_memory_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize("value", ["64 MB please", "-1", "1.5GiB", "MiB", "64TiB"])
def test_a_bad_size_names_the_flag_the_variable_and_the_value(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        gateway_settings(argparse.Namespace(cache_memory_bytes=value), {})
    assert str(caught.value).startswith(f"--cache-memory-bytes / CONSULGW_CACHE_MEMORY_BYTES: {value!r} is not a size")
