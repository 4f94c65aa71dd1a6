"""TracingSettings from the standard OTEL_* variables: when tracing is on, and every bad value named."""

from __future__ import annotations

import argparse

import pytest

from consulgw.errors import ConfigError
from consulgw.settings import gateway_settings
from consulgw.tracing.config import DEFAULT_ENDPOINT, TracingSettings, tracing_settings

ON = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        pytest.param({}, False, id="nothing-set-is-off"),
        pytest.param({"OTEL_SERVICE_NAME": "gw"}, False, id="a-name-alone-is-off"),
        pytest.param(ON, True, id="an-endpoint-turns-it-on"),
        pytest.param({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True, id="traces-endpoint"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp"}, True, id="exporter-otlp-without-endpoint"),
        pytest.param({**ON, "OTEL_TRACES_EXPORTER": "none"}, False, id="exporter-none-wins"),
        pytest.param({**ON, "OTEL_SDK_DISABLED": "true"}, False, id="sdk-disabled-wins"),
        pytest.param({**ON, "OTEL_SDK_DISABLED": "false"}, True, id="sdk-disabled-false"),
    ],
)
def test_when_tracing_is_on(environ: dict[str, str], enabled: bool) -> None:
    assert tracing_settings(environ).enabled is enabled


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp"}, DEFAULT_ENDPOINT, id="default"),
        pytest.param(ON, "http://collector:4318/v1/traces", id="base-gets-the-signal-path"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c/otlp/"}, "https://c/otlp/v1/traces", id="base-slash"),
        pytest.param(
            {**ON, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/custom"}, "http://t:9/custom", id="traces-as-is"
        ),
    ],
)
def test_endpoint(environ: dict[str, str], endpoint: str) -> None:
    assert tracing_settings(environ).endpoint == endpoint


@pytest.mark.parametrize(
    ("sampler", "arg", "ratio", "parent_based"),
    [
        pytest.param(None, None, 1.0, True, id="default-parentbased_always_on"),
        pytest.param("always_on", None, 1.0, False, id="always_on"),
        pytest.param("always_off", None, 0.0, False, id="always_off"),
        pytest.param("traceidratio", "0.25", 0.25, False, id="traceidratio"),
        pytest.param("traceidratio", None, 1.0, False, id="traceidratio-default-arg"),
        pytest.param("parentbased_traceidratio", "0.01", 0.01, True, id="parentbased_traceidratio"),
        pytest.param("parentbased_always_off", None, 0.0, True, id="parentbased_always_off"),
        pytest.param("PARENTBASED_ALWAYS_ON", None, 1.0, True, id="case-insensitive"),
    ],
)
def test_sampler(sampler: str | None, arg: str | None, ratio: float, parent_based: bool) -> None:
    environ = dict(ON)
    if sampler is not None:
        environ["OTEL_TRACES_SAMPLER"] = sampler
    if arg is not None:
        environ["OTEL_TRACES_SAMPLER_ARG"] = arg
    settings = tracing_settings(environ)
    assert (settings.ratio, settings.parent_based) == (ratio, parent_based)


def test_service_name_and_batch_limits() -> None:
    settings = tracing_settings(
        {
            **ON,
            "OTEL_SERVICE_NAME": "edge-gw",
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
            "OTEL_BSP_SCHEDULE_DELAY": "250",
            "OTEL_PROPAGATORS": "tracecontext,baggage",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    )
    assert settings == TracingSettings(
        enabled=True,
        endpoint="http://collector:4318/v1/traces",
        service_name="edge-gw",
        max_queue_size=100,
        max_export_batch_size=10,
        schedule_delay=0.25,
    )
    assert settings.sampler == "parentbased_always_on"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin'", id="exporter"),
        pytest.param({**ON, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'", id="grpc"),
        pytest.param(
            {**ON, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json'",
            id="json",
        ),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "'collector:4318/v1/traces'", id="no-scheme"),
        pytest.param(
            {**ON, "OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER: 'jaeger_remote'", id="sampler"
        ),
        pytest.param(
            {**ON, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG: '1.5'",
            id="ratio-above-1",
        ),
        pytest.param(
            {**ON, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"},
            "OTEL_TRACES_SAMPLER_ARG: 'nan'",
            id="ratio-nan",
        ),
        pytest.param({**ON, "OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE: '0'", id="queue-zero"),
        pytest.param({**ON, "OTEL_BSP_SCHEDULE_DELAY": "5s"}, "OTEL_BSP_SCHEDULE_DELAY: '5s'", id="delay-unit"),
        pytest.param(
            {**ON, "OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 20",
            id="batch-above-queue",
        ),
        pytest.param({**ON, "OTEL_PROPAGATORS": "b3,tracecontext"}, "OTEL_PROPAGATORS: b3", id="b3"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        tracing_settings(environ)
    assert message in str(raised.value)


def test_the_gateway_settings_read_them() -> None:
    settings = gateway_settings(argparse.Namespace(), {**ON, "OTEL_TRACES_SAMPLER": "always_off"})
    assert settings.tracing.enabled
    assert settings.tracing.sampler == "always_off"
    assert not gateway_settings(argparse.Namespace(), {}).tracing.enabled
