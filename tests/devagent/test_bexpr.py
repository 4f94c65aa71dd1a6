"""The go-bexpr subset behind ?filter: table-driven evaluation, compile errors, and a parser fuzz."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.devagent.bexpr import compile_filter, schema_from_sample

ENTRY: dict[str, Any] = {
    "Node": {"Node": "test-node", "Meta": {"rack": "r1"}},
    "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1", "primary"], "Meta": {"env": "prod"}, "Port": 8080,
                "EnableTagOverride": False},
    "Checks": [
        {"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
        {"CheckID": "service:web-1", "Status": "critical", "ServiceID": "web-1"},
    ],
}  # fmt: skip
SCHEMA = schema_from_sample(ENTRY, maps=frozenset({"Meta"}))


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param('Service.Service == "web"', True, id="eq-string"),
        pytest.param('Service.Service != "web"', False, id="ne-string"),
        pytest.param("Service.Service == web", True, id="eq-bare-word"),
        pytest.param("Service.Service == `web`", True, id="eq-backquote"),
        pytest.param("Service.Port == 8080", True, id="eq-number"),
        pytest.param("Service.EnableTagOverride == false", True, id="eq-bool"),
        pytest.param('"v1" in Service.Tags', True, id="in-list"),
        pytest.param('"V1" in Service.Tags', False, id="in-list-case-sensitive"),
        pytest.param('"v2" not in Service.Tags', True, id="not-in-list"),
        pytest.param('Service.Tags contains "primary"', True, id="contains"),
        pytest.param('Service.Tags not contains "primary"', False, id="not-contains"),
        pytest.param('Service.Meta.env == "prod"', True, id="map-dot"),
        pytest.param('Service.Meta["env"] == "prod"', True, id="map-index"),
        pytest.param('Service.Meta.missing == "x"', False, id="map-missing-eq"),
        pytest.param('Service.Meta.missing != "x"', True, id="map-missing-ne"),
        pytest.param('"env" in Service.Meta', True, id="in-map-keys"),
        pytest.param("Service.Meta is not empty", True, id="is-not-empty"),
        pytest.param("Service.Meta.missing is empty", True, id="missing-is-empty"),
        pytest.param('Node.Node == "test-node" and Node.Meta.rack == "r1"', True, id="and"),
        pytest.param('Node.Node == "x" or Service.Service == "web"', True, id="or"),
        pytest.param('not Service.Service == "web"', False, id="not"),
        pytest.param('not (Node.Node == "x" or Service.Port == 1)', True, id="not-parens"),
        pytest.param('Checks.Status == "critical"', True, id="any-element"),
        pytest.param('Checks.Status == "warning"', False, id="any-element-none"),
        pytest.param('Checks.Status != "passing"', True, id="negation-per-element"),
        pytest.param('Checks.CheckID not contains "serf"', True, id="not-contains-per-element"),
        pytest.param('Service.Service matches "^w.b$"', True, id="matches"),
        pytest.param('Service.Service not matches "^x"', True, id="not-matches"),
        pytest.param('(Service.Service == "web") and ("v1" in Service.Tags)', True, id="grouping"),
    ],
)
def test_evaluate(expression: str, expected: bool) -> None:
    assert compile_filter(expression, SCHEMA).evaluate(ENTRY) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        pytest.param("Service.Nope == 1", 'Selector "Service.Nope" is not valid', id="unknown-selector"),
        pytest.param("Nope == 1", 'Selector "Nope" is not valid', id="unknown-root"),
        pytest.param("Service.Service ==", "no match found", id="missing-value"),
        pytest.param("Service.Service", "no match found", id="missing-operator"),
        pytest.param('(Service.Service == "web"', "no match found", id="unbalanced"),
        pytest.param('Service.Service == "web" extra', "no match found", id="trailing"),
        pytest.param("", "no match found", id="empty"),
        pytest.param("!!!", "no match found", id="garbage"),
    ],
)
def test_compile_errors(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        compile_filter(expression, SCHEMA)


@given(st.text(max_size=60))
def test_parser_only_raises_value_error(text: str) -> None:
    try:
        expr = compile_filter(text, SCHEMA)
    except ValueError:
        return
    assert isinstance(expr.evaluate(ENTRY), bool)
