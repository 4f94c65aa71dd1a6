"""--consul-max-conns / CONSULGW_CONSUL_MAX_CONNS: parsed once at the edge, the flag wins, bad values name both."""

from __future__ import annotations

import pytest

from consulgw.cli import build_parser
from consulgw.errors import ConfigError
from consulgw.settings import gateway_settings


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param([], {}, 64, id="default"),
        pytest.param(["--consul-max-conns", "12"], {}, 12, id="flag"),
        pytest.param([], {"CONSULGW_CONSUL_MAX_CONNS": "180"}, 180, id="environment"),
        pytest.param(["--consul-max-conns", "5"], {"CONSULGW_CONSUL_MAX_CONNS": "99"}, 5, id="flag-wins-smallest"),
    ],
)
def test_values(argv: list[str], environ: dict[str, str], expected: int) -> None:
    settings = gateway_settings(build_parser().parse_args(["run", *argv]), environ)
    assert settings.consul_max_conns == expected


@pytest.mark.parametrize(
    ("argv", "environ", "shown"),
    [
        pytest.param(["--consul-max-conns", "4"], {}, "'4'", id="below-the-fixed-watches"),
        pytest.param(["--consul-max-conns", "0"], {}, "'0'", id="zero"),
        pytest.param(["--consul-max-conns", "-8"], {}, "'-8'", id="negative"),
        pytest.param([], {"CONSULGW_CONSUL_MAX_CONNS": "lots"}, "'lots'", id="not-a-number"),
    ],
)
def test_bad_values_name_flag_variable_and_value(argv: list[str], environ: dict[str, str], shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        gateway_settings(build_parser().parse_args(["run", *argv]), environ)
    message = str(raised.value)
    assert message.startswith("--consul-max-conns / CONSULGW_CONSUL_MAX_CONNS: ")
    assert shown in message
    assert ">= 5" in message
