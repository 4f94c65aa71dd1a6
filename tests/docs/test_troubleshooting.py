"""docs/troubleshooting.md: the checklist's commands, run against the demo with the page's broken ``billing``.

``billing.json`` and ``billing-policy.json`` come from the page itself; the broken policy is also written to KV so
that the "is its policy refused?" commands have something to find.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from consulgw.errors import GatewayError

from .support import Demo, Shell, assert_shows, doc_files, fenced_blocks, free_port, read_doc, shown_after, wait_until

PAGE = "docs/troubleshooting.md"

CATALOG = "curl -s http://127.0.0.1:8500/v1/catalog/services"
ROUTES = "consulgw routes --consul http://127.0.0.1:8500"
ADMIN_ROUTES = "curl -s http://127.0.0.1:8081/-/routes"
HEALTH = "curl -s http://127.0.0.1:8500/v1/health/service/billing"
REJECTED = "curl -s http://127.0.0.1:8081/metrics | grep '^consulgw_policy_rejected'"
GET = "consulgw policy get billing"
VALIDATE = "consulgw policy validate billing-policy.json"
ERROR = "curl -si http://127.0.0.1:8080/billing/invoices"


@pytest.fixture(scope="module")
def shell(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shell]:
    work: Path = tmp_path_factory.mktemp("troubleshooting")
    sh = Shell(
        cwd=work,
        rewrite={**demo.rewrite, "9001": str(free_port())},
        env={"CONSUL_HTTP_ADDR": f"http://127.0.0.1:{demo.consul}"},
    )
    page = read_doc(PAGE)
    files = doc_files(page)
    assert set(files) == {"billing.json", "billing-policy.json"}
    for name, body in files.items():
        (work / name).write_text(sh.local(body))
    sh.run("curl -s -X PUT --data @billing.json http://127.0.0.1:8500/v1/agent/service/register")
    sh.run("curl -s -X PUT --data @billing-policy.json http://127.0.0.1:8500/v1/kv/consulgw/services/billing")

    def seen() -> bool:
        state = admin_state(demo)
        return "billing" in state["services"] and "services/billing" in state["policy_errors"]

    wait_until(seen)
    yield sh
    sh.run("curl -s -X PUT http://127.0.0.1:8500/v1/agent/service/deregister/billing-1")
    sh.run("curl -s -X DELETE http://127.0.0.1:8500/v1/kv/consulgw/services/billing")


def admin_state(demo: Demo) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{demo.admin}/-/routes", timeout=5) as resp:
        state: dict[str, dict[str, object]] = json.load(resp)
    return state


def test_is_it_in_consul_with_route_tags(shell: Shell) -> None:
    catalog = json.loads(shell.run(CATALOG))
    assert catalog["billing"] == ["gw.route=/billing strip=/api", "gw.lb=least_con"]


def test_what_would_a_gateway_build(shell: Shell) -> None:
    page = read_doc(PAGE)
    assert_shows(shell.local(shown_after(page, ROUTES)), shell.run(ROUTES))


def test_what_does_the_running_gateway_have(shell: Shell) -> None:
    state = json.loads(shell.run(ADMIN_ROUTES))
    assert state["consul"]["reachable"] is True
    assert state["consul"]["complete"] is True
    reasons = {error["tag"]: error["reason"] for error in state["route_errors"] if error["service"] == "billing"}
    assert set(reasons) == {"gw.route=/billing strip=/api", "gw.lb=least_con"}
    [instance] = state["services"]["billing"]["instances"]
    assert (instance["health"], instance["weight"], instance["weights"]) == ("warning", 0, {"passing": 1, "warning": 0})


def test_are_its_instances_healthy(shell: Shell) -> None:
    [entry] = json.loads(shell.run(HEALTH))
    assert entry["Service"]["Weights"] == {"Passing": 1, "Warning": 0}
    assert {check["CheckID"]: check["Status"] for check in entry["Checks"]} == {
        "serfHealth": "passing",
        "billing-1-ttl": "warning",
    }


def test_is_its_policy_refused(shell: Shell) -> None:
    page = read_doc(PAGE)
    assert_shows(shown_after(page, REJECTED), shell.run(REJECTED))
    stored = shell.run(GET)  # prints the stored document, and warns that the gateway refuses it
    assert '"per": "10 s"' in stored
    assert "rate_limit.per: '10 s' is not a duration" in stored
    refused = shell.run(VALIDATE, check=False)
    blocks = fenced_blocks(page)
    policy_file = next(i for i, (_, marker, _) in enumerate(blocks) if marker == "<!-- file: billing-policy.json -->")
    assert blocks[policy_file + 1][0] == "text"
    assert_shows(blocks[policy_file + 1][2], refused)


def test_error_answers_are_json_with_the_request_id(shell: Shell) -> None:
    page = read_doc(PAGE)
    answer = shell.run(ERROR).replace("\r\n", "\n")
    assert_shows(shown_after(page, ERROR), answer)
    request_id = next(line.split(": ", 1)[1] for line in answer.splitlines() if line.startswith("X-Request-ID: "))
    assert json.loads(answer.rsplit("\n\n", 1)[1])["request_id"] == request_id


def test_error_table_lists_every_code() -> None:
    """Every GatewayError code of consulgw/errors.py has a row in the page's table."""
    page = read_doc(PAGE)

    def codes(cls: type[GatewayError]) -> set[tuple[int, str]]:
        found = {(cls.status, cls.code)}
        for sub in cls.__subclasses__():
            found |= codes(sub)
        return found

    for status, code in codes(GatewayError):
        if code == "internal_error" or status != GatewayError.status:
            assert f"| {status} | `{code}` |" in page, code
    assert "| 500 | `internal_error` |" in page
