"""Every file under deploy/ and compose/ is one the tests in this directory read; a new file needs a test first."""

from __future__ import annotations

from .deployfiles import deploy_files, rel

CHECKED_BY = {
    "compose/README.md": "test_compose (commands, curl ports and paths)",
    "compose/consul/services.json": "test_compose (service definitions)",
    "compose/docker-compose.yml": "test_compose, test_program_contract",
    "compose/kv/echo-rate-limit.json": "test_compose (KV seed)",
    "compose/kv/private-jwt.json": "test_compose (KV seed)",
    "deploy/Dockerfile": "test_dockerfile, test_program_contract",
    "deploy/Dockerfile.dockerignore": "test_dockerfile (build context)",
    "deploy/consul/README.md": "test_consul_acl (commands)",
    "deploy/consul/consulgw-service.hcl": "test_consul_acl (self-registration)",
    "deploy/consul/gateway-policy.hcl": "test_consul_acl",
    "deploy/consul/operator-policy.hcl": "test_consul_acl",
    "deploy/consul/registration-policy.hcl": "test_consul_acl",
    "deploy/grafana/consulgw-alerts.test.yml": "test_grafana (promtool test rules)",
    "deploy/grafana/consulgw-alerts.yml": "test_grafana (promtool check rules, metrics exist)",
    "deploy/grafana/consulgw-dashboard.json": "test_grafana (PromQL parses, importable, metrics exist)",
    "deploy/healthcheck.py": "test_dockerfile (run against a real server)",
    "deploy/kubernetes/deployment.yaml": "test_kubernetes, test_program_contract",
    "deploy/kubernetes/kustomization.yaml": "test_kubernetes",
    "deploy/kubernetes/pdb.yaml": "test_kubernetes",
    "deploy/kubernetes/secret.example.yaml": "test_kubernetes",
    "deploy/kubernetes/service.yaml": "test_kubernetes",
    "deploy/nomad/consulgw.nomad.hcl": "test_nomad, test_program_contract",
    "deploy/systemd/consulgw.env.example": "test_systemd, test_program_contract",
    "deploy/systemd/consulgw.service": "test_systemd, test_program_contract",
    "deploy/systemd/consulgw.sysusers": "test_systemd",
}


def test_every_deployment_file_is_checked() -> None:
    assert sorted(rel(p) for p in deploy_files()) == sorted(CHECKED_BY)
