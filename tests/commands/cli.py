"""Run ``consulgw`` as a real subprocess without blocking the event loop (the in-process dev agent keeps serving)."""

from __future__ import annotations

from tests.support.processes import Result, clean_env
from tests.support.processes import run_consulgw as consulgw

__all__ = ["Result", "clean_env", "consulgw"]
