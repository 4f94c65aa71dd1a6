"""docs/architecture.md: the exception tree and the module table follow the code."""

from __future__ import annotations

import consulgw.errors as errors
from consulgw.errors import ConsulgwError, GatewayError

from .support import ROOT, fenced_blocks, read_doc

PAGE = "docs/architecture.md"


def _classes(base: type[ConsulgwError]) -> list[type[ConsulgwError]]:
    found = [base]
    for sub in base.__subclasses__():
        if sub.__module__ == errors.__name__:
            found += _classes(sub)
    return found


def test_exception_tree_is_the_one_in_errors_py() -> None:
    [tree] = [body for tag, _, body in fenced_blocks(read_doc(PAGE)) if tag == "text" and "ConsulgwError" in body]
    lines = {line.strip("│├└─ ").split()[0]: line for line in tree.splitlines() if line.strip()}
    for cls in _classes(ConsulgwError):
        assert cls.__name__ in lines, cls.__name__
        if issubclass(cls, GatewayError) and cls is not GatewayError:  # the base is abstract (500 internal_error)
            assert f"{cls.status} {cls.code}" in lines[cls.__name__], cls.__name__


def test_module_table_names_every_package() -> None:
    page = read_doc(PAGE)
    for package in sorted(p.parent.name for p in (ROOT / "consulgw").glob("*/__init__.py")):
        assert f"`consulgw/{package}`" in page, package
