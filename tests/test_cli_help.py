"""`--help` answers on every level of the command line, and bad flags get one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

LEVELS = [
    (),
    ("dev-agent",),
    ("run",),
    ("routes",),
    ("policy",),
    ("policy", "validate"),
    ("policy", "get"),
    ("policy", "put"),
    ("consumer",),
    ("consumer", "add"),
    ("demo",),
]


@pytest.mark.parametrize("level", [pytest.param(level, id=" ".join(level) or "consulgw") for level in LEVELS])
def test_help_on_every_level(level: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consulgw", *level, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: consulgw")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        pytest.param(
            ("run", "--listen", "nowhere"), "--listen / CONSULGW_LISTEN: 'nowhere' is not HOST:PORT", id="listen"
        ),
        pytest.param(("run", "--workers", "zero"), "--workers / CONSULGW_WORKERS: 'zero'", id="workers"),
        pytest.param(
            ("run", "--encoded-slashes", "decode"),
            "--encoded-slashes / CONSULGW_ENCODED_SLASHES: 'decode' must be 'keep' or 'reject'",
            id="encoded-slashes",
        ),
        pytest.param(
            ("run", "--redis", "redis+sentinel://:s3cr3t@127.0.0.1:26379"),
            "--redis / CONSULGW_REDIS_URL: 'redis+sentinel://***@127.0.0.1:26379' has no service name",
            id="redis-url-password-hidden",
        ),
        pytest.param(
            ("run", "--consul-max-conns", "4"),
            "--consul-max-conns / CONSULGW_CONSUL_MAX_CONNS: '4' must be a whole number >= 5",
            id="consul-max-conns-too-small",
        ),
        pytest.param(
            ("run", "--consul-max-conns", "many"),
            "--consul-max-conns / CONSULGW_CONSUL_MAX_CONNS: 'many'",
            id="consul-max-conns-not-a-number",
        ),
        pytest.param(("run", "--max-staleness", "10"), "--max-staleness / CONSULGW_MAX_STALENESS: '10'", id="duration"),
        pytest.param(("dev-agent", "--listen", "1.2.3.4"), "--listen", id="dev-agent-listen"),
        pytest.param(
            ("run", "--sticky-key", "too-short"),
            "--sticky-key / CONSULGW_STICKY_KEY: the key has 9 characters; give at least 16",
            id="sticky-key",
        ),
    ],
)
def test_bad_values_get_one_line_naming_the_flag(argv: tuple[str, ...], needle: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consulgw", *argv], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert needle in done.stderr
    assert "s3cr3t" not in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
