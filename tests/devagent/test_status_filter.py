"""SuccessBeforePassing / FailuresBeforeWarning / FailuresBeforeCritical, as Consul's StatusHandler counts them."""

from __future__ import annotations

import pytest

from consulgw.devagent.checks import CheckDef, StatusFilter


@pytest.mark.parametrize(
    ("thresholds", "results", "reported"),
    [
        pytest.param({}, ["critical", "passing"], ["critical", "passing"], id="no-thresholds"),
        pytest.param({"success_before_passing": 2}, ["passing"], ["passing"], id="first-result-applies-at-once"),
        pytest.param({"success_before_passing": 2}, ["critical", "passing", "passing"],
                     ["critical", "passing"], id="successes-after-a-failure"),
        pytest.param({"failures_before_critical": 3}, ["passing", "critical", "critical", "critical"],
                     ["passing", "critical"], id="failures-before-critical"),
        pytest.param({"failures_before_critical": 3, "failures_before_warning": 1},
                     ["passing", "critical", "critical", "critical"],
                     ["passing", "warning", "warning", "critical"], id="warning-first"),
    ],
)  # fmt: skip
def test_thresholds(thresholds: dict[str, int], results: list[str], reported: list[str]) -> None:
    seen: list[str] = []
    handler = StatusFilter(CheckDef(**thresholds), lambda status, _output: seen.append(status))  # type: ignore[arg-type]
    for status in results:
        handler(status, "")
    assert seen == reported
