"""What `pip install .` ships: every package, and the data files the gateway reads at run time."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import consulgw

PACKAGE = Path(consulgw.__file__).resolve().parent


def test_every_package_directory_is_a_regular_package() -> None:
    """setuptools' find_packages skips directories without __init__.py: a wheel would silently lack them."""
    missing = [
        str(d.relative_to(PACKAGE.parent))
        for d in PACKAGE.rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()
    ]
    assert missing == []


def test_data_files_are_package_resources() -> None:
    assert "<html" in resources.files("consulgw.server").joinpath("dashboard.html").read_text(encoding="utf-8")
    assert '"$schema"' in resources.files("consulgw.policy").joinpath("schema.json").read_text(encoding="utf-8")
    assert resources.files("consulgw").joinpath("py.typed").is_file()
