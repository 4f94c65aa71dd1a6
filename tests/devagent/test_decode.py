"""Go encoding/json semantics for request bodies: case-insensitive keys, aliases, unknown fields, Go texts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.devagent.decode import Fields, parse_json
from consulgw.devagent.errors import DecodeError
from consulgw.duration import format_go_duration


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"", "EOF", id="empty"),
        pytest.param(b"   \n", "EOF", id="blank"),
        pytest.param(b'{"Name": ', "unexpected EOF", id="truncated"),
        pytest.param(b"{x}", "invalid character 'x' looking for beginning of object key string", id="bad-key"),
        pytest.param(b"nope", "invalid character 'n' looking for beginning of value", id="bad-value"),
    ],
)
def test_parse_json_errors(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_json(raw)
    assert str(caught.value) == message


@pytest.mark.parametrize("key", ["Name", "name", "NAME", "nAmE"])
def test_keys_match_case_insensitively(key: str) -> None:
    assert Fields({key: "web"}, "ServiceDefinition").string("Name") == "web"


def test_snake_case_and_aliases() -> None:
    f = Fields({"enable_tag_override": True, "script_args": ["x"]}, "S", aliases={"script_args": "Args"})
    assert f.boolean("EnableTagOverride") is True
    assert f.str_list("Args") == ("x",)


def test_unknown_field_is_go_text() -> None:
    with pytest.raises(DecodeError, match='json: unknown field "Prot"'):
        Fields({"Name": "x", "Prot": 1}, "ServiceDefinition", known=("Name", "Port"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("80", "json: cannot unmarshal string into Go struct field ServiceDefinition.Port of type int",
                     id="string-for-int"),
        pytest.param(1.5, "json: cannot unmarshal number 1.5 into Go struct field ServiceDefinition.Port of type int",
                     id="fraction-for-int"),
        pytest.param(True, "json: cannot unmarshal bool into Go struct field ServiceDefinition.Port of type int",
                     id="bool-for-int"),
    ],
)  # fmt: skip
def test_type_mismatch_texts(value: object, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        Fields({"Port": value}, "ServiceDefinition").integer("Port")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "nanoseconds"),
    [
        pytest.param("10s", 10_000_000_000, id="go-string"),
        pytest.param("1m30s", 90_000_000_000, id="compound"),
        pytest.param("100ms", 100_000_000, id="millis"),
        pytest.param(5_000_000_000, 5_000_000_000, id="ns-number"),
        pytest.param(None, 0, id="null"),
    ],
)
def test_durations(value: object, nanoseconds: int) -> None:
    assert Fields({"TTL": value}, "CheckType").duration("TTL") == nanoseconds


def test_duration_without_unit_is_go_error() -> None:
    with pytest.raises(DecodeError, match='time: missing unit in duration "10"'):
        Fields({"TTL": "10"}, "CheckType").duration("TTL")


@given(st.integers(min_value=0, max_value=10**15))
def test_duration_string_round_trip(ns: int) -> None:
    ns -= ns % 1000  # Go prints sub-millisecond units with a micro sign; keep to what Consul shows
    assert Fields({"TTL": format_go_duration(ns)}, "CheckType").duration("TTL") == ns
