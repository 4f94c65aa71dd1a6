"""A ``consulgw demo`` per test module, on free ports: the pages' commands run against it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Demo, free_port, running_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    if shutil.which("curl") is None:
        pytest.skip("curl is needed to run the documented commands")
    tmp: Path = tmp_path_factory.mktemp("demo")
    with running_demo(tmp, (free_port(), free_port(), free_port())) as running:
        yield running
