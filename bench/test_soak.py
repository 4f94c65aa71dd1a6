"""Self-checks for bench/soak.py: its /metrics parsing, its verdict and its docs block, then one ~20 s real run.

Collected by `make test` (pytest's testpaths include bench/); alone: `.venv/bin/pytest bench/test_soak.py`. Nothing
here asserts a figure of the gateway: the real run only shows that the soak works end to end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soak

BENCH = Path(__file__).resolve().parent

METRICS = """# HELP consulgw_event_loop_tasks asyncio tasks alive on the event loop
# TYPE consulgw_event_loop_tasks gauge
consulgw_event_loop_tasks 37.0
# HELP consulgw_requests_total Requests answered
# TYPE consulgw_requests_total counter
consulgw_requests_total{route="*/soak",service="soak",status_class="2xx"} 1200.0
consulgw_requests_total{route="*/soak",service="soak",status_class="5xx"} 3.0
consulgw_requests_created{route="*/soak",service="soak",status_class="2xx"} 1.7e9
"""


def _samples(
    rss: list[float], fds: list[int] | None = None, tasks: list[float | None] | None = None
) -> list[soak.Sample]:
    fds = fds or [30] * len(rss)
    tasks = tasks or [36.0] * len(rss)
    return [
        soak.Sample(minute=i + 1.0, seconds=60.0, rss_mib=r, fds=f, tasks=t, requests=12_000, errors=0)
        for i, (r, f, t) in enumerate(zip(rss, fds, tasks, strict=True))
    ]


def test_metric_values_are_read_from_the_exposition() -> None:
    assert soak.metric_value(METRICS, "consulgw_event_loop_tasks") == 37.0
    assert soak.metric_value(METRICS, "consulgw_requests_total") == 1203.0  # summed over label sets
    assert soak.metric_value(METRICS, "consulgw_missing") is None


def test_flat_series_are_flat() -> None:
    verdict = soak.verdict(_samples([73.0, 73.4, 73.2, 73.6, 73.5, 73.8]))
    assert verdict.flat is True
    assert verdict.text.startswith("flat:")
    assert "heuristic" in verdict.text
    assert {t.name for t in verdict.trends} == {"rss_mib", "fds", "tasks"}


@pytest.mark.parametrize(
    ("rss", "fds", "tasks", "growing"),
    [
        ([70, 75, 80, 90, 100, 110], None, None, "rss_mib"),
        ([70] * 6, [30, 30, 40, 50, 60, 70], None, "fds"),
        ([70] * 6, None, [36, 36, 50, 60, 80, 90], "tasks"),
    ],
)
def test_growth_beyond_tolerance_and_slack_is_not_flat(
    rss: list[float], fds: list[int] | None, tasks: list[float | None] | None, growing: str
) -> None:
    verdict = soak.verdict(_samples(rss, fds, tasks))
    assert verdict.flat is False
    assert verdict.text.startswith("NOT flat")
    assert [t.name for t in verdict.trends if not t.flat] == [growing]


def test_small_absolute_growth_is_within_the_slack() -> None:
    # 3 fds and 3 tasks more, 3 MiB more: noise of a pooled connection or two, not a leak.
    assert soak.verdict(_samples([20, 20, 20, 23, 23, 23], [10, 10, 10, 13, 13, 13], [5, 5, 5, 8, 8, 8])).flat


def test_too_few_samples_or_a_missing_task_count_are_said_so() -> None:
    assert soak.verdict(_samples([70, 71])).flat is None
    verdict = soak.verdict(_samples([70, 70, 70], tasks=[36.0, None, 36.0]))
    assert verdict.flat is True
    assert "not judged" in verdict.text
    assert "tasks" not in {t.name for t in verdict.trends}


def test_the_table_and_the_docs_block(tmp_path: Path) -> None:
    table = soak.table(_samples([73.0, 73.5]))
    assert table.splitlines()[0].startswith("| minute | RSS MiB | open fds | asyncio tasks |")
    assert "| 2.0 | 73.5 | 30 | 36 | 12,000 | 0 | 200 |" in table
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:begin -->\nthroughput\n<!-- bench:end -->\n", encoding="utf-8")
    soak.write_docs(docs, "first run\n")
    soak.write_docs(docs, "second run\n")  # replaces its own block, leaves the other one alone
    text = docs.read_text(encoding="utf-8")
    assert text.count("## Soak") == 1
    assert "second run" in text
    assert "first run" not in text
    assert "<!-- bench:begin -->\nthroughput\n<!-- bench:end -->" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx missing")
def test_a_short_real_soak_samples_and_writes_its_block(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "soak.py"),
            *("--minutes", "0.25", "--sample", "5", "--warmup", "1", "--churn", "0.5", "--policy", "3"),
            *("--rate", "100", "--no-install", "--write-docs", "--docs", str(docs)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # 3 is "not flat": a verdict, not a failure of the harness (15 s say nothing about leaks).
    assert proc.returncode in (0, 3), proc.stdout[-2000:] + proc.stderr[-2000:]
    text = docs.read_text(encoding="utf-8")
    assert "## Soak" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| minute")]
    assert len(rows) >= 3
    assert all(" n/a " not in row for row in rows)  # the task gauge was read every time
    assert "Verdict: " in text
    assert "Error kinds: none" in text  # churn and policy edits cost no request
