"""GatewayMetrics.forget_service: a service that left the route table leaves /metrics, every other one stays."""

from __future__ import annotations

from consulgw.metrics import GatewayMetrics


def series(metrics: GatewayMetrics, service: str) -> list[str]:
    return [line for line in metrics.render().decode().splitlines() if f'service="{service}"' in line]


def test_a_forgotten_service_leaves_every_family_and_the_others_stay() -> None:
    metrics = GatewayMetrics()
    for service in ("gone", "kept"):
        metrics.observe_request(service, f"*/{service}", 200, 0.01)
        metrics.upstream_errors.labels(service, "reset").inc()
        metrics.retries.labels(service).inc()
    assert series(metrics, "gone")
    kept = series(metrics, "kept")

    metrics.forget_service("gone")

    assert series(metrics, "gone") == []
    assert series(metrics, "kept") == kept
    metrics.observe_request("gone", "*/gone", 200, 0.01)  # it comes back: counted from zero again
    assert any(line.startswith("consulgw_requests_total") and line.endswith(" 1.0") for line in series(metrics, "gone"))
