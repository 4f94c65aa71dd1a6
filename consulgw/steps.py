"""Step generators: long, pure computations that yield between small pieces of work.

A ``Steps[T]`` is a generator that yields ``None`` whenever it may be paused and returns a ``T``. Run it to the end
with :func:`run_steps`, or on an event loop in time slices (``consulgw.server.view.ViewBuilder``), so a build over
10,000 services never holds the loop for more than a slice.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")
Steps = Generator[None, None, T]


def run_steps(steps: Steps[T]) -> T:
    """Run a step generator to the end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
