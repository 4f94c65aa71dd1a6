"""consulgw: a Consul-native API gateway with no static configuration."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
