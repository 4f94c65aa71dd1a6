"""deploy/systemd/: the hardened unit, its environment file and the sysusers snippet."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .deployfiles import SYSUSERS, UNIT, UNIT_ENV, parse_env_file, parse_unit, seconds, settings_for

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _unit_value(key: str) -> str:
    return parse_unit(UNIT).value("Service", key)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("NoNewPrivileges", "yes", id="NoNewPrivileges"),
        pytest.param("ProtectSystem", "strict", id="ProtectSystem"),
        pytest.param("ProtectHome", "yes", id="ProtectHome"),
        pytest.param("PrivateTmp", "yes", id="PrivateTmp"),
        pytest.param("PrivateDevices", "yes", id="PrivateDevices"),
        pytest.param("ProtectKernelTunables", "yes", id="ProtectKernelTunables"),
        pytest.param("ProtectKernelModules", "yes", id="ProtectKernelModules"),
        pytest.param("ProtectKernelLogs", "yes", id="ProtectKernelLogs"),
        pytest.param("ProtectControlGroups", "yes", id="ProtectControlGroups"),
        pytest.param("ProtectClock", "yes", id="ProtectClock"),
        pytest.param("ProtectHostname", "yes", id="ProtectHostname"),
        pytest.param("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX", id="RestrictAddressFamilies"),
        pytest.param("RestrictNamespaces", "yes", id="RestrictNamespaces"),
        pytest.param("RestrictRealtime", "yes", id="RestrictRealtime"),
        pytest.param("RestrictSUIDSGID", "yes", id="RestrictSUIDSGID"),
        pytest.param("MemoryDenyWriteExecute", "yes", id="MemoryDenyWriteExecute"),
        pytest.param("LockPersonality", "yes", id="LockPersonality"),
        pytest.param("SystemCallArchitectures", "native", id="SystemCallArchitectures"),
        pytest.param("EnvironmentFile", "/etc/consulgw/consulgw.env", id="EnvironmentFile"),
        pytest.param("ExecReload", "/bin/kill -HUP $MAINPID", id="ExecReload-SIGHUP"),
        pytest.param("KillSignal", "SIGTERM", id="KillSignal"),
        pytest.param("Restart", "on-failure", id="Restart"),
    ],
)
def test_service_directive(key: str, expected: str) -> None:
    assert _unit_value(key) == expected


def test_system_call_filter_allows_only_the_service_set() -> None:
    filters = parse_unit(UNIT).values("Service", "SystemCallFilter")
    assert filters[0] == "@system-service"
    assert all(f.startswith("~") for f in filters[1:]), "later filters may only deny"


def test_runs_as_an_unprivileged_user() -> None:
    unit = parse_unit(UNIT)
    dynamic = unit.values("Service", "DynamicUser")
    user = unit.values("Service", "User")
    assert dynamic == ["yes"] or (user and user[-1] not in ("root", "0"))
    if user:
        # The dedicated user is created by the sysusers snippet shipped next to the unit.
        entries = [line.split() for line in SYSUSERS.read_text().splitlines() if line and not line.startswith("#")]
        assert ["u", user[-1]] == entries[0][:2]


def test_capabilities_empty_unless_a_privileged_port_is_bound() -> None:
    settings = settings_for(shlex.split(_unit_value("ExecStart"))[1:], parse_env_file(UNIT_ENV).values)
    allowed = {"", "CAP_NET_BIND_SERVICE"} if settings.listen.port < 1024 else {""}
    assert _unit_value("CapabilityBoundingSet") in allowed
    assert _unit_value("AmbientCapabilities") in allowed


def test_stop_timeout_exceeds_the_drain_timeout() -> None:
    settings = settings_for(shlex.split(_unit_value("ExecStart"))[1:], parse_env_file(UNIT_ENV).values)
    assert seconds(_unit_value("TimeoutStopSec")) > settings.drain_timeout


def test_exec_start_runs_consulgw_run() -> None:
    argv = shlex.split(_unit_value("ExecStart"))
    assert Path(argv[0]).is_absolute()
    assert Path(argv[0]).name == "consulgw"
    assert argv[1] == "run"


def test_env_example_is_plain_key_value_and_keeps_admin_on_loopback() -> None:
    env = parse_env_file(UNIT_ENV)
    assert {"CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSULGW_REDIS_URL", "CONSULGW_DRAIN_TIMEOUT"} <= set(env.values)
    assert env.values["CONSULGW_ADMIN_LISTEN"].startswith("127.0.0.1:")
    # Unquoted, so the same file also works as `docker run --env-file` (Docker keeps quotes as part of the value).
    assert not [v for v in [*env.values.values(), *env.commented.values()] if v.startswith(("'", '"'))]


def test_commented_settings_are_valid_when_switched_on() -> None:
    env = parse_env_file(UNIT_ENV)
    settings_for(["run"], {**env.values, **env.commented})


def _unit_for_this_host(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this venv's consulgw, so systemd can check the command exists."""
    here = Path(sys.executable).parent / "consulgw"
    text = UNIT.read_text().replace("ExecStart=/opt/consulgw/bin/consulgw", f"ExecStart={here}")
    assert f"ExecStart={here}" in text
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(_unit_for_this_host(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "consulgw.service" not in result.stderr, result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    probe = subprocess.run([SYSTEMD_ANALYZE, "security", "--help"], capture_output=True, text=True, check=False)
    if "--offline" not in probe.stdout:
        pytest.skip("this systemd-analyze has no --offline (systemd < 252)")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", str(_unit_for_this_host(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # --threshold=20 means an exposure above 2.0 of 10 fails.
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
