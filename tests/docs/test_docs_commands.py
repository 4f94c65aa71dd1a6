"""Every command shown in README.md and docs/**/*.md is exercised by a test (docs examples that are not run rot).

What counts as a command: every line of a fenced block tagged ``sh``, ``bash``, ``shell`` or ``console``. In
``console`` blocks only ``$ `` lines are commands (the other lines are their output); in the others every line is
one, except blank lines and ``#`` comment lines. A ``$ `` prompt is stripped, a trailing `` # comment`` is
dropped, lines ending in ``\\`` are joined with the next, and whitespace is normalised. Output, JSON, HCL and
other non-commands go in blocks tagged ``text``, ``json``, ``hcl``...

A command is exercised when one of these holds (``coverage`` checks the allowlist first, so its reasons show):

1. **Literal in a test.** The command is a string literal, or one line of a string literal, in some
   ``tests/**/*.py`` file other than this one (whitespace normalised; docstrings do not count). Such tests keep the text of what they run and only rewrite the
   default addresses (``127.0.0.1:8500`` / ``:8080`` / ``:8081``) into their own free ports when they run it
   (``tests/docs/support.py``: ``Shell``). A literal that merely names a command counts as running it, so tests
   should not spell out documented commands they do not run.
2. **Run by the page's own test.** Some pages are walked through by a test that parses the page and runs every
   ``$ `` line in order, comparing the output (``DOC_RUNNERS``). This test asks that runner's own parser for the
   commands it will run, so a command the runner would skip is not counted.
3. **Printed by the demo.** The lines ``consulgw demo`` prints (``consulgw.demo.demo_steps`` with the default
   ports) are shown on docs/getting-started.md; ``tests/docs/test_getting_started.py`` checks that the page shows
   exactly what the demo prints and runs every one of them against a real demo.
4. **Allowlisted** in ``ALLOWED`` below, each with the reason and, where one exists, the test that covers it.
   Keep this list short: a new entry needs a reason a reviewer accepts.

Commands that no test runs yet, on pages owned elsewhere, are listed in ``PENDING`` with the reason. Each is a
strict ``xfail`` case of ``test_pending_command_is_not_exercised_yet``: the ``-ra`` summary of every run lists
them, and the case fails (XPASS) as soon as a test covers the command, so the entry must then be removed.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMAND_FENCES = frozenset({"sh", "bash", "shell", "console"})


@dataclass(frozen=True, slots=True)
class Runner:
    """A test that parses ``page`` and runs its commands; ``commands`` is that test's own parser."""

    test: str  # "tests/x/test_y.py::test_name"
    commands: Callable[[], Iterable[str]]


def _texts(module: str, function: str, *args: object) -> Callable[[], list[str]]:
    def collect() -> list[str]:
        found = getattr(importlib.import_module(module), function)(*args)
        return [item.text for item in found if hasattr(item, "text")]

    return collect


DOC_RUNNERS: dict[str, Runner] = {
    "docs/policies.md": Runner(
        test="tests/policy/test_docs.py::test_shown_commands_print_what_is_shown",
        commands=_texts("tests.policy.test_docs", "commands"),
    ),
    "docs/operations-tls.md": Runner(
        test="tests/tls/test_docs_tls.py::test_every_command_in_operations_tls_md",
        commands=_texts("tests.tls.test_docs_tls", "doc_steps"),
    ),
    "docs/migrating-from-fabio.md": Runner(
        test="tests/commands/test_docs_migrating_from_fabio.py::test_every_command_in_migrating_from_fabio_md",
        commands=_texts("tests.commands.docrun", "steps", ROOT / "docs" / "migrating-from-fabio.md"),
    ),
}

DEMO_PAGE = "docs/getting-started.md"
DEMO_RUNNER = "tests/docs/test_getting_started.py::test_every_line_the_demo_prints_does_what_it_says"

# command (normalised) -> why no test runs this exact text, and what covers it instead.
ALLOWED: dict[str, str] = {
    "make test": "CI itself runs it: .ci/run is `make test`.",
    "CONSUL_BIN=/usr/local/bin/consul .venv/bin/honcho start": (
        "needs a real consul binary, which cannot be installed here; tests/demo/test_procfile.py runs "
        "`.venv/bin/honcho start` and checks scripts/consul-dev.sh execs $CONSUL_BIN agent -dev when it is set."
    ),
    "make demo": (
        "the Makefile target is `$(BIN)/consulgw demo` after installing the venv (re-running the install from a "
        "test would rewrite the shared .venv); tests/docs/conftest.py starts `consulgw demo` itself and "
        "tests/docs/test_getting_started.py checks what it prints and runs every printed line; "
        "tests/demo/test_demo.py runs the make target itself (with DEMO_ARGS for free ports)."
    ),
    "consulgw dev-agent --listen 127.0.0.1:8500": (
        "port 8500 may be taken on a test machine; tests/devagent/test_cli.py::test_starts_serves_and_stops_on_sigterm "
        "runs `consulgw dev-agent --listen 127.0.0.1:<free port>`."
    ),
    ".venv/bin/python bench/devagent_capacity.py --queries 5000 --watchers 1000 --rounds 5": (
        "a measurement (minutes of load on shared cores); "
        "tests/conformance/test_commands.py::test_capacity_bench_smoke runs the same script with tiny numbers."
    ),
}


# command (normalised) -> why no test runs it yet. Not an excuse list: each entry shows up in every test summary.
PENDING: dict[str, str] = {
    "make bench": (
        "docs/benchmarks.md: a measurement of about 10 minutes of load, too long for CI; bench/test_harness.py "
        "(collected by make test) checks the harness's parsers, its report and a small real run instead."
    ),
    ".venv/bin/python bench/run.py --rounds 5 --profile --write-docs": (
        "docs/benchmarks.md: rewrites docs/benchmarks.md after minutes of load; bench/test_harness.py checks the "
        "docs-block rewriting and the profile aggregation on their own."
    ),
    ".venv/bin/python bench/run.py --duration 3 --rounds 1": (
        "docs/benchmarks.md: still minutes of load (the convergence and 1,000-service scale steps); "
        "bench/test_harness.py runs a small discovery run of the same harness."
    ),
    "bench/profile.sh": "docs/benchmarks.md: attaches py-spy to a gateway under wrk load; no test runs it.",
    ".venv/bin/python bench/soak.py --minutes 30 --write-docs": (
        "docs/benchmarks.md: a 30-minute soak that rewrites docs/benchmarks.md; bench/test_soak.py checks its "
        "verdict and docs block and runs a 15-second soak of the same script."
    ),
    ".venv/bin/python bench/soak.py --minutes 2 --sample 20": (
        "docs/benchmarks.md: two minutes of load; bench/test_soak.py runs the same script for 15 seconds."
    ),
}


# -- collecting the commands of the pages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocCommand:
    page: str
    line: int
    text: str

    @property
    def normalised(self) -> str:
        return normalise(self.text)


def normalise(text: str) -> str:
    return " ".join(text.split())


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _strip_comment(line: str) -> str:
    """Drop a trailing `` # comment`` that is outside quotes."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and index > 0 and line[index - 1].isspace():
            return line[:index].rstrip()
    return line


def _complete(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return not text.endswith("\\")


def commands_of(path: Path, root: Path = ROOT) -> list[DocCommand]:
    page = path.relative_to(root).as_posix()
    lines = path.read_text("utf-8").splitlines()
    found: list[DocCommand] = []
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if not fence.startswith("```"):
            index += 1
            continue
        tag = fence[3:].strip().split(" ")[0] if len(fence) > 3 else ""
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        if tag in COMMAND_FENCES:
            row = index + 1
            while row < end:
                line = lines[row]
                start = row + 1
                row += 1
                if tag == "console":
                    if not line.startswith("$ "):
                        continue  # output of the command before
                    line = line[2:]
                else:
                    line = line.removeprefix("$ ")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                while not _complete(line) and row < end:
                    line = (line[:-1] if line.endswith("\\") else line + "\n") + lines[row].removeprefix("> ")
                    row += 1
                found.append(DocCommand(page, start, _strip_comment(line.strip())))
        index = end + 1
    return found


def all_commands() -> list[DocCommand]:
    return [command for path in pages() for command in commands_of(path)]


# -- what the tests contain ---------------------------------------------------------------------------------------


@cache
def literals_in_tests() -> frozenset[str]:
    """Every string literal of every test file except this one (docstrings left out), whitespace-normalised: the
    whole literal, and each of its lines on its own (a test may run a script of several documented lines)."""
    found: set[str] = set()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found.add(normalise(node.value))
                found.update(normalise(line) for line in node.value.splitlines())
    return frozenset(found)


@cache
def runner_commands(page: str) -> frozenset[str]:
    return frozenset(normalise(text) for text in DOC_RUNNERS[page].commands())


@cache
def demo_commands() -> frozenset[str]:
    from consulgw.demo import demo_steps

    return frozenset(normalise(step.command) for step in demo_steps(8080, 8081, 8500))


def coverage(command: DocCommand) -> str | None:
    """How the command is exercised, or None."""
    text = command.normalised
    if text in ALLOWED:
        return "allowed"
    if text in literals_in_tests():
        return "literal"
    if command.page in DOC_RUNNERS and text in runner_commands(command.page):
        return f"runner {DOC_RUNNERS[command.page].test}"
    if command.page == DEMO_PAGE and text in demo_commands():
        return f"demo {DEMO_RUNNER}"
    return None


# -- the tests ----------------------------------------------------------------------------------------------------


def test_collector_reads_the_conventions(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```sh\n# a comment\nmake demo   # trailing comment\n\n$ curl -s 'http://x/#frag' \\\n  -H 'A: b'\n```\n"
        '```console\n$ consulgw policy get users\n{\n  "x": 1\n}\n```\n'
        "```text\ncurl -s http://not-a-command\n```\n"
        "```bash\nconsul kv put k '{\n  \"a\": 1\n}'\n```\n"
    )
    found = commands_of(page, root=tmp_path)
    assert [c.normalised for c in found] == [
        "make demo",
        "curl -s 'http://x/#frag' -H 'A: b'",
        "consulgw policy get users",
        "consul kv put k '{ \"a\": 1 }'",
    ]
    assert [c.line for c in found] == [3, 5, 9, 18]


def test_pages_show_commands() -> None:
    found = all_commands()
    assert {c.page for c in found} >= {"README.md", "docs/getting-started.md", "docs/operations.md"}
    assert len(found) > 40


@pytest.mark.parametrize("page", sorted(DOC_RUNNERS))
def test_doc_runners_exist(page: str) -> None:
    """Each runner named here exists, reads that page, and its parser finds commands on it."""
    path, _, name = DOC_RUNNERS[page].test.partition("::")
    source = (ROOT / path).read_text("utf-8")
    assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), DOC_RUNNERS[page].test
    assert runner_commands(page)


def test_allowlist_has_no_stale_entries() -> None:
    """An allowlisted command must still be shown on some page."""
    shown = {c.normalised: c for c in all_commands()}
    for text in ALLOWED:
        assert text in shown, f"allowlisted but no longer shown anywhere: {text!r}"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(text, id=text[:60], marks=pytest.mark.xfail(reason=why, strict=True))
        for text, why in PENDING.items()
    ],
)
def test_pending_command_is_not_exercised_yet(text: str) -> None:
    """Fails (so xfails) while the command is shown and uncovered; passes (an XPASS error) once a test covers it."""
    assert all(coverage(c) is not None for c in all_commands() if c.normalised == text)


def test_pending_entries_are_still_shown() -> None:
    shown = {c.normalised for c in all_commands()}
    stale = [text for text in PENDING if text not in shown]
    assert not stale, f"no longer shown anywhere; remove from PENDING: {stale}"


def test_every_documented_command_is_exercised() -> None:
    missing = [c for c in all_commands() if coverage(c) is None and c.normalised not in PENDING]
    report = "\n".join(f"  {c.page}:{c.line}: {c.text}" for c in missing)
    assert not missing, (
        "these documented commands are not run by any test (keep the exact text in the test that runs it, or "
        f"list it in ALLOWED in {Path(__file__).relative_to(ROOT)} with the reason):\n{report}"
    )


def test_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text("utf-8")
    for path in sorted((ROOT / "docs").rglob("*.md")):
        name = path.relative_to(ROOT / "docs").as_posix()
        if name != "README.md":
            assert f"]({name})" in index, f"docs/README.md does not list {name}"


@pytest.mark.parametrize(
    "page",
    [
        "README.md",
        "docs/README.md",
        "docs/getting-started.md",
        "docs/operations.md",
        "docs/architecture.md",
        "docs/troubleshooting.md",
        "docs/comparison.md",
    ],
)
def test_relative_links_resolve(page: str) -> None:
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text("utf-8")):
        assert (path.parent / target).exists(), f"{page}: link to {target} does not resolve"


def test_fenced_blocks_say_what_they_hold() -> None:
    """Every opening fence has a tag, so a command block cannot hide as an untagged one."""
    untagged: list[tuple[str, int]] = []
    for path in pages():
        inside = False
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if not line.strip().startswith("```"):
                continue
            if not inside and line.strip() == "```":
                untagged.append((path.relative_to(ROOT).as_posix(), number))
            inside = not inside
    new = sorted(set(untagged) - set(KNOWN_UNTAGGED))
    assert not new, f"untagged opening fences (tag them text, json, hcl, sh...): {new}"


# Untagged fences on pages this suite does not own (reported to their authors); any other one fails the test above.
KNOWN_UNTAGGED: list[tuple[str, int]] = []
