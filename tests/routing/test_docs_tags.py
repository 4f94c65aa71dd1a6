"""docs/tags.md: every example runs, and the benchmark command it shows works."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "tags.md"


def test_examples_in_tags_md_run() -> None:
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 20
    assert result.failed == 0


def test_benchmark_command_in_tags_md_runs() -> None:
    match = re.search(r"^\.venv/bin/python (-m tests\.routing\.bench_table)$", DOC.read_text(), re.MULTILINE)
    assert match is not None
    args = [sys.executable, *match.group(1).split(), "--services", "30", "--repeat", "2000"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert "routes=90" in done.stdout
    assert re.search(r"^lookup_us=\d+\.\d+$", done.stdout, re.MULTILINE)
